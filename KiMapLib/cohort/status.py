"""``kimap cohort status``: what the database holds, what is computed, what is pending, how the last runs went."""

from __future__ import annotations

import json

from sqlalchemy import func, select

from KiMapLib.cohort import schema
from KiMapLib.cohort.store import Store
from KiMapLib.settings import ExtractionSettings


def _count(connection, table, *where) -> int:
    return int(connection.execute(select(func.count()).select_from(table).where(*where)).scalar())


def cohort_status(store: Store, last_runs: int = 5) -> dict:
    """Counts, per settings set (extracted / failed / pending biopsies), per model (maps), and the last runs."""
    with store.begin() as connection:
        version = connection.execute(select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")).scalar()
        n_patients = _count(connection, schema.patients)
        n_biopsies = _count(connection, schema.biopsies)
        status = {"database": store.shown_url, "schema_version": int(version), "patients": n_patients,
                  "image_series": _count(connection, schema.image_series), "biopsies": n_biopsies,
                  "settings": [], "models": [], "runs": []}
        f = schema.features
        for row in connection.execute(select(schema.extraction_settings).order_by(schema.extraction_settings.c.id)):
            settings = ExtractionSettings.from_dict(json.loads(row.settings))
            ok = _count(connection, f, f.c.settings_id == row.id, f.c.status == "ok")
            failed = _count(connection, f, f.c.settings_id == row.id, f.c.status == "failed")
            status["settings"].append({"id": row.id, "ball_radius_mm": settings.ball_radius_mm,
                                       "bin_width": settings.bin_width, "pyradiomics_version": row.pyradiomics_version,
                                       "digest": row.digest, "extracted": ok, "failed": failed,
                                       "pending": n_biopsies - ok - failed})
        m = schema.maps
        for row in connection.execute(select(schema.models).order_by(schema.models.c.id)):
            mapped = _count(connection, m, m.c.model_id == row.id)
            status["models"].append({"id": row.id, "model_id": row.model_key, "sha256": row.sha256, "path": row.path,
                                     "mapped": mapped, "pending": n_patients - mapped})
        r, rp, p = schema.runs, schema.run_patients, schema.patients
        for run in connection.execute(select(r).order_by(r.c.id.desc()).limit(last_runs)):
            failures = connection.execute(select(p.c.patient_key, rp.c.error).select_from(rp.join(p))
                                          .where(rp.c.run_id == run.id, rp.c.status == "failed")
                                          .order_by(p.c.patient_key)).all()
            status["runs"].append({
                "id": run.id, "command": run.command, "status": run.status, "started_at": run.started_at,
                "ended_at": run.ended_at, "host": run.host, "arguments": json.loads(run.arguments),
                "patients_total": run.patients_total, "patients_done": run.patients_done,
                "patients_failed": run.patients_failed, "error": run.error,
                "failures": [{"patient": key, "error": error} for key, error in failures]})
    return status


def status_lines(status: dict) -> list[str]:
    """The status as a few readable lines."""
    lines = [f"cohort database {status['database']} (schema v{status['schema_version']}): {status['patients']} "
             f"patients, {status['image_series']} image series, {status['biopsies']} biopsies"]
    for s in status["settings"]:
        lines.append(f"  features, settings #{s['id']} (ball {s['ball_radius_mm']:g} mm, bin width "
                     f"{s['bin_width']:g}, pyradiomics {s['pyradiomics_version']}): {s['extracted']} extracted, "
                     f"{s['failed']} failed, {s['pending']} pending")
    for model in status["models"]:
        lines.append(f"  maps, model #{model['id']} {model['model_id']} (sha256 {model['sha256'][:12]}): "
                     f"{model['mapped']} mapped, {model['pending']} pending")
    for run in status["runs"]:
        lines.append(f"  run #{run['id']} {run['command']} {run['status']} ({run['started_at']} - "
                     f"{run['ended_at'] or '…'}, {run['host']}): {run['patients_done']} of {run['patients_total']} "
                     f"patients done, {run['patients_failed']} failed")
        lines += [f"    {failure['patient']}: {failure['error']}" for failure in run["failures"]]
    return lines
