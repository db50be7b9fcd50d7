"""RT Structure Set export: binary masks on a DICOM series' grid -> planar contours in patient LPS mm -> RTSTRUCT.

Contours are traced per slice of the source series with marching squares (``contourpy``, shipped with
matplotlib) at level 0.5 on the binary mask, so every contour runs half-way between a voxel centre inside and
one outside; collinear points are dropped. Several contours on one slice (islands, holes) follow the even-odd
rule that treatment planning systems apply. :func:`rasterize_rtstruct` does the reverse on a grid (voxel
centres inside an odd number of contours), independently of how the contours were made, for validation.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import contourpy
import numpy as np
import SimpleITK as sitk
from matplotlib.path import Path as PolygonPath
from pydicom.dataset import Dataset, FileDataset
from pydicom.uid import generate_uid

from KiMapLib.errors import KiMapError
from KiMapLib.inputs.dicom import new_file_dataset

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
#: Referenced SOP Class for a study in RTReferencedStudySequence (Study Component Management, as the standard's
#: examples and TPSs use).
STUDY_COMPONENT_MANAGEMENT = "1.2.840.10008.3.1.2.3.2"

#: Patient and study attributes copied verbatim (never invented) from the source series; empty when absent.
PATIENT_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "PatientIdentityRemoved", "DeidentificationMethod",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "StudyDescription",
)
TYPE2_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                  "ReferringPhysicianName", "StudyID", "AccessionNumber")


@dataclass
class Roi:
    """One structure: its name (LO, ≤ 64 characters), display colour (RGB 0-255) and mask [k, j, i]."""

    name: str
    color: tuple[int, int, int]
    mask: np.ndarray
    description: str = ""


def _grid(reference: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.array(reference.GetOrigin(), float), np.array(reference.GetDirection(), float).reshape(3, 3),
            np.array(reference.GetSpacing(), float))


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """Remove vertices lying on the straight line between their neighbours (closed polygon, no repeated end)."""
    if len(points) <= 3:
        return points
    previous, following = np.roll(points, 1, axis=0), np.roll(points, -1, axis=0)
    cross = (points[:, 0] - previous[:, 0]) * (following[:, 1] - points[:, 1]) - (
        points[:, 1] - previous[:, 1]) * (following[:, 0] - points[:, 0])
    keep = np.abs(cross) > 1e-9
    return points[keep] if keep.sum() >= 3 else points


def mask_contours(mask_kji: np.ndarray) -> dict[int, list[np.ndarray]]:
    """Closed contours of a binary mask per slice k, as (N, 2) arrays of continuous (i, j) indices."""
    contours: dict[int, list[np.ndarray]] = {}
    for k in np.flatnonzero(mask_kji.reshape(mask_kji.shape[0], -1).any(axis=1)):
        padded = np.pad(mask_kji[k].astype(np.float64), 1)
        generator = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate)
        lines = []
        for line in generator.lines(0.5):
            points = np.asarray(line, float) - 1.0  # undo the padding; x = column i, y = row j
            if len(points) > 1 and np.allclose(points[0], points[-1]):
                points = points[:-1]
            points = _drop_collinear(points)
            if len(points) >= 3:
                lines.append(points)
        if lines:
            contours[int(k)] = lines
    return contours


def index_to_lps(reference: sitk.Image, ij: np.ndarray, k: float) -> np.ndarray:
    """Patient LPS mm of continuous (i, j) points on slice k of the reference grid."""
    origin, direction, spacing = _grid(reference)
    ijk = np.column_stack([ij, np.full(len(ij), float(k))])
    return origin + (ijk * spacing) @ direction.T


def _copy_identity(target: Dataset, source: Dataset) -> None:
    if "SpecificCharacterSet" in source:
        target.SpecificCharacterSet = source.SpecificCharacterSet
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            setattr(target, keyword, source[keyword].value)
        elif keyword in TYPE2_KEYWORDS:
            setattr(target, keyword, "")


def _format_ds(values: np.ndarray) -> list[str]:
    out = []
    for v in values:
        text = f"{v:.4f}".rstrip("0").rstrip(".")
        out.append("0" if text in ("-0", "") else text)
    return out


def build_rtstruct(
    rois: list[Roi],
    reference: sitk.Image,
    source_datasets: list[Dataset],
    *,
    series_number: int = 901,
    series_description: str = "KiMap ki67 iso-levels (research)",
    label: str = "KiMap ki67",
    software_version: str = "",
) -> FileDataset:
    """An RT Structure Set referencing the source series, one ROI per mask, contours in patient LPS mm.

    ``source_datasets`` are the source slices ordered like the reference grid's k axis (as
    :func:`KiMapLib.inputs.dicom.series_datasets` returns them). Raises :class:`KiMapError` for an empty ROI.
    """
    if len(source_datasets) != reference.GetSize()[2]:
        raise KiMapError(f"{len(source_datasets)} source slices for a grid of {reference.GetSize()[2]} slices",
                         input_name="reference series")
    first = source_datasets[0]
    now = _dt.datetime.now()
    ds = new_file_dataset(RT_STRUCTURE_SET_STORAGE)
    sop_uid = ds.file_meta.MediaStorageSOPInstanceUID
    _copy_identity(ds, first)
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = int(series_number)
    ds.SeriesDescription = series_description
    ds.SeriesDate = now.strftime("%Y%m%d")
    ds.SeriesTime = now.strftime("%H%M%S")
    ds.OperatorsName = ""
    ds.Manufacturer = "KiMap"
    ds.ManufacturerModelName = "KiMap planning export"
    if software_version:
        ds.SoftwareVersions = software_version
    ds.InstanceNumber = 1
    ds.StructureSetLabel = label[:16]
    ds.StructureSetName = "KiMap ki67 iso-levels"
    ds.StructureSetDescription = ("Research only, not a medical device: estimated ki67 iso-levels, "
                                  "not a validated target volume.")
    ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.StructureSetTime = now.strftime("%H%M%S")
    ds.ApprovalStatus = "UNAPPROVED"

    frame_uid = str(first.FrameOfReferenceUID)
    ds.FrameOfReferenceUID = frame_uid  # Frame of Reference module (part of the RT Structure Set IOD since 2019)
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    images = []
    for source in source_datasets:
        item = Dataset()
        item.ReferencedSOPClassUID = source.SOPClassUID
        item.ReferencedSOPInstanceUID = source.SOPInstanceUID
        images.append(item)
    series_item = Dataset()
    series_item.SeriesInstanceUID = first.SeriesInstanceUID
    series_item.ContourImageSequence = images
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = STUDY_COMPONENT_MANAGEMENT
    study_item.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_item.RTReferencedSeriesSequence = [series_item]
    frame_item = Dataset()
    frame_item.FrameOfReferenceUID = frame_uid
    frame_item.RTReferencedStudySequence = [study_item]
    ds.ReferencedFrameOfReferenceSequence = [frame_item]

    ds.StructureSetROISequence = []
    ds.ROIContourSequence = []
    ds.RTROIObservationsSequence = []
    for number, roi in enumerate(rois, start=1):
        contours = mask_contours(roi.mask)
        if not contours:
            raise KiMapError("is empty (no voxel reaches it)", input_name=f"iso-level '{roi.name}'",
                             hint="choose a lower level or check the map")
        roi_item = Dataset()
        roi_item.ROINumber = number
        roi_item.ReferencedFrameOfReferenceUID = frame_uid
        roi_item.ROIName = roi.name[:64]
        if roi.description:
            roi_item.ROIDescription = roi.description[:1024]
        roi_item.ROIGenerationAlgorithm = "AUTOMATIC"
        roi_item.ROIGenerationDescription = "KiMap ki67 iso-level, marching squares at voxel mid-lines"
        ds.StructureSetROISequence.append(roi_item)

        contour_items = []
        for k, lines in sorted(contours.items()):
            image_item = Dataset()
            image_item.ReferencedSOPClassUID = source_datasets[k].SOPClassUID
            image_item.ReferencedSOPInstanceUID = source_datasets[k].SOPInstanceUID
            for points in lines:
                item = Dataset()
                item.ContourImageSequence = [image_item]
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(points)
                item.ContourData = _format_ds(index_to_lps(reference, points, k).ravel())
                contour_items.append(item)
        contour_roi = Dataset()
        contour_roi.ROIDisplayColor = [int(c) for c in roi.color]
        contour_roi.ContourSequence = contour_items
        contour_roi.ReferencedROINumber = number
        ds.ROIContourSequence.append(contour_roi)

        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = ""  # not a target or organ: an estimate to inform the planner
        observation.ROIInterpreter = ""
        ds.RTROIObservationsSequence.append(observation)
    return ds


def rtstruct_roi_contours(ds: Dataset) -> dict[str, list[np.ndarray]]:
    """ROI name -> list of (N, 3) contour point arrays (patient mm) read from an RTSTRUCT dataset."""
    names = {int(item.ROINumber): str(item.ROIName) for item in ds.StructureSetROISequence}
    out: dict[str, list[np.ndarray]] = {}
    for roi in ds.ROIContourSequence:
        name = names[int(roi.ReferencedROINumber)]
        out[name] = [np.array([float(v) for v in c.ContourData]).reshape(-1, 3)
                     for c in roi.get("ContourSequence", [])]
    return out


def rasterize_contours(contours: list[np.ndarray], reference: sitk.Image) -> np.ndarray:
    """Mask [k, j, i] of the voxel centres inside an odd number of planar contours (patient mm) on one slice.

    Refuses contours that do not lie on a slice plane of the reference grid.
    """
    origin, direction, spacing = _grid(reference)
    size = reference.GetSize()
    mask = np.zeros((size[2], size[1], size[0]), dtype=bool)
    jj, ii = np.mgrid[0:size[1], 0:size[0]]
    centres = np.column_stack([ii.ravel(), jj.ravel()]).astype(float)
    for points in contours:
        ijk = ((points - origin) @ direction) / spacing
        k = round(float(np.median(ijk[:, 2])))
        if np.abs(ijk[:, 2] - k).max() > 1e-2 or not 0 <= k < size[2]:
            raise KiMapError("a contour does not lie on a slice of the reference grid", input_name="RTSTRUCT")
        inside = PolygonPath(ijk[:, :2], closed=False).contains_points(centres).reshape(size[1], size[0])
        mask[k] ^= inside
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
