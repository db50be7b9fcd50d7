"""Whole-tumor maps: exact t1c geometry, the biopsy's own features at its voxel, safe writing."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_volume, synthetic_patient

from KiMapLib.errors import KiMapError
from KiMapLib.features.extraction import extract_biopsies
from KiMapLib.inputs.case import prepare_case
from KiMapLib.inputs.geometry import same_grid
from KiMapLib.maps.mapping import compute_map, region_features, write_map
from KiMapLib.model.bundle import load_model


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def patient():
    return synthetic_patient(11)


def _methods():
    try:
        import KiMapLib.features.featuremaps  # noqa: F401
    except ImportError:
        return ["reference"]
    return ["reference", "engine"]


@pytest.mark.parametrize("method", _methods())
def test_map_features_at_a_biopsy_voxel_equal_the_biopsy_features(patient, model, method):
    case = prepare_case(patient["volumes"], model.settings, required=model.required_sequences)
    rows, errors = extract_biopsies(case, patient["biopsies"][:2])
    assert not errors
    used = model.used_features
    region = sitk.GetArrayFromImage(patient["label"]).astype(bool) & case.foreground
    for row in rows:
        centre = np.array([[row["voxel_k"], row["voxel_j"], row["voxel_i"]]])
        small = np.zeros_like(region)
        small[tuple(centre.T)] = True  # a one-voxel region: the reference path computes it exactly
        samples, values, _, _ = region_features(case, centre, small if method == "reference" else region, used,
                                                method)
        assert list(samples) == [0]
        expected = [row[name] for name in used]
        np.testing.assert_allclose(values[0], expected, rtol=1e-9, atol=1e-12)


def test_map_is_on_the_exact_t1c_grid_with_nan_outside(patient, model):
    case = prepare_case(patient["volumes"], model.settings, required=model.required_sequences)
    result = compute_map(case, model, patient["label"], method="reference")
    for image in (result.ki67, result.probability, result.region, result.lower, result.upper, result.ood):
        assert same_grid(image, patient["volumes"]["t1c"], tolerance=0)
    ki67 = sitk.GetArrayFromImage(result.ki67)
    inside = sitk.GetArrayFromImage(result.region).astype(bool)
    assert np.isnan(ki67[~inside]).all()
    assert np.isfinite(ki67[inside]).mean() > 0.95
    assert np.nanmin(ki67) >= 0 and np.nanmax(ki67) <= 100
    probability = sitk.GetArrayFromImage(result.probability)
    mapped = np.isfinite(ki67)
    np.testing.assert_array_equal(np.isfinite(probability), mapped)
    assert np.all((probability[mapped] >= 0) & (probability[mapped] <= 1))
    lower, upper = (sitk.GetArrayFromImage(image)[mapped] for image in (result.lower, result.upper))
    assert np.all(lower <= ki67[mapped] + 1e-4) and np.all(ki67[mapped] <= upper + 1e-4)
    assert np.ptp(upper - lower) > 0  # locally adaptive: the width varies over the map
    assert np.isfinite(sitk.GetArrayFromImage(result.ood)[mapped]).all()
    assert result.summary["uncertainty"]["intervals"]["level"] == model.interval_level
    assert result.summary["region_voxels"] == int(inside.sum())


def test_region_errors_name_the_input(patient, model):
    case = prepare_case(patient["volumes"], model.settings, required=model.required_sequences)
    empty = sitk.Image(patient["label"])
    empty *= 0
    with pytest.raises(KiMapError, match="^region: the region is empty"):
        compute_map(case, model, empty)
    elsewhere = make_volume(np.ones((5, 5, 5)), origin=(900.0, 900.0, 900.0))
    with pytest.raises(KiMapError, match="^region: does not overlap the t1c"):
        compute_map(case, model, elsewhere)


def test_failed_write_keeps_the_earlier_output(tmp_path, patient, model, monkeypatch):
    case = prepare_case(patient["volumes"], model.settings, required=model.required_sequences)
    result = compute_map(case, model, patient["label"], method="reference")
    out = tmp_path / "map"
    write_map(result, out)
    before = (out / "summary.json").read_text()
    assert json.loads(before)["model_id"] == "test-tiny"
    assert {p.name for p in out.iterdir()} >= {"ki67_map.nrrd", "ki67_probability.nrrd", "overlay.png"}

    import KiMapLib.maps.pictures as plots

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots, "overlay", broken)
    with pytest.raises(RuntimeError):
        write_map(result, out)
    assert (out / "summary.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["map"]
