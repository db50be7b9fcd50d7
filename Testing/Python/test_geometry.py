"""RAS (Slicer) <-> LPS (ITK) geometry on oblique, anisotropic grids."""

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_volume, rotation

from KiMapLib.errors import GeometryError, KiMapError
from KiMapLib.features.neighbourhood import ball_offsets
from KiMapLib.inputs.geometry import (
    ijk_to_ras_matrix,
    image_from_array,
    nearest_voxel,
    overlap_fraction,
    ras_to_lps,
    resample_onto,
    same_grid,
    voxel_to_ras,
)
from KiMapLib.inputs.images import align_to_t1c


def test_ras_lps_round_trip_through_ijk_to_ras_matrix():
    image = make_volume(np.arange(5 * 6 * 7, dtype=float).reshape(5, 6, 7), spacing=(0.7, 1.3, 2.9),
                        direction=rotation(33, -17), origin=(4.5, -8.25, 13.0))
    matrix = ijk_to_ras_matrix(image)
    for ijk in [(0, 0, 0), (6, 5, 4), (3, 1, 2)]:
        ras_from_matrix = (matrix @ np.array([*ijk, 1.0]))[:3]
        lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(ras_from_matrix, lps * [-1, -1, 1], atol=1e-9)
        np.testing.assert_allclose(voxel_to_ras(image, ijk), ras_from_matrix, atol=1e-9)
        assert nearest_voxel(image, ras_from_matrix) == ijk
    rebuilt = image_from_array(sitk.GetArrayFromImage(image), matrix)
    assert same_grid(rebuilt, image, tolerance=1e-9)
    np.testing.assert_allclose(ijk_to_ras_matrix(rebuilt), matrix, atol=1e-12)
    # The matrix's columns are the physical axes: their norms are the anisotropic spacings.
    np.testing.assert_allclose(np.linalg.norm(matrix[:3, :3], axis=0), [0.7, 1.3, 2.9])
    np.testing.assert_allclose(ras_to_lps(ras_to_lps([1.0, 2.0, 3.0])), [1.0, 2.0, 3.0])


def test_point_outside_image_has_no_voxel():
    image = make_volume(np.zeros((4, 5, 6)))
    far = voxel_to_ras(image, (0, 0, 0)) + 500.0
    assert nearest_voxel(image, far) is None


def test_resampled_sequence_lands_on_t1c_grid_in_physical_space():
    t1c = make_volume(np.random.default_rng(0).normal(100, 10, (12, 16, 16)) + 1, spacing=(1.0, 1.0, 2.0))
    # A second sequence on another (isotropic, axis-aligned) grid covering the same physical space.
    coarse = sitk.Image([40, 40, 40], sitk.sitkFloat32)
    coarse.SetOrigin(np.array(t1c.GetOrigin()) - 15)
    coarse.SetSpacing((1.0, 1.0, 1.0))
    ramp = sitk.GetImageFromArray(np.fromfunction(lambda k, j, i: i + 2 * j + 3 * k, (40, 40, 40), dtype=float))
    ramp.CopyInformation(coarse)
    aligned, notes, coverage = align_to_t1c({"t1c": t1c, "t2": sitk.Cast(ramp, sitk.sitkFloat32)})
    assert coverage == {}  # the coarse t2 covers the whole t1c grid
    assert same_grid(aligned["t2"], t1c) and "t2: resampled" in notes[0]
    # The value at a t1c voxel centre equals the ramp evaluated at that physical point (linear = exact).
    point = np.array(t1c.TransformIndexToPhysicalPoint((5, 7, 3)))
    index = np.array(ramp.TransformPhysicalPointToContinuousIndex(point.tolist()))
    expected = index[0] + 2 * index[1] + 3 * index[2]
    assert aligned["t2"].GetPixel(5, 7, 3) == pytest.approx(expected, rel=1e-5)


def test_non_overlapping_sequence_is_refused_with_its_name():
    t1c = make_volume(np.ones((8, 8, 8)))
    far = make_volume(np.ones((8, 8, 8)), origin=(500.0, 500.0, 500.0))
    assert overlap_fraction(t1c, far) == 0.0
    with pytest.raises(GeometryError, match="^flair: does not overlap the t1c"):
        align_to_t1c({"t1c": t1c, "flair": far})


def test_nan_volume_is_refused_with_its_name():
    values = np.ones((8, 8, 8))
    values[2, 3, 4] = np.nan
    with pytest.raises(KiMapError, match="^adc: 1 voxels are NaN"):
        align_to_t1c({"t1c": make_volume(np.ones((8, 8, 8))), "adc": make_volume(values)})


def test_ball_uses_physical_millimetres_on_anisotropic_grids():
    offsets = ball_offsets((0.5, 1.0, 2.5), 2.5)  # spacing (i, j, k) -> offsets (dk, dj, di)
    assert offsets[:, 0].max() == 1 and offsets[:, 1].max() == 2 and offsets[:, 2].max() == 5
    distances = np.linalg.norm(offsets * [2.5, 1.0, 0.5], axis=1)
    assert distances.max() <= 2.5 + 1e-9
    assert len(ball_offsets((1, 1, 1), 5.0)) == 515  # the classic 5 mm ball at 1 mm


def test_resample_onto_keeps_reference_grid():
    t1c = make_volume(np.zeros((6, 7, 8)))
    other = make_volume(np.ones((6, 7, 8)), direction=np.eye(3))
    assert same_grid(resample_onto(other, t1c), t1c)
