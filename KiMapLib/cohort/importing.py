"""Registering patients, image series and biopsies: from a cohort folder or a manifest CSV.

**Cohort folder** (what ``kimap phantom`` writes, what ``kimap extract --cohort`` reads): one folder per patient
holding ``<sequence>.nrrd`` (t1c, t2, flair, adc), ``biopsies.csv`` and optionally ``tumor_label.nrrd`` (registered
as the ``region`` series that ``kimap cohort map`` maps inside).

**Manifest CSV** (real data): columns ``patient, sequence, path, biopsies``, one row per image series::

    patient,sequence,path,biopsies
    GBM-001,t1c,GBM-001/t1c.nii.gz,GBM-001/biopsies.csv
    GBM-001,flair,/data/GBM-001/FLAIR_dicom,
    GBM-001,region,GBM-001/tumour.nii.gz,

``sequence`` is t1c, t2, flair, adc or region; ``path`` a volume file or a DICOM series folder; ``biopsies`` a
biopsies CSV (RAS mm, the columns of ``kimap extract``) or ``.mrk.json``, on any row of the patient (may be empty:
the patient is then only mapped). Relative paths are relative to the manifest's folder; every patient needs a t1c.

Everything is read and checked before anything is written, and the import is one transaction. Importing again is
harmless: what is already stored is kept; new patients, series and biopsies are added; covariates, ki67 and a moved
path (same sha256) are updated with a note. A changed image or biopsy position is refused once features or maps
were computed from it (they would no longer match).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, func, insert, select, update

from KiMapLib.cohort import schema
from KiMapLib.cohort.series import content_sha256, describe_series
from KiMapLib.cohort.store import Store, now
from KiMapLib.errors import KiMapError
from KiMapLib.inputs.biopsies import Biopsy, read_biopsies
from KiMapLib.inputs.cohort_folder import REGION_FILE, cohort_folder_patients
from KiMapLib.progress import ProgressCallback, report
from KiMapLib.settings import SEQUENCES

REGION = "region"
MANIFEST_COLUMNS = ("patient", "sequence", "path", "biopsies")
PATIENT_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
PATIENT_COVARIATES = ("sex", "age", "tumor_type")


@dataclass
class PatientSource:
    """One patient to import: its image series by sequence and its biopsies file (or None)."""

    key: str
    series: dict[str, Path]
    biopsies_path: Path | None
    source: str


@dataclass
class ImportSummary:
    patients: int = 0
    new_patients: int = 0
    new_series: int = 0
    new_biopsies: int = 0
    notes: list[str] = field(default_factory=list)


def folder_sources(folder: Path) -> list[PatientSource]:
    """The patients of a cohort folder (the ``kimap extract --cohort`` layout), plus each ``tumor_label.nrrd``."""
    sources = []
    for key, volumes, biopsies in cohort_folder_patients(Path(folder)):
        series = {name: path.resolve() for name, path in volumes.items()}
        region = biopsies.parent / REGION_FILE
        if region.is_file():
            series[REGION] = region.resolve()
        sources.append(PatientSource(key, series, biopsies.resolve(), str(Path(folder).resolve())))
    return sources


def manifest_sources(manifest: Path) -> list[PatientSource]:
    """The patients of a manifest CSV (see the module docstring)."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise KiMapError(f"file not found: {manifest}", input_name="--manifest")
    base = manifest.resolve().parent
    by_patient: dict[str, PatientSource] = {}
    with manifest.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in MANIFEST_COLUMNS if c not in columns]
        if missing:
            raise KiMapError(f"missing column(s) {', '.join(missing)} in {manifest.name}", input_name="--manifest",
                             hint=f"columns: {', '.join(MANIFEST_COLUMNS)} (one row per image series)")
        for line, raw in enumerate(reader, start=2):
            record = {k.strip(): (v or "").strip() for k, v in raw.items() if k}
            where = f"{manifest.name} line {line}"
            key, sequence = record["patient"], record["sequence"].lower()
            if not PATIENT_KEY.match(key):
                raise KiMapError(f"patient '{key}' is not a usable id ({where})", input_name="--manifest",
                                 hint="letters, digits, '.', '_' and '-' (it names the patient's map folder)")
            if sequence not in (*SEQUENCES, REGION):
                raise KiMapError(f"unknown sequence '{sequence}' ({where})", input_name="--manifest",
                                 hint=f"use one of {', '.join((*SEQUENCES, REGION))}")
            if not record["path"]:
                raise KiMapError(f"empty path ({where})", input_name="--manifest")
            patient = by_patient.setdefault(key, PatientSource(key, {}, None, str(manifest.resolve())))
            if sequence in patient.series:
                raise KiMapError(f"patient {key} lists {sequence} twice ({where})", input_name="--manifest")
            patient.series[sequence] = (base / record["path"]).resolve()
            if record["biopsies"]:
                path = (base / record["biopsies"]).resolve()
                if patient.biopsies_path not in (None, path):
                    raise KiMapError(f"patient {key} names two biopsies files ({where})", input_name="--manifest")
                patient.biopsies_path = path
    if not by_patient:
        raise KiMapError(f"{manifest.name} lists no image series", input_name="--manifest")
    for patient in by_patient.values():
        if "t1c" not in patient.series:
            raise KiMapError(f"patient {patient.key} has no t1c row", input_name="--manifest",
                             hint="every map and feature is defined on the t1c grid")
    return sorted(by_patient.values(), key=lambda p: p.key)


@dataclass
class CheckedPatient:
    """A patient read and checked before writing: series records, biopsies and patient covariates."""

    source: PatientSource
    series: dict[str, dict]
    biopsies: list[Biopsy]
    covariates: dict[str, object]


def _patient_covariates(key: str, biopsies: list[Biopsy]) -> dict[str, object]:
    covariates: dict[str, object] = {name: None for name in PATIENT_COVARIATES}
    for name in PATIENT_COVARIATES:
        values = {b.covariates.get(name) for b in biopsies}
        if len(values) > 1:
            shown = ", ".join(sorted(str(v) for v in values))
            raise KiMapError(f"patient {key} has different {name} values across its biopsies ({shown})",
                             input_name="biopsies", hint=f"give one {name} per patient")
        covariates[name] = values.pop() if values else None
    return covariates


def _check(source: PatientSource) -> CheckedPatient:
    series = {}
    for sequence, path in source.series.items():
        name = f"{source.key}/{sequence}"
        geometry, uids = describe_series(path, name)
        series[sequence] = {"path": str(path), "sha256": content_sha256(path), "geometry": json.dumps(geometry),
                            "source_uids": json.dumps(uids) if uids else None}
    biopsies = read_biopsies(source.biopsies_path, source.key) if source.biopsies_path else []
    strangers = sorted({b.patient_id for b in biopsies} - {source.key})
    if strangers:
        raise KiMapError(f"{source.biopsies_path.name} of patient {source.key} lists patient {strangers[0]}",
                         input_name="biopsies", hint="one biopsies file per patient, with its own patient_id")
    return CheckedPatient(source, series, biopsies, _patient_covariates(source.key, biopsies))


def _has_results(connection: Connection, patient_id: int) -> bool:
    feature_rows = connection.execute(
        select(func.count()).select_from(schema.features.join(schema.biopsies))
        .where(schema.biopsies.c.patient_id == patient_id)).scalar()
    map_rows = connection.execute(select(func.count()).select_from(schema.maps)
                                  .where(schema.maps.c.patient_id == patient_id)).scalar()
    return bool(feature_rows or map_rows)


def _write_patient(connection: Connection, checked: CheckedPatient, summary: ImportSummary) -> None:
    key = checked.source.key
    table = schema.patients
    found = connection.execute(select(table).where(table.c.patient_key == key)).first()
    if found is None:
        patient_id = connection.execute(insert(table).values(
            patient_key=key, source=checked.source.source, imported_at=now(), **checked.covariates)
        ).inserted_primary_key[0]
        summary.new_patients += 1
    else:
        patient_id = found.id
        changed = {k: v for k, v in checked.covariates.items() if getattr(found, k) != v}
        if changed:
            connection.execute(update(table).where(table.c.id == patient_id).values(**changed))
            summary.notes.append(f"{key}: covariates updated ({', '.join(changed)})")
    _write_series(connection, patient_id, checked, summary)
    _write_biopsies(connection, patient_id, checked, summary)


def _write_series(connection: Connection, patient_id: int, checked: CheckedPatient, summary: ImportSummary) -> None:
    table = schema.image_series
    key = checked.source.key
    stored = {row.sequence: row for row in connection.execute(select(table).where(table.c.patient_id == patient_id))}
    for sequence, record in checked.series.items():
        old = stored.get(sequence)
        if old is None:
            connection.execute(insert(table).values(patient_id=patient_id, sequence=sequence, imported_at=now(),
                                                    **record))
            summary.new_series += 1
            continue
        if old.sha256 != record["sha256"]:
            if _has_results(connection, patient_id):
                raise KiMapError(f"{key}/{sequence} differs from the image imported earlier (sha256), and features "
                                 "or maps were computed from that one", input_name=record["path"],
                                 hint="import the new image under a new patient id or into a new database; "
                                      "nothing was changed")
            connection.execute(update(table).where(table.c.id == old.id).values(imported_at=now(), **record))
            summary.notes.append(f"{key}/{sequence}: replaced (nothing was computed from the earlier image)")
        elif old.path != record["path"]:
            connection.execute(update(table).where(table.c.id == old.id).values(path=record["path"]))
            summary.notes.append(f"{key}/{sequence}: same image at a new path {record['path']}")
    listed = set(checked.series)
    for sequence in sorted(set(stored) - listed):
        summary.notes.append(f"{key}/{sequence}: in the database but not in this import (kept)")


def _write_biopsies(connection: Connection, patient_id: int, checked: CheckedPatient, summary: ImportSummary) -> None:
    table = schema.biopsies
    key = checked.source.key
    stored = {row.biopsy_key: row for row in connection.execute(select(table).where(table.c.patient_id == patient_id))}
    for position, biopsy in enumerate(checked.biopsies):
        r, a, s = (float(v) for v in biopsy.ras)
        values = {"position": position, "r": r, "a": a, "s": s, "ki67": biopsy.ki67,
                  "institution": biopsy.covariates.get("institution")}
        old = stored.get(biopsy.biopsy_id)
        if old is None:
            connection.execute(insert(table).values(patient_id=patient_id, biopsy_key=biopsy.biopsy_id, **values))
            summary.new_biopsies += 1
            continue
        moved = (old.r, old.a, old.s) != (r, a, s)
        if moved:
            computed = connection.execute(select(func.count()).select_from(schema.features)
                                          .where(schema.features.c.biopsy_id == old.id)).scalar()
            if computed:
                raise KiMapError(f"biopsy {key}/{biopsy.biopsy_id} moved since its features were computed",
                                 input_name=str(checked.source.biopsies_path),
                                 hint="give the corrected point a new biopsy_id; nothing was changed")
        changed = [k for k, v in values.items() if getattr(old, k) != v]
        if changed:
            connection.execute(update(table).where(table.c.id == old.id).values(**values))
            if changed != ["position"]:
                summary.notes.append(f"{key}/{biopsy.biopsy_id}: {', '.join(c for c in changed if c != 'position')}"
                                     " updated")
    for biopsy_key in sorted(set(stored) - {b.biopsy_id for b in checked.biopsies}):
        summary.notes.append(f"{key}/{biopsy_key}: in the database but not in the biopsies file (kept)")


def check_patients(sources: Iterable[PatientSource], progress: ProgressCallback | None = None
                   ) -> list[CheckedPatient]:
    """Read and check every patient (content hashes, headers, biopsies) before anything is written."""
    sources = list(sources)
    keys = [s.key for s in sources]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise KiMapError(f"patient {duplicates[0]} appears twice in this import", input_name="--cohort")
    checked = []
    for number, source in enumerate(sources):
        report(progress, number / max(len(sources), 1), f"checking {source.key}")
        checked.append(_check(source))
    report(progress, 1.0, f"{len(checked)} patients checked")
    return checked


def write_patients(store: Store, checked: Iterable[CheckedPatient]) -> ImportSummary:
    """Write checked patients in one transaction (an error leaves the database as it was)."""
    checked = list(checked)
    summary = ImportSummary(patients=len(checked))
    with store.begin() as connection:
        for patient in checked:
            _write_patient(connection, patient, summary)
    return summary


def import_patients(store: Store, sources: Iterable[PatientSource],
                    progress: ProgressCallback | None = None) -> ImportSummary:
    """:func:`check_patients`, then :func:`write_patients`."""
    return write_patients(store, check_patients(sources, progress))
