"""The biopsy neighbourhood: a ball of radius r mm around a voxel, intersected with the foreground."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk


def ball_offsets(spacing: Sequence[float], radius_mm: float) -> np.ndarray:
    """Integer offsets (dk, dj, di) in numpy [k, j, i] order of voxels whose centre lies within the ball.

    With an orthonormal direction matrix the physical distance between voxel centres depends only on
    the index difference and the spacing, so the ball is the same set of offsets everywhere.
    """
    spacing_kji = np.asarray(spacing, dtype=float)[::-1]
    reach = np.floor(radius_mm / spacing_kji + 1e-9).astype(int)
    axes = [np.arange(-r, r + 1) for r in reach]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    distance = np.linalg.norm(grid * spacing_kji, axis=1)
    return grid[distance <= radius_mm + 1e-9]


def ball_mask_array(shape_kji: Sequence[int], center_ijk: Sequence[int], spacing: Sequence[float],
                    radius_mm: float) -> np.ndarray:
    """Boolean array of the given [k, j, i] shape, true on the ball around ``center_ijk`` (clipped)."""
    mask = np.zeros(tuple(shape_kji), dtype=bool)
    points = ball_offsets(spacing, radius_mm) + np.asarray(center_ijk)[::-1]
    inside = np.all((points >= 0) & (points < np.asarray(shape_kji)), axis=1)
    points = points[inside]
    mask[points[:, 0], points[:, 1], points[:, 2]] = True
    return mask


def ball_mask(reference: sitk.Image, center_ijk: Sequence[int], radius_mm: float,
              foreground: np.ndarray | None = None) -> sitk.Image:
    """The ball (intersected with ``foreground`` [k, j, i] when given) as a uint8 image on the reference grid."""
    shape = reference.GetSize()[::-1]
    mask = ball_mask_array(shape, center_ijk, reference.GetSpacing(), radius_mm)
    if foreground is not None:
        mask &= foreground
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(reference)
    return image
