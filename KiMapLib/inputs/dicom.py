"""DICOM MR series in and out: read one series folder into a SimpleITK image that remembers its source, write one.

Reading (:func:`read_series`) refuses anything that would give a wrong volume silently: a folder without DICOM
files, several series in one folder, a non-image series (RTSTRUCT, SEG, SR, multi-frame objects), missing slices
(irregular slice spacing), duplicated slice positions, varying orientation or slice size, a damaged file or one whose
pixel data is missing or shorter than its rows x columns (SimpleITK/GDCM would fill the rest with zeros), and a
series larger than the memory budget (:mod:`KiMapLib.limits`). The returned image keeps
the link to its source series as SimpleITK metadata (DICOM tags as ``gggg|eeee`` keys, see
:data:`REFERENCE_TAGS`); :func:`series_reference` turns it back into a dict.

Writing (:func:`write_mr_series`) produces a classic MR Image Storage series, one file per slice, that passes
``dciodvfy`` (dicom3tools) without errors. It is what ``kimap phantom --dicom`` uses for the synthetic case.

DICOM patient coordinates are LPS, like ITK's, so no axis flip happens here; slices are always ordered along
``row x column`` (the returned grid is right-handed).
"""

from __future__ import annotations

import datetime as _dt
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from KiMapLib.errors import KiMapError
from KiMapLib.limits import check_memory

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR: the one DICOM file without a series

#: SimpleITK metadata keys (DICOM tags) kept on a volume read from DICOM, and their DICOM keywords.
REFERENCE_TAGS = {
    "0020|000d": "StudyInstanceUID",
    "0020|000e": "SeriesInstanceUID",
    "0020|0052": "FrameOfReferenceUID",
    "0010|0020": "PatientID",
    "0010|0010": "PatientName",
    "0010|0030": "PatientBirthDate",
    "0010|0040": "PatientSex",
    "0008|0020": "StudyDate",
    "0008|0030": "StudyTime",
    "0008|0050": "AccessionNumber",
    "0020|0010": "StudyID",
    "0008|1030": "StudyDescription",
    "0008|103e": "SeriesDescription",
    "0020|0011": "SeriesNumber",
    "0008|0060": "Modality",
    "0008|0016": "SOPClassUID",
}

#: Relative tolerance on slice gaps (a gap that differs more than this from the median means missing slices).
SLICE_GAP_TOLERANCE = 0.01
#: Slices closer than this (mm) count as the same position.
DUPLICATE_TOLERANCE_MM = 1e-3


def _dicom_files(folder: Path, name: str = "volume") -> list[tuple[Path, pydicom.Dataset]]:
    """Headers of every DICOM file directly inside ``folder`` (non-DICOM and hidden files are skipped)."""
    found = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError) as error:
            if _has_dicom_preamble(path):  # a DICOM file that cannot be read: never skip a slice silently
                raise KiMapError(f"{path.name} is a damaged DICOM file ({_first_line(error)})",
                                 input_name=name, hint="export the series again") from None
            continue
        found.append((path, dataset))
    return found


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def pixel_data_problem(path: Path) -> str | None:
    """Why one single-frame file's pixel data cannot give its slice (absent, shorter than rows x columns, cut off
    before its end), or None. Compressed (encapsulated) pixel data is left to the decoder."""
    try:
        dataset = pydicom.dcmread(path, defer_size=1024)  # parses the pixel data element, reads no large value
        element = dataset.get_item("PixelData", keep_deferred=True)
    except Exception as error:  # any parse failure of a damaged file is reported, naming it
        return f"cannot be read ({_first_line(error)})"
    if element is None:
        return "has no pixel data"
    transfer = pydicom.uid.UID(str(dataset.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian)))
    if transfer.is_encapsulated or transfer.is_deflated:
        return None
    bits = int(dataset.get("BitsAllocated", 16) or 16)
    pixels = int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel", 1) or 1)
    expected = (pixels * bits + 7) // 8
    length = int(element.length)
    if length == 0xFFFFFFFF:
        return "has encapsulated pixel data under an uncompressed transfer syntax"
    if length < expected:
        return f"holds {length} bytes of pixel data where its {dataset.Rows} x {dataset.Columns} pixels need {expected}"
    end = int(element.value_tell) + expected
    size = path.stat().st_size
    if end > size:
        return f"is cut off: its pixel data needs {end} bytes but the file has {size}"
    return None


def _describe_series(datasets: list[pydicom.Dataset]) -> str:
    first = datasets[0]
    description = str(first.get("SeriesDescription", "") or "").strip() or "no description"
    return f"#{first.get('SeriesNumber', '?')} '{description}' ({first.get('Modality', '?')}, {len(datasets)} files)"


def series_datasets(folder: str | Path, name: str = "volume") -> tuple[list[Path], list[pydicom.Dataset], dict]:
    """The headers of one DICOM image series in ``folder``, sorted along the slice normal, with its geometry.

    Returns ``(paths, datasets, geometry)`` where geometry has ``origin``, ``direction`` (3x3, columns are the
    row, column and slice axes in LPS), ``spacing`` (column spacing, row spacing, slice gap) and ``size``.
    Raises :class:`KiMapError` naming the problem for every case listed in the module docstring.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise KiMapError(f"not a folder: {folder}", input_name=name, hint="give the folder of one DICOM series")
    files = _dicom_files(folder, name)
    for path, dataset in files:  # every composite object has a series; a file without one was cut off
        sop_class = str(dataset.get("SOPClassUID", "") or dataset.file_meta.get("MediaStorageSOPClassUID", "") or "")
        if "SeriesInstanceUID" not in dataset and sop_class and sop_class != MEDIA_STORAGE_DIRECTORY:
            raise KiMapError(f"{path.name} is a damaged DICOM file (its header ends before SeriesInstanceUID)",
                             input_name=name, hint="export or copy the series again")
    files = [(p, d) for p, d in files if "SeriesInstanceUID" in d]  # DICOMDIR and the like carry no series
    if not files:
        raise KiMapError(f"no DICOM files in {folder}", input_name=name,
                         hint="give the folder that directly holds the series' DICOM files")
    by_series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for path, dataset in files:
        by_series[str(dataset.SeriesInstanceUID)].append((path, dataset))
    if len(by_series) > 1:
        listed = "; ".join(_describe_series([d for _, d in items]) for items in by_series.values())
        raise KiMapError(f"{len(by_series)} series in {folder.name}: {listed}", input_name=name,
                         hint="put each series in its own folder")
    paths = [p for p, _ in files]
    datasets = [d for _, d in files]
    first = datasets[0]
    label = _describe_series(datasets)
    required = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
    missing = [key for key in required if key not in first]
    if missing or int(first.get("NumberOfFrames", 1) or 1) > 1:
        what = f"lacks {', '.join(missing)}" if missing else "is a multi-frame object"
        raise KiMapError(f"series {label} is not a single-frame image series ({what})", input_name=name,
                         hint="give an MR (or CT) image series; RTSTRUCT, SEG, SR and parametric maps are not inputs")
    for path, dataset in files:
        absent = [key for key in required if key not in dataset]
        if absent or int(dataset.get("NumberOfFrames", 1) or 1) > 1:
            raise KiMapError(f"{path.name} in series {label} is not a single-frame image", input_name=name)
    if len(datasets) < 2:
        raise KiMapError(f"series {label} has a single slice", input_name=name, hint="give a 3D series")
    for path, _ in files:
        problem = pixel_data_problem(path)
        if problem:
            raise KiMapError(f"{path.name} in series {label} {problem}", input_name=name,
                             hint="the file is damaged or incomplete; export or copy the series again")

    orientation = np.array([float(v) for v in first.ImageOrientationPatient])
    shape = (int(first.Rows), int(first.Columns))
    pixel_spacing = np.array([float(v) for v in first.PixelSpacing])
    for path, dataset in files:
        if not np.allclose([float(v) for v in dataset.ImageOrientationPatient], orientation, atol=1e-4):
            raise KiMapError(f"{path.name}: slice orientation differs from the rest of series {label}",
                             input_name=name, hint="give a series acquired as one volume")
        if (int(dataset.Rows), int(dataset.Columns)) != shape or not np.allclose(
                [float(v) for v in dataset.PixelSpacing], pixel_spacing, atol=1e-4):
            raise KiMapError(f"{path.name}: slice size or pixel spacing differs from the rest of series {label}",
                             input_name=name)
    row_axis, column_axis = orientation[:3], orientation[3:]
    normal = np.cross(row_axis, column_axis)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise KiMapError(f"series {label} has an invalid ImageOrientationPatient", input_name=name)
    positions = np.array([[float(v) for v in d.ImagePositionPatient] for d in datasets])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    positions, along = positions[order], along[order]
    paths = [paths[i] for i in order]
    datasets = [datasets[i] for i in order]

    gaps = np.diff(along)
    duplicated = np.flatnonzero(gaps < DUPLICATE_TOLERANCE_MM)
    if duplicated.size:
        i = int(duplicated[0])
        raise KiMapError(
            f"series {label} has {duplicated.size} duplicated slice position(s), e.g. {paths[i].name} and "
            f"{paths[i + 1].name} both at {along[i]:.3f} mm", input_name=name,
            hint="remove duplicates (several echoes, time points or a repeated export?) so each position is there once")
    step = float(np.median(gaps))
    irregular = np.flatnonzero(np.abs(gaps - step) > SLICE_GAP_TOLERANCE * step)
    if irregular.size:
        i = int(irregular[0])
        count = round(gaps[i] / step) - 1
        what = f"about {count} missing slice(s)" if count >= 1 else "an irregular slice gap"
        raise KiMapError(
            f"series {label}: {what} between {paths[i].name} ({along[i]:.3f} mm) and {paths[i + 1].name} "
            f"({along[i + 1]:.3f} mm); slice gap {gaps[i]:.3f} mm instead of {step:.3f} mm", input_name=name,
            hint="export the complete series")
    in_plane = positions - positions[0]
    offsets = in_plane - np.outer(in_plane @ normal, normal)
    if np.abs(offsets).max() > max(1e-3, 0.01 * pixel_spacing.min()):
        raise KiMapError(f"series {label} is sheared (gantry tilt: slice origins do not lie on the slice normal)",
                         input_name=name, hint="resample the series onto a regular grid first")
    geometry = {
        "origin": positions[0],
        "direction": np.column_stack([row_axis, column_axis, normal]),
        "spacing": np.array([pixel_spacing[1], pixel_spacing[0], (along[-1] - along[0]) / (len(along) - 1)]),
        "size": (shape[1], shape[0], len(datasets)),
    }
    voxels = float(shape[0]) * float(shape[1]) * len(datasets)
    check_memory(voxels * 12, f"series {label} ({shape[1]}x{shape[0]}x{len(datasets)} voxels)", name,
                 hint="check the series (its headers declare this size)")  # float64 from GDCM, then float32
    return paths, datasets, geometry


def read_series(path: str | Path, name: str = "volume") -> sitk.Image:
    """Read one DICOM image series folder as a 3D float32 (or integer) SimpleITK image in LPS.

    Pixel values have Rescale Slope/Intercept applied. The source link (Study, Series, Frame of Reference UIDs,
    patient and study identity) is stored as metadata under the keys of :data:`REFERENCE_TAGS`.
    """
    paths, datasets, geometry = series_datasets(path, name)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in paths])
    try:
        image = reader.Execute()
    except RuntimeError as error:
        text = str(error).strip().splitlines()
        raise KiMapError(f"cannot read the pixel data ({text[-1] if text else 'unreadable'})", input_name=name,
                         hint="the transfer syntax may be unsupported; convert the series to uncompressed") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise KiMapError("expected a 3D scalar series", input_name=name)
    if image.GetPixelID() == sitk.sitkFloat64:
        image = sitk.Cast(image, sitk.sitkFloat32)
    if tuple(image.GetSize()) != tuple(geometry["size"]):
        raise KiMapError(f"pixel data size {image.GetSize()} does not match the headers {geometry['size']}",
                         input_name=name)
    # The geometry comes from the headers we checked (all slices), not from GDCM's first-two-slices estimate.
    image.SetOrigin([float(v) for v in geometry["origin"]])
    image.SetSpacing([float(v) for v in geometry["spacing"]])
    image.SetDirection([float(v) for v in geometry["direction"].ravel()])
    for key in list(image.GetMetaDataKeys()):
        image.EraseMetaData(key)
    first = datasets[0]
    for key, keyword in REFERENCE_TAGS.items():
        value = first.get(keyword)
        if value is not None and str(value) != "":
            image.SetMetaData(key, str(value))
    return image


def series_reference(image: sitk.Image) -> dict | None:
    """The source-series link stored by :func:`read_series` (keyword -> value), or None for a non-DICOM volume."""
    keys = set(image.GetMetaDataKeys())
    if "0020|000e" not in keys:
        return None
    return {keyword: image.GetMetaData(key).strip() for key, keyword in REFERENCE_TAGS.items() if key in keys}


def _pixel_encoding(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Stored int16 values and the (slope, intercept) such that ``values ≈ stored * slope + intercept``.

    Integer-valued volumes within the int16 range are kept exactly (slope 1, intercept 0); other volumes are
    mapped linearly onto [-32767, 32767] (quantization error at most slope / 2).
    """
    if not np.all(np.isfinite(values)):
        raise KiMapError("the volume contains NaN or Inf", input_name="DICOM export", hint="mask or fill them first")
    low, high = float(values.min()), float(values.max())
    if np.all(values == np.round(values)) and low >= -32768 and high <= 32767:
        return values.astype(np.int16), 1.0, 0.0
    if high == low:
        return np.zeros(values.shape, np.int16), 1.0, low
    slope = float(format_number_as_ds((high - low) / 65534.0 * (1 + 1e-9)))
    intercept = float(format_number_as_ds((high + low) / 2.0))
    stored = np.clip(np.round((values - intercept) / slope), -32768, 32767).astype(np.int16)
    return stored, slope, intercept


def _patient_sex(sex: str | None) -> str:
    """DICOM Patient's Sex (M, F, O or empty) from 'M', 'female', ...; unknown values become empty."""
    letter = str(sex or "").strip().upper()[:1]
    return letter if letter in ("M", "F", "O") else ""


def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


def new_file_dataset(sop_class_uid: str, sop_instance_uid: str | None = None) -> FileDataset:
    """An empty explicit-little-endian DICOM file dataset; its meta header holds the (new) SOP Instance UID."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    return FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)


def write_mr_series(
    image: sitk.Image,
    out_dir: str | Path,
    *,
    patient_id: str,
    patient_name: str,
    series_description: str,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 1,
    study_description: str = "KiMap synthetic phantom",
    sex: str | None = None,
    age: str | int | None = None,
    synthetic: bool = True,
    study_date: str | None = None,
    uid_seed: str | None = None,
) -> dict:
    """Write a 3D image as a classic MR Image Storage series (one ``IM_####.dcm`` per slice) in ``out_dir``.

    Geometry is exact for oblique, anisotropic grids (ImagePositionPatient / ImageOrientationPatient /
    PixelSpacing from the ITK grid). Values are stored as int16, unchanged when they are integers in range,
    otherwise through Rescale Slope/Intercept. With ``synthetic`` (default) the series says so in
    SeriesDescription and ImageComments. Give the same ``study_uid`` and ``frame_of_reference_uid`` to the
    sequences of one patient. ``uid_seed`` (with ``study_date``) makes every UID and time derived from it, so a
    synthetic case is byte-identical on rerun. Returns the UIDs and the written files.
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise KiMapError("expected a 3D scalar volume", input_name=series_description)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    values = sitk.GetArrayFromImage(image).astype(np.float64)  # [k, j, i]
    stored, slope, intercept = _pixel_encoding(values)

    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), dtype=float)
    origin = np.array(image.GetOrigin(), dtype=float)
    study_uid = study_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    series_uid = generate_uid(entropy_srcs=[uid_seed, "series"] if uid_seed else None)
    now = _dt.datetime.now()
    date = study_date or now.strftime("%Y%m%d")
    time = "120000" if uid_seed else now.strftime("%H%M%S")
    description = series_description
    if synthetic and "synthetic" not in description.lower():
        description = f"{description} (SYNTHETIC)"
    orientation = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
    normal = np.cross(direction[:, 0], direction[:, 1])
    window_low, window_high = float(values.min()), float(values.max())

    sop_uids, files = [], []
    for k in range(stored.shape[0]):
        ds = new_file_dataset(MR_IMAGE_STORAGE, generate_uid(entropy_srcs=[uid_seed, str(k)]) if uid_seed else None)
        sop_uid = ds.file_meta.MediaStorageSOPInstanceUID
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"] if synthetic else ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = date
        ds.SeriesDate = date
        ds.ContentDate = date
        ds.StudyTime = time
        ds.SeriesTime = time
        ds.ContentTime = time
        ds.AccessionNumber = ""
        ds.Modality = "MR"
        ds.Laterality = ""
        ds.Manufacturer = "KiMap"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = study_description
        ds.SeriesDescription = description
        ds.ManufacturerModelName = "KiMap synthetic MR writer" if synthetic else "KiMap MR writer"
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = _patient_sex(sex)
        if age is not None:
            ds.PatientAge = age if isinstance(age, str) else f"{int(age):03d}Y"
        if synthetic:
            ds.PatientIdentityRemoved = "YES"
            ds.DeidentificationMethod = "synthetic phantom, no real patient"
        ds.ScanningSequence = "RM"  # research mode: a synthetic series has no real pulse sequence
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.SliceThickness = _ds(spacing[2])
        ds.RepetitionTime = ""
        ds.EchoTime = ""
        ds.EchoTrainLength = ""
        ds.SpacingBetweenSlices = _ds(spacing[2])
        ds.SoftwareVersions = "KiMap"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = int(series_number)
        ds.InstanceNumber = k + 1
        position = origin + direction[:, 2] * spacing[2] * k
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = orientation
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(float(position @ normal))
        if synthetic:
            ds.ImageComments = "SYNTHETIC KiMap phantom image - not patient data"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[2])
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.WindowCenter = _ds((window_low + window_high) / 2)
        ds.WindowWidth = _ds(max(window_high - window_low, 1.0))
        if (slope, intercept) != (1.0, 0.0):
            ds.RescaleIntercept = _ds(intercept)
            ds.RescaleSlope = _ds(slope)
        ds.PixelData = np.ascontiguousarray(stored[k]).astype("<i2").tobytes()
        path = out_dir / f"IM_{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        sop_uids.append(sop_uid)
        files.append(str(path))
    return {
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": series_uid,
        "FrameOfReferenceUID": frame_of_reference_uid,
        "SOPInstanceUIDs": sop_uids,
        "files": files,
        "RescaleSlope": slope,
        "RescaleIntercept": intercept,
    }

