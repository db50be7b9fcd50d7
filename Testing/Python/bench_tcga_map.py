"""End-to-end whole-tumour ki67 map of the TCGA case from three sequences (issue: <= 10 s on this machine).

    .venv/bin/python Testing/Python/bench_tcga_map.py [--repeats 3] [--model DIR|default] [--slicer] [--api]

Default: what a batch user runs, ``kimap map --volume t1c=... --volume t2=... --volume flair=... --region tumour
--model M --out D`` as a fresh process (start-up, imports, loading and verifying the model, reading and aligning
the volumes, foreground, z-scores, features at every tumour voxel on the 5 mm ball, the model, writing the ki67 and
probability maps, overlay PNG and summary). ``M`` is made here: a ridge fitted on random rows that uses 15 features
of all six classes from each of t1c, T2 and FLAIR (a ridge keeps every feature); its predictions mean nothing, only
its inputs matter for the time. ``--model default`` maps with the packaged default model instead (its own used
features), ``--model DIR`` with that bundle. Prints the wall time (median of the repeats, after one warm-up run that
fills the numba cache), the CPU time (user + system, all threads: the work, which a busy shared machine does not
inflate as the wall time), the compute_map timings the command reports, and its peak RSS.

``--slicer``: also the Slicer module's map, ``KiMapLogic.computeMap`` on a slicer-core scene (volume and region
nodes in, ki67 and P(high) nodes out; the model loaded once before, as when the user picks it).
``--api``: also ``feature_maps`` per sequence (the library call returning 15 bounding-box feature images).
Not a test (no timed assertions).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TCGA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tcga-du-7294"
SEQUENCES = ("t1c", "t2", "flair")
FEATURES = [
    "original_firstorder_Mean", "original_firstorder_Entropy", "original_firstorder_Variance",
    "original_glcm_Contrast", "original_glcm_Correlation", "original_glcm_JointEntropy", "original_glcm_Idm",
    "original_glcm_ClusterShade", "original_glrlm_RunLengthNonUniformity", "original_glrlm_GrayLevelNonUniformity",
    "original_glszm_ZoneEntropy", "original_glszm_SmallAreaEmphasis", "original_gldm_DependenceEntropy",
    "original_ngtdm_Busyness", "original_ngtdm_Coarseness",
]


def three_sequence_model(folder: Path) -> Path:
    """A model bundle whose used features are FEATURES on each of SEQUENCES (random training rows)."""
    from KiMapLib.model.bundle import save_bundle
    from KiMapLib.model.training import TrainingConfig, train

    rng = np.random.default_rng(0)
    columns = [f"{s}_{f}" for s in SEQUENCES for f in FEATURES]
    rows = [{"patient_id": f"p{p}", "ki67": float(rng.uniform(1, 60)), **dict(zip(columns, rng.normal(size=45),
                                                                                   strict=True))}
            for p in range(6) for _ in range(8)]
    config = TrainingConfig(estimator="ridge", k_features=len(columns), covariates=(), extra_reports=False)
    result = train(rows, config, model_id="bench-three-sequences")
    assert sorted(result.card["used_features"]) == sorted(columns)
    return save_bundle(result.pipeline, result.card, spread=result.spread, out_dir=folder / "model")


@dataclass
class Run:
    """One ``kimap map`` process: wall and CPU seconds, the timings_s it reports, its peak RSS (MB)."""

    wall: float
    cpu: float
    timings: dict
    rss_mb: float


def run_map(model: Path | None, out: Path) -> Run:
    """One ``kimap map`` process (``model`` None: the packaged default model)."""
    command = [sys.executable, "-m", "KiMapLib", "map", "--out", str(out),
               "--region", str(TCGA / "tumor_seg_isen20.nii.gz")]
    if model is not None:
        command += ["--model", str(model)]
    for name in SEQUENCES:
        command += ["--volume", f"{name}={TCGA / f'{name}.nii.gz'}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"kimap map failed:\n{done.stderr}")
    summary = json.loads((out / "summary.json").read_text())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Run(wall, cpu, summary["timings_s"], max(after.ru_maxrss, before.ru_maxrss) / 1024)


def slicer_seconds(model_folder: Path, repeats: int) -> list[float]:
    """``KiMapLogic.computeMap`` on a slicer-core scene (the module's Map button / the console API): volume and
    region nodes in, ki67 and P(high) nodes out. The model is loaded once before, as when the user picks it."""
    import SimpleITK as sitk

    from KiMapLib.slicer.logic import KiMapLogic, setup_headless_scene, update_node_from_image

    scene = setup_headless_scene()
    nodes = {}
    for name in SEQUENCES:
        nodes[name] = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        update_node_from_image(nodes[name], sitk.ReadImage(str(TCGA / f"{name}.nii.gz")))
    region = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "tumour")
    update_node_from_image(region, sitk.ReadImage(str(TCGA / "tumor_seg_isen20.nii.gz")))
    logic = KiMapLogic(scene)
    model = logic.loadModel(model_folder)
    ki67, probability = logic.computeMap(nodes, region, model)  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        logic.computeMap(nodes, region, model, ki67Node=ki67, probabilityNode=probability)
        seconds.append(time.perf_counter() - start)
    return seconds


def api_seconds() -> dict[str, float]:
    """``feature_maps`` per sequence (read, foreground, z-score, 15 bounding-box maps), as the library API."""
    import SimpleITK as sitk

    from KiMapLib.features.featuremaps import feature_maps
    from KiMapLib.inputs.normalization import foreground_mask, zscore
    from KiMapLib.settings import ExtractionSettings

    settings = ExtractionSettings().pyradiomics_settings() | {"ballRadius": 5.0}
    tumour = sitk.GetArrayFromImage(sitk.ReadImage(str(TCGA / "tumor_seg_isen20.nii.gz"))) > 0
    seconds = {}
    for name in SEQUENCES:
        start = time.perf_counter()
        image = sitk.ReadImage(str(TCGA / f"{name}.nii.gz"), sitk.sitkFloat32)
        foreground = foreground_mask(image)
        normalized = zscore(image, foreground, 100.0, name)
        mask = sitk.GetImageFromArray((tumour & foreground).astype(np.uint8))
        mask.CopyInformation(normalized)
        kernel_mask = sitk.GetImageFromArray(foreground.astype(np.uint8))
        kernel_mask.CopyInformation(normalized)
        maps = feature_maps(normalized, mask, settings, FEATURES, kernel="ball", kernel_mask=kernel_mask)
        assert len(maps) == len(FEATURES)
        del maps
        seconds[name] = time.perf_counter() - start
    seconds["total"] = sum(seconds.values())
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=None,
                        help="'default' (the packaged model) or a bundle folder (default: the 45-feature bench model)")
    parser.add_argument("--slicer", action="store_true", help="also time KiMapLogic.computeMap on slicer-core")
    parser.add_argument("--api", action="store_true", help="also time feature_maps (45 bounding-box feature images)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            model, what = three_sequence_model(Path(tmp)), "15 features x 3 sequences (bench model)"
        elif args.model == "default":
            model, what = None, "the packaged default model"
        else:
            model, what = Path(args.model), f"model {args.model}"
        run_map(model, Path(tmp) / "warm-up")  # fills the numba cache on a fresh checkout
        runs = [run_map(model, Path(tmp) / f"run{r}") for r in range(args.repeats)]
    walls = [run.wall for run in runs]
    print(f"kimap map, TCGA case, t1c + T2 + FLAIR, {what}, ball 5 mm, binWidth 25: "
          f"{statistics.median(walls):.1f} s end to end (median of {args.repeats}; runs "
          + ", ".join(f"{w:.1f}" for w in walls) + f"), CPU {statistics.median(run.cpu for run in runs):.1f} s")
    for run in runs:
        print(f"  run {run.wall:.1f} s (CPU {run.cpu:.1f} s): compute_map {run.timings['total']:.1f} s, "
              f"features {run.timings['features']:.1f} s")
    print(f"peak RSS of kimap map {max(run.rss_mb for run in runs):.0f} MB")
    if args.slicer:
        with tempfile.TemporaryDirectory() as tmp:
            seconds = slicer_seconds(three_sequence_model(Path(tmp)), args.repeats)
        print(f"KiMapLogic.computeMap (Slicer module / console API, nodes in, nodes out, model loaded): "
              f"{statistics.median(seconds):.1f} s (median of {args.repeats}; runs "
              + ", ".join(f"{s:.1f}" for s in seconds) + ")")
    if args.api:
        api_seconds()  # warm-up
        api = [api_seconds() for _ in range(args.repeats)]
        median = {k: statistics.median(r[k] for r in api) for k in api[0]}
        print(f"feature_maps API, per sequence incl. read and z-score (median of {args.repeats}): "
              + ", ".join(f"{k} {v:.1f} s" for k, v in median.items()))


if __name__ == "__main__":
    main()
