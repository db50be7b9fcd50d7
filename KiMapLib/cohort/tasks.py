"""What a worker computes for one patient: biopsy features, or a whole-tumour map. No database access here.

Each task takes a plain dict (paths, sha256s, biopsies, settings or model) and returns a plain dict; any failure of
the patient (a corrupt or changed volume, a bad grid, a missing sequence) is returned as ``{"ok": False, "error":
one line}`` so that the client records it and the other patients go on. The computation is the one ``kimap
extract`` and ``kimap map`` run (:func:`~KiMapLib.features.extraction.extract_biopsies`,
:func:`~KiMapLib.maps.mapping.compute_map`), so values are identical whichever machine runs them.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np

from KiMapLib.cohort.series import content_sha256
from KiMapLib.errors import KiMapError
from KiMapLib.inputs.biopsies import Biopsy

_MODELS: dict[tuple[str, str], object] = {}  # verified models loaded by this worker process, by (path, sha256)


#: Seconds each extraction task waits before it starts; set only by the tests that interrupt a run on purpose.
TEST_DELAY_VARIABLE = "KIMAP_TEST_TASK_DELAY_S"


def worker_label() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def environment() -> str:
    """KiMap's and pyradiomics' versions here: every worker must match the client (same values everywhere)."""
    from KiMapLib import __version__
    from KiMapLib.features.extraction import pyradiomics_version

    return f"KiMap {__version__} with pyradiomics {pyradiomics_version()}"


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    message = text[0] if text else ""
    return message if isinstance(error, KiMapError) else f"{type(error).__name__}: {message}".rstrip(": ")


def _verified_paths(series: dict[str, dict]) -> dict[str, Path]:
    """The series' paths, after checking each still has the content (sha256) that was imported."""
    paths = {}
    for sequence, record in series.items():
        path = Path(record["path"])
        if not path.exists():
            raise KiMapError(f"file not found: {path}", input_name=sequence, hint="is the shared storage mounted here?")
        if content_sha256(path) != record["sha256"]:
            raise KiMapError(f"{path.name} changed since it was imported (sha256 differs)", input_name=sequence,
                             hint="restore the file, or re-import it before anything is computed from it")
        paths[sequence] = path
    return paths


def _biopsy(patient: str, record: dict) -> Biopsy:
    return Biopsy(patient_id=patient, biopsy_id=record["biopsy_id"], ras=np.asarray(record["ras"], dtype=float),
                  ki67=record["ki67"], covariates=dict(record["covariates"]))


def extract_task(job: dict) -> dict:
    """Features of the listed biopsies of one patient: ``rows`` (biopsy row id, voxel, features) and ``failed``."""
    from KiMapLib.features.extraction import extract_biopsies
    from KiMapLib.inputs.case import prepare_case
    from KiMapLib.inputs.images import read_volumes
    from KiMapLib.settings import ExtractionSettings

    started = time.perf_counter()
    outcome: dict = {"patient": job["patient"], "worker": worker_label()}
    time.sleep(float(os.environ.get(TEST_DELAY_VARIABLE) or 0))  # tests only: a run long enough to interrupt
    try:
        settings = ExtractionSettings.from_dict(job["settings"])
        case = prepare_case(read_volumes(_verified_paths(job["series"])), settings)
        biopsies = [_biopsy(job["patient"], record) for record in job["biopsies"]]
        rows, errors = extract_biopsies(case, biopsies)
    except Exception as error:  # the patient fails, the batch goes on
        return {**outcome, "ok": False, "error": _one_line(error), "seconds": time.perf_counter() - started}
    by_key = {row["biopsy_id"]: row for row in rows}
    identity = [*biopsies[0].row(), "voxel_i", "voxel_j", "voxel_k"] if biopsies else []
    computed, failed = [], []
    failures = iter(errors)  # extract_biopsies keeps the biopsies' order in rows and errors alike
    for record, biopsy in zip(job["biopsies"], biopsies, strict=True):
        row = by_key.get(biopsy.biopsy_id)
        if row is None:
            failed.append({"id": record["id"], "error": _one_line(next(failures))})
            continue
        computed.append({"id": record["id"], "voxel": [int(row["voxel_i"]), int(row["voxel_j"]), int(row["voxel_k"])],
                         "features": {k: v for k, v in row.items() if k not in identity}})
    return {**outcome, "ok": True, "rows": computed, "failed": failed, "notes": list(case.notes),
            "failed_items": [f["error"] for f in failed], "seconds": time.perf_counter() - started}


def _model(path: str, sha256: str):
    from KiMapLib.model.bundle import load_model

    key = (path, sha256)
    if key not in _MODELS:
        model = load_model(path)  # verifies the card, the file's sha256 and its type allow-list
        if model.card["model_file"]["sha256"] != sha256:
            raise KiMapError("the model bundle changed since it was registered (sha256 differs)", input_name=path,
                             hint="register it again with `kimap cohort map --model`")
        _MODELS[key] = model
    return _MODELS[key]


def map_task(job: dict) -> dict:
    """ki67 and probability maps of one patient, written atomically into ``job['out_dir']``; returns the summary."""
    from KiMapLib.features.extraction import biopsy_voxel
    from KiMapLib.inputs.case import prepare_case
    from KiMapLib.inputs.images import read_volume, read_volumes
    from KiMapLib.maps.mapping import compute_map, write_map

    started = time.perf_counter()
    outcome: dict = {"patient": job["patient"], "worker": worker_label()}
    try:
        model = _model(job["model"]["path"], job["model"]["sha256"])
        paths = _verified_paths({**job["series"], **({"region": job["region"]} if job["region"] else {})})
        region = read_volume(paths.pop("region"), "region") if job["region"] else None
        case = prepare_case(read_volumes(paths), model.settings, required=model.required_sequences)
        covariates = {k: v for k, v in job["covariates"].items() if v is not None}
        result = compute_map(case, model, region, covariates)
        points = []
        for record in job["biopsies"]:
            try:
                points.append(biopsy_voxel(case, _biopsy(job["patient"], record)))
            except KiMapError:
                continue  # a point outside the volume is not drawn; the map itself is unaffected
        out_dir = write_map(result, job["out_dir"], tuple(job["formats"]), points_ijk=points)
        files = {p.name: content_sha256(p) for p in sorted(out_dir.iterdir()) if p.is_file()}
    except Exception as error:
        return {**outcome, "ok": False, "error": _one_line(error), "seconds": time.perf_counter() - started}
    return {**outcome, "ok": True, "out_dir": str(out_dir), "files": files, "summary": result.summary,
            "seconds": time.perf_counter() - started}
