"""``kimap bench-maps``: pyradiomics voxel-based extraction vs the feature-map engine on the same input.

The engine is timed on the whole mask (median of ``--repeats`` runs); pyradiomics on ``--reference-voxels`` random
voxels of the whole mask (same kernels and discretization as a whole-mask run; its fixed per-call cost subtracted),
where both are also compared feature by feature. Prints voxels/s per feature class and
for all six together, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time

import numpy as np
import SimpleITK as sitk

from KiMapLib.errors import KiMapError

#: Smallest per-voxel pyradiomics time (s) that is reported as a rate.
MIN_SECONDS = 0.2


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("bench-maps", help="benchmark the feature-map engine against pyradiomics",
                                   description=__doc__)
    parser.add_argument("--image", required=True, help="image volume (used as given; normalize beforehand)")
    parser.add_argument("--mask", required=True, help="mask volume (voxels > 0 are mapped)")
    parser.add_argument("--kernel-radius", type=int, default=2, help="pyradiomics kernelRadius (cube kernel)")
    parser.add_argument("--bin-width", type=float, default=25.0, help="pyradiomics binWidth")
    parser.add_argument("--zscore", action="store_true",
                        help="z-score x100 the image within its foreground first (KiMap's normalization)")
    parser.add_argument("--reference-voxels", type=int, default=1000,
                        help="mask voxels on which pyradiomics is timed and compared (default 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="engine runs per class; the median is reported")
    parser.add_argument("--json", help="write the results here")
    parser.set_defaults(func=run)
    return parser


def _load(args) -> tuple[sitk.Image, sitk.Image]:
    from KiMapLib.inputs.images import read_volume

    image = sitk.Cast(read_volume(args.image, "--image"), sitk.sitkFloat32)
    mask = read_volume(args.mask, "--mask")
    mask_array = sitk.GetArrayFromImage(mask) > 0
    if args.zscore:
        from KiMapLib.inputs.normalization import foreground_mask, zscore

        foreground = foreground_mask(image)
        image = zscore(image, foreground, 100.0, "--image")
        mask_array &= foreground
    binary = sitk.GetImageFromArray(mask_array.astype(np.uint8))
    binary.CopyInformation(image)
    return image, binary


class _Subset:
    """Restrict pyradiomics' voxel-based centres to ``count`` random mask voxels (kernels, discretization and Ng
    stay those of the whole mask), by wrapping ``RadiomicsFeaturesBase._calculateVoxels``."""

    def __init__(self, count: int, seed: int):
        self.count, self.seed, self.chosen = count, seed, None

    def __enter__(self):
        from radiomics import base

        self._base = base.RadiomicsFeaturesBase
        self._orig = self._base._calculateVoxels
        subset = self

        def calculate(obj):
            coords = obj.labelledVoxelCoordinates
            pick = np.random.default_rng(subset.seed).choice(coords.shape[1], min(subset.count, coords.shape[1]),
                                                             replace=False)
            obj.labelledVoxelCoordinates = coords[:, np.sort(pick)]
            subset.chosen = obj.labelledVoxelCoordinates
            return subset._orig(obj)

        self._base._calculateVoxels = calculate
        return self

    def __exit__(self, *exc):
        self._base._calculateVoxels = self._orig


def _pyradiomics_run(image, mask, settings, classes, count, seed):
    """Seconds of one pyradiomics voxel-based call on ``count`` random mask voxels, its maps and those voxels."""
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.CRITICAL)
    ext = featureextractor.RadiomicsFeatureExtractor(**settings)
    ext.disableAllFeatures()
    for cls in classes:
        ext.enableFeatureClassByName(cls)
    with _Subset(count, seed) as subset:
        start = time.perf_counter()
        result = ext.execute(image, mask, voxelBased=True)
        seconds = time.perf_counter() - start
    return seconds, {k: v for k, v in result.items() if isinstance(v, sitk.Image)}, subset.chosen


def _reference(image, mask, settings, voxels, seed):
    """pyradiomics voxels/s per class and for all six together on ``voxels`` random voxels of the whole mask.

    The fixed cost of a call (loading, cropping, binning: ~2 s on a 240x240x155 volume) is measured with a 1-voxel
    run and subtracted, so the rate is pyradiomics' per-voxel speed — the most favourable measure for pyradiomics."""
    from KiMapLib.features.featuremaps import (
        CLASSES,  # the engine (numba) loads when a command runs, not when kimap starts
    )

    rates, fixed = {}, {}
    maps = chosen = None
    for group in [*([c] for c in CLASSES), list(CLASSES)]:
        name = group[0] if len(group) == 1 else "all"
        t_one, _, _ = _pyradiomics_run(image, mask, settings, group, 1, seed)
        t_many, maps, chosen = _pyradiomics_run(image, mask, settings, group, voxels, seed)
        fixed[name] = t_one
        # below ~0.2 s the per-voxel part drowns in the timing noise of the fixed part: not measurable
        rates[name] = (chosen.shape[1] - 1) / (t_many - t_one) if t_many - t_one > MIN_SECONDS else None
    return rates, fixed, maps, chosen


def _agreement(image, arrays, maps, chosen) -> dict:
    """Engine values against pyradiomics maps at pyradiomics' chosen voxels (cropped-image coordinates)."""
    any_map = next(iter(maps.values()))
    offset = np.array(image.TransformPhysicalPointToIndex(any_map.GetOrigin()))[::-1]
    full = chosen.T + offset
    lookup = {tuple(v): c for c, v in enumerate(arrays.index_kji.tolist())}
    cols = np.array([lookup[tuple(v)] for v in full.tolist()])
    k, j, i = chosen
    worst, failed = 0.0, []
    for f, key in enumerate(arrays.keys):
        expected = sitk.GetArrayFromImage(maps[key])[k, j, i]
        got = arrays.values[f, cols]
        if key == "original_glcm_MCC" and np.all(expected == 0):
            continue  # pyradiomics could not compute MCC (eigvals of a NaN matrix) and left initValue 0
        if key == "original_glcm_JointAverage":  # pyradiomics: NaN where one angle of the kernel is empty
            keep = ~np.isnan(expected)
            got, expected = got[keep], expected[keep]
        same = np.isclose(got, expected, rtol=1e-6, atol=1e-9) | (np.isnan(got) & np.isnan(expected))
        if not same.all():
            failed.append(key)
        finite = np.isfinite(got) & np.isfinite(expected)
        rel = np.abs(got[finite] - expected[finite]) / np.maximum(np.abs(expected[finite]), 1e-9)
        worst = max(worst, float(rel.max(initial=0.0)))
    return {"agree": not failed, "mismatching_features": failed, "max_relative_difference": worst}


def benchmark(image: sitk.Image, mask: sitk.Image, kernel_radius: int = 2, bin_width: float = 25.0,
              reference_voxels: int = 1000, repeats: int = 3, seed: int = 0) -> dict:
    """Engine voxels/s on the whole mask vs pyradiomics voxels/s on a compact piece of it; parity on that piece."""
    from KiMapLib.features.featuremaps import CLASSES, FEATURES, feature_arrays

    settings = {"binWidth": bin_width, "kernelRadius": kernel_radius, "maskedKernel": True}
    n = int((sitk.GetArrayViewFromImage(mask) > 0).sum())
    if n == 0:
        raise KiMapError("the mask is empty", input_name="--mask")
    engine_rate = {}
    for cls in CLASSES:
        keys = [f"original_{cls}_{f}" for f in FEATURES[cls]]
        feature_arrays(image, mask, settings, features=keys, kernel="cube")  # warm-up (loads the numba cache)
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            feature_arrays(image, mask, settings, features=keys, kernel="cube")
            runs.append(time.perf_counter() - start)
        engine_rate[cls] = n / float(np.median(runs))
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        arrays = feature_arrays(image, mask, settings, kernel="cube")
        runs.append(time.perf_counter() - start)
    engine_all = n / float(np.median(runs))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ref_rate, fixed, maps, chosen = _reference(image, mask, settings, min(reference_voxels, n), seed)
    m = int(chosen.shape[1])
    agreement = _agreement(image, arrays, maps, chosen)
    pyrad_all = ref_rate["all"] or m / (sum(fixed.values()) or 1.0)
    return {
        "mask_voxels": n, "reference_voxels": m, "kernel_radius": kernel_radius, "bin_width": bin_width,
        "classes": {c: {"pyradiomics_voxels_per_s": ref_rate[c], "engine_voxels_per_s": engine_rate[c],
                        "ratio": engine_rate[c] / ref_rate[c] if ref_rate[c] else None} for c in CLASSES},
        "all_classes": {"pyradiomics_voxels_per_s": pyrad_all, "engine_voxels_per_s": engine_all,
                        "ratio": engine_all / pyrad_all,
                        "pyradiomics_whole_mask_seconds_estimate": fixed["all"] + n / pyrad_all,
                        "engine_whole_mask_seconds": n / engine_all},
        "engine_peak_memory_mb": peak_mb, **agreement,
    }


def run(args) -> int:
    from KiMapLib.atomic import write_text_file
    from KiMapLib.outputs import check_output_files

    if args.json:
        check_output_files([args.json], [("--image", args.image), ("--mask", args.mask)], option="--json")
    image, mask = _load(args)
    result = benchmark(image, mask, args.kernel_radius, args.bin_width, args.reference_voxels, args.repeats)
    result.update({"image": str(args.image), "mask": str(args.mask)})
    print(f"bench-maps: kernelRadius {args.kernel_radius}, binWidth {args.bin_width:g}, "
          f"{result['mask_voxels']} mask voxels (pyradiomics timed on {result['reference_voxels']})")
    print(f"{'class':<12}{'pyradiomics vox/s':>20}{'engine vox/s':>16}{'ratio':>10}")
    for cls, row in result["classes"].items():
        if row["ratio"] is None:
            print(f"{cls:<12}{'(too fast to time)':>20}{row['engine_voxels_per_s']:>16.0f}{'-':>10}")
        else:
            print(f"{cls:<12}{row['pyradiomics_voxels_per_s']:>20.0f}{row['engine_voxels_per_s']:>16.0f}"
                  f"{row['ratio']:>10.1f}")
    row = result["all_classes"]
    print(f"{'all six':<12}{row['pyradiomics_voxels_per_s']:>20.0f}{row['engine_voxels_per_s']:>16.0f}"
          f"{row['ratio']:>10.1f}")
    print(f"agreement: {'yes' if result['agree'] else 'NO: ' + ', '.join(result['mismatching_features'])}; "
          f"engine peak memory {result['engine_peak_memory_mb']:.0f} MB")
    if args.json:
        write_text_file(args.json, json.dumps(result, indent=2), option="--json")
    return 0 if result["agree"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m KiMapLib.app.bench_maps")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["bench-maps", *(argv if argv is not None else sys.argv[1:])])
    try:
        return args.func(args)
    except KiMapError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
