"""Radiation-planning export of a ki67 map: DICOM Parametric Maps, an RT Structure Set of iso-levels, NRRD, NIfTI.

``export_planning(map_dir, reference_dicom_dir, out_dir)`` reads the folder written by ``kimap map`` and the
DICOM series the map was computed on (its t1c), checks that both share one grid, builds everything in a
temporary folder next to ``out_dir`` and swaps it into place, so an existing export is never half-overwritten
and a failed export writes nothing. See docs/planning_export.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from KiMapLib import __version__
from KiMapLib.atomic import atomic_directory
from KiMapLib.errors import GeometryError, KiMapError
from KiMapLib.inputs.geometry import grid_description, same_grid
from KiMapLib.maps.summary import interval_level, read_summary
from KiMapLib.outputs import check_output_folder
from KiMapLib.progress import ProgressCallback, report

MAP_FILE = "ki67_map.nrrd"
PROBABILITY_FILE = "ki67_probability.nrrd"
REGION_FILE = "region.nrrd"
#: Written by `kimap map` for models with prediction intervals (exported when present).
UNCERTAINTY_FILES = {"lower": "ki67_lower.nrrd", "upper": "ki67_upper.nrrd", "ood": "out_of_domain.nrrd"}
#: Parametric Maps: kind -> (file in dicom/, series number); the RTSTRUCT is series 902. The bounds and the
#: out-of-domain score are written when the map folder has them.
PARAMETRIC_MAPS = {"ki67": ("KiMap_ki67_map_PM.dcm", 900), "probability": ("KiMap_ki67_probability_PM.dcm", 901),
                   "lower": ("KiMap_ki67_lower_PM.dcm", 903), "upper": ("KiMap_ki67_upper_PM.dcm", 904),
                   "ood": ("KiMap_out_of_domain_PM.dcm", 905)}
OOD_ROI_NAME = "KiMap out of domain"
OOD_COLOR = (255, 0, 255)
SUMMARY_FILE = "summary.json"
REPORT_FILE = "export_report.json"
FORMATS = ("dicom", "nrrd", "nifti")
DEFAULT_LEVELS = ("prob>=0.5", "ki67>=20")
#: Map and reference grids closer than this (mm) are the same grid (NIfTI stores geometry in float32).
GRID_MATCH_MM = 1e-3
#: Below this Dice between the rasterized contours and the level mask, the report carries a warning.
MIN_CONTOUR_DICE = 0.95
#: Display colours (RGB) given to the levels in order.
PALETTE = ((255, 215, 0), (220, 20, 60), (0, 191, 255), (255, 0, 255), (50, 205, 50), (255, 140, 0),
           (30, 90, 255), (160, 82, 45))

_LEVEL = re.compile(r"^\s*(ki67|prob|p)\s*(>=|≥)\s*([0-9]*\.?[0-9]+)\s*(%?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Level:
    """One iso-level: ``quantity`` ("ki67" in % or "prob" in [0, 1]) ≥ ``value``."""

    quantity: str
    value: float

    def name(self, threshold_percent: float) -> str:
        if self.quantity == "ki67":
            return f"KiMap ki67 >= {self.value:g}%"
        return f"KiMap P(ki67>={threshold_percent:g}%) >= {self.value:g}"

    @property
    def slug(self) -> str:
        return f"{self.quantity}_ge_{self.value:g}".replace(".", "p")

    def mask(self, ki67: np.ndarray, probability: np.ndarray, region: np.ndarray) -> np.ndarray:
        values = ki67 if self.quantity == "ki67" else probability
        with np.errstate(invalid="ignore"):
            return region & np.isfinite(values) & (values >= self.value)


def parse_level(text: str) -> Level:
    """Parse ``ki67>=30`` (percent, ``%`` optional) or ``prob>=0.8`` (probability in [0, 1])."""
    match = _LEVEL.match(text)
    if not match:
        raise KiMapError(f"'{text}' is not a level", input_name="--level", hint="write e.g. ki67>=30 or prob>=0.8")
    quantity = "ki67" if match.group(1).lower() == "ki67" else "prob"
    value = float(match.group(3))
    if quantity == "prob" and (match.group(4) or not 0.0 < value <= 1.0):
        raise KiMapError(f"'{text}': a probability level must lie in (0, 1]", input_name="--level")
    if quantity == "ki67" and not 0.0 < value <= 100.0:
        raise KiMapError(f"'{text}': a ki67 level must lie in (0, 100] %", input_name="--level")
    return Level(quantity, value)


def parse_levels(levels: list[str | Level] | None) -> list[Level]:
    parsed = [lv if isinstance(lv, Level) else parse_level(lv) for lv in (levels or DEFAULT_LEVELS)]
    if len(set(parsed)) != len(parsed):
        raise KiMapError("the same level is given twice", input_name="--level")
    return parsed


def _read_map_volume(map_dir: Path, filename: str) -> sitk.Image:
    path = map_dir / filename
    if not path.is_file():
        raise KiMapError(f"{filename} is missing in {map_dir}", input_name="--map",
                         hint="give the output folder of 'kimap map'")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError:
        raise KiMapError(f"cannot read {filename}", input_name="--map") from None


def load_map(map_dir: str | Path) -> dict:
    """The map folder's ki67 map, probability, region (arrays [k, j, i]), grid image and summary."""
    map_dir = Path(map_dir)
    if not map_dir.is_dir():
        raise KiMapError(f"not a folder: {map_dir}", input_name="--map", hint="give the output folder of 'kimap map'")
    ki67 = _read_map_volume(map_dir, MAP_FILE)
    probability = _read_map_volume(map_dir, PROBABILITY_FILE)
    region = _read_map_volume(map_dir, REGION_FILE)
    for name, image in ((PROBABILITY_FILE, probability), (REGION_FILE, region)):
        if not same_grid(image, ki67, GRID_MATCH_MM):
            raise GeometryError(f"grid {grid_description(image)} differs from {MAP_FILE}'s {grid_description(ki67)}",
                                input_name=name)
    summary = read_summary(map_dir / SUMMARY_FILE, "--map")
    extras = {}
    for kind, name in UNCERTAINTY_FILES.items():
        if (map_dir / name).is_file():
            image = _read_map_volume(map_dir, name)
            if not same_grid(image, ki67, GRID_MATCH_MM):
                raise GeometryError(f"grid {grid_description(image)} differs from {MAP_FILE}'s "
                                    f"{grid_description(ki67)}", input_name=name)
            extras[kind] = sitk.Cast(image, sitk.sitkFloat32)
    return {
        "uncertainty_images": extras,
        "image": sitk.Cast(ki67, sitk.sitkFloat32),
        "probability_image": sitk.Cast(probability, sitk.sitkFloat32),
        "ki67": sitk.GetArrayFromImage(ki67).astype(np.float32),
        "probability": sitk.GetArrayFromImage(probability).astype(np.float32),
        "region": sitk.GetArrayFromImage(region) > 0,
        "summary": summary,
    }


def _grid_text(image: sitk.Image) -> str:
    origin = ", ".join(f"{v:.2f}" for v in image.GetOrigin())
    return f"{grid_description(image)} at ({origin})"


def reference_grid(geometry: dict) -> sitk.Image:
    """An empty image with the DICOM series' grid (for grid comparisons and contour coordinates)."""
    image = sitk.Image([int(v) for v in geometry["size"]], sitk.sitkUInt8)
    image.SetOrigin([float(v) for v in geometry["origin"]])
    image.SetSpacing([float(v) for v in geometry["spacing"]])
    image.SetDirection([float(v) for v in np.asarray(geometry["direction"]).ravel()])
    return image


def check_reference(map_data: dict, datasets: list, reference: sitk.Image, reference_dir: Path) -> None:
    """Refuse a reference series whose grid or identity does not match the map."""
    image = map_data["image"]
    if not same_grid(image, reference, GRID_MATCH_MM):
        raise GeometryError(
            f"series grid {_grid_text(reference)} does not match the map grid {_grid_text(image)}",
            input_name=f"--reference-dicom {reference_dir.name}",
            hint="give the DICOM series of the t1c the map was computed on")
    source = map_data["summary"].get("t1c_source") or {}
    for key in ("SeriesInstanceUID", "FrameOfReferenceUID"):
        expected = source.get(key)
        if expected and str(datasets[0].get(key, "")) != expected:
            raise KiMapError(f"{key} {datasets[0].get(key, '')} differs from the map's t1c source {expected}",
                             input_name=f"--reference-dicom {reference_dir.name}",
                             hint="give the DICOM series of the t1c the map was computed on")


def _map_files(map_dir: Path) -> list[tuple[str, Path]]:
    """The files of a map folder the export reads (none of them may be an output)."""
    return [(f"--map {name}", map_dir / name) for name in (MAP_FILE, PROBABILITY_FILE, REGION_FILE, SUMMARY_FILE,
                                                          *UNCERTAINTY_FILES.values())]


def _series_files(reference_dir: Path) -> list[tuple[str, Path]]:
    """The files of the reference series folder (read as DICOM; none of them may be an output)."""
    if not reference_dir.is_dir():
        return []
    return [(f"--reference-dicom {p.name}", p) for p in sorted(reference_dir.iterdir()) if p.is_file()]


def uncertainty_notes(map_data: dict, level: float | None) -> list[str]:
    """What the export says about the interval bounds and the out-of-domain score it could not export or label."""
    images = map_data["uncertainty_images"]
    missing = [name for kind, name in UNCERTAINTY_FILES.items() if kind not in images]
    notes = []
    if missing:
        notes.append(f"the map folder has no {', '.join(missing)} (a model without prediction intervals or domain, "
                     "or a map from before KiMap 0.4): not exported")
    if level is None and ({"lower", "upper"} & images.keys()):
        notes.append("summary.json gives no interval level (uncertainty.intervals.level): the bound maps are "
                     "labelled without it")
    return notes


def _parametric_images(map_data: dict) -> list[tuple[str, sitk.Image]]:
    """(kind, image) of every map the export writes as a Parametric Map, in :data:`PARAMETRIC_MAPS` order."""
    images = {"ki67": map_data["image"], "probability": map_data["probability_image"],
              **map_data["uncertainty_images"]}
    return [(kind, images[kind]) for kind in PARAMETRIC_MAPS if kind in images]


def _write_volume(image: sitk.Image, path: Path, reference: dict | None) -> None:
    image = sitk.Image(image)
    for key in list(image.GetMetaDataKeys()):
        image.EraseMetaData(key)
    if reference and path.suffix == ".nrrd":
        for key, value in reference.items():
            image.SetMetaData(f"KiMap_source_{key}", str(value))
    sitk.WriteImage(image, str(path), useCompression=True)


def export_planning(
    map_dir: str | Path,
    reference_dicom_dir: str | Path,
    out_dir: str | Path,
    *,
    levels: list[str | Level] | None = None,
    formats: tuple[str, ...] | list[str] = FORMATS,
    progress: ProgressCallback | None = None,
) -> dict:
    """Export a ki67 map for radiation planning; returns the report written to ``export_report.json``.

    ``levels`` default to ``prob>=0.5`` and ``ki67>=20``. ``formats`` is any of "dicom", "nrrd", "nifti".
    Parametric Maps are written of the ki67 map, the probability and, when the map folder has them, the
    prediction interval's bounds and the out-of-domain score (``notes`` in the report says what was missing).
    The report lists the files written, the UIDs, and per ROI its voxel count, volume and the Dice between
    the RTSTRUCT contours rasterized back on the source grid and the iso-level mask.
    """
    # DICOM libraries (pydicom, highdicom) are imported here so that `kimap` runs without them until needed.
    from KiMapLib.export.parametric import OUTSIDE_VALUE, build_parametric_map
    from KiMapLib.export.rtstruct import Roi, build_rtstruct, dice, rasterize_contours, rtstruct_roi_contours
    from KiMapLib.inputs.dicom import series_datasets

    map_dir, reference_dir, out_dir = Path(map_dir), Path(reference_dicom_dir), Path(out_dir)
    formats = tuple(dict.fromkeys(f.strip().lower() for f in formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise KiMapError(f"unknown format(s) {', '.join(unknown) or '(none)'}", input_name="--formats",
                         hint=f"use a comma-separated subset of {','.join(FORMATS)}")
    parsed = parse_levels(levels)
    check_output_folder(out_dir, "export", inputs=[("--map", map_dir), ("--reference-dicom", reference_dir),
                                                   *_map_files(map_dir), *_series_files(reference_dir)])
    report(progress, 0.0, "reading the map and the reference series")
    map_data = load_map(map_dir)
    _, datasets, geometry = series_datasets(reference_dir, name=f"--reference-dicom {reference_dir.name}")
    reference = reference_grid(geometry)
    check_reference(map_data, datasets, reference, reference_dir)
    threshold = float(map_data["summary"].get("threshold_percent") or 20.0)  # checked by read_summary
    pi_level = interval_level(map_data["summary"], "--map")

    region = map_data["region"]
    rois = []
    for index, level in enumerate(parsed):
        mask = level.mask(map_data["ki67"], map_data["probability"], region)
        if not mask.any():
            raise KiMapError("is empty (no voxel of the mapped region reaches it)",
                             input_name=f"iso-level '{level.name(threshold)}'",
                             hint="choose a lower level or leave it out")
        rois.append((level, Roi(level.name(threshold), PALETTE[index % len(PALETTE)], mask,
                                description=f"KiMap iso-level {level.quantity} >= {level.value:g} (research only)")))
    ood_image = map_data["uncertainty_images"].get("ood")
    ood_mask = (sitk.GetArrayFromImage(ood_image) > 1.0) & region if ood_image is not None else None
    ood_roi = (Roi(OOD_ROI_NAME, OOD_COLOR, ood_mask, description="voxels whose features lie outside the model's "
                   "training data (out-of-domain score > 1): the ki67 estimate there is unreliable")
               if ood_mask is not None and ood_mask.any() else None)

    first = datasets[0]
    source_link = {k: str(first.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
                                                      "PatientID")}
    files: list[str] = []
    result: dict = {
        "kimap_version": __version__,
        "map_dir": str(map_dir.resolve()),
        "reference_series": source_link,
        "model_id": map_data["summary"].get("model_id"),
        "threshold_percent": threshold,
        "formats": list(formats),
        "outside_region_value_in_parametric_maps": OUTSIDE_VALUE,
        "rois": [],
        "uncertainty": map_data["summary"].get("uncertainty"),
        "interval_level": pi_level,
        "notes": uncertainty_notes(map_data, pi_level),
        "out_of_domain_roi": None,
        "warnings": [],
        "dicom": {},
        "files": files,
    }
    voxel_ml = float(np.prod(reference.GetSpacing())) / 1000.0
    with atomic_directory(out_dir, "export") as staging:
        for level, roi in rois:
            result["rois"].append({"name": roi.name, "level": f"{level.quantity}>={level.value:g}",
                                   "color": list(roi.color), "voxels": int(roi.mask.sum()),
                                   "volume_ml": round(int(roi.mask.sum()) * voxel_ml, 3)})
            if ood_mask is not None and (roi.mask & ood_mask).any():
                share = (roi.mask & ood_mask).sum() / roi.mask.sum()
                result["rois"][-1]["out_of_domain_fraction"] = round(float(share), 4)
                result["warnings"].append(f"ROI '{roi.name}': {share:.1%} of its voxels are out of the model's "
                                          f"domain (ROI '{OOD_ROI_NAME}')")
        if ood_roi is not None:
            result["out_of_domain_roi"] = {"name": OOD_ROI_NAME, "color": list(OOD_COLOR),
                                           "voxels": int(ood_roi.mask.sum()),
                                           "volume_ml": round(int(ood_roi.mask.sum()) * voxel_ml, 3)}
        if "dicom" in formats:
            dicom_dir = staging / "dicom"
            dicom_dir.mkdir()
            pm_images = _parametric_images(map_data)
            for step, (kind, image) in enumerate(pm_images):
                filename, number = PARAMETRIC_MAPS[kind]
                report(progress, 0.1 + 0.5 * step / len(pm_images), f"writing the {kind} parametric map")
                pm = build_parametric_map(image, datasets, kind=kind, threshold_percent=threshold,
                                          interval_level=pi_level, series_number=number, software_version=__version__)
                pm.save_as(dicom_dir / filename)
                files.append(f"dicom/{filename}")
                result["dicom"][kind] = {"SeriesInstanceUID": str(pm.SeriesInstanceUID),
                                         "SOPInstanceUID": str(pm.SOPInstanceUID),
                                         "SeriesDescription": str(pm.SeriesDescription), "file": f"dicom/{filename}"}
            report(progress, 0.6, "tracing iso-level contours")
            all_rois = [roi for _, roi in rois] + ([ood_roi] if ood_roi is not None else [])
            rtstruct = build_rtstruct(all_rois, reference, datasets, series_number=902,
                                      software_version=__version__)
            rtstruct.save_as(dicom_dir / "KiMap_ki67_levels_RTSTRUCT.dcm", enforce_file_format=True)
            files.append("dicom/KiMap_ki67_levels_RTSTRUCT.dcm")
            result["dicom"]["rtstruct"] = {"SeriesInstanceUID": str(rtstruct.SeriesInstanceUID),
                                           "SOPInstanceUID": str(rtstruct.SOPInstanceUID),
                                           "file": "dicom/KiMap_ki67_levels_RTSTRUCT.dcm"}
            contours = rtstruct_roi_contours(rtstruct)
            for entry, (_, roi) in zip(result["rois"], rois, strict=True):
                rasterized = rasterize_contours(contours[roi.name], reference)
                entry["dice_contours_vs_mask"] = round(dice(rasterized, roi.mask), 4)
                if entry["dice_contours_vs_mask"] < MIN_CONTOUR_DICE:
                    result["warnings"].append(f"ROI '{roi.name}': contours reproduce the mask with Dice "
                                              f"{entry['dice_contours_vs_mask']:.3f} only")
        report(progress, 0.8, "writing NRRD / NIfTI")
        region_image = sitk.GetImageFromArray(region.astype(np.uint8))
        region_image.CopyInformation(map_data["image"])
        # The region tells "not mapped" from "0": ITK's NIfTI reader (hence Slicer) reads NaN back as 0.
        volumes = [("ki67_map", map_data["image"]), ("ki67_probability", map_data["probability_image"]),
                   *((Path(UNCERTAINTY_FILES[kind]).stem, image) for kind, image in
                     map_data["uncertainty_images"].items()),
                   ("region", region_image)]
        for level, roi in rois:
            mask = sitk.GetImageFromArray(roi.mask.astype(np.uint8))
            mask.CopyInformation(map_data["image"])
            volumes.append((f"roi_{level.slug}", mask))
        if ood_roi is not None:
            mask = sitk.GetImageFromArray(ood_roi.mask.astype(np.uint8))
            mask.CopyInformation(map_data["image"])
            volumes.append(("roi_out_of_domain", mask))
        for fmt, suffix in (("nrrd", ".nrrd"), ("nifti", ".nii.gz")):
            if fmt not in formats:
                continue
            (staging / fmt).mkdir()
            for stem, image in volumes:
                _write_volume(image, staging / fmt / f"{stem}{suffix}", source_link)
                files.append(f"{fmt}/{stem}{suffix}")
        files.append(REPORT_FILE)
        (staging / REPORT_FILE).write_text(json.dumps(result, indent=2) + "\n")
        report(progress, 0.95, "moving the export into place")
    report(progress, 1.0, "export done")
    result["out_dir"] = str(out_dir)
    return result

