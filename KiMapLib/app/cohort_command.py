"""``kimap cohort import|extract|map|status|table``: the cohort database and its batches (KiMapLib.cohort)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from KiMapLib.app.commands import add_bias_correction_argument
from KiMapLib.errors import Cancelled
from KiMapLib.settings import ExtractionSettings

DB_HELP = ("SQLite file path or postgresql://user@host:port/name URL (default: $KIMAP_DB); the same database "
           "for every command")


def _database(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", help=DB_HELP)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive number of workers")
    return value


def _cluster(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive, metavar="N",
                       help="start a local Dask cluster of N worker processes (default: compute in this process)")
    where.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                       help="use a running Dask scheduler and its workers (default: none, see --workers)")


def _sources(parser: argparse.ArgumentParser, required: bool) -> None:
    source = parser.add_mutually_exclusive_group(required=required)
    when = "one of --cohort or --manifest is required" if required else "default: none, only what the database holds"
    source.add_argument("--cohort", type=Path, metavar="DIR",
                        help=f"a folder of patient folders (<sequence>.nrrd, biopsies.csv[, tumor_label.nrrd]) "
                             f"({when})")
    source.add_argument("--manifest", type=Path, metavar="CSV",
                        help=f"CSV with columns patient, sequence, path, biopsies (one row per image series) ({when})")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    cohort = subparsers.add_parser("cohort", help="cohort database (SQLite or PostgreSQL) and batches on Dask",
                                   description="A feature database of patients, image series, biopsies, features, "
                                               "models, maps and runs; resumable batch extraction and mapping, in "
                                               "this process or on Dask workers (only this client writes).")
    actions = cohort.add_subparsers(dest="action", required=True)

    importer = actions.add_parser("import", help="register patients, image series and biopsies")
    _sources(importer, required=True)
    _database(importer)
    importer.set_defaults(func=run_import)

    extract = actions.add_parser("extract", help="features of every biopsy not yet extracted with these settings")
    _sources(extract, required=False)
    _database(extract)
    extract.add_argument("--radius", type=float, default=ExtractionSettings.ball_radius_mm, help="ball radius, mm")
    extract.add_argument("--bin-width", type=float, default=ExtractionSettings.bin_width,
                         help="pyradiomics binWidth on the z-scored (x100) intensities")
    add_bias_correction_argument(extract)
    _cluster(extract)
    extract.set_defaults(func=run_extract)

    mapper = actions.add_parser("map", help="ki67 maps of every patient not yet mapped with the model")
    _database(mapper)
    mapper.add_argument("--model", type=Path, required=True, help="model bundle folder (shared path on workers)")
    mapper.add_argument("--out", type=Path, required=True, help="folder of map folders, one per patient")
    mapper.add_argument("--formats", default="nrrd", help="comma-separated: nrrd,nifti")
    mapper.add_argument("--auto-region", action="store_true",
                        help="automatic FLAIR/T2 region even where a region series was imported")
    _cluster(mapper)
    mapper.set_defaults(func=run_map)

    status = actions.add_parser("status", help="what is stored, computed and pending; the last runs")
    _database(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=run_status)

    table = actions.add_parser("table", help="the cohort table (the one `kimap extract --cohort` writes)")
    _database(table)
    table.add_argument("--out", type=Path, required=True, help="cohort table CSV to write")
    table.add_argument("--settings", type=int, metavar="ID",
                       help="extraction settings id (`kimap cohort status`); default: the only one")
    table.set_defaults(func=run_table)


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def _checked_patients(args: argparse.Namespace) -> list:
    """The patients of --cohort or --manifest, read and checked (before the database is opened)."""
    from KiMapLib.cohort.importing import check_patients, folder_sources, manifest_sources
    from KiMapLib.progress import progress_bar

    sources = folder_sources(args.cohort) if args.cohort else manifest_sources(args.manifest)
    with progress_bar("cohort import") as progress:
        return check_patients(sources, progress)


def _import(store, checked: list) -> None:
    from KiMapLib.cohort.importing import write_patients

    summary = write_patients(store, checked)
    _print_notes(summary.notes)
    print(f"{summary.patients} patients ({summary.new_patients} new, {summary.new_series} new image series, "
          f"{summary.new_biopsies} new biopsies) -> {store.shown_url}")


def _open(args: argparse.Namespace, create: bool = False):
    from KiMapLib.cohort.store import open_store

    store = open_store(args.db, create=create)
    _print_notes(store.notes)
    return store


def run_import(args: argparse.Namespace) -> int:
    checked = _checked_patients(args)
    with _open(args, create=True) as store:
        _import(store, checked)
    return 0


def _report(command: str, outcome, store) -> int:
    _print_notes(outcome.notes)
    if outcome.run_id is None:
        print(f"nothing to {command}: every patient is done ({outcome.subject or 'as asked'}) in {store.shown_url}")
        return 0
    for key, error in outcome.failed:
        print(f"kimap cohort {command}: error: {key}: {error}", file=sys.stderr)
    for item in outcome.failed_items:
        print(f"kimap cohort {command}: error: {item}", file=sys.stderr)
    print(f"{len(outcome.done)} of {outcome.patients} patients done, {len(outcome.failed)} failed ({outcome.subject}; "
          f"run #{outcome.run_id} in {store.shown_url})")
    return 1 if outcome.failed or outcome.failed_items else 0


def _cancelled(command: str) -> int:
    print(f"kimap cohort {command}: cancelled; every patient already recorded is kept — run it again to continue",
          file=sys.stderr)
    return 130


def run_extract(args: argparse.Namespace) -> int:
    from KiMapLib.cohort.batch_extract import extract_cohort
    from KiMapLib.progress import progress_bar

    settings = ExtractionSettings(ball_radius_mm=args.radius, bin_width=args.bin_width,
                                  bias_correction=args.bias_correction)
    checked = _checked_patients(args) if args.cohort or args.manifest else None
    with _open(args, create=checked is not None) as store:
        if checked is not None:
            _import(store, checked)
        try:
            with progress_bar("cohort extract") as progress:
                outcome = extract_cohort(store, settings, workers=args.workers, scheduler=args.scheduler,
                                         progress=progress)
        except (KeyboardInterrupt, Cancelled):
            return _cancelled("extract")
        return _report("extract", outcome, store)


def run_map(args: argparse.Namespace) -> int:
    from KiMapLib.cohort.batch_map import map_cohort
    from KiMapLib.progress import progress_bar

    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    with _open(args) as store:
        try:
            with progress_bar("cohort map") as progress:
                outcome = map_cohort(store, args.model, args.out, formats=formats, auto_region=args.auto_region,
                                     workers=args.workers, scheduler=args.scheduler, progress=progress)
        except (KeyboardInterrupt, Cancelled):
            return _cancelled("map")
        return _report("map", outcome, store)


def run_status(args: argparse.Namespace) -> int:
    from KiMapLib.cohort.status import cohort_status, status_lines

    with _open(args) as store:
        status = cohort_status(store)
    print(json.dumps(status, indent=2) if args.json else "\n".join(status_lines(status)))
    return 0


def run_table(args: argparse.Namespace) -> int:
    from KiMapLib.cohort.table import choose_settings, cohort_rows
    from KiMapLib.errors import KiMapError
    from KiMapLib.features.table import write_table

    with _open(args) as store, store.begin() as connection:
        settings_row_id, settings = choose_settings(connection, args.settings)
        rows = cohort_rows(connection, settings_row_id)
    if not rows:
        raise KiMapError(f"no biopsy was extracted with settings #{settings_row_id}", input_name="--settings")
    write_table(rows, args.out)
    args.out.with_suffix(".settings.json").write_text(json.dumps(settings.to_dict(), indent=2) + "\n")
    print(f"{len(rows)} biopsies x {sum('_original_' in k for k in rows[0])} features -> {args.out} "
          f"(settings #{settings_row_id})")
    return 0


def training_rows(database: str | None, settings_row_id: int | None) -> tuple[list[dict], ExtractionSettings]:
    """Rows and settings for ``kimap train --db`` (the same rows ``kimap cohort table`` writes)."""
    from KiMapLib.cohort.store import open_store
    from KiMapLib.cohort.table import choose_settings, cohort_rows

    with open_store(database) as store, store.begin() as connection:
        settings_row_id, settings = choose_settings(connection, settings_row_id)
        return cohort_rows(connection, settings_row_id), settings


def register_trained_model(database: str | None, bundle: Path) -> int:
    """Record a bundle written by ``kimap train --db`` in the database's models table; returns its id."""
    from KiMapLib.cohort.batch_map import register_model
    from KiMapLib.cohort.store import open_store

    card = json.loads((bundle / "model_card.json").read_text())
    with open_store(database) as store, store.begin() as connection:
        return register_model(connection, bundle, card)
