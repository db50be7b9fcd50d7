"""The model families KiMap trains and the small grid the nested selection chooses from.

Every candidate is the same five-step scikit-learn Pipeline (impute -> drop_constant -> scale -> select ->
regress) that :mod:`~KiMapLib.model.pipeline_check` accepts; only the selector's score function and k and the
regressor differ. Families: ``ridge``, ``enet`` (elastic net over all features: k = "all", sparse by its L1 part),
``rf`` (random forest), ``gbr`` (gradient boosting, started from zero instead of a DummyRegressor mean so the saved
model holds no loss object or random state: see :func:`strip_fit_state`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

FAMILIES = ("ridge", "enet", "rf", "gbr")
SELECTORS = ("mrmr", "f_regression")

#: Hyper-parameters of a fixed (non-selected) family, as used by ``kimap train --estimator FAMILY``.
FIXED_PARAMS: dict[str, dict] = {
    "ridge": {"alpha": 10.0},
    "enet": {"alpha": 0.3, "l1_ratio": 0.5},
    "rf": {"n_estimators": 300, "min_samples_leaf": 3, "max_features": 0.5},
    "gbr": {"n_estimators": 150, "max_depth": 2, "learning_rate": 0.05},
}


@dataclass(frozen=True)
class Candidate:
    """One point of the grid: family, feature selection (selector, k; k None = all columns) and hyper-parameters."""

    family: str
    k: int | None
    selector: str = "mrmr"
    params: dict = field(default_factory=dict, hash=False, compare=True)

    @property
    def name(self) -> str:
        """Short stable label, e.g. ``ridge mrmr k=20 alpha=10``."""
        size = "all" if self.k is None else f"k={self.k}"
        values = " ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                          for key, value in sorted(self.params.items()))
        return f"{self.family} {self.selector} {size} {values}".strip()

    def to_dict(self) -> dict:
        return {"name": self.name, "family": self.family, "selector": self.selector,
                "k_features": "all" if self.k is None else self.k, "params": dict(self.params)}

    def pipeline(self, n_columns: int, seed: int = 0):
        """The unfitted Pipeline (k capped at ``n_columns``)."""
        from sklearn.feature_selection import SelectKBest, VarianceThreshold, f_regression
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        from KiMapLib.model.mrmr import mrmr_scores

        score = mrmr_scores if self.selector == "mrmr" else f_regression
        k = "all" if self.k is None or self.k >= n_columns else self.k
        return Pipeline([
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("drop_constant", VarianceThreshold(0.0)),
            ("scale", StandardScaler()),
            ("select", SelectKBest(score, k=k)),
            ("regress", regressor(self.family, self.params, seed)),
        ])


def regressor(family: str, params: dict, seed: int = 0):
    """The scikit-learn regressor of a family (single-threaded: parallelism is over folds)."""
    if family == "ridge":
        from sklearn.linear_model import Ridge

        return Ridge(**params)
    if family == "enet":
        from sklearn.linear_model import ElasticNet

        return ElasticNet(max_iter=20000, tol=1e-4, **params)
    if family == "rf":
        from sklearn.ensemble import RandomForestRegressor

        return RandomForestRegressor(random_state=seed, n_jobs=1, **params)
    if family == "gbr":
        from sklearn.ensemble import GradientBoostingRegressor

        return GradientBoostingRegressor(init="zero", subsample=1.0, random_state=seed, **params)
    raise ValueError(f"unknown family {family!r}")


def default_grid(families: tuple[str, ...] = FAMILIES) -> list[Candidate]:
    """The nested selection's candidates (18 in all), simplest first (ties go to the earlier one): today's ridge on
    20 F-test features; ridge on 10/20/40 mRMR features x alpha 1/10/100; elastic net on all features x alpha
    0.1/0.5 x l1_ratio 0.5/0.9; random forests (100 trees, leaves of 3 or 8) and gradient boosting (100 stages,
    depth 2 at rate 0.1 or depth 3 at rate 0.05) on 40 mRMR features. Sized for nested LOPO over 30 patients x ~200
    biopsies x ~375 columns on 2 cores: the trees cost 90 % of the time, so they get two sizes each."""
    grid = [Candidate("ridge", 20, "f_regression", {"alpha": 10.0})]  # the model KiMap packaged until now
    grid += [Candidate("ridge", k, "mrmr", {"alpha": alpha}) for k in (10, 20, 40) for alpha in (1.0, 10.0, 100.0)]
    grid += [Candidate("enet", None, "f_regression", {"alpha": alpha, "l1_ratio": ratio})
             for alpha in (0.1, 0.5) for ratio in (0.5, 0.9)]
    grid += [Candidate("rf", 40, "mrmr", {"n_estimators": 100, "min_samples_leaf": leaf, "max_features": 0.33})
             for leaf in (3, 8)]
    grid += [Candidate("gbr", 40, "mrmr", {"n_estimators": 100, "max_depth": depth, "learning_rate": rate})
             for depth, rate in ((2, 0.1), (3, 0.05))]
    return [candidate for candidate in grid if candidate.family in families]


def strip_fit_state(pipeline) -> object:
    """Drop what a fitted GradientBoostingRegressor keeps only for fitting (its loss object and random state, also
    referenced by each tree's ``random_state``): skops would store them as a Cython loss and a RandomState, which
    KiMap's allow-list refuses. Predictions do not use them when ``init="zero"``. Returns the same pipeline."""
    from sklearn.ensemble import GradientBoostingRegressor

    model = pipeline.steps[-1][1]
    if type(model) is GradientBoostingRegressor and hasattr(model, "estimators_"):
        if model.init_ != "zero":
            raise ValueError("only a GradientBoostingRegressor with init='zero' can be saved")
        for attribute in ("_loss", "_rng"):
            vars(model).pop(attribute, None)
        for tree in model.estimators_.ravel():
            tree.random_state = None
    return pipeline
