"""Whole-tumor ki67 maps: features on the ball around every region voxel, then the model, on the t1c grid."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from KiMapLib.atomic import atomic_directory
from KiMapLib.errors import KiMapError
from KiMapLib.features.neighbourhood import ball_offsets
from KiMapLib.inputs.case import Case
from KiMapLib.inputs.geometry import copy_geometry
from KiMapLib.inputs.images import check_region
from KiMapLib.model.bundle import KiMapModel
from KiMapLib.model.design import design_matrix
from KiMapLib.model.prediction import check_case_for_model
from KiMapLib.progress import ProgressCallback, report, scaled

OUTSIDE_VALUE = float("nan")
#: Automatic region (see :func:`default_region`): robust z-score threshold, smoothing and dilation in mm.
AUTO_REGION_Z = 2.0
AUTO_REGION_SMOOTH_MM = 2.0
AUTO_REGION_DILATE_MM = 3.0


@dataclass
class MapResult:
    """ki67 (%) and P(ki67 >= threshold) on the exact t1c grid, NaN outside the mapped region."""

    ki67: sitk.Image
    probability: sitk.Image
    region: sitk.Image
    t1c: sitk.Image
    summary: dict = field(default_factory=dict)


def default_region(case: Case) -> tuple[np.ndarray, str]:
    """The abnormal-signal region when none is given: hyperintense FLAIR (else T2, else enhancing t1c).

    The sequence is smoothed (Gaussian, 2 mm), turned into a robust z-score against the whole foreground
    (median and MAD, so the lesion does not inflate its own reference), thresholded at
    :data:`AUTO_REGION_Z`, reduced to its largest connected component, hole-filled (the necrotic core belongs to
    the tumor) and dilated by :data:`AUTO_REGION_DILATE_MM`.
    """
    name = next(n for n in ("flair", "t2", "t1c") if n in case.images)
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(case.images[name], AUTO_REGION_SMOOTH_MM))
    inside = smooth[case.foreground]
    median = np.median(inside)
    spread = 1.4826 * np.median(np.abs(inside - median))
    if spread <= 0:
        raise KiMapError(f"{name} has no contrast for an automatic region", input_name="region",
                         hint="give the tumor region explicitly (--region LABEL_FILE)")
    candidate = ((smooth - median) / spread > AUTO_REGION_Z) & case.foreground
    components = sitk.RelabelComponent(sitk.ConnectedComponent(copy_geometry(candidate.astype(np.uint8),
                                                                             case.reference)), sortByObjectSize=True)
    largest = sitk.GetArrayFromImage(components) == 1
    if not largest.any():
        raise KiMapError(f"no {name} hyperintensity found for an automatic region", input_name="region",
                         hint="give the tumor region explicitly (--region LABEL_FILE)")
    filled = sitk.BinaryFillhole(copy_geometry(largest.astype(np.uint8), case.reference))
    radius = [max(1, round(AUTO_REGION_DILATE_MM / s)) for s in case.reference.GetSpacing()]
    region = sitk.GetArrayFromImage(sitk.BinaryDilate(filled, radius)).astype(bool) & case.foreground
    return region, (f"automatic: largest connected {name} region with robust z-score > {AUTO_REGION_Z:g} "
                    f"(after {AUTO_REGION_SMOOTH_MM:g} mm smoothing), holes filled, dilated "
                    f"{AUTO_REGION_DILATE_MM:g} mm, within the foreground")


def _engine_features(case: Case, centres: np.ndarray, region: np.ndarray, used: list[str],
                     progress: ProgressCallback | None) -> tuple[np.ndarray, str]:
    """Used features at every centre voxel with the voxel-wise engine (same ball and settings as biopsies)."""
    from KiMapLib.features.featuremaps import feature_arrays

    settings = {**case.settings.pyradiomics_settings(), "ballRadius": case.settings.ball_radius_mm}
    full_ball = len(ball_offsets(case.reference.GetSpacing(), case.settings.ball_radius_mm))
    min_voxels = math.ceil(case.settings.min_ball_fraction * full_ball)
    mask = copy_geometry(region.astype(np.uint8), case.reference)
    foreground = copy_geometry(case.foreground.astype(np.uint8), case.reference)
    by_sequence: dict[str, list[str]] = defaultdict(list)
    for name in used:
        sequence, key = name.split("_", 1)
        by_sequence[sequence].append(key)
    values = np.full((len(centres), len(used)), np.nan)
    for number, (sequence, keys) in enumerate(by_sequence.items()):
        arrays = feature_arrays(case.images[sequence], mask, settings, features=keys, kernel="ball",
                                progress=scaled(progress, number / len(by_sequence), (number + 1) / len(by_sequence)),
                                kernel_mask=foreground, min_kernel_voxels=min_voxels)
        computed = np.ravel_multi_index(tuple(arrays.index_kji.T), region.shape)  # sorted (argwhere order)
        wanted = np.ravel_multi_index(tuple(centres.T), region.shape)
        rows = np.searchsorted(computed, wanted)
        for key, row in zip(arrays.keys, arrays.values, strict=True):
            values[:, used.index(f"{sequence}_{key}")] = row[rows]
    return values, "voxel-wise engine (KiMapLib.features.featuremaps, ball kernel) at every region voxel"


def _reference_features(case: Case, centres: np.ndarray, used: list[str], progress: ProgressCallback | None,
                        max_samples: int = 300) -> tuple[np.ndarray, np.ndarray, str]:
    """pyradiomics on a lattice of sample voxels (slow reference path); returns (sample rows, values, note)."""
    from KiMapLib.features.extraction import features_at_voxel, pyradiomics_extractor

    classes = sorted({name.split("_original_")[1].split("_")[0] for name in used})
    extractor = pyradiomics_extractor(case.settings, classes)
    step = 1
    while len(centres[np.all(centres % step == 0, axis=1)]) > max_samples:
        step += 1
    samples = np.flatnonzero(np.all(centres % step == 0, axis=1))
    values = np.full((len(samples), len(used)), np.nan)
    for row, sample in enumerate(samples):
        report(progress, row / len(samples), "features (pyradiomics reference)")
        try:
            features = features_at_voxel(case, centres[sample][::-1], extractor)
        except KiMapError:
            continue
        values[row] = [features[name] for name in used]
    return samples, values, (f"pyradiomics reference at {len(samples)} lattice voxels (every {step} voxels), "
                             "ki67 interpolated linearly between them (nearest outside their hull)")


def region_features(case: Case, centres: np.ndarray, region: np.ndarray, used: list[str], method: str = "auto",
                    progress: ProgressCallback | None = None) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Features ``used`` at region voxels: (rows of ``centres`` computed, values, note, method used).

    ``method`` "engine" computes every voxel with the voxel-wise engine; "reference" runs pyradiomics on a
    lattice of voxels (interpolation is then needed); "auto" takes the engine when it is installed.
    """
    if method == "auto":
        try:
            import KiMapLib.features.featuremaps  # noqa: F401

            method = "engine"
        except ImportError:
            method = "reference"
    if method == "engine":
        values, note = _engine_features(case, centres, region, used, progress)
        return np.arange(len(centres)), values, note, method
    if method == "reference":
        sample_rows, values, note = _reference_features(case, centres, used, progress)
        return sample_rows, values, note, method
    raise KiMapError(f"unknown map method '{method}'", input_name="method", hint="use auto, engine or reference")


def compute_map(case: Case, model: KiMapModel, region: sitk.Image | None = None, covariates: dict | None = None,
                progress: ProgressCallback | None = None, method: str = "auto") -> MapResult:
    """ki67 and probability maps over ``region`` (or :func:`default_region`) on the exact t1c grid."""
    started = time.perf_counter()
    check_case_for_model(case, model)
    if region is None:
        region_array, region_note = default_region(case)
    else:
        region_array = sitk.GetArrayFromImage(check_region(region, case.reference)).astype(bool)
        region_note = "given region (labels > 0)"
    region_array &= case.foreground
    centres = np.stack(np.unravel_index(np.flatnonzero(region_array), region_array.shape), axis=1)  # argwhere
    if len(centres) == 0:
        raise KiMapError("the region has no voxel inside the image foreground", input_name="region")
    used = model.used_features
    report(progress, 0.0, f"features at {len(centres)} voxels")
    features_started = time.perf_counter()
    sample_rows, values, note, method = region_features(case, centres, region_array, used, method,
                                                        scaled(progress, 0.0, 0.9))
    features_seconds = time.perf_counter() - features_started

    row = {"sex": None, "age": None, "tumor_type": None, **(covariates or {})}
    matrix = np.repeat(design_matrix([row], model.input_features), len(sample_rows), axis=0)
    for column, name in enumerate(used):
        matrix[:, model.input_features.index(name)] = values[:, column]
    valid = np.isfinite(values).any(axis=1) if used else np.ones(len(sample_rows), bool)
    ki67_samples = np.full(len(sample_rows), np.nan)
    if valid.any():
        ki67_samples[valid] = model.predict_matrix(matrix[valid])[0]
    if method == "engine":
        ki67_values = ki67_samples
    else:
        ki67_values = _interpolate(centres[sample_rows][valid], ki67_samples[valid], centres)
    probability_values = model.probability(ki67_values)

    ki67 = np.full(region_array.shape, OUTSIDE_VALUE, dtype=np.float32)
    probability = np.full(region_array.shape, OUTSIDE_VALUE, dtype=np.float32)
    ki67[tuple(centres.T)] = ki67_values
    probability[tuple(centres.T)] = probability_values
    report(progress, 1.0, "map done")
    mapped = np.isfinite(ki67_values)
    summary = {
        "model_id": model.model_id,
        "threshold_percent": model.threshold_percent,
        "sequences": list(case.images),
        "region": region_note,
        "region_voxels": len(centres),
        "mapped_voxels": int(mapped.sum()),
        "unmapped_voxels_reason": "ball has fewer foreground voxels than min_ball_fraction",
        "outside_value": "NaN (not computed outside the region)",
        "method": note,
        "ki67_mean_percent": float(np.nanmean(ki67_values)) if mapped.any() else None,
        "fraction_high": float(np.nanmean(probability_values >= 0.5)) if mapped.any() else None,
        "covariates": {k: v for k, v in row.items() if v is not None},
        "notes": list(case.notes),
        "timings_s": {"features": round(features_seconds, 3), "total": round(time.perf_counter() - started, 3)},
        "research_use_only": True,
    }
    source = _series_reference(case.reference)
    if source:
        summary["t1c_source"] = source
    return MapResult(ki67=copy_geometry(ki67, case.reference), probability=copy_geometry(probability, case.reference),
                     region=copy_geometry(region_array.astype(np.uint8), case.reference), t1c=case.reference,
                     summary=summary)


def _series_reference(image: sitk.Image) -> dict | None:
    try:
        from KiMapLib.inputs.dicom import series_reference
    except ImportError:
        return None
    return series_reference(image)


def _interpolate(points: np.ndarray, values: np.ndarray, targets: np.ndarray) -> np.ndarray:
    from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator

    if len(points) == 0:
        return np.full(len(targets), np.nan)
    nearest = NearestNDInterpolator(points, values)(targets)
    if len(points) < 5:
        return nearest
    try:
        linear = LinearNDInterpolator(points, values)(targets)
    except Exception:  # degenerate (flat) point sets
        return nearest
    return np.where(np.isfinite(linear), linear, nearest)


def write_map_files(result: MapResult, folder: Path, formats: tuple[str, ...] = ("nrrd",), overlay: bool = True,
                    points_ijk: list | None = None) -> None:
    """Write maps, region, overlay and summary into an existing folder (no atomicity; see :func:`write_map`)."""
    from KiMapLib.maps.pictures import overlay as draw_overlay

    suffixes = {"nrrd": ".nrrd", "nifti": ".nii.gz"}
    unknown = [f for f in formats if f not in suffixes]
    if unknown:
        raise KiMapError(f"unknown format {unknown[0]}", input_name="--formats", hint="use nrrd and/or nifti")
    volumes = [(image, folder / f"{stem}{suffixes[fmt]}") for fmt in formats
               for image, stem in ((result.ki67, "ki67_map"), (result.probability, "ki67_probability"),
                                   (result.region, "region"))]
    with ThreadPoolExecutor(1) as writer:  # SimpleITK compresses and writes without the GIL, beside the overlay
        written = writer.submit(lambda: [sitk.WriteImage(image, str(path), useCompression=True)
                                         for image, path in volumes])
        if overlay:
            slice_k = draw_overlay(result.t1c, result.ki67, folder / "overlay.png", points_ijk=points_ijk,
                                   title=f"ki67 map ({result.summary.get('model_id')}) — research use only")
            result.summary["overlay_slice_k"] = slice_k
        written.result()
    (folder / "summary.json").write_text(json.dumps(result.summary, indent=2, default=str) + "\n")


def write_map(result: MapResult, out_dir: str | Path, formats: tuple[str, ...] = ("nrrd",), overlay: bool = True,
              points_ijk: list | None = None) -> Path:
    """Write the map folder atomically: on any failure the earlier folder stays as it was (KiMapLib.atomic)."""
    with atomic_directory(out_dir, "map") as staging:
        write_map_files(result, staging, formats, overlay, points_ijk)
    return Path(out_dir)
