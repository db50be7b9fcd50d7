"""Validation beyond leave-one-patient-out: a new institution (leave-one-institution-out with the nested selection
inside) and the value of each MRI sequence (LOPO with each sequence left out, and with each sequence alone).

Both return plain dicts for ``cv_report.json`` (documented in :func:`institution_report` and
:func:`sequence_ablation`), or None when the cohort cannot support them (one institution, one sequence).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from KiMapLib.model.candidates import Candidate
from KiMapLib.model.metrics import metrics_per_group, regression_metrics
from KiMapLib.model.selection import NestedResult, lopo_fixed, nested_lopo
from KiMapLib.progress import ProgressCallback
from KiMapLib.settings import SEQUENCES


def patient_institutions(groups: np.ndarray, institutions: Sequence[str | None]) -> np.ndarray | None:
    """Each row's institution, or None when a patient has rows of two institutions or a row has none."""
    labels = np.array([str(value) if value else "" for value in institutions])
    if (labels == "").any():
        return None
    for patient in np.unique(groups):
        if len(np.unique(labels[groups == patient])) > 1:
            return None
    return labels


def institution_report(matrix: np.ndarray, target: np.ndarray, groups: np.ndarray, institutions: np.ndarray | None,
                       candidates: Sequence[Candidate], *, seed: int = 0, n_jobs: int = 2,
                       progress: ProgressCallback | None = None) -> tuple[dict | None, NestedResult | None]:
    """Leave-one-institution-out: each institution is predicted by the candidate that won an inner LOPO over the
    other institutions' patients, refitted on them. Report::

        {"scheme": ..., "folds": n, "mse", "rmse", "r2",          # pooled over every held-out institution
         "per_institution": {name: {"biopsies", "patients", "mse", "rmse", "r2", "winner": candidate name}}}

    (None, None) when there are fewer than two institutions or an outer fold leaves under two patients inside."""
    if institutions is None:
        return None, None
    names = np.unique(institutions)
    patients = np.unique(groups)
    if len(names) < 2 or any(len(patients) - len(np.unique(groups[institutions == n])) < 2 for n in names):
        return None, None
    nested = nested_lopo(matrix, target, groups, candidates, outer=institutions, final=False, seed=seed,
                         n_jobs=n_jobs, progress=progress)
    per = metrics_per_group(target, nested.outer_predicted, institutions, groups)
    for name in per:
        per[name]["winner"] = nested.outer_winner[name]
    return ({"scheme": "leave-one-institution-out; candidate chosen by leave-one-patient-out inside the other "
                       "institutions, refitted on them", "folds": len(names),
             **regression_metrics(target, nested.outer_predicted), "per_institution": per}, nested)


def column_sequence(column: str) -> str | None:
    """The sequence of a radiomic column (``adc_original_...`` -> ``adc``); None for a covariate."""
    head, sep, _ = column.partition("_original_")
    return head if sep and head in SEQUENCES else None


def sequence_ablation(matrix: np.ndarray, target: np.ndarray, groups: np.ndarray, columns: Sequence[str],
                      candidate: Candidate, *, seed: int = 0, n_jobs: int = 2) -> dict | None:
    """LOPO of one FIXED candidate (the final model's: running the nested selection 2 x sequences times more would
    take as long again; the comparison between columns is what matters) on all columns, without each sequence and
    with each sequence alone (covariates always kept). Report::

        {"scheme": ..., "candidate": name,
         "all": {"mse", "rmse", "r2"}, "without": {sequence: {...}}, "only": {sequence: {...}}}

    None when the columns hold fewer than two sequences."""
    owner = [column_sequence(column) for column in columns]
    sequences = [s for s in SEQUENCES if s in owner]
    if len(sequences) < 2:
        return None

    def score(keep: list[bool]) -> dict:
        kept = np.flatnonzero(keep)
        return regression_metrics(target, lopo_fixed(candidate, matrix[:, kept], target, groups, seed=seed,
                                                     n_jobs=n_jobs))

    return {"scheme": "leave-one-patient-out of the final model's candidate (fixed: no selection)",
            "candidate": candidate.name, "all": score([True] * len(columns)),
            "without": {s: score([o != s for o in owner]) for s in sequences},
            "only": {s: score([o in (s, None) for o in owner]) for s in sequences}}
