"""Reading MRI sequences and checking that they can be used together (grid, overlap, finite values)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from KiMapLib.errors import GeometryError, KiMapError
from KiMapLib.inputs.geometry import check_orthonormal, grid_description, overlap_fraction, resample_onto, same_grid
from KiMapLib.limits import check_memory
from KiMapLib.settings import SEQUENCES

#: Below this fraction of the t1c grid covered by another sequence, the volumes are refused as not coregistered.
MIN_OVERLAP = 0.5


def read_volume(path: str | Path, name: str = "volume") -> sitk.Image:
    """Read one 3D volume from any file SimpleITK reads (NRRD, NIfTI, MHA) or a DICOM series folder."""
    path = Path(path)
    if not path.exists():
        raise KiMapError(f"file not found: {path}", input_name=name, hint="check the path")
    if path.is_dir():
        from KiMapLib.inputs import dicom as dicom_io  # optional: DICOM support lives in its own module

        return dicom_io.read_series(path, name=name)
    reader = _header(path, name)  # the header only: sizes are checked before any voxel is read
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise _unreadable(path, name, error) from None


#: Bytes per voxel a volume costs besides its own pixels: its float32 copy on the way to the t1c grid.
ALIGNED_BYTES_PER_VOXEL = 4


def _unreadable(path: Path, name: str, error: RuntimeError) -> KiMapError:
    first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
    return KiMapError(f"cannot read {path.name} ({first_line})", input_name=name,
                      hint="give a NRRD, NIfTI or MHA volume")


def _header(path: Path, name: str) -> sitk.ImageFileReader:
    """A reader holding the file's header, refused from it alone: not a 3D scalar volume, or more voxels than the
    memory budget holds."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise _unreadable(path, name, error) from None
    if reader.GetNumberOfComponents() != 1:
        raise KiMapError("expected a scalar volume, got a multi-component image", input_name=name)
    if reader.GetDimension() != 3:
        raise KiMapError(f"expected a 3D volume, got {reader.GetDimension()}D", input_name=name)
    size = reader.GetSize()
    voxels = float(np.prod([float(s) for s in size]))
    component_bytes = sitk.Image([1, 1, 1], reader.GetPixelID()).GetSizeOfPixelComponent()
    check_memory(voxels * (component_bytes + ALIGNED_BYTES_PER_VOXEL),
                 f"{path.name} ({'x'.join(str(s) for s in size)} voxels)", name,
                 hint="check the file: its header declares this size")
    return reader


def inspect_volume(path: str | Path, name: str = "volume") -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(size, spacing) of a volume file or DICOM series folder from its headers, with the checks
    :func:`read_volume` makes before reading voxels (so a cohort can be checked before any work starts)."""
    path = Path(path)
    if not path.exists():
        raise KiMapError(f"file not found: {path}", input_name=name, hint="check the path")
    if path.is_dir():
        from KiMapLib.inputs import dicom as dicom_io

        _, _, geometry = dicom_io.series_datasets(path, name)
        return tuple(int(v) for v in geometry["size"]), tuple(float(v) for v in geometry["spacing"])
    reader = _header(path, name)
    return tuple(reader.GetSize()), tuple(reader.GetSpacing())


def parse_volume_args(items: list[str]) -> dict[str, Path]:
    """Parse CLI ``--volume NAME=PATH`` items into a mapping, checking the sequence names."""
    volumes: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name = name.strip().lower()
        if not sep or not path:
            raise KiMapError(f"'{item}' is not NAME=PATH", input_name="--volume", hint="e.g. --volume t1c=t1c.nrrd")
        if name not in SEQUENCES:
            raise KiMapError(f"unknown sequence '{name}'", input_name="--volume",
                             hint=f"use one of {', '.join(SEQUENCES)}")
        if name in volumes:
            raise KiMapError(f"sequence '{name}' given twice", input_name="--volume")
        volumes[name] = Path(path)
    return volumes


def read_volumes(paths: dict[str, str | Path]) -> dict[str, sitk.Image]:
    """Read every named sequence."""
    return {name: read_volume(path, name) for name, path in paths.items()}


def field_of_view_on(image: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """[k, j, i] mask of the ``reference`` voxels inside ``image``'s field of view, where resampling ``image`` onto
    ``reference`` (:func:`~KiMapLib.inputs.geometry.resample_onto`) finds data instead of padding with 0.

    It is the same resampling applied to an image of ones, so it uses ITK's own inside-the-buffer test.
    """
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    inside = sitk.Resample(ones, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayViewFromImage(inside).astype(bool)


def align_to_t1c(volumes: dict[str, sitk.Image]) -> tuple[dict[str, sitk.Image], list[str], dict[str, np.ndarray]]:
    """Check all sequences against the t1c grid; resample those on another (overlapping) grid onto it.

    Returns the aligned float32 images, notes saying what was resampled, and the field of view of each resampled
    sequence that does not cover the whole t1c grid (:func:`field_of_view_on`; a sequence absent there covers it
    all): outside it the resampled values are padding, never features. Refuses volumes that do not overlap the t1c
    physically, are not 3D, have sheared grids, or contain NaN/Inf inside the image.
    """
    if "t1c" not in volumes:
        raise KiMapError("no t1c volume given", input_name="t1c", hint="every model and map is defined on the t1c grid")
    reference = volumes["t1c"]
    aligned: dict[str, sitk.Image] = {}
    notes: list[str] = []
    coverage: dict[str, np.ndarray] = {}
    for name, image in volumes.items():
        check_orthonormal(image, name)
        image = sitk.Cast(image, sitk.sitkFloat32)
        values = sitk.GetArrayViewFromImage(image)
        bad = ~np.isfinite(values)
        if bad.any():
            raise KiMapError(f"{int(bad.sum())} voxels are NaN or Inf", input_name=name,
                             hint="fix or mask the volume before running KiMap")
        if name != "t1c" and not same_grid(image, reference):
            fraction = overlap_fraction(reference, image)
            if fraction < MIN_OVERLAP:
                raise GeometryError(
                    f"does not overlap the t1c physically ({fraction:.0%} of the t1c field of view covered)",
                    input_name=name, hint="give coregistered volumes (same patient space as t1c)",
                )
            notes.append(f"{name}: resampled ({grid_description(image)}) onto the t1c grid "
                         f"({grid_description(reference)}) with linear interpolation")
            image = resample_onto(image, reference)
            inside = field_of_view_on(volumes[name], reference)
            if not inside.all():
                coverage[name] = inside
                notes.append(f"{name}: covers {inside.mean():.0%} of the t1c grid; points and map voxels whose ball "
                             f"leaves it get no {name} features")
        aligned[name] = image
    return aligned, notes, coverage


def label_on_grid(region: sitk.Image, reference: sitk.Image, name: str = "region") -> sitk.Image:
    """A label volume on the t1c grid, its values kept (nearest-neighbour resampling when it lies on another grid)."""
    check_orthonormal(region, name)
    if not same_grid(region, reference):
        if overlap_fraction(reference, region) == 0.0:
            raise GeometryError("does not overlap the t1c volume", input_name=name,
                                hint="give a label volume in the t1c's physical space")
        region = resample_onto(region, reference, interpolator=sitk.sitkNearestNeighbor)
    return region
