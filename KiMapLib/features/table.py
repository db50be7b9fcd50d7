"""The cohort table (CSV): one row per biopsy with identity, covariates, measured ki67 and features."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from KiMapLib.atomic import atomic_files
from KiMapLib.errors import KiMapError

TEXT_COLUMNS = {"patient_id", "biopsy_id", "sex", "tumor_type", "institution"}


def _value(column: str, text: str) -> object:
    if column in TEXT_COLUMNS:
        return text
    if text in ("", "NA", "None"):
        return None
    try:
        return float(text)
    except ValueError:
        return text


def read_table(path: str | Path) -> list[dict]:
    """Read a cohort table; numeric columns become floats, empty cells None."""
    path = Path(path)
    if not path.exists():
        raise KiMapError(f"file not found: {path}", input_name="features table")
    with path.open(newline="") as handle:
        rows = [{key: _value(key, text or "") for key, text in row.items()} for row in csv.DictReader(handle)]
    if not rows:
        raise KiMapError(f"{path.name} has no rows", input_name="features table")
    return rows


def write_table_file(rows: Sequence[dict], path: str | Path) -> None:
    """Write rows (union of their keys, first-seen order) to ``path`` as it is (see :func:`write_table`)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)


def write_table(rows: Sequence[dict], path: str | Path) -> None:
    """Write rows atomically (KiMapLib.atomic): a failed write keeps the old file, none is left half-written."""
    with atomic_files([path]) as (staging,):
        write_table_file(rows, staging)
