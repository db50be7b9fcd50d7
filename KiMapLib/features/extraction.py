"""Per-biopsy radiomics: pyradiomics on the ball around each point, one row of the cohort table per biopsy."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from KiMapLib.errors import BiopsyError, FieldOfViewError, KiMapError
from KiMapLib.features.neighbourhood import (
    MIN_KERNEL_VOXELS,
    ball_offsets,
    min_kernel_voxels,
    voxels_outside_coverage,
)
from KiMapLib.inputs.biopsies import Biopsy
from KiMapLib.inputs.case import Case
from KiMapLib.inputs.geometry import nearest_voxel
from KiMapLib.progress import ProgressCallback, report
from KiMapLib.settings import ExtractionSettings


def pyradiomics_extractor(settings: ExtractionSettings, classes: Sequence[str] | None = None):
    """A pyradiomics extractor with KiMap's settings and the requested feature classes enabled."""
    try:
        from radiomics import featureextractor, setVerbosity
    except ImportError:
        raise KiMapError("pyradiomics is not installed", input_name="pyradiomics",
                         hint="install the SlicerRadiomics extension in Slicer, or `pip install "
                              "pyradiomics-bhklab==3.1.4` elsewhere") from None
    setVerbosity(logging.ERROR)
    extractor = featureextractor.RadiomicsFeatureExtractor(**settings.pyradiomics_settings())
    extractor.disableAllFeatures()
    for name in classes or settings.feature_classes:
        extractor.enableFeatureClassByName(name)
    return extractor


def pyradiomics_version() -> str:
    try:
        import radiomics
    except ImportError:
        return "not installed"
    return str(radiomics.__version__)


def ball_region(case: Case, center_ijk: Sequence[int]) -> tuple[sitk.Image, list[int], int]:
    """Crop of the ball's bounding box around ``center_ijk``: (mask image, crop start ijk, voxel count).

    The mask is the ball intersected with the foreground; the centre must be a foreground voxel.
    """
    spacing = case.reference.GetSpacing()
    offsets = ball_offsets(spacing, case.settings.ball_radius_mm)
    points = offsets + np.asarray(center_ijk)[::-1]
    shape = np.asarray(case.foreground.shape)
    points = points[np.all((points >= 0) & (points < shape), axis=1)]
    points = points[case.foreground[points[:, 0], points[:, 1], points[:, 2]]]
    lower, upper = points.min(axis=0), points.max(axis=0) + 1
    mask = np.zeros(tuple(upper - lower), dtype=np.uint8)
    local = points - lower
    mask[local[:, 0], local[:, 1], local[:, 2]] = 1
    mask_image = sitk.GetImageFromArray(mask)
    start_ijk = [int(v) for v in lower[::-1]]
    reference = sitk.RegionOfInterest(case.reference, [int(v) for v in (upper - lower)[::-1]], start_ijk)
    mask_image.CopyInformation(reference)
    return mask_image, start_ijk, len(points)


def ball_outside_field_of_view(case: Case, center_ijk: Sequence[int]) -> dict[str, int]:
    """Sequence -> number of foreground voxels of the ball around ``center_ijk`` outside that sequence's field of view
    (only sequences the ball leaves are listed; their resampled values there are padding)."""
    offsets = ball_offsets(case.reference.GetSpacing(), case.settings.ball_radius_mm)
    centre = np.asarray(center_ijk, dtype=np.int64)[::-1].reshape(1, 3)
    outside = {}
    for sequence in case.images:
        uncovered = case.uncovered(sequence)
        if uncovered is not None:
            count = int(voxels_outside_coverage(uncovered, centre, offsets)[0])
            if count:
                outside[sequence] = count
    return outside


def features_at_voxel(case: Case, center_ijk: Sequence[int], extractor=None, what: str = "point",
                      outside: dict[str, int] | None = None,
                      sequences: Sequence[str] | None = None) -> dict[str, float]:
    """All features of ``sequences`` (default: every sequence of the case) on the ball around one voxel, keyed
    ``<sequence>_original_<class>_<name>``.

    Sequences whose field of view the ball leaves (``outside``, by default :func:`ball_outside_field_of_view`) get
    NaN for every feature: their values there are padding, not image.
    """
    settings = case.settings
    full_ball = len(ball_offsets(case.reference.GetSpacing(), settings.ball_radius_mm))
    k, j, i = (int(v) for v in center_ijk[::-1])
    if not case.foreground[k, j, i]:
        raise BiopsyError("lies in the image background (outside the brain foreground)", input_name=what,
                          hint="check the point's coordinates (RAS mm) and the volume")
    mask, start, count = ball_region(case, center_ijk)
    needed = min_kernel_voxels(full_ball, settings.min_ball_fraction)
    if count < needed:
        raise BiopsyError(f"only {count} of {full_ball} ball voxels are foreground (needs {needed}: "
                          f"{settings.min_ball_fraction:.0%} of the ball and at least {MIN_KERNEL_VOXELS})",
                          input_name=what,
                          hint="the point is too close to the image or brain edge")
    if outside is None:
        outside = ball_outside_field_of_view(case, center_ijk)
    extractor = extractor or pyradiomics_extractor(settings)
    wanted = tuple(sequences or case.sequences)
    by_sequence: dict[str, dict[str, float]] = {}
    for sequence in wanted:
        image = case.images[sequence]
        if sequence in outside:
            continue
        crop = sitk.RegionOfInterest(image, mask.GetSize(), start)
        result = extractor.execute(crop, mask)
        by_sequence[sequence] = {key: float(value) for key, value in result.items() if key.startswith("original_")}
    keys = next(iter(by_sequence.values())) if by_sequence else {}
    features: dict[str, float] = {}
    for sequence in wanted:  # columns in the case's sequence order, missing ones included
        values = by_sequence.get(sequence, dict.fromkeys(keys, float("nan")))
        features.update({f"{sequence}_{key}": value for key, value in values.items()})
    return features


def biopsy_voxel(case: Case, biopsy: Biopsy) -> tuple[int, int, int]:
    """The (i, j, k) voxel containing the biopsy point, or a BiopsyError naming it."""
    index = nearest_voxel(case.reference, biopsy.ras)
    if index is None:
        r, a, s = biopsy.ras
        raise BiopsyError(f"point ({r:.1f}, {a:.1f}, {s:.1f}) RAS mm is outside the t1c volume",
                          input_name=f"biopsy {biopsy.patient_id}/{biopsy.biopsy_id}",
                          hint="check the coordinate system (RAS vs LPS) and the patient")
    return index


def extract_biopsies(case: Case, biopsies: Sequence[Biopsy], progress: ProgressCallback | None = None,
                     sequences: Sequence[str] | None = None) -> tuple[list[dict], list[BiopsyError]]:
    """Cohort-table rows (identity, covariates, ki67, features of ``sequences``, default all) for each biopsy; bad
    ones become errors.

    A biopsy whose ball leaves one sequence's field of view keeps its row, with that sequence's features missing
    (NaN), and adds a :class:`~KiMapLib.errors.FieldOfViewError` naming the sequence.
    """
    extractor = pyradiomics_extractor(case.settings)
    rows: list[dict] = []
    errors: list[BiopsyError] = []
    for number, biopsy in enumerate(biopsies):
        report(progress, number / max(len(biopsies), 1), f"biopsy {biopsy.biopsy_id}")
        name = f"biopsy {biopsy.patient_id}/{biopsy.biopsy_id}"
        try:
            index = biopsy_voxel(case, biopsy)
            outside = {sequence: count for sequence, count in ball_outside_field_of_view(case, index).items()
                       if sequences is None or sequence in sequences}
            features = features_at_voxel(case, index, extractor, what=name, outside=outside, sequences=sequences)
        except BiopsyError as error:
            errors.append(error)
            continue
        radius = case.settings.ball_radius_mm
        errors += [FieldOfViewError(f"{count} voxel(s) of its {radius:g} mm ball lie outside the {sequence} field of "
                                    f"view; its {sequence} features are left empty", sequence=sequence,
                                    input_name=name, hint=f"give a {sequence} volume that covers the point")
                   for sequence, count in outside.items()]
        row = biopsy.row()
        row.update({"voxel_i": index[0], "voxel_j": index[1], "voxel_k": index[2]})
        row.update(features)
        rows.append(row)
    report(progress, 1.0, "biopsies done")
    return rows, errors
