"""ComBat across institutions: recovers known site shifts and scales, keeps covariate effects, treats a new site as
documented, and inside cross-validation is fitted on the training rows only."""

import numpy as np
import pytest

from KiMapLib.errors import KiMapError
from KiMapLib.model.harmonization import ComBat

SHIFT = {"A": 0.0, "B": 2.0, "C": -1.0}
SCALE = {"A": 1.0, "B": 2.0, "C": 0.5}


def sites_table(seed=0, rows_per_site=80, n_features=40, shift=SHIFT, scale=SCALE, age_slope=0.0):
    """[institution, features..., age] with feature = base + age_slope * age + shift + scale * noise."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 3, n_features)
    labels, values, ages = [], [], []
    for site in shift:
        age = rng.uniform(30, 80, rows_per_site)
        noise = rng.normal(0, 1, (rows_per_site, n_features))
        values.append(base + age_slope * age[:, None] + shift[site] + scale[site] * noise)
        labels += [site] * rows_per_site
        ages.append(age)
    table = np.column_stack([np.array(labels, dtype=object), np.vstack(values), np.concatenate(ages)])
    return table.astype(object), base


def test_recovers_known_site_shifts_and_scales():
    table, base = sites_table()
    combat = ComBat(batch_column=0, covariate_columns=[-1]).fit(table)
    assert list(combat.batches_) == ["A", "B", "C"]
    pooled_sd = np.sqrt(combat.pooled_var_)
    shift = combat.gamma_ * pooled_sd  # in feature units, relative to the (row-weighted) grand mean
    np.testing.assert_allclose(np.median(shift[1] - shift[0]), SHIFT["B"] - SHIFT["A"], atol=0.15)
    np.testing.assert_allclose(np.median(shift[2] - shift[0]), SHIFT["C"] - SHIFT["A"], atol=0.15)
    scale = np.sqrt(combat.delta_) * pooled_sd
    np.testing.assert_allclose(np.median(scale, axis=1), [1.0, 2.0, 0.5], rtol=0.08)
    harmonized = combat.transform(table)
    assert harmonized.shape == (240, 41)
    labels = table[:, 0]
    means = np.array([harmonized[labels == s, :40].mean(axis=0) for s in "ABC"])
    sds = np.array([harmonized[labels == s, :40].std(axis=0) for s in "ABC"])
    # one location and one scale for every site, up to the sampling noise of 80 rows (empirical-Bayes shrinkage
    # pulls each feature's shift towards the site's common shift, so no feature's site mean is exactly equal)
    raw = np.array([table[labels == s, 1:41].astype(float).mean(axis=0) for s in "ABC"])
    assert np.median(np.abs(raw - raw.mean(axis=0))) > 1.0
    assert np.median(np.abs(means - means.mean(axis=0))) < 0.06
    np.testing.assert_allclose(np.median(sds / sds.mean(axis=0), axis=1), 1.0, atol=0.03)
    assert np.median(means.mean(axis=0) - base) == pytest.approx(np.mean(list(SHIFT.values())), abs=0.1)
    np.testing.assert_array_equal(harmonized[:, 40], table[:, -1].astype(float))  # age passes through


def test_covariate_effect_is_kept():
    table, _ = sites_table(seed=1, age_slope=0.1)
    harmonized = ComBat(0, covariate_columns=[-1]).fit_transform(table)
    age, labels = harmonized[:, -1], table[:, 0]
    for site in "ABC":  # within each site the slope on age stays 0.1 (its scale is equalized around the age trend)
        slope = np.polyfit(age[labels == site], harmonized[labels == site, 0], 1)[0]
        assert slope == pytest.approx(0.1, abs=0.06)
    residual_means = [np.mean(harmonized[labels == s, :40] - 0.1 * age[labels == s, None]) for s in "ABC"]
    assert np.ptp(residual_means) < 0.05


def test_an_unseen_institution_is_unchanged_or_estimated_from_its_own_rows():
    table, _ = sites_table(seed=2)
    new, _ = sites_table(seed=2, shift={"D": 3.0}, scale={"D": 1.5}, rows_per_site=30)
    combat = ComBat(0, [-1]).fit(table)
    seen = combat.transform(table)
    np.testing.assert_array_equal(combat.transform(new)[:, :40], new[:, 1:41].astype(float))
    assert combat.unseen_institutions(new) == {"D": "unchanged"}
    estimating = ComBat(0, [-1], unseen_batch="estimate", min_unseen_rows=10).fit(table)
    harmonized = estimating.transform(new)
    assert estimating.unseen_institutions(new) == {"D": "estimated"}
    np.testing.assert_allclose(harmonized[:, :40].mean(axis=0), seen[:, :40].mean(axis=0), atol=0.35)
    assert np.median(harmonized[:, :40].std(axis=0) / seen[:, :40].std(axis=0)) == pytest.approx(1.0, abs=0.1)
    few = estimating.transform(new[:9])
    np.testing.assert_array_equal(few[:, :40], new[:9, 1:41].astype(float))
    assert estimating.unseen_institutions(new[:9]) == {"D": "unchanged"}
    assert estimating.unseen_institutions(table) == {}


def test_missing_values_stay_missing_and_do_not_spoil_the_rest():
    table, _ = sites_table(seed=3)
    holed = table.copy()
    holed[5, 3] = np.nan
    holed[100, 3] = np.nan
    full = ComBat(0, [-1]).fit_transform(table)
    harmonized = ComBat(0, [-1]).fit_transform(holed)
    assert np.isnan(harmonized[5, 2]) and np.isnan(harmonized[100, 2])
    assert np.isfinite(np.delete(harmonized, [5, 100], axis=0)).all()
    # other features move only through the priors pooled over features
    np.testing.assert_allclose(harmonized[:, 5:40], full[:, 5:40], atol=2e-3)
    np.testing.assert_allclose(np.delete(harmonized[:, 2], [5, 100]), np.delete(full[:, 2], [5, 100]), atol=0.05)


def test_fit_inside_leave_one_institution_out_never_sees_the_held_out_rows():
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import LeaveOneGroupOut, cross_validate
    from sklearn.pipeline import Pipeline

    table, _ = sites_table(seed=4, rows_per_site=30)
    labels = table[:, 0]
    target = table[:, 1:6].astype(float).sum(axis=1)
    pipeline = Pipeline([("combat", ComBat(0, [-1])), ("regress", Ridge())])
    folds = cross_validate(pipeline, table, target, groups=labels, cv=LeaveOneGroupOut(), return_estimator=True,
                           return_indices=True)
    for fitted, train, test in zip(folds["estimator"], folds["indices"]["train"], folds["indices"]["test"],
                                   strict=True):
        held_out = set(labels[test])
        assert held_out.isdisjoint(fitted["combat"].batches_)
        alone = ComBat(0, [-1]).fit(table[train])
        np.testing.assert_array_equal(fitted["combat"].pooled_var_, alone.pooled_var_)
        np.testing.assert_array_equal(fitted["combat"].gamma_, alone.gamma_)
        spoiled = table.copy()  # whatever the held-out rows hold, the fold's fit is the same
        spoiled[test, 1:41] = 1e6
        np.testing.assert_array_equal(ComBat(0, [-1]).fit(spoiled[train]).delta_, alone.delta_)


def test_bad_input_is_refused_with_one_clear_error():
    table, _ = sites_table(seed=5)
    with pytest.raises(KiMapError, match="only one institution"):
        ComBat(0).fit(table[table[:, 0] == "A"])
    with pytest.raises(KiMapError, match="institution C has a single row"):
        ComBat(0).fit(np.vstack([table[table[:, 0] != "C"], table[table[:, 0] == "C"][:1]]))
    missing = table.copy()
    missing[0, 0] = None
    with pytest.raises(KiMapError, match="1 rows have no institution"):
        ComBat(0).fit(missing)
    with pytest.raises(KiMapError, match="unknown unseen_batch"):
        ComBat(0, unseen_batch="guess").fit(table)
