"""A case: the sequences of one patient aligned on the t1c grid, normalized, with their foreground."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from KiMapLib.errors import GeometryError, KiMapError, ModelError
from KiMapLib.inputs.bias_correction import BIAS_CORRECTED_SEQUENCES, n4_correct
from KiMapLib.inputs.geometry import check_ball_grid
from KiMapLib.inputs.images import align_to_t1c
from KiMapLib.inputs.normalization import foreground_mask, zscore
from KiMapLib.limits import check_memory
from KiMapLib.settings import ExtractionSettings

#: Bytes per t1c voxel and sequence while a case is prepared: the float32 copy on the t1c grid, the float64
#: normalized values, the foreground sample and the float64 result (the sequences are normalized side by side).
CASE_BYTES_PER_VOXEL_PER_SEQUENCE = 28
#: More bytes per voxel and sequence with N4: the float32 input, its log bias field and the float64 corrected copy.
N4_BYTES_PER_VOXEL_PER_SEQUENCE = 16


@dataclass
class Case:
    """Normalized sequences on the t1c grid. ``reference`` carries the geometry of every output.

    ``coverage`` holds, for each sequence whose field of view does not cover the whole t1c grid, the [k, j, i]
    mask of the t1c voxels it covers; its values elsewhere are padding, so a ball that reaches a foreground voxel
    outside it gets no features of that sequence (:meth:`uncovered`).
    """

    reference: sitk.Image
    images: dict[str, sitk.Image]
    foreground: np.ndarray
    settings: ExtractionSettings
    notes: list[str] = field(default_factory=list)
    coverage: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def sequences(self) -> tuple[str, ...]:
        return tuple(self.images)

    def uncovered(self, sequence: str) -> np.ndarray | None:
        """Foreground voxels [k, j, i] outside ``sequence``'s field of view, or None when there are none."""
        inside = self.coverage.get(sequence)
        if inside is None:
            return None
        outside = self.foreground & ~inside
        return outside if outside.any() else None


def normalized(image: sitk.Image, mask: np.ndarray, settings: ExtractionSettings, name: str) -> sitk.Image:
    """One sequence as the features see it: bias-corrected when the settings say so (weighted sequences only),
    then z-scored inside ``mask`` and scaled."""
    if settings.bias_correction == "n4" and name in BIAS_CORRECTED_SEQUENCES:
        image = n4_correct(image, mask, shrink_factor=settings.n4_shrink_factor, iterations=settings.n4_iterations,
                           fitting_levels=settings.n4_fitting_levels, name=name)
    return zscore(image, mask, settings.normalize_scale, name)


def prepare_case(volumes: dict[str, sitk.Image], settings: ExtractionSettings | None = None,
                 required: tuple[str, ...] | list[str] | None = None,
                 foreground: np.ndarray | None = None) -> Case:
    """Validate, align onto the t1c grid, bias-correct (``settings.bias_correction``) and normalize the given
    sequences. The foreground comes from the t1c as given (before any bias correction).

    ``required`` (from a model card) lists sequences that must be present. Every given sequence is kept, whether
    or not the model uses it: the tumour region and the quality checks use them all.
    """
    settings = settings or ExtractionSettings()
    if required is not None:
        missing = [name for name in required if name not in volumes]
        if missing:
            raise ModelError(f"the model needs {', '.join(required)} but {', '.join(missing)} was not given",
                             input_name=missing[0], hint=f"add --volume {missing[0]}=PATH or choose another model")
    if "t1c" in volumes:  # before anything is resampled: the ball must fit the grid, the case the memory budget
        check_ball_grid(volumes["t1c"].GetSpacing(), settings.ball_radius_mm, "t1c")
        voxels = float(np.prod([float(s) for s in volumes["t1c"].GetSize()]))
        per_sequence = CASE_BYTES_PER_VOXEL_PER_SEQUENCE + (
            N4_BYTES_PER_VOXEL_PER_SEQUENCE if settings.bias_correction == "n4" else 0)
        check_memory(voxels * (per_sequence * len(volumes) + 2),
                     f"{len(volumes)} sequence(s) on the t1c grid ({'x'.join(map(str, volumes['t1c'].GetSize()))} "
                     "voxels)", "t1c")
    aligned, notes, coverage = align_to_t1c(volumes)
    reference = aligned["t1c"]
    if foreground is None:
        foreground = foreground_mask(reference)
    if foreground.shape != reference.GetSize()[::-1]:
        raise KiMapError(f"foreground of shape {foreground.shape} is not on the t1c grid", input_name="foreground")
    # a sequence's statistics come from the foreground it covers: its padding must not shift its normalization
    masks = {name: foreground & coverage[name] if name in coverage else foreground for name in aligned}
    for name, mask in masks.items():
        if mask.sum() < 27:
            raise GeometryError("its field of view covers almost none of the t1c foreground (fewer than 27 voxels)",
                                input_name=name, hint="give coregistered volumes that cover the brain")
    with ThreadPoolExecutor(len(aligned)) as pool:  # numpy and SimpleITK copy and convert without the GIL
        jobs = {name: pool.submit(normalized, image, masks[name], settings, name)
                for name, image in aligned.items()}
        images = {name: job.result() for name, job in jobs.items()}  # the first failure (in input order) is raised
    return Case(reference=volumes["t1c"], images=images, foreground=foreground, settings=settings, notes=notes,
                coverage=coverage)
