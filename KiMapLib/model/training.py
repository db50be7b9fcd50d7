"""Training and leave-one-patient-out validation of the ki67 model (scikit-learn pipelines).

Selection, imputation and scaling live inside the pipeline, so in cross-validation they never see the held-out
patient. The probability P(ki67 >= threshold) is a logistic (Platt) map of the predicted ki67, fitted on
out-of-fold predictions of held-out patients.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from KiMapLib.errors import KiMapError
from KiMapLib.model.bundle import RESEARCH_NOTICE
from KiMapLib.model.design import DEFAULT_COVARIATES, design_matrix, radiomic_columns
from KiMapLib.progress import ProgressCallback, report
from KiMapLib.settings import FEATURE_CLASSES, SEQUENCES, ExtractionSettings

ESTIMATORS = ("rf", "ridge")


@dataclass
class TrainingConfig:
    """Hyper-parameters (validated in :meth:`check`)."""

    target: str = "ki67"
    group: str = "patient_id"
    threshold_percent: float = 20.0
    estimator: str = "ridge"
    k_features: int = 20
    covariates: tuple[str, ...] = DEFAULT_COVARIATES
    seed: int = 0

    def check(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise KiMapError(f"unknown estimator '{self.estimator}'", input_name="--estimator",
                             hint=f"use one of {', '.join(ESTIMATORS)}")
        if not 0 < self.threshold_percent < 100:
            raise KiMapError("threshold must be between 0 and 100 %", input_name="--threshold")
        if self.k_features < 1:
            raise KiMapError("k_features must be at least 1", input_name="--k-features")


def build_pipeline(config: TrainingConfig, n_columns: int):
    """Impute (median) -> drop constant -> scale -> keep the k best (F-test) -> regressor."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.feature_selection import SelectKBest, VarianceThreshold, f_regression
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    regressor = (RandomForestRegressor(n_estimators=300, min_samples_leaf=3, max_features=0.5,
                                       random_state=config.seed, n_jobs=1)
                 if config.estimator == "rf" else Ridge(alpha=10.0))
    return Pipeline([
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("drop_constant", VarianceThreshold(0.0)),
        ("scale", StandardScaler()),
        ("select", SelectKBest(f_regression, k=min(config.k_features, n_columns))),
        ("regress", regressor),
    ])


def regression_metrics(measured: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """MSE, RMSE and R² (1 - SSres/SStot, pooled over all biopsies)."""
    residual = measured - predicted
    mse = float(np.mean(residual**2))
    total = float(np.sum((measured - measured.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / total if total > 0 else float("nan")
    return {"mse": mse, "rmse": float(np.sqrt(mse)), "r2": r2}


def fit_platt(predicted: np.ndarray, high: np.ndarray) -> tuple[float, float]:
    """Logistic P(high | predicted ki67): (slope, intercept); lightly regularized for separable data."""
    from sklearn.linear_model import LogisticRegression

    if high.all() or not high.any():
        raise KiMapError("all biopsies are on one side of the threshold: cannot calibrate a probability",
                         input_name="--threshold", hint="choose a threshold inside the measured ki67 range")
    model = LogisticRegression(C=10.0).fit(predicted.reshape(-1, 1), high.astype(int))
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def _sigmoid(values: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(slope * values + intercept)))


def probability_metrics(high: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import brier_score_loss, roc_auc_score

    auc = float(roc_auc_score(high, probability)) if 0 < high.sum() < len(high) else float("nan")
    return {"brier": float(brier_score_loss(high, probability)), "auc": auc}


@dataclass
class TrainingResult:
    pipeline: object
    card: dict
    report: dict
    measured: np.ndarray
    predicted: np.ndarray
    probability: np.ndarray
    groups: np.ndarray
    institutions: list[str] = field(default_factory=list)


def check_feature_columns(columns: Sequence[str], settings: ExtractionSettings) -> None:
    """Every radiomic column must be a feature KiMap computes (the model card's pattern) of a class in ``settings``:
    a model on other columns could never be applied, so it is refused before training rather than at the save."""
    import re

    from KiMapLib.model.bundle import card_schema

    pattern = re.compile(card_schema()["properties"]["used_features"]["items"]["pattern"])
    for column in columns:
        if not pattern.search(column):
            raise KiMapError(f"column {column} is not a feature KiMap computes (<sequence>_original_<class>_<Feature>"
                             f" with a sequence {'/'.join(SEQUENCES)} and a pyradiomics feature of "
                             f"{', '.join(FEATURE_CLASSES)})", input_name="features table",
                             hint="drop the column or make the table with `kimap extract`")
        if column.split("_")[2] not in settings.feature_classes:
            raise KiMapError(f"column {column} is of a feature class outside the extraction settings "
                             f"({', '.join(settings.feature_classes)})", input_name="features table")


def lopo_predictions(config: TrainingConfig, matrix: np.ndarray, target: np.ndarray, groups: np.ndarray,
                     progress: ProgressCallback | None = None) -> np.ndarray:
    """Out-of-fold predictions with each patient held out once (the pipeline refitted per fold)."""
    predicted = np.empty_like(target)
    patients = np.unique(groups)
    for number, patient in enumerate(patients):
        report(progress, number / len(patients), f"held-out patient {patient}")
        test = groups == patient
        fold = build_pipeline(config, matrix.shape[1]).fit(matrix[~test], target[~test])
        predicted[test] = fold.predict(matrix[test])
    return predicted


def lopo_probabilities(predicted: np.ndarray, high: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Calibrated probabilities for each held-out patient, with the calibrator fitted on the other patients."""
    probability = np.empty_like(predicted)
    for patient in np.unique(groups):
        test = groups == patient
        slope, intercept = fit_platt(predicted[~test], high[~test])
        probability[test] = _sigmoid(predicted[test], slope, intercept)
    return probability


def library_versions() -> dict[str, str]:
    import numpy
    import SimpleITK
    import sklearn
    import skops

    from KiMapLib import __version__
    from KiMapLib.features.extraction import pyradiomics_version

    return {"kimap": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
            "scikit-learn": sklearn.__version__, "skops": skops.__version__,
            "SimpleITK": SimpleITK.Version_VersionString(), "pyradiomics": pyradiomics_version()}


def train(rows: Sequence[dict], config: TrainingConfig | None = None, *, settings: ExtractionSettings | None = None,
          model_id: str = "kimap-ki67-custom", title: str = "", data_description: str = "",
          progress: ProgressCallback | None = None) -> TrainingResult:
    """Validate leave-one-patient-out, then fit the final pipeline on all rows and describe it in a card."""
    config = config or TrainingConfig()
    config.check()
    settings = settings or ExtractionSettings()
    settings.check()  # the card schema's bounds, before hours of validation rather than at the save
    rows = [row for row in rows if row.get(config.target) is not None]
    if not rows:
        raise KiMapError(f"no row has a measured '{config.target}'", input_name="features table")
    missing_group = [row for row in rows if not row.get(config.group)]
    if missing_group:
        raise KiMapError(f"{len(missing_group)} rows have no '{config.group}'", input_name="features table",
                         hint="every biopsy needs its patient for leave-one-patient-out validation")
    radiomic = radiomic_columns(rows)
    if not radiomic:
        raise KiMapError("no radiomic feature columns (<sequence>_original_<class>_<feature>)",
                         input_name="features table", hint="make the table with `kimap extract`")
    check_feature_columns(radiomic, settings)
    columns = radiomic + list(config.covariates)
    matrix = design_matrix(rows, columns)
    target = np.array([float(row[config.target]) for row in rows])
    groups = np.array([str(row[config.group]) for row in rows])
    patients = np.unique(groups)
    if len(patients) < 3:
        raise KiMapError(f"only {len(patients)} patients: leave-one-patient-out needs at least 3",
                         input_name="features table")
    high = target >= config.threshold_percent

    predicted = lopo_predictions(config, matrix, target, groups, progress)
    probability = lopo_probabilities(predicted, high, groups)
    slope, intercept = fit_platt(predicted, high)
    report(progress, 0.95, "final fit on all patients")
    pipeline = build_pipeline(config, matrix.shape[1]).fit(matrix, target)
    selected = pipeline[:-1].get_feature_names_out(np.array(columns, dtype=object))
    used = [name for name in selected if name in radiomic]

    sequences = [s for s in SEQUENCES if any(column.startswith(f"{s}_") for column in radiomic)]
    needed = [s for s in sequences if s == "t1c" or any(name.startswith(f"{s}_") for name in used)]
    metrics = regression_metrics(target, predicted)
    per_patient = {p: regression_metrics(target[groups == p], predicted[groups == p])["rmse"] for p in patients}
    institutions = sorted({str(row.get("institution")) for row in rows if row.get("institution")})
    cv = {"scheme": "leave-one-patient-out", "folds": len(patients), **metrics,
          **probability_metrics(high, probability), "rmse_per_patient_median": float(np.median(
              list(per_patient.values())))}
    card = {
        "schema_version": 1,
        "model_id": model_id,
        "title": title or f"ki67 regression ({config.estimator}) from {', '.join(sequences)} radiomics",
        "intended_use": RESEARCH_NOTICE,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model_file": {"path": "model.skops", "sha256": "0" * 64, "format": "skops"},
        "required_sequences": needed,
        "trained_on_sequences": sequences,
        "input_features": columns,
        "radiomic_features": radiomic,
        "used_features": used,
        "selected_columns": [str(name) for name in selected],
        "covariates": {"numeric": list(config.covariates), "categorical": [],
                       "encoding": {"age": "years", "sex_female": "1 if sex F, 0 if M",
                                    "tumor_recurrent": "1 if recurrent, 0 if primary",
                                    "missing": "imputed with the training median"}},
        "extraction": {**settings.to_dict(), "pyradiomics_version": library_versions()["pyradiomics"]},
        "target": {"name": config.target, "unit": "%", "threshold_percent": config.threshold_percent,
                   "definition": "ki67 labelling index (% of tumour nuclei positive) of the biopsy specimen"},
        "probability": {"method": "Platt scaling of predicted ki67, fitted on leave-one-patient-out predictions",
                        "slope": slope, "intercept": intercept,
                        "meaning": f"P(ki67 >= {config.threshold_percent:g} %)"},
        "estimator": {"name": config.estimator, "k_features": config.k_features, "seed": config.seed,
                      "steps": [name for name, _ in pipeline.steps]},
        "training": {"patients": len(patients), "biopsies": len(rows), "institutions": institutions,
                     "ki67_mean": float(target.mean()), "ki67_sd": float(target.std()),
                     "fraction_high": float(high.mean()), "data": data_description or "user cohort table"},
        "cv": cv,
        "library_versions": library_versions(),
    }
    report_data = {"model_id": model_id, "cv": cv, "rmse_per_patient": per_patient,
                   "biopsies": [{"patient_id": g, "biopsy_id": str(row.get("biopsy_id")), "measured": float(m),
                                 "predicted": float(p), "probability_high": float(q),
                                 "institution": row.get("institution")}
                                for g, row, m, p, q in zip(groups, rows, target, predicted, probability, strict=True)]}
    report(progress, 1.0, "trained")
    return TrainingResult(pipeline=pipeline, card=card, report=report_data, measured=target, predicted=predicted,
                          probability=probability, groups=groups, institutions=institutions)
