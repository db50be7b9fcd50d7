"""N4 bias-field correction (SimpleITK), defined once for extraction and mapping.

The field is fitted on a copy shrunk by ``shrink_factor`` inside the foreground mask (fixed iterations per fitting
level, no random sampling: the same input gives the same output) and divided out at full resolution. ADC is a
computed map (a ratio of diffusion-weighted images, so a receive-coil bias cancels): it is never corrected.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from KiMapLib.errors import KiMapError

#: Sequences whose intensities carry a multiplicative receive bias (weighted images).
BIAS_CORRECTED_SEQUENCES = ("t1c", "t2", "flair", "t1")
#: N4's convergence threshold per fitting level (SimpleITK's default); iterations stop earlier when reached.
N4_CONVERGENCE_THRESHOLD = 1e-3
#: B-spline control points per axis at the first fitting level (doubled at each next level; ITK's default).
N4_CONTROL_POINTS = 4


def n4_log_bias_field(image: sitk.Image, mask: np.ndarray, *, shrink_factor: int, iterations: int,
                      fitting_levels: int, name: str = "image") -> sitk.Image:
    """The log bias field of ``image`` (float32, on its own full-resolution grid), fitted inside ``mask`` [k, j, i].

    Voxels that are not positive are left out of the fit (N4 works on log intensities).
    """
    values = sitk.GetArrayViewFromImage(image)
    fit_mask = mask & (values > 0)
    if fit_mask.sum() < 27:
        raise KiMapError("has almost no positive intensities inside the foreground (fewer than 27 voxels): N4 "
                         "bias-field correction needs positive values", input_name=name,
                         hint="give the scanner's magnitude image, or extract with --bias-correction none")
    full = sitk.Cast(image, sitk.sitkFloat32)
    mask_image = sitk.GetImageFromArray(fit_mask.astype(np.uint8))
    mask_image.CopyInformation(full)
    shrink = [max(1, min(int(shrink_factor), size // 4)) for size in full.GetSize()]  # keep >= 4 voxels per axis
    small = sitk.Shrink(full, shrink)
    small_mask = sitk.Shrink(mask_image, shrink)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(iterations)] * int(fitting_levels))
    corrector.SetConvergenceThreshold(N4_CONVERGENCE_THRESHOLD)
    corrector.SetNumberOfControlPoints([N4_CONTROL_POINTS] * 3)
    corrector.Execute(small, small_mask)
    return corrector.GetLogBiasFieldAsImage(full)


def n4_correct(image: sitk.Image, mask: np.ndarray, *, shrink_factor: int = 4, iterations: int = 50,
               fitting_levels: int = 2, name: str = "image") -> sitk.Image:
    """``image / exp(log bias field)`` as float64 on the same grid (values outside ``mask`` divided likewise)."""
    field_image = n4_log_bias_field(image, mask, shrink_factor=shrink_factor, iterations=iterations,
                                    fitting_levels=fitting_levels, name=name)
    log_field = sitk.GetArrayFromImage(field_image).astype(np.float64)  # a copy: a view dies with its image
    if not np.all(np.isfinite(log_field[mask])):
        raise KiMapError("N4 bias-field correction did not converge (non-finite field)", input_name=name,
                         hint="check the volume, or extract with --bias-correction none")
    values = sitk.GetArrayViewFromImage(image).astype(np.float64)
    values /= np.exp(log_field)
    result = sitk.GetImageFromArray(values)
    result.CopyInformation(image)
    return result
