"""Leave-one-patient-out validation: metrics are right and patient identity cannot leak."""

import numpy as np
import pytest

from KiMapLib.features.featuremaps.names import FEATURES
from KiMapLib.model.training import TrainingConfig, build_pipeline, lopo_predictions, regression_metrics, train

FIRSTORDER = FEATURES["firstorder"]


def identity_only_table(seed: int = 0, patients: int = 12, biopsies: int = 6) -> list[dict]:
    """Features that identify the patient (a per-patient fingerprint) and ki67 that depends only on the patient."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(patients):
        fingerprint = rng.normal(0, 1, 10)
        level = rng.uniform(5, 50)
        for b in range(biopsies):
            row = {"patient_id": f"P{p}", "biopsy_id": f"B{b}", "ki67": level + rng.normal(0, 1),
                   "sex": "MF"[p % 2], "age": 50 + p, "tumor_type": "primary", "institution": "I"}
            row.update({f"t1c_original_firstorder_{name}": fingerprint[n] + rng.normal(0, 0.05)
                        for n, name in enumerate(FIRSTORDER[:10])})
            rows.append(row)
    return rows


@pytest.mark.parametrize("estimator", ["ridge", "rf"])
def test_lopo_on_patient_identity_signal_gives_no_skill(estimator):
    rows = identity_only_table()
    result = train(rows, TrainingConfig(k_features=10, estimator=estimator))
    assert result.report["cv"]["r2"] <= 0.1
    # The same table split by biopsy (the mistake LOPO prevents) looks excellent: the leak is real.
    from sklearn.model_selection import KFold, cross_val_predict

    columns = result.card["input_features"]
    from KiMapLib.model.design import design_matrix

    matrix = design_matrix(rows, columns)
    target = np.array([r["ki67"] for r in rows])
    forest = build_pipeline(TrainingConfig(k_features=10, estimator="rf"), len(columns))
    leaky = cross_val_predict(forest, matrix, target, cv=KFold(5, shuffle=True, random_state=0))
    assert regression_metrics(target, leaky)["r2"] > 0.8


def test_regression_metrics_values():
    measured = np.array([10.0, 20.0, 30.0, 40.0])
    predicted = np.array([12.0, 18.0, 33.0, 37.0])
    metrics = regression_metrics(measured, predicted)
    assert metrics["mse"] == pytest.approx((4 + 4 + 9 + 9) / 4)
    assert metrics["rmse"] == pytest.approx(np.sqrt(6.5))
    assert metrics["r2"] == pytest.approx(1 - 26 / 500)


def test_folds_never_train_on_the_held_out_patient(monkeypatch):
    rows = identity_only_table(patients=4, biopsies=3)
    seen = []
    import KiMapLib.model.training as training

    original = training.build_pipeline

    class Spy:
        def __init__(self, pipeline):
            self.pipeline = pipeline

        def fit(self, matrix, target):
            seen.append(len(target))
            self.pipeline.fit(matrix, target)
            return self

        def predict(self, matrix):
            return self.pipeline.predict(matrix)

    monkeypatch.setattr(training, "build_pipeline", lambda config, n: Spy(original(config, n)))
    from KiMapLib.model.design import design_matrix

    columns = [c for c in rows[0] if "_original_" in c]
    groups = np.array([r["patient_id"] for r in rows])
    target = np.array([r["ki67"] for r in rows])
    lopo_predictions(TrainingConfig(estimator="ridge"), design_matrix(rows, columns), target, groups)
    assert seen == [9, 9, 9, 9]  # 4 folds, each trained on the 3 other patients' 3 biopsies


def test_card_and_probability_are_consistent(tiny_model_dir):
    from KiMapLib.model.bundle import load_model

    model = load_model(tiny_model_dir)
    assert model.card["cv"]["scheme"] == "leave-one-patient-out"
    assert model.card["training"]["patients"] == 6 and model.card["training"]["biopsies"] == 24
    assert set(model.used_features) <= set(model.card["radiomic_features"])
    uncertainty = model.card["uncertainty"]
    assert uncertainty["level"] == 0.9 and len(uncertainty["scores"]) == 24  # one honest score per biopsy
    assert model.card["domain"]["columns"] == uncertainty["columns"]
    assert "slope" not in model.card["probability"]  # P(high) comes from the predictive distribution
    prediction = model.predict(np.zeros((3, len(model.input_features))))
    assert np.all(prediction.lower <= prediction.ki67 + 1e-9) and np.all(prediction.ki67 <= prediction.upper + 1e-9)
    assert np.all((prediction.p_high >= 0) & (prediction.p_high <= 1)) and np.isfinite(prediction.ood).all()


@pytest.mark.parametrize("change, named", [({"bin_width": 1e-9}, "bin_width"), ({"min_ball_fraction": 0.0},
                                                                                 "min_ball_fraction"),
                                           ({"ball_radius_mm": 200.0}, "ball_radius_mm")])
def test_settings_outside_the_card_bounds_are_refused_before_training(monkeypatch, change, named):
    from KiMapLib.errors import KiMapError
    from KiMapLib.model import training
    from KiMapLib.settings import ExtractionSettings

    def never(*args, **kwargs):
        raise AssertionError("validation started")

    monkeypatch.setattr(training, "nested_lopo", never)
    with pytest.raises(KiMapError, match=rf"^extraction settings: {named}: {named} .* is outside"):
        train(identity_only_table(), TrainingConfig(), settings=ExtractionSettings(**change))


@pytest.mark.parametrize("column, expected", [
    ("t1c_original_firstorder_F0", "column t1c_original_firstorder_F0 is not a feature KiMap computes"),
    ("t1c_original_shape_Sphericity", "column t1c_original_shape_Sphericity is not a feature KiMap computes"),
    ("dwi_original_glcm_Contrast", "column dwi_original_glcm_Contrast is not a feature KiMap computes"),
])
def test_columns_kimap_cannot_compute_are_refused_before_training(monkeypatch, column, expected):
    from KiMapLib.errors import KiMapError
    from KiMapLib.model import training

    monkeypatch.setattr(training, "nested_lopo", lambda *a, **k: pytest.fail("validation started"))
    rows = [dict(row, **{column: 1.0}) for row in identity_only_table()]
    with pytest.raises(KiMapError, match=f"^features table: {expected}"):
        train(rows, TrainingConfig())
