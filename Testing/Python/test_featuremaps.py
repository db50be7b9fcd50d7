"""Parity of the voxel-wise feature engine with pyradiomics (cube: voxel-based mode; ball: normal mode per ball)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from KiMapLib.errors import Cancelled, GeometryError, KiMapError
from KiMapLib.features.featuremaps import ALL_KEYS, feature_arrays, feature_maps

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
BRAIN = DATA / "pyradiomics-brain"
TCGA = DATA / "tcga-du-7294"
CLASSES = ["firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm"]

radiomics = pytest.importorskip("radiomics", reason="pyradiomics (extra 'radiomics') is needed for parity tests")
from radiomics import featureextractor  # noqa: E402

logging.getLogger("radiomics").setLevel(logging.CRITICAL)


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"test data not found: {path}")


def _extractor(settings: dict) -> featureextractor.RadiomicsFeatureExtractor:
    ext = featureextractor.RadiomicsFeatureExtractor(**{k: v for k, v in settings.items() if k != "ballRadius"})
    ext.disableAllFeatures()
    for name in CLASSES:
        ext.enableFeatureClassByName(name)
    return ext


def _image(array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    return image


def _crop(image: sitk.Image, label: sitk.Image, half: int, label_value: int = 1):
    """A small cube of the volume around the label's centre (image, label) for quick pyradiomics runs."""
    lab = sitk.GetArrayFromImage(label)
    centre = np.argwhere(lab == label_value).mean(0).astype(int)
    box = tuple(slice(max(c - half, 0), c + half) for c in centre)
    return (_image(sitk.GetArrayFromImage(image)[box], image.GetSpacing()),
            _image((lab[box] == label_value).astype(np.uint8), image.GetSpacing()))


@pytest.fixture(scope="module")
def brain_crop():
    _need(BRAIN)
    image = sitk.ReadImage(str(BRAIN / "brain1_image.nrrd"))
    label = sitk.ReadImage(str(BRAIN / "brain1_label.nrrd"))
    return _crop(image, label, 5)


@pytest.fixture(scope="module")
def tcga():
    _need(TCGA)
    from KiMapLib.inputs.normalization import foreground_mask, zscore

    t1c = sitk.ReadImage(str(TCGA / "t1c.nii.gz"))
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(TCGA / "tumor_seg_isen20.nii.gz"))) > 0
    foreground = foreground_mask(t1c)
    image = zscore(t1c, foreground, 100.0, "t1c")
    return image, seg & foreground, foreground


def _compare_voxel_based(image, mask, settings):
    """Engine (cube) against pyradiomics voxel-based on every mask voxel; returns features it could not check."""
    ref = _extractor(settings).execute(image, mask, voxelBased=True)
    arrays = feature_arrays(image, mask, settings, kernel="cube")
    k, j, i = arrays.index_kji.T
    skipped = []
    for f, key in enumerate(arrays.keys):
        ref_image = ref[key]
        offset = np.array(image.TransformPhysicalPointToIndex(ref_image.GetOrigin()))[::-1]
        expected = sitk.GetArrayFromImage(ref_image)[k - offset[0], j - offset[1], i - offset[2]]
        got = arrays.values[f]
        if key == "original_glcm_MCC" and np.all(expected == 0):
            skipped.append(key)  # pyradiomics failed (eigvals of a NaN matrix) and left initValue 0 everywhere
            continue
        if key == "original_glcm_JointAverage":
            keep = ~np.isnan(expected)  # pyradiomics: plain mean over angles, NaN if one angle of the kernel is empty
            expected, got = expected[keep], got[keep]
        same = np.isclose(got, expected, rtol=1e-6, atol=1e-9) | (np.isnan(got) & np.isnan(expected))
        assert same.all(), f"{key}: {int((~same).sum())} voxels differ, e.g. {got[~same][:3]} vs {expected[~same][:3]}"
    return skipped


@pytest.mark.parametrize(("radius", "bin_width", "masked"), [(1, 25, True), (2, 20, False)])
def test_cube_equals_pyradiomics_voxel_based_brain1(brain_crop, radius, bin_width, masked):
    image, mask = brain_crop
    settings = {"binWidth": bin_width, "kernelRadius": radius, "maskedKernel": masked}
    _compare_voxel_based(image, mask, settings)


@pytest.mark.parametrize(("radius", "bin_width", "masked"), [(1, 5, True), (3, 25, True), (2, 25, False)])
def test_cube_equals_pyradiomics_voxel_based_tcga(tcga, radius, bin_width, masked):
    image, region, _ = tcga
    crop_image, crop_mask = _crop(image, _image(region.astype(np.uint8)), 4)
    settings = {"binWidth": bin_width, "kernelRadius": radius, "maskedKernel": masked}
    _compare_voxel_based(crop_image, crop_mask, settings)


def test_cube_other_settings(brain_crop):
    """distances, asymmetric GLCM, weighting, gldm_a, voxelArrayShift, binCount and normalize follow pyradiomics."""
    image, mask = brain_crop
    settings = {"binCount": 16, "kernelRadius": 1, "distances": [1, 2], "symmetricalGLCM": False,
                "weightingNorm": "manhattan", "gldm_a": 1, "voxelArrayShift": 300, "normalize": True,
                "normalizeScale": 100}
    _compare_voxel_based(image, mask, settings)


@pytest.mark.parametrize("bin_width", [25.0, 5.0])
def test_ball_equals_pyradiomics_normal_mode_per_ball(tcga, bin_width):
    """The ball kernel is KiMap's per-biopsy extraction: pyradiomics on ball ∩ foreground, binned per ball."""
    from KiMapLib.features.neighbourhood import ball_mask
    from KiMapLib.settings import ExtractionSettings

    image, region, foreground = tcga
    rng = np.random.default_rng(7)
    points = np.argwhere(region)[rng.choice(int(region.sum()), 6, replace=False)]
    centres = np.zeros(region.shape, np.uint8)
    centres[tuple(points.T)] = 1
    mask = sitk.GetImageFromArray(centres)
    mask.CopyInformation(image)
    kernel_mask = sitk.GetImageFromArray(foreground.astype(np.uint8))
    kernel_mask.CopyInformation(image)
    settings = ExtractionSettings(bin_width=bin_width).pyradiomics_settings() | {"ballRadius": 5.0}
    arrays = feature_arrays(image, mask, settings, kernel="ball", kernel_mask=kernel_mask)
    assert len(arrays.keys) == len(ALL_KEYS) == 93
    ext = _extractor(settings)
    for c, kji in enumerate(arrays.index_kji):
        ref = ext.execute(image, ball_mask(image, kji[::-1].tolist(), 5.0, foreground))
        for f, key in enumerate(arrays.keys):
            assert np.isclose(arrays.values[f, c], float(ref[key]), rtol=1e-6, atol=1e-9), (key, kji)


def test_maps_full_geometry_nan_outside_and_subset(brain_crop):
    image, mask = brain_crop
    image.SetOrigin((10.0, -5.0, 3.0))
    mask.CopyInformation(image)
    keys = ["original_glcm_Contrast", "original_firstorder_Mean"]
    maps = feature_maps(image, mask, {"binWidth": 25, "ballRadius": 2.0}, features=keys, kernel="ball",
                        geometry="image")
    assert sorted(maps) == sorted(keys)
    for result in maps.values():
        assert result.GetSize() == image.GetSize() and result.GetOrigin() == image.GetOrigin()
        values = sitk.GetArrayFromImage(result)
        inside = sitk.GetArrayFromImage(mask) == 1
        assert np.isnan(values[~inside]).all() and np.isfinite(values[inside]).all()


def test_maps_bounding_box_by_default():
    """Default maps cover the mask's bounding box (origin of its first voxel, image spacing and direction), hold the
    feature_arrays values at the mask voxels and NaN elsewhere, and equal the full-geometry maps cropped."""
    rng = np.random.default_rng(3)
    image = _image(rng.normal(0, 100, (12, 14, 16)), spacing=(0.8, 1.1, 2.0))
    image.SetOrigin((10.0, -5.0, 3.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    mask_array = np.zeros((12, 14, 16), np.uint8)
    mask_array[3:7, 5:9, 4:11] = 1
    mask_array[3, 5, 4] = 0  # the box corner itself is not a mask voxel
    mask_array[8, 10, 12] = 1
    mask = _image(mask_array)
    mask.CopyInformation(image)
    settings = {"binWidth": 25, "kernelRadius": 1}
    keys = ["original_glcm_Contrast", "original_firstorder_Mean"]
    boxed = feature_maps(image, mask, settings, features=keys, kernel="cube")
    full = feature_maps(image, mask, settings, features=keys, kernel="cube", geometry="image")
    arrays = feature_arrays(image, mask, settings, features=keys, kernel="cube")
    for name in keys:
        f = arrays.keys.index(name)
        result = boxed[name]
        assert result.GetSize() == (9, 6, 6)  # i 4..12, j 5..10, k 3..8
        assert np.allclose(result.GetOrigin(), image.TransformIndexToPhysicalPoint((4, 5, 3)))
        assert result.GetSpacing() == image.GetSpacing() and result.GetDirection() == image.GetDirection()
        values = sitk.GetArrayFromImage(result)
        k, j, i = (arrays.index_kji - [3, 5, 4]).T
        np.testing.assert_array_equal(values[k, j, i], arrays.values[f].astype(np.float32))
        outside = np.ones(values.shape, bool)
        outside[k, j, i] = False
        assert np.isnan(values[outside]).all() and outside.sum() == values.size - len(arrays.index_kji)
        np.testing.assert_array_equal(values, sitk.GetArrayFromImage(full[name])[3:9, 5:11, 4:13])
    with pytest.raises(KiMapError, match="geometry"):
        feature_maps(image, mask, settings, features=keys, kernel="cube", geometry="full")


@pytest.mark.parametrize("symmetric", [True, False])
def test_feature_alone_equals_full_request(brain_crop, symmetric):
    """Requesting one GLCM or GLRLM feature computes only its groups (glcm.needs, glrlm.needs_entries): values
    are unchanged."""
    image, mask = brain_crop
    settings = {"binWidth": 25, "ballRadius": 2.0, "symmetricalGLCM": symmetric}
    full = feature_arrays(image, mask, settings, features=None, kernel="ball")
    for name in [k for k in ALL_KEYS if "_glcm_" in k or "_glrlm_" in k]:
        alone = feature_arrays(image, mask, settings, features=[name], kernel="ball")
        np.testing.assert_array_equal(alone.values[0], full.values[full.keys.index(name)], err_msg=name)


def _tiny():
    rng = np.random.default_rng(0)
    image = _image(rng.normal(0, 100, (9, 9, 9)).astype(np.float32))
    mask_array = np.zeros((9, 9, 9), np.uint8)
    mask_array[3:6, 3:6, 3:6] = 1
    mask = _image(mask_array)
    return image, mask


def test_bad_input_raises_clear_errors():
    image, mask = _tiny()
    with pytest.raises(KiMapError, match="no voxel with label"):
        feature_arrays(image, _image(np.zeros((9, 9, 9), np.uint8)), {}, kernel="cube")
    other = _image(sitk.GetArrayFromImage(mask), spacing=(2.0, 1.0, 1.0))
    with pytest.raises(GeometryError, match="mask"):
        feature_arrays(image, other, {}, kernel="cube")
    bad = sitk.GetArrayFromImage(image)
    bad[4, 4, 4] = np.nan
    with pytest.raises(KiMapError, match="NaN or Inf"):
        feature_arrays(_image(bad), mask, {}, kernel="cube")
    with pytest.raises(KiMapError, match="larger than the image"):
        feature_arrays(image, mask, {"kernelRadius": 5}, kernel="cube")
    with pytest.raises(KiMapError, match="larger than the image"):
        feature_arrays(image, mask, {"ballRadius": 6.0}, kernel="ball")
    with pytest.raises(KiMapError, match="unsupported setting"):
        feature_arrays(image, mask, {"binwidth": 25}, kernel="cube")
    with pytest.raises(KiMapError, match="resampl"):
        feature_arrays(image, mask, {"resampledPixelSpacing": [1, 1, 1]}, kernel="cube")
    with pytest.raises(KiMapError, match="binWidth"):
        feature_arrays(image, mask, {"binWidth": 0}, kernel="cube")
    with pytest.raises(KiMapError, match="unknown feature"):
        feature_arrays(image, mask, {}, features=["original_shape_Sphericity"], kernel="cube")
    with pytest.raises(KiMapError, match="kernel"):
        feature_arrays(image, mask, {}, kernel="sphere")


def test_progress_and_cancel():
    image, mask = _tiny()
    seen = []
    feature_arrays(image, mask, {}, features=["original_ngtdm_Contrast"], kernel="cube",
                   progress=lambda f, m: seen.append(f))
    assert seen[-1] == 1.0
    with pytest.raises(Cancelled):
        feature_arrays(image, mask, {}, kernel="cube", progress=lambda f, m: False)


def test_min_kernel_voxels():
    image, mask = _tiny()
    arrays = feature_arrays(image, mask, {}, features=["original_firstorder_Mean"], kernel="cube",
                            min_kernel_voxels=27)
    corner_like = np.isnan(arrays.values[0])
    assert corner_like.sum() == 26  # only the centre of the 3x3x3 mask has a full 27-voxel kernel


def test_bench_maps_cli_both_kernels_agree(tmp_path):
    """bench-maps times feature_maps against pyradiomics (voxel-based for cube, normal mode per ball) and checks
    every feature on the sampled voxels."""
    from KiMapLib.app import bench_maps

    rng = np.random.default_rng(3)
    image = _image(rng.normal(0, 100, (12, 12, 12)).astype(np.float32))
    mask_array = np.zeros((12, 12, 12), np.uint8)
    mask_array[3:9, 3:9, 3:9] = 1
    mask_array[4:6, 4:6, 4:6] = 2
    sitk.WriteImage(image, str(tmp_path / "image.nrrd"))
    sitk.WriteImage(_image(mask_array), str(tmp_path / "mask.nrrd"))
    out = tmp_path / "bench.json"
    code = bench_maps.main(["--image", str(tmp_path / "image.nrrd"), "--mask", str(tmp_path / "mask.nrrd"),
                            "--kernel", "cube", "ball", "--kernel-radius", "1", "--reference-voxels", "40",
                            "--ball-reference-voxels", "3", "--repeats", "1", "--pyradiomics-repeats", "2",
                            "--json", str(out)])
    import json

    result = json.loads(out.read_text())
    assert code == 0 and result["agree"]
    assert [(r["kernel"], r["kernel_radius"], r["mask_voxels"]) for r in result["runs"]] == [("cube", 1, 216),
                                                                                            ("ball", 1, 216)]
    assert result["runs"][0]["reference_voxels"] == 40 and result["runs"][1]["reference_voxels"] == 3
    assert all(r["engine_voxels_per_s"] > 0 and r["pyradiomics_voxels_per_s"] > 0 for r in result["runs"])
    assert all(r["max_relative_difference"] < 1e-6 for r in result["runs"])
    code = bench_maps.main(["--image", str(tmp_path / "image.nrrd"), "--mask", str(tmp_path / "mask.nrrd"),
                            "--label", "2", "--reference-voxels", "3", "--repeats", "1"])
    assert code == 0


def test_brightest_region_is_connected_and_sized():
    from scipy import ndimage

    from KiMapLib.app.bench_maps import brightest_region

    rng = np.random.default_rng(5)
    values = rng.normal(100, 5, (30, 30, 30))
    values[10:16, 10:18, 12:20] += 200  # a bright blob of 384 voxels
    values[25, 25, 25] = 400  # a lone bright voxel elsewhere
    region = brightest_region(_image(values), np.ones(values.shape, bool), 200)
    assert 180 <= region.sum() <= 220
    assert ndimage.label(region)[1] == 1
    assert region[10:16, 10:18, 12:20].sum() == region.sum()


@pytest.mark.parametrize("levels", [5, 30])
def test_neighbour_sums_equal_brute_force(levels):
    """Separable 3x3x3 sums (one and three rounds of packed level counts) equal the 26-neighbour loop."""
    from KiMapLib.features.featuremaps.kernels import make_box
    from KiMapLib.features.featuremaps.neighbour_sums import neighbour_sums
    from KiMapLib.features.neighbourhood import ball_offsets

    rng = np.random.default_rng(levels)
    box = make_box(np.asarray(ball_offsets((1.0, 1.0, 1.0), 3.0), np.int64), 1)
    cells = np.sort(box.flat[rng.random(len(box.flat)) < 0.8])
    compact = np.zeros(box.size, np.int32)
    compact[cells] = rng.integers(1, levels + 1, len(cells))
    grey = np.where(compact > 0, 3 * compact + 7, 0).astype(np.int32)
    n = len(cells)
    count, total, equal = (np.zeros(n, np.int64) for _ in range(3))
    shape = box.shape
    neighbour_sums(grey, compact, cells, n, shape, levels, True, True, np.zeros(box.size, np.int64),
                   np.zeros(shape[1] * shape[2], np.int64), np.zeros(box.size, np.int64), count, total, equal)
    g = grey.reshape(shape)
    for t, c in enumerate(cells):
        k, j, i = np.unravel_index(c, shape)
        hood = g[k - 1:k + 2, j - 1:j + 2, i - 1:i + 2].ravel()
        hood = np.delete(hood, 13)
        assert count[t] == (hood > 0).sum()
        assert total[t] == hood.sum()
        assert equal[t] == (hood == g[k, j, i]).sum()



def test_cache_guard_drops_numba_cache_when_any_source_changes(tmp_path):
    """A cached kernel holds its callees' code from other files: any engine source change drops the whole cache."""
    from KiMapLib.features.featuremaps.cache_guard import STAMP, ensure_fresh

    (tmp_path / "a.py").write_text("x = 1\n")
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    (cache / "a.run-1.py311.nbi").write_bytes(b"index")
    (cache / "a.run-1.py311.1.nbc").write_bytes(b"code")
    (cache / "a.cpython-311.pyc").write_bytes(b"pyc")
    assert ensure_fresh(tmp_path)  # no stamp yet: dropped
    assert sorted(p.name for p in cache.iterdir()) == sorted([STAMP, "a.cpython-311.pyc"])
    (cache / "a.run-1.py311.nbi").write_bytes(b"index")
    assert not ensure_fresh(tmp_path)  # unchanged sources: kept
    assert (cache / "a.run-1.py311.nbi").exists()
    (tmp_path / "b.py").write_text("y = 2\n")  # another file of the package changed
    assert ensure_fresh(tmp_path)
    assert not (cache / "a.run-1.py311.nbi").exists()


@pytest.mark.parametrize("seed", range(4))
def test_rank_sort_places_every_order_statistic(seed):
    """firstorder's selection (counting sort by level, then quickselect per needed rank) puts at each rank the
    percentiles, median, min and max read the value np.sort puts there, with ties and uneven levels."""
    from KiMapLib.features.featuremaps.firstorder import _rank_sort

    rng = np.random.default_rng(seed)
    for n in [1, 2, 3, 7, 40, 333, 515]:
        values = np.round(rng.normal(0, 60, n)) if seed % 2 else rng.normal(0, 60, n) ** 3 / 1e4
        levels = np.floor((values - values.min()) / 25.0).astype(np.int32) + 1
        box = np.zeros(n, np.int32)
        box[:] = levels
        cells = np.arange(n, dtype=np.int64)
        counts = np.bincount(levels, minlength=levels.max() + 2).astype(np.float64)
        size = len(counts)
        srt = np.zeros(n)
        _rank_sort(values.astype(np.float64), box, cells, n, int(levels.min()), int(levels.max()), counts,
                   np.zeros(size, np.int64), np.zeros(size, np.int64), srt)
        ranks = {0, n - 1, n // 2, max(n // 2 - 1, 0)}
        for q in (10, 25, 75, 90):
            i0 = int(np.floor((n - 1) * q / 100))
            ranks |= {min(i0, n - 1), min(i0 + 1, n - 1)}
        expected = np.sort(values)
        for k in sorted(ranks):
            assert srt[k] == expected[k], (n, k)
        assert sorted(srt) == sorted(values)
