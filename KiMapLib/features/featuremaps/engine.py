"""The voxel-wise feature engine: input checks, cropping, discretization, and the per-class numba kernels."""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba as nb
import numpy as np
import SimpleITK as sitk

from KiMapLib.errors import GeometryError, KiMapError
from KiMapLib.features.featuremaps import discretize, firstorder, glcm, glrlm, params, texture
from KiMapLib.features.featuremaps.kernels import angles, blocks, kernel_offsets, make_box, padded
from KiMapLib.features.featuremaps.names import FEATURES, key, parse_features
from KiMapLib.progress import ProgressCallback, report

KERNELS = ("ball", "cube", "region")
#: Grids of :meth:`FeatureArrays.maps`: the mask's bounding box, or the whole input image.
GEOMETRIES = ("box", "image")
#: Centres per progress step (each step runs on all cores).
CHUNK = 4096
#: Blocks per thread in a chunk (taken by the threads as they come free: balances kernels of unequal cost).
BLOCKS_PER_THREAD = 4


@dataclass
class FeatureArrays:
    """Feature values at the mask's voxels: ``values[f, c]`` for key ``keys[f]`` at voxel ``index_kji[c]``."""

    keys: list[str]
    values: np.ndarray
    index_kji: np.ndarray
    reference: sitk.Image

    def maps(self, dtype=np.float32, geometry: str = "box") -> dict[str, sitk.Image]:
        """One image per key, NaN at grid voxels that are not mask voxels.

        ``geometry="box"`` (default): the mask's bounding box, with the origin of its first voxel and the image's
        spacing and direction (as pyradiomics' voxel-based maps, which add a kernel-radius margin): the cost follows
        the region, not the image. ``geometry="image"``: the input image's full grid."""
        if geometry not in GEOMETRIES:
            raise KiMapError(f"unknown geometry '{geometry}'", input_name="geometry", hint="use 'box' or 'image'")
        if geometry == "image":
            lo = np.zeros(3, np.int64)
            shape = tuple(self.reference.GetSize()[::-1])
        else:
            lo = self.index_kji.min(0)
            shape = tuple(int(v) for v in self.index_kji.max(0) - lo + 1)
        flat = np.ravel_multi_index(tuple((self.index_kji - lo).T), shape)
        origin = self.reference.TransformIndexToPhysicalPoint([int(v) for v in lo[::-1]])
        spacing, direction = self.reference.GetSpacing(), self.reference.GetDirection()
        values = self.values.astype(dtype, copy=False)
        result = {}
        array = np.full(shape, np.nan, dtype=dtype)  # one buffer: only the mask voxels change between features
        line = array.reshape(-1)
        for f, name in enumerate(self.keys):
            line[flat] = values[f]
            image = sitk.GetImageFromArray(array)
            image.SetOrigin(origin)
            image.SetSpacing(spacing)
            image.SetDirection(direction)
            result[name] = image
        return result


@nb.njit(cache=True, nogil=True)
def _kernel_stats(centers, valid, vals, offs, count, minimum, bounds):
    """Kernel voxel count and minimum intensity of the centres ``bounds[0]..bounds[1]``."""
    nk, nj, ni = valid.shape
    for c in range(bounds[0], bounds[1]):
        n = 0
        lo = np.inf
        for o in range(offs.shape[0]):
            k = centers[c, 0] + offs[o, 0]
            j = centers[c, 1] + offs[o, 1]
            i = centers[c, 2] + offs[o, 2]
            if 0 <= k < nk and 0 <= j < nj and 0 <= i < ni and valid[k, j, i]:
                n += 1
                if vals[k, j, i] < lo:
                    lo = vals[k, j, i]
        count[c] = n
        minimum[c] = lo


def _dims(values) -> str:
    return "x".join(str(int(v)) for v in values)


def _check_grid(image: sitk.Image, other: sitk.Image, name: str) -> None:
    same = (image.GetSize() == other.GetSize()
            and np.allclose(image.GetSpacing(), other.GetSpacing(), rtol=1e-5, atol=1e-6)
            and np.allclose(image.GetOrigin(), other.GetOrigin(), rtol=1e-5, atol=1e-4)
            and np.allclose(image.GetDirection(), other.GetDirection(), atol=1e-5))
    if not same:
        raise GeometryError("is not on the image's grid (size, spacing, origin or direction differ)", input_name=name,
                            hint="resample it onto the image (nearest neighbour) first")


def _check_image(image, name: str) -> None:
    if not isinstance(image, sitk.Image):
        raise KiMapError(f"expected a SimpleITK image, got {type(image).__name__}", input_name=name)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise KiMapError("expected a 3D scalar image", input_name=name)


def _normalized(image: sitk.Image, p: params.Params) -> sitk.Image:
    """pyradiomics' ``imageoperations.normalizeImage`` (whole image), when ``normalize`` is set."""
    if not p.normalize:
        return image
    image = sitk.Normalize(image)
    if p.remove_outliers is not None:
        array = sitk.GetArrayFromImage(image)
        array[array > p.remove_outliers] = p.remove_outliers
        array[array < -p.remove_outliers] = -p.remove_outliers
        clipped = sitk.GetImageFromArray(array)
        clipped.CopyInformation(image)
        image = clipped
    return image * p.normalize_scale


def _glcm_weights(angle_set: np.ndarray, spacing_kji: np.ndarray, norm: str | None, run_length: bool) -> np.ndarray:
    if norm is None:
        return np.zeros(0)
    dist = np.abs(angle_set) * spacing_kji
    if norm == "no_weighting":
        return np.ones(len(angle_set))
    if run_length:  # GLRLM weights the distance itself
        return {"infinity": dist.max(1), "euclidean": np.sqrt((dist ** 2).sum(1)), "manhattan": dist.sum(1)}[norm]
    return {"infinity": np.exp(-dist.max(1) ** 2), "euclidean": np.exp(-(dist ** 2).sum(1)),
            "manhattan": np.exp(-dist.sum(1) ** 2)}[norm]


def warm_up(kernel: str = "ball") -> None:
    """Load the compiled kernels (numba's on-disk cache; ~0.7 s in a fresh process) by mapping a tiny synthetic
    volume, e.g. in a background thread while the real volumes are read."""
    values = np.random.default_rng(0).normal(0.0, 100.0, (9, 9, 9)).astype(np.float32)
    image = sitk.GetImageFromArray(values)
    centre = np.zeros(values.shape, np.uint8)
    centre[4, 4, 4] = 1
    mask = sitk.GetImageFromArray(centre)
    feature_arrays(image, mask, {"binWidth": 25, "ballRadius": 2.0, "kernelRadius": 1}, kernel=kernel)


def region_features(image: sitk.Image, mask: sitk.Image, settings: dict | None = None,
                    features: Iterable[str] | None = None) -> dict[str, float]:
    """Whole-region features of the mask (pyradiomics normal mode) through the same kernels."""
    arrays = feature_arrays(image, mask, settings, features, kernel="region")
    return {name: float(arrays.values[f, 0]) for f, name in enumerate(arrays.keys)}


def feature_arrays(image: sitk.Image, mask: sitk.Image, settings: dict | None = None,
                   features: Iterable[str] | None = None, kernel: str = "ball",
                   progress: ProgressCallback | None = None, kernel_mask: sitk.Image | None = None,
                   min_kernel_voxels: int = 1) -> FeatureArrays:
    """Feature values at every mask voxel (see :func:`~KiMapLib.features.featuremaps.feature_maps`), no maps built."""
    if kernel not in KERNELS:
        raise KiMapError(f"unknown kernel '{kernel}'", input_name="kernel", hint="use 'ball' or 'cube'")
    p = params.parse(settings, "cube" if kernel == "region" else kernel)
    wanted = parse_features(features)
    _check_image(image, "image")
    _check_image(mask, "mask")
    _check_grid(image, mask, "mask")
    if kernel_mask is not None:
        _check_image(kernel_mask, "kernel_mask")
        _check_grid(image, kernel_mask, "kernel_mask")
    image = _normalized(image, p)
    values = sitk.GetArrayViewFromImage(image)
    centre_mask = sitk.GetArrayViewFromImage(mask) == p.label
    if not centre_mask.any():
        raise KiMapError(f"has no voxel with label {p.label}", input_name="mask",
                         hint="give a non-empty mask (or set settings['label'])")
    spacing_kji = np.asarray(image.GetSpacing(), dtype=float)[::-1]
    shape = np.asarray(values.shape)
    idx = np.stack(np.unravel_index(np.flatnonzero(centre_mask), centre_mask.shape), axis=1)  # argwhere, 6x faster
    if kernel == "region":  # one kernel: the mask's bounding box, anchored at its lower corner
        corner = idx.min(0)
        extent = idx.max(0) - corner + 1
        offs = np.argwhere(np.ones(tuple(extent), dtype=bool)).astype(np.int64)
        idx = corner[None, :]
    else:
        offs = kernel_offsets(kernel, image.GetSpacing(), p.kernel_radius, p.ball_radius)
    reach = np.abs(offs).max(axis=0)
    if kernel != "region" and np.any(2 * reach + 1 > shape):
        what = f"kernelRadius {p.kernel_radius}" if kernel == "cube" else f"ballRadius {p.ball_radius} mm"
        raise KiMapError(f"the kernel ({what}, {_dims(2 * reach + 1)} voxels) is larger than the image "
                         f"({_dims(shape)} voxels)", input_name="settings", hint="use a smaller kernel radius")

    # crop to the mask's bounding box padded by the kernel reach (pyradiomics pads by kernelRadius)
    lo = np.maximum(idx.min(0) - reach, 0)
    hi = np.minimum(idx.max(0) + reach + 1, shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    if kernel_mask is not None:
        valid = sitk.GetArrayViewFromImage(kernel_mask)[crop] != 0
    elif p.masked or kernel == "region":
        valid = centre_mask[crop].copy()
    else:
        valid = np.ones(tuple(hi - lo), dtype=bool)
    raw = np.ascontiguousarray(values[crop])
    region = raw[valid]
    if region.size == 0:
        raise KiMapError("no kernel voxel lies inside kernel_mask", input_name="kernel_mask",
                         hint="the kernel mask must overlap the mask's neighbourhood")
    if not np.all(np.isfinite(region)):
        raise KiMapError(f"{int((~np.isfinite(region)).sum())} voxels inside the kernel region are NaN or Inf",
                         input_name="image", hint="fix or mask those voxels before computing maps")
    vals = raw.astype(np.float64)
    centers = (idx - lo).astype(np.int64)
    n = len(centers)
    count = np.zeros(n, np.int64)
    minimum = np.zeros(n, np.float64)
    valid_u8 = valid.astype(np.uint8)
    threads = max(1, min(os.cpu_count() or 1, nb.config.NUMBA_NUM_THREADS))
    if kernel == "ball" or min_kernel_voxels > 1:  # per-ball minima (discretization) / kernel sizes, on all cores
        edges = blocks(n, threads)
        with ThreadPoolExecutor(threads) as pool:
            for job in [pool.submit(_kernel_stats, centers, valid_u8, vals, offs, count, minimum, edges[t:t + 2].copy())
                        for t in range(len(edges) - 1)]:
                job.result()

    # discretization
    ng_global = mdim_global = 0
    if kernel in ("cube", "region"):  # one discretization over the whole region
        lev_region, _ = discretize.discretize(region, p.bin_width, p.bin_count)
        lev = np.zeros((1, *valid.shape), np.int32)
        lev[0][valid] = lev_region
        ng_global = int(lev_region.max())
        mdim_global = len(np.unique(lev_region))
        lev_fo = lev
        if kernel == "cube" and region.dtype != np.float64:  # voxel mode bins a float64 copy for firstorder
            fo_region, _ = discretize.discretize(region.astype(np.float64), p.bin_width, p.bin_count)
            if not np.array_equal(fo_region, lev_region):
                lev_fo = np.zeros_like(lev)
                lev_fo[0][valid] = fo_region
        row = np.zeros(n, np.int32)
        shift = np.zeros(n, np.int32)
    else:
        ball_min = minimum.astype(raw.dtype)
        table, row, shift = discretize.per_ball_levels(region, ball_min, p.bin_width)
        lev = np.zeros((len(table), *valid.shape), np.int32)
        for r in range(len(table)):
            lev[r][valid] = table[r]
        lev_fo = lev
        row = row.astype(np.int32)
        shift = shift.astype(np.int32)
    discretize.check_bins(lev)
    maxlev = int(lev.max())

    pad = max(max(p.distances), 1)
    box = make_box(offs, pad)
    box_shape = np.asarray(box.shape, dtype=np.int64)
    tex = [cls for cls in texture.CLASSES if cls in wanted]
    groups = {}
    if lev_fo is lev:
        flat_centres, flat_offs, valid_flat, lev_flat, vals_flat = padded(centers, offs, valid_u8, lev, vals)
        lev_fo_flat = lev_flat
    else:
        flat_centres, flat_offs, valid_flat, lev_flat, vals_flat, lev_fo_flat = padded(centers, offs, valid_u8, lev,
                                                                                      vals, lev_fo)
    if "firstorder" in wanted:
        fo_names = set(wanted["firstorder"])
        groups["firstorder"] = (firstorder.run, (
            flat_centres, valid_flat, lev_fo_flat, vals_flat, row, shift, flat_offs, box.flat, box.size, maxlev,
            p.voxel_shift,
            float(np.multiply.reduce(image.GetSpacing())), bool(fo_names & firstorder.SORTED),
            bool(fo_names & firstorder.MOMENTS)), len(FEATURES["firstorder"]))
    if tex:
        cm_angles = angles(p.distances, bidirectional=False)
        run_angles = angles([1], bidirectional=False)
        in_box_order = np.argsort(box.flat, kind="stable")  # GLRLM's runs scan the kernel in box order
        groups["texture"] = (texture.run, (
            flat_centres, valid_flat, lev_flat, row, shift, flat_offs[in_box_order], box.flat[in_box_order], box_shape,
            pad, maxlev,
            box.flat_offsets(cm_angles), box.flat_offsets(angles(p.distances, bidirectional=True)),
            box.flat_offsets(run_angles), run_angles,
            box.flat_offsets(angles([1], bidirectional=True)),
            _glcm_weights(cm_angles, spacing_kji, p.weighting, run_length=False),
            _glcm_weights(run_angles, spacing_kji, p.weighting, run_length=True), p.symmetric, ng_global,
            mdim_global, glcm.needs(wanted.get("glcm", ())), glrlm.needs_entries(wanted.get("glrlm", ())),
            int(p.gldm_a),
            tuple(sorted(set(p.distances))) == (1,) and (int(p.gldm_a) == 0 or "gldm" not in wanted),
            np.array([cls in wanted for cls in texture.CLASSES], np.bool_)), texture.ROWS)

    outputs = {group: np.full((rows, n), np.nan) for group, (_, _, rows) in groups.items()}
    steps = [(group, start) for group in groups for start in range(0, n, CHUNK)]
    with ThreadPoolExecutor(threads) as pool:
        # every chunk is queued at once (no barrier between chunks or classes); progress is reported, and a cancel
        # honoured, as the chunks complete in order
        pending = []
        for group, start in steps:
            fn, args, _ = groups[group]
            edges = blocks(min(CHUNK, n - start), threads * BLOCKS_PER_THREAD) + start
            pending.append([pool.submit(fn, *args, edges[t:t + 2].copy(), outputs[group])
                            for t in range(len(edges) - 1)])
        try:
            for step, ((group, _), jobs) in enumerate(zip(steps, pending, strict=True)):
                report(progress, step / len(steps), f"{group} features")
                for job in jobs:
                    job.result()
        except BaseException:
            for jobs in pending:
                for job in jobs:
                    job.cancel()
            raise
    keys: list[str] = []
    parts: list[np.ndarray] = []
    for cls, names in wanted.items():
        if cls == "firstorder":
            out, base = outputs["firstorder"], 0
        else:
            out, base = outputs["texture"], texture.BASE[texture.CLASSES.index(cls)]
        parts.append(out[[base + FEATURES[cls].index(f) for f in names]])
        keys.extend(key(cls, f) for f in names)
    report(progress, 1.0, "features done")
    result = np.concatenate(parts, axis=0)
    if min_kernel_voxels > 1:
        result[:, count < min_kernel_voxels] = np.nan
    return FeatureArrays(keys, result, idx.astype(np.int64), image)
