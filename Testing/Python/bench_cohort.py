"""Benchmark (not a test): cohort extraction throughput, patients per minute, in this process and on local Dask
clusters of 1 and 2 workers, on a phantom cohort (SYNTHETIC DATA).

    python Testing/Python/bench_cohort.py [--patients 6] [--seed 2026] [--workers 1 2] [--json out.json]

Each mode extracts the whole cohort into a new SQLite database; the time includes starting and stopping the local
cluster (measured separately too). The tables of all modes must be identical (checked). Numbers depend on the
machine's other load: compare modes within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from KiMapLib.cohort.batch import dask_client
from KiMapLib.cohort.batch_extract import extract_cohort
from KiMapLib.cohort.importing import folder_sources, import_patients
from KiMapLib.cohort.store import open_store
from KiMapLib.cohort.table import choose_settings, cohort_rows
from KiMapLib.inputs.biopsies import read_biopsies
from KiMapLib.phantom import generate_cohort
from KiMapLib.settings import ExtractionSettings


def run_mode(cohort: Path, folder: Path, workers: int | None) -> tuple[float, list[dict]]:
    """Seconds to extract the cohort into a new database (``workers`` None: in this process), and its table."""
    name = "in-process" if workers is None else f"workers-{workers}"
    with open_store(folder / f"{name}.sqlite", create=True) as store:
        import_patients(store, folder_sources(cohort))
        started = time.perf_counter()
        outcome = extract_cohort(store, ExtractionSettings(), workers=workers)
        seconds = time.perf_counter() - started
        assert not outcome.failed, outcome.failed
        with store.begin() as connection:
            rows = cohort_rows(connection, choose_settings(connection)[0])
    return seconds, rows


def cluster_overhead(workers: int) -> float:
    started = time.perf_counter()
    with dask_client(workers, None):
        pass
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=6)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cohort", type=Path, help="an existing phantom cohort folder (default: generate one)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kimap-bench-cohort-") as temporary:
        folder = Path(temporary)
        cohort = args.cohort or folder / "cohort"
        if args.cohort is None:
            generate_cohort(cohort, args.patients, args.seed)
        sources = folder_sources(cohort)
        n_patients = len(sources)
        n_biopsies = sum(len(read_biopsies(source.biopsies_path)) for source in sources)
        results = {"patients": n_patients, "biopsies": n_biopsies, "cpu_count": os.cpu_count(),
                   "load_average_before": os.getloadavg(), "modes": {}}
        reference = None
        for workers in (None, *args.workers):
            name = "in-process" if workers is None else f"{workers} local worker{'s' * (workers > 1)}"
            seconds, rows = run_mode(cohort, folder, workers)
            overhead = cluster_overhead(workers) if workers else 0.0
            if reference is None:
                reference = rows
            identical = json.dumps(rows) == json.dumps(reference)
            results["modes"][name] = {"seconds": round(seconds, 2), "patients_per_minute": round(
                60 * n_patients / seconds, 2), "cluster_start_stop_seconds": round(overhead, 2),
                "patients_per_minute_without_cluster_start": round(60 * n_patients / max(seconds - overhead, 1e-9),
                                                                   2), "table_identical": identical}
            net = results["modes"][name]["patients_per_minute_without_cluster_start"]
            print(f"{name:>16}: {seconds:6.1f} s, {60 * n_patients / seconds:5.1f} patients/min (cluster start+stop "
                  f"{overhead:.1f} s; {net:.1f} patients/min without it); table identical: {identical}", flush=True)
        results["load_average_after"] = os.getloadavg()
    print(f"{results['patients']} patients, {results['biopsies']} biopsies; load average before "
          f"{results['load_average_before']}, after {results['load_average_after']} on {results['cpu_count']} CPUs")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(m["table_identical"] for m in results["modes"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
