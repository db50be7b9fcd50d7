"""Fitting how sure the model is, from its cross-validation: prediction intervals (spread model + conformal scores),
the out-of-domain reference and the global explanations, as card sections and a report.

Input: for every outer leave-one-patient-out fold its fitted pipeline, held-out rows and the inner out-of-fold
predictions of its training rows; the final pipeline. Nothing here sees a held-out patient's ki67 while fitting what
scores that patient (:func:`KiMapLib.model.intervals.cross_conformal`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from KiMapLib.model.calibration import calibration_summary
from KiMapLib.model.domain import fit_domain
from KiMapLib.model.explain import contributions, global_importance
from KiMapLib.model.intervals import (
    OuterFold,
    cross_conformal,
    fit_spread,
    lopo_coverage,
    lopo_exceedance,
    lopo_intervals,
)
from KiMapLib.model.transformed import transformed

DEFAULT_LEVEL = 0.9
DOMAIN_QUANTILE = 0.99
INTERVAL_METHOD = ("normalized split-conformal (cross-conformal over patients): ki67 = mu(x) + spread(x) * e, "
                   "spread = random forest of |residual| on the model's used columns, e = signed normalized scores "
                   "(y - mu) / spread of every biopsy while its patient was held out (outer leave-one-patient-out "
                   "prediction; spread model fitted on the other patients' inner out-of-fold residuals); equal-tailed "
                   "conformal quantiles; P(ki67 >= threshold) from the same predictive distribution")


@dataclass
class FoldFit:
    """One outer fold: its pipeline fitted without the held-out patient, the held-out rows, the training rows and
    their inner out-of-fold predictions (each training patient held out of an inner fit)."""

    pipeline: object
    held_out: np.ndarray
    train_rows: np.ndarray
    inner_predictions: np.ndarray


@dataclass
class UncertaintyFit:
    spread_model: object
    card_sections: dict  # "uncertainty", "domain", "explanations"
    report: dict  # "intervals" (coverage/width), "calibration" (ECE, Brier, curve), "per biopsy" arrays
    lower: np.ndarray  # held-out intervals (each patient calibrated on the others)
    upper: np.ndarray
    p_high: np.ndarray  # held-out P(ki67 >= threshold)


def fit_uncertainty(folds: Sequence[FoldFit], final_pipeline, matrix: np.ndarray, target: np.ndarray,
                    groups: np.ndarray, input_names: Sequence[str], threshold: float, *,
                    institutions: Sequence[str] | None = None, level: float = DEFAULT_LEVEL, seed: int = 0,
                    spread_trees: int = 200) -> UncertaintyFit:
    """Spread model, conformal scores, domain and explanations of ``final_pipeline`` from the outer ``folds``."""
    outer_folds = []
    predicted = np.full(len(target), np.nan)
    for fold in folds:
        z_train, _ = transformed(fold.pipeline, matrix[fold.train_rows], input_names)
        z_held, _ = transformed(fold.pipeline, matrix[fold.held_out], input_names)
        predicted[fold.held_out] = fold.pipeline.predict(matrix[fold.held_out])
        outer_folds.append(OuterFold(
            held_out=fold.held_out, train_features=z_train,
            train_abs_residuals=np.abs(target[fold.train_rows] - fold.inner_predictions),
            held_out_features=z_held, held_out_predictions=predicted[fold.held_out]))
    scores, spread, predicted = cross_conformal(outer_folds, target, seed=seed, n_estimators=spread_trees)
    z_final, columns = transformed(final_pipeline, matrix, input_names)
    spread_model = fit_spread(z_final, np.abs(target - predicted), seed=seed, n_estimators=spread_trees)

    coverage = lopo_coverage(target, predicted, spread, scores, groups, level, institutions)
    lower, upper = lopo_intervals(predicted, spread, scores, groups, level)
    p_high = lopo_exceedance(predicted, spread, scores, groups, threshold)
    calibration = calibration_summary(target >= threshold, p_high)
    domain = fit_domain(z_final, groups, DOMAIN_QUANTILE)
    explanation = contributions(final_pipeline, matrix, input_names)
    importance = global_importance(explanation.values, explanation.names)
    sections = {
        "uncertainty": {"method": INTERVAL_METHOD, "level": level, "scores": [float(s) for s in scores],
                        "columns": list(columns),
                        "calibration": {"coverage_lopo": coverage["coverage"], "mean_width": coverage["mean_width"],
                                        "width_sd": coverage["width_sd"], "ece": calibration["ece"],
                                        "brier": calibration["brier"]}},
        "domain": {**domain, "columns": list(columns)},
        "explanations": {"method": ("exact linear contributions coef * z" if hasattr(final_pipeline[-1], "coef_")
                                    else "TreeSHAP (path-dependent, exact)") + " in ki67 percentage points",
                         "global_importance_mean_abs": {k: round(v, 4) for k, v in list(importance.items())[:20]}},
    }
    report = {"intervals": {k: v for k, v in coverage.items() if k != "per_patient"},
              "intervals_per_patient": coverage["per_patient"], "calibration": calibration,
              "domain": {"threshold": domain["threshold"], "quantile": DOMAIN_QUANTILE,
                         "lopo_distances_median": domain["lopo_distances_median"]},
              "global_importance": importance}
    return UncertaintyFit(spread_model, sections, report, lower, upper, p_high)
