"""``kimap phantom``: a synthetic cohort on disk. SYNTHETIC DATA — not patient data."""

from __future__ import annotations

from pathlib import Path

from KiMapLib.phantom import SYNTHETIC_NOTICE, generate_cohort
from KiMapLib.progress import progress_bar


def add_parser(subparsers) -> None:
    """Add ``kimap phantom --out DIR --patients N --seed S [--dicom]``."""
    parser = subparsers.add_parser(
        "phantom", help="write a synthetic glioblastoma cohort (SYNTHETIC — not patient data)",
        description="Write a documented synthetic biophysical glioblastoma phantom cohort: t1c, t2, flair, adc, "
                    "tumor label, ki67 truth and biopsies per patient (docs/phantom.md). SYNTHETIC DATA — not "
                    "patient data, no clinical validity.")
    parser.add_argument("--out", required=True, type=Path, help="output folder (new, empty or an earlier cohort)")
    parser.add_argument("--patients", type=int, default=24, help="number of patients (default 24)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes; default 0)")
    parser.add_argument("--dicom", action="store_true", help="also write each sequence as a DICOM MR series")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Run the ``phantom`` sub-command with a progress bar; prints a one-line summary."""
    with progress_bar("phantom") as callback:
        records = generate_cohort(args.out, args.patients, args.seed, dicom=args.dicom, progress=callback)
    n_biopsies = sum(r["n_biopsies"] for r in records)
    print(f"{SYNTHETIC_NOTICE}: wrote {len(records)} patients, {n_biopsies} biopsies to {args.out}")
    return 0
