"""A batch run with its record: the ``runs`` row, one transaction per finished patient, the final status."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection

from KiMapLib.cohort.batch import InProcess, Job, OnDask, executor
from KiMapLib.cohort.runs import finish_run, record_patient, start_run
from KiMapLib.cohort.store import Store
from KiMapLib.errors import Cancelled
from KiMapLib.progress import ProgressCallback, report


@dataclass
class BatchOutcome:
    """What a batch did: its run id and status, what it computed with (``subject``), patients done and failed
    (key, error), and notes."""

    run_id: int | None
    status: str
    patients: int
    subject: str = ""
    done: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    failed_items: list[str] = field(default_factory=list)  # e.g. biopsies of a finished patient that failed
    notes: list[str] = field(default_factory=list)


def run_recorded(store: Store, command: str, arguments: dict, task: Callable[[dict], dict], jobs: Sequence[Job],
                 write: Callable[[Connection, int, Job, dict], None], *, workers: int | None = None,
                 scheduler: str | None = None, progress: ProgressCallback | None = None) -> BatchOutcome:
    """Run ``task`` per job and, per result, ``write(connection, run_id, job, result)`` plus the patient's run record
    in one transaction. Ctrl-C marks the run ``cancelled`` and re-raises; committed patients stay."""
    outcome = BatchOutcome(run_id=None, status="done", patients=len(jobs))
    if not jobs:
        return outcome
    report(progress, 0.0, f"{len(jobs)} patients")
    with executor(workers, scheduler) as where:  # the cluster is up (or reached) before the run is recorded
        _run(store, command, arguments, task, jobs, write, where, outcome, progress)
    return outcome


def _run(store: Store, command: str, arguments: dict, task: Callable[[dict], dict], jobs: Sequence[Job],
         write: Callable[[Connection, int, Job, dict], None], where: InProcess | OnDask, outcome: BatchOutcome,
         progress: ProgressCallback | None) -> None:
    run_id = outcome.run_id = start_run(store, command, arguments, len(jobs))

    def record(job: Job, result: dict) -> None:
        with store.begin() as connection:
            if result.get("ok"):
                write(connection, run_id, job, result)
            record_patient(connection, run_id, job.patient_id, result)
        if result.get("ok"):
            outcome.done.append(job.patient_key)
            outcome.notes += [f"{job.patient_key}: {note}" for note in result.get("notes", [])]
            outcome.failed_items += result.get("failed_items", [])
        else:
            outcome.failed.append((job.patient_key, str(result.get("error"))))

    try:
        where.run(task, jobs, record, progress)
    except (KeyboardInterrupt, Cancelled):
        outcome.status = "cancelled"
        finish_run(store, run_id, "cancelled", "stopped by the user (Ctrl-C)")
        raise
    except BaseException as error:
        finish_run(store, run_id, "failed", f"{type(error).__name__}: {error}".splitlines()[0])
        raise
    outcome.status = "failed" if outcome.failed else "done"
    finish_run(store, run_id, outcome.status,
               f"{len(outcome.failed)} of {len(jobs)} patients failed" if outcome.failed else None)
