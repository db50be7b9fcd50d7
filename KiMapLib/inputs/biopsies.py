"""Biopsy points: CSV in RAS millimetres or Slicer ``.mrk.json`` (its coordinateSystem honoured)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from KiMapLib.errors import KiMapError
from KiMapLib.inputs.geometry import lps_to_ras

REQUIRED_COLUMNS = ("patient_id", "biopsy_id", "r", "a", "s")
COVARIATES = ("sex", "age", "tumor_type", "institution")
TUMOR_TYPES = ("primary", "recurrent")


@dataclass
class Biopsy:
    """One image-localized biopsy: RAS position (mm), optional measured ki67 (%) and covariates."""

    patient_id: str
    biopsy_id: str
    ras: np.ndarray
    ki67: float | None = None
    covariates: dict[str, object] = field(default_factory=dict)

    def row(self) -> dict[str, object]:
        """The identifying columns of this biopsy in a cohort table."""
        r, a, s = (float(v) for v in self.ras)
        row: dict[str, object] = {"patient_id": self.patient_id, "biopsy_id": self.biopsy_id, "r": r, "a": a, "s": s}
        row.update({name: self.covariates.get(name) for name in COVARIATES})
        row["ki67"] = self.ki67
        return row


#: Allowed ranges and values of the measured and clinical columns (refused outside them, naming the row).
KI67_RANGE = (0.0, 100.0)
AGE_RANGE = (0.0, 120.0)
SEX_VALUES = {"F": "F", "M": "M", "FEMALE": "F", "MALE": "M"}
MISSING_TEXT = ("", "NA", "nan", "NaN", "None")


def _refuse(where: str, column: str, value: object, allowed: str, input_name: str = "biopsies") -> KiMapError:
    return KiMapError(f"{where}, column {column}: '{value}' is not allowed", input_name=input_name,
                      hint=f"allowed: {allowed}")


def _optional_float(value: object, column: str, where: str, allowed: str = "a finite number or empty",
                    input_name: str = "biopsies") -> float | None:
    if value is None or str(value).strip() in MISSING_TEXT:
        return None
    if isinstance(value, bool):
        raise _refuse(where, column, value, allowed, input_name)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _refuse(where, column, value, allowed, input_name) from None
    if not math.isfinite(number):
        raise _refuse(where, column, value, allowed, input_name)
    return number


def _in_range(value: object, column: str, where: str, bounds: tuple[float, float], unit: str,
              input_name: str) -> float | None:
    allowed = f"a number from {bounds[0]:g} to {bounds[1]:g}{unit}, or empty"
    number = _optional_float(value, column, where, allowed, input_name)
    if number is not None and not bounds[0] <= number <= bounds[1]:
        raise _refuse(where, column, value, allowed, input_name)
    return number


def check_ki67(value: object, where: str, column: str = "ki67", input_name: str = "biopsies") -> float | None:
    """A measured ki67 labelling index in % (0-100), or None when empty; anything else is refused naming ``where``."""
    return _in_range(value, column, where, KI67_RANGE, " %", input_name)


def check_covariates(record: Mapping[str, object], where: str, input_name: str = "biopsies") -> dict[str, object]:
    """``sex`` (F/M), ``age`` (0-120 years), ``tumor_type`` (primary/recurrent), ``institution``, each optional.

    Unknown values are refused naming ``where`` (file and line, or the argument), the column and the allowed values.
    """
    covariates: dict[str, object] = {}
    sex = record.get("sex")
    sex_text = "" if sex is None else str(sex).strip()
    if sex_text and sex_text.upper() not in SEX_VALUES:
        raise _refuse(where, "sex", sex, "F, M (or female, male), or empty", input_name)
    covariates["sex"] = SEX_VALUES.get(sex_text.upper()) if sex_text else None
    covariates["age"] = _in_range(record.get("age"), "age", where, AGE_RANGE, " years", input_name)
    tumor_type = record.get("tumor_type")
    tumor_text = "" if tumor_type is None else str(tumor_type).strip().lower()
    if tumor_text and tumor_text not in TUMOR_TYPES:
        raise _refuse(where, "tumor_type", tumor_type, f"{' or '.join(TUMOR_TYPES)}, or empty", input_name)
    covariates["tumor_type"] = tumor_text or None
    institution = record.get("institution")
    covariates["institution"] = str(institution).strip() or None if institution is not None else None
    return covariates


def check_covariate_values(covariates: Mapping[str, object] | None, input_name: str = "covariates") -> dict:
    """Covariates given by a caller (not a file): only :data:`COVARIATES`, each checked as in a biopsies file;
    returns the normalized values that are set."""
    if covariates is None:
        return {}
    if not isinstance(covariates, Mapping):
        raise KiMapError("covariates must be a dict such as {'age': 61, 'sex': 'F'}", input_name=input_name)
    unknown = [str(key) for key in covariates if key not in COVARIATES]
    if unknown:
        raise KiMapError(f"unknown covariate '{unknown[0]}'", input_name=input_name,
                         hint=f"use {', '.join(COVARIATES)}")
    checked = check_covariates(covariates, input_name, input_name)
    return {key: value for key, value in checked.items() if value is not None}


def read_biopsies_csv(path: str | Path, patient_id: str | None = None) -> list[Biopsy]:
    """Read ``patient_id, biopsy_id, r, a, s[, ki67, sex, age, tumor_type, institution]`` (RAS mm).

    The file is read by :func:`KiMapLib.inputs.csv_text.read_csv_records` (UTF-8, bounded lines); coordinates must
    be finite numbers, ki67 0-100 %, age 0-120 years, sex F/M, tumor_type primary/recurrent (the last four may be
    empty). Any other value is refused naming the file, line, column and the allowed values.
    """
    from KiMapLib.inputs.csv_text import read_csv_records

    path = Path(path)
    columns, records = read_csv_records(path, "biopsies")
    required = [c for c in REQUIRED_COLUMNS if not (c == "patient_id" and patient_id)]
    missing = [c for c in required if c not in columns]
    if missing:
        raise KiMapError(f"missing column(s) {', '.join(missing)} in {path.name}", input_name="biopsies",
                         hint=f"columns must include {', '.join(REQUIRED_COLUMNS)} (RAS millimetres)")
    biopsies = []
    for line, record in records:
        where = f"{path.name} line {line}"
        coordinates = [_optional_float(record[c], c, where, "a finite number (RAS mm)") for c in "ras"]
        if any(value is None for value in coordinates):
            column = "ras"[coordinates.index(None)]
            raise _refuse(where, column, record[column], "a finite number (RAS mm)")
        biopsies.append(Biopsy(
            patient_id=record.get("patient_id") or patient_id or "",
            biopsy_id=record["biopsy_id"] or f"B{line - 1}",
            ras=np.array(coordinates, dtype=float),
            ki67=check_ki67(record.get("ki67"), where),
            covariates=check_covariates(record, where),
        ))
    if not biopsies:
        raise KiMapError(f"{path.name} has no biopsy rows", input_name="biopsies", hint="add one row per biopsy")
    _check_unique(biopsies, path)
    return biopsies


def read_biopsies_markups(path: str | Path, patient_id: str = "patient") -> list[Biopsy]:
    """Read the placed control points of a Slicer ``.mrk.json``; LPS coordinates are converted to RAS.

    The document is checked before any point is used: an object with a ``markups`` list of objects, each with a
    ``controlPoints`` list of objects whose ``position`` is three finite numbers. Points whose ``positionStatus`` is
    not ``defined`` (not placed yet) are skipped, as in the scene. Anything else is one :class:`KiMapError` naming
    the file and the point.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_MARKUPS_BYTES:
            raise KiMapError(f"{path.name} is {size} bytes, more than {MAX_MARKUPS_BYTES} for a points file",
                             input_name="biopsies", hint="give the .mrk.json of the biopsy points")
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise KiMapError(f"cannot read {path.name} as markups JSON ({error})", input_name="biopsies",
                         hint="give a Slicer markups file (.mrk.json)") from None
    biopsies = []
    for markup_number, markup in enumerate(_markups(document, path), start=1):
        system = str(markup.get("coordinateSystem", "LPS")).upper()
        if system not in ("LPS", "RAS"):
            raise _markups_error(path, f"markup {markup_number} has unknown coordinateSystem '{system}'",
                                 "LPS or RAS")
        points = markup.get("controlPoints", [])
        if not isinstance(points, list):
            raise _markups_error(path, f"markup {markup_number}: controlPoints is not a list", "a list of points")
        for number, point in enumerate(points, start=1):
            what = f"markup {markup_number}, control point {number}"
            if not isinstance(point, dict):
                raise _markups_error(path, f"{what} is not an object", "objects with a position")
            if str(point.get("positionStatus", "defined")).lower() != "defined":
                continue
            position = _position(point, path, what)
            ras = lps_to_ras(position) if system == "LPS" else position
            label = point.get("label") or f"B{number}"
            biopsies.append(Biopsy(patient_id=patient_id, biopsy_id=str(label), ras=ras))
    if not biopsies:
        raise KiMapError(f"{path.name} has no placed control points", input_name="biopsies",
                         hint="place the biopsy points in Slicer and save the markups again")
    _check_unique(biopsies, path)
    return biopsies


#: A points file larger than this is not a list of biopsies (a Slicer .mrk.json holds about 1 KiB per point).
MAX_MARKUPS_BYTES = 16 * 2**20


def _markups_error(path: Path, message: str, allowed: str) -> KiMapError:
    return KiMapError(f"{path.name}: {message}", input_name="biopsies", hint=f"expected {allowed} (Slicer .mrk.json)")


def _markups(document: object, path: Path) -> list[dict]:
    if not isinstance(document, dict):
        raise _markups_error(path, f"the document is a JSON {type(document).__name__}, not an object",
                             'an object with a "markups" list')
    markups = document.get("markups", [])
    if not isinstance(markups, list) or not all(isinstance(markup, dict) for markup in markups):
        raise _markups_error(path, '"markups" is not a list of objects', 'an object with a "markups" list')
    return markups


def _position(point: dict, path: Path, what: str) -> np.ndarray:
    label = point.get("label")
    if label:
        what = f"{what} ('{label}')"
    if "position" not in point:
        raise _markups_error(path, f"{what} has no position", "position: [x, y, z] in mm")
    position = point["position"]
    text = json.dumps(position)
    text = text if len(text) <= 60 else f"{text[:57]}..."
    if not isinstance(position, list) or len(position) != 3:
        raise _markups_error(path, f"{what}: position {text} is not three coordinates", "position: [x, y, z] in mm")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in position):
        raise _markups_error(path, f"{what}: position {text} is not three finite numbers",
                             "position: [x, y, z] in mm")
    return np.asarray(position, dtype=float)


def read_biopsies(path: str | Path, patient_id: str | None = None) -> list[Biopsy]:
    """Read biopsy points from CSV or ``.mrk.json`` by file name."""
    path = Path(path)
    if not path.is_file():
        raise KiMapError(f"file not found: {path}", input_name="biopsies")
    if path.name.endswith(".json"):
        return read_biopsies_markups(path, patient_id or path.name.split(".")[0])
    return read_biopsies_csv(path, patient_id)


def write_biopsies_csv(biopsies: list[Biopsy], path: str | Path) -> None:
    """Write biopsies in the CSV format :func:`read_biopsies_csv` reads."""
    rows = [b.row() for b in biopsies]
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _check_unique(biopsies: list[Biopsy], path: Path) -> None:
    seen: set[tuple[str, str]] = set()
    for biopsy in biopsies:
        key = (biopsy.patient_id, biopsy.biopsy_id)
        if key in seen:
            raise KiMapError(f"biopsy {key[1]} of patient {key[0]} appears twice in {path.name}",
                             input_name="biopsies", hint="give each biopsy a unique biopsy_id")
        seen.add(key)
