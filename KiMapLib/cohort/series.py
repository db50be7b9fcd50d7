"""What the store records of an image series: content sha256, grid geometry and DICOM source UIDs.

The sha256 of a file is of its bytes; of a DICOM series folder, of the sorted ``name sha256`` lines of its files.
Geometry is read from the header only (no voxel data) for files, and from the DICOM headers for a series folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import SimpleITK as sitk

from KiMapLib.errors import KiMapError
from KiMapLib.outputs import sha256_file

#: UIDs kept from a DICOM series (identity and provenance; no patient name or birth date in the store).
SOURCE_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


def content_sha256(path: str | Path) -> str:
    """sha256 of a volume file, or of a DICOM folder's (non-hidden) files by name."""
    path = Path(path)
    if path.is_dir():
        lines = [f"{p.name} {sha256_file(p)}\n" for p in sorted(path.iterdir())
                 if p.is_file() and not p.name.startswith(".")]
        return hashlib.sha256("".join(lines).encode()).hexdigest()
    return sha256_file(path)


def describe_series(path: str | Path, name: str) -> tuple[dict, dict | None]:
    """(geometry, source UIDs or None) of a volume file or DICOM series folder, from headers only."""
    path = Path(path)
    if not path.exists():
        raise KiMapError(f"file not found: {path}", input_name=name, hint="check the path")
    if path.is_dir():
        from KiMapLib.inputs.dicom import series_datasets

        _paths, datasets, geometry = series_datasets(path, name)
        uids = {k: str(datasets[0].get(k)) for k in SOURCE_UID_KEYWORDS if datasets[0].get(k) is not None}
        return {"size": [int(v) for v in geometry["size"]],
                "spacing": [float(v) for v in geometry["spacing"]],
                "origin": [float(v) for v in geometry["origin"]],
                "direction": [float(v) for v in geometry["direction"].ravel()],
                "pixel_type": "DICOM", "space": "LPS"}, uids
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        last = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
        raise KiMapError(f"cannot read the header of {path.name} ({last})", input_name=name,
                         hint="give a NRRD, NIfTI or MHA volume or a DICOM series folder") from None
    if reader.GetDimension() != 3:
        raise KiMapError(f"expected a 3D volume, got {reader.GetDimension()}D", input_name=name)
    return {"size": list(reader.GetSize()), "spacing": list(reader.GetSpacing()), "origin": list(reader.GetOrigin()),
            "direction": list(reader.GetDirection()),
            "pixel_type": sitk.GetPixelIDValueAsString(reader.GetPixelID()), "space": "LPS"}, None
