"""The cohort database and its batches: round trips on SQLite and PostgreSQL, parity with `kimap extract --cohort`,
resume after kill -9 and Ctrl-C, two Dask workers, a failing patient, schema migration, training and maps from it.

PostgreSQL tests use ``KIMAP_TEST_POSTGRES_URL`` (`.ci/run` starts a throwaway server); without it they skip,
except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO
from sqlalchemy import create_engine, func, insert, select, update

from KiMapLib.app.cli import main
from KiMapLib.cohort import schema
from KiMapLib.cohort.settings_identity import settings_digest
from KiMapLib.cohort.store import database_url, open_store
from KiMapLib.cohort.tasks import TEST_DELAY_VARIABLE
from KiMapLib.features.table import read_table
from KiMapLib.inputs.biopsies import read_biopsies
from KiMapLib.inputs.geometry import nearest_voxel
from KiMapLib.phantom import generate_cohort
from KiMapLib.settings import ExtractionSettings

N_PATIENTS = 4


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort") / "phantom"
    generate_cohort(folder, N_PATIENTS, seed=11)
    return folder


@pytest.fixture(scope="module")
def reference_table(cohort_dir, tmp_path_factory):
    """What `kimap extract --cohort` writes for the phantom cohort."""
    out = tmp_path_factory.mktemp("reference") / "table.csv"
    assert main(["extract", "--cohort", str(cohort_dir), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def clean_db(cohort_dir, tmp_path_factory):
    """A SQLite cohort database extracted in one clean run, in this process."""
    db = tmp_path_factory.mktemp("clean") / "cohort.sqlite"
    assert main(["cohort", "extract", "--cohort", str(cohort_dir), "--db", str(db)]) == 0
    return db


def postgres_server_url() -> str:
    url = os.environ.get("KIMAP_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("KIMAP_TEST_POSTGRES_URL is not set under CI=true (.ci/run starts a PostgreSQL server)")
        pytest.skip("KIMAP_TEST_POSTGRES_URL is not set (.ci/run starts a throwaway PostgreSQL server)")
    return url


@pytest.fixture
def postgres_db():
    """A new, empty PostgreSQL database on the test server (dropped afterwards)."""
    server = database_url(postgres_server_url())
    name = f"kimap_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield server.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "cohort.sqlite")
    return request.getfixturevalue("postgres_db")


def table_of(db, out) -> str:
    assert main(["cohort", "table", "--db", str(db), "--out", str(out)]) == 0
    return out.read_text()


def scalar(db, query):
    with open_store(db) as store, store.begin() as connection:
        return connection.execute(query).scalar()


def rows(db, query):
    with open_store(db) as store, store.begin() as connection:
        return connection.execute(query).all()


def n_biopsies(cohort_dir) -> int:
    return len(read_biopsies(cohort_dir / "biopsies.csv"))


# ---------------------------------------------------------------- store and table


def test_cohort_table_equals_kimap_extract(clean_db, reference_table, tmp_path):
    text = table_of(clean_db, tmp_path / "table.csv")
    assert text == reference_table.read_text()  # byte for byte: same rows, columns, order and values
    ours, theirs = read_table(tmp_path / "table.csv"), read_table(reference_table)
    numeric = [k for k, v in theirs[0].items() if isinstance(v, float)]
    assert len(numeric) > 370
    np.testing.assert_allclose([[r[k] for k in numeric] for r in ours], [[r[k] for k in numeric] for r in theirs],
                               rtol=0, atol=1e-12)
    assert (tmp_path / "table.settings.json").read_text() == reference_table.with_suffix(".settings.json").read_text()


def test_store_round_trip(any_db, cohort_dir, reference_table, tmp_path, capsys):
    subset = tmp_path / "two-patients"  # two patients (symbolic links) keep the test short
    subset.mkdir()
    for patient in ("SYN001", "SYN004"):
        (subset / patient).symlink_to(cohort_dir / patient, target_is_directory=True)
    assert main(["cohort", "import", "--cohort", str(subset), "--db", any_db]) == 0
    assert main(["cohort", "import", "--cohort", str(subset), "--db", any_db]) == 0  # again: nothing new
    assert "2 patients (0 new, 0 new image series, 0 new biopsies)" in capsys.readouterr().out
    assert scalar(any_db, select(func.count()).select_from(schema.image_series)) == 2 * 5  # 4 sequences + region
    series = rows(any_db, select(schema.image_series).where(schema.image_series.c.sequence == "t1c")
                  .order_by(schema.image_series.c.path))[0]
    assert series.path == str(cohort_dir / "SYN001" / "t1c.nrrd")  # absolute, links resolved
    image = sitk.ReadImage(series.path)
    geometry = json.loads(series.geometry)
    assert geometry["size"] == list(image.GetSize()) and geometry["spacing"] == list(image.GetSpacing())
    assert geometry["direction"] == list(image.GetDirection()) and geometry["origin"] == list(image.GetOrigin())
    from KiMapLib.cohort.series import content_sha256

    assert series.sha256 == content_sha256(series.path) and series.source_uids is None

    biopsies = [b for b in read_biopsies(cohort_dir / "biopsies.csv") if b.patient_id in ("SYN001", "SYN004")]
    stored = {(r.patient_key, r.biopsy_key): r for r in rows(any_db, select(
        schema.patients.c.patient_key, schema.patients.c.age, schema.biopsies).select_from(
        schema.biopsies.join(schema.patients)))}
    assert len(stored) == len(biopsies)
    for biopsy in biopsies:  # floats come back exactly
        row = stored[(biopsy.patient_id, biopsy.biopsy_id)]
        assert (row.r, row.a, row.s, row.ki67, row.age) == (*biopsy.ras, biopsy.ki67, biopsy.covariates["age"])

    assert main(["cohort", "extract", "--db", any_db]) == 0
    reference = reference_table.read_text().splitlines()
    assert table_of(any_db, tmp_path / "table.csv").splitlines() == [
        reference[0], *(line for line in reference[1:] if line.split(",")[0] in ("SYN001", "SYN004"))]
    assert main(["cohort", "extract", "--db", any_db]) == 0
    assert "nothing to extract" in capsys.readouterr().out
    assert scalar(any_db, select(func.count()).select_from(schema.features)) == len(biopsies)
    assert [r.status for r in rows(any_db, select(schema.runs))] == ["done"]


# ---------------------------------------------------------------- distributed, failures, resume


def test_two_dask_workers_give_the_table_of_one_process(cohort_dir, clean_db, tmp_path):
    db = tmp_path / "dask.sqlite"
    assert main(["cohort", "extract", "--cohort", str(cohort_dir), "--db", str(db), "--workers", "2"]) == 0
    assert table_of(db, tmp_path / "dask.csv") == table_of(clean_db, tmp_path / "one.csv")
    workers = {r.worker for r in rows(db, select(schema.run_patients))}
    assert all(w.startswith("tcp://") for w in workers) and 1 <= len(workers) <= 2
    assert scalar(db, select(schema.runs.c.patients_done)) == N_PATIENTS


def test_failing_patient_is_recorded_while_the_others_finish(cohort_dir, clean_db, tmp_path, capsys):
    folder = tmp_path / "cohort"
    for patient in ("SYN001", "SYN002", "SYN003"):
        shutil.copytree(cohort_dir / patient, folder / patient)
    corrupt = folder / "SYN002" / "t2.nrrd"
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])  # header intact, voxel data cut
    db = tmp_path / "cohort.sqlite"
    assert main(["cohort", "extract", "--cohort", str(folder), "--db", str(db)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("kimap cohort extract: error: SYN002: t2: cannot read t2.nrrd")

    run = rows(db, select(schema.runs))[0]
    assert (run.status, run.patients_done, run.patients_failed) == ("failed", 2, 1)
    outcomes = {r.patient_key: (r.status, r.error) for r in rows(db, select(
        schema.patients.c.patient_key, schema.run_patients).select_from(schema.run_patients.join(schema.patients)))}
    assert outcomes["SYN001"] == ("done", None) and outcomes["SYN003"] == ("done", None)
    assert outcomes["SYN002"][0] == "failed" and "t2.nrrd" in outcomes["SYN002"][1]
    ours = table_of(db, tmp_path / "ours.csv").splitlines()
    clean = table_of(clean_db, tmp_path / "clean.csv").splitlines()
    assert ours == [clean[0], *(line for line in clean[1:] if line.split(",")[0] in ("SYN001", "SYN003"))]

    from KiMapLib.cohort.status import cohort_status

    with open_store(db) as store:
        status = cohort_status(store)
    pending = len(read_biopsies(folder / "SYN002" / "biopsies.csv"))
    assert status["settings"][0]["pending"] == pending and status["runs"][0]["failures"][0]["patient"] == "SYN002"


def _feature_count(db) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as connection:
            return connection.execute("SELECT count(*) FROM features").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def _ctrl_c_as_in_a_terminal() -> None:
    """A foreground job in a terminal receives Ctrl-C; a job started in the background of a script (as CI may run
    the tests) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt. Restore the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_and_stop_after_first_patient(db, cohort_dir, stop: signal.Signals, *options: str) -> tuple[int, str, int]:
    """Run `kimap cohort extract` in a subprocess (its own process group, as a terminal's foreground job) and send
    ``stop`` to the group once one more patient is committed; returns (exit code, stderr, feature rows then).

    Each task waits 2 s before it starts, so that on a quiet machine the other patients are still running when the
    signal comes (otherwise the run can finish first and nothing is interrupted)."""
    before = _feature_count(db)
    process = subprocess.Popen([sys.executable, "-m", "KiMapLib", "cohort", "extract", "--cohort", str(cohort_dir),
                                "--db", str(db), *options], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True, env={**os.environ, TEST_DELAY_VARIABLE: "2"},
                               preexec_fn=_ctrl_c_as_in_a_terminal)
    deadline = time.monotonic() + 120
    while _feature_count(db) == before and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, stop)
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr, _feature_count(db)


def test_resume_after_kill_9_and_ctrl_c_is_exact(cohort_dir, clean_db, tmp_path):
    db = tmp_path / "cohort.sqlite"
    total = n_biopsies(cohort_dir)
    code, _, after_kill = _start_and_stop_after_first_patient(db, cohort_dir, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert 0 < after_kill < total, "the kill came after the run had finished: no resume was tested"

    # Ctrl-C (SIGINT to the whole foreground group) of a run on a local Dask cluster: a clean stop
    code, stderr, after_interrupt = _start_and_stop_after_first_patient(db, cohort_dir, signal.SIGINT,
                                                                        "--workers", "2")
    assert code == 130, stderr
    assert stderr.strip().splitlines()[-1] == ("kimap cohort extract: cancelled; every patient already recorded is "
                                               "kept — run it again to continue")
    assert "Traceback" not in stderr
    assert after_kill < after_interrupt < total

    assert main(["cohort", "extract", "--db", str(db)]) == 0
    assert table_of(db, tmp_path / "resumed.csv") == table_of(clean_db, tmp_path / "clean.csv")
    assert scalar(db, select(func.count()).select_from(schema.features)) == total
    assert scalar(db, select(func.count(func.distinct(schema.features.c.biopsy_id)))) == total
    runs = rows(db, select(schema.runs).order_by(schema.runs.c.id))
    assert [r.status for r in runs] == ["interrupted", "cancelled", "done"]
    # every patient was computed and recorded exactly once over the three runs
    done = rows(db, select(schema.run_patients.c.patient_id).where(schema.run_patients.c.status == "done"))
    assert len(done) == len(set(done)) == N_PATIENTS
    assert sum(r.patients_done for r in runs) == N_PATIENTS


# ---------------------------------------------------------------- schema versions


def create_v1_schema(connection) -> None:
    """The v1 schema: today's tables without what v2 added (``extraction_settings.digest``, ``run_patients.worker``)."""
    schema.metadata.create_all(connection)
    connection.exec_driver_sql("DROP INDEX ix_extraction_settings_digest")
    connection.exec_driver_sql("ALTER TABLE extraction_settings DROP COLUMN digest")
    connection.exec_driver_sql("ALTER TABLE run_patients DROP COLUMN worker")


def test_v1_database_is_upgraded_with_its_data(any_db):
    url = database_url(any_db)
    engine = create_engine(url)
    settings = ExtractionSettings(ball_radius_mm=3.0)
    values = {"t1c_original_firstorder_Mean": 0.1 + 0.2, "t1c_original_glcm_Idn": 1 / 3}
    with engine.begin() as connection:
        create_v1_schema(connection)
        connection.execute(insert(schema.meta), [{"key": "schema_version", "value": "1"}])
        connection.execute(insert(schema.patients).values(id=1, patient_key="OLD01", sex="F", age=61.5,
                                                          tumor_type="primary", source="/x", imported_at="t"))
        connection.execute(insert(schema.biopsies).values(id=1, patient_id=1, biopsy_key="B1", position=0, r=1.25,
                                                          a=-2.5, s=30.125, ki67=17.5, institution="INST-A"))
        connection.execute(insert(schema.extraction_settings).values(  # no digest: v1 has none
            id=1, settings=json.dumps(settings.to_dict(), sort_keys=True), pyradiomics_version="v3.1.4",
            created_at="t"))
        connection.execute(insert(schema.runs).values(
            id=1, command="extract", arguments="{}", started_at="t", ended_at="t", status="done", host="h", pid=1,
            kimap_version="0.1.0", patients_total=1, patients_done=1, patients_failed=0))
        connection.execute(insert(schema.run_patients).values(id=1, run_id=1, patient_id=1, status="done",
                                                              finished_at="t"))
        connection.execute(insert(schema.features).values(
            id=1, biopsy_id=1, settings_id=1, status="ok", voxel_i=4, voxel_j=5, voxel_k=6,
            feature_values=json.dumps(values), run_id=1, created_at="t"))
    engine.dispose()

    with open_store(any_db) as store:
        assert store.notes == ["upgraded the cohort database schema from v1 to v2"]
        with store.begin() as connection:
            assert connection.execute(select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")
                                      ).scalar() == "2"
            assert connection.execute(select(schema.extraction_settings.c.digest)).scalar() == \
                settings_digest(settings, "v3.1.4")
            assert connection.execute(select(schema.run_patients.c.worker)).scalar() is None
            from KiMapLib.cohort.table import cohort_rows

            (row,) = cohort_rows(connection, 1)
    assert row == {"patient_id": "OLD01", "biopsy_id": "B1", "r": 1.25, "a": -2.5, "s": 30.125, "sex": "F",
                   "age": 61.5, "tumor_type": "primary", "institution": "INST-A", "ki67": 17.5, "voxel_i": 4,
                   "voxel_j": 5, "voxel_k": 6, **values}
    with open_store(any_db) as store:
        assert store.notes == []  # upgraded once


def test_newer_or_foreign_database_is_refused_with_one_line(clean_db, tmp_path, capsys):
    newer = tmp_path / "newer.sqlite"
    shutil.copy(clean_db, newer)
    engine = create_engine(database_url(newer))
    with engine.begin() as connection:
        connection.execute(update(schema.meta).where(schema.meta.c.key == "schema_version").values(value="3"))
    engine.dispose()
    before = newer.read_bytes()
    capsys.readouterr()
    assert main(["cohort", "status", "--db", str(newer)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"kimap cohort: error: --db: sqlite:///{newer} has cohort schema v3, newer than")
    assert newer.read_bytes() == before

    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE notes (x)")
    assert main(["cohort", "status", "--db", str(foreign)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "is not a KiMap cohort database (it has tables notes" in line
    assert main(["cohort", "status", "--db", str(tmp_path / "missing.sqlite")]) == 2
    assert "no database at" in capsys.readouterr().err
    assert not (tmp_path / "missing.sqlite").exists()


# ---------------------------------------------------------------- training and maps from the store


def _small_region(patient_dir, out_path) -> int:
    """A 5x5x5 voxel region around the first biopsy (keeps the map test short); returns its voxel count."""
    t1c = sitk.ReadImage(str(patient_dir / "t1c.nrrd"))
    i, j, k = nearest_voxel(t1c, read_biopsies(patient_dir / "biopsies.csv")[0].ras)
    array = np.zeros(sitk.GetArrayViewFromImage(t1c).shape, np.uint8)
    array[k - 2:k + 3, j - 2:j + 3, i - 2:i + 3] = 1
    region = sitk.GetImageFromArray(array)
    region.CopyInformation(t1c)
    sitk.WriteImage(region, str(out_path), useCompression=True)
    return int(array.sum())


def test_train_from_db_and_map_a_manifest_cohort(clean_db, reference_table, cohort_dir, tmp_path, capsys):
    from KiMapLib.inputs.case import prepare_case
    from KiMapLib.inputs.images import read_volume, read_volumes
    from KiMapLib.maps.mapping import compute_map
    from KiMapLib.model.bundle import load_model

    common = ["--estimator", "ridge", "--k-features", "6", "--threshold", "15", "--seed", "0"]
    assert main(["train", "--db", str(clean_db), "--out", str(tmp_path / "from_db"), *common]) == 0
    assert main(["train", "--features", str(reference_table), "--out", str(tmp_path / "from_csv"), *common]) == 0
    from_db, from_csv = load_model(tmp_path / "from_db"), load_model(tmp_path / "from_csv")
    assert from_db.used_features == from_csv.used_features and from_db.card["cv"] == from_csv.card["cv"]
    assert scalar(clean_db, select(schema.models.c.sha256)) == from_db.card["model_file"]["sha256"]

    lines = ["patient,sequence,path,biopsies"]
    regions = {}
    for patient in ("SYN001", "SYN003"):
        regions[patient] = _small_region(cohort_dir / patient, tmp_path / f"{patient}_region.nrrd")
        for sequence in ("t1c", "t2", "flair", "adc"):
            biopsies = cohort_dir / patient / "biopsies.csv" if sequence == "t1c" else ""
            lines.append(f"{patient},{sequence},{cohort_dir / patient / sequence}.nrrd,{biopsies}")
        lines.append(f"{patient},region,{patient}_region.nrrd,")  # relative to the manifest
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    db = tmp_path / "maps.sqlite"
    assert main(["cohort", "import", "--manifest", str(tmp_path / "manifest.csv"), "--db", str(db)]) == 0
    out = tmp_path / "maps"
    assert main(["cohort", "map", "--db", str(db), "--model", str(tmp_path / "from_db"), "--out", str(out)]) == 0
    assert main(["cohort", "map", "--db", str(db), "--model", str(tmp_path / "from_db"), "--out", str(out)]) == 0
    assert "nothing to map" in capsys.readouterr().out

    recorded = {r.patient_key: r for r in rows(db, select(schema.patients.c.patient_key, schema.maps)
                                                .select_from(schema.maps.join(schema.patients)))}
    assert sorted(recorded) == ["SYN001", "SYN003"]
    for patient, record in recorded.items():
        summary = json.loads(record.summary)
        assert summary["region_voxels"] == regions[patient] and summary["covariates"]["age"] is not None
        files = json.loads(record.files)
        assert {"ki67_map.nrrd", "ki67_probability.nrrd", "summary.json"} <= set(files)
    # the map equals the one `kimap map` computes for the same patient, model and region
    volumes = read_volumes({s: cohort_dir / "SYN001" / f"{s}.nrrd" for s in ("t1c", "t2", "flair", "adc")})
    model = load_model(tmp_path / "from_db")
    expected = compute_map(prepare_case(volumes, model.settings, required=model.required_sequences), model,
                           read_volume(tmp_path / "SYN001_region.nrrd"),
                           {k: v for k, v in json.loads(recorded["SYN001"].summary)["covariates"].items()})
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "SYN001" / "ki67_map.nrrd"))),
                                  sitk.GetArrayFromImage(expected.ki67))


def test_bad_manifest_is_one_clear_error_and_nothing_is_written(tmp_path, capsys):
    (tmp_path / "manifest.csv").write_text("patient,sequence,path,biopsies\nP1,dwi,/x.nrrd,\n")
    db = tmp_path / "cohort.sqlite"
    assert main(["cohort", "import", "--manifest", str(tmp_path / "manifest.csv"), "--db", str(db)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("kimap cohort: error: --manifest: unknown sequence 'dwi' (manifest.csv line 2)")
    (tmp_path / "manifest.csv").write_text("patient,sequence,path,biopsies\nP1,t1c,missing.nrrd,\n")
    assert main(["cohort", "import", "--manifest", str(tmp_path / "manifest.csv"), "--db", str(db)]) == 2
    assert "P1/t1c: file not found" in capsys.readouterr().err
    assert not db.exists()  # checked before the database is made
