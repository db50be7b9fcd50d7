"""Out-of-domain distance: flags shifted inputs, flags ~1 % of new in-distribution patients, JSON-ready, NaN-safe."""

import json

import numpy as np
import pytest

from KiMapLib.errors import KiMapError
from KiMapLib.model.domain import domain_score, fit_domain, out_of_domain


def patients_features(seed: int, patients: int, biopsies: int = 8, columns: int = 6):
    """Correlated features with a per-patient offset (between-patient sd 0.5, within 1)."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(0).normal(0, 0.5, (columns, columns)) + np.eye(columns)
    offsets = np.repeat(rng.normal(0, 0.5, (patients, columns)), biopsies, axis=0)
    z = (rng.normal(size=(patients * biopsies, columns)) + offsets) @ mixing
    return z, np.repeat(np.arange(patients), biopsies)


@pytest.fixture(scope="module")
def domain():
    z, groups = patients_features(seed=1, patients=60)
    return fit_domain(z, groups, quantile=0.99)


def test_new_in_distribution_patients_are_flagged_about_one_percent(domain):
    z_new, _ = patients_features(seed=2, patients=1000)
    rate = float(out_of_domain(domain, z_new).mean())
    assert 0.004 <= rate <= 0.025, rate


def test_shifted_inputs_are_flagged(domain):
    z_new, _ = patients_features(seed=3, patients=50)
    shifted = z_new.copy()
    shifted[:, 2] += 8.0  # a scanner or protocol far from training on one feature
    assert out_of_domain(domain, shifted).mean() > 0.95
    assert np.median(domain_score(domain, shifted)) > 2 * domain["threshold"]
    assert out_of_domain(domain, z_new).mean() < 0.03


def test_threshold_is_leave_one_patient_out_and_the_distance_is_mahalanobis(domain):
    from sklearn.covariance import LedoitWolf

    z, groups = patients_features(seed=1, patients=60)
    in_sample = np.quantile(domain_score(domain, z), 0.99)
    assert domain["threshold"] > in_sample  # held-out patients lie further than the training biopsies themselves
    lw = LedoitWolf().fit(z)
    assert np.allclose(domain_score(domain, z[:5]), np.sqrt(lw.mahalanobis(z[:5])), rtol=1e-10)
    # the threshold: order statistic ceil(481 * 0.99) = 477 of the 480 LOPO distances
    lopo = np.concatenate([np.sqrt(LedoitWolf().fit(z[groups != p]).mahalanobis(z[groups == p]))
                           for p in range(60)])
    assert domain["threshold"] == pytest.approx(np.sort(lopo)[476], rel=1e-12)
    assert domain["n_biopsies"] == 480 and domain["n_patients"] == 60 and domain["quantile"] == 0.99


def test_domain_is_json_ready_and_nan_rows_give_nan(domain):
    restored = json.loads(json.dumps(domain))
    z_new, _ = patients_features(seed=4, patients=3)
    z_new[1, 3] = np.nan
    scores = domain_score(restored, z_new)
    assert np.isnan(scores[1]) and np.isfinite(np.delete(scores, 1)).all()
    assert np.array_equal(np.delete(scores, 1), np.delete(domain_score(domain, z_new), 1))
    assert not out_of_domain(restored, z_new)[1]


def test_bad_input_is_one_clear_error(domain):
    z, groups = patients_features(seed=1, patients=3)
    with pytest.raises(KiMapError, match="6 columns but the model's domain has"):
        domain_score({"centre": [0.0] * 4, "precision": np.eye(4).tolist()}, z)
    with pytest.raises(KiMapError, match="two patients"):
        fit_domain(z, np.zeros(len(z)))
    with pytest.raises(KiMapError, match="NaN"):
        fit_domain(np.where(np.arange(z.size).reshape(z.shape) == 0, np.nan, z), groups)
    with pytest.raises(KiMapError, match="one patient id per biopsy"):
        fit_domain(z, groups[:-1])
