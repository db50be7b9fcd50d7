"""Contributions: exact for linear models, TreeSHAP equal to brute-force Shapley values, additivity to 1e-9."""

import itertools
import math

import numpy as np
import pytest

from KiMapLib.errors import ModelError
from KiMapLib.model.explain import contributions, global_importance, top_contributions, tree_shap
from KiMapLib.model.transformed import transformed, used_columns

NAMES = [f"t1c_original_firstorder_F{i}" for i in range(8)]


def data(seed: int = 0, rows: int = 120):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(NAMES)))
    x[:, 5] = 3.0  # constant column: dropped by the pipeline
    x[rng.uniform(size=x.shape) < 0.05] = np.nan  # missing values: imputed
    filled = np.nan_to_num(x)
    y = 20 + 5 * filled[:, 0] - 3 * filled[:, 1] + 2 * filled[:, 0] * filled[:, 2] + rng.normal(0, 1, rows)
    return x, y


def pipeline(regressor, k="all"):
    from sklearn.feature_selection import SelectKBest, VarianceThreshold, f_regression
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("impute", SimpleImputer(strategy="median")), ("drop_constant", VarianceThreshold(0.0)),
                     ("scale", StandardScaler()), ("select", SelectKBest(f_regression, k=k)), ("regress", regressor)])


def regressors():
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
    from sklearn.linear_model import ElasticNet, Ridge
    from sklearn.tree import DecisionTreeRegressor

    return {"ridge": Ridge(alpha=10.0), "elasticnet": ElasticNet(alpha=0.5, l1_ratio=0.5),
            "tree": DecisionTreeRegressor(max_depth=5, random_state=0),
            "forest": RandomForestRegressor(n_estimators=30, min_samples_leaf=3, max_features=0.5, random_state=0),
            "boosting": GradientBoostingRegressor(n_estimators=40, max_depth=3, subsample=0.8, random_state=0)}


@pytest.mark.parametrize("name", ["ridge", "elasticnet", "tree", "forest", "boosting"])
def test_contributions_add_up_to_the_prediction(name):
    x, y = data()
    model = pipeline(regressors()[name], k=5).fit(x, y)
    result = contributions(model, x, NAMES)
    assert np.max(np.abs(result.prediction - model.predict(x))) < 1e-9
    z, names = transformed(model, x, NAMES)
    assert result.values.shape == z.shape and result.names == names
    assert set(names) <= set(NAMES) and NAMES[5] not in names
    if name in ("tree", "forest", "boosting"):  # the base is the model's mean over its (weighted) training data
        assert np.ptp(result.base) < 1e-12
    importance = global_importance(result.values, result.names)
    assert next(iter(importance)) == NAMES[0]  # the strongest effect ranks first
    assert list(importance.values()) == sorted(importance.values(), reverse=True)


def test_linear_contributions_are_coefficient_times_scaled_value():
    from sklearn.linear_model import ElasticNet

    x, y = data()
    model = pipeline(ElasticNet(alpha=1.5, l1_ratio=0.9)).fit(x, y)
    coef = model[-1].coef_
    used = used_columns(model)
    assert np.array_equal(used, np.flatnonzero(coef != 0)) and 0 < used.size < coef.size  # lasso-like zeros
    result = contributions(model, x, NAMES)
    z = model[:-1].transform(x)
    assert np.allclose(result.values, z[:, used] * coef[used], rtol=0, atol=1e-12)
    assert np.all(result.base == model[-1].intercept_)
    # centred: on the training data the mean contribution of every feature is 0 (relative to the training mean)
    assert np.allclose(result.values.mean(axis=0), 0, atol=1e-9)


def _conditional_expectation(tree, x, subset):
    t = tree.tree_

    def walk(node):
        if t.children_left[node] < 0:
            return t.value[node, 0, 0]
        left, right = t.children_left[node], t.children_right[node]
        if t.feature[node] in subset:
            return walk(left if np.float32(x[t.feature[node]]) <= t.threshold[node] else right)
        w = t.weighted_n_node_samples
        return (w[left] * walk(left) + w[right] * walk(right)) / w[node]

    return walk(0)


def brute_force_shapley(tree, x, features):
    """Shapley values by enumerating every subset, with the path-dependent (cover-weighted) expectation."""
    phi = np.zeros(features)
    for j in range(features):
        others = [k for k in range(features) if k != j]
        for size in range(features):
            for subset in itertools.combinations(others, size):
                weight = math.factorial(size) * math.factorial(features - size - 1) / math.factorial(features)
                with_j = _conditional_expectation(tree, x, set(subset) | {j})
                phi[j] += weight * (with_j - _conditional_expectation(tree, x, set(subset)))
    return phi


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tree_shap_equals_brute_force_shapley_values(seed):
    from sklearn.tree import DecisionTreeRegressor

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(80, 5))
    x[:, 3] = np.round(x[:, 3])  # ties and repeated splits on one feature
    y = 3 * x[:, 0] + np.sin(2 * x[:, 1]) + x[:, 2] * x[:, 0] + (x[:, 3] > 0) * x[:, 4] + rng.normal(0, 0.1, 80)
    tree = DecisionTreeRegressor(max_depth=7, min_samples_leaf=2, random_state=seed).fit(x, y)
    repeated = [f for f in range(5) if np.sum(tree.tree_.feature == f) > 1]
    assert repeated  # the unwind step of the algorithm is exercised
    expected, phi = tree_shap(tree, x[:12])
    assert np.max(np.abs(expected + phi.sum(axis=1) - tree.predict(x[:12]))) < 1e-9
    brute = np.array([brute_force_shapley(tree, row, 5) for row in x[:12]])
    assert np.max(np.abs(phi - brute)) < 1e-9


def test_forest_and_boosting_shap_are_the_ensemble_of_tree_shap():
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor

    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 4))
    y = 2 * x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(0, 0.2, 60)
    forest = pipeline(RandomForestRegressor(n_estimators=7, max_depth=4, random_state=0)).fit(x, y)
    z = forest[:-1].transform(x[:5])
    result = contributions(forest, x[:5])
    brute = np.mean([[brute_force_shapley(t, row, 4) for row in z] for t in forest[-1].estimators_], axis=0)
    assert np.max(np.abs(result.values - brute)) < 1e-9
    boosting = pipeline(GradientBoostingRegressor(n_estimators=6, max_depth=3, learning_rate=0.3,
                                                  random_state=0)).fit(x, y)
    z = boosting[:-1].transform(x[:5])
    result = contributions(boosting, x[:5])
    brute = 0.3 * np.sum([[brute_force_shapley(t, row, 4) for row in z] for t in boosting[-1].estimators_[:, 0]],
                         axis=0)
    assert np.max(np.abs(result.values - brute)) < 1e-9
    assert result.base[0] == pytest.approx(y.mean() + 0.3 * sum(
        tree_shap(t, z)[0] for t in boosting[-1].estimators_[:, 0]), abs=1e-12)


def test_a_300_tree_forest_on_200_rows_is_explained_exactly():
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 20))
    y = 3 * x[:, 0] + np.sin(2 * x[:, 1]) + rng.normal(0, 1, 200)
    model = pipeline(RandomForestRegressor(n_estimators=300, min_samples_leaf=3, max_features=0.5,
                                           random_state=0)).fit(x, y)
    result = contributions(model, x)
    assert np.max(np.abs(result.prediction - model.predict(x))) < 1e-9
    assert list(global_importance(result.values, result.names))[:2] == ["x0", "x1"]


def test_top_contributions_and_unsupported_models():
    from sklearn.neighbors import KNeighborsRegressor

    top = top_contributions(["a", "b", "c", "d"], np.array([0.5, -2.0, 1.0, 0.0]), n=3)
    assert top == [("b", -2.0), ("c", 1.0), ("a", 0.5)]
    x, y = data()
    model = pipeline(KNeighborsRegressor()).fit(x, y)
    with pytest.raises(ModelError, match="KNeighborsRegressor"):
        contributions(model, x)
