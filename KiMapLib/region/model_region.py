"""The tumour region from a user's segmentation model: the case onto the model's grid, the model, labels back.

Each input sequence is normalized as the card says (on the t1c grid, inside the brain foreground), resampled
linearly onto an axis-aligned grid of the model's spacing and orientation that covers the brain, and ordered into
the model's tensor axes; the BraTS labels the model gives come back onto the exact t1c grid by nearest neighbour.
The result is a :class:`TumourRegion` like the automatic one (``source = "model:<id>"``, necrotic core not mapped),
checked by :func:`require_plausible`: a model that finds no viable tumour, or an implausibly large one, is refused.
"""

from __future__ import annotations

import time

import numpy as np
import SimpleITK as sitk

from KiMapLib.errors import KiMapError, ModelError
from KiMapLib.inputs.case import Case
from KiMapLib.inputs.geometry import copy_geometry, grid_description, same_grid
from KiMapLib.inputs.images import align_to_t1c
from KiMapLib.progress import ProgressCallback, report, scaled
from KiMapLib.region.onnx_model import SegmentationModel
from KiMapLib.region.segmentation import DEFAULTS
from KiMapLib.region.tumour_region import ENHANCING, NECROTIC, OEDEMA, TumourRegion

#: Direction matrix (LPS physical frame, columns = index axes i, j, k) of each orientation a card may name.
ORIENTATIONS = {"LPS": np.eye(3), "RAS": np.diag([-1.0, -1.0, 1.0])}


def model_region(case: Case, model: SegmentationModel, volumes: dict[str, sitk.Image] | None = None,
                 progress: ProgressCallback | None = None) -> TumourRegion:
    """The tumour region the segmentation model gives for ``case`` (BraTS labels on the exact t1c grid).

    ``volumes``: the sequences as read (before KiMap's normalization), needed only by inputs with normalization
    "none"; every other normalization is computed from the case (a z-score of a z-score is the same z-score).
    """
    started = time.perf_counter()
    missing = [name for name in model.sequences if name not in case.images]
    if missing:
        raise ModelError(f"the segmentation model {model.model_id} needs {', '.join(model.sequences)} but "
                         f"{missing[0]} was not given", input_name=missing[0],
                         hint=f"add --volume {missing[0]}=PATH (in Slicer: choose its volume), or use another model")
    raw = _raw_on_t1c(case, model, volumes)
    geometry = model.card["geometry"]
    grid = model_grid(case.reference, case.foreground, geometry["spacing_mm"], geometry["orientation"])
    report(progress, 0.0, "segmentation model: inputs")
    channels = []
    for item in model.card["inputs"]:
        name = item["sequence"]
        source = raw[name] if item["normalization"] == "none" else sitk.GetArrayViewFromImage(case.images[name])
        values = normalized(np.asarray(source, np.float64), case.foreground, item["normalization"], name)
        channels.append(to_tensor_axes(onto_grid(copy_geometry(values.astype(np.float32), case.reference), grid,
                                                 sitk.sitkLinear), geometry["axes"]))
    tensor = np.stack(channels).astype(model.input_dtype)
    labels_tensor, windows = model.segment(tensor, scaled(progress, 0.05, 0.95))
    labels_grid = copy_geometry(from_tensor_axes(labels_tensor, geometry["axes"]), grid)
    labels = sitk.GetArrayFromImage(onto_grid(labels_grid, case.reference, sitk.sitkNearestNeighbor)).astype(np.uint8)
    labels[~case.foreground] = 0
    report(progress, 1.0, "segmentation model: done")
    qc, problems = _quality(labels, case)
    qc.update(model_grid=grid_description(grid), windows=windows, seconds=round(time.perf_counter() - started, 2))
    method = {**model.describe(), "sequences": list(model.sequences)}
    return TumourRegion(labels=labels, source=f"model:{model.model_id}", method=method, qc=qc, problems=problems,
                        excluded_labels=(NECROTIC,))


def _raw_on_t1c(case: Case, model: SegmentationModel, volumes: dict[str, sitk.Image] | None) -> dict[str, np.ndarray]:
    """The sequences the card wants as given ("none"), on the t1c grid."""
    wanted = [item["sequence"] for item in model.card["inputs"] if item["normalization"] == "none"]
    if not wanted:
        return {}
    if volumes is None or any(name not in volumes for name in wanted):
        raise KiMapError(f"the segmentation model {model.model_id} reads {', '.join(wanted)} as given (normalization "
                         "none), but only normalized images were passed", input_name="segmentation model",
                         hint="pass the volumes as read (volumes=...) to model_region")
    aligned, _, _ = align_to_t1c({name: volumes[name] for name in {"t1c", *wanted}})
    return {name: sitk.GetArrayFromImage(aligned[name]) for name in wanted}


def normalized(values: np.ndarray, foreground: np.ndarray, how: str, name: str) -> np.ndarray:
    """One sequence normalized as a card says; brain-based ones are 0 outside the foreground."""
    if how == "none":
        return values
    inside = values[foreground]
    if how == "zscore-brain":
        low, high = inside.mean(), inside.mean() + inside.std()
    elif how == "minmax-1-99":
        low, high = np.percentile(inside, [1.0, 99.0])
    elif how == "minmax-brain":
        low, high = inside.min(), inside.max()
    else:  # the card's schema allows no other
        raise KiMapError(f"unknown normalization '{how}'", input_name=name)
    if not np.isfinite(high - low) or high - low <= 0:
        raise KiMapError("has constant intensity inside the brain", input_name=name,
                         hint="check that the right volume was given")
    out = (values - low) / (high - low)
    if how != "zscore-brain":
        out = np.clip(out, 0.0, 1.0)
    out[~foreground] = 0.0
    return out


def model_grid(reference: sitk.Image, foreground: np.ndarray, spacing: list[float], orientation: str) -> sitk.Image:
    """An axis-aligned grid of the model's spacing and orientation covering the foreground's voxel centres.

    Lattice-aligned with the t1c where that is possible: a t1c already on such a grid gives the very same grid
    (no interpolation at all)."""
    direction = ORIENTATIONS[orientation]
    kji = np.nonzero(foreground)
    low = [int(a.min()) for a in kji][::-1]  # i, j, k
    high = [int(a.max()) for a in kji][::-1]
    corners = [reference.TransformIndexToPhysicalPoint([(lo, hi)[b] for lo, hi, b in zip(low, high, bits,
                                                                                          strict=True)])
               for bits in np.ndindex(2, 2, 2)]
    coordinates = np.asarray(corners) @ direction  # in the model frame
    start, stop = coordinates.min(axis=0), coordinates.max(axis=0)
    spacing = np.asarray(spacing, float)
    size = np.ceil((stop - start) / spacing - 1e-6).astype(int) + 1
    grid = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin((direction @ start).tolist())
    return grid


def onto_grid(image: sitk.Image, grid: sitk.Image, interpolator: int) -> sitk.Image:
    """``image`` on ``grid`` (the same image when the grids coincide: no interpolation)."""
    if same_grid(image, grid):
        copy = sitk.Image(image)
        copy.CopyInformation(grid)
        return copy
    return sitk.Resample(image, grid, sitk.Transform(), interpolator, 0.0, image.GetPixelID())


def to_tensor_axes(image: sitk.Image, axes: str) -> np.ndarray:
    array = sitk.GetArrayFromImage(image)  # k, j, i
    return np.ascontiguousarray(array if axes == "zyx" else array.transpose(2, 1, 0))


def from_tensor_axes(array: np.ndarray, axes: str) -> np.ndarray:
    return np.ascontiguousarray(array if axes == "zyx" else array.transpose(2, 1, 0))


def _quality(labels: np.ndarray, case: Case) -> tuple[dict, list[str]]:
    """Volumes per label, and the problems that refuse the region: no viable tumour, or an implausibly large one.

    The classical method's symmetry and brain-surface checks are not applied: they catch its own failure (bright
    symmetric normal anatomy), while a trained model may rightly segment a bilateral or cortical tumour."""
    voxel_ml = float(np.prod(case.reference.GetSpacing())) / 1000.0
    whole_ml = float((labels > 0).sum()) * voxel_ml
    brain_ml = float(case.foreground.sum()) * voxel_ml
    qc = {"volume_ml": {f"label{k}": round(float((labels == k).sum()) * voxel_ml, 2)
                        for k in (NECROTIC, OEDEMA, ENHANCING)},
          "whole_tumour_ml": round(whole_ml, 2), "brain_ml": round(brain_ml, 1)}
    problems = []
    if not np.isin(labels, (OEDEMA, ENHANCING)).any():
        problems.append("the model found no viable tumour (labels 2 or 3)")
    largest = min(DEFAULTS["max_volume_ml"], DEFAULTS["max_brain_fraction"] * brain_ml)
    if whole_ml > largest:
        problems.append(f"the model's tumour of {whole_ml:.0f} ml is implausibly large (more than {largest:.0f} ml; "
                        "check the card's inputs and normalization)")
    return qc, problems
