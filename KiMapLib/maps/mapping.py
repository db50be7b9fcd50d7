"""Whole-tumor ki67 maps: features on the ball around every region voxel, then the model, on the t1c grid."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from KiMapLib.atomic import atomic_directory
from KiMapLib.errors import KiMapError
from KiMapLib.features.neighbourhood import ball_offsets, min_kernel_voxels, voxels_outside_coverage
from KiMapLib.inputs.case import Case
from KiMapLib.inputs.geometry import copy_geometry
from KiMapLib.model.bundle import KiMapModel, check_level
from KiMapLib.model.prediction import check_case_for_model
from KiMapLib.progress import ProgressCallback, report, scaled
from KiMapLib.region.tumour_region import TumourRegion, given_region, propose_region, require_plausible

OUTSIDE_VALUE = float("nan")
#: What a map holds per voxel (attributes of KiMapLib.model.bundle.Prediction).
MAP_QUANTITIES = ("ki67", "p_high", "lower", "upper", "ood")



@dataclass
class MapResult:
    """ki67 (%) and P(ki67 >= threshold) on the exact t1c grid, NaN outside the mapped region."""

    ki67: sitk.Image
    probability: sitk.Image
    region: sitk.Image
    t1c: sitk.Image
    summary: dict = field(default_factory=dict)
    labels: sitk.Image | None = None  # the tumour label map the region came from (BraTS labels), when known
    tumour: TumourRegion | None = None
    lower: sitk.Image | None = None  # the prediction interval's bounds (%), at summary["uncertainty"]["level"]
    upper: sitk.Image | None = None
    ood: sitk.Image | None = None  # out-of-domain score (> 1: the voxel's features lie outside the training data)


def _engine_features(case: Case, centres: np.ndarray, region: np.ndarray, used: list[str],
                     progress: ProgressCallback | None) -> tuple[np.ndarray, str]:
    """Used features at every centre voxel with the voxel-wise engine (same ball and settings as biopsies)."""
    from KiMapLib.features.featuremaps import feature_arrays

    settings = {**case.settings.pyradiomics_settings(), "ballRadius": case.settings.ball_radius_mm}
    full_ball = len(ball_offsets(case.reference.GetSpacing(), case.settings.ball_radius_mm))
    min_voxels = min_kernel_voxels(full_ball, case.settings.min_ball_fraction)
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


def outside_field_of_view(case: Case, centres: np.ndarray, sequences: list[str] | tuple[str, ...]
                           ) -> dict[str, np.ndarray]:
    """Sequence -> mask over ``centres`` of the voxels whose ball (within the foreground) leaves that sequence's
    field of view; only sequences with such voxels are listed."""
    offsets = ball_offsets(case.reference.GetSpacing(), case.settings.ball_radius_mm)
    outside = {}
    for sequence in sequences:
        uncovered = case.uncovered(sequence)
        if uncovered is not None:
            leaves = voxels_outside_coverage(uncovered, centres, offsets) > 0
            if leaves.any():
                outside[sequence] = leaves
    return outside


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


def tumour_region_for(case: Case, region: sitk.Image | TumourRegion | None, *, allow_t1c_only: bool = False,
                      exclude_labels: tuple[int, ...] = ()) -> TumourRegion:
    """The region a map covers: a given label map, a region already made, or the automatic proposal — which must pass
    its plausibility checks (else one line saying what to do; never a map on normal anatomy)."""
    if isinstance(region, TumourRegion):
        tumour = region
    elif region is not None:
        tumour = given_region(region, case.reference, "region", exclude_labels)
    else:
        tumour = propose_region(case)
    require_plausible(tumour, allow_t1c_only)
    if tumour.labels.shape != case.foreground.shape:
        raise KiMapError("the region is not on the t1c grid", input_name="region")
    return tumour


def compute_map(case: Case, model: KiMapModel, region: sitk.Image | TumourRegion | None = None,
                covariates: dict | None = None, progress: ProgressCallback | None = None, method: str = "auto", *,
                allow_t1c_only: bool = False, exclude_labels: tuple[int, ...] = (), level: float | None = None
                ) -> MapResult:
    """ki67 and probability maps over the viable tumour on the exact t1c grid.

    ``region``: a label image (every label > 0 mapped, except ``exclude_labels``), a :class:`TumourRegion`, or None
    for the automatic segmentation from every given sequence (its necrotic core is not mapped). The region is
    decided and checked before any feature is computed. ``level``: the prediction intervals' level (default: the
    model card's).
    """
    started = time.perf_counter()
    check_case_for_model(case, model)
    if level is not None:
        check_level(level)
    report(progress, 0.0, "tumour region")
    tumour = tumour_region_for(case, region, allow_t1c_only=allow_t1c_only, exclude_labels=exclude_labels)
    region_array = tumour.mapped & case.foreground
    region_note = ("automatic tumour segmentation (labels 2 and 3; necrotic core excluded)"
                   if tumour.source == "automatic" else "given region (labels > 0"
                   + (f", except {list(tumour.excluded_labels)})" if tumour.excluded_labels else ")"))
    if tumour.source.startswith("model:"):
        region_note = f"tumour segmentation by {tumour.source} (labels 2 and 3; necrotic core excluded)"
    centres = np.stack(np.unravel_index(np.flatnonzero(region_array), region_array.shape), axis=1)  # argwhere
    if len(centres) == 0:
        raise KiMapError("the region has no voxel inside the image foreground", input_name="region")
    used = model.used_features
    used_sequences = sorted({name.split("_", 1)[0] for name in used})
    outside = outside_field_of_view(case, centres, used_sequences)
    leaves_view = np.zeros(len(centres), dtype=bool)
    for leaves in outside.values():
        leaves_view |= leaves
    report(progress, 0.0, f"features at {len(centres)} voxels")
    features_started = time.perf_counter()
    sample_rows, values, note, method = region_features(case, centres, region_array, used, method,
                                                        scaled(progress, 0.0, 0.9))
    features_seconds = time.perf_counter() - features_started

    row = {"sex": None, "age": None, "tumor_type": None, **(covariates or {})}
    matrix = model.design_rows(row, len(sample_rows))  # the constant columns imputed once
    for column, name in enumerate(used):
        matrix[:, model.input_features.index(name)] = values[:, column]
    valid = np.isfinite(values).any(axis=1) if used else np.ones(len(sample_rows), bool)
    valid &= ~leaves_view[sample_rows]  # their features would come from padding
    quantities = {key: np.full(len(sample_rows), np.nan) for key in MAP_QUANTITIES}
    if valid.any():
        prediction = model.predict(matrix[valid], level)
        for key in MAP_QUANTITIES:
            quantities[key][valid] = getattr(prediction, key)
        level = prediction.level
    if method != "engine":
        quantities = {key: _interpolate(centres[sample_rows][valid], value[valid], centres)
                      for key, value in quantities.items()}
    for value in quantities.values():
        value[leaves_view] = np.nan  # not interpolated either
    images = {}
    for key, value in quantities.items():
        volume = np.full(region_array.shape, OUTSIDE_VALUE, dtype=np.float32)
        volume[tuple(centres.T)] = value
        images[key] = copy_geometry(volume, case.reference)
    ki67_values, probability_values = quantities["ki67"], quantities["p_high"]
    report(progress, 1.0, "map done")
    mapped = np.isfinite(ki67_values)
    summary = {
        "model_id": model.model_id,
        "threshold_percent": model.threshold_percent,
        "sequences": list(case.images),
        "sequence_use": _sequence_use(case, model, tumour),
        "region": region_note,
        "tumour_region": tumour.summary(case.reference.GetSpacing()),
        "region_voxels": len(centres),
        "mapped_voxels": int(mapped.sum()),
        "unmapped_voxels_reason": ("ball has fewer foreground voxels than min_ball_fraction (and at least 7), or "
                                   "leaves the field of view of a sequence the model uses"),
        "unmapped_voxels_outside_field_of_view": int(leaves_view.sum()),
        "unmapped_voxels_outside_field_of_view_by_sequence": {name: int(leaves.sum())
                                                              for name, leaves in outside.items()},
        "outside_value": "NaN (not computed outside the region"
                         + ("; the necrotic core is NaN too" if 1 in tumour.excluded_labels else "")
                         + ("; excluded labels are NaN too" if set(tumour.excluded_labels) - {1} else "") + ")",
        "method": note,
        "ki67_mean_percent": float(np.nanmean(ki67_values)) if mapped.any() else None,
        "fraction_high": float(np.nanmean(probability_values >= 0.5)) if mapped.any() else None,
        "uncertainty": uncertainty_summary(model, quantities, level),
        "covariates": {k: v for k, v in row.items() if v is not None},
        "notes": list(case.notes),
        "timings_s": {"features": round(features_seconds, 3), "total": round(time.perf_counter() - started, 3)},
        "research_use_only": True,
    }
    source = _series_reference(case.reference)
    if source:
        summary["t1c_source"] = source
    has_intervals = np.isfinite(quantities["lower"]).any()
    has_domain = np.isfinite(quantities["ood"]).any()
    return MapResult(ki67=images["ki67"], probability=images["p_high"],
                     region=copy_geometry(region_array.astype(np.uint8), case.reference), t1c=case.reference,
                     summary=summary, labels=tumour.label_image(case.reference), tumour=tumour,
                     lower=images["lower"] if has_intervals else None, upper=images["upper"] if has_intervals else None,
                     ood=images["ood"] if has_domain else None)


def uncertainty_summary(model: KiMapModel, quantities: dict[str, np.ndarray], level: float | None) -> dict:
    """How sure the map is: the interval level and the spread of its width over the mapped voxels, and how many
    voxels are out of domain (their features outside the training biopsies')."""
    width = quantities["upper"] - quantities["lower"]
    finite = width[np.isfinite(width)]
    if finite.size == 0:
        return {"intervals": None, "out_of_domain": None,
                "note": f"model {model.model_id} has no prediction intervals or domain (trained before KiMap 0.4)"}
    ood = quantities["ood"][np.isfinite(quantities["ood"])]
    percentiles = dict(zip(("p05", "p25", "median", "p75", "p95"),
                           (round(float(v), 3) for v in np.percentile(finite, [5, 25, 50, 75, 95])), strict=True))
    return {
        "intervals": {"level": level, "files": ["ki67_lower", "ki67_upper"],
                      "width_percent": {**percentiles, "mean": round(float(finite.mean()), 3),
                                        "sd": round(float(finite.std()), 3)},
                      "method": model.card["uncertainty"]["method"]},
        "out_of_domain": None if ood.size == 0 else {
            "file": "out_of_domain", "score": "Mahalanobis distance / the model's threshold (> 1: out of domain)",
            "threshold_distance": model.domain_threshold,
            "voxels": int((ood > 1.0).sum()), "fraction": round(float((ood > 1.0).mean()), 4),
            "score_median": round(float(np.median(ood)), 3)},
    }


def _sequence_use(case: Case, model: KiMapModel, tumour: TumourRegion) -> dict[str, list[str]]:
    """Which given sequence served what: the model's features, the tumour region and its plausibility checks, and
    the input checks (read, checked, aligned, field of view) that every given sequence goes through."""
    return {"model": [s for s in case.images if s in model.required_sequences],
            "tumour_region": list(tumour.method.get("sequences", [])) if tumour.source != "given" else [],
            "checked_and_aligned": list(case.images)}


def _series_reference(image: sitk.Image) -> dict | None:
    """The t1c's DICOM source-series link, if it was read from DICOM (without importing pydicom otherwise)."""
    if not image.HasMetaDataKey("0020|000e"):  # the key series_reference needs (a NIfTI/NRRD volume has none)
        return None
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
                    points_ijk: list | None = None, point_labels: list[str] | None = None) -> None:
    """Write maps, region, overlay and summary into an existing folder (no atomicity; see :func:`write_map`)."""
    from KiMapLib.maps.pictures import overlay as draw_overlay
    from KiMapLib.maps.pictures import uncertainty_picture

    suffixes = {"nrrd": ".nrrd", "nifti": ".nii.gz"}
    unknown = [f for f in formats if f not in suffixes]
    if unknown:
        raise KiMapError(f"unknown format {unknown[0]}", input_name="--formats", hint="use nrrd and/or nifti")
    volumes = [(image, folder / f"{stem}{suffixes[fmt]}") for fmt in formats
               for image, stem in ((result.ki67, "ki67_map"), (result.probability, "ki67_probability"),
                                   (result.lower, "ki67_lower"), (result.upper, "ki67_upper"),
                                   (result.ood, "out_of_domain"), (result.region, "region"),
                                   (result.labels, "tumour_labels")) if image is not None]
    with ThreadPoolExecutor(1) as writer:  # SimpleITK compresses and writes without the GIL, beside the overlay
        written = writer.submit(lambda: [sitk.WriteImage(image, str(path), useCompression=True)
                                         for image, path in volumes])
        if overlay:
            result.summary["overlay_slices"] = draw_overlay(
                result.t1c, result.ki67, folder / "overlay.png", region=result.region, points_ijk=points_ijk,
                point_labels=point_labels, out_of_domain=result.ood,
                title=f"ki67 map ({result.summary.get('model_id')}) — research use only")
            if result.lower is not None:
                level = result.summary["uncertainty"]["intervals"]["level"]
                uncertainty_picture(result.t1c, result.lower, result.upper, folder / "uncertainty.png",
                                    region=result.region, out_of_domain=result.ood, points_ijk=points_ijk,
                                    point_labels=point_labels, level=level,
                                    title=f"how sure: interval width ({result.summary.get('model_id')})")
        written.result()
    (folder / "summary.json").write_text(json.dumps(result.summary, indent=2, default=str) + "\n")


def write_map(result: MapResult, out_dir: str | Path, formats: tuple[str, ...] = ("nrrd",), overlay: bool = True,
              points_ijk: list | None = None, point_labels: list[str] | None = None) -> Path:
    """Write the map folder atomically: on any failure the earlier folder stays as it was (KiMapLib.atomic)."""
    with atomic_directory(out_dir, "map") as staging:
        write_map_files(result, staging, formats, overlay, points_ijk, point_labels)
    return Path(out_dir)
