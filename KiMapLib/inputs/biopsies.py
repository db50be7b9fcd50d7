"""Biopsy points: CSV in RAS millimetres or Slicer ``.mrk.json`` (its coordinateSystem honoured)."""

from __future__ import annotations

import csv
import json
import math
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


def _optional_float(value: str | None, column: str, where: str) -> float | None:
    if value is None or str(value).strip() in ("", "NA", "nan", "NaN", "None"):
        return None
    try:
        number = float(value)
    except ValueError:
        raise KiMapError(f"{column} '{value}' is not a number ({where})", input_name="biopsies") from None
    if not math.isfinite(number):
        raise KiMapError(f"{column} is not finite ({where})", input_name="biopsies")
    return number


def _covariates(record: dict[str, str], where: str) -> dict[str, object]:
    covariates: dict[str, object] = {}
    sex = (record.get("sex") or "").strip().upper()
    covariates["sex"] = {"MALE": "M", "FEMALE": "F"}.get(sex, sex) or None
    covariates["age"] = _optional_float(record.get("age"), "age", where)
    tumor_type = (record.get("tumor_type") or "").strip().lower() or None
    if tumor_type is not None and tumor_type not in TUMOR_TYPES:
        raise KiMapError(f"tumor_type '{tumor_type}' is not primary or recurrent ({where})", input_name="biopsies")
    covariates["tumor_type"] = tumor_type
    covariates["institution"] = (record.get("institution") or "").strip() or None
    return covariates


def read_biopsies_csv(path: str | Path, patient_id: str | None = None) -> list[Biopsy]:
    """Read ``patient_id, biopsy_id, r, a, s[, ki67, sex, age, tumor_type, institution]`` (RAS mm)."""
    path = Path(path)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        required = [c for c in REQUIRED_COLUMNS if not (c == "patient_id" and patient_id)]
        missing = [c for c in required if c not in columns]
        if missing:
            raise KiMapError(f"missing column(s) {', '.join(missing)} in {path.name}", input_name="biopsies",
                             hint=f"columns must include {', '.join(REQUIRED_COLUMNS)} (RAS millimetres)")
        biopsies = []
        for line, raw in enumerate(reader, start=2):
            record = {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in raw.items() if k}
            where = f"{path.name} line {line}"
            ras = np.array([_optional_float(record[c], c, where) for c in "ras"], dtype=float)
            if np.isnan(ras).any():
                raise KiMapError(f"empty coordinate ({where})", input_name="biopsies")
            biopsies.append(Biopsy(
                patient_id=record.get("patient_id") or patient_id or "",
                biopsy_id=record["biopsy_id"] or f"B{line - 1}",
                ras=ras,
                ki67=_optional_float(record.get("ki67"), "ki67", where),
                covariates=_covariates(record, where),
            ))
    _check_unique(biopsies, path)
    return biopsies


def read_biopsies_markups(path: str | Path, patient_id: str = "patient") -> list[Biopsy]:
    """Read control points of a Slicer ``.mrk.json``; LPS coordinates are converted to RAS."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise KiMapError(f"cannot read {path.name} as markups JSON ({error})", input_name="biopsies") from None
    biopsies = []
    for markup in document.get("markups", []):
        system = str(markup.get("coordinateSystem", "LPS")).upper()
        if system not in ("LPS", "RAS"):
            raise KiMapError(f"unknown coordinateSystem '{system}'", input_name="biopsies")
        for number, point in enumerate(markup.get("controlPoints", []), start=1):
            position = np.asarray(point["position"], dtype=float)
            ras = lps_to_ras(position) if system == "LPS" else position
            label = point.get("label") or f"B{number}"
            biopsies.append(Biopsy(patient_id=patient_id, biopsy_id=str(label), ras=ras))
    if not biopsies:
        raise KiMapError(f"{path.name} has no control points", input_name="biopsies")
    _check_unique(biopsies, path)
    return biopsies


def read_biopsies(path: str | Path, patient_id: str | None = None) -> list[Biopsy]:
    """Read biopsy points from CSV or ``.mrk.json`` by file name."""
    path = Path(path)
    if not path.exists():
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
