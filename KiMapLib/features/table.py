"""The cohort table (CSV): one row per biopsy with identity, covariates, measured ki67 and features."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from KiMapLib.atomic import atomic_files
from KiMapLib.errors import KiMapError
from KiMapLib.inputs.biopsies import check_covariates, check_ki67
from KiMapLib.inputs.csv_text import read_csv_records

TEXT_COLUMNS = {"patient_id", "biopsy_id", "sex", "tumor_type", "institution"}
#: Columns that must hold numbers (or be empty) besides the radiomic features (``<sequence>_original_...``).
NUMERIC_COLUMNS = {"r", "a", "s", "voxel_i", "voxel_j", "voxel_k", "ki67", "age"}
MISSING_TEXT = ("", "NA", "None")


def _value(column: str, text: str) -> object:
    if column in TEXT_COLUMNS:
        return text
    if text in MISSING_TEXT:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _check_row(row: dict, where: str) -> None:
    """Numbers where numbers belong, ki67 0-100 %, covariates as :func:`~KiMapLib.inputs.biopsies.check_covariates`."""
    for column, value in row.items():
        if (column in NUMERIC_COLUMNS or "_original_" in column) and isinstance(value, str):
            raise KiMapError(f"{where}, column {column}: '{value}' is not a number", input_name="features table",
                             hint="numbers (a feature may be nan or empty when missing)")
        if column in NUMERIC_COLUMNS and isinstance(value, float) and math.isinf(value):
            raise KiMapError(f"{where}, column {column}: '{value}' is not finite", input_name="features table",
                             hint="a finite number or empty")
    if "ki67" in row:
        check_ki67(row["ki67"], where, input_name="features table")
    check_covariates(row, where, input_name="features table")


def read_table(path: str | Path) -> list[dict]:
    """Read a cohort table; numeric columns become floats, empty cells None.

    Read by :func:`KiMapLib.inputs.csv_text.read_csv_records` (UTF-8, bounded lines, every row complete). Values
    are checked as in a biopsies file: coordinates, voxel indices and features are numbers, ki67 0-100 %, age
    0-120 years, sex F/M, tumor_type primary/recurrent; anything else is refused naming the file, line and column.
    """
    path = Path(path)
    if not path.exists():
        raise KiMapError(f"file not found: {path}", input_name="features table")
    _, records = read_csv_records(path, "features table")
    rows = []
    for line, record in records:
        row = {key: _value(key, text) for key, text in record.items()}
        _check_row(row, f"{path.name} line {line}")
        rows.append(row)
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
