"""``kimap cohort extract``: features of every biopsy not yet extracted with these settings.

A patient is a task when some of its biopsies have no feature row for the settings; only those biopsies are sent.
Its rows (computed, or failed with the reason, e.g. a point outside the volume) are written in one transaction, and
the unique (biopsy, settings) key means a rerun after a crash can neither duplicate nor lose a row.
"""

from __future__ import annotations

import json
from collections import defaultdict

from sqlalchemy import Connection, insert, select

from KiMapLib.cohort import schema
from KiMapLib.cohort.batch import Job
from KiMapLib.cohort.recorded import BatchOutcome, run_recorded
from KiMapLib.cohort.store import Store, now, settings_id
from KiMapLib.cohort.tasks import extract_task
from KiMapLib.progress import ProgressCallback
from KiMapLib.settings import SEQUENCES, ExtractionSettings


def patient_series(connection: Connection, sequences: tuple[str, ...] = SEQUENCES) -> dict[int, dict[str, dict]]:
    """``{patient row id: {sequence: {path, sha256}}}`` of the given sequences."""
    table = schema.image_series
    found: dict[int, dict[str, dict]] = defaultdict(dict)
    for row in connection.execute(select(table.c.patient_id, table.c.sequence, table.c.path, table.c.sha256)
                                  .where(table.c.sequence.in_(sequences))):
        found[row.patient_id][row.sequence] = {"path": row.path, "sha256": row.sha256}
    return found


def biopsy_record(row) -> dict:
    """A biopsy as tasks receive it (and as the cohort table's identity columns are rebuilt from)."""
    return {"id": row.biopsy_row_id, "biopsy_id": row.biopsy_key, "ras": [row.r, row.a, row.s], "ki67": row.ki67,
            "covariates": {"sex": row.sex, "age": row.age, "tumor_type": row.tumor_type,
                           "institution": row.institution}}


def biopsy_query():
    p, b = schema.patients, schema.biopsies
    return (select(p.c.id.label("patient_row_id"), p.c.patient_key, p.c.sex, p.c.age, p.c.tumor_type,
                   b.c.id.label("biopsy_row_id"), b.c.biopsy_key, b.c.position, b.c.r, b.c.a, b.c.s, b.c.ki67,
                   b.c.institution)
            .select_from(b.join(p)))


def pending_jobs(connection: Connection, settings_row_id: int, settings: ExtractionSettings) -> list[Job]:
    """One job per patient with biopsies lacking a feature row for these settings (patients by id, biopsies by
    position)."""
    done = select(schema.features.c.biopsy_id).where(schema.features.c.settings_id == settings_row_id)
    rows = connection.execute(biopsy_query().where(schema.biopsies.c.id.not_in(done))).all()
    series = patient_series(connection)
    by_patient: dict[int, list] = defaultdict(list)
    for row in rows:
        by_patient[row.patient_row_id].append(row)
    jobs = []
    for patient_id, biopsies in by_patient.items():
        biopsies.sort(key=lambda r: (r.position, r.biopsy_key))
        key = biopsies[0].patient_key
        jobs.append(Job(patient_id, key, {"patient": key, "series": series.get(patient_id, {}),
                                          "settings": settings.to_dict(),
                                          "biopsies": [biopsy_record(b) for b in biopsies]}))
    return sorted(jobs, key=lambda job: job.patient_key)


def _write_features(settings_row_id: int):
    def write(connection: Connection, run_id: int, job: Job, result: dict) -> None:
        table = schema.features
        ids = [r["id"] for r in result["rows"]] + [f["id"] for f in result["failed"]]
        stored = set(connection.execute(select(table.c.biopsy_id).where(
            table.c.settings_id == settings_row_id, table.c.biopsy_id.in_(ids))).scalars())
        created = now()
        rows = [{"biopsy_id": r["id"], "settings_id": settings_row_id, "status": "ok", "voxel_i": r["voxel"][0],
                 "voxel_j": r["voxel"][1], "voxel_k": r["voxel"][2], "feature_values": json.dumps(r["features"]),
                 "error": None, "run_id": run_id, "created_at": created}
                for r in result["rows"] if r["id"] not in stored]
        rows += [{"biopsy_id": f["id"], "settings_id": settings_row_id, "status": "failed", "voxel_i": None,
                  "voxel_j": None, "voxel_k": None, "feature_values": None, "error": f["error"], "run_id": run_id,
                  "created_at": created}
                 for f in result["failed"] if f["id"] not in stored]
        if rows:
            connection.execute(insert(table), rows)

    return write


def extract_cohort(store: Store, settings: ExtractionSettings, *, workers: int | None = None,
                   scheduler: str | None = None, progress: ProgressCallback | None = None) -> BatchOutcome:
    """Extract every pending biopsy with ``settings``; returns what was done (the run is in the database)."""
    from KiMapLib.features.extraction import pyradiomics_version

    with store.begin() as connection:
        settings_row_id = settings_id(connection, settings, pyradiomics_version())
        jobs = pending_jobs(connection, settings_row_id, settings)
    arguments = {"settings_id": settings_row_id, "workers": workers, "scheduler": scheduler}
    outcome = run_recorded(store, "extract", arguments, extract_task, jobs, _write_features(settings_row_id),
                           workers=workers, scheduler=scheduler, progress=progress)
    outcome.subject = f"settings #{settings_row_id}"
    return outcome
