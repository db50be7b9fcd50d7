"""The loaded model's structure, checked before its first prediction.

A file that passed :mod:`~KiMapLib.model.skops_audit` holds only allow-listed types, but their attributes are data
from the file. Here the pipeline must be exactly the one :meth:`KiMapLib.model.candidates.Candidate.pipeline` makes
(step names and classes), every hyper-parameter must pass scikit-learn's own parameter validation, every other
attribute must be one KiMap knows for that class with the expected kind of value (numeric arrays of the right
length, finite where predictions use them), no attribute may be callable except ``SelectKBest.score_func`` being
``f_regression`` or KiMap's ``mrmr_scores``, a gradient boosting model must start from zero (``init_ == "zero"``:
no init estimator or loss object) with one tree per stage, and every decision tree must be well formed (children
after their parent and inside the node table, split features inside the feature count: scikit-learn's compiled
predict does not check these). Last, one prediction on a row of zeros must give a finite number.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable

import numpy as np

from KiMapLib.errors import ModelError

#: Step names of KiMap's pipeline, in order (KiMapLib.model.training.build_pipeline).
STEP_NAMES = ("impute", "drop_constant", "scale", "select", "regress")
PIPELINE_ATTRIBUTES = frozenset({"steps", "memory", "verbose", "transform_input"})
RIDGE_SOLVERS = frozenset({"auto", "svd", "cholesky", "lsqr", "sparse_cg", "sag", "saga", "lbfgs"})


class _Refused(Exception):
    def __init__(self, path: str, what: str):
        super().__init__(f"{path}: {what}")


def _step_classes() -> tuple[tuple[type, ...], ...]:
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
    from sklearn.feature_selection import SelectKBest, VarianceThreshold
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import ElasticNet, Ridge
    from sklearn.preprocessing import StandardScaler

    return ((SimpleImputer,), (VarianceThreshold,), (StandardScaler,), (SelectKBest,),
            (Ridge, ElasticNet, RandomForestRegressor, GradientBoostingRegressor))


# -- kinds of attribute values: each returns None when the value fits, else what is wrong --------------------------

def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def _count(value, owner) -> str | None:
    return None if _is_int(value) and value >= 0 else "must be a non-negative integer"


def _one(value, owner) -> str | None:
    return None if _is_int(value) and value == 1 else "must be 1 (one output)"


def _count_or_none(value, owner) -> str | None:
    return None if value is None else _count(value, owner)


def _none(value, owner) -> str | None:
    return None if value is None else "must be None"


def _finite_float(value, owner) -> str | None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_) and math.isfinite(value)
    return None if ok else "must be a finite number"


def _numeric_dtype(value, owner) -> str | None:
    return None if isinstance(value, np.dtype) and value.kind in "biuf" else "must be a numeric numpy dtype"


def _per_feature(finite: bool = False, positive: bool = False) -> Callable:
    def check(value, owner) -> str | None:
        n = vars(owner).get("n_features_in_")
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.shape != (n,):
            return f"must be a float array of {n} values (one per input feature)"
        if finite and not np.isfinite(value).all():
            return "must hold finite numbers only"
        if positive and not (value > 0).all():
            return "must hold positive numbers only"
        return None
    return check


def _samples_seen(value, owner) -> str | None:
    if isinstance(value, np.ndarray):
        return None if value.dtype.kind in "iu" and (value >= 0).all() else "must be non-negative integers"
    return _count(value, owner)


def _n_iter(value, owner) -> str | None:
    if value is None or (isinstance(value, np.ndarray) and value.dtype.kind in "iu"):
        return None
    return "must be None or an integer array"


def _solver(value, owner) -> str | None:
    return None if isinstance(value, str) and value in RIDGE_SOLVERS else "must name a Ridge solver"


def _parameter_names(value, owner) -> str | None:
    from sklearn.tree import DecisionTreeRegressor

    names = set(DecisionTreeRegressor().get_params())
    ok = isinstance(value, tuple) and all(isinstance(v, str) and v in names for v in value)
    return None if ok else "must be a tuple of DecisionTreeRegressor parameter names"


def _tree_estimator(value, owner) -> str | None:
    from sklearn.tree import DecisionTreeRegressor

    return None if type(value) is DecisionTreeRegressor else "must be a DecisionTreeRegressor"


def _tree_estimators(value, owner) -> str | None:
    from sklearn.tree import DecisionTreeRegressor

    if not isinstance(value, list) or not value or any(type(v) is not DecisionTreeRegressor for v in value):
        return "must be a non-empty list of DecisionTreeRegressor"
    if len(value) != vars(owner).get("n_estimators"):
        return "must hold n_estimators trees"
    return None


def _boosting_trees(value, owner) -> str | None:
    from sklearn.tree import DecisionTreeRegressor

    stages = vars(owner).get("n_estimators_")
    if not isinstance(value, np.ndarray) or value.dtype != object or value.ndim != 2 or value.shape != (stages, 1) \
            or not _is_int(stages) or not 1 <= stages <= vars(owner).get("n_estimators", 0):
        return "must be an object array of n_estimators_ x 1 trees (n_estimators_ between 1 and n_estimators)"
    if any(type(tree) is not DecisionTreeRegressor for tree in value.ravel()):
        return "must hold DecisionTreeRegressor only"
    return None


def _per_stage(value, owner) -> str | None:
    stages = vars(owner).get("n_estimators_")
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.shape != (stages,):
        return f"must be a float array of {stages} values (one per stage)"
    return None


def _zero(value, owner) -> str | None:
    return None if isinstance(value, str) and value == "zero" else 'must be "zero" (no init estimator)'


def _tree(value, owner) -> str | None:
    from sklearn.tree._tree import Tree

    return None if type(value) is Tree else "must be a sklearn Tree"


#: Class name -> the attributes it may have besides its hyper-parameters, and the kind of each.
FITTED: dict[str, dict[str, Callable]] = {
    "SimpleImputer": {"n_features_in_": _count, "_fit_dtype": _numeric_dtype, "indicator_": _none,
                      "statistics_": _per_feature(finite=True)},
    "VarianceThreshold": {"n_features_in_": _count, "variances_": _per_feature()},
    "StandardScaler": {"n_features_in_": _count, "n_samples_seen_": _samples_seen,
                       "mean_": _per_feature(finite=True), "var_": _per_feature(finite=True),
                       "scale_": _per_feature(finite=True, positive=True)},
    "SelectKBest": {"n_features_in_": _count, "scores_": _per_feature(), "pvalues_": _per_feature()},
    "Ridge": {"n_features_in_": _count, "coef_": _per_feature(finite=True), "intercept_": _finite_float,
              "n_iter_": _n_iter, "solver_": _solver},
    "ElasticNet": {"n_features_in_": _count, "coef_": _per_feature(finite=True), "intercept_": _finite_float,
                   "n_iter_": _count, "dual_gap_": _finite_float},
    "GradientBoostingRegressor": {"n_features_in_": _count, "n_trees_per_iteration_": _one, "max_features_": _count,
                                  "n_estimators_": _count, "init_": _zero, "estimators_": _boosting_trees,
                                  "train_score_": _per_stage},
    "RandomForestRegressor": {"n_features_in_": _count, "_n_samples": _count, "n_outputs_": _one,
                              "_n_samples_bootstrap": _count_or_none, "estimator": _tree_estimator,
                              "estimator_": _tree_estimator, "estimators_": _tree_estimators,
                              "estimator_params": _parameter_names, "class_weight": _none},
    "DecisionTreeRegressor": {"n_features_in_": _count, "n_outputs_": _one, "max_features_": _count,
                              "tree_": _tree, "class_weight": _none},
}
_SCALARS = (type(None), bool, int, float, str, np.bool_, np.integer, np.floating)
_PARAMETER_NAMES: dict[type, tuple[str, ...]] = {}


def _check_parameter(name: str, value: object, owner: object, path: str) -> None:
    """Hyper-parameters (already validated by scikit-learn): plain scalars only; one allowed function."""
    if type(owner).__name__ == "SelectKBest" and name == "score_func":
        from sklearn.feature_selection import f_regression

        from KiMapLib.model.mrmr import mrmr_scores

        if value is not f_regression and value is not mrmr_scores:
            raise _Refused(f"{path}.{name}", "must be sklearn's f_regression or KiMap's mrmr_scores")
        return
    if isinstance(value, tuple | list):
        for index, item in enumerate(value):
            _check_parameter(name, item, owner, f"{path}.{name}[{index}]")
    elif not isinstance(value, _SCALARS) or callable(value):
        raise _Refused(f"{path}.{name}", f"a {type(value).__module__}.{type(value).__qualname__} where a number, "
                                         "text or None is expected")


def _parameters(estimator: object, path: str) -> dict:
    """The estimator's hyper-parameters (its __init__ arguments) as stored on it."""
    cls = type(estimator)
    names = _PARAMETER_NAMES.get(cls)
    if names is None:
        names = _PARAMETER_NAMES[cls] = tuple(cls._get_param_names())  # inspect.signature: cached, it is slow
    missing = [name for name in names if name not in vars(estimator)]
    if missing:
        raise _Refused(path, f"hyper-parameter(s) {', '.join(missing)} missing")
    return {name: vars(estimator)[name] for name in names}


def _validate_parameters(estimator: object, params: dict, path: str) -> None:
    """scikit-learn's own validation of hyper-parameters (types, ranges, options)."""
    from sklearn.utils._param_validation import InvalidParameterError, validate_parameter_constraints

    try:
        validate_parameter_constraints(type(estimator)._parameter_constraints, params,
                                       caller_name=type(estimator).__name__)
    except (InvalidParameterError, ValueError, TypeError) as error:
        raise _Refused(path, f"invalid hyper-parameter ({str(error).splitlines()[0][:200]})") from None


def _check_estimator(estimator: object, path: str, like: dict | None = None, same_seed: bool = False) -> dict:
    """Hyper-parameters and attributes of one allow-listed estimator (and of the trees inside a forest or boosting
    model). ``like``: the parameters of a sibling tree already validated; this one must equal them except its
    random_state (a forest's: an integer), or equal them entirely (``same_seed``: a boosting model's, all None)."""
    name = type(estimator).__name__
    spec = FITTED[name]
    params = _parameters(estimator, path)
    if like is None:
        _validate_parameters(estimator, params, path)
    elif same_seed:
        if params != like:
            raise _Refused(path, "hyper-parameters differ from the boosting model's other trees")
    elif {**params, "random_state": None} != {**like, "random_state": None} or not _is_int(params["random_state"]) \
            or not 0 <= params["random_state"] < 2**32:
        raise _Refused(path, "hyper-parameters differ from the forest's other trees")
    for attribute, value in vars(estimator).items():
        if attribute in params:
            _check_parameter(attribute, value, estimator, path)
        elif attribute in spec:
            problem = spec[attribute](value, estimator)
            if problem:
                raise _Refused(f"{path}.{attribute}", f"{problem} (found {type(value).__name__})")
        else:
            raise _Refused(f"{path}.{attribute}", f"unexpected attribute of {name} ({type(value).__name__})")
    if name == "RandomForestRegressor":
        if params["n_jobs"] not in (None, 1):
            raise _Refused(f"{path}.n_jobs", "must be None or 1")
        for key in ("estimator", "estimator_"):
            if key in vars(estimator):
                _check_estimator(vars(estimator)[key], f"{path}.{key}")
        first = None
        for index, tree in enumerate(vars(estimator).get("estimators_", [])):
            checked = _check_estimator(tree, f"{path}.estimators_[{index}]", like=first)
            first = first or checked
            if vars(tree).get("n_features_in_") != vars(estimator).get("n_features_in_"):
                raise _Refused(f"{path}.estimators_[{index}]", "expects another number of features than the forest")
    if name == "GradientBoostingRegressor":
        if params["init"] != "zero":
            raise _Refused(f"{path}.init", 'must be "zero"')
        first = None
        for index, tree in enumerate(vars(estimator).get("estimators_", np.empty((0, 1), object)).ravel()):
            tree_path = f"{path}.estimators_[{index}, 0]"
            if vars(tree).get("random_state") is not None:
                raise _Refused(f"{tree_path}.random_state", "must be None (KiMap drops the fit's random state)")
            checked = _check_estimator(tree, tree_path, like=first, same_seed=True)
            first = first or checked
            if vars(tree).get("n_features_in_") != vars(estimator).get("n_features_in_"):
                raise _Refused(tree_path, "expects another number of features than the boosting model")
    if name == "DecisionTreeRegressor" and "tree_" in vars(estimator):
        _check_tree(estimator.tree_, vars(estimator).get("n_features_in_"), f"{path}.tree_")
    return params


def _check_tree(tree, n_features: int | None, path: str) -> None:
    """Node table of a fitted regression tree: in range, acyclic (children after their parent), finite values."""
    if tree.n_features != n_features or tree.n_outputs != 1 or list(tree.n_classes) != [1]:
        raise _Refused(path, "shape (features, outputs) differs from its estimator's")
    state = tree.__getstate__()
    nodes, values, count = state["nodes"], state["values"], state["node_count"]
    if count < 1 or len(nodes) != count or values.shape != (count, 1, 1) or not np.isfinite(values).all():
        raise _Refused(path, "node table and values do not agree or values are not finite")
    index = np.arange(count)
    left, right, feature = nodes["left_child"], nodes["right_child"], nodes["feature"]
    leaf = left == -1
    inner = ~leaf
    if ((right == -1) != leaf).any() or (left[inner] <= index[inner]).any() or (right[inner] <= index[inner]).any() \
            or (left[inner] >= count).any() or (right[inner] >= count).any():
        raise _Refused(path, "a node's children are outside the node table or not after it")
    if (feature[inner] < 0).any() or (feature[inner] >= n_features).any() \
            or not np.isfinite(nodes["threshold"][inner]).all():
        raise _Refused(path, "a split uses a feature outside the model's features or a non-finite threshold")
    if not 0 <= state["max_depth"] < count:
        raise _Refused(path, "max_depth is outside the tree")


def _check_structure(content: object, n_features: int) -> object:
    from sklearn.pipeline import Pipeline

    if not isinstance(content, dict) or set(content) - {"spread"} != {"pipeline", "input_features"}:
        raise _Refused("(top level)", "must hold exactly pipeline and input_features (and a spread model)")
    pipeline = content["pipeline"]
    if type(pipeline) is not Pipeline:
        raise _Refused("pipeline", f"a {type(pipeline).__name__}, not a scikit-learn Pipeline")
    attributes = vars(pipeline)
    unexpected = sorted(set(attributes) - PIPELINE_ATTRIBUTES)
    if unexpected:
        raise _Refused("pipeline", f"unexpected attribute(s) {', '.join(unexpected)}")
    if attributes.get("memory") is not None or attributes.get("transform_input") is not None \
            or not isinstance(attributes.get("verbose", False), bool):
        raise _Refused("pipeline", "memory and transform_input must be None and verbose a bool")
    steps = attributes.get("steps")
    if not isinstance(steps, list) or len(steps) != len(STEP_NAMES):
        raise _Refused("pipeline.steps", f"must be a list of {len(STEP_NAMES)} steps ({', '.join(STEP_NAMES)})")
    for index, (step, name, classes) in enumerate(zip(steps, STEP_NAMES, _step_classes(), strict=True)):
        path = f"pipeline.steps[{index}]"
        if not isinstance(step, tuple) or len(step) != 2 or step[0] != name or type(step[1]) not in classes:
            raise _Refused(path, f"must be ('{name}', {' or '.join(c.__name__ for c in classes)})")
        _check_estimator(step[1], f"{path}[1]")
    if vars(steps[0][1]).get("n_features_in_") != n_features:
        raise _Refused("pipeline.steps[0][1].n_features_in_", f"must be {n_features} (the card's input features)")
    return pipeline


def check_pipeline(content: object, n_features: int, where: str, name: str = "model.skops") -> object:
    """The fitted pipeline in ``content`` (what skops loaded) once its structure is KiMap's and one prediction on a
    row of zeros is finite; raises a one-line ModelError naming the attribute otherwise."""
    try:
        pipeline = _check_structure(content, n_features)
    except _Refused as refused:
        raise ModelError(f"{name} refused at {refused}", input_name=where,
                         hint="only bundles written by `kimap train` can be loaded") from None
    _trial_prediction(pipeline, n_features, where, name)
    return pipeline


def _trial_prediction(model: object, n_columns: int, where: str, label: str) -> None:
    """One prediction on a row of zeros must be one finite number (else one refusal naming ``label``)."""
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            trial = np.asarray(model.predict(np.zeros((1, n_columns))), dtype=float)
    except Exception as error:  # any failure of a hostile or broken model is one refusal
        raise ModelError(f"{label} cannot predict ({type(error).__name__})", input_name=where,
                         hint="only bundles written by `kimap train` can be loaded") from None
    if trial.shape != (1,) or not np.isfinite(trial).all():
        raise ModelError(f"{label} predicts a non-finite value for a row of zeros", input_name=where,
                         hint="only bundles written by `kimap train` can be loaded")


#: Classes a spread model (the prediction intervals' local scale, KiMapLib.model.intervals) may have.
SPREAD_CLASSES = ("RandomForestRegressor",)


def check_spread(content: object, n_columns: int, where: str, name: str = "model.skops") -> object:
    """The spread model in ``content`` (None when there is none) once it is an allow-listed estimator on the
    ``n_columns`` transformed features of the card's ``uncertainty/columns`` and predicts a finite value."""
    spread = content.get("spread") if isinstance(content, dict) else None
    if spread is None:
        return None
    try:
        if type(spread).__name__ not in SPREAD_CLASSES or type(spread).__module__.split(".")[0] != "sklearn":
            raise _Refused("spread", f"a {type(spread).__name__}, not one of {', '.join(SPREAD_CLASSES)}")
        _check_estimator(spread, "spread")
        if vars(spread).get("n_features_in_") != n_columns:
            raise _Refused("spread.n_features_in_", f"must be {n_columns} (the card's uncertainty columns)")
    except _Refused as refused:
        raise ModelError(f"{name} refused at {refused}", input_name=where,
                         hint="only bundles written by `kimap train` can be loaded") from None
    _trial_prediction(spread, n_columns, where, f"{name}: the spread model")
    return spread
