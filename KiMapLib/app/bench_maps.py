"""``kimap bench-maps``: pyradiomics vs the feature-map engine on the same input, in the same run.

The engine is timed through the public ``feature_maps`` (maps over the mask's bounding box; median of ``--repeats``
runs, all six classes together, plus ``feature_arrays`` for the cost of building the maps). pyradiomics is timed on
a random sample of the mask's voxels: for ``cube``, its voxel-based mode on ``--reference-voxels`` voxels (kernels
and discretization of the whole mask; the fixed cost of a call, measured with one voxel, subtracted: the most
favourable measure for pyradiomics); for ``ball``, its normal mode on each of ``--ball-reference-voxels`` balls
(KiMap's per-biopsy extraction, cropped to the ball). The engine's values are compared with pyradiomics' on those
voxels (rtol 1e-6, atol 1e-9). Prints voxels/s, the ratio and the largest relative difference per kernel and radius.
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
RTOL, ATOL = 1e-6, 1e-9


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("bench-maps", help="benchmark the feature-map engine against pyradiomics",
                                   description=__doc__)
    parser.add_argument("--image", required=True, help="image volume (used as given; normalize beforehand)")
    parser.add_argument("--mask",
                        help="mask volume (voxels > 0 are mapped, or those of --label); required unless --brightest")
    parser.add_argument("--label", type=int, help="map only this label of the mask (default: every voxel > 0)")
    parser.add_argument("--brightest", type=int, metavar="N",
                        help="instead of --mask: the connected region of about N of the brightest voxels inside the "
                             "image's foreground (e.g. 1500: the brightest enhancement of a t1c; default: none)")
    parser.add_argument("--kernel", nargs="+", choices=("cube", "ball"), default=["cube"],
                        help="kernels: cube = pyradiomics voxel-based; ball = KiMap's ball of radius r times the "
                             "smallest spacing, vs pyradiomics normal mode per ball (default: cube)")
    parser.add_argument("--kernel-radius", type=int, nargs="+", default=[2],
                        help="radii r in voxels (pyradiomics kernelRadius; default: 2)")
    parser.add_argument("--bin-width", type=float, default=25.0, help="pyradiomics binWidth")
    parser.add_argument("--zscore", action="store_true",
                        help="z-score x100 the image within its foreground first (KiMap's normalization)")
    parser.add_argument("--reference-voxels", type=int, default=300,
                        help="mask voxels on which pyradiomics voxel-based is timed and compared (cube)")
    parser.add_argument("--ball-reference-voxels", type=int, default=12,
                        help="balls on which pyradiomics normal mode is timed and compared (ball)")
    parser.add_argument("--per-class", action="store_true", help="also time each class alone (slower)")
    parser.add_argument("--repeats", type=int, default=3, help="engine runs; the median is reported")
    parser.add_argument("--pyradiomics-repeats", type=int, default=1,
                        help="pyradiomics voxel-based timings (cube) per row; the median is reported")
    parser.add_argument("--name", help="name of the input in the output (default: the image path)")
    parser.add_argument("--json", help="write the results here as JSON (default: print only)")
    parser.set_defaults(func=run)
    return parser


def brightest_region(image: sitk.Image, foreground: np.ndarray, voxels: int) -> np.ndarray:
    """The connected region (face-connected) of voxels above a threshold around the brightest spot of the foreground
    (its eroded inside, smoothed 1.5 voxels), the threshold chosen so that the region's size is the closest to
    ``voxels`` that a threshold gives (sizes jump where parts merge)."""
    from scipy import ndimage

    values = sitk.GetArrayFromImage(image).astype(np.float64)
    inside = ndimage.binary_erosion(foreground, iterations=3)
    smooth = ndimage.gaussian_filter(values, 1.5)
    smooth[~inside] = -np.inf
    seed = np.unravel_index(int(np.argmax(smooth)), values.shape)
    def region(threshold: float) -> np.ndarray:
        labels, _ = ndimage.label((values > threshold) & inside)
        return labels == labels[seed] if values[seed] > threshold else np.zeros(values.shape, bool)

    low, high = float(values[inside].min()), float(values[seed])
    for _ in range(40):
        middle = 0.5 * (low + high)
        if region(middle).sum() > voxels:
            low = middle
        else:
            high = middle
    below, above = region(high), region(low)
    return below if voxels - below.sum() <= above.sum() - voxels else above


def _load(args) -> tuple[sitk.Image, sitk.Image]:
    from KiMapLib.inputs.images import read_volume
    from KiMapLib.inputs.normalization import foreground_mask, zscore

    image = sitk.Cast(read_volume(args.image, "--image"), sitk.sitkFloat32)
    if (args.mask is None) == (args.brightest is None):
        raise KiMapError("give either --mask or --brightest", input_name="--mask")
    foreground = foreground_mask(image) if args.zscore or args.brightest else None
    if args.brightest:
        mask_array = brightest_region(image, foreground, args.brightest)
    else:
        mask = read_volume(args.mask, "--mask")
        values = sitk.GetArrayFromImage(mask)
        mask_array = values == args.label if args.label is not None else values > 0
    if args.zscore:
        image = zscore(image, foreground, 100.0, "--image")
        mask_array &= foreground
    if not mask_array.any():
        raise KiMapError("the mask is empty", input_name="--mask", hint="check --label")
    if image.GetPixelID() == sitk.sitkFloat32 and not args.zscore and _integral(image):
        image = sitk.Cast(image, sitk.sitkInt16)  # integer scans stay integer, as pyradiomics reads them
    binary = sitk.GetImageFromArray(mask_array.astype(np.uint8))
    binary.CopyInformation(image)
    return image, binary


def _integral(image: sitk.Image) -> bool:
    values = sitk.GetArrayViewFromImage(image)
    return bool(np.all(values == np.round(values)) and values.min() >= -32768 and values.max() <= 32767)


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


def _extractor(settings: dict, classes):
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.CRITICAL)
    ext = featureextractor.RadiomicsFeatureExtractor(**{k: v for k, v in settings.items() if k != "ballRadius"})
    ext.disableAllFeatures()
    for cls in classes:
        ext.enableFeatureClassByName(cls)
    return ext


def _pyradiomics_run(image, mask, settings, classes, count, seed):
    """Seconds of one pyradiomics voxel-based call on ``count`` random mask voxels, its maps and those voxels."""
    ext = _extractor(settings, classes)
    with _Subset(count, seed) as subset:
        start = _clock()
        result = ext.execute(image, mask, voxelBased=True)
        seconds = _clock() - start
    return seconds, {k: v for k, v in result.items() if isinstance(v, sitk.Image)}, subset.chosen


def _clock() -> np.ndarray:
    """(wall, process CPU) seconds: CPU time does not count what other processes take (a shared machine), and
    counts all the engine's threads (so a CPU-time ratio does not credit the engine for using several cores)."""
    return np.array([time.perf_counter(), time.process_time()])


def _reference_cube(image, mask, settings, voxels, seed, per_class, repeats=1):
    """pyradiomics voxel-based voxels/s (all six classes; each alone if ``per_class``) on ``voxels`` random voxels
    of the whole mask, with the fixed cost of a call (a 1-voxel run) subtracted (median over ``repeats`` pairs of
    runs); its maps and the chosen voxels. Rates are (wall, CPU) pairs."""
    from KiMapLib.features.featuremaps import CLASSES

    rates, fixed = {}, {}
    maps = chosen = None
    for group in [*([[c] for c in CLASSES] if per_class else []), list(CLASSES)]:
        name = group[0] if len(group) == 1 else "all"
        ones, extras = [], []
        for _ in range(max(1, repeats)):
            t_one, _, _ = _pyradiomics_run(image, mask, settings, group, 1, seed)
            t_many, maps, chosen = _pyradiomics_run(image, mask, settings, group, voxels, seed)
            ones.append(t_one)
            extras.append(t_many - t_one)
        fixed[name] = float(np.median([t[0] for t in ones]))
        # below ~0.2 s the per-voxel part drowns in the timing noise of the fixed part: not measurable
        extra = np.median(np.array(extras), axis=0)
        rates[name] = (chosen.shape[1] - 1) / extra if np.all(extra > MIN_SECONDS) else None
    return rates, fixed, maps, chosen


def _agreement_cube(image, arrays, maps, chosen) -> dict:
    """Engine values against pyradiomics maps at pyradiomics' chosen voxels (cropped-image coordinates)."""
    any_map = next(iter(maps.values()))
    offset = np.array(image.TransformPhysicalPointToIndex(any_map.GetOrigin()))[::-1]
    full = chosen.T + offset
    lookup = {tuple(v): c for c, v in enumerate(arrays.index_kji.tolist())}
    cols = np.array([lookup[tuple(v)] for v in full.tolist()])
    k, j, i = chosen
    expected = {}
    for key in arrays.keys:
        values = sitk.GetArrayFromImage(maps[key])[k, j, i]
        if key == "original_glcm_MCC" and np.all(values == 0):
            continue  # pyradiomics could not compute MCC (eigvals of a NaN matrix) and left initValue 0
        expected[key] = values
    return _compare(arrays, cols, expected)


def _compare(arrays, cols, expected: dict) -> dict:
    worst, failed = 0.0, []
    for f, key in enumerate(arrays.keys):
        if key not in expected:
            continue
        want = np.asarray(expected[key], dtype=np.float64)
        got = arrays.values[f, cols]
        if key == "original_glcm_JointAverage":  # pyradiomics: NaN where one angle of the kernel is empty
            keep = ~np.isnan(want)
            got, want = got[keep], want[keep]
        same = np.isclose(got, want, rtol=RTOL, atol=ATOL) | (np.isnan(got) & np.isnan(want))
        if not same.all():
            failed.append(key)
        finite = np.isfinite(got) & np.isfinite(want)
        rel = np.abs(got[finite] - want[finite]) / np.maximum(np.abs(want[finite]), 1e-9)
        worst = max(worst, float(rel.max(initial=0.0)))
    return {"agree": not failed, "mismatching_features": failed, "max_relative_difference": worst,
            "voxels": len(cols)}


def _reference_ball(image, mask, settings, arrays, count, seed) -> tuple[float, dict]:
    """pyradiomics normal mode on the ball (∩ mask) of ``count`` random centres, each cropped to its ball: voxels/s
    (wall, CPU) and the agreement with the engine there."""
    from KiMapLib.features.neighbourhood import ball_offsets

    rng = np.random.default_rng(seed)
    candidates = rng.permutation(len(arrays.index_kji))
    offsets = np.asarray(ball_offsets(image.GetSpacing(), settings["ballRadius"]), np.int64)
    reach = np.abs(offsets).max(0)
    values = sitk.GetArrayViewFromImage(image)
    inside = sitk.GetArrayViewFromImage(mask) > 0
    ext = _extractor(settings, ["firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm"])
    expected = {key: [] for key in arrays.keys}
    seconds = np.zeros(2)
    cols = []
    for col in candidates:
        if len(cols) == count:
            break
        centre = arrays.index_kji[col]
        lo = np.maximum(centre - reach - 1, 0)
        hi = np.minimum(centre + reach + 2, values.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        ball = np.zeros(tuple(hi - lo), np.uint8)
        points = offsets + (centre - lo)
        keep = np.all((points >= 0) & (points < hi - lo), axis=1)
        ball[tuple(points[keep].T)] = 1
        ball &= inside[box]
        crop = sitk.GetImageFromArray(np.ascontiguousarray(values[box]))
        crop.SetSpacing(image.GetSpacing())
        label = sitk.GetImageFromArray(ball)
        label.CopyInformation(crop)
        start = _clock()
        try:
            result = ext.execute(crop, label)
        except ValueError:  # pyradiomics refuses balls that are a line or a single voxel (the engine maps them)
            continue
        seconds += _clock() - start
        cols.append(col)
        for key in arrays.keys:
            expected[key].append(float(result[key]))
    if not cols:
        raise KiMapError("pyradiomics refused every sampled ball (a line or a single voxel)", input_name="--mask",
                         hint="use a larger --kernel-radius for the ball kernel")
    return len(cols) / seconds, _compare(arrays, np.asarray(cols), expected)


def _median_seconds(fn, repeats: int) -> np.ndarray:
    """Median (wall, CPU) seconds of ``repeats`` calls."""
    runs = []
    for _ in range(repeats):
        start = _clock()
        fn()
        runs.append(_clock() - start)
    return np.median(np.array(runs), axis=0)


def _settings(image: sitk.Image, kernel: str, kernel_radius: int, bin_width: float) -> dict:
    settings = {"binWidth": bin_width, "kernelRadius": kernel_radius, "maskedKernel": True}
    if kernel == "ball":
        settings["ballRadius"] = kernel_radius * min(image.GetSpacing())
    return settings


def time_engine(image: sitk.Image, mask: sitk.Image, kernel_radius: int = 2, bin_width: float = 25.0,
                repeats: int = 3, kernel: str = "cube", per_class: bool = False) -> tuple[dict, object]:
    """Engine voxels/s on the whole mask through ``feature_maps`` (all six classes; each alone if ``per_class``)
    and through ``feature_arrays``; returns the timings and the arrays (for the comparison)."""
    from KiMapLib.features.featuremaps import CLASSES, FEATURES, feature_arrays, feature_maps

    settings = _settings(image, kernel, kernel_radius, bin_width)
    n = int((sitk.GetArrayViewFromImage(mask) > 0).sum())
    if n == 0:
        raise KiMapError("the mask is empty", input_name="--mask")
    feature_arrays(image, mask, settings, kernel=kernel)  # warm-up (loads the numba cache)
    classes = {}
    if per_class:
        for cls in CLASSES:
            keys = [f"original_{cls}_{f}" for f in FEATURES[cls]]
            classes[cls] = n / _median_seconds(lambda k=keys: feature_maps(image, mask, settings, k, kernel),
                                               repeats)[0]
    maps_seconds = _median_seconds(lambda: feature_maps(image, mask, settings, kernel=kernel), repeats)
    arrays_seconds = _median_seconds(lambda: feature_arrays(image, mask, settings, kernel=kernel), repeats)
    arrays = feature_arrays(image, mask, settings, kernel=kernel)
    timing = {"kernel": kernel, "kernel_radius": kernel_radius, "bin_width": bin_width, "mask_voxels": n,
              "engine_voxels_per_s": n / maps_seconds[0], "engine_arrays_voxels_per_s": n / arrays_seconds[0],
              "engine_cpu_voxels_per_s": n / maps_seconds[1],
              "maps_over_arrays_time": maps_seconds[0] / arrays_seconds[0],
              "maps_over_arrays_cpu_time": maps_seconds[1] / arrays_seconds[1],
              "engine_whole_mask_seconds": maps_seconds[0], "engine_class_voxels_per_s": classes}
    return timing, arrays


def compare_pyradiomics(image: sitk.Image, mask: sitk.Image, timing: dict, arrays, reference_voxels: int = 300,
                        seed: int = 0, ball_reference_voxels: int = 12, repeats: int = 1) -> dict:
    """pyradiomics voxels/s on a sample of the mask for the engine run ``timing``, the ratio, and the agreement."""
    kernel, per_class = timing["kernel"], bool(timing["engine_class_voxels_per_s"])
    settings = _settings(image, kernel, timing["kernel_radius"], timing["bin_width"])
    n = timing["mask_voxels"]
    result = {k: v for k, v in timing.items() if k != "engine_class_voxels_per_s"}
    if kernel == "cube":
        ref_rate, fixed, maps, chosen = _reference_cube(image, mask, settings, min(reference_voxels, n), seed,
                                                        per_class, repeats)
        agreement = _agreement_cube(image, arrays, maps, chosen)
        pyrad_all = ref_rate["all"] if ref_rate["all"] is not None else np.full(2, chosen.shape[1] / fixed["all"])
        result["pyradiomics_fixed_seconds"] = fixed["all"]
        if per_class:
            engine_rate = timing["engine_class_voxels_per_s"]
            result["classes"] = {c: {"pyradiomics_voxels_per_s": None if ref_rate[c] is None else ref_rate[c][0],
                                     "engine_voxels_per_s": engine_rate[c],
                                     "ratio": None if ref_rate[c] is None else engine_rate[c] / ref_rate[c][0]}
                                 for c in engine_rate}
    else:
        result["ball_radius_mm"] = settings["ballRadius"]
        pyrad_all, agreement = _reference_ball(image, mask, settings, arrays, ball_reference_voxels, seed)
    result["reference_voxels"] = agreement.pop("voxels")
    result["pyradiomics_voxels_per_s"] = float(pyrad_all[0])
    result["pyradiomics_cpu_voxels_per_s"] = float(pyrad_all[1])
    result["ratio"] = timing["engine_voxels_per_s"] / pyrad_all[0]
    result["cpu_ratio"] = timing["engine_cpu_voxels_per_s"] / pyrad_all[1]
    result.update(agreement)
    return result


def _engine_peak_mb(image: sitk.Image, mask: sitk.Image, args) -> float:
    """Peak RSS (MB) of this process after ``feature_maps`` at the largest radius of each kernel (before any
    pyradiomics run, whose own peak would hide it)."""
    from KiMapLib.features.featuremaps import feature_maps

    for kernel in args.kernel:
        settings = _settings(image, kernel, max(args.kernel_radius), args.bin_width)
        feature_maps(image, mask, settings, kernel=kernel)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(args) -> int:
    from KiMapLib.atomic import write_text_file
    from KiMapLib.outputs import check_output_files

    if args.json:
        inputs = [("--image", args.image)] + ([("--mask", args.mask)] if args.mask else [])
        check_output_files([args.json], inputs, option="--json")
    image, mask = _load(args)
    name = args.name or str(args.image)
    print(f"bench-maps {name}: binWidth {args.bin_width:g}, all six classes, through feature_maps "
          f"(median of {args.repeats}); pyradiomics in the same run")
    peak = _engine_peak_mb(image, mask, args)
    print(f"{'kernel':<6}{'r':>3}{'voxels':>8}{'pyradiomics/s':>15}{'engine/s':>11}{'ratio':>8}{'CPU ratio':>11}"
          f"{'maps/arrays':>13}{'max rel diff':>14}  agree")
    runs = []
    for kernel in args.kernel:
        for radius in args.kernel_radius:  # engine then pyradiomics, config by config: the same load for both
            timing, arrays = time_engine(image, mask, radius, args.bin_width, args.repeats, kernel, args.per_class)
            row = compare_pyradiomics(image, mask, timing, arrays, args.reference_voxels,
                                      ball_reference_voxels=args.ball_reference_voxels,
                                      repeats=args.pyradiomics_repeats)
            runs.append(row)
            print(f"{row['kernel']:<6}{row['kernel_radius']:>3}{row['mask_voxels']:>8}"
                  f"{row['pyradiomics_voxels_per_s']:>15.1f}{row['engine_voxels_per_s']:>11.0f}{row['ratio']:>8.1f}"
                  f"{row['cpu_ratio']:>11.1f}{row['maps_over_arrays_time']:>13.2f}"
                  f"{row['max_relative_difference']:>14.1e}  "
                  f"{'yes' if row['agree'] else 'NO: ' + ', '.join(row['mismatching_features'])}", flush=True)
        for cls, c in row.get("classes", {}).items():
            ratio = "-" if c["ratio"] is None else f"{c['ratio']:.1f}"
            rate = "(too fast)" if c["pyradiomics_voxels_per_s"] is None else f"{c['pyradiomics_voxels_per_s']:.1f}"
            print(f"  {cls:<9}{rate:>23}{c['engine_voxels_per_s']:>11.0f}{ratio:>8}")
    print(f"engine peak memory {peak:.0f} MB (whole process: input, engine and maps at the largest radius of each "
          "kernel, before pyradiomics)")
    agree = all(r["agree"] for r in runs)
    if args.json:
        result = {"name": name, "image": str(args.image), "mask": str(args.mask) if args.mask else None,
                  "brightest": args.brightest, "label": args.label, "zscore": args.zscore, "agree": agree,
                  "engine_peak_memory_mb": peak, "runs": runs}
        write_text_file(args.json, json.dumps(result, indent=2), option="--json")
    return 0 if agree else 1


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
