"""Locally adaptive prediction intervals and P(ki67 >= t): normalized split-conformal, calibrated on held-out patients.

A spread model ``s(z)`` (a random forest on the point model's used columns ``Z``) predicts the typical absolute error
of the point model ``mu(z)``. Each cohort biopsy gets an honest signed, normalized score ``e = (y - mu) / s``, with
``mu`` from the outer leave-one-patient-out model and ``s`` from a spread model fitted on the OTHER patients' inner
out-of-fold residuals (:func:`cross_conformal`). The predictive distribution at a new input is ``mu + s * e`` over
the calibration scores ``e``:

- intervals are its equal-tailed quantiles with the finite-sample conformal correction (:func:`interval`);
- P(ki67 >= t) is one minus its linearly interpolated CDF at t (:func:`exceedance_probability`), so two voxels with
  the same ``mu`` and a different ``s`` get different probabilities.

Signed scores (asymmetric intervals) rather than ``|e|``: ki67 is bounded at 0 and right-skewed, so the errors are
not symmetric; and the interval is then exactly the central part of the same distribution that gives P(ki67 >= t).
The price is that each tail needs its own order statistic: with n scores, a level-L interval has finite ends only if
``n >= 2 / (1 - L) - 1`` (39 scores at 90 %); otherwise the open end is clipped to 0 or 100 %.

Deployment recipe: the stored spread model is :func:`fit_spread` on the final pipeline's ``Z`` and the absolute
OUTER out-of-fold residuals of all patients; the stored scores are :func:`cross_conformal`'s (the same recipe one
level up: in each outer fold, the spread model saw the training patients' inner out-of-fold residuals).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from KiMapLib.errors import KiMapError

#: Bounds of ki67 (%): intervals are clipped to them.
KI67_RANGE = (0.0, 100.0)
#: The spread never falls below this fraction of the spread model's mean training target (mean |residual|).
SPREAD_FLOOR_FRACTION = 0.2
#: Minimum leaf size of the spread forest: each leaf averages at least this many noisy |residuals|.
SPREAD_MIN_LEAF = 10


def fit_spread(Z: np.ndarray, abs_residuals: np.ndarray, seed: int = 0, n_estimators: int = 200):
    """Random forest of ``|residual|`` on ``Z`` (min_samples_leaf 10, max_features 0.5): the local mean absolute error.

    The target is ``|r|`` rather than ``log(|r| + eps)``: leaf means of ``|r|`` estimate E|r| | z (proportional to the
    local sd for any location-scale noise) without an arbitrary eps, and a constant factor cancels in the normalized
    scores. Use :func:`predict_spread` (which applies a floor) rather than ``.predict``.
    """
    from sklearn.ensemble import RandomForestRegressor

    Z = np.asarray(Z, dtype=float)
    target = np.abs(np.asarray(abs_residuals, dtype=float).reshape(-1))
    if Z.ndim != 2 or Z.shape[0] != target.shape[0] or Z.shape[1] == 0:
        raise KiMapError(f"features {Z.shape} and residuals {target.shape} do not match (or no feature is used)",
                         input_name="spread model", hint="pass the used columns Z of the same biopsies")
    if not (np.isfinite(Z).all() and np.isfinite(target).all()):
        raise KiMapError("features or residuals contain NaN or infinity", input_name="spread model",
                         hint="pass Z after the pipeline's imputation")
    if target.max() <= 0:
        raise KiMapError("every residual is zero: the spread cannot be estimated", input_name="spread model")
    return RandomForestRegressor(n_estimators=n_estimators, min_samples_leaf=SPREAD_MIN_LEAF, max_features=0.5,
                                 random_state=seed, n_jobs=1).fit(Z, target)


def spread_floor(spread_model) -> float:
    """The floor: :data:`SPREAD_FLOOR_FRACTION` of the mean |residual| the forest was fitted on (from its trees)."""
    roots = [tree.tree_.value[0, 0, 0] for tree in spread_model.estimators_]
    return SPREAD_FLOOR_FRACTION * float(np.mean(roots))


def predict_spread(spread_model, Z: np.ndarray) -> np.ndarray:
    """Local spread ``s(z) >= spread_floor`` (rows of ``Z``; NaN rows give NaN)."""
    Z = np.asarray(Z, dtype=float)
    out = np.full(Z.shape[0], np.nan)
    finite = np.isfinite(Z).all(axis=1)
    if finite.any():
        out[finite] = np.maximum(spread_model.predict(Z[finite]), spread_floor(spread_model))
    return out


def normalized_scores(y: np.ndarray, mu: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Signed normalized conformity scores ``(y - mu) / spread``."""
    return (np.asarray(y, dtype=float) - np.asarray(mu, dtype=float)) / np.asarray(spread, dtype=float)


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise KiMapError(f"interval level {level} is not between 0 and 1", input_name="--interval-level",
                         hint="give a fraction such as 0.9")


def _sorted_scores(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    scores = np.sort(np.asarray(scores, dtype=float).reshape(-1))
    if scores.size == 0 or not np.isfinite(scores).all():
        raise KiMapError("calibration scores are empty or not finite", input_name="conformal scores",
                         hint="retrain the model so that its card holds the held-out patients' scores")
    return scores


def score_quantiles(scores: Sequence[float] | np.ndarray, level: float) -> tuple[float, float]:
    """Lower and upper conformal score quantiles of an equal-tailed level-``level`` interval.

    Upper: the ceil((n + 1)(1 - a/2))-th smallest score, lower: the floor((n + 1) a/2)-th (a = 1 - level); each tail
    then holds at most a/2 for exchangeable patients. An order statistic beyond the n scores is -inf / +inf.
    """
    _check_level(level)
    e = _sorted_scores(scores)
    n, alpha = e.size, 1.0 - level
    upper_rank = math.ceil((n + 1) * (1 - alpha / 2) - 1e-9)
    lower_rank = math.floor((n + 1) * alpha / 2 + 1e-9)
    upper = float(e[upper_rank - 1]) if upper_rank <= n else math.inf
    lower = float(e[lower_rank - 1]) if lower_rank >= 1 else -math.inf
    return lower, upper


def interval(mu: np.ndarray, spread: np.ndarray, scores: Sequence[float] | np.ndarray,
             level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) = ``mu + spread * score quantiles``, clipped to [0, 100] %; any array shape (maps too)."""
    low_q, high_q = score_quantiles(scores, level)
    mu, spread = np.asarray(mu, dtype=float), np.asarray(spread, dtype=float)
    with np.errstate(invalid="ignore"):
        lower = np.clip(mu + spread * low_q, *KI67_RANGE)
        upper = np.clip(mu + spread * high_q, *KI67_RANGE)
    return lower, upper


def _cdf_knots(scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots of the smoothed CDF of the scores: ``F(e_(i)) = i / (n + 1)``, linear between, reaching 0 and 1 one
    mean spacing beyond the smallest and largest score."""
    e = _sorted_scores(scores)
    n = e.size
    step = (e[-1] - e[0]) / (n - 1) if n > 1 and e[-1] > e[0] else 1.0
    x = np.concatenate([[e[0] - step], e, [e[-1] + step]])
    f = np.concatenate([[0.0], np.arange(1, n + 1) / (n + 1), [1.0]])
    return x, f


def predictive_cdf(mu: np.ndarray, spread: np.ndarray, scores: Sequence[float] | np.ndarray,
                   threshold: float) -> np.ndarray:
    """P(ki67 <= threshold) under the conformal predictive distribution ``mu + spread * e`` (smoothed, continuous)."""
    x, f = _cdf_knots(scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        u = (float(threshold) - np.asarray(mu, dtype=float)) / np.asarray(spread, dtype=float)
    out = np.interp(u, x, f)
    return np.where(np.isnan(u), np.nan, out)


def exceedance_probability(mu: np.ndarray, spread: np.ndarray, scores: Sequence[float] | np.ndarray,
                           threshold: float) -> np.ndarray:
    """P(ki67 >= threshold) = 1 - :func:`predictive_cdf` (any array shape; NaN where mu or spread is NaN)."""
    return 1.0 - predictive_cdf(mu, spread, scores, threshold)


# ------------------------------------------------------------------------------------- calibration on held-out patients


@dataclass
class OuterFold:
    """What one outer leave-one-patient-out fold gives the conformal calibration.

    ``held_out``: row indices (into the cohort) of the held-out patient's biopsies; ``train_features`` /
    ``train_abs_residuals``: ``Z`` (this fold's pipeline) and |inner out-of-fold residual| of the training patients'
    biopsies; ``held_out_features``: ``Z`` of the held-out biopsies under this fold's pipeline;
    ``held_out_predictions``: this fold's point predictions for them.
    """

    held_out: np.ndarray
    train_features: np.ndarray
    train_abs_residuals: np.ndarray
    held_out_features: np.ndarray
    held_out_predictions: np.ndarray


def cross_conformal(folds: Sequence[OuterFold], measured: np.ndarray, seed: int = 0,
                    n_estimators: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Honest (scores, spread, predicted) for every cohort biopsy: for each fold, a spread model is fitted on the
    training patients only and applied to the held-out patient, whose score uses the outer prediction."""
    measured = np.asarray(measured, dtype=float).reshape(-1)
    scores = np.full(measured.size, np.nan)
    spread = np.full(measured.size, np.nan)
    predicted = np.full(measured.size, np.nan)
    for fold in folds:
        rows = np.asarray(fold.held_out, dtype=int)
        if not np.isnan(scores[rows]).all():
            raise KiMapError("a biopsy is held out by two folds", input_name="outer folds",
                             hint="give one fold per held-out patient")
        model = fit_spread(fold.train_features, fold.train_abs_residuals, seed=seed, n_estimators=n_estimators)
        spread[rows] = predict_spread(model, fold.held_out_features)
        predicted[rows] = np.asarray(fold.held_out_predictions, dtype=float).reshape(-1)
        scores[rows] = normalized_scores(measured[rows], predicted[rows], spread[rows])
    if np.isnan(scores).any():
        raise KiMapError(f"{int(np.isnan(scores).sum())} biopsies are in no outer fold", input_name="outer folds",
                         hint="hold out every patient once")
    return scores, spread, predicted


def lopo_intervals(predicted: np.ndarray, spread: np.ndarray, scores: np.ndarray, groups: Sequence,
                   level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) for each biopsy, calibrated on the scores of the OTHER patients only."""
    groups = np.asarray(groups)
    predicted, spread, scores = (np.asarray(a, dtype=float) for a in (predicted, spread, scores))
    lower, upper = np.empty(predicted.size), np.empty(predicted.size)
    for patient in np.unique(groups):
        own = groups == patient
        lower[own], upper[own] = interval(predicted[own], spread[own], scores[~own], level)
    return lower, upper


def lopo_exceedance(predicted: np.ndarray, spread: np.ndarray, scores: np.ndarray, groups: Sequence,
                    threshold: float) -> np.ndarray:
    """P(ki67 >= threshold) for each biopsy from the OTHER patients' scores (for the calibration report)."""
    groups = np.asarray(groups)
    predicted, spread, scores = (np.asarray(a, dtype=float) for a in (predicted, spread, scores))
    out = np.empty(predicted.size)
    for patient in np.unique(groups):
        own = groups == patient
        out[own] = exceedance_probability(predicted[own], spread[own], scores[~own], threshold)
    return out


def _summary(covered: np.ndarray, width: np.ndarray) -> dict:
    return {"n": int(covered.size), "coverage": float(covered.mean()), "mean_width": float(width.mean()),
            "median_width": float(np.median(width)), "width_sd": float(width.std())}


def lopo_coverage(measured: np.ndarray, predicted: np.ndarray, spread: np.ndarray, scores: np.ndarray,
                  groups: Sequence, level: float = 0.9, institutions: Sequence | None = None) -> dict:
    """Coverage and width of :func:`lopo_intervals` (JSON-ready): overall, per institution and per patient."""
    measured = np.asarray(measured, dtype=float)
    lower, upper = lopo_intervals(predicted, spread, scores, groups, level)
    covered = (measured >= lower) & (measured <= upper)
    width = upper - lower
    groups = np.asarray(groups)
    report = {"level": float(level), **_summary(covered, width),
              "per_patient": {str(p): _summary(covered[groups == p], width[groups == p]) for p in np.unique(groups)}}
    if institutions is not None:
        institutions = np.asarray(institutions)
        report["per_institution"] = {str(i): _summary(covered[institutions == i], width[institutions == i])
                                     for i in np.unique(institutions)}
    return report
