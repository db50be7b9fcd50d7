"""Validation beyond leave-one-patient-out: a new institution (leave-one-institution-out with the nested selection
inside) and the value of each MRI sequence (LOPO with each sequence left out, and with each sequence alone; of the
final candidate, or with the nested selection run on each subset).

Both return plain dicts for ``cv_report.json`` (documented in :func:`institution_report` and
:func:`sequence_ablation`), or None when the cohort cannot support them (one institution, one sequence).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from KiMapLib.model.candidates import Candidate
from KiMapLib.model.metrics import metrics_per_group, regression_metrics
from KiMapLib.model.selection import NestedResult, lopo_fixed, nested_lopo
from KiMapLib.progress import ProgressCallback, scaled
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


def ablation_subsets(columns: Sequence[str]) -> dict | None:
    """Column masks of the sequence ablation: ``{"all": mask, "without": {sequence: mask}, "only": {sequence: mask}}``
    (covariates always kept); None when the columns hold fewer than two sequences."""
    owner = [column_sequence(column) for column in columns]
    sequences = [s for s in SEQUENCES if s in owner]
    if len(sequences) < 2:
        return None
    return {"all": np.ones(len(columns), dtype=bool),
            "without": {s: np.array([o != s for o in owner]) for s in sequences},
            "only": {s: np.array([o in (s, None) for o in owner]) for s in sequences}}


def _ablate(subsets: dict, score: Callable[[np.ndarray, float, float], dict]) -> dict:
    """``subsets`` with each mask replaced by ``score(mask, start, stop)``; [start, stop] is the subset's share of
    the progress."""
    items = [("all", "", subsets["all"]), *(("without", s, m) for s, m in subsets["without"].items()),
             *(("only", s, m) for s, m in subsets["only"].items())]
    out: dict = {"all": None, "without": {}, "only": {}}
    for index, (section, sequence, mask) in enumerate(items):
        value = score(mask, index / len(items), (index + 1) / len(items))
        if section == "all":
            out["all"] = value
        else:
            out[section][sequence] = value
    return out


def sequence_ablation(matrix: np.ndarray, target: np.ndarray, groups: np.ndarray, columns: Sequence[str],
                      candidate: Candidate, *, seed: int = 0, n_jobs: int = 2) -> dict | None:
    """LOPO of one FIXED candidate (the final model's; the nested selection per subset,
    :func:`nested_sequence_ablation`, costs 2 x sequences nested selections more) on all columns, without each
    sequence and with each sequence alone (covariates always kept). Report::

        {"scheme": ..., "candidate": name, "nested": False,
         "all": {"mse", "rmse", "r2"}, "without": {sequence: {...}}, "only": {sequence: {...}}}

    None when the columns hold fewer than two sequences."""
    subsets = ablation_subsets(columns)
    if subsets is None:
        return None

    def score(keep: np.ndarray, start: float, stop: float) -> dict:
        return regression_metrics(target, lopo_fixed(candidate, matrix[:, keep], target, groups, seed=seed,
                                                     n_jobs=n_jobs))

    return {"scheme": "leave-one-patient-out of the final model's candidate (fixed: no selection)",
            "candidate": candidate.name, "nested": False, **_ablate(subsets, score)}


def nested_sequence_ablation(matrix: np.ndarray, target: np.ndarray, groups: np.ndarray, columns: Sequence[str],
                             candidates: Sequence[Candidate], *, seed: int = 0, n_jobs: int = 2,
                             all_columns: NestedResult | None = None,
                             progress: ProgressCallback | None = None) -> dict | None:
    """The sequence ablation with the nested LOPO selection among ``candidates`` run on every column subset: each
    subset's score is honest for a model chosen on that subset (not the final candidate's, chosen on all columns).
    ``all_columns``: the training's nested result on all columns, reused (the same fits). Report as
    :func:`sequence_ablation`'s, with ``"nested": True`` and per subset the outer folds' ``fold_winners``."""
    subsets = ablation_subsets(columns)
    if subsets is None:
        return None

    def score(keep: np.ndarray, start: float, stop: float) -> dict:
        nested = all_columns if keep.all() and all_columns is not None else nested_lopo(
            matrix[:, keep], target, groups, candidates, final=False, seed=seed, n_jobs=n_jobs,
            progress=scaled(progress, start, stop))
        return {**regression_metrics(target, nested.outer_predicted), "fold_winners": nested.winner_counts()}

    return {"scheme": "nested leave-one-patient-out on each sequence subset (the candidate chosen inside each outer "
                      f"fold among {len(candidates)})", "candidate": f"nested selection, {len(candidates)} candidates",
            "nested": True, **_ablate(subsets, score)}
