"""Regression metrics of predictions against measurements (pooled, and per group of rows)."""

from __future__ import annotations

import numpy as np


def regression_metrics(measured: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """MSE, RMSE and R² (1 - SSres/SStot, pooled over all biopsies)."""
    residual = measured - predicted
    mse = float(np.mean(residual**2))
    total = float(np.sum((measured - measured.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / total if total > 0 else float("nan")
    return {"mse": mse, "rmse": float(np.sqrt(mse)), "r2": r2}


def metrics_per_group(measured: np.ndarray, predicted: np.ndarray, labels: np.ndarray,
                      patients: np.ndarray | None = None) -> dict[str, dict]:
    """Label -> {"biopsies", ["patients"], "mse", "rmse", "r2"} (R² is NaN for a group of one biopsy)."""
    out = {}
    for label in sorted(set(map(str, labels))):
        rows = np.asarray(labels).astype(str) == label
        entry = {"biopsies": int(rows.sum())}
        if patients is not None:
            entry["patients"] = len(set(np.asarray(patients)[rows]))
        out[label] = {**entry, **regression_metrics(measured[rows], predicted[rows])}
    return out
