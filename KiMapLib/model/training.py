"""Training and leave-one-patient-out validation of the ki67 model (scikit-learn pipelines).

Selection, imputation and scaling live inside the pipeline, so in cross-validation they never see the held-out
patient. With ``estimator="auto"`` the model family and its size are chosen by nested leave-one-patient-out
(:mod:`~KiMapLib.model.selection`): the reported score is the outer one. The probability P(ki67 >= threshold) is
a logistic (Platt) map of the predicted ki67, fitted on out-of-fold predictions of held-out patients.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from KiMapLib.errors import KiMapError
from KiMapLib.model.bundle import RESEARCH_NOTICE
from KiMapLib.model.candidates import FAMILIES, FIXED_PARAMS, SELECTORS, Candidate, default_grid, strip_fit_state
from KiMapLib.model.design import DEFAULT_COVARIATES, design_matrix, radiomic_columns
from KiMapLib.model.metrics import metrics_per_group, regression_metrics
from KiMapLib.model.reports import institution_report, nested_sequence_ablation, patient_institutions, sequence_ablation
from KiMapLib.model.selection import NestedResult, nested_lopo
from KiMapLib.model.uncertainty_fit import FoldFit, fit_uncertainty
from KiMapLib.progress import ProgressCallback, report, scaled
from KiMapLib.settings import FEATURE_CLASSES, SEQUENCES, ExtractionSettings

#: ``auto``: nested selection over every family's grid; a family name: that family with fixed hyper-parameters.
ESTIMATORS = ("auto", *FAMILIES)
__all__ = ["ESTIMATORS", "TrainingConfig", "TrainingResult", "build_pipeline", "candidates_for", "regression_metrics",
           "train"]


@dataclass
class TrainingConfig:
    """Hyper-parameters (validated in :meth:`check`)."""

    target: str = "ki67"
    group: str = "patient_id"
    threshold_percent: float = 20.0
    estimator: str = "auto"  # "auto" or one of FAMILIES (then k_features and selector apply; enet keeps all)
    k_features: int = 20
    selector: str = "mrmr"  # "mrmr" (redundancy-aware) or "f_regression" (univariate F-test)
    covariates: tuple[str, ...] = DEFAULT_COVARIATES
    seed: int = 0
    n_jobs: int = 2  # processes for the cross-validation fits
    extra_reports: bool = True  # leave-one-institution-out and the sequence ablation in the report
    nested_ablation: bool = False  # the sequence ablation runs the nested selection per subset (2 x sequences longer)
    interval_level: float = 0.9  # default level of the prediction intervals (stored in the card)
    families: tuple[str, ...] = FAMILIES  # the families "auto" chooses from
    sequences: tuple[str, ...] | None = None  # the sequences whose features the model may use (None: every one)

    def check(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise KiMapError(f"unknown estimator '{self.estimator}'", input_name="--estimator",
                             hint=f"use one of {', '.join(ESTIMATORS)}")
        if self.selector not in SELECTORS:
            raise KiMapError(f"unknown selector '{self.selector}'", input_name="--selector",
                             hint=f"use one of {', '.join(SELECTORS)}")
        if self.n_jobs < 1:
            raise KiMapError("n_jobs must be at least 1", input_name="--n-jobs")
        if not 0 < self.threshold_percent < 100:
            raise KiMapError("threshold must be between 0 and 100 %", input_name="--threshold")
        if self.k_features < 1:
            raise KiMapError("k_features must be at least 1", input_name="--k-features")
        unknown = [family for family in self.families if family not in FAMILIES]
        if unknown or not self.families:
            raise KiMapError(f"unknown model family '{unknown[0] if unknown else ''}'", input_name="--families",
                             hint=f"use a comma-separated subset of {','.join(FAMILIES)}")
        if self.sequences is not None and (not self.sequences or "t1c" not in self.sequences
                                           or any(s not in SEQUENCES for s in self.sequences)):
            raise KiMapError(f"sequences {','.join(self.sequences)}: t1c and known sequences are needed",
                             input_name="--sequences", hint=f"a comma-separated subset of {','.join(SEQUENCES)}")
        if not 0.5 <= self.interval_level <= 0.99:
            raise KiMapError(f"interval level {self.interval_level} is outside 0.5-0.99", input_name="--interval-level",
                             hint="give e.g. 0.9 for 90 % intervals")


def fixed_candidate(config: TrainingConfig) -> Candidate:
    """The one candidate of a fixed family (``config.estimator`` not "auto"): elastic net keeps every column."""
    if config.estimator not in FAMILIES:
        raise KiMapError(f"'{config.estimator}' is not one model family", input_name="--estimator",
                         hint=f"use one of {', '.join(FAMILIES)}")
    k = None if config.estimator == "enet" else config.k_features
    return Candidate(config.estimator, k, config.selector, dict(FIXED_PARAMS[config.estimator]))


def candidates_for(config: TrainingConfig) -> list[Candidate]:
    """What the nested selection chooses from: the default grid ("auto") or the one fixed candidate."""
    return default_grid(config.families) if config.estimator == "auto" else [fixed_candidate(config)]


def build_pipeline(config: TrainingConfig, n_columns: int):
    """Impute (median) -> drop constant -> scale -> keep the k best -> regressor, for a fixed family."""
    return fixed_candidate(config).pipeline(n_columns, config.seed)


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
    nested: NestedResult | None = None  # outer/inner out-of-fold predictions for interval calibration
    nested_institutions: NestedResult | None = None  # the same with institutions as outer folds (None: < 2)
    spread: object = None  # the prediction intervals' spread model (saved beside the pipeline)
    matrix: np.ndarray | None = None  # the design matrix (rows as in ``measured``; columns = card input_features)


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
    radiomic = [column for column in radiomic_columns(rows)
                if config.sequences is None or column.split("_", 1)[0] in config.sequences]
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

    candidates = candidates_for(config)
    nested = nested_lopo(matrix, target, groups, candidates, seed=config.seed, n_jobs=config.n_jobs,
                         progress=scaled(progress, 0.0, 0.75 if config.extra_reports else 0.95))
    predicted = nested.outer_predicted
    report(progress, 0.95 if not config.extra_reports else 0.75, "final fit on all patients")
    chosen = nested.final
    pipeline = strip_fit_state(chosen.pipeline(matrix.shape[1], config.seed).fit(matrix, target))
    selected = pipeline[:-1].get_feature_names_out(np.array(columns, dtype=object))
    used = [name for name in influential_columns(pipeline, selected) if name in radiomic]
    row_institutions = [row.get("institution") for row in rows]
    uncertainty = fit_uncertainty(outer_folds(nested, matrix, target, config.seed), pipeline, matrix, target, groups,
                                  columns, config.threshold_percent, level=config.interval_level, seed=config.seed,
                                  institutions=[str(v or "(none)") for v in row_institutions])
    probability = uncertainty.p_high  # each patient's from the other patients' calibration scores

    sequences = [s for s in SEQUENCES if any(column.startswith(f"{s}_") for column in radiomic)]
    needed = [s for s in sequences if s == "t1c" or any(name.startswith(f"{s}_") for name in used)]
    metrics = regression_metrics(target, predicted)
    per_patient = {p: regression_metrics(target[groups == p], predicted[groups == p])["rmse"] for p in patients}
    institutions = sorted({str(value) for value in row_institutions if value})
    per_institution = metrics_per_group(target, predicted, np.array([str(v or "(none)") for v in row_institutions]),
                                        groups)
    selection = {"method": "nested leave-one-patient-out" if len(candidates) > 1 else "fixed (one candidate)",
                 "candidates": len(candidates), "final": chosen.name, "fold_winners": nested.winner_counts()}
    cv = {"scheme": "nested leave-one-patient-out" if len(candidates) > 1 else "leave-one-patient-out",
          "folds": len(patients), **metrics, **probability_metrics(high, probability),
          "rmse_per_patient_median": float(np.median(list(per_patient.values()))),
          "per_institution": per_institution, "selection": selection,
          "intervals": {key: uncertainty.report["intervals"][key] for key in
                        ("level", "coverage", "mean_width", "median_width", "width_sd", "per_institution")},
          "calibration": {key: uncertainty.report["calibration"][key] for key in ("ece", "brier", "prevalence")}}
    loio = ablation = by_institution = None
    if config.extra_reports:
        labels = patient_institutions(groups, row_institutions)
        loio, by_institution = institution_report(matrix, target, groups, labels, candidates, seed=config.seed,
                                                  n_jobs=config.n_jobs, progress=scaled(progress, 0.75, 0.9))
        report(progress, 0.9, "sequence ablation")
        ablation = run_sequence_ablation(config, matrix, target, groups, columns, nested,
                                         progress=scaled(progress, 0.9, 0.99))
        if loio:
            cv["leave_one_institution_out"] = {key: loio[key] for key in ("folds", "mse", "rmse", "r2")}
        if ablation:
            cv["sequence_ablation"] = {"scheme": ablation["scheme"], "nested": ablation["nested"]}
    card = {
        "schema_version": 1,
        "model_id": model_id,
        "title": title or f"ki67 regression ({chosen.family}) from {', '.join(needed)} radiomics",
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
        "probability": {"method": "1 - the conformal predictive distribution at the threshold (section uncertainty)",
                        "meaning": f"P(ki67 >= {config.threshold_percent:g} %)"},
        **uncertainty.card_sections,
        "estimator": {"name": chosen.family, "k_features": "all" if chosen.k is None else chosen.k,
                      "selector": chosen.selector, "params": dict(chosen.params), "candidate": chosen.name,
                      "selection": selection["method"], "seed": config.seed,
                      "steps": [name for name, _ in pipeline.steps]},
        "training": {"patients": len(patients), "biopsies": len(rows), "institutions": institutions,
                     "ki67_mean": float(target.mean()), "ki67_sd": float(target.std()),
                     "fraction_high": float(high.mean()), "data": data_description or "user cohort table"},
        "cv": cv,
        "library_versions": library_versions(),
    }
    report_data = {"model_id": model_id, "cv": cv, "rmse_per_patient": per_patient,
                   "uncertainty": uncertainty.report,
                   "selection": selection_report(nested), "leave_one_institution_out": loio,
                   "sequence_ablation": ablation,
                   "biopsies": [{"patient_id": g, "biopsy_id": str(row.get("biopsy_id")), "measured": float(m),
                                 "predicted": float(p), "ki67_lower": float(lo), "ki67_upper": float(hi),
                                 "probability_high": float(q), "institution": row.get("institution")}
                                for g, row, m, p, lo, hi, q in zip(groups, rows, target, predicted, uncertainty.lower,
                                                                   uncertainty.upper, probability, strict=True)]}
    report(progress, 1.0, "trained")
    return TrainingResult(pipeline=pipeline, card=card, report=report_data, measured=target, predicted=predicted,
                          probability=probability, groups=groups, institutions=institutions, nested=nested,
                          nested_institutions=by_institution, matrix=matrix, spread=uncertainty.spread_model)


def run_sequence_ablation(config: TrainingConfig, matrix: np.ndarray, target: np.ndarray, groups: np.ndarray,
                          columns: Sequence[str], nested: NestedResult,
                          progress: ProgressCallback | None = None) -> dict | None:
    """The sequence ablation: of the final candidate (default), or with the nested selection run on each sequence
    subset (``config.nested_ablation`` and more than one candidate; reuses ``nested`` for all columns)."""
    if config.nested_ablation and len(nested.candidates) > 1:
        return nested_sequence_ablation(matrix, target, groups, columns, nested.candidates, seed=config.seed,
                                        n_jobs=config.n_jobs, all_columns=nested, progress=progress)
    return sequence_ablation(matrix, target, groups, columns, nested.final, seed=config.seed, n_jobs=config.n_jobs)


def outer_folds(nested: NestedResult, matrix: np.ndarray, target: np.ndarray, seed: int) -> list[FoldFit]:
    """Each outer fold's winner refitted without the fold (as the nested selection fitted it), with the fold's rows
    and the inner out-of-fold predictions of its training rows: what the conformal calibration needs."""
    folds = []
    for label, name in nested.outer_winner.items():
        own = nested.outer == label
        train_rows, held_out = np.flatnonzero(~own), np.flatnonzero(own)
        fitted = nested.candidate(name).pipeline(matrix.shape[1], seed).fit(matrix[train_rows], target[train_rows])
        folds.append(FoldFit(fitted, held_out, train_rows, nested.inner_predicted[label][train_rows]))
    return folds


def influential_columns(pipeline, selected: Sequence[str]) -> list[str]:
    """The selected columns the fitted regressor depends on: a non-zero coefficient (linear) or at least one split
    (trees). Other columns may be left empty at prediction (imputed): the prediction does not change."""
    model = pipeline.steps[-1][1]
    if hasattr(model, "coef_"):
        keep = np.asarray(model.coef_).reshape(-1) != 0
    else:
        trees = model.estimators_ if isinstance(model.estimators_, list) else list(model.estimators_.ravel())
        keep = np.zeros(len(selected), dtype=bool)
        for tree in trees:
            split = tree.tree_.feature
            keep[split[split >= 0]] = True
    return [str(name) for name, used in zip(selected, keep, strict=True) if used]


def selection_report(nested: NestedResult) -> dict:
    """The nested selection for ``cv_report.json``: candidates, each outer fold's winner and inner MSE of every
    candidate, and the final choice with each candidate's LOPO MSE on all patients."""
    return {"candidates": [candidate.to_dict() for candidate in nested.candidates],
            "outer_winner": nested.outer_winner, "fold_winners": nested.winner_counts(),
            "inner_mse": nested.inner_mse, "final": nested.final.to_dict() if nested.final else None,
            "final_lopo_mse": nested.final_mse}
