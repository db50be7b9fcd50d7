"""Honest model selection: the candidate (family and size) is chosen by an inner leave-one-patient-out loop inside
each outer fold, so the outer held-out rows never influence the choice that predicts them.

Outer folds leave out one patient (LOPO) or one group of patients (e.g. an institution: ``outer`` labels). For an
outer fold O, every candidate is fitted on the patients outside O and one more inner patient q, and predicts q; the
candidate with the lowest pooled inner MSE wins, is refitted on all patients outside O and predicts O. The final
model is chosen the same way on all patients (plain LOPO over every patient) and refitted on all rows.

Every fit is identified by the set of patients it leaves out, and each is done once: for LOPO the fit without
{p, q} serves both outer folds p and q, and the fit without {p} is both the outer refit of fold p and the final
selection's LOPO fit. So nested LOPO costs n(n+1)/2 fits per candidate rather than n².
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from KiMapLib.model.candidates import Candidate
from KiMapLib.progress import ProgressCallback, report


@dataclass
class NestedResult:
    """What nested selection found; arrays are per row of the matrix it was given (same order).

    - ``outer_predicted``: each row predicted by its outer fold's winner, refitted on all patients outside the fold
      (the honest out-of-fold prediction; the reported CV score is computed from it).
    - ``outer_winner``: outer fold label (the patient, or e.g. the institution) -> the winning candidate's name.
    - ``inner_predicted``: outer fold label -> for every row OUTSIDE the fold, the inner leave-one-patient-out
      prediction by that fold's winner (fitted without the fold and without the row's patient); NaN on the fold's
      own rows. This is what a conformal calibration of the fold's model may use (it never saw the fold).
    - ``inner_mse``: outer fold label -> candidate name -> pooled inner MSE (the selection criterion).
    - ``final``: the candidate chosen by LOPO over all patients (None when ``final`` was not asked for);
      ``final_predicted``: its LOPO out-of-fold predictions of every row; ``final_mse``: candidate name -> LOPO MSE.
    """

    candidates: list[Candidate]
    groups: np.ndarray
    outer: np.ndarray
    outer_predicted: np.ndarray
    outer_winner: dict[str, str]
    inner_predicted: dict[str, np.ndarray]
    inner_mse: dict[str, dict[str, float]]
    final: Candidate | None = None
    final_predicted: np.ndarray | None = None
    final_mse: dict[str, float] | None = None

    def candidate(self, name: str) -> Candidate:
        return next(candidate for candidate in self.candidates if candidate.name == name)

    def winner_counts(self) -> dict[str, int]:
        """Candidate name -> number of outer folds it won (most first)."""
        counts: dict[str, int] = {}
        for name in self.outer_winner.values():
            counts[name] = counts.get(name, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: -item[1]))


def _fit_all(candidates: Sequence[Candidate], matrix: np.ndarray, target: np.ndarray, train: np.ndarray,
             test: np.ndarray, seed: int) -> np.ndarray:
    """Predictions (candidates x test rows) of every candidate fitted on the ``train`` rows.

    The same as fitting each candidate's Pipeline (tested), but the steps all candidates share (impute,
    drop_constant, scale) are fitted once, and each score function runs once per training set."""
    import warnings

    from sklearn.feature_selection import SelectKBest

    out = np.empty((len(candidates), int(test.sum())))
    x_train, y_train = matrix[train], target[train]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning of an elastic net on a near-collinear grid point
        shared = candidates[0].pipeline(matrix.shape[1], seed)[:3].fit(x_train, y_train)
        x_train, x_test = shared.transform(x_train), shared.transform(matrix[test])
        scores: dict[object, object] = {}
        for index, candidate in enumerate(candidates):
            pipeline = candidate.pipeline(matrix.shape[1], seed)
            select, model = pipeline.steps[3][1], pipeline.steps[4][1]
            if select.score_func not in scores:
                scores[select.score_func] = select.score_func(x_train, y_train)
            select = SelectKBest(lambda x, y, known=scores[select.score_func]: known, k=select.k).fit(x_train, y_train)
            model.fit(select.transform(x_train), y_train)
            out[index] = model.predict(select.transform(x_test))
    return out


def _mse(measured: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Pooled MSE per candidate (rows of ``predicted``)."""
    return np.mean((predicted - measured[None, :]) ** 2, axis=1)


def nested_lopo(matrix: np.ndarray, target: np.ndarray, groups: np.ndarray, candidates: Sequence[Candidate], *,
                outer: np.ndarray | None = None, final: bool = True, seed: int = 0, n_jobs: int = 2,
                progress: ProgressCallback | None = None) -> NestedResult:
    """Nested selection among ``candidates`` (see the module docstring).

    ``groups``: the patient of each row (inner folds leave one out). ``outer``: the outer fold label of each row
    (default: the patient, i.e. nested LOPO); every patient must lie in one outer fold. ``final``: also choose and
    report the final candidate by LOPO over all patients. Fits run in ``n_jobs`` processes (joblib), one task per
    training set."""
    from joblib import Parallel, delayed

    candidates = list(candidates)
    groups = np.asarray(groups).astype(str)
    outer = groups if outer is None else np.asarray(outer).astype(str)
    patients = np.unique(groups)
    folds = np.unique(outer)
    fold_patients = {fold: frozenset(np.unique(groups[outer == fold])) for fold in folds}
    for fold, members in fold_patients.items():
        if np.isin(outer[np.isin(groups, list(members))], [fold], invert=True).any():
            raise ValueError(f"patients of outer fold {fold} also lie in another fold")
    if len(patients) - max(len(m) for m in fold_patients.values()) < 2:
        raise ValueError("every outer fold must leave at least 2 patients for the inner loop")

    # Every training set, as the set of patients it leaves out.
    left_out: set[frozenset] = set()
    for members in fold_patients.values():
        left_out.add(members)
        left_out.update(members | {q} for q in patients if q not in members)
    if final:
        left_out.update(frozenset({q}) for q in patients)
    keys = sorted(left_out, key=lambda key: (len(key), sorted(key)))
    tasks = (delayed(_fit_all)(candidates, matrix, target, ~np.isin(groups, list(key)), np.isin(groups, list(key)),
                               seed) for key in keys)
    fitted: dict[frozenset, np.ndarray] = {}
    for number, (key, predictions) in enumerate(zip(keys, Parallel(n_jobs=n_jobs, return_as="generator")(tasks),
                                                    strict=True)):
        fitted[key] = predictions
        report(progress, (number + 1) / len(keys), f"fit {number + 1}/{len(keys)} (nested selection)")

    def predictions_of(key: frozenset, rows: np.ndarray) -> np.ndarray:
        """Predictions (candidates x rows) of the fit leaving out ``key`` at ``rows`` (a mask inside ``key``)."""
        return fitted[key][:, rows[np.isin(groups, list(key))]]

    names = [candidate.name for candidate in candidates]
    n_rows = len(target)
    outer_predicted = np.full(n_rows, np.nan)
    outer_winner: dict[str, str] = {}
    inner_predicted: dict[str, np.ndarray] = {}
    inner_mse: dict[str, dict[str, float]] = {}
    for fold, members in fold_patients.items():
        inner = np.full((len(candidates), n_rows), np.nan)
        for q in patients:
            if q not in members:
                rows = groups == q
                inner[:, rows] = predictions_of(members | {q}, rows)
        inside = outer != fold
        mse = _mse(target[inside], inner[:, inside])
        best = int(np.argmin(mse))
        outer_winner[fold] = names[best]
        inner_mse[fold] = dict(zip(names, map(float, mse), strict=True))
        inner_predicted[fold] = inner[best]
        rows = outer == fold
        outer_predicted[rows] = predictions_of(members, rows)[best]
    result = NestedResult(candidates=candidates, groups=groups, outer=outer, outer_predicted=outer_predicted,
                          outer_winner=outer_winner, inner_predicted=inner_predicted, inner_mse=inner_mse)
    if final:
        lopo = np.full((len(candidates), n_rows), np.nan)
        for q in patients:
            rows = groups == q
            lopo[:, rows] = predictions_of(frozenset({q}), rows)
        mse = _mse(target, lopo)
        best = int(np.argmin(mse))
        result.final, result.final_predicted = candidates[best], lopo[best]
        result.final_mse = dict(zip(names, map(float, mse), strict=True))
    return result


def lopo_fixed(candidate: Candidate, matrix: np.ndarray, target: np.ndarray, groups: np.ndarray, *, seed: int = 0,
               n_jobs: int = 2) -> np.ndarray:
    """Plain LOPO out-of-fold predictions of one fixed candidate (no selection: e.g. the sequence ablation)."""
    from joblib import Parallel, delayed

    groups = np.asarray(groups).astype(str)
    patients = np.unique(groups)
    parts = Parallel(n_jobs=n_jobs)(delayed(_fit_all)([candidate], matrix, target, groups != p, groups == p, seed)
                                    for p in patients)
    predicted = np.empty(len(target))
    for patient, part in zip(patients, parts, strict=True):
        predicted[groups == patient] = part[0]
    return predicted
