"""Physical geometry in one place: RAS (Slicer) <-> LPS (ITK), IJK<->RAS matrices, grid checks, resampling.

SimpleITK images are LPS: ``physical = origin + direction @ (spacing * index)`` with index (i, j, k).
Slicer nodes are RAS: ``ras = IJKToRAS @ (i, j, k, 1)``. The two differ by ``diag(-1, -1, 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from KiMapLib.errors import GeometryError, KiMapError
from KiMapLib.limits import describe_bytes

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])

#: Grids closer than this (mm for origins/spacings, unitless for directions) count as identical.
GRID_TOLERANCE = 1e-4
#: The most voxels one ball may hold: about a 63-voxel radius (a 31 mm ball on 0.5 mm voxels, 63 mm on 1 mm), 2000
#: times the default 5 mm ball on 1 mm voxels (515); enumerating its offsets takes about 200 MiB. Every feature of
#: every point or map voxel is computed over the ball, so a larger one is a mistake (a radius or spacing off by a
#: factor of ten or more), not a neighbourhood.
MAX_BALL_VOXELS = 2**20
#: Bytes :func:`KiMapLib.features.neighbourhood.ball_offsets` uses per voxel of the ball's bounding box (88 measured).
BALL_BYTES_PER_BOX_VOXEL = 100


def ras_to_lps(points: np.ndarray | Sequence[float]) -> np.ndarray:
    """Flip the first two axes of one point (3,) or many (N, 3); the map is its own inverse."""
    return np.asarray(points, dtype=float) * np.array([-1.0, -1.0, 1.0])


lps_to_ras = ras_to_lps


def ijk_to_ras_matrix(image: sitk.Image) -> np.ndarray:
    """The 4x4 IJK->RAS matrix of a 3D SimpleITK image (what a Slicer volume node stores)."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_FROM_RAS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = ras_to_lps(image.GetOrigin())
    return matrix


def image_from_array(array_kji: np.ndarray, ijk_to_ras: np.ndarray) -> sitk.Image:
    """A SimpleITK image from a numpy array indexed [k, j, i] and a 4x4 IJK->RAS matrix."""
    ijk_to_ras = np.asarray(ijk_to_ras, dtype=float)
    axes = ijk_to_ras[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise GeometryError("IJK->RAS matrix has a zero-length axis", input_name="volume")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_kji))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((LPS_FROM_RAS @ (axes / spacing)).ravel().tolist())
    image.SetOrigin(ras_to_lps(ijk_to_ras[:3, 3]).tolist())
    return image


def copy_geometry(array_kji: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A SimpleITK image holding ``array_kji`` on exactly the reference image's grid."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_kji))
    image.CopyInformation(reference)
    return image


def ras_to_continuous_index(image: sitk.Image, ras: Sequence[float]) -> np.ndarray:
    """Continuous (i, j, k) index of a RAS point in the image's grid."""
    return np.array(image.TransformPhysicalPointToContinuousIndex(ras_to_lps(ras).tolist()))


def nearest_voxel(image: sitk.Image, ras: Sequence[float]) -> tuple[int, int, int] | None:
    """The (i, j, k) index of the voxel containing a RAS point, or None when it lies outside the image."""
    index = np.rint(ras_to_continuous_index(image, ras)).astype(int)
    size = np.array(image.GetSize())
    if np.any(index < 0) or np.any(index >= size):
        return None
    return tuple(int(v) for v in index)


def voxel_to_ras(image: sitk.Image, index: Sequence[int]) -> np.ndarray:
    """RAS coordinates of a voxel centre given its (i, j, k) index."""
    return lps_to_ras(image.TransformIndexToPhysicalPoint([int(v) for v in index]))


def same_grid(a: sitk.Image, b: sitk.Image, tolerance: float = GRID_TOLERANCE) -> bool:
    """True when both images have the same size, spacing, origin and direction (within tolerance)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
    )


def check_orthonormal(image: sitk.Image, name: str) -> None:
    """Refuse sheared or degenerate grids: balls in mm assume an orthonormal direction matrix."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    if image.GetDimension() != 3:
        raise GeometryError(f"expected a 3D volume, got {image.GetDimension()}D", input_name=name)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise GeometryError(
            "direction matrix is not orthonormal (sheared grid)", input_name=name,
            hint="resample the volume onto a regular grid first",
        )


def overlap_fraction(reference: sitk.Image, other: sitk.Image) -> float:
    """Fraction of ``reference``'s voxel centres (sampled on a coarse lattice) that fall inside ``other``."""
    size = np.array(reference.GetSize())
    axes = [np.linspace(0, s - 1, num=min(int(s), 12)) for s in size]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    points = np.array(reference.GetOrigin()) + (grid * np.array(reference.GetSpacing())) @ direction.T
    other_direction = np.array(other.GetDirection()).reshape(3, 3)
    index = ((points - np.array(other.GetOrigin())) @ other_direction) / np.array(other.GetSpacing())
    inside = np.all((index >= -0.5) & (index <= np.array(other.GetSize()) - 0.5), axis=1)
    return float(inside.mean())


def resample_onto(
    image: sitk.Image, reference: sitk.Image, *, interpolator: int = sitk.sitkLinear, default: float = 0.0
) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid (identity transform: both are in one physical space)."""
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, default, image.GetPixelID())


def grid_description(image: sitk.Image) -> str:
    """Short human-readable grid summary for messages."""
    size = "x".join(str(s) for s in image.GetSize())
    spacing = "x".join(f"{s:.3g}" for s in image.GetSpacing())
    return f"{size} voxels of {spacing} mm"


def ball_reach(spacing: Sequence[float], radius_mm: float) -> np.ndarray:
    """Half-width in voxels, [k, j, i] order, of the box around a ball of ``radius_mm`` on a grid of ``spacing``."""
    return np.floor(float(radius_mm) / np.asarray(spacing, dtype=float)[::-1] + 1e-9).astype(np.int64)


def check_ball_size(spacing: Sequence[float], radius_mm: float, name: str = "t1c") -> None:
    """Refuse a ball of more than :data:`MAX_BALL_VOXELS` voxels, estimated from its volume before listing any."""
    radius = float(radius_mm)
    if not (np.isfinite(radius) and radius > 0):
        raise KiMapError(f"ball radius {radius_mm} mm is not a positive number", input_name="ball radius",
                         hint="give a radius in millimetres, e.g. 5")
    spacing = np.asarray(spacing, dtype=float)
    if not np.all(np.isfinite(spacing) & (spacing > 0)):
        raise GeometryError(f"voxel spacing {_spacing_text(spacing)} mm is not positive", input_name=name)
    estimate = 4.0 / 3.0 * np.pi * radius**3 / float(np.prod(spacing))
    if estimate > MAX_BALL_VOXELS:
        box = float(np.prod(2.0 * ball_reach(spacing, radius).astype(float) + 1.0))
        raise GeometryError(
            f"a {radius:g} mm ball on voxels of {_spacing_text(spacing)} mm would hold about {estimate:.3g} voxels "
            f"(about {describe_bytes(box * BALL_BYTES_PER_BOX_VOXEL)} to list them), more than the limit of "
            f"{MAX_BALL_VOXELS} voxels", input_name=name,
            hint="check the volume's voxel spacing (mm) and the ball radius")


def check_ball_grid(spacing: Sequence[float], radius_mm: float, name: str = "t1c") -> None:
    """Refuse a grid (voxel ``spacing``, mm) on which a ball of ``radius_mm`` is not a 3D neighbourhood of usable size.

    A voxel spacing larger than the radius along any axis makes the ball flat (a single slice) or a single voxel
    (with 100 mm voxels every feature was 0); a very fine grid makes it too large (:func:`check_ball_size`).
    """
    spacing = np.asarray(spacing, dtype=float)
    check_ball_size(spacing, radius_mm, name)
    coarse = spacing > float(radius_mm) + 1e-9
    if coarse.any():
        axes = ", ".join(axis for axis, flag in zip("ijk", coarse, strict=True) if flag)
        raise GeometryError(
            f"voxel spacing {_spacing_text(spacing)} mm is coarser than the {float(radius_mm):g} mm ball radius "
            f"along {axes}: the ball would not reach a neighbouring voxel", input_name=name,
            hint=f"give a volume with voxels of at most {float(radius_mm):g} mm along every axis "
                 "(or a larger ball radius)")


def _spacing_text(spacing: Sequence[float]) -> str:
    return "x".join(f"{s:.3g}" for s in spacing)


#: Array-axis order, flipped axes and (x, y, z) spacing of an image brought into LPS order (see :func:`lps_axes`).
AxisOrder = tuple[tuple[int, int, int], tuple[int, ...], tuple[float, float, float]]


def lps_axes(image: sitk.Image, image_name: str = "t1c") -> AxisOrder:
    """Array-axis order and flips that bring a (z, y, x) array closest to LPS order, and the spacing (x, y, z) then.

    Index axis ``c`` of the image runs mostly along physical axis ``p`` (the largest direction cosine); array axis
    ``2 - c`` goes to ``2 - p``, flipped when it runs against LPS. Exact: only axes are permuted and flipped.
    """
    direction = np.array(image.GetDirection()).reshape(3, 3)
    physical = [int(np.argmax(np.abs(direction[:, c]))) for c in range(3)]
    if sorted(physical) != [0, 1, 2]:
        raise GeometryError("the grid is too oblique to tell its axes apart", input_name=image_name,
                            hint="resample it onto a grid within 45 degrees of the patient axes")
    order = [0, 0, 0]
    for c, p in enumerate(physical):
        order[2 - p] = 2 - c
    flips = tuple(2 - p for c, p in enumerate(physical) if direction[p, c] < 0)
    spacing = [0.0, 0.0, 0.0]
    for c, p in enumerate(physical):
        spacing[p] = image.GetSpacing()[c]
    return tuple(order), flips, tuple(spacing)


def to_lps(array: np.ndarray, order: tuple[int, int, int], flips: tuple[int, ...]) -> np.ndarray:
    return np.ascontiguousarray(np.flip(np.transpose(array, order), flips))


def from_lps(array: np.ndarray, order: tuple[int, int, int], flips: tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`to_lps`: an LPS-ordered array back on the image's own array axes."""
    return np.ascontiguousarray(np.transpose(np.flip(array, flips), np.argsort(order)))
