"""The pipeline sub-commands: ``extract``, ``train`` and ``map``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
from pathlib import Path

from KiMapLib.atomic import atomic_files
from KiMapLib.errors import FieldOfViewError, KiMapError
from KiMapLib.features.table import read_table, write_table_file
from KiMapLib.inputs.biopsies import AGE_RANGE, Biopsy, read_biopsies
from KiMapLib.inputs.case import prepare_case
from KiMapLib.inputs.cohort_folder import cohort_folder_patients
from KiMapLib.inputs.geometry import check_ball_grid
from KiMapLib.inputs.images import inspect_volume, parse_volume_args, read_volume, read_volumes
from KiMapLib.outputs import check_output_files, check_output_folder
from KiMapLib.settings import BIAS_CORRECTIONS, ExtractionSettings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    extract = subparsers.add_parser("extract", help="radiomic features around biopsy points -> cohort table")
    source = extract.add_mutually_exclusive_group(required=True)
    source.add_argument("--volume", action="append", metavar="NAME=PATH",
                        help="a sequence (t1c, t2, flair, adc) of one patient; repeat per sequence "
                             "(required unless --cohort)")
    source.add_argument("--cohort", type=Path, metavar="DIR",
                        help="a folder of patient folders, each with <sequence>.nrrd and biopsies.csv "
                             "(required unless --volume)")
    extract.add_argument("--biopsies", type=Path,
                         help="CSV (RAS mm) or .mrk.json; required with --volume (default: none)")
    extract.add_argument("--patient-id",
                         help="patient id for a .mrk.json or a CSV without patient_id (default: 'patient')")
    extract.add_argument("--radius", type=float, default=ExtractionSettings.ball_radius_mm, help="ball radius, mm")
    extract.add_argument("--bin-width", type=float, default=ExtractionSettings.bin_width,
                         help="pyradiomics binWidth on the z-scored (x100) intensities")
    add_bias_correction_argument(extract)
    extract.add_argument("--out", type=Path, required=True,
                         help="cohort table CSV to write (replaced if it exists, never if it is an input), with "
                              "its settings beside it in <name>.settings.json")
    extract.set_defaults(func=run_extract)

    train = subparsers.add_parser("train", help="train + leave-one-patient-out validation -> model bundle")
    table = train.add_mutually_exclusive_group(required=True)
    table.add_argument("--features", type=Path, help="cohort table from `kimap extract` (required unless --db)")
    table.add_argument("--db", help="cohort database (`kimap cohort`): SQLite path or postgresql:// URL "
                       "(required unless --features)")
    train.add_argument("--settings", type=int, metavar="ID", help="with --db: extraction settings id (default: the "
                       "only one); the bundle is also recorded in the database")
    train.add_argument("--out", type=Path, required=True,
                       help="model bundle folder to write (new, empty or an earlier KiMap model bundle)")
    train.add_argument("--target", default="ki67", help="column of the measured value to predict")
    train.add_argument("--group", default="patient_id", help="column that identifies the patient")
    train.add_argument("--threshold", type=float, default=20.0, help="ki67 %% for P(ki67 >= threshold)")
    train.add_argument("--estimator", default="auto", choices=("auto", "ridge", "enet", "rf", "gbr"),
                       help="auto (default): family and size chosen by nested leave-one-patient-out among ridge, "
                            "elastic net, random forest and gradient boosting (the reported score is the outer "
                            "one); or one family with fixed hyper-parameters: ridge, enet (elastic net over all "
                            "features), rf (random forest), gbr (gradient boosting)")
    train.add_argument("--selector", default="mrmr", choices=("mrmr", "f_regression"),
                       help="with a fixed family: feature selection by mRMR (redundancy-aware, lets complementary "
                            "sequences in; default) or the univariate F-test")
    train.add_argument("--k-features", type=int, default=20,
                       help="with a fixed family other than enet: number of features kept (default 20)")
    train.add_argument("--n-jobs", type=int, default=2, help="processes for the cross-validation fits (default 2)")
    train.add_argument("--model-id", default="kimap-ki67-custom", help="model id written into the model card")
    train.add_argument("--families", default="ridge,enet,rf,gbr", metavar="LIST",
                       help="with --estimator auto: the model families the nested selection chooses from, "
                       "comma-separated")
    train.add_argument("--sequences", metavar="LIST",
                       help="only the features of these sequences, comma-separated with t1c (default: every sequence "
                       "in the table)")
    train.add_argument("--interval-level", type=float, default=0.9,
                       help="default level of the prediction intervals, 0.5-0.99 (stored in the model card)")
    train.add_argument("--seed", type=int, default=0, help="random seed (random forest, calibration folds)")
    train.add_argument("--nested-ablation", action="store_true",
                       help="sequence ablation with the nested selection run on each sequence subset (about "
                            "2 x sequences times the validation's time more; default: the final candidate, fixed)")
    train.add_argument("--data-description", default="",
                       help="what the training data are, written into the model card (default: empty)")
    train.add_argument("--register", action="store_true",
                       help="make the bundle (inside Resources/Models) the packaged default in Models.json")
    train.set_defaults(func=run_train)

    mapper = subparsers.add_parser("map", help="whole-tumor ki67 and probability maps")
    mapper.add_argument("--volume", action="append", required=True, metavar="NAME=PATH",
                        help="a sequence (t1c, t2, flair, adc): a file or DICOM folder; repeat per sequence")
    mapper.add_argument("--region", type=Path, help="tumour label volume (voxels > 0 are mapped, except "
                        "--exclude-label); default: the automatic tumour segmentation from every given sequence "
                        "(necrotic core excluded), refused when it is not plausible")
    mapper.add_argument("--exclude-label", type=int, action="append", default=[], metavar="LABEL",
                        help="a label of --region not to map, repeatable (e.g. 1 for a BraTS necrotic core; "
                        "default: none)")
    mapper.add_argument("--allow-t1c-only-region", action="store_true",
                        help="accept the automatic region from t1c alone (bright t1c is also vessels, sinuses and "
                        "choroid plexus: look at region_qc.png); default: refused, give FLAIR/T2 or --region")
    mapper.add_argument("--segmentation-model", type=Path, metavar="DIR",
                        help="your own tumour segmentation model (ONNX bundle: model.onnx + segmentation_card.json) "
                        "instead of the automatic method; its necrotic core is not mapped (default: none)")
    mapper.add_argument("--model", type=Path,
                        help="model bundle folder or a packaged model's id (default: the packaged model that uses "
                        "the most of the given sequences: with adc the adc model, else the t1c/t2/flair one)")
    mapper.add_argument("--biopsies", type=Path, help="biopsy points to mark on the overlay (default: none)")
    mapper.add_argument("--age", type=_age, help="patient age in years (0-120), a model covariate (default: imputed)")
    mapper.add_argument("--sex", choices=("F", "M"), help="patient sex, a model covariate (default: imputed)")
    mapper.add_argument("--tumor-type", choices=("primary", "recurrent"),
                        help="primary or recurrent tumour, a model covariate (default: imputed)")
    mapper.add_argument("--interval-level", type=float, metavar="LEVEL",
                        help="level of the prediction intervals ki67_lower/ki67_upper, 0.5-0.99 (default: the model "
                        "card's, 0.9)")
    mapper.add_argument("--formats", default="nrrd", help="comma-separated: nrrd,nifti")
    mapper.add_argument("--out", type=Path, required=True, help="output folder (new, empty or an earlier KiMap map)")
    mapper.set_defaults(func=run_map)


def add_bias_correction_argument(parser: argparse.ArgumentParser) -> None:
    """``--bias-correction none|n4``: recorded in the settings (and so in the model card), applied again at mapping."""
    parser.add_argument("--bias-correction", choices=BIAS_CORRECTIONS, default=ExtractionSettings.bias_correction,
                        help="bias-field correction of t1c/t2/flair/t1 before the z-score: N4 (SimpleITK; about 3 "
                             "CPU-s per 240x240x155 sequence) or none (default: %(default)s; measured best on the "
                             "phantom, leave-one-institution-out)")


def _age(text: str) -> float:
    try:
        age = float(text)
    except ValueError:
        age = float("nan")
    if not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
        raise argparse.ArgumentTypeError(f"'{text}' is not an age from {AGE_RANGE[0]:g} to {AGE_RANGE[1]:g} years")
    return age


def _check_volumes(volumes: dict[str, Path], settings: ExtractionSettings, patient: str) -> None:
    """From the headers alone, before any work: every volume readable and within the memory budget, and the
    t1c grid fine enough (and not too fine) for the ball."""
    if "t1c" not in volumes:
        raise KiMapError(f"no t1c volume for patient {patient}", input_name="t1c",
                         hint="every model and map is defined on the t1c grid")
    for name, path in volumes.items():
        _, spacing = inspect_volume(path, name)
        if name == "t1c":
            check_ball_grid(spacing, settings.ball_radius_mm, f"t1c of {patient}")


def _settings(args: argparse.Namespace) -> ExtractionSettings:
    """The extraction settings of the command line, within the model card's bounds (checked before any work)."""
    settings = ExtractionSettings(ball_radius_mm=args.radius, bin_width=args.bin_width,
                                  bias_correction=args.bias_correction)
    settings.check("--radius/--bin-width")
    return settings


def extract_patient(volumes: dict[str, Path], biopsies: list[Biopsy], settings: ExtractionSettings,
                    progress=None) -> tuple[list[dict], list[KiMapError]]:
    from KiMapLib.features.extraction import extract_biopsies

    case = prepare_case(read_volumes(volumes), settings)
    for note in case.notes:
        print(f"note: {note}", file=sys.stderr)
    return extract_biopsies(case, biopsies, progress)


def settings_path(table: Path) -> Path:
    """The extraction settings recorded beside a cohort table: ``<table>.settings.json``."""
    return table.with_suffix(".settings.json")


def run_extract(args: argparse.Namespace) -> int:
    from KiMapLib.progress import progress_bar

    settings = _settings(args)
    outputs = [args.out, settings_path(args.out)]
    if args.cohort:
        found = cohort_folder_patients(args.cohort)
        check_output_files(outputs, [("--cohort", args.cohort)] + [
            (f"--cohort {pid} {path.name}", path) for pid, vols, csv_path in found
            for path in (*vols.values(), csv_path)])
        patients = [(pid, vols, read_biopsies(csv_path, pid)) for pid, vols, csv_path in found]
    else:
        if not args.biopsies:
            raise KiMapError("--biopsies is required with --volume", input_name="--biopsies")
        volumes = parse_volume_args(args.volume)
        check_output_files(outputs, [("--biopsies", args.biopsies),
                                     *((f"--volume {name}", path) for name, path in volumes.items())])
        biopsies = read_biopsies(args.biopsies, args.patient_id)
        patients = [(args.patient_id or "patient", volumes, biopsies)]
    for pid, volumes, _ in patients:  # every input checked before the first patient is extracted
        _check_volumes(volumes, settings, pid)
    rows: list[dict] = []
    errors: list[KiMapError] = []
    for pid, volumes, biopsies in patients:
        with progress_bar(f"extract {pid}") as progress:
            patient_rows, patient_errors = extract_patient(volumes, biopsies, settings, progress)
        rows += patient_rows
        errors += patient_errors
    for error in errors:
        print(f"kimap extract: error: {error}", file=sys.stderr)
    if not rows:
        raise KiMapError("no biopsy could be extracted; nothing written", input_name="--biopsies")
    with atomic_files(outputs) as (table, sidecar):  # both or neither
        write_table_file(rows, table)
        sidecar.write_text(json.dumps(settings.to_dict(), indent=2) + "\n")
    partial = sum(isinstance(error, FieldOfViewError) for error in errors)  # rows kept, one sequence empty
    problems = [f"{len(errors) - partial} biopsies failed"] if len(errors) > partial else []
    problems += [f"{partial} sequence(s) outside a field of view left empty"] if partial else []
    print(f"{len(rows)} biopsies x {sum('_original_' in k for k in rows[0])} features -> {args.out}"
          + (f" ({', '.join(problems)}; listed above)" if errors else ""))
    return 1 if errors else 0


def run_train(args: argparse.Namespace) -> int:
    from KiMapLib.model.bundle import save_bundle
    from KiMapLib.model.calibration import plot_reliability
    from KiMapLib.model.plots import importance, predicted_vs_measured, sequence_ablation
    from KiMapLib.model.training import TrainingConfig, train
    from KiMapLib.progress import progress_bar

    table_inputs = [] if args.db else [("--features", args.features),
                                       ("--features settings", settings_path(args.features))]
    check_output_folder(args.out, "model bundle", table_inputs)
    if args.db:
        from KiMapLib.app.cohort_command import training_rows

        rows, settings = training_rows(args.db, args.settings)
    else:
        rows, settings = read_table(args.features), _table_settings(args.features)
    config = TrainingConfig(target=args.target, group=args.group, threshold_percent=args.threshold,
                            estimator=args.estimator, k_features=args.k_features, selector=args.selector,
                            seed=args.seed, n_jobs=args.n_jobs, interval_level=args.interval_level,
                            nested_ablation=args.nested_ablation,
                            families=tuple(f.strip() for f in args.families.split(",") if f.strip()),
                            sequences=tuple(s.strip() for s in args.sequences.split(",")) if args.sequences else None)
    scheme = "nested leave-one-patient-out" if args.estimator == "auto" else "leave-one-patient-out"
    with progress_bar(f"train ({scheme})") as progress:
        result = train(rows, config, settings=settings, model_id=args.model_id,
                       data_description=args.data_description, progress=progress)
    with tempfile.TemporaryDirectory() as folder:
        reports = Path(folder)
        labels = [str(b.get("institution") or "all") for b in result.report["biopsies"]]
        predicted_vs_measured(result.measured, result.predicted, labels, result.report["cv"],
                              reports / "predicted_vs_measured.png")
        plot_reliability(result.report["uncertainty"]["calibration"], reports / "calibration.png",
                         config.threshold_percent)
        importance(result.report["uncertainty"]["global_importance"], reports / "feature_importance.png")
        if result.report.get("sequence_ablation"):
            sequence_ablation(result.report["sequence_ablation"], reports / "sequence_ablation.png")
        (reports / "cv_report.json").write_text(json.dumps(result.report, indent=2) + "\n")
        save_bundle(result.pipeline, result.card, spread=result.spread, out_dir=args.out,
                    extra_files={p.name: p.read_bytes() for p in reports.iterdir()})
    if args.register:
        from KiMapLib.model.bundle import register_packaged

        register_packaged(args.out)
    if args.db:
        from KiMapLib.app.cohort_command import register_trained_model

        print(f"model recorded in the cohort database as model #{register_trained_model(args.db, args.out)}")
    cv = result.report["cv"]
    print(f"{cv['scheme']} over {cv['folds']} patients: RMSE {cv['rmse']:.2f} %, R² {cv['r2']:.3f}, "
          f"MSE {cv['mse']:.2f}, AUC {cv['auc']:.3f}, Brier {cv['brier']:.3f}")
    intervals, calibrated = cv["intervals"], cv["calibration"]
    print(f"{intervals['level']:.0%} prediction intervals on held-out patients: coverage {intervals['coverage']:.3f}, "
          f"mean width {intervals['mean_width']:.1f} points (sd {intervals['width_sd']:.1f}); P(high): ECE "
          f"{calibrated['ece']:.3f}, Brier {calibrated['brier']:.3f}")
    if "leave_one_institution_out" in cv:
        loio = cv["leave_one_institution_out"]
        print(f"leave-one-institution-out over {loio['folds']} institutions: RMSE {loio['rmse']:.2f} %, "
              f"R² {loio['r2']:.3f}")
    if "sequence_ablation" in cv:
        print(f"sequence ablation: {cv['sequence_ablation']['scheme']}")
    print(f"model: {result.card['estimator']['candidate']}; sequences used: "
          f"{', '.join(result.card['required_sequences'])}")
    print(f"model bundle -> {args.out} (cv_report.json, predicted_vs_measured.png, calibration.png, "
          "feature_importance.png"
          + (", sequence_ablation.png)" if result.report.get("sequence_ablation") else ")"))
    return 0


def _table_settings(path: Path) -> ExtractionSettings:
    """Extraction settings recorded beside a table (``<table>.settings.json``), else the defaults."""
    sidecar = settings_path(path)
    return ExtractionSettings.from_dict(json.loads(sidecar.read_text())) if sidecar.exists() else ExtractionSettings()


def _preload(kernels_loaded: threading.Event) -> None:
    """In the background, in the order they are needed: the engine (numba) and its compiled kernels (then
    ``kernels_loaded`` is set: the model's reader starts), then matplotlib for the overlay. A failure here shows
    again, as a clear error, where the map needs the part."""
    try:
        from KiMapLib.features.featuremaps import warm_up

        warm_up()
    except Exception:
        pass
    finally:
        kernels_loaded.set()  # whatever happened: the model's reader must not wait forever
    with contextlib.suppress(Exception):
        from KiMapLib.plotting import pyplot

        pyplot()


def run_map(args: argparse.Namespace) -> int:
    from KiMapLib.app.cli import print_json
    from KiMapLib.features.extraction import biopsy_voxel
    from KiMapLib.maps.mapping import compute_map, write_map
    from KiMapLib.model.bundle import load_model, model_folder
    from KiMapLib.progress import progress_bar
    from KiMapLib.region.model_region import model_region
    from KiMapLib.region.onnx_model import load_segmentation_model

    volume_paths = parse_volume_args(args.volume)
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    unknown = [f for f in formats if f not in ("nrrd", "nifti")]
    if unknown or not formats:
        raise KiMapError(f"unknown format '{unknown[0] if unknown else args.formats}'", input_name="--formats",
                         hint="use nrrd and/or nifti, e.g. --formats nrrd,nifti")
    if args.interval_level is not None:
        from KiMapLib.model.bundle import check_level

        check_level(args.interval_level)
    if args.exclude_label and not args.region:
        raise KiMapError("--exclude-label applies to a --region you give", input_name="--exclude-label",
                         hint="the automatic region never maps its necrotic core; drop --exclude-label or add --region")
    model_dir = model_folder(args.model, volume_paths)  # a folder, a packaged id, or the one the sequences pick
    check_output_folder(args.out, "map", [("--model", model_dir), ("--region", args.region),
                                          ("--biopsies", args.biopsies),
                                          *((f"--volume {name}", path) for name, path in volume_paths.items())])
    # the compiled feature kernels, skops (reading the model) and matplotlib (the overlay) take about a second each
    # to load: they load in the background, kernels first, while the volumes are read and the features computed;
    # the model file is verified before anything runs
    kernels_loaded = threading.Event()
    threading.Thread(target=_preload, args=(kernels_loaded,), name="kimap-preload", daemon=True).start()
    if args.region and args.segmentation_model:
        raise KiMapError("give either --region or --segmentation-model, not both", input_name="--segmentation-model")
    segmentation_model = load_segmentation_model(args.segmentation_model) if args.segmentation_model else None
    model = load_model(args.model, background=True, start_after=kernels_loaded, sequences=volume_paths)
    biopsies = read_biopsies(args.biopsies) if args.biopsies else []  # every input is checked before the map
    volumes = read_volumes(volume_paths)
    case = prepare_case(volumes, model.settings, required=model.required_sequences)
    region = read_volume(args.region, "region") if args.region else None
    if segmentation_model is not None:
        with progress_bar("tumour segmentation") as progress:
            region = model_region(case, segmentation_model, volumes, progress)
    covariates = {"age": args.age, "sex": args.sex, "tumor_type": args.tumor_type}
    points, labels = [], []
    for biopsy in biopsies:
        try:
            points.append(biopsy_voxel(case, biopsy))
            labels.append(str(biopsy.biopsy_id))
        except KiMapError as error:
            print(f"note: {error}", file=sys.stderr)
    with progress_bar("ki67 map") as progress:
        result = compute_map(case, model, region, {k: v for k, v in covariates.items() if v is not None}, progress,
                             allow_t1c_only=args.allow_t1c_only_region, exclude_labels=tuple(args.exclude_label),
                             level=args.interval_level)
    write_map(result, args.out, formats, points_ijk=points, point_labels=labels)
    print_json({k: result.summary[k] for k in ("model_id", "region", "region_voxels", "mapped_voxels", "method",
                                               "timings_s")})
    uncertain = ", ki67_lower, ki67_upper, out_of_domain, uncertainty.png" if result.lower is not None else ""
    print(f"ki67_map, ki67_probability{uncertain}, region, tumour_labels, overlay.png, summary.json -> {args.out}")
    return 0
