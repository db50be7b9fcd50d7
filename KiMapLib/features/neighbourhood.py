"""The biopsy neighbourhood: a ball of radius r mm around a voxel, intersected with the foreground."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from KiMapLib.inputs.geometry import ball_reach, check_ball_size

#: The fewest voxels a kernel (the ball intersected with the foreground) may hold, whatever ``min_ball_fraction``
#: allows: the centre and its six face neighbours, the smallest set with a neighbour pair along every axis. With fewer,
#: the texture matrices (GLCM, GLRLM, GLSZM, NGTDM, GLDM count neighbour pairs along the axes) are empty along some
#: axis and first-order statistics rest on a handful of values. Every grid :func:`KiMapLib.inputs.geometry.
#: check_ball_grid` accepts (spacing <= radius along every axis) gives a full ball of at least this many voxels.
MIN_KERNEL_VOXELS = 7


def ball_offsets(spacing: Sequence[float], radius_mm: float) -> np.ndarray:
    """Integer offsets (dk, dj, di) in numpy [k, j, i] order of voxels whose centre lies within the ball.

    With an orthonormal direction matrix the physical distance between voxel centres depends only on
    the index difference and the spacing, so the ball is the same set of offsets everywhere.
    """
    check_ball_size(spacing, radius_mm, "ball")  # refuses a ball too large to list before listing it
    spacing_kji = np.asarray(spacing, dtype=float)[::-1]
    reach = ball_reach(spacing, radius_mm)
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


def min_kernel_voxels(full_ball: int, min_ball_fraction: float) -> int:
    """Voxels a kernel needs: ``min_ball_fraction`` of the full ball, and never fewer than :data:`MIN_KERNEL_VOXELS`."""
    return max(math.ceil(min_ball_fraction * full_ball), MIN_KERNEL_VOXELS)


def voxels_outside_coverage(uncovered: np.ndarray, centres_kji: np.ndarray, offsets: np.ndarray,
                            chunk_voxels: int = 2**22) -> np.ndarray:
    """For each centre [k, j, i], how many voxels of its ball (``offsets``) are true in ``uncovered``.

    ``uncovered`` marks the foreground voxels outside one sequence's field of view; ball voxels outside the image
    never count (they are not foreground). Only centres within the ball's reach of an uncovered voxel are looked at.
    """
    centres_kji = np.asarray(centres_kji, dtype=np.int64).reshape(-1, 3)
    counts = np.zeros(len(centres_kji), dtype=np.int64)
    if len(centres_kji) == 0 or not uncovered.any():
        return counts
    reach = np.abs(offsets).max(axis=0)
    where = [np.flatnonzero(uncovered.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    lower = np.array([w[0] for w in where]) - reach
    upper = np.array([w[-1] for w in where]) + reach
    near = np.flatnonzero(np.all((centres_kji >= lower) & (centres_kji <= upper), axis=1))
    if near.size == 0:
        return counts
    padded = np.pad(uncovered, [(int(r), int(r)) for r in reach])
    strides = np.array([padded.shape[1] * padded.shape[2], padded.shape[2], 1], dtype=np.int64)
    flat = padded.ravel()
    flat_offsets = offsets.astype(np.int64) @ strides
    flat_centres = (centres_kji[near] + reach) @ strides
    step = max(1, chunk_voxels // max(len(offsets), 1))
    for start in range(0, len(near), step):
        block = flat_centres[start:start + step]
        counts[near[start:start + step]] = flat[block[:, None] + flat_offsets[None, :]].sum(axis=1)
    return counts
