"""Voxel-wise radiomics feature maps equal to pyradiomics, at interactive speed (numba, all cores).

``feature_maps(image, mask, settings, features=None, kernel="ball")`` returns one SimpleITK image per pyradiomics
feature key (``original_glcm_Contrast``, ...) on the input image's full grid, NaN outside the mask.
``kernel="cube"`` reproduces pyradiomics' voxel-based extraction (``kernelRadius``, ``maskedKernel``);
``kernel="ball"`` reproduces pyradiomics' normal-mode extraction on the ball of ``ballRadius`` mm around each voxel
(KiMap's per-biopsy neighbourhood), including per-ball grey-level discretization.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import SimpleITK as sitk

from KiMapLib.features.featuremaps.engine import FeatureArrays, feature_arrays, region_features, warm_up
from KiMapLib.features.featuremaps.names import ALL_KEYS, CLASSES, FEATURES
from KiMapLib.progress import ProgressCallback

__all__ = ["ALL_KEYS", "CLASSES", "FEATURES", "FeatureArrays", "feature_arrays", "feature_maps", "region_features",
           "warm_up"]


def feature_maps(image: sitk.Image, mask: sitk.Image, settings: dict | None = None,
                 features: Iterable[str] | None = None, kernel: str = "ball",
                 progress: ProgressCallback | None = None, kernel_mask: sitk.Image | None = None,
                 min_kernel_voxels: int = 1, dtype=np.float32) -> dict[str, sitk.Image]:
    """Feature maps computed at every voxel of ``mask`` (label ``settings['label']``, default 1).

    Neighbourhood voxels count where ``kernel_mask`` is non-zero; by default the mask itself when
    ``settings['maskedKernel']`` (default true), else the whole image. Centres whose kernel holds fewer than
    ``min_kernel_voxels`` voxels get NaN. ``features``: keys such as ``original_glcm_Contrast`` (None: all 93).
    Maps are ``dtype`` (float32 by default, to keep 93 full-size maps in memory). Raises ``KiMapError`` on bad
    input and ``Cancelled`` when ``progress`` returns False.
    """
    arrays = feature_arrays(image, mask, settings, features, kernel, progress, kernel_mask, min_kernel_voxels)
    return arrays.maps(dtype)
