"""ComBat harmonization across institutions, as a scikit-learn transformer fitted inside the cross-validation folds.

Parametric empirical-Bayes location/scale adjustment (Johnson, Li & Rabinovic 2007, Biostatistics 8:118; as used
for imaging features by Fortin et al. 2018, NeuroImage 167:104). Each feature is modelled as
``y = alpha + covariates @ beta + gamma_site + delta_site * e``; the site's shift ``gamma`` and scale ``delta`` are
estimated per feature, shrunk towards the site's mean over features (normal prior on gamma, inverse-gamma prior on
delta), and removed: ``y* = (y - alpha - cov @ beta - gamma*) / sqrt(delta*) + alpha + cov @ beta``, in the units
of the pooled residual standard deviation.

The institution travels as one column of ``X`` (``batch_column``; sklearn pipelines pass only ``X`` to transform),
so a row is ``[institution, feature..., covariate...]`` as an object array. The output is the float feature and
covariate columns, the institution column removed; covariates (``covariate_columns``) are kept unchanged and enter
the model so that their effect on the features is preserved. Missing feature values (NaN) are left out of every
estimate and stay NaN (impute after).

An institution not seen at fit (a new site; every held-out institution of leave-one-institution-out):

- ``unseen_batch="none"`` (default): its rows are returned unchanged. This is the only choice for a single
  patient's map: a site's shift cannot be told apart from that patient's biology with one patient.
- ``unseen_batch="estimate"``: when ``transform`` gets at least ``min_unseen_rows`` rows of that institution, its
  gamma/delta are estimated from those (unlabelled) rows against the training sites' pooled mean and variance,
  with the same empirical-Bayes shrinkage, and removed; with fewer rows they are returned unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from KiMapLib.errors import KiMapError

#: Unseen-institution policies of :class:`ComBat`.
UNSEEN_BATCH_POLICIES = ("none", "estimate")
#: Empirical-Bayes iterations stop when gamma* and delta* change by less than this (relative), or after MAX_EB_ITER.
EB_TOLERANCE = 1e-4
MAX_EB_ITER = 1000
#: Variances below this are treated as zero (a feature constant at a site or overall is left as it is).
TINY_VARIANCE = 1e-12


def _inverse_gamma_prior(delta_hat: np.ndarray) -> tuple[float, float]:
    """Method-of-moments (a, b) of the inverse-gamma prior of a site's variances over features."""
    delta_hat = delta_hat[np.isfinite(delta_hat)]
    mean, var = float(np.mean(delta_hat)), float(np.var(delta_hat, ddof=1)) if len(delta_hat) > 1 else 0.0
    if var <= TINY_VARIANCE:  # every feature has the same scale: a very tight prior at that value
        return 1e6, mean * (1e6 - 1)
    return (2 * var + mean**2) / var, (mean * var + mean**3) / var


def empirical_bayes(standardized: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shrunk (gamma*, delta*) per feature of one site from its standardized rows (NaN = missing).

    Johnson et al. 2007, parametric priors: gamma_hat ~ N(gamma_bar, tau²), delta_hat ~ InvGamma(a, b), iterated
    to the joint posterior means.
    """
    counts = np.sum(np.isfinite(standardized), axis=0).astype(float)
    with warnings.catch_warnings():  # a feature missing at the whole site: NaN estimates, left unchanged below
        warnings.simplefilter("ignore", RuntimeWarning)
        gamma_hat = np.nanmean(standardized, axis=0)
        delta_hat = np.nanvar(standardized, axis=0, ddof=1)
    usable = (counts >= 2) & np.isfinite(delta_hat) & (delta_hat > TINY_VARIANCE)
    gamma_star = np.where(np.isfinite(gamma_hat), gamma_hat, 0.0)
    delta_star = np.ones_like(gamma_star)
    if usable.sum() < 2:  # nothing to pool over: the plain estimates where they exist
        delta_star[usable] = delta_hat[usable]
        return gamma_star, delta_star
    g, d, n, values = gamma_hat[usable], delta_hat[usable], counts[usable], standardized[:, usable]
    gamma_bar, tau2 = float(np.mean(g)), float(np.var(g, ddof=1))
    a, b = _inverse_gamma_prior(d)
    gamma_new, delta_new = g.copy(), d.copy()
    for _ in range(MAX_EB_ITER):
        gamma_old, delta_old = gamma_new, delta_new
        gamma_new = (n * tau2 * g + delta_old * gamma_bar) / (n * tau2 + delta_old)
        squares = np.nansum((values - gamma_new) ** 2, axis=0)
        delta_new = (0.5 * squares + b) / (n / 2.0 + a - 1.0)
        change = max(np.max(np.abs(gamma_new - gamma_old) / (np.abs(gamma_old) + 1e-12)),
                     np.max(np.abs(delta_new - delta_old) / (np.abs(delta_old) + 1e-12)))
        if change < EB_TOLERANCE:
            break
    gamma_star[usable], delta_star[usable] = gamma_new, delta_new
    return gamma_star, delta_star


class ComBat(TransformerMixin, BaseEstimator):
    """ComBat location/scale harmonization of feature columns across the institutions in ``batch_column``.

    ``fit`` estimates, from its rows only, the pooled mean/variance and covariate effects of each feature and every
    seen institution's shrunk shift and scale (``gamma_``, ``delta_``: institution x feature); ``transform`` removes
    them (an institution not seen at fit: see ``unseen_batch`` in the module docstring).
    """

    def __init__(self, batch_column: int = 0, covariate_columns: Sequence[int] = (), unseen_batch: str = "none",
                 min_unseen_rows: int = 10):
        self.batch_column = batch_column
        self.covariate_columns = covariate_columns
        self.unseen_batch = unseen_batch
        self.min_unseen_rows = min_unseen_rows

    # -- columns ----------------------------------------------------------------------------------------------
    def _split(self, X) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(institution labels, features, covariates) of ``X``; covariates keep their column order."""
        table = np.asarray(X, dtype=object)
        if table.ndim != 2:
            raise KiMapError(f"ComBat needs a 2-D table, got {table.ndim}-D", input_name="features table")
        width = table.shape[1]
        batch = int(self.batch_column) % width
        covariates = [int(c) % width for c in self.covariate_columns]
        if batch in covariates:
            raise KiMapError("the institution column is also a covariate column", input_name="ComBat")
        features = [c for c in range(width) if c != batch and c not in covariates]
        labels = np.array(["" if v is None else str(v) for v in table[:, batch]], dtype=object)
        if np.any(labels == ""):
            raise KiMapError(f"{int(np.sum(labels == ''))} rows have no institution", input_name="institution",
                             hint="ComBat needs the institution of every row")
        return (labels, table[:, features].astype(float),
                table[:, covariates].astype(float) if covariates else np.empty((len(table), 0)))

    def _covariate_design(self, covariates: np.ndarray) -> np.ndarray:
        """Covariates centred on the fit's means, missing values at the mean (contributing no effect)."""
        centred = covariates - self.covariate_mean_
        return np.where(np.isfinite(centred), centred, 0.0)

    # -- fit / transform ----------------------------------------------------------------------------------------
    def fit(self, X, y=None):
        if self.unseen_batch not in UNSEEN_BATCH_POLICIES:
            raise KiMapError(f"unknown unseen_batch {self.unseen_batch!r}", input_name="ComBat",
                             hint=f"use {' or '.join(UNSEEN_BATCH_POLICIES)}")
        labels, features, covariates = self._split(X)
        batches, counts = np.unique(labels, return_counts=True)
        if len(batches) < 2:
            raise KiMapError(f"only one institution ({batches[0]}) to harmonize", input_name="institution",
                             hint="ComBat needs rows of at least two institutions")
        if counts.min() < 2:
            raise KiMapError(f"institution {batches[counts.argmin()]} has a single row", input_name="institution",
                             hint="ComBat needs at least two rows per institution")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            self.covariate_mean_ = np.nanmean(covariates, axis=0) if covariates.shape[1] else np.empty(0)
        self.covariate_mean_ = np.where(np.isfinite(self.covariate_mean_), self.covariate_mean_, 0.0)
        cov = self._covariate_design(covariates)
        onehot = (labels[:, None] == batches[None, :]).astype(float)
        design = np.hstack([onehot, cov])
        n_features = features.shape[1]
        coefficients = np.zeros((design.shape[1], n_features))
        present = np.isfinite(features)
        for pattern in np.unique(present, axis=1).T:  # one least-squares fit per missingness pattern
            columns = np.all(present == pattern[:, None], axis=0)
            rows = pattern
            if rows.sum() > design.shape[1]:
                coefficients[:, columns] = np.linalg.lstsq(design[rows], features[np.ix_(rows, columns)],
                                                           rcond=None)[0]
            else:
                coefficients[:, columns] = np.nan
        weights = counts / counts.sum()
        self.grand_mean_ = weights @ coefficients[: len(batches)]
        self.covariate_coef_ = coefficients[len(batches):]
        residuals = features - design @ coefficients
        with warnings.catch_warnings():  # a feature without a fit (too few complete rows) stays unchanged
            warnings.simplefilter("ignore", RuntimeWarning)
            self.pooled_var_ = np.nanmean(residuals**2, axis=0)
        standardized = self._standardize(features, covariates)
        self.batches_ = batches
        self.gamma_ = np.zeros((len(batches), n_features))
        self.delta_ = np.ones((len(batches), n_features))
        for index, batch in enumerate(batches):
            self.gamma_[index], self.delta_[index] = empirical_bayes(standardized[labels == batch])
        self.n_features_in_ = np.asarray(X, dtype=object).shape[1]
        return self

    def _standardize(self, features: np.ndarray, covariates: np.ndarray) -> np.ndarray:
        """(y - alpha - cov @ beta) / sqrt(pooled variance); features without variance stay 0 (left unchanged)."""
        scale = np.sqrt(np.where(self.pooled_var_ > TINY_VARIANCE, self.pooled_var_, np.nan))
        return (features - self._mean(covariates)) / scale

    def _mean(self, covariates: np.ndarray) -> np.ndarray:
        return self.grand_mean_ + self._covariate_design(covariates) @ self.covariate_coef_

    def transform(self, X) -> np.ndarray:
        """Harmonized features, then the covariates unchanged (float), the institution column removed."""
        check_is_fitted(self, "gamma_")
        labels, features, covariates = self._split(X)
        standardized = self._standardize(features, covariates)
        harmonized = features.copy()
        adjustable = np.isfinite(self.pooled_var_) & (self.pooled_var_ > TINY_VARIANCE)
        unseen = self._unseen(labels)
        for batch in np.unique(labels):
            rows = labels == batch
            if unseen.get(batch) == "unchanged":
                continue
            if batch in unseen:
                gamma, delta = empirical_bayes(standardized[rows])
            else:
                index = int(np.searchsorted(self.batches_, batch))
                gamma, delta = self.gamma_[index], self.delta_[index]
            adjusted = (standardized[rows] - gamma) / np.sqrt(delta) * np.sqrt(self.pooled_var_) \
                + self._mean(covariates[rows])
            harmonized[rows] = np.where(adjustable, adjusted, features[rows])
        return np.hstack([harmonized, covariates])

    def _unseen(self, labels: np.ndarray) -> dict[str, str]:
        batches, counts = np.unique(labels, return_counts=True)
        return {str(batch): "estimated" if self.unseen_batch == "estimate" and count >= self.min_unseen_rows
                else "unchanged" for batch, count in zip(batches, counts, strict=True) if batch not in self.batches_}

    def unseen_institutions(self, X) -> dict[str, str]:
        """Institution -> "estimated" or "unchanged" for each institution of ``X`` not seen at fit (what
        :meth:`transform` does with its rows)."""
        check_is_fitted(self, "gamma_")
        return self._unseen(self._split(X)[0])

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        check_is_fitted(self, "gamma_")
        width = self.n_features_in_
        names = list(input_features) if input_features is not None else [f"x{i}" for i in range(width)]
        batch = int(self.batch_column) % width
        covariates = [int(c) % width for c in self.covariate_columns]
        features = [c for c in range(width) if c != batch and c not in covariates]
        return np.array([names[c] for c in features + covariates], dtype=object)
