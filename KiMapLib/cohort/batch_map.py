"""``kimap cohort map``: the ki67 maps of every patient not yet mapped with a model.

The model bundle is verified and registered (card and sha256) once; workers load it by path and check the same
sha256. Each patient's map folder is written atomically by the worker (``<out>/<patient>``, shared storage) and
recorded (output folder, file sha256s, summary) by the client; a map folder written but not recorded before a
crash is simply written again by the next run.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from sqlalchemy import Connection, insert, select

from KiMapLib.cohort import schema
from KiMapLib.cohort.batch import Job
from KiMapLib.cohort.batch_extract import biopsy_query, biopsy_record, patient_series
from KiMapLib.cohort.importing import REGION
from KiMapLib.cohort.recorded import BatchOutcome, run_recorded
from KiMapLib.cohort.store import Store, now
from KiMapLib.cohort.tasks import map_task
from KiMapLib.errors import KiMapError
from KiMapLib.progress import ProgressCallback

MAP_FORMATS = ("nrrd", "nifti")


def register_model(connection: Connection, model_dir: Path, card: dict) -> int:
    """The models row of a verified bundle (by the sha256 its card pins), added when new."""
    table = schema.models
    sha256 = card["model_file"]["sha256"]
    found = connection.execute(select(table.c.id).where(table.c.sha256 == sha256)).scalar()
    if found is not None:
        return int(found)
    return int(connection.execute(insert(table).values(
        model_key=card["model_id"], sha256=sha256, card=json.dumps(card), path=str(Path(model_dir).resolve()),
        registered_at=now())).inserted_primary_key[0])


def pending_jobs(connection: Connection, model_row_id: int, model: dict, out_root: Path, formats: tuple[str, ...],
                 auto_region: bool) -> list[Job]:
    """One job per patient with no map from this model yet."""
    mapped = select(schema.maps.c.patient_id).where(schema.maps.c.model_id == model_row_id)
    patients = connection.execute(select(schema.patients).where(schema.patients.c.id.not_in(mapped))).all()
    series = patient_series(connection)
    regions = patient_series(connection, (REGION,))
    biopsies: dict[int, list] = defaultdict(list)
    for row in connection.execute(biopsy_query()):
        biopsies[row.patient_row_id].append(row)
    jobs = []
    for patient in patients:
        points = sorted(biopsies.get(patient.id, []), key=lambda r: (r.position, r.biopsy_key))
        region = None if auto_region else regions.get(patient.id, {}).get(REGION)
        jobs.append(Job(patient.id, patient.patient_key, {
            "patient": patient.patient_key, "series": series.get(patient.id, {}), "region": region, "model": model,
            "covariates": {"age": patient.age, "sex": patient.sex, "tumor_type": patient.tumor_type},
            "out_dir": str(out_root / patient.patient_key), "formats": list(formats),
            "biopsies": [biopsy_record(b) for b in points]}))
    return sorted(jobs, key=lambda job: job.patient_key)


def _write_map(model_row_id: int):
    def write(connection: Connection, run_id: int, job: Job, result: dict) -> None:
        table = schema.maps
        stored = connection.execute(select(table.c.id).where(table.c.patient_id == job.patient_id,
                                                             table.c.model_id == model_row_id)).scalar()
        if stored is None:
            connection.execute(insert(table).values(
                patient_id=job.patient_id, model_id=model_row_id, out_dir=result["out_dir"],
                files=json.dumps(result["files"]), summary=json.dumps(result["summary"], default=str), run_id=run_id,
                created_at=now()))

    return write


def map_cohort(store: Store, model_dir: Path, out_root: Path, *, formats: tuple[str, ...] = ("nrrd",),
               auto_region: bool = False, workers: int | None = None, scheduler: str | None = None,
               progress: ProgressCallback | None = None) -> BatchOutcome:
    """Map every patient without a map from this model into ``out_root/<patient>``."""
    from KiMapLib.model.bundle import load_model

    unknown = [f for f in formats if f not in MAP_FORMATS]
    if unknown:
        raise KiMapError(f"unknown format {unknown[0]}", input_name="--formats", hint="use nrrd and/or nifti")
    model = load_model(model_dir)  # card, sha256, type allow-list and the pipeline checked before any task
    out_root = Path(out_root).resolve()
    with store.begin() as connection:
        model_row_id = register_model(connection, model_dir, model.card)
        reference = {"path": str(Path(model_dir).resolve()), "sha256": model.card["model_file"]["sha256"]}
        jobs = pending_jobs(connection, model_row_id, reference, out_root, formats, auto_region)
    arguments = {"model_id": model_row_id, "out": str(out_root), "formats": list(formats),
                 "auto_region": auto_region, "workers": workers, "scheduler": scheduler}
    outcome = run_recorded(store, "map", arguments, map_task, jobs, _write_map(model_row_id), workers=workers,
                           scheduler=scheduler, progress=progress)
    outcome.subject = f"model #{model_row_id} {model.model_id}"
    return outcome
