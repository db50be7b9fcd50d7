"""Honest model selection: nested leave-one-patient-out never lets the outer patient influence its own prediction,
redundancy-aware selection lets a complementary sequence in, and every new family's bundle passes (and hostile
variants fail) KiMap's allow-list."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_hostile_bundles import no_skops_build, read_schema, refusal, skops_alone, step, write_schema  # noqa: F401

from KiMapLib.features.featuremaps.names import FEATURES
from KiMapLib.model import selection
from KiMapLib.model.bundle import load_model, save_bundle
from KiMapLib.model.candidates import Candidate, default_grid
from KiMapLib.model.metrics import regression_metrics
from KiMapLib.model.mrmr import mrmr_order
from KiMapLib.model.selection import nested_lopo
from KiMapLib.model.training import TrainingConfig, train

FIRSTORDER = FEATURES["firstorder"]


def complementary_table(seed: int = 0, patients: int = 12, biopsies: int = 8) -> list[dict]:
    """ki67 = 20 + 6 A + 4 B + noise: six near-copies of A in t1c (|r| 0.82 with ki67 each), three noisy views of B in
    adc (|r| about 0.5, like ADC in the phantom), three flair columns of noise. The F-test fills k = 4 with t1c."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(patients):
        for b in range(biopsies):
            a, c = rng.normal(size=2)
            row = {"patient_id": f"P{p:02d}", "biopsy_id": f"B{b}", "ki67": 20 + 6 * a + 4 * c + rng.normal(),
                   "sex": "MF"[p % 2], "age": 50 + p, "tumor_type": "primary", "institution": f"I{p % 3}"}
            row.update({f"t1c_original_firstorder_{name}": a + 0.1 * rng.normal() for name in FIRSTORDER[:6]})
            row.update({f"adc_original_firstorder_{name}": c + 0.3 * rng.normal() for name in FIRSTORDER[:3]})
            row.update({f"flair_original_firstorder_{name}": rng.normal() for name in FIRSTORDER[:3]})
            rows.append(row)
    return rows


def arrays(rows: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    columns = [c for c in rows[0] if "_original_" in c]
    matrix = np.array([[row[c] for c in columns] for row in rows], dtype=float)
    return matrix, np.array([row["ki67"] for row in rows]), np.array([row["patient_id"] for row in rows]), columns


SMALL_GRID = [Candidate("ridge", 4, "f_regression", {"alpha": 1.0}), Candidate("ridge", 4, "mrmr", {"alpha": 1.0}),
              Candidate("ridge", 2, "mrmr", {"alpha": 100.0})]


# -- the selection engine -----------------------------------------------------------------------------------------

def test_shared_fits_equal_each_candidates_own_pipeline():
    matrix, target, groups, _ = arrays(complementary_table(patients=5))
    matrix[::7, 2] = np.nan  # the imputer is part of what is shared
    train_rows, test_rows = groups != "P01", groups == "P01"
    grid = [*SMALL_GRID, Candidate("enet", None, "f_regression", {"alpha": 0.1, "l1_ratio": 0.5}),
            Candidate("rf", 5, "mrmr", {"n_estimators": 20, "min_samples_leaf": 2, "max_features": 0.5}),
            Candidate("gbr", 5, "mrmr", {"n_estimators": 20, "max_depth": 2, "learning_rate": 0.1})]
    shared = selection._fit_all(grid, matrix, target, train_rows, test_rows, seed=3)
    for row, candidate in zip(shared, grid, strict=True):
        alone = candidate.pipeline(matrix.shape[1], 3).fit(matrix[train_rows], target[train_rows])
        np.testing.assert_allclose(row, alone.predict(matrix[test_rows]), rtol=1e-12, atol=1e-9)


def test_the_outer_patient_cannot_influence_its_own_selection_or_prediction():
    matrix, target, groups, _ = arrays(complementary_table(patients=8))
    before = nested_lopo(matrix, target, groups, SMALL_GRID, n_jobs=1)
    for held_out in ("P02", "P05"):
        rows = groups == held_out
        changed = target.copy()
        changed[rows] = np.random.default_rng(1).permutation(changed[rows])[::-1] * 3 + 40  # nothing like before
        after = nested_lopo(matrix, changed, groups, SMALL_GRID, n_jobs=1)
        assert after.outer_winner[held_out] == before.outer_winner[held_out]
        assert after.inner_mse[held_out] == before.inner_mse[held_out]
        np.testing.assert_array_equal(after.outer_predicted[rows], before.outer_predicted[rows])
        np.testing.assert_array_equal(after.inner_predicted[held_out], before.inner_predicted[held_out])
        # ... while the other folds, whose inner loops do contain this patient, do see the change
        assert any(after.inner_mse[p] != before.inner_mse[p] for p in np.unique(groups) if p != held_out)


def test_every_fit_leaves_out_the_patients_it_serves_and_the_outputs_mean_what_they_say(monkeypatch):
    matrix, target, groups, _ = arrays(complementary_table(patients=5, biopsies=4))
    trained_on = []
    original = selection._fit_all

    def spy(candidates, matrix_, target_, train_rows, test_rows, seed):
        trained_on.append(frozenset(groups[train_rows]))
        assert not set(groups[train_rows]) & set(groups[test_rows])
        return original(candidates, matrix_, target_, train_rows, test_rows, seed)

    monkeypatch.setattr(selection, "_fit_all", spy)
    result = nested_lopo(matrix, target, groups, SMALL_GRID, n_jobs=1)
    patients = set(groups)
    expected = {frozenset(patients - {p, q}) for p in patients for q in patients}  # p == q: the LOPO refits
    assert sorted(map(sorted, trained_on)) == sorted(map(sorted, expected))
    assert len(trained_on) == 5 * 6 // 2  # n(n+1)/2 fits, each once
    for p in sorted(patients):
        winner = result.candidate(result.outer_winner[p])
        inner = result.inner_predicted[p]
        assert np.isnan(inner[groups == p]).all() and np.isfinite(inner[groups != p]).all()
        q = sorted(patients - {p})[0]
        rows = ~np.isin(groups, [p, q])
        by_hand = winner.pipeline(matrix.shape[1]).fit(matrix[rows], target[rows]).predict(matrix[groups == q])
        np.testing.assert_allclose(inner[groups == q], by_hand, rtol=1e-12)
        refit = winner.pipeline(matrix.shape[1]).fit(matrix[groups != p], target[groups != p])
        np.testing.assert_allclose(result.outer_predicted[groups == p], refit.predict(matrix[groups == p]),
                                   rtol=1e-12)
        mse = np.mean((inner[groups != p] - target[groups != p]) ** 2)
        assert result.inner_mse[p][winner.name] == pytest.approx(mse) == min(result.inner_mse[p].values())
    assert result.final_mse[result.final.name] == pytest.approx(np.mean((result.final_predicted - target) ** 2))


def test_leave_one_institution_out_keeps_the_whole_institution_out_of_the_inner_loop():
    rows = complementary_table(patients=9)
    matrix, target, groups, _ = arrays(rows)
    institutions = np.array([row["institution"] for row in rows])
    result = nested_lopo(matrix, target, groups, SMALL_GRID, outer=institutions, final=False, n_jobs=1)
    assert sorted(result.outer_winner) == ["I0", "I1", "I2"] and result.final is None
    for name in ("I0", "I1", "I2"):
        inside = institutions == name
        assert np.isnan(result.inner_predicted[name][inside]).all()
        assert np.isfinite(result.inner_predicted[name][~inside]).all()
    assert regression_metrics(target, result.outer_predicted)["r2"] > 0.9


# -- redundancy-aware selection lets the complementary sequence in -------------------------------------------------

def test_mrmr_ranks_the_complementary_sequence_second_where_the_f_test_ranks_it_last_of_the_signal():
    from sklearn.feature_selection import f_regression

    matrix, target, _, columns = arrays(complementary_table())
    f_top = [columns[i].split("_")[0] for i in np.argsort(-f_regression(matrix, target)[0])[:6]]
    mrmr_top = [columns[i].split("_")[0] for i in mrmr_order(matrix, target)[:4]]
    assert f_top == ["t1c"] * 6
    assert mrmr_top[:2] == ["t1c", "adc"] and "flair" not in mrmr_top


def test_nested_selection_picks_the_model_that_uses_both_sequences_and_it_predicts_better(monkeypatch):
    from KiMapLib.model import training

    rows = complementary_table()
    matrix, target, groups, _ = arrays(rows)
    result = nested_lopo(matrix, target, groups, SMALL_GRID, n_jobs=2)
    assert set(result.outer_winner.values()) == {"ridge mrmr k=4 alpha=1"}
    assert result.final.name == "ridge mrmr k=4 alpha=1"
    nested = regression_metrics(target, result.outer_predicted)
    f_test = np.sqrt(result.final_mse["ridge f_regression k=4 alpha=1"])
    assert nested["r2"] > 0.95 and nested["rmse"] < 1.5  # ki67 noise SD is 1; t1c alone explains 36/53
    assert f_test > 3.0
    monkeypatch.setattr(training, "default_grid", lambda *_: list(SMALL_GRID))  # the full grid takes minutes
    trained = train(rows, TrainingConfig(estimator="auto", n_jobs=2), model_id="test-both")
    assert {"t1c", "adc"} <= set(trained.card["required_sequences"]) and "flair" not in trained.card[
        "required_sequences"]
    report = trained.report
    assert report["cv"]["scheme"] == "nested leave-one-patient-out" and report["cv"]["r2"] > 0.9
    ablation = report["sequence_ablation"]
    assert ablation["without"]["adc"]["r2"] < ablation["all"]["r2"] - 0.2  # adc carries what t1c does not
    assert ablation["only"]["flair"]["r2"] < 0.1
    loio = report["leave_one_institution_out"]
    assert loio["folds"] == 3 and set(loio["per_institution"]) == {"I0", "I1", "I2"} and loio["r2"] > 0.9


def test_the_default_grid_names_are_unique_and_cover_every_family():
    grid = default_grid()
    assert len({c.name for c in grid}) == len(grid)
    assert {c.family for c in grid} == {"ridge", "enet", "rf", "gbr"}
    assert all(c.params.get("n_estimators", 0) <= 200 for c in grid)


# -- every family's bundle loads through the allow-list; hostile variants do not -----------------------------------

@pytest.fixture(scope="module")
def family_bundles(tmp_path_factory, tiny_cohort_rows):
    from KiMapLib.settings import ExtractionSettings

    folders = {}
    for family in ("enet", "gbr"):
        result = train(tiny_cohort_rows, TrainingConfig(estimator=family, k_features=8, n_jobs=1, extra_reports=False),
                       settings=ExtractionSettings(ball_radius_mm=3.0), model_id=f"test-{family}")
        folders[family] = (save_bundle(result.pipeline, result.card, spread=result.spread,
                                            out_dir=tmp_path_factory.mktemp(family) / "bundle"),
                           result.pipeline)
    return folders


@pytest.mark.parametrize("family", ["enet", "gbr"])
def test_new_families_load_and_predict_identically(family_bundles, family):
    folder, fitted = family_bundles[family]
    model = load_model(folder)
    matrix = np.random.default_rng(5).normal(0, 100, size=(16, len(model.input_features)))
    matrix[::4, ::3] = np.nan
    expected = fitted.predict(matrix)
    np.testing.assert_array_equal(model.pipeline.predict(matrix), expected)
    np.testing.assert_array_equal(skops_alone(folder).predict(matrix), expected)
    assert model.card["estimator"]["selector"] == "mrmr"
    assert step(read_schema(folder), 3)["content"]["content"]["score_func"]["__module__"] == "KiMapLib.model.mrmr"


@pytest.fixture
def gbr_bundle(tmp_path, family_bundles):
    target = tmp_path / "gbr"
    shutil.copytree(family_bundles["gbr"][0], target)
    return target


def boosting_trees(schema: dict) -> dict:
    return step(schema, 4)["content"]["content"]["estimators_"]


def test_a_foreign_object_in_the_boosting_tree_array_is_refused(gbr_bundle, no_skops_build):  # noqa: F811
    schema = read_schema(gbr_bundle)
    boosting_trees(schema)["content"][3]["content"][0] = step(schema, 2)  # a StandardScaler where a tree belongs
    write_schema(gbr_bundle, schema)
    refusal(gbr_bundle, "estimators_[3][0]: ObjectNode sklearn.preprocessing._data.StandardScaler where a "
                        "sklearn.tree._classes.DecisionTreeRegressor was expected")


def test_an_object_array_outside_the_boosting_trees_is_refused(gbr_bundle, no_skops_build):  # noqa: F811
    schema = read_schema(gbr_bundle)
    step(schema, 4)["content"]["content"]["train_score_"] = boosting_trees(schema)
    write_schema(gbr_bundle, schema)
    refusal(gbr_bundle, "train_score_: NdArrayNode numpy.ndarray has unexpected key(s) content, shape")


def test_an_init_estimator_and_a_loss_object_are_refused(gbr_bundle, no_skops_build):  # noqa: F811
    schema = read_schema(gbr_bundle)
    attributes = step(schema, 4)["content"]["content"]
    attributes["init_"] = {"__class__": "DummyRegressor", "__module__": "sklearn.dummy", "__loader__": "ObjectNode",
                           "__id__": 901}
    write_schema(gbr_bundle, schema)
    refusal(gbr_bundle, "init_: ObjectNode of sklearn.dummy.DummyRegressor is not on KiMap's allow-list")
    schema = read_schema(gbr_bundle)
    step(schema, 4)["content"]["content"]["init_"] = {"__class__": "CyHalfSquaredError", "__module__": "_loss",
                                                      "__loader__": "LossNode", "__id__": 902}
    write_schema(gbr_bundle, schema)
    refusal(gbr_bundle, "LossNode _loss.CyHalfSquaredError (a call of its type (loss)) is never loaded by KiMap")


def test_another_kimap_function_is_refused_as_a_score_function(gbr_bundle, no_skops_build):  # noqa: F811
    schema = read_schema(gbr_bundle)
    step(schema, 3)["content"]["content"]["score_func"]["__class__"] = "mrmr_order"
    write_schema(gbr_bundle, schema)
    refusal(gbr_bundle, "FunctionNode of KiMapLib.model.mrmr.mrmr_order is not on KiMap's allow-list")


def test_boosting_models_holding_the_wrong_values_are_refused(tmp_path, family_bundles):
    from test_hostile_bundles import dump_bundle

    from KiMapLib.errors import ModelError

    folder, _ = family_bundles["gbr"]
    cases = [("n_estimators_", 10**6, "estimators_: must be an object array of n_estimators_ x 1 trees"),
             ("init_", "mean", 'init_: must be "zero"'),
             ("train_score_", np.zeros(3), "train_score_: must be a float array of 150 values")]
    for attribute, value, expected in cases:
        model = load_model(folder)
        setattr(model.pipeline.steps[4][1], attribute, value)
        bad = dump_bundle(model.pipeline, model.card, tmp_path / attribute)
        with pytest.raises(ModelError, match=expected):
            load_model(bad)
    model = load_model(folder)
    model.pipeline.steps[4][1].estimators_[5, 0].random_state = 7
    with pytest.raises(ModelError, match=r"estimators_\[5, 0\].random_state: must be None"):
        load_model(dump_bundle(model.pipeline, model.card, tmp_path / "seeded"))
