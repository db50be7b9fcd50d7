"""``kimap demo``: the whole chain on a built-in synthetic case the packaged model never saw."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from KiMapLib.phantom import DEMO_SEED  # the demo case's seed; the packaged model was trained on another

SEQUENCES = ("t1c", "t2", "flair", "adc")  # what the synthetic case has


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the whole chain on a synthetic case (SYNTHETIC data)")
    parser.add_argument("--out", type=Path, default=Path("out/demo"),
                        help="output folder (new, empty or an earlier KiMap demo)")
    parser.add_argument("--seed", type=int, default=DEMO_SEED,
                        help="seed of the synthetic demo patient (the packaged model never saw it)")
    parser.add_argument("--model", type=Path,
                        help="model bundle folder or packaged model id (default: the packaged model that uses the "
                        "most of the phantom's sequences: t1c, t2, flair, adc)")
    parser.set_defaults(func=run)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def run(args: argparse.Namespace) -> int:
    from KiMapLib.atomic import atomic_directory
    from KiMapLib.features.table import write_table
    from KiMapLib.inputs.case import prepare_case
    from KiMapLib.maps.mapping import compute_map, write_map_files
    from KiMapLib.model.bundle import load_model, model_folder
    from KiMapLib.model.plots import predicted_vs_measured
    from KiMapLib.model.prediction import predict_biopsies
    from KiMapLib.model.training import regression_metrics
    from KiMapLib.outputs import check_output_folder
    from KiMapLib.phantom import SYNTHETIC_NOTICE, generate_cohort
    from KiMapLib.progress import progress_bar

    check_output_folder(args.out, "demo", [("--model", args.model and model_folder(args.model))])
    started = time.perf_counter()
    model = load_model(args.model, sequences=SEQUENCES)
    out = Path(args.out)
    with atomic_directory(out, "demo") as staging:
        with progress_bar("synthetic case") as progress:
            records = generate_cohort(staging / "case", 1, args.seed, progress=progress)
        folder = staging / "case" / records[0]["patient_id"]
        from KiMapLib.inputs.biopsies import read_biopsies
        from KiMapLib.inputs.images import read_volume

        volumes = {name: read_volume(folder / f"{name}.nrrd", name) for name in model.required_sequences}
        biopsies = read_biopsies(folder / "biopsies.csv")
        truth = sitk.GetArrayFromImage(read_volume(folder / "ki67_truth.nrrd", "ki67_truth"))
        label = read_volume(folder / "tumor_label.nrrd", "tumor_label")
        case = prepare_case(volumes, model.settings, required=model.required_sequences)
        covariates = {k: biopsies[0].covariates.get(k) for k in ("sex", "age", "tumor_type")}

        with progress_bar("biopsies") as progress:
            rows, errors = predict_biopsies(case, biopsies, model, progress)
        table = []
        for row in rows:
            row["ki67_truth"] = float(truth[row["voxel_k"], row["voxel_j"], row["voxel_i"]])
            table.append({k: v for k, v in row.items() if "_original_" not in k})
        write_table(table, staging / "biopsies.csv")
        measured = np.array([r["ki67"] for r in table])
        predicted = np.array([r["predicted_ki67"] for r in table])
        biopsy_metrics = regression_metrics(measured, predicted)
        predicted_vs_measured(measured, predicted, ["demo biopsies"] * len(table), biopsy_metrics,
                              staging / "biopsies_predicted_vs_measured.png", title="Demo case (unseen)")

        with progress_bar("ki67 map") as progress:
            # the phantom's label 1 is its necrotic core (as in BraTS): not mapped, see docs/phantom.md
            result = compute_map(case, model, label, covariates, progress, exclude_labels=(1,))
        points = [(r["voxel_i"], r["voxel_j"], r["voxel_k"]) for r in rows]
        write_map_files(result, staging, ("nrrd",), points_ijk=points, point_labels=[str(r["biopsy_id"]) for r in rows])
        ki67 = sitk.GetArrayFromImage(result.ki67)
        inside = np.isfinite(ki67)
        rho = spearman(ki67[inside], truth[inside])
        scene = _demo_scene(staging, folder, case, result, rows)
        report = {"notice": SYNTHETIC_NOTICE, "model_id": model.model_id, "seed": args.seed,
                  "patient_id": records[0]["patient_id"], "biopsies": len(rows),
                  "biopsy_errors": [str(e) for e in errors], "biopsy_metrics": biopsy_metrics,
                  "map_vs_truth_spearman": rho, "map_voxels": int(inside.sum()), "map_summary": result.summary,
                  "scene": scene, "seconds": round(time.perf_counter() - started, 1)}
        (staging / "demo_report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"{SYNTHETIC_NOTICE}. Model {model.model_id} (research use only).")
    print(f"Biopsies: {len(rows)} predicted, RMSE {biopsy_metrics['rmse']:.1f} % vs measured "
          f"(table: {out / 'biopsies.csv'})")
    print(f"Map: {int(inside.sum())} voxels in {result.summary['timings_s']['total']:.1f} s; Spearman vs the "
          f"phantom's ki67 truth {rho:.2f}")
    uncertain = ("ki67_lower.nrrd", "ki67_upper.nrrd", "out_of_domain.nrrd", "uncertainty.png") if (
        result.lower is not None) else ()
    for name in ("ki67_map.nrrd", "ki67_probability.nrrd", *uncertain, "overlay.png", "biopsies.csv",
                 "biopsies_predicted_vs_measured.png", "summary.json", "demo_report.json", *scene):
        print(f"  {out / name}")
    return 0


def _demo_scene(folder: Path, case_folder: Path, case, result, rows) -> list[str]:
    """The Slicer scene (.mrb) and a slice-view rendering, when slicer-core is installed."""
    try:
        from KiMapLib.slicer.demo_scene import write_demo_scene
    except ImportError:
        return []
    paths = {name: case_folder / f"{name}.nrrd" for name in case.images}
    return [Path(p).name for p in write_demo_scene(folder, case, result, rows, paths)]
