"""The ``runs`` record: one row per batch command, one ``run_patients`` row per patient it finished or failed.

A run starts ``running`` and ends ``done`` (every patient computed), ``failed`` (some patient failed, or the batch
stopped on an error), or ``cancelled`` (Ctrl-C). A run killed outright keeps ``running``; the next run started on
the same host marks it ``interrupted`` once its process is gone.
"""

from __future__ import annotations

import json
import os
import socket

from sqlalchemy import Connection, insert, select, update

from KiMapLib import __version__
from KiMapLib.cohort import schema
from KiMapLib.cohort.store import Store, now

RUNNING = "running"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_interrupted(connection: Connection) -> int:
    """Mark this host's ``running`` runs whose process is gone as ``interrupted``; returns how many."""
    table = schema.runs
    stale = [row.id for row in connection.execute(select(table.c.id, table.c.pid).where(
        table.c.status == RUNNING, table.c.host == socket.gethostname())) if not _process_alive(row.pid)]
    if stale:
        connection.execute(update(table).where(table.c.id.in_(stale)).values(
            status="interrupted", error="the process ended without finishing (killed or crashed)"))
    return len(stale)


def start_run(store: Store, command: str, arguments: dict, patients_total: int) -> int:
    with store.begin() as connection:
        mark_interrupted(connection)
        return int(connection.execute(insert(schema.runs).values(
            command=command, arguments=json.dumps(arguments, sort_keys=True), started_at=now(), status=RUNNING,
            host=socket.gethostname(), pid=os.getpid(), kimap_version=__version__, patients_total=patients_total,
            patients_done=0, patients_failed=0)).inserted_primary_key[0])


def record_patient(connection: Connection, run_id: int, patient_id: int, result: dict) -> None:
    """The patient's outcome in ``run_patients`` and the run's counters (inside the caller's transaction)."""
    ok = bool(result.get("ok"))
    connection.execute(insert(schema.run_patients).values(
        run_id=run_id, patient_id=patient_id, status="done" if ok else "failed",
        error=None if ok else result.get("error"), seconds=result.get("seconds"), finished_at=now(),
        worker=result.get("worker")))
    column = schema.runs.c.patients_done if ok else schema.runs.c.patients_failed
    connection.execute(update(schema.runs).where(schema.runs.c.id == run_id).values({column: column + 1}))


def finish_run(store: Store, run_id: int, status: str, error: str | None = None) -> None:
    with store.begin() as connection:
        connection.execute(update(schema.runs).where(schema.runs.c.id == run_id).values(
            status=status, ended_at=now(), error=error))
