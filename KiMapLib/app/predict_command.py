"""``kimap predict``: ki67 at biopsy points with its prediction interval, P(high), the out-of-domain score and the
largest feature contributions, one CSV row per biopsy."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: Columns of predictions.csv after the biopsy's own (patient_id, biopsy_id, r, a, s, covariates, measured ki67).
PREDICTION_COLUMNS = {"predicted_ki67": "ki67_pred", "ki67_lower": "ki67_lower", "ki67_upper": "ki67_upper",
                      "interval_level": "interval_level", "probability_high": "p_high", "ood_score": "ood_score",
                      "out_of_domain": "out_of_domain"}
BIOPSY_COLUMNS = ("patient_id", "biopsy_id", "r", "a", "s", "sex", "age", "tumor_type", "institution", "ki67")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("predict", help="ki67 with its interval at biopsy points -> predictions CSV")
    parser.add_argument("--volume", action="append", required=True, metavar="NAME=PATH",
                        help="a sequence (t1c, t2, flair, adc, t1): a file or DICOM folder; repeat per sequence")
    parser.add_argument("--biopsies", type=Path, required=True, help="biopsy points: CSV (RAS mm) or .mrk.json")
    parser.add_argument("--patient-id", help="patient id for a .mrk.json or a CSV without patient_id "
                        "(default: 'patient')")
    parser.add_argument("--model", type=Path,
                        help="model bundle folder or packaged model id (default: the packaged model that uses the most "
                        "of the given sequences)")
    parser.add_argument("--interval-level", type=float, metavar="LEVEL",
                        help="level of the prediction intervals, 0.5-0.99 (default: the model card's, 0.9)")
    parser.add_argument("--out", type=Path, required=True,
                        help="predictions CSV to write (replaced if it exists, never if it is an input)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from KiMapLib.atomic import atomic_files
    from KiMapLib.errors import KiMapError
    from KiMapLib.features.table import write_table_file
    from KiMapLib.inputs.biopsies import read_biopsies
    from KiMapLib.inputs.case import prepare_case
    from KiMapLib.inputs.images import parse_volume_args, read_volumes
    from KiMapLib.model.bundle import check_level, load_model, model_folder
    from KiMapLib.model.prediction import predict_biopsies
    from KiMapLib.outputs import check_output_files
    from KiMapLib.progress import progress_bar

    volume_paths = parse_volume_args(args.volume)
    model_dir = model_folder(args.model, volume_paths)
    check_output_files([args.out], [("--model", model_dir), ("--biopsies", args.biopsies),
                                    *((f"--volume {name}", path) for name, path in volume_paths.items())])
    if args.interval_level is not None:
        check_level(args.interval_level)
    model = load_model(args.model, sequences=volume_paths)
    biopsies = read_biopsies(args.biopsies, args.patient_id)
    case = prepare_case(read_volumes(volume_paths), model.settings, required=model.required_sequences)
    for note in case.notes:
        print(f"note: {note}", file=sys.stderr)
    with progress_bar("predict") as progress:
        rows, errors = predict_biopsies(case, biopsies, model, progress, level=args.interval_level, explain=True)
    for error in errors:
        print(f"kimap predict: error: {error}", file=sys.stderr)
    if not rows:
        raise KiMapError("no biopsy could be predicted; nothing written", input_name="--biopsies")
    table = [prediction_row(row) for row in rows]
    with atomic_files([args.out]) as (path,):
        write_table_file(table, path)
    flagged = sum(bool(row.get("out_of_domain")) for row in table)
    print(f"{len(table)} biopsies predicted with {model.model_id}"
          + (f"; {flagged} out of the model's domain (ood_score > 1)" if flagged else "")
          + (f"; {len(errors)} failed (listed above)" if errors else "") + f" -> {args.out}")
    return 1 if errors else 0


def prediction_row(row: dict) -> dict:
    """A predictions.csv row: the biopsy, then the prediction columns, then the contributions (no features)."""
    out = {key: row.get(key) for key in BIOPSY_COLUMNS if key in row}
    out.update({name: row.get(key) for key, name in PREDICTION_COLUMNS.items()})
    out.update({key: value for key, value in row.items() if key.startswith("contribution_")})
    return out
