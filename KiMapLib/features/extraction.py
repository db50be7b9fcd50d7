"""Per-biopsy radiomics: pyradiomics on the ball around each point, one row of the cohort table per biopsy."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from KiMapLib.errors import BiopsyError, KiMapError
from KiMapLib.features.neighbourhood import ball_offsets
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


def features_at_voxel(case: Case, center_ijk: Sequence[int], extractor=None, what: str = "point",
                      sequences: Sequence[str] | None = None) -> dict[str, float]:
    """All features of ``sequences`` (default: every sequence of the case) on the ball around one voxel, keyed
    ``<sequence>_original_<class>_<name>``."""
    settings = case.settings
    full_ball = len(ball_offsets(case.reference.GetSpacing(), settings.ball_radius_mm))
    k, j, i = (int(v) for v in center_ijk[::-1])
    if not case.foreground[k, j, i]:
        raise BiopsyError("lies in the image background (outside the brain foreground)", input_name=what,
                          hint="check the point's coordinates (RAS mm) and the volume")
    mask, start, count = ball_region(case, center_ijk)
    if count < settings.min_ball_fraction * full_ball:
        raise BiopsyError(f"only {count} of {full_ball} ball voxels are foreground "
                          f"(< {settings.min_ball_fraction:.0%})", input_name=what,
                          hint="the point is too close to the image or brain edge")
    extractor = extractor or pyradiomics_extractor(settings)
    features: dict[str, float] = {}
    for sequence in sequences or case.sequences:
        image = case.images[sequence]
        crop = sitk.RegionOfInterest(image, mask.GetSize(), start)
        result = extractor.execute(crop, mask)
        for key, value in result.items():
            if key.startswith("original_"):
                features[f"{sequence}_{key}"] = float(value)
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
    ones become errors."""
    extractor = pyradiomics_extractor(case.settings)
    rows: list[dict] = []
    errors: list[BiopsyError] = []
    for number, biopsy in enumerate(biopsies):
        report(progress, number / max(len(biopsies), 1), f"biopsy {biopsy.biopsy_id}")
        name = f"biopsy {biopsy.patient_id}/{biopsy.biopsy_id}"
        try:
            index = biopsy_voxel(case, biopsy)
            features = features_at_voxel(case, index, extractor, what=name, sequences=sequences)
        except BiopsyError as error:
            errors.append(error)
            continue
        row = biopsy.row()
        row.update({"voxel_i": index[0], "voxel_j": index[1], "voxel_k": index[2]})
        row.update(features)
        rows.append(row)
    report(progress, 1.0, "biopsies done")
    return rows, errors
