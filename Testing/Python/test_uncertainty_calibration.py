"""Reliability curve, ECE and Brier score of P(ki67 >= threshold): known values on simulated probabilities."""

import numpy as np
import pytest

from KiMapLib.errors import KiMapError
from KiMapLib.model.calibration import (
    brier_score,
    calibration_summary,
    expected_calibration_error,
    plot_reliability,
    reliability_curve,
)


def simulated(n: int = 40000, seed: int = 3):
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0, 1, n)
    return rng.uniform(0, 1, n) < truth, truth


def test_a_perfectly_calibrated_forecast_has_ece_near_zero_and_the_known_brier():
    outcome, truth = simulated()
    assert expected_calibration_error(outcome, truth) < 0.01
    assert brier_score(outcome, truth) == pytest.approx(1 / 6, abs=0.005)  # E[p (1 - p)] for p ~ U(0, 1)
    curve = reliability_curve(outcome, truth)
    assert curve["bin"] == list(range(10)) and sum(curve["count"]) == 40000
    assert np.allclose(curve["observed_fraction"], curve["mean_predicted"], atol=0.03)


def test_a_miscalibrated_forecast_has_the_expected_ece():
    outcome, truth = simulated()
    # forecasting p^2 when the truth is p: ECE -> integral of |p - p^2| = 1/6 (minus the within-bin averaging)
    assert expected_calibration_error(outcome, truth**2) == pytest.approx(1 / 6, abs=0.02)
    # an always-0.5 forecast: one bin, ECE = |prevalence - 0.5|
    outcome = np.array([1, 1, 1, 0])
    assert expected_calibration_error(outcome, np.full(4, 0.5)) == pytest.approx(0.25)
    assert brier_score(outcome, np.full(4, 0.5)) == pytest.approx(0.25)


def test_hand_computed_curve_and_ece():
    outcome = np.array([0, 0, 1, 1, 1])
    probability = np.array([0.05, 0.15, 0.15, 0.95, 1.0])
    curve = reliability_curve(outcome, probability)
    assert curve["bin"] == [0, 1, 9] and curve["count"] == [1, 2, 2]
    assert curve["mean_predicted"] == pytest.approx([0.05, 0.15, 0.975])
    assert curve["observed_fraction"] == pytest.approx([0.0, 0.5, 1.0])
    assert expected_calibration_error(outcome, probability) == pytest.approx((0.05 + 2 * 0.35 + 2 * 0.025) / 5)
    summary = calibration_summary(outcome, probability)
    assert summary["n"] == 5 and summary["prevalence"] == pytest.approx(0.6)
    import json

    json.dumps(summary)  # JSON-ready


def test_bad_input_is_one_clear_error():
    with pytest.raises(KiMapError, match="one probability per"):
        brier_score([0, 1], [0.5])
    with pytest.raises(KiMapError, match="within"):
        brier_score([0, 1], [0.5, 1.5])
    with pytest.raises(KiMapError, match="0/1"):
        brier_score([0, 2], [0.5, 0.5])


def test_reliability_plot_is_written(tmp_path):
    from matplotlib.image import imread

    outcome, truth = simulated(2000)
    path = tmp_path / "calibration.png"
    plot_reliability(calibration_summary(outcome, truth), path, threshold=20)
    image = imread(path)
    assert image.shape[:2] == (720, 600)  # 5 x 6 inches at 120 dpi
    assert image[..., :3].std() > 0.05  # not blank
