"""Per-prediction feature contributions in the point model's own units (ki67 %), and global importance.

``prediction = base + sum(contributions)`` exactly, for every row:

- Ridge / ElasticNet (any model with ``coef_``/``intercept_``): ``contribution_j = coef_j * z_j`` with ``z`` the
  imputed, scaled, selected features and ``base = intercept_``. Because the scaler centres the training data,
  this is the exact Shapley value relative to the training mean (the interventional and the observational
  definitions agree for a linear model).
- Trees (DecisionTreeRegressor, RandomForest / ExtraTrees = mean over trees, GradientBoosting =
  ``init + learning_rate * sum``): exact path-dependent TreeSHAP (Lundberg, Erion & Lee 2018, "Consistent
  individualized feature attribution for tree ensembles", algorithm 2), vectorised over rows; ``base`` is the
  cover-weighted mean leaf value (the model's expectation over its training data).

Contributions are given for the used columns only (:func:`~KiMapLib.model.transformed.used_columns`); an unused
column's contribution is exactly zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from KiMapLib.errors import ModelError
from KiMapLib.model.transformed import fitted_trees, transformed_names, used_columns


@dataclass
class Contributions:
    """``base`` (rows,), ``values`` (rows x used columns) and the used columns' ``names``."""

    base: np.ndarray
    values: np.ndarray
    names: list[str]

    @property
    def prediction(self) -> np.ndarray:
        return self.base + self.values.sum(axis=1)


# ---------------------------------------------------------------------------------------------------- TreeSHAP


class _Path:
    """The unique path of algorithm 2, with the one-fractions and weights held per row (vectorised over rows)."""

    __slots__ = ("feature", "one", "weight", "zero")

    def __init__(self, feature: list[int], zero: list[float], one: np.ndarray, weight: np.ndarray):
        self.feature, self.zero, self.one, self.weight = feature, zero, one, weight

    def extend(self, zero: float, one: np.ndarray, feature: int) -> _Path:
        depth = len(self.feature)  # "l" of the paper: elements before this one
        n = one.shape[0]
        if depth == 0:
            return _Path([feature], [zero], one[None, :].copy(), np.ones((1, n)))
        weight = np.empty((depth + 1, n))
        scale = np.arange(depth, 0, -1, dtype=float)[:, None] * (zero / (depth + 1))  # zero * (depth - i) / (l + 1)
        np.multiply(self.weight, scale, out=weight[:depth])
        weight[depth] = 0.0
        weight[1:] += self.weight * (np.arange(1, depth + 1, dtype=float)[:, None] / (depth + 1)) * one
        ones = np.empty((depth + 1, n))
        ones[:depth] = self.one
        ones[depth] = one
        return _Path([*self.feature, feature], [*self.zero, zero], ones, weight)

    def unwind(self, index: int) -> _Path:
        depth = len(self.feature) - 1  # index of the last element
        one, zero = self.one[index], self.zero[index]
        hot = one != 0
        safe_one = np.where(hot, one, 1.0)
        weight = self.weight[:depth].copy()
        following = self.weight[depth].copy()
        for i in range(depth - 1, -1, -1):
            old = self.weight[i]
            as_hot = following * (depth + 1) / ((i + 1) * safe_one)
            as_cold = old * (depth + 1) / (zero * (depth - i)) if zero != 0 else np.zeros_like(old)
            weight[i] = np.where(hot, as_hot, as_cold)
            following = old - as_hot * zero * (depth - i) / (depth + 1)
        keep = [k for k in range(depth + 1) if k != index]
        return _Path([self.feature[k] for k in keep], [self.zero[k] for k in keep], self.one[keep], weight)

    def unwound_sums(self) -> np.ndarray:
        """Total permutation weight with each real element (1..) unwound in turn: (elements - 1, rows)."""
        depth = len(self.feature) - 1
        one = self.one[1:]
        zero = np.asarray(self.zero[1:], dtype=float)[:, None]
        hot = one != 0
        inverse_one = 1.0 / np.where(hot, one, 1.0)
        following = self.weight[depth]
        total_hot = np.zeros(one.shape)
        for i in range(depth - 1, -1, -1):
            part = following * inverse_one * ((depth + 1) / (i + 1))
            total_hot += part
            following = self.weight[i] - part * (zero * ((depth - i) / (depth + 1)))
        # cold rows (one = 0): no recursion, sum_i w_i (l + 1) / (zero (l - i))
        cold_sum = (depth + 1) * (1.0 / np.arange(depth, 0, -1, dtype=float)) @ self.weight[:depth]
        total_cold = np.where(zero != 0, cold_sum / np.where(zero != 0, zero, 1.0), 0.0)
        return np.where(hot, total_hot, total_cold)


def _goes_left(tree, node: int, column: np.ndarray) -> np.ndarray:
    """Rows that scikit-learn sends left at ``node`` (float32 comparison as in ``tree.apply``; NaN as fitted)."""
    values = column.astype(np.float32).astype(np.float64)
    left = values <= tree.threshold[node]
    missing = np.isnan(values)
    if missing.any():
        to_left = bool(getattr(tree, "missing_go_to_left", np.zeros(tree.node_count, dtype=bool))[node])
        left = np.where(missing, to_left, left)
    return left


def tree_shap(tree_model, z: np.ndarray) -> tuple[float, np.ndarray]:
    """Exact path-dependent TreeSHAP of one fitted scikit-learn regression tree: (expected value, rows x features).

    ``expected value + contributions.sum(1) == tree_model.predict(z)`` (to rounding).
    """
    tree = tree_model.tree_
    z = np.asarray(z, dtype=float)
    n_rows = z.shape[0]
    value = tree.value[:, 0, 0].astype(float)
    cover = tree.weighted_n_node_samples.astype(float)
    left, right, feature = tree.children_left, tree.children_right, tree.feature
    phi = np.zeros((n_rows, tree_model.n_features_in_))
    leaves = left < 0
    expected = float(np.sum(cover[leaves] * value[leaves]) / cover[0])
    directions = {node: _goes_left(tree, node, z[:, feature[node]]) for node in np.flatnonzero(~leaves)}

    def recurse(node: int, path: _Path, zero: float, one: np.ndarray, split: int) -> None:
        path = path.extend(zero, one, split)
        if leaves[node]:
            if len(path.feature) > 1:
                zeros = np.asarray(path.zero[1:], dtype=float)[:, None]
                share = path.unwound_sums() * (path.one[1:] - zeros) * value[node]
                phi[:, path.feature[1:]] += share.T  # features on a unique path are distinct
            return
        split_here = int(feature[node])
        incoming_zero, incoming_one = 1.0, np.ones(n_rows)
        if split_here in path.feature[1:]:
            k = path.feature.index(split_here, 1)
            incoming_zero, incoming_one = path.zero[k], path.one[k]
            path = path.unwind(k)
        goes_left = directions[node]
        for child, hot in ((left[node], goes_left), (right[node], ~goes_left)):
            recurse(child, path, incoming_zero * cover[child] / cover[node], incoming_one * hot, split_here)

    recurse(0, _Path([], [], np.zeros((0, n_rows)), np.zeros((0, n_rows))), 1.0, np.ones(n_rows), -1)
    return expected, phi


def _tree_ensemble_shap(regressor, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(base per row, contributions) of a tree, forest or gradient-boosting regressor."""
    trees = fitted_trees(regressor)
    if hasattr(regressor, "tree_"):
        expected, phi = tree_shap(regressor, z)
        return np.full(z.shape[0], expected), phi
    results = [tree_shap(tree, z) for tree in trees]
    expected = np.array([r[0] for r in results])
    phi = np.stack([r[1] for r in results])
    if hasattr(regressor, "learning_rate") and hasattr(regressor, "init_"):  # gradient boosting
        rate = float(regressor.learning_rate)
        init = regressor.init_
        start = np.zeros(z.shape[0]) if isinstance(init, str) else np.asarray(init.predict(z), float).reshape(-1)
        return start + rate * expected.sum(), rate * phi.sum(axis=0)
    return np.full(z.shape[0], expected.mean()), phi.mean(axis=0)  # forest: mean over trees


# ---------------------------------------------------------------------------------------------------- public API


def contributions(pipeline, matrix: np.ndarray, input_names: Sequence[str] | None = None) -> Contributions:
    """Per-row contributions of the used columns to ``pipeline.predict(matrix)`` (which equals ``.prediction``)."""
    regressor = pipeline[-1]
    z_all = np.asarray(pipeline[:-1].transform(np.asarray(matrix, dtype=float)), dtype=float)
    used = used_columns(pipeline)
    names = transformed_names(pipeline, input_names)
    coef = getattr(regressor, "coef_", None)
    if coef is not None:
        coef = np.asarray(coef, dtype=float).reshape(-1)
        base = np.full(z_all.shape[0], float(np.asarray(regressor.intercept_).reshape(-1)[0]))
        return Contributions(base, (z_all * coef)[:, used], names)
    if fitted_trees(regressor) is not None:
        base, phi = _tree_ensemble_shap(regressor, z_all)
        return Contributions(base, phi[:, used], names)
    raise ModelError(f"no exact explanation for a {type(regressor).__name__}", input_name="model",
                     hint="use Ridge, ElasticNet, a decision tree, a random forest or gradient boosting")


def global_importance(values: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Mean |contribution| of each feature over the given rows, largest first (JSON-ready)."""
    values = np.asarray(values, dtype=float)
    mean_abs = np.abs(values).mean(axis=0) if values.shape[0] else np.zeros(len(names))
    order = np.argsort(-mean_abs, kind="stable")
    return {str(names[i]): float(mean_abs[i]) for i in order}


def top_contributions(names: Sequence[str], values: np.ndarray, n: int = 3) -> list[tuple[str, float]]:
    """The ``n`` largest contributions of one prediction by absolute value, as (name, signed value)."""
    values = np.asarray(values, dtype=float).reshape(-1)
    order = np.argsort(-np.abs(values), kind="stable")[:n]
    return [(str(names[i]), float(values[i])) for i in order]
