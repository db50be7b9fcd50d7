"""Voxel-wise radiomics tools side by side on brain1 (``make bench-peers``): pyradiomics voxel-based, KiMap's
engine, flash-radiomics and ITK TextureFeatures, all tumour voxels, cube kernel radius 1 and 3, binWidth 25.

Run with the project's venv (pyradiomics, KiMap). The peers live in a separate venv (``--peers-python``, made by
``make bench-peers``; never in requirements.txt) and run as subprocesses of this script in ``--worker`` mode, which
imports only numpy, SimpleITK and the peer. Each tool's time is one whole call on the whole mask, inside its
process (imports and file reading excluded), KiMap's the median of ``--repeats`` ``feature_maps`` calls. Ratios
are measured in the same run: pyradiomics' time / the tool's time. For flash-radiomics and KiMap, the largest
relative difference to pyradiomics per feature class is printed (over mask voxels where both are finite,
|a - b| / |b| where |a - b| > 1e-9; voxels finite in one only are counted; pyradiomics' MCC is skipped where it
failed, see docs/featuremaps.md). ITK TextureFeatures computes other definitions (8 co-occurrence and 10
run-length features over a fixed histogram range), so it is timed only. A peer that is not installed, or fails,
is reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "pyradiomics-brain"
CLASSES = ("firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
ATOL = 1e-9


def settings(radius: int, bin_width: float) -> dict:
    """pyradiomics-style settings shared by every tool."""
    return {"binWidth": bin_width, "kernelRadius": radius, "maskedKernel": True, "label": 1}


def values_at(feature_map: sitk.Image, image: sitk.Image, index_kji: np.ndarray) -> np.ndarray:
    """Values of a map (on the image's grid or a crop of it) at the image's voxels ``index_kji``."""
    corner = np.asarray(image.TransformPhysicalPointToIndex(feature_map.GetOrigin()))[::-1]
    array = sitk.GetArrayViewFromImage(feature_map)
    local = index_kji - corner
    return array[local[:, 0], local[:, 1], local[:, 2]].astype(np.float64)


def pyradiomics_failed(name: str, reference: np.ndarray) -> bool:
    """pyradiomics' documented voxel-mode failures (docs/featuremaps.md): MCC stays at initValue 0 at every voxel
    when any kernel has an empty angle."""
    return name.endswith("glcm_MCC") and not np.any(reference)


def max_relative_difference(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, object]:
    """Per class: the largest |a - b| / |b| over the features both have and the voxels where both are finite
    (where |a - b| > ATOL), the feature it is at, the features compared, the voxels finite in only one, and the
    features skipped as pyradiomics failures."""
    result = {}
    for cls in CLASSES:
        worst, where, compared, one_finite, skipped = 0.0, "", 0, 0, []
        for name, b in want.items():
            if f"_{cls}_" not in name or name not in got:
                continue
            if pyradiomics_failed(name, b):
                skipped.append(name.split("_")[-1])
                continue
            a = got[name]
            both = np.isfinite(a) & np.isfinite(b)
            one_finite += int(np.sum(np.isfinite(a) != np.isfinite(b)))
            diff = np.abs(a[both] - b[both])
            far = diff > ATOL
            if far.any():
                rel = float(np.max(diff[far] / np.maximum(np.abs(b[both][far]), ATOL)))
                if rel > worst:
                    worst, where = rel, name.split("_")[-1]
            compared += 1
        result[cls] = {"max_rel_diff": worst if compared else None, "feature": where, "features": compared,
                       "voxels_finite_in_one": one_finite, "skipped": skipped}
    return result


# ---------------------------------------------------------------------------------------------- workers (peer venv)

def flash_worker(image: sitk.Image, mask: sitk.Image, radius: int, bin_width: float, out: Path) -> dict:
    """flash-radiomics spatial (voxel-based) maps of the six classes on the CPU backend."""
    from flash_radiomics import RadiomicsFeatureExtractor

    extractor = RadiomicsFeatureExtractor(backend="cpu", binWidth=bin_width, kernelRadius=radius, maskedKernel=True)
    extractor.disableAllFeatures()
    for cls in CLASSES:
        extractor.enableFeatureClassByName(cls)
    start = time.perf_counter()
    maps = extractor.execute(image, mask, label=1, spatialMode=True, output_hdf5_path=str(out.with_suffix(".h5")))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "maps": {k: v for k, v in maps.items() if isinstance(v, sitk.Image)}}


def itk_worker(image: sitk.Image, mask: sitk.Image, radius: int, bin_width: float, out: Path) -> dict:
    """ITK TextureFeatures' co-occurrence and run-length feature images over the mask (bins of ``bin_width``)."""
    import itk

    values = sitk.GetArrayFromImage(image).astype(np.float32)
    inside = sitk.GetArrayFromImage(mask) == 1
    low, high = float(values[inside].min()), float(values[inside].max())
    bins = max(2, int(np.floor(high / bin_width) - np.floor(low / bin_width)) + 1)
    itk_image = itk.image_view_from_array(values)
    itk_mask = itk.image_view_from_array(inside.astype(np.uint8))
    start = time.perf_counter()
    cooccurrence = itk.CoocurrenceTextureFeaturesImageFilter.New(
        itk_image, MaskImage=itk_mask, NumberOfBinsPerAxis=bins, HistogramMinimum=low, HistogramMaximum=high + 1e-3,
        NeighborhoodRadius=[radius] * 3)
    cooccurrence.Update()
    run_length = itk.RunLengthTextureFeaturesImageFilter.New(
        itk_image, MaskImage=itk_mask, NumberOfBinsPerAxis=bins, HistogramValueMinimum=low,
        HistogramValueMaximum=high + 1e-3, NeighborhoodRadius=[radius] * 3)
    run_length.Update()
    return {"seconds": time.perf_counter() - start, "maps": {}}


WORKERS = {"flash-radiomics": flash_worker, "itk-texturefeatures": itk_worker}


def worker_main(args) -> int:
    """``--worker``: run one peer, write its time and maps (values at the mask voxels) as .npz."""
    image, mask = sitk.ReadImage(args.image), sitk.ReadImage(args.mask)
    index_kji = np.argwhere(sitk.GetArrayViewFromImage(mask) == 1)
    result = WORKERS[args.worker](image, mask, args.radius, args.bin_width, Path(args.out))
    names = sorted(result["maps"])
    values = np.zeros((len(names), len(index_kji)))
    for f, name in enumerate(names):
        values[f] = values_at(result["maps"][name], image, index_kji)
    np.savez(args.out, seconds=result["seconds"], names=np.array(names, dtype=str), values=values)
    return 0


# ---------------------------------------------------------------------------------------------- main (project venv)

def run_peer(python: str, peer: str, radius: int, bin_width: float, tmp: Path) -> dict:
    """One peer in its venv: {"seconds", "values": {name: array}} or {"error": text}."""
    out = tmp / f"{peer}-r{radius}.npz"
    cmd = [python, str(Path(__file__).resolve()), "--worker", peer, "--image", str(DATA / "brain1_image.nrrd"),
           "--mask", str(DATA / "brain1_label.nrrd"), "--kernel-radius", str(radius), "--bin-width", str(bin_width),
           "--out", str(out)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if done.returncode != 0 or not out.exists():
        lines = (done.stderr or done.stdout).strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {done.returncode}"}
    data = np.load(out)
    return {"seconds": float(data["seconds"]), "values": dict(zip(data["names"].tolist(), data["values"], strict=True))}


def run_pyradiomics(image: sitk.Image, mask: sitk.Image, index_kji: np.ndarray, s: dict) -> dict:
    """pyradiomics voxel-based on the whole mask (one call)."""
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.CRITICAL)
    extractor = featureextractor.RadiomicsFeatureExtractor(**s)
    extractor.disableAllFeatures()
    for cls in CLASSES:
        extractor.enableFeatureClassByName(cls)
    start = time.perf_counter()
    result = extractor.execute(image, mask, voxelBased=True)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "values": {k: values_at(v, image, index_kji) for k, v in result.items()
                                           if isinstance(v, sitk.Image)}}


def run_kimap(image: sitk.Image, mask: sitk.Image, s: dict, repeats: int) -> dict:
    """KiMap's engine: median time of ``feature_maps`` (all 93 features), values from ``feature_arrays``."""
    from KiMapLib.features.featuremaps import feature_arrays, feature_maps

    arrays = feature_arrays(image, mask, s, kernel="cube")  # warm-up: loads the compiled kernels
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        feature_maps(image, mask, s, kernel="cube")
        runs.append(time.perf_counter() - start)
    return {"seconds": float(np.median(runs)), "values": dict(zip(arrays.keys, arrays.values, strict=True)),
            "index_kji": arrays.index_kji}


def main_bench(args) -> int:
    image = sitk.ReadImage(str(DATA / "brain1_image.nrrd"))
    mask = sitk.ReadImage(str(DATA / "brain1_label.nrrd"))
    peers = [p for p in args.peers if p in WORKERS]
    python = args.peers_python if Path(args.peers_python).exists() else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for radius in args.kernel_radius:
            s = settings(radius, args.bin_width)
            kimap = run_kimap(image, mask, s, args.repeats)
            reference = run_pyradiomics(image, mask, kimap["index_kji"], s)
            results = {"pyradiomics": reference, "kimap": kimap}
            for peer in peers:
                results[peer] = (run_peer(python, peer, radius, args.bin_width, Path(tmp)) if python else
                                 {"error": f"peer venv {args.peers_python} not found (run `make bench-peers`)"})
            voxels = len(kimap["index_kji"])
            for tool, res in results.items():
                row = {"tool": tool, "kernel_radius": radius, "voxels": voxels}
                if "error" in res:
                    row["error"] = res["error"]
                else:
                    row |= {"seconds": res["seconds"], "voxels_per_s": voxels / res["seconds"],
                            "ratio_vs_pyradiomics": reference["seconds"] / res["seconds"]}
                    if tool in ("kimap", "flash-radiomics"):
                        row["vs_pyradiomics"] = max_relative_difference(res["values"], reference["values"])
                rows.append(row)
                print_row(row)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=float))
    return 0


def print_row(row: dict) -> None:
    head = f"{row['tool']:<20} r={row['kernel_radius']}  "
    if "error" in row:
        print(head + f"FAILED / not available: {row['error']}", flush=True)
        return
    text = (f"{row['seconds']:9.2f} s  {row['voxels_per_s']:9.0f} vox/s  "
            f"{row['ratio_vs_pyradiomics']:8.1f}x pyradiomics")
    diffs = row.get("vs_pyradiomics")
    if diffs:
        text += "\n    max rel diff to pyradiomics: " + ", ".join(_difference(cls, d) for cls, d in diffs.items())
    elif row["tool"] == "itk-texturefeatures":
        text += "  (other feature definitions: timed only)"
    print(head + text, flush=True)


def _difference(cls: str, d: dict) -> str:
    if d["max_rel_diff"] is None:
        return f"{cls} -"
    text = f"{cls} {d['max_rel_diff']:.1e}" + (f" ({d['feature']})" if d["feature"] else "")
    if d["voxels_finite_in_one"]:
        text += f" [{d['voxels_finite_in_one']} NaN in one only]"
    if d["skipped"]:
        text += f" [skipped: {', '.join(d['skipped'])}]"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel-radius", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--bin-width", type=float, default=25.0)
    parser.add_argument("--repeats", type=int, default=3, help="KiMap runs (median)")
    parser.add_argument("--peers", nargs="+", default=list(WORKERS), help="peers to run")
    parser.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--mask", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.radius = args.kernel_radius[0]
        return worker_main(args)
    return main_bench(args)


if __name__ == "__main__":
    sys.exit(main())
