"""The tumour region of a case: the automatic proposal or a given label map, its labels, and the plausibility gate.

Labels follow the BraTS convention on the exact t1c grid: 1 necrotic core, 2 oedema / non-enhancing tumour,
3 enhancing tumour; the whole tumour is 1 + 2 + 3. The map covers viable tumour (labels 2 and 3): ki67 of necrotic
tissue is not a proliferation estimate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from KiMapLib.errors import KiMapError
from KiMapLib.inputs.case import Case
from KiMapLib.inputs.geometry import (
    copy_geometry,
    from_lps,
    lps_axes,
    to_lps,
)
from KiMapLib.inputs.images import label_on_grid
from KiMapLib.region.segmentation import SEQUENCES as SEGMENTATION_SEQUENCES
from KiMapLib.region.segmentation import T1C_ONLY_PROBLEM, segment_tumour

NECROTIC, OEDEMA, ENHANCING = 1, 2, 3
LABEL_NAMES = {NECROTIC: "necrotic core", OEDEMA: "oedema / non-enhancing tumour", ENHANCING: "enhancing tumour"}
#: RGB (0-1) of each label, shared by the QC picture, the Slicer segments and the web view.
LABEL_COLORS = {NECROTIC: (0.35, 0.55, 1.0), OEDEMA: (1.0, 0.85, 0.1), ENHANCING: (1.0, 0.15, 0.15)}
MAPPED_LABELS = (OEDEMA, ENHANCING)
NECROSIS_REASON = "necrotic core (label 1) excluded: ki67 of necrotic tissue is not a proliferation estimate"
WHAT_TO_DO = ("give the tumour region yourself (--region LABEL_FILE, or draw it in the Segment Editor), "
              "or add FLAIR and T2 (and t1) so the automatic region has the evidence it needs")


@dataclass
class TumourRegion:
    """A label map on the t1c grid (uint8, z y x) and what made it."""

    labels: np.ndarray
    source: str  # "automatic", "given" or "model:<model id>" (a user's segmentation model)
    method: dict = field(default_factory=dict)
    qc: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    excluded_labels: tuple[int, ...] = ()

    @property
    def mapped(self) -> np.ndarray:
        """The voxels the map covers: every label except the excluded ones."""
        mapped = self.labels > 0
        for label in self.excluded_labels:  # a label at a time: no np.isin over the whole grid
            mapped &= self.labels != label
        return mapped

    def label_image(self, reference: sitk.Image) -> sitk.Image:
        return copy_geometry(self.labels.astype(np.uint8), reference)

    def summary(self, spacing: Iterable[float]) -> dict:
        """What ``summary.json`` records of the region: source, method, QC numbers, voxels per label, exclusions."""
        ml = float(np.prod(list(spacing))) / 1000.0
        counts = {LABEL_NAMES.get(int(v), f"label {int(v)}"): int((self.labels == v).sum())
                  for v in np.unique(self.labels) if v > 0}
        excluded = {LABEL_NAMES.get(v, f"label {v}"): int((self.labels == v).sum()) for v in self.excluded_labels}
        return {"source": self.source, "method": self.method, "qc": self.qc, "problems": list(self.problems),
                "voxels_per_label": counts, "mapped_voxels": int(self.mapped.sum()),
                "mapped_volume_ml": round(float(self.mapped.sum()) * ml, 2), "excluded": excluded,
                "excluded_reason": NECROSIS_REASON if NECROTIC in self.excluded_labels else None}


def propose_region(case: Case) -> TumourRegion:
    """The automatic tumour segmentation from whatever of t1, t1c, t2 and flair the case holds.

    The arrays are put in LPS axis order first (an exact transpose and flip of array axes, undone afterwards), so that
    left and right lie along the last array axis for the asymmetry evidence, whatever the acquisition order.
    """
    names = [name for name in SEGMENTATION_SEQUENCES if name in case.images]
    order, flips, spacing = lps_axes(case.reference)
    arrays = {name: to_lps(sitk.GetArrayViewFromImage(case.images[name]), order, flips) for name in names}
    # a sequence's padding (outside its field of view) would read as normal brain: keep to what every one covers
    brain = case.foreground.copy()
    for name in names:
        if name in case.coverage:
            brain &= case.coverage[name]
    try:
        result = segment_tumour(arrays, spacing, to_lps(brain, order, flips))
    except ValueError as error:  # no usable sequence or foreground: one line, not a traceback
        raise KiMapError(str(error), input_name="tumour region", hint=WHAT_TO_DO) from error
    labels = from_lps(result.labels, order, flips).astype(np.uint8)
    method = {**result.method, "sequences": names}
    return TumourRegion(labels=labels, source="automatic", method=method, qc=result.qc,
                        problems=list(result.problems), excluded_labels=(NECROTIC,))


def given_region(region: sitk.Image, reference: sitk.Image, name: str = "region",
                 exclude_labels: Iterable[int] = ()) -> TumourRegion:
    """A user's label map on the t1c grid (nearest-neighbour resampling when it lies on another grid).

    Every voxel > 0 is mapped, except ``exclude_labels`` (e.g. 1 for a BraTS necrotic core). A given region is the
    user's decision: KiMap does not guess which of its labels is necrosis.
    """
    region = label_on_grid(region, reference, name)
    values = sitk.GetArrayFromImage(region)
    whole = np.isfinite(values).all() and np.all(values == np.round(values))
    if not whole or values.min() < 0 or values.max() > 255:
        raise KiMapError("is not a label map (labels must be whole numbers 0-255)", input_name=name,
                         hint="give a label volume: 0 outside, tumour labels > 0")
    labels = values.astype(np.uint8)
    excluded = tuple(sorted({int(v) for v in exclude_labels}))
    result = TumourRegion(labels=labels, source="given", method={"name": "given label map", "input": name},
                          excluded_labels=excluded)
    if not result.mapped.any():
        raise KiMapError("the region is empty (no voxel > 0 outside the excluded labels)", input_name=name,
                         hint="give a non-empty tumour label")
    return result


def require_plausible(region: TumourRegion, allow_t1c_only: bool = False) -> None:
    """Refuse, with one line saying what to do, an automatic or model's region that failed its plausibility checks.

    ``allow_t1c_only`` accepts the t1c-only proposal the user asked for explicitly; every other check still holds.
    """
    if region.source == "given":
        return
    what = "the automatic tumour region" if region.source == "automatic" else f"the tumour region of {region.source}"
    problems = [p for p in region.problems if not (allow_t1c_only and p.startswith(T1C_ONLY_PROBLEM))]
    if problems:
        raise KiMapError(f"{what} is not plausible ({'; '.join(problems)})",
                         input_name="tumour region", hint=WHAT_TO_DO)
    if not region.mapped.any():
        raise KiMapError(f"{what} holds no viable tumour (labels 2 or 3)",
                         input_name="tumour region", hint=WHAT_TO_DO)

