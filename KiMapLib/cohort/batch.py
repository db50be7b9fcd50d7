"""Running one task per patient: in this process, on a local Dask cluster, or on a running Dask scheduler.

Workers only compute (:mod:`~KiMapLib.cohort.tasks`); every result comes back to this client, which hands it to
``record`` (the database write) as soon as it arrives, so a crash loses at most the patients still in flight. At
most two tasks per worker thread are queued at a time, so a Ctrl-C or crash leaves little computed and unsaved.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from KiMapLib.cohort.tasks import environment
from KiMapLib.errors import KiMapError
from KiMapLib.progress import ProgressCallback, report

#: Seconds to wait for the first worker of a running scheduler before giving up.
WORKER_WAIT_S = 60.0
QUEUED_PER_THREAD = 2


@dataclass
class Job:
    """One patient's task: the database id and key of the patient and the task's plain-dict input."""

    patient_id: int
    patient_key: str
    payload: dict


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while processes are started (they keep ignoring it); a no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def dask_client(workers: int | None, scheduler: str | None) -> Iterator[object]:
    """A Dask client on a new local cluster (``workers`` processes, one thread each) or on ``scheduler``."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise KiMapError("Dask distributed is not installed", input_name="--workers",
                         hint="pip install dask distributed (pinned in requirements.txt), or run without --workers"
                         ) from None
    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as error:
            raise KiMapError(f"cannot reach the Dask scheduler at {scheduler} ({type(error).__name__})",
                             input_name="--scheduler", hint="start it with `dask scheduler` and check the address"
                             ) from None
    else:
        if workers is None or workers < 1:
            raise KiMapError(f"need at least one worker, got {workers}", input_name="--workers")
        with _sigint_ignored():  # the worker processes inherit it: Ctrl-C reaches this client only, which stops them
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                   silence_logs=logging.ERROR)
        client = Client(cluster)
    try:
        _check_workers(client, scheduler)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _check_workers(client, scheduler: str | None) -> None:
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except TimeoutError:
        raise KiMapError(f"no Dask worker joined {scheduler} within {WORKER_WAIT_S:g} s", input_name="--scheduler",
                         hint=f"start workers with `dask worker {scheduler}` on the machines") from None
    mine = environment()
    try:  # recent Dask schedulers unpickle the tasks: the scheduler needs KiMap too
        on_scheduler = client.run_on_scheduler(environment)
    except Exception as error:
        raise KiMapError(f"the Dask scheduler {scheduler} cannot load KiMap's tasks ({type(error).__name__}: "
                         f"{_first_line(error)})", input_name="--scheduler",
                         hint="start `dask scheduler` from the same KiMap install (or container image) as the workers"
                         ) from None
    if on_scheduler != mine:
        raise KiMapError(f"the Dask scheduler runs {on_scheduler}, this client {mine}", input_name="--scheduler",
                         hint="install the same KiMap (the same container image) on the scheduler and every worker")
    versions = client.run(environment)
    other = {address: version for address, version in versions.items() if version != mine}
    if other:
        address, version = next(iter(other.items()))
        raise KiMapError(f"worker {address} runs {version}, this client {mine}", input_name="--scheduler",
                         hint="install the same KiMap (the same container image) on every worker")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""


class InProcess:
    """Tasks one after another in this process."""

    def run(self, task: Callable[[dict], dict], jobs: Sequence[Job], record: Callable[[Job, dict], None],
            progress: ProgressCallback | None = None) -> None:
        for done, job in enumerate(jobs, start=1):
            record(job, task(job.payload))
            report(progress, done / len(jobs), f"{done}/{len(jobs)} patients ({job.patient_key})")


class OnDask:
    """Tasks on the workers of a Dask client, at most :data:`QUEUED_PER_THREAD` per worker thread at a time."""

    def __init__(self, client) -> None:
        self.client = client

    def run(self, task: Callable[[dict], dict], jobs: Sequence[Job], record: Callable[[Job, dict], None],
            progress: ProgressCallback | None = None) -> None:
        from distributed import as_completed

        client = self.client
        threads = max(1, sum(client.nthreads().values()))
        waiting = iter(jobs)
        running: dict[object, Job] = {}
        finished = as_completed()
        batch = uuid.uuid4().hex[:8]

        def submit_next() -> None:
            job = next(waiting, None)
            if job is not None:
                future = client.submit(task, job.payload, key=f"kimap-{task.__name__}-{job.patient_key}-{batch}",
                                       pure=False, retries=0)
                running[future] = job
                finished.add(future)

        try:
            for _ in range(QUEUED_PER_THREAD * threads):
                submit_next()
            for done, future in enumerate(finished, start=1):
                job = running.pop(future)
                try:
                    result = future.result()
                except Exception as error:  # the worker itself died (or was lost) while computing this patient
                    result = {"patient": job.patient_key, "ok": False, "worker": None, "seconds": None,
                              "error": f"worker lost ({type(error).__name__}: {_first_line(error)})"}
                record(job, result)
                report(progress, done / len(jobs), f"{done}/{len(jobs)} patients ({job.patient_key})")
                submit_next()
        finally:
            if running:
                client.cancel(list(running), force=True)


@contextlib.contextmanager
def executor(workers: int | None = None, scheduler: str | None = None) -> Iterator[InProcess | OnDask]:
    """Where tasks run: this process (neither given), a new local cluster of ``workers``, or ``scheduler``'s
    workers. Entering it starts the cluster or connects (and checks the workers) before any task is recorded."""
    if workers is None and scheduler is None:
        yield InProcess()
        return
    with dask_client(workers, scheduler) as client:
        yield OnDask(client)
