"""Normalized split-conformal intervals calibrated on held-out patients: coverage, adaptivity, no self-calibration."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from KiMapLib.errors import KiMapError
from KiMapLib.model.intervals import (
    OuterFold,
    cross_conformal,
    exceedance_probability,
    fit_spread,
    interval,
    lopo_coverage,
    lopo_exceedance,
    lopo_intervals,
    predict_spread,
    predictive_cdf,
    score_quantiles,
)
from KiMapLib.model.transformed import transformed

TREES = 50  # spread forests in these tests (the default is 200)


def heteroscedastic_cohort(seed: int, patients: int = 30, biopsies: int = 8):
    """ki67 = 40 + 6 x0 + 4 x1 + patient effect + noise whose sd = 2 exp(0.7 x2) grows with feature x2."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"P{p:02d}" for p in range(patients)], biopsies)
    institutions = np.repeat([f"I{p % 3}" for p in range(patients)], biopsies)
    offsets = np.repeat(rng.normal(0, 0.3, (patients, 6)), biopsies, axis=0)
    x = rng.normal(0, 1, (patients * biopsies, 6)) + offsets
    sd = 2.0 * np.exp(0.7 * x[:, 2])
    y = 40 + 6 * x[:, 0] + 4 * x[:, 1] + np.repeat(rng.normal(0, 1, patients), biopsies) + sd * rng.normal(size=sd.size)
    return x, np.clip(y, 0, 100), groups, institutions, sd


def point_pipeline():
    from sklearn.feature_selection import SelectKBest, VarianceThreshold, f_regression
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("impute", SimpleImputer(strategy="median")), ("drop_constant", VarianceThreshold(0.0)),
                     ("scale", StandardScaler()), ("select", SelectKBest(f_regression, k="all")),
                     ("regress", Ridge(alpha=1.0))])


def inner_oof_residuals(x, y, groups):
    """Out-of-fold residuals of the training patients (grouped 5-fold here to keep the test quick)."""
    from sklearn.model_selection import GroupKFold, cross_val_predict

    return y - cross_val_predict(point_pipeline(), x, y, groups=groups, cv=GroupKFold(5))


def outer_folds(x, y, groups):
    """One fold per patient, as the training code gives them: inner residuals and Z from the fold's own pipeline."""
    folds = []
    for patient in np.unique(groups):
        test, train = groups == patient, groups != patient
        pipeline = point_pipeline().fit(x[train], y[train])
        residuals = inner_oof_residuals(x[train], y[train], groups[train])
        folds.append(OuterFold(held_out=np.flatnonzero(test), train_features=transformed(pipeline, x[train])[0],
                               train_abs_residuals=np.abs(residuals),
                               held_out_features=transformed(pipeline, x[test])[0],
                               held_out_predictions=pipeline.predict(x[test])))
    return folds


@pytest.fixture(scope="module")
def cohort():
    x, y, groups, institutions, sd = heteroscedastic_cohort(seed=7)
    folds = outer_folds(x, y, groups)
    scores, spread, predicted = cross_conformal(folds, y, seed=0, n_estimators=TREES)
    return {"x": x, "y": y, "groups": groups, "institutions": institutions, "sd": sd, "folds": folds,
            "scores": scores, "spread": spread, "predicted": predicted}


def test_lopo_coverage_is_near_the_level_and_width_follows_the_true_noise(cohort):
    c = cohort
    report = lopo_coverage(c["y"], c["predicted"], c["spread"], c["scores"], c["groups"], 0.9, c["institutions"])
    assert 0.85 <= report["coverage"] <= 0.95
    assert report["n"] == 240 and set(report["per_institution"]) == {"I0", "I1", "I2"}
    assert sum(v["n"] for v in report["per_institution"].values()) == 240
    assert len(report["per_patient"]) == 30
    lower, upper = lopo_intervals(c["predicted"], c["spread"], c["scores"], c["groups"], 0.9)
    assert report["mean_width"] == pytest.approx(float(np.mean(upper - lower)))
    # Locally adaptive: width tracks the true noise sd (a constant-width method would give rho = 0).
    rho = spearmanr(upper - lower, c["sd"]).statistic
    assert rho > 0.6, rho
    assert report["width_sd"] > 0.3 * report["mean_width"]


def test_deployed_intervals_cover_unseen_patients(cohort):
    """The recipe of the model bundle: final pipeline, spread on outer OOF residuals, cross-conformal scores."""
    c = cohort
    pipeline = point_pipeline().fit(c["x"], c["y"])
    z, _ = transformed(pipeline, c["x"])
    spread_model = fit_spread(z, np.abs(c["y"] - c["predicted"]), seed=0, n_estimators=TREES)
    x_new, y_new, _, _, sd_new = heteroscedastic_cohort(seed=99, patients=40)
    mu = pipeline.predict(x_new)
    spread = predict_spread(spread_model, transformed(pipeline, x_new)[0])
    lower, upper = interval(mu, spread, c["scores"], 0.9)
    coverage = float(np.mean((y_new >= lower) & (y_new <= upper)))
    assert 0.85 <= coverage <= 0.95, coverage
    assert spearmanr(upper - lower, sd_new).statistic > 0.6


def test_a_patients_interval_never_uses_its_own_targets(cohort):
    c = cohort
    p = "P05"
    own = c["groups"] == p
    lower, upper = lopo_intervals(c["predicted"], c["spread"], c["scores"], c["groups"], 0.9)
    changed = c["y"].copy()
    changed[own] += 30.0  # the held-out patient's measured ki67 changes a lot
    scores, spread, predicted = cross_conformal(c["folds"], changed, seed=0, n_estimators=TREES)
    assert np.array_equal(spread, c["spread"]) and np.array_equal(predicted, c["predicted"])
    assert not np.allclose(scores[own], c["scores"][own])
    lower2, upper2 = lopo_intervals(predicted, spread, scores, c["groups"], 0.9)
    assert np.array_equal(lower2[own], lower[own]) and np.array_equal(upper2[own], upper[own])
    assert not np.array_equal(upper2[~own], upper[~own])  # the others do calibrate on P05's scores
    # p's spread comes from a forest that never saw p: wrecking p's row in its own fold changes nothing for p.
    fold = next(f for f in c["folds"] if np.array_equal(f.held_out, np.flatnonzero(own)))
    other = next(f for f in c["folds"] if not np.array_equal(f.held_out, np.flatnonzero(own)))
    assert fold.train_features.shape[0] == 232 and other.train_features.shape[0] == 232


def test_score_quantiles_are_the_finite_sample_order_statistics():
    scores = np.arange(1, 20, dtype=float)  # n = 19: (n + 1) * 0.95 = 19 -> the largest; (n + 1) * 0.05 = 1
    assert score_quantiles(scores[::-1], 0.9) == (1.0, 19.0)
    low, high = score_quantiles(scores[:18], 0.9)  # n = 18: rank 18.05 -> 19 > n: open upper end
    assert high == np.inf and low == -np.inf
    lower, upper = interval(np.array([50.0, 1.0]), np.array([2.0, 2.0]), scores[:18], 0.9)
    assert upper.tolist() == [100.0, 100.0] and lower.tolist() == [0.0, 0.0]
    e = np.linspace(-2, 2, 99)  # n = 99: ranks 5 and 95
    lower, upper = interval(np.array([30.0]), np.array([3.0]), e, 0.9)
    assert lower[0] == pytest.approx(30 + 3 * e[4]) and upper[0] == pytest.approx(30 + 3 * e[94])
    with pytest.raises(KiMapError, match="interval-level"):
        interval(np.array([1.0]), np.array([1.0]), e, 90)


def test_probability_depends_on_the_spread_not_only_on_the_estimate():
    scores = np.random.default_rng(0).normal(size=200)
    mu = np.array([15.0, 15.0, 25.0, 25.0])
    spread = np.array([1.0, 5.0, 1.0, 5.0])
    p = exceedance_probability(mu, spread, scores, threshold=20.0)
    assert p[0] < 0.01 and 0.1 < p[1] < 0.25  # below the threshold: more spread, more chance to exceed it
    assert p[2] > 0.99 and 0.75 < p[3] < 0.9
    assert p[1] == pytest.approx(1 - p[3], abs=0.06)  # symmetric noise
    # the CDF is continuous and monotone in the threshold, and 0 / 1 far out
    thresholds = np.linspace(-20, 60, 401)
    cdf = np.array([predictive_cdf(np.array([20.0]), np.array([4.0]), scores, t)[0] for t in thresholds])
    assert np.all(np.diff(cdf) >= 0) and cdf[0] == 0.0 and cdf[-1] == 1.0 and np.max(np.diff(cdf)) < 0.08
    assert np.isnan(exceedance_probability(np.array([np.nan]), np.array([1.0]), scores, 20.0)[0])
    maps = exceedance_probability(np.full((2, 3, 4), 18.0), np.full((2, 3, 4), 2.0), scores, 20.0)
    assert maps.shape == (2, 3, 4) and np.allclose(maps, 1 - predictive_cdf(18.0, 2.0, scores, 20.0))


def test_lopo_probabilities_are_calibrated_on_the_heteroscedastic_cohort(cohort):
    from KiMapLib.model.calibration import calibration_summary

    c = cohort
    probability = lopo_exceedance(c["predicted"], c["spread"], c["scores"], c["groups"], threshold=45.0)
    summary = calibration_summary(c["y"] >= 45.0, probability)
    assert summary["ece"] < 0.08 and summary["brier"] < 0.15, summary


def test_spread_model_refuses_mismatched_or_missing_input():
    with pytest.raises(KiMapError, match="do not match"):
        fit_spread(np.zeros((10, 2)), np.ones(9))
    with pytest.raises(KiMapError, match="NaN"):
        fit_spread(np.full((10, 2), np.nan), np.ones(10))
    model = fit_spread(np.random.default_rng(0).normal(size=(40, 2)), np.ones(40) * 3, n_estimators=5)
    spread = predict_spread(model, np.array([[0.0, 0.0], [np.nan, 0.0]]))
    assert spread[0] == pytest.approx(3.0) and np.isnan(spread[1])
