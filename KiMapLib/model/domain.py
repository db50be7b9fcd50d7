"""Out-of-domain score: how far an input lies from the training biopsies in the point model's own feature space.

The score is the Mahalanobis distance of ``Z`` (:func:`~KiMapLib.model.transformed.transformed`: the used columns
after impute/scale/select) from the training biopsies, with a Ledoit-Wolf shrunk covariance (stable with few
biopsies and many columns). The threshold is a high quantile of leave-one-patient-out distances: each patient's
biopsies scored against the distribution fitted without that patient, so that an ordinary NEW patient (with its own
between-patient offset) is flagged at about ``1 - quantile`` of its inputs, not more.

Everything is stored as plain numbers (JSON model card): no estimator object.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from KiMapLib.errors import KiMapError

METHOD = ("Mahalanobis distance on the point model's used columns (after impute/scale/select), Ledoit-Wolf shrunk "
          "covariance of the training biopsies; threshold = the {quantile:g} quantile (finite-sample, order statistic "
          "ceil((n + 1) q)) of leave-one-patient-out distances; flagged when the distance exceeds it")
#: Rows per block when scoring (keeps a whole-brain map's temporary arrays small).
BLOCK_ROWS = 65536


def _fit(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.covariance import LedoitWolf

    if Z.shape[1] == 0:
        return np.zeros(0), np.zeros((0, 0))
    model = LedoitWolf().fit(Z)
    return model.location_, model.precision_


def _distances(centre: np.ndarray, precision: np.ndarray, Z: np.ndarray) -> np.ndarray:
    out = np.full(Z.shape[0], np.nan)
    for start in range(0, Z.shape[0], BLOCK_ROWS):
        block = Z[start:start + BLOCK_ROWS] - centre
        squared = np.einsum("ij,ij->i", block @ precision, block)
        out[start:start + BLOCK_ROWS] = np.sqrt(np.maximum(squared, 0.0))
    return out  # NaN rows stay NaN (NaN propagates through the products)


def _checked_matrix(Z, name: str) -> np.ndarray:
    Z = np.asarray(Z, dtype=float)
    if Z.ndim != 2:
        raise KiMapError(f"expected a 2-D matrix, got shape {Z.shape}", input_name=name)
    return Z


def fit_domain(Z: np.ndarray, groups: Sequence, quantile: float = 0.99) -> dict:
    """JSON-ready domain: ``centre``, ``precision``, ``threshold``, ``quantile``, ``n_biopsies``, ``n_patients``,
    ``lopo_distances_median`` and ``method``. Rows of ``Z`` must be finite (training biopsies after imputation)."""
    Z = _checked_matrix(Z, "domain features")
    groups = np.asarray(groups)
    if groups.shape != (Z.shape[0],):
        raise KiMapError(f"{groups.size} group labels for {Z.shape[0]} rows", input_name="domain groups",
                         hint="give one patient id per biopsy")
    if not np.isfinite(Z).all():
        raise KiMapError("training features contain NaN or infinity", input_name="domain features",
                         hint="pass Z after the pipeline's imputation")
    if not 0 < quantile < 1:
        raise KiMapError(f"quantile {quantile} is not between 0 and 1", input_name="domain quantile")
    patients = np.unique(groups)
    if patients.size < 2:
        raise KiMapError("a leave-one-patient-out threshold needs at least two patients", input_name="domain groups")
    lopo = np.empty(Z.shape[0])
    for patient in patients:
        own = groups == patient
        lopo[own] = _distances(*_fit(Z[~own]), Z[own])
    ordered = np.sort(lopo)
    rank = min(math.ceil((ordered.size + 1) * quantile - 1e-9), ordered.size)
    centre, precision = _fit(Z)
    return {"method": METHOD.format(quantile=quantile), "quantile": float(quantile),
            "threshold": float(ordered[rank - 1]), "centre": centre.tolist(), "precision": precision.tolist(),
            "n_biopsies": int(Z.shape[0]), "n_patients": int(patients.size),
            "lopo_distances_median": float(np.median(lopo))}


def domain_score(domain: dict, Z: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each row of ``Z`` from the training biopsies (NaN for rows with a NaN)."""
    Z = _checked_matrix(Z, "features")
    centre = np.asarray(domain["centre"], dtype=float).reshape(-1)
    precision = np.asarray(domain["precision"], dtype=float).reshape(centre.size, centre.size)
    if Z.shape[1] != centre.size:
        raise KiMapError(f"{Z.shape[1]} columns but the model's domain has {centre.size}", input_name="features",
                         hint="score the used columns Z of the same model (transformed(pipeline, matrix))")
    return _distances(centre, precision, Z)


def out_of_domain(domain: dict, Z: np.ndarray) -> np.ndarray:
    """True where the distance exceeds the stored threshold (False for NaN rows: those have no score at all)."""
    with np.errstate(invalid="ignore"):
        return domain_score(domain, Z) > float(domain["threshold"])
