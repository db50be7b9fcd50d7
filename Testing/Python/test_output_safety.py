"""KiMap removes only files it wrote and never overwrites an input (issue 12, items 2, 3, 6, 7, 9).

Every test asserts the files on disk: the user's files beside an output, the bytes of the inputs, the manifest
against the folder, the modes, and that no staging folder (``.NAME.kimap-new-...``) is left behind.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import synthetic_patient, write_case_folder

from KiMapLib import atomic, outputs
from KiMapLib.app.cli import main
from KiMapLib.atomic import atomic_directory, atomic_files, clean_stale_staging, process_start
from KiMapLib.errors import KiMapError
from KiMapLib.features.table import write_table
from KiMapLib.outputs import MANIFEST_FILE, inspect_output_folder

ROOT = Path(__file__).resolve().parents[2]


# -- helpers ---------------------------------------------------------------------------------------------------

def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def staging_left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".kimap-" in p.name)


def write_output(target: Path, files: dict[str, bytes], kind: str = "map") -> None:
    with atomic_directory(target, kind) as staging:
        for name, content in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(content)


def assert_manifest_matches(folder: Path, kind: str) -> dict:
    """The folder holds exactly its manifest's files, with their sha256."""
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["kind"] == kind
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {MANIFEST_FILE}
    assert on_disk == set(manifest["files"])
    for name, entry in manifest["files"].items():
        assert outputs.sha256_file(folder / name) == entry["sha256"]
        assert (folder / name).stat().st_size == entry["size"]
    assert inspect_output_folder(folder, kind) is not None
    return manifest


def one_error_line(capsys, start: str) -> str:
    """Exactly one error line, the last one (progress lines may come before it), no traceback."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1 and err[-1] == errors[0] and errors[0].startswith(start), err
    return errors[0]


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    return write_case_folder(tmp_path_factory.mktemp("case"), synthetic_patient(21))


def map_args(case_dir: Path, model: Path, out: Path, *extra: str) -> list[str]:
    volumes = [a for name in ("t1c", "t2", "flair", "adc") for a in ("--volume", f"{name}={case_dir / name}.nrrd")]
    return ["map", *volumes, "--region", str(case_dir / "label.nrrd"), "--model", str(model), "--out", str(out),
            *extra]


# -- item 2: only files KiMap wrote are removed ----------------------------------------------------------------

def test_a_summary_json_no_longer_makes_a_folder_kimap_s(tmp_path, case_dir, tiny_model_dir, capsys):
    """The issue's case: a folder with a summary.json and the user's thesis was emptied; now it is refused."""
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "summary.json").write_text("{}")
    (folder / "thesis.docx").write_bytes(b"four years of work")
    before = snapshot(folder)
    assert main(map_args(case_dir, tiny_model_dir, folder)) == 2
    line = one_error_line(capsys, "kimap map: error: --out: ")
    assert "has no KiMap manifest" in line and "summary.json, thesis.docx" in line and "choose another --out" in line
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["documents"]


def test_rerun_into_an_earlier_map_with_user_files_is_refused_naming_them(tmp_path, case_dir, tiny_model_dir,
                                                                           capsys):
    out = tmp_path / "map"
    assert main(map_args(case_dir, tiny_model_dir, out)) == 0
    manifest = assert_manifest_matches(out, "map")
    assert {"ki67_map.nrrd", "ki67_probability.nrrd", "region.nrrd", "overlay.png", "summary.json"} <= set(
        manifest["files"])
    capsys.readouterr()

    (out / "notes.txt").write_text("biopsy 3 looked necrotic")
    shutil.copy(case_dir / "t1c.nrrd", out / "t1c.nrrd")  # the user's volume, beside the map
    before = snapshot(out)
    assert main(map_args(case_dir, tiny_model_dir, out)) == 2
    line = one_error_line(capsys, "kimap map: error: --out: ")
    assert "holds files KiMap did not write" in line and "notes.txt (not KiMap's), t1c.nrrd (not KiMap's)" in line
    assert snapshot(out) == before

    (out / "notes.txt").unlink()
    (out / "t1c.nrrd").unlink()
    assert main(map_args(case_dir, tiny_model_dir, out, "--formats", "nifti")) == 0  # a re-run replaces the map
    manifest = assert_manifest_matches(out, "map")
    assert "ki67_map.nii.gz" in manifest["files"] and not (out / "ki67_map.nrrd").exists()
    assert staging_left(tmp_path) == []


def test_rerun_replaces_only_the_files_of_the_manifest(tmp_path):
    out = tmp_path / "out"
    write_output(out, {"a.txt": b"one", "sub/b.txt": b"two", "sub/deeper/c.txt": b"three"})
    assert_manifest_matches(out, "map")
    write_output(out, {"a.txt": b"ONE", "d.txt": b"four"})
    assert snapshot(out).keys() == {"a.txt", "d.txt", MANIFEST_FILE}
    assert (out / "a.txt").read_bytes() == b"ONE" and not (out / "sub").exists()
    assert_manifest_matches(out, "map")
    assert staging_left(tmp_path) == []


@pytest.mark.parametrize("change", ["modified", "same size", "symlink", "user folder", "other kind", "no manifest",
                                    "manifest escapes", "file not folder"])
def test_a_changed_or_foreign_output_is_refused_and_kept(tmp_path, change):
    out = tmp_path / "out"
    write_output(out, {"ki67_map.nrrd": b"map bytes", "sub/region.nrrd": b"region"})
    expected = {
        "modified": ("ki67_map.nrrd (changed since KiMap wrote it)",
                     lambda: (out / "ki67_map.nrrd").write_bytes(b"edited by the user")),
        "same size": ("ki67_map.nrrd (changed since KiMap wrote it)",
                      lambda: (out / "ki67_map.nrrd").write_bytes(b"MAP BYTES")),
        "symlink": ("link.nrrd (not KiMap's)", lambda: (out / "link.nrrd").symlink_to(tmp_path / "elsewhere")),
        "user folder": ("mine/ (not KiMap's)", lambda: (out / "mine").mkdir()),
        "other kind": ("holds a KiMap model bundle, not a map", lambda: _rewrite_manifest(out, kind="model bundle")),
        "no manifest": ("has no KiMap manifest", lambda: (out / MANIFEST_FILE).unlink()),
        "manifest escapes": ("unreadable KiMap manifest", lambda: _rewrite_manifest(out, escape=True)),
        "file not folder": ("is a file, not a folder", lambda: (shutil.rmtree(out), out.write_text("csv"))),
    }
    message, make_change = expected[change]
    make_change()
    before = snapshot(tmp_path)
    with pytest.raises(KiMapError, match="^--out: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        write_output(out, {"ki67_map.nrrd": b"new"})
    assert snapshot(tmp_path) == before
    assert staging_left(tmp_path) == []


def _rewrite_manifest(out: Path, kind: str | None = None, escape: bool = False) -> None:
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    if kind:
        manifest["kind"] = kind
    if escape:  # a crafted manifest that names a file outside the folder: never trusted
        manifest["files"]["../victim.txt"] = {"size": 3, "sha256": "0" * 64}
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_single_file_outputs_replace_an_earlier_file_atomically(tmp_path):
    table = tmp_path / "table.csv"
    table.write_text("old,table\n")
    write_table([{"patient_id": "P1", "ki67": 12.5}], table)  # a file named as --out is written
    assert table.read_text().splitlines() == ["patient_id,ki67", "P1,12.5"]
    with pytest.raises(KiMapError, match="is a folder"):
        write_table([{"a": 1}], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


# -- item 3: an output is never an input -------------------------------------------------------------------

def test_output_equal_to_or_holding_an_input_is_refused_before_any_work(tmp_path, case_dir, tiny_model_dir,
                                                                        capsys, monkeypatch):
    import KiMapLib.app.commands as commands

    def no_work(*args, **kwargs):
        raise AssertionError("the work started")

    monkeypatch.setattr(commands, "extract_patient", no_work)
    monkeypatch.setattr(commands, "prepare_case", no_work)
    monkeypatch.setattr(commands, "read_table", no_work)
    inputs = tmp_path / "inputs"
    shutil.copytree(case_dir, inputs / "P1")
    (tmp_path / "link.csv").symlink_to(inputs / "P1" / "biopsies.csv")
    p1 = inputs / "P1"
    volumes = [a for name in ("t1c", "t2", "flair", "adc") for a in ("--volume", f"{name}={p1 / name}.nrrd")]
    extract = ["extract", *volumes, "--biopsies", str(p1 / "biopsies.csv"), "--out"]
    cases = [
        ([*extract, str(p1 / "biopsies.csv")], "extract", f"--out: {p1 / 'biopsies.csv'} is the input --biopsies"),
        ([*extract, str(p1 / "t1c.nrrd")], "extract", f"--out: {p1 / 't1c.nrrd'} is the input --volume t1c"),
        ([*extract, str(tmp_path / "link.csv")], "extract", f"--out: {tmp_path / 'link.csv'} is the input --biopsies"),
        (["extract", "--cohort", str(inputs), "--out", str(p1 / "flair.nrrd")], "extract",
         f"--out: {p1 / 'flair.nrrd'} is the input --cohort P1 flair.nrrd"),
        (map_args(p1, tiny_model_dir, p1), "map", f"--out: {p1} holds the input --region"),
        (map_args(p1, tiny_model_dir, tiny_model_dir), "map", f"--out: {tiny_model_dir} is the input --model"),
        (map_args(p1, tiny_model_dir, p1 / "t1c.nrrd"), "map", f"--out: {p1 / 't1c.nrrd'} is the input --volume t1c"),
        (["train", "--features", str(p1 / "biopsies.csv"), "--out", str(inputs)], "train",
         f"--out: {inputs} holds the input --features"),
    ]
    before = snapshot(tmp_path)
    for argv, command, message in cases:
        assert main(argv) == 2, argv
        line = one_error_line(capsys, f"kimap {command}: error: {message} (")
        assert line.endswith("choose an output path apart from the inputs; nothing was written"), line
        assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs", "link.csv"]
    # an output may be a new file inside an input folder (as `make model` writes its table beside the cohort)
    outputs.check_output_files([inputs / "features.csv"], [("--cohort", inputs), ("--cohort P1 t1c", p1 / "t1c.nrrd")])


def test_export_refuses_an_output_that_is_or_holds_its_inputs(tmp_path):
    from KiMapLib.export.planning import export_planning

    map_dir, series = tmp_path / "map", tmp_path / "t1c_dicom"
    for folder in (map_dir, series):
        folder.mkdir()
    (map_dir / "ki67_map.nrrd").write_bytes(b"map")
    (series / "IM_0001.dcm").write_bytes(b"dicom")
    before = snapshot(tmp_path)
    for out, message in ((map_dir, f"{map_dir} is the input --map ("),
                         (tmp_path, f"{tmp_path} holds the input --map ("),
                         (series / "IM_0001.dcm",
                          f"{series / 'IM_0001.dcm'} is the input --reference-dicom IM_0001.dcm"),
                         (map_dir / "summary.json", f"{map_dir / 'summary.json'} is the input --map summary.json")):
        with pytest.raises(KiMapError, match="^" + re.escape(f"--out: {message}")):
            export_planning(map_dir, series, out)
    assert snapshot(tmp_path) == before


def test_output_checks_see_through_symlinks_and_hard_links(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "t1c.nii.gz").write_bytes(b"volume")
    os.link(data / "t1c.nii.gz", tmp_path / "hard.nii.gz")
    (tmp_path / "alias").symlink_to(data)
    for output, relation in ((tmp_path / "hard.nii.gz", "is"), (tmp_path / "alias" / "t1c.nii.gz", "is"),
                             (tmp_path / "alias", "holds"), (tmp_path, "holds")):
        with pytest.raises(KiMapError, match=f"{output} {relation} the input t1c"):
            outputs.check_not_inputs([output], [("t1c", data / "t1c.nii.gz")])
    outputs.check_not_inputs([data / "features.csv"], [("--cohort", data), ("t1c", data / "t1c.nii.gz")])


# -- item 7: leftovers and races ---------------------------------------------------------------------------

def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _staging(name: str, role: str, pid: int, start: int = 0, host: str | None = None) -> str:
    return f".{name}.kimap-{role}-{host or atomic._host_tag()}-{pid}-{start}-0123abcd"


def test_stale_staging_of_ended_processes_is_cleaned_and_live_ones_kept(tmp_path):
    me, my_start, dead_pid = os.getpid(), process_start(os.getpid()), _dead_pid()
    if my_start == 0:
        pytest.skip("process start times are not available here (no /proc)")
    kept = [_staging("map", "new", me, my_start),  # this process: alive
            _staging("map", "new", dead_pid, host="00000000"),  # another computer's (a shared folder): unknown
            ".map.new-abc123",  # a name KiMap cannot prove it made
            "map"]
    removed = [_staging("map", "new", dead_pid),  # a process that ended (SIGKILL)
               _staging("table.csv", "new", dead_pid),  # a single-file output's staging file
               _staging("map", "new", me, my_start + 1)]  # this pid, but an earlier process (pid reused)
    for name in kept[:3] + removed:
        if "table.csv" in name:
            (tmp_path / name).write_text("half a table")
        else:
            (tmp_path / name).mkdir()
            (tmp_path / name / "ki67_map.nrrd").write_bytes(b"half")
    write_output(tmp_path / "map", {"a.txt": b"a"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_an_interrupted_swap_is_undone_by_the_next_write(tmp_path):
    """Killed between moving the earlier output aside and moving the new one in: the earlier one comes back."""
    out = tmp_path / "map"
    write_output(out, {"a.txt": b"earlier"})
    aside = tmp_path / _staging("map", "old", _dead_pid())
    os.replace(out, aside)
    assert clean_stale_staging(tmp_path) == ["restored map"]
    assert snapshot(out)["a.txt"] == b"earlier" and staging_left(tmp_path) == []


def _run_script(code: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


WRITER = """
    import sys, time
    from pathlib import Path
    from KiMapLib.atomic import atomic_directory
    target, tag, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    with atomic_directory(target, "map") as staging:
        for index in range(20):
            (staging / f"part{index}.txt").write_text(tag * 1000)
        print("ready", flush=True)
        while not go.exists():
            time.sleep(0.001)
    print("done", flush=True)
"""


def test_concurrent_writers_both_finish_and_leave_one_consistent_output(tmp_path):
    target = tmp_path / "map"
    write_output(target, {"part0.txt": b"earlier"})
    for round_ in range(3):
        go = tmp_path / f"go{round_}"
        writers = [_run_script(WRITER, str(target), tag, str(go)) for tag in "AB"]
        for writer in writers:
            assert writer.stdout.readline().strip() == "ready"
        go.touch()  # both swap at once
        results = [writer.communicate(timeout=60) for writer in writers]
        assert [w.returncode for w in writers] == [0, 0], results
        assert_manifest_matches(target, "map")
        contents = {p.read_text() for p in target.glob("part*.txt")}
        assert contents in ({"A" * 1000}, {"B" * 1000}) and len(list(target.glob("part*.txt"))) == 20
        assert staging_left(tmp_path) == []


def test_sigterm_mid_write_leaves_no_staging_and_the_earlier_output(tmp_path):
    target = tmp_path / "cohort"
    write_output(target, {"cohort.json": b"{}", "SYN001/t1c.nrrd": b"earlier"}, kind="phantom cohort")
    before = snapshot(target)
    script = """
        import sys, time
        import KiMapLib.phantom.cohort as cohort
        from KiMapLib.app.cli import main

        def slow_patient(*args, **kwargs):
            print("ready", flush=True)
            time.sleep(60)

        cohort.generate_patient = slow_patient
        sys.exit(main(["phantom", "--out", sys.argv[1], "--patients", "2"]))
    """
    process = _run_script(script, str(target))
    assert process.stdout.readline().strip() == "ready"
    assert len(staging_left(tmp_path)) == 1  # the new cohort being written
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143
    assert err.strip().splitlines()[-1] == "kimap phantom: terminated (SIGTERM); nothing was written"
    assert snapshot(target) == before and staging_left(tmp_path) == []


def test_sigkill_mid_write_leftover_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "map"
    write_output(target, {"a.txt": b"earlier"})
    process = _run_script(WRITER, str(target), "K", str(tmp_path / "never"))
    assert process.stdout.readline().strip() == "ready"
    process.kill()
    process.wait()
    assert len(staging_left(tmp_path)) == 1 and snapshot(target)["a.txt"] == b"earlier"
    write_output(target, {"a.txt": b"next"})
    assert staging_left(tmp_path) == [] and snapshot(target)["a.txt"] == b"next"


# -- item 9: the user's umask ------------------------------------------------------------------------------

@pytest.mark.parametrize(("umask", "file_mode", "folder_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_follow_the_umask(tmp_path, umask, file_mode, folder_mode):
    previous = os.umask(umask)
    try:
        write_output(tmp_path / "map", {"a.txt": b"a", "sub/b.txt": b"b"})
        write_table([{"a": 1}], tmp_path / "table.csv")
    finally:
        os.umask(previous)
    for path in (tmp_path / "map", tmp_path / "map" / "sub"):
        assert path.stat().st_mode & 0o777 == folder_mode, path
    for path in (tmp_path / "map" / "a.txt", tmp_path / "map" / "sub" / "b.txt", tmp_path / "map" / MANIFEST_FILE,
                 tmp_path / "table.csv"):
        assert path.stat().st_mode & 0o777 == file_mode, path


# -- item 6 (files): read-only folders, full disks, long names ---------------------------------------------

def test_a_full_disk_is_one_line_and_keeps_the_earlier_output(tmp_path, monkeypatch):
    out = tmp_path / "map"
    write_output(out, {"a.txt": b"earlier"})
    before = snapshot(out)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "write_manifest", full)
    with pytest.raises(KiMapError, match=r"^--out: no space left on the disk of .* while writing map — free some "
                                         r"space or choose another --out; nothing was changed"):
        write_output(out, {"a.txt": b"new"})
    monkeypatch.undo()
    # a writer that fails without saying why (SimpleITK's RuntimeError) on a disk that is then full
    monkeypatch.setattr(atomic, "_disk_is_full", lambda folder: True)
    with pytest.raises(KiMapError, match="no space left"), atomic_directory(out, "map"):
        raise RuntimeError("ITK ERROR: NrrdImageIO: Write: Error writing")
    with pytest.raises(KiMapError, match="no space left"), atomic_files([tmp_path / "t.csv"]) as (staging,):
        staging.write_text("x")  # NIfTI's writer even truncates silently: a full disk after writing is refused
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["map"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (root with mount rights only): a real full disk, then a real read-only one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root with the right to mount a tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk_keeps_the_earlier_map(tiny_disk, case_dir, tiny_model_dir, capsys):
    out = tiny_disk / "map"
    assert main(map_args(case_dir, tiny_model_dir, out, "--formats", "nifti")) == 0
    before = snapshot(out)
    capsys.readouterr()
    free = os.statvfs(tiny_disk).f_bavail * os.statvfs(tiny_disk).f_frsize
    (tiny_disk / "filler").write_bytes(b"\0" * max(free - 8192, 0))
    for formats in ("nifti", "nrrd"):  # ITK's NIfTI writer truncates silently; its NRRD writer raises
        assert main(map_args(case_dir, tiny_model_dir, out, "--formats", formats)) == 2
        one_error_line(capsys, f"kimap map: error: --out: no space left on the disk of {tiny_disk} while writing map")
        assert snapshot(out) == before
        assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler", "map"]


def test_a_read_only_folder_is_one_line_and_keeps_the_earlier_output(tiny_disk, capsys):
    out = tiny_disk / "map"
    write_output(out, {"a.txt": b"earlier"})
    before = snapshot(out)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    for target in (out, tiny_disk / "new" / "map"):
        with pytest.raises(KiMapError, match=f"^--out: cannot write in {tiny_disk} .*nothing was changed"):
            write_output(target, {"a.txt": b"new"})
    with pytest.raises(KiMapError, match="cannot write in"):
        write_table([{"a": 1}], tiny_disk / "table.csv")
    assert snapshot(out) == before


def test_a_read_only_folder_without_root(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders (covered by the tmpfs test)")
    out = tmp_path / "ro" / "map"
    write_output(out, {"a.txt": b"earlier"})
    (tmp_path / "ro").chmod(0o555)
    try:
        with pytest.raises(KiMapError, match="cannot write in"):
            write_output(out, {"a.txt": b"new"})
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert snapshot(out) == {"a.txt": b"earlier", MANIFEST_FILE: (out / MANIFEST_FILE).read_bytes()}


def test_long_output_names(tmp_path):
    longest = "m" * 255  # the longest name the file system takes: its staging name is shortened, not refused
    write_output(tmp_path / longest, {"a.txt": b"a"})
    write_output(tmp_path / longest, {"a.txt": b"b"})
    assert snapshot(tmp_path / longest)["a.txt"] == b"b"
    write_table([{"a": 1}], tmp_path / ("t" * 251 + ".csv"))
    for name in ("m" * 256, "é" * 128):
        with pytest.raises(KiMapError, match=r"^--out: the name m*é*\.\.\. is 256 bytes long; the file system takes "
                                             r"at most 255 — choose a shorter name$"):
            write_output(tmp_path / name, {"a.txt": b"a"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([longest, "t" * 251 + ".csv"])


def test_packaged_model_bundle_has_a_valid_manifest():
    from KiMapLib.model.bundle import packaged_model_dir

    assert_manifest_matches(packaged_model_dir(), "model bundle")


def test_model_bundles_get_a_manifest(tmp_path, tiny_model_dir):
    from KiMapLib.model.bundle import load_model, save_bundle

    model = load_model(tiny_model_dir)
    card = {k: v for k, v in model.card.items() if k != "model_file"}
    save_bundle(model.pipeline, card, tmp_path / "bundle", extra_files={"cv_report.json": b"{}"}, spread=model.spread)
    manifest = assert_manifest_matches(tmp_path / "bundle", "model bundle")
    assert set(manifest["files"]) == {"model.skops", "model_card.json", "cv_report.json"}
    assert load_model(tmp_path / "bundle").card["model_file"] == json.loads(
        (tmp_path / "bundle" / "model_card.json").read_text())["model_file"]
