"""DICOM Parametric Map export (highdicom) of the ki67 map, the probability, the prediction interval's bounds
and the out-of-domain score, in the source Frame of Reference.

Representation (documented in docs/planning_export.md):

* Pixels are 32-bit floats (FloatPixelData), exactly the NRRD values; the Real World Value Mapping is the
  identity (slope 1, intercept 0) with unit ``%`` (UCUM) for the ki67 map and the interval bounds (value range
  [0, 100]), ``1`` (no units, DCM 122157 "Probability") for the probability ([0, 1]) and ``1`` for the
  out-of-domain score ([0, max(2, ceil(largest score))], > 1 = out of domain).
* Voxels outside the mapped region (NaN in the NRRD) are stored as :data:`OUTSIDE_VALUE` (-1), which lies
  outside the mapping's value range: by DICOM's definition they have no real-world value. Readers that ignore
  the range see -1, below every valid value, and the window (0..100, 0..1, 0..2) shows them black.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from KiMapLib.errors import KiMapError

#: Stored value of voxels outside the mapped region (outside the real-world value range, hence "no value").
OUTSIDE_VALUE = -1.0

#: Private coding scheme for the ki67 quantity (no standard code exists for a predicted ki67 labelling index).
KIMAP_SCHEME = "99KIMAP"

#: Source attributes highdicom reads unconditionally; absent ones are added empty (type 2), never invented.
_TYPE2_FOR_HIGHDICOM = ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "PatientName", "PatientID")


#: The kinds of map a Parametric Map can hold: the estimate, P(high), the interval bounds and the out-of-domain score.
KINDS = ("ki67", "probability", "lower", "upper", "ood")

#: Private codes (99KIMAP) of the quantities without a standard code.
_PRIVATE_QUANTITIES = {
    "ki67": ("KI67EST", "Estimated ki67 labelling index"),
    "lower": ("KI67LOW", "Lower prediction interval bound of ki67"),
    "upper": ("KI67UPP", "Upper prediction interval bound of ki67"),
    "ood": ("KIMAPOOD", "KiMap out-of-domain score"),
}


def _level_text(interval_level: float | None) -> str:
    return f" {interval_level * 100:g}%" if interval_level is not None else ""


def map_title(kind: str, threshold_percent: float = 20.0, interval_level: float | None = None) -> str:
    """What a map of ``kind`` shows, e.g. "ki67 lower 90% bound (%)" (series description without "KiMap")."""
    if kind == "ki67":
        return "ki67 map (%)"
    if kind == "probability":
        return f"P(ki67>={threshold_percent:g}%)"
    if kind in ("lower", "upper"):
        return f"ki67 {kind}{_level_text(interval_level)} bound (%)"
    return "out-of-domain score (>1: out)"


def _private(kind: str) -> hd.sr.CodedConcept:
    value, meaning = _PRIVATE_QUANTITIES[kind]
    return hd.sr.CodedConcept(value, KIMAP_SCHEME, meaning)


def _quantity(kind: str, threshold_percent: float, interval_level: float | None,
              values: np.ndarray, finite: np.ndarray) -> tuple[hd.pm.RealWorldValueMapping, float, float, str]:
    """(mapping, window centre, window width, content label) of a map of ``kind``; the out-of-domain score's value
    range follows its ``values`` (``finite``: where they are finite); the other kinds have fixed ranges."""
    if kind in ("ki67", "lower", "upper"):
        explanation = ("Estimated ki67 labelling index (%)" if kind == "ki67" else
                       f"{kind.capitalize()} bound of the{_level_text(interval_level)} prediction interval of ki67 (%)")
        mapping = hd.pm.RealWorldValueMapping(
            lut_label=f"KI67_{'PERCENT' if kind == 'ki67' else kind.upper()}", lut_explanation=explanation[:64],
            unit=codes.UCUM.Percent, value_range=(0.0, 100.0), slope=1.0, intercept=0.0,
            quantity_definition=_private(kind))
        return mapping, 50.0, 100.0, "KI67_MAP" if kind == "ki67" else f"KI67_{kind.upper()}"
    if kind == "ood":
        mapping = hd.pm.RealWorldValueMapping(
            lut_label="OOD_SCORE", lut_explanation="Out-of-domain score (> 1: outside the training data)",
            unit=codes.UCUM.NoUnits, value_range=(0.0, _ood_value_max(values, finite)), slope=1.0, intercept=0.0,
            quantity_definition=_private(kind))
        return mapping, 1.0, 2.0, "KI67_OOD"
    label = f"P(ki67>={threshold_percent:g}%)"
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="P_KI67",
        lut_explanation=f"Probability {label}"[:64],
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
        quantity_definition=codes.DCM.Probability,
    )
    return mapping, 0.5, 1.0, "KI67_PROB"


def _ood_value_max(values: np.ndarray, finite: np.ndarray) -> float:
    """Upper end of the out-of-domain score's value range: the largest finite score rounded up, at least 2."""
    return float(max(2.0, np.ceil(values[finite].max()) if finite.any() else 2.0))


def _source_metadata(source_datasets: list[Dataset]) -> list[Dataset]:
    """Copies of the source headers with absent type-2 identity attributes present but empty."""
    out = []
    for source in source_datasets:
        missing = [k for k in _TYPE2_FOR_HIGHDICOM if k not in source]
        if missing:
            source = Dataset(source)
            for keyword in missing:
                setattr(source, keyword, "")
        out.append(source)
    return out


def build_parametric_map(
    values: sitk.Image,
    source_datasets: list[Dataset],
    *,
    kind: str,
    threshold_percent: float = 20.0,
    interval_level: float | None = None,
    series_number: int = 900,
    software_version: str = "",
    description: str = "",
) -> hd.pm.ParametricMap:
    """A Parametric Map of ``values`` (float, NaN outside the region) on the source series' grid.

    ``kind`` is one of :data:`KINDS`: ``"ki67"`` (percent), ``"probability"``, ``"lower"``/``"upper"`` (the
    prediction interval's bounds in percent, at ``interval_level``, e.g. 0.9) or ``"ood"`` (out-of-domain score,
    unitless, > 1 = out). ``values`` must be on the source grid (checked by the caller); frames follow the
    grid's k axis with positions taken from the grid itself.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown parametric map kind {kind!r}")
    array = sitk.GetArrayFromImage(values).astype(np.float32)  # [k, j, i] = frames, rows, columns
    finite = np.isfinite(array)
    mapping, center, width, content_label = _quantity(kind, threshold_percent, interval_level, array, finite)
    low, high = mapping.DoubleFloatRealWorldValueFirstValueMapped, mapping.DoubleFloatRealWorldValueLastValueMapped
    bad = finite & ((array < low) | (array > high))
    if bad.any():
        raise KiMapError(f"{int(bad.sum())} voxels outside [{low:g}, {high:g}] (e.g. {array[bad][0]:g})",
                         input_name=f"{kind} map", hint="the map must hold valid values inside the region")
    stored = np.where(finite, array, np.float32(OUTSIDE_VALUE)).astype(np.float32)

    origin = np.array(values.GetOrigin(), float)
    direction = np.array(values.GetDirection(), float).reshape(3, 3)
    spacing = np.array(values.GetSpacing(), float)
    positions = [
        hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT,
                                 [float(v) for v in origin + direction[:, 2] * spacing[2] * k])
        for k in range(array.shape[0])
    ]
    orientation = hd.PlaneOrientationSequence(hd.CoordinateSystemNames.PATIENT,
                                              [float(v) for v in (*direction[:, 0], *direction[:, 1])])
    measures = hd.PixelMeasuresSequence(pixel_spacing=[float(spacing[1]), float(spacing[0])],
                                        slice_thickness=float(spacing[2]),
                                        spacing_between_slices=float(spacing[2]))
    coding_schemes = None
    if kind in _PRIVATE_QUANTITIES:
        coding_schemes = [hd.coding_schemes.CodingSchemeIdentificationItem(
            KIMAP_SCHEME, name="KiMap local codes", responsible_organization="KiMap project")]
    title = map_title(kind, threshold_percent, interval_level)
    pm = hd.pm.ParametricMap(
        source_images=_source_metadata(source_datasets),
        pixel_array=stored,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="KiMap",
        manufacturer_model_name="KiMap planning export",
        software_versions=software_version or "unknown",
        device_serial_number="none",
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        window_center=center,
        window_width=width,
        content_label=content_label,
        content_description=(description or f"KiMap {title}; research; -1 = outside region")[:64],
        pixel_measures=measures,
        plane_orientation=orientation,
        plane_positions=positions,
        series_description=f"KiMap {title} (research)"[:64],
        coding_schemes=coding_schemes,
    )
    # General Series: Laterality is type 2C; copy the source's (never guess a side), present but empty otherwise.
    pm.Laterality = source_datasets[0].get("Laterality", "")
    return pm


def read_parametric_map(ds: Dataset, reference: sitk.Image) -> np.ndarray:
    """Real-world values [k, j, i] of a (single-channel) Parametric Map on the reference grid; NaN where unmapped.

    Frames are placed by their Image Position (Patient); the first Real World Value Mapping is applied and
    stored values outside its value range become NaN.
    """
    origin = np.array(reference.GetOrigin(), float)
    direction = np.array(reference.GetDirection(), float).reshape(3, 3)
    spacing = np.array(reference.GetSpacing(), float)
    size = reference.GetSize()
    frames = ds.pixel_array.astype(np.float64)
    if frames.ndim == 2:
        frames = frames[np.newaxis]
    shared = ds.SharedFunctionalGroupsSequence[0]
    mapping = shared.RealWorldValueMappingSequence[0]
    if "DoubleFloatRealWorldValueFirstValueMapped" in mapping:
        low = float(mapping.DoubleFloatRealWorldValueFirstValueMapped)
        high = float(mapping.DoubleFloatRealWorldValueLastValueMapped)
    else:
        low, high = float(mapping.RealWorldValueFirstValueMapped), float(mapping.RealWorldValueLastValueMapped)
    slope, intercept = float(mapping.RealWorldValueSlope), float(mapping.RealWorldValueIntercept)
    out = np.full((size[2], size[1], size[0]), np.nan)
    for index, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        position = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        ijk = ((position - origin) @ direction) / spacing
        k = round(float(ijk[2]))
        if np.abs(ijk - [0, 0, k]).max() > 1e-3 or not 0 <= k < size[2]:
            raise KiMapError(f"frame {index + 1} is not on a slice of the reference grid", input_name="parametric map")
        frame = frames[index]
        out[k] = np.where((frame >= low) & (frame <= high), frame * slope + intercept, np.nan)
    return out
