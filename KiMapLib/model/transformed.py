"""The point model's own feature space: the columns its final regressor actually uses, after impute/scale/select.

Uncertainty (spread model), out-of-domain distance and explanations all work in this space ``Z``, so that a feature
the regressor ignores can neither widen an interval nor flag a voxel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from KiMapLib.errors import ModelError


def fitted_trees(regressor) -> list | None:
    """The fitted decision trees of a tree model (one tree, a forest or gradient boosting), else None."""
    if hasattr(regressor, "tree_"):
        return [regressor]
    estimators = getattr(regressor, "estimators_", None)
    if estimators is None:
        return None
    trees = list(np.asarray(estimators, dtype=object).ravel())
    return trees if all(hasattr(tree, "tree_") for tree in trees) else None


def used_columns(pipeline) -> np.ndarray:
    """Indices, within the output of ``pipeline[:-1]``, of the columns the final regressor uses.

    Linear models: nonzero coefficients. Trees, forests, gradient boosting: features used in at least one split
    (a superset of ``feature_importances_ > 0``; exactly the features that can get a nonzero tree contribution).
    """
    regressor = pipeline[-1]
    coef = getattr(regressor, "coef_", None)
    if coef is not None:
        return np.flatnonzero(np.abs(np.asarray(coef, dtype=float).reshape(-1)) > 0)
    trees = fitted_trees(regressor)
    if trees is not None:
        n_features = int(regressor.n_features_in_)
        used = np.zeros(n_features, dtype=bool)
        for tree in trees:
            features = tree.tree_.feature
            used[features[features >= 0]] = True
        return np.flatnonzero(used)
    importances = getattr(regressor, "feature_importances_", None)
    if importances is not None:
        return np.flatnonzero(np.asarray(importances) > 0)
    raise ModelError(f"cannot tell which columns a {type(regressor).__name__} uses", input_name="model",
                     hint="use a linear model (coef_) or a scikit-learn tree ensemble")


def transformed_names(pipeline, input_names: Sequence[str] | None = None) -> list[str]:
    """Names of the used columns (``pipeline[:-1].get_feature_names_out(input_names)`` restricted to them)."""
    names = pipeline[:-1].get_feature_names_out(None if input_names is None else list(input_names))
    return [str(names[i]) for i in used_columns(pipeline)]


def transformed(pipeline, matrix: np.ndarray, input_names: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """``Z = pipeline[:-1].transform(matrix)[:, used_columns(pipeline)]`` and the names of its columns.

    ``matrix`` is the design matrix the pipeline was fitted on (rows x input columns, NaN allowed: it is imputed);
    ``input_names`` are its column names (default: the names the pipeline saw at fit, or x0, x1, ...).
    """
    values = _transformed_all(pipeline, matrix)
    return values[:, used_columns(pipeline)], transformed_names(pipeline, input_names)


def predicted_and_transformed(pipeline, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(pipeline.predict(matrix), Z)`` with ``Z`` as :func:`transformed` gives it, from one pass through the
    pipeline's transformers (``Pipeline.predict`` is ``pipeline[-1].predict(pipeline[:-1].transform(matrix))``: the
    same operations on the same values, so the same numbers; a whole-tumour map has ~10^4-10^5 rows)."""
    values = _transformed_all(pipeline, matrix)
    return pipeline[-1].predict(values), values[:, used_columns(pipeline)]


def _transformed_all(pipeline, matrix: np.ndarray) -> np.ndarray:
    """``pipeline[:-1].transform(matrix)`` as float, after checking the matrix's width."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.ndim != 2 or matrix.shape[1] != pipeline[0].n_features_in_:
        raise ModelError(f"expected a matrix with {pipeline[0].n_features_in_} columns, got shape {matrix.shape}",
                         input_name="features", hint="pass the design matrix built from the model's input_features")
    return np.asarray(pipeline[:-1].transform(matrix), dtype=float)
