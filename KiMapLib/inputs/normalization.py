"""Intensity normalization, defined once: z-score per sequence within the image foreground, times a scale."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from KiMapLib.errors import KiMapError

#: If at least this fraction of the t1c is exactly zero, the volume is taken as skull-stripped/masked.
ZERO_BACKGROUND_FRACTION = 0.05


def foreground_mask(t1c: sitk.Image) -> np.ndarray:
    """Foreground [k, j, i]: non-zero t1c voxels for masked (skull-stripped) images, else Otsu above threshold."""
    values = sitk.GetArrayViewFromImage(t1c)
    if np.mean(values == 0) >= ZERO_BACKGROUND_FRACTION:
        mask = values != 0
    else:
        otsu = sitk.OtsuThreshold(sitk.Cast(t1c, sitk.sitkFloat32), 0, 1)
        mask = sitk.GetArrayFromImage(otsu).astype(bool)
    if mask.sum() < 27:
        raise KiMapError("the t1c has almost no foreground (fewer than 27 non-background voxels)",
                         input_name="t1c", hint="check that the volume is not empty")
    return mask


def zscore(image: sitk.Image, foreground: np.ndarray, scale: float, name: str) -> sitk.Image:
    """``scale * (x - mean) / std`` with mean and std taken inside the foreground; background set to 0."""
    values = sitk.GetArrayViewFromImage(image).astype(np.float64)  # one copy, converted on the way
    inside = values[foreground]
    std = inside.std()
    if not np.isfinite(std) or std <= 0:
        raise KiMapError("has constant intensity inside the foreground", input_name=name,
                         hint="check that the right volume was given")
    values -= inside.mean()  # in place, the same operations in the same order as (x - mean) / std * scale
    values /= std
    values *= scale
    values[~foreground] = 0.0
    result = sitk.GetImageFromArray(values)  # float64: pyradiomics and the engine then agree to 1e-12
    result.CopyInformation(image)
    return result
