"""A case: the sequences of one patient aligned on the t1c grid, normalized, with their foreground."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from KiMapLib.errors import ModelError
from KiMapLib.inputs.images import align_to_t1c
from KiMapLib.inputs.normalization import foreground_mask, zscore
from KiMapLib.settings import ExtractionSettings


@dataclass
class Case:
    """Normalized sequences on the t1c grid. ``reference`` carries the geometry of every output."""

    reference: sitk.Image
    images: dict[str, sitk.Image]
    foreground: np.ndarray
    settings: ExtractionSettings
    notes: list[str] = field(default_factory=list)

    @property
    def sequences(self) -> tuple[str, ...]:
        return tuple(self.images)


def prepare_case(volumes: dict[str, sitk.Image], settings: ExtractionSettings | None = None,
                 required: tuple[str, ...] | list[str] | None = None,
                 foreground: np.ndarray | None = None) -> Case:
    """Validate, align onto the t1c grid and normalize the given sequences.

    ``required`` (from a model card) lists sequences that must be present. Every given sequence is kept, whether
    or not the model uses it: the tumour region and the quality checks use them all.
    """
    settings = settings or ExtractionSettings()
    if required is not None:
        missing = [name for name in required if name not in volumes]
        if missing:
            raise ModelError(f"the model needs {', '.join(required)} but {', '.join(missing)} was not given",
                             input_name=missing[0], hint=f"add --volume {missing[0]}=PATH or choose another model")
    aligned, notes = align_to_t1c(volumes)
    reference = aligned["t1c"]
    if foreground is None:
        foreground = foreground_mask(reference)
    with ThreadPoolExecutor(len(aligned)) as pool:  # numpy and SimpleITK copy and convert without the GIL
        jobs = {name: pool.submit(zscore, image, foreground, settings.normalize_scale, name)
                for name, image in aligned.items()}
        images = {name: job.result() for name, job in jobs.items()}  # the first failure (in input order) is raised
    return Case(reference=volumes["t1c"], images=images, foreground=foreground, settings=settings, notes=notes)
