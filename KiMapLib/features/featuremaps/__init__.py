"""Voxel-wise radiomics feature maps equal to pyradiomics, at interactive speed (numba, all cores).

``feature_maps(image, mask, settings, features=None, kernel="ball")`` returns one SimpleITK image per pyradiomics
feature key (``original_glcm_Contrast``, ...) over the mask's bounding box (``geometry="image"``: the input image's
full grid), NaN outside the mask.
``kernel="cube"`` reproduces pyradiomics' voxel-based extraction (``kernelRadius``, ``maskedKernel``);
``kernel="ball"`` reproduces pyradiomics' normal-mode extraction on the ball of ``ballRadius`` mm around each voxel
(KiMap's per-biopsy neighbourhood), including per-ball grey-level discretization.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import SimpleITK as sitk

from KiMapLib.errors import KiMapError
from KiMapLib.features.featuremaps.cache_guard import ensure_fresh
from KiMapLib.features.featuremaps.engine import GEOMETRIES, FeatureArrays, feature_arrays, region_features, warm_up
from KiMapLib.features.featuremaps.names import ALL_KEYS, CLASSES, FEATURES
from KiMapLib.progress import ProgressCallback

ensure_fresh()  # numba loads a kernel's cache at its first call, after this

__all__ = ["ALL_KEYS", "CLASSES", "FEATURES", "FeatureArrays", "feature_arrays", "feature_maps", "region_features",
           "warm_up"]


def feature_maps(image: sitk.Image, mask: sitk.Image, settings: dict | None = None,
                 features: Iterable[str] | None = None, kernel: str = "ball",
                 progress: ProgressCallback | None = None, kernel_mask: sitk.Image | None = None,
                 min_kernel_voxels: int = 1, dtype=np.float32, geometry: str = "box") -> dict[str, sitk.Image]:
    """Feature maps computed at every voxel of ``mask`` (label ``settings['label']``, default 1).

    Neighbourhood voxels count where ``kernel_mask`` is non-zero; by default the mask itself when
    ``settings['maskedKernel']`` (default true), else the whole image. Centres whose kernel holds fewer than
    ``min_kernel_voxels`` voxels get NaN. ``features``: keys such as ``original_glcm_Contrast`` (None: all 93).
    Maps are ``dtype`` (float32 by default) on the grid of ``geometry``: ``"box"`` (default) the mask's bounding box
    (origin at its first voxel; image spacing and direction; as pyradiomics' voxel-based maps, without their
    kernel-radius margin), so the cost follows the region, not the image; ``"image"`` the input image's full grid
    (e.g. to save next to the input; ``sitk.Resample(m, image, sitk.Transform(), sitk.sitkNearestNeighbor,
    float("nan"))`` turns a box map into that too). Raises ``KiMapError`` on bad input and ``Cancelled`` when
    ``progress`` returns False.
    """
    if geometry not in GEOMETRIES:  # before the long computation
        raise KiMapError(f"unknown geometry '{geometry}'", input_name="geometry", hint="use 'box' or 'image'")
    arrays = feature_arrays(image, mask, settings, features, kernel, progress, kernel_mask, min_kernel_voxels)
    return arrays.maps(dtype, geometry)
