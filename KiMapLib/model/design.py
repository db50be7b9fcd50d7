"""Turning cohort-table rows into the model's numeric design matrix (one definition for training and use)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Covariates the model may use, encoded as numbers (missing values stay NaN and are imputed in the pipeline).
COVARIATE_ENCODERS = {
    "age": lambda value: float(value),
    "sex_female": lambda value: {"F": 1.0, "M": 0.0}[str(value).upper()],
    "tumor_recurrent": lambda value: {"recurrent": 1.0, "primary": 0.0}[str(value).lower()],
}
COVARIATE_SOURCES = {"age": "age", "sex_female": "sex", "tumor_recurrent": "tumor_type"}
DEFAULT_COVARIATES = ("age", "sex_female", "tumor_recurrent")


def is_radiomic(column: str) -> bool:
    """True for feature columns such as ``t1c_original_glcm_Contrast``."""
    return "_original_" in column


def radiomic_columns(rows: Sequence[dict]) -> list[str]:
    """Radiomic feature columns present in every row, in first-row order."""
    if not rows:
        return []
    common = set.intersection(*(set(row) for row in rows))
    return [column for column in rows[0] if is_radiomic(column) and column in common]


def _encode(column: str, row: dict) -> float:
    if column in COVARIATE_ENCODERS:
        value = row.get(COVARIATE_SOURCES[column])
        if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
            return math.nan
        try:
            return COVARIATE_ENCODERS[column](value)
        except (KeyError, ValueError):
            return math.nan
    value = row.get(column)
    return math.nan if value is None or value == "" else float(value)


def design_matrix(rows: Sequence[dict], columns: Sequence[str]) -> np.ndarray:
    """Float matrix (rows x columns); covariates encoded by :data:`COVARIATE_ENCODERS`, missing as NaN."""
    return np.array([[_encode(column, row) for column in columns] for row in rows], dtype=float).reshape(
        len(rows), len(columns))
