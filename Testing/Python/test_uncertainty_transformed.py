"""The point model's own feature space Z: exactly the columns the final regressor uses, with their input names."""

import numpy as np
import pytest

from KiMapLib.errors import ModelError
from KiMapLib.model.transformed import transformed, used_columns

NAMES = ["t1c_a", "t1c_constant", "adc_b", "flair_c", "t2_d", "t2_noise"]


def cohort(rows: int = 90):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(rows, len(NAMES)))
    x[:, 1] = 7.0
    x[3, 2] = np.nan
    y = 10 + 4 * np.nan_to_num(x[:, 0]) - 3 * np.nan_to_num(x[:, 2]) + 2 * x[:, 3] + rng.normal(0, 0.5, rows)
    return x, y


def pipeline(regressor, k):
    from sklearn.feature_selection import SelectKBest, VarianceThreshold, f_regression
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("impute", SimpleImputer(strategy="median")), ("drop_constant", VarianceThreshold(0.0)),
                     ("scale", StandardScaler()), ("select", SelectKBest(f_regression, k=k)), ("regress", regressor)])


def test_linear_model_uses_its_nonzero_coefficients_and_names_follow_the_selection():
    from sklearn.linear_model import Lasso, Ridge

    x, y = cohort()
    model = pipeline(Ridge(alpha=1.0), k=3).fit(x, y)
    z, names = transformed(model, x, NAMES)
    assert names == ["t1c_a", "adc_b", "flair_c"]  # the constant column is dropped, the F-test keeps the 3 real ones
    assert np.array_equal(used_columns(model), [0, 1, 2])
    expected = np.where(np.isnan(x), np.nanmedian(x, axis=0), x)[:, [0, 2, 3]]
    assert np.allclose(z, (expected - expected.mean(0)) / expected.std(0), atol=1e-12)
    sparse = pipeline(Lasso(alpha=1.5), k="all").fit(x, y)
    z, names = transformed(sparse, x, NAMES)
    coef = sparse[-1].coef_
    assert names == [n for n, c in zip([NAMES[i] for i in (0, 2, 3, 4, 5)], coef, strict=True) if c != 0]
    assert z.shape == (90, int(np.sum(coef != 0))) and "t2_noise" not in names


def test_trees_use_the_features_they_split_on():
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.tree import DecisionTreeRegressor

    x, y = cohort()
    stump = pipeline(DecisionTreeRegressor(max_depth=1), k="all").fit(x, y)
    assert transformed(stump, x, NAMES)[1] == ["t1c_a"]
    boosting = pipeline(GradientBoostingRegressor(n_estimators=30, max_depth=2, random_state=0), k="all").fit(x, y)
    split = set(np.concatenate([t.tree_.feature for t in boosting[-1].estimators_[:, 0]]))
    assert set(used_columns(boosting)) == split - {-2}
    assert np.all(boosting[-1].feature_importances_[used_columns(boosting)] >= 0)


def test_wrong_number_of_columns_is_one_clear_error():
    from sklearn.linear_model import Ridge

    x, y = cohort()
    model = pipeline(Ridge(), k=2).fit(x, y)
    with pytest.raises(ModelError, match="expected a matrix with 6 columns"):
        transformed(model, x[:, :5])
    assert transformed(model, x)[1] == ["x0", "x3"]  # default names; F = 88, 23, 26, 1.6, 0.2 -> t1c_a and flair_c
