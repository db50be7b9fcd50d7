"""Where KiMap may write and what it may remove: an output never is, nor holds, an input, and an output folder
is replaced only when its manifest proves that every file in it is KiMap's own, unchanged since it was written.

Every output folder KiMap writes holds :data:`MANIFEST_FILE`: the kind of output, the KiMap version and every
file written (relative path, size, sha256). A folder may be replaced when it is new, empty, or an earlier KiMap
output of the same kind whose files all match their manifest; anything else (a foreign file, a modified file, a
symlink, no manifest) is refused with one line naming the files. These checks run before any work
(:func:`check_output_folder`, :func:`check_output_files`) and again just before the swap (``KiMapLib.atomic``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from KiMapLib import __version__
from KiMapLib.errors import KiMapError

MANIFEST_FILE = ".kimap-manifest.json"
MANIFEST_FORMAT = "kimap-output-manifest/1"
#: The longest file name most file systems take (bytes); used when the folder cannot be asked.
NAME_MAX = 255
#: Names shown in one error line before "and N more".
SHOWN = 5

#: ``(label, path)`` pairs of the files and folders a command reads; ``None`` paths are skipped.
Inputs = Iterable[tuple[str, "str | Path | None"]]


@dataclass(frozen=True)
class OwnedFolder:
    """An earlier KiMap output folder whose every entry is in its manifest, unchanged.

    ``files``: relative POSIX path -> (size, mtime_ns, inode) when verified, so that the check before the swap
    only compares ``lstat`` results (the sha256 of every file was compared once, before the work)."""

    path: Path
    kind: str
    files: dict[str, tuple[int, int, int]]
    folders: frozenset[str]


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _walk(folder: Path) -> tuple[dict[str, os.stat_result], set[str], list[str]]:
    """Regular files (relative POSIX path -> lstat), sub-folders, and everything else (symlinks, devices...)."""
    files: dict[str, os.stat_result] = {}
    folders: set[str] = set()
    other: list[str] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        with os.scandir(current) as entries:
            for entry in entries:
                relative = Path(entry.path).relative_to(folder).as_posix()
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(info.st_mode):
                    files[relative] = info
                elif stat.S_ISDIR(info.st_mode):
                    folders.add(relative)
                    pending.append(Path(entry.path))
                else:
                    other.append(relative)
    return files, folders, sorted(other)


def build_manifest(folder: str | Path, kind: str) -> dict:
    """The manifest of everything in ``folder`` (the manifest itself excluded)."""
    folder = Path(folder)
    files, folders, other = _walk(folder)
    if other:
        raise RuntimeError(f"internal error: {kind} output holds entries that are not files: {other}")
    files.pop(MANIFEST_FILE, None)
    return {"format": MANIFEST_FORMAT, "kind": kind, "kimap_version": __version__,
            "note": "Written by KiMap: the files it may replace in this folder. Other files make KiMap refuse to "
                    "write here.",
            "files": {name: {"size": files[name].st_size, "sha256": sha256_file(folder / name)}
                      for name in sorted(files)},
            "folders": sorted(folders)}


def write_manifest(folder: str | Path, kind: str) -> dict:
    """Write :data:`MANIFEST_FILE` into a finished output folder; returns the manifest."""
    manifest = build_manifest(folder, kind)
    with open(Path(folder) / MANIFEST_FILE, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _safe_relative(name: object) -> bool:
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        return False
    path = PurePosixPath(name)
    return not path.is_absolute() and all(part not in ("", ".", "..") for part in path.parts) \
        and path.as_posix() == name


def read_manifest(folder: Path) -> dict | None:
    """The folder's manifest when it is a well-formed KiMap manifest (regular file, relative names), else None."""
    path = folder / MANIFEST_FILE
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return None
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT \
            or not isinstance(manifest.get("kind"), str) or not isinstance(manifest.get("files"), dict) \
            or not isinstance(manifest.get("folders", []), list):
        return None
    files = manifest["files"]
    if not all(_safe_relative(name) and isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
               and isinstance(entry.get("size"), int) for name, entry in files.items()):
        return None
    if not all(_safe_relative(name) for name in manifest.get("folders", [])):
        return None
    return manifest


def inspect_output_folder(target: str | Path, kind: str, option: str = "--out") -> OwnedFolder | None:
    """None when ``target`` is missing or empty; an :class:`OwnedFolder` when it is an earlier, unchanged KiMap
    output of this ``kind``; else :class:`KiMapError` naming the files KiMap did not write or that changed."""
    target = Path(target)
    if not os.path.lexists(target):
        return None
    if not target.is_dir():
        raise KiMapError(f"{target} is a file, not a folder", input_name=option, hint="give a folder name")
    files, folders, other = _walk(target)
    if not files and not folders and not other:
        return None
    remedy = "choose another --out, or move these files out of the folder (KiMap replaces only files it wrote)"
    manifest = read_manifest(target)
    if manifest is None:
        names = sorted(files) + [f"{f}/" for f in sorted(folders)] + other
        why = "an unreadable KiMap manifest" if MANIFEST_FILE in files else "no KiMap manifest"
        raise KiMapError(f"{target} is not empty and has {why} ({MANIFEST_FILE}), so KiMap did not write it: "
                         f"{_listed([n for n in names if n != MANIFEST_FILE])}", input_name=option, hint=remedy)
    if manifest["kind"] != kind:
        raise KiMapError(f"{target} holds a KiMap {manifest['kind']}, not a {kind}", input_name=option,
                         hint="choose another --out (KiMap does not replace one kind of output with another)")
    listed, listed_folders = manifest["files"], set(manifest.get("folders", []))
    problems = [f"{name} (not KiMap's)" for name in other]
    problems += [f"{name}/ (not KiMap's)" for name in sorted(folders - listed_folders)]
    for name in sorted(files):
        if name == MANIFEST_FILE:
            continue
        entry = listed.get(name)
        if entry is None:
            problems.append(f"{name} (not KiMap's)")
        elif entry["size"] != files[name].st_size or entry["sha256"] != sha256_file(target / name):
            problems.append(f"{name} (changed since KiMap wrote it)")
    if problems:
        raise KiMapError(f"{target} holds files KiMap did not write or that changed since: {_listed(problems)}",
                         input_name=option, hint=remedy)
    return OwnedFolder(target, kind, {name: _identity(info) for name, info in files.items()}, frozenset(folders))


def _identity(info: os.stat_result) -> tuple[int, int, int]:
    return info.st_size, info.st_mtime_ns, info.st_ino


def unchanged(owned: OwnedFolder) -> bool:
    """Whether the folder still holds exactly the verified entries (by ``lstat``: size, mtime and inode)."""
    try:
        files, folders, other = _walk(owned.path)
    except OSError:
        return False
    return not other and folders == owned.folders and \
        {name: _identity(info) for name, info in files.items()} == owned.files


def remove_owned(folder: Path, owned: OwnedFolder) -> list[str]:
    """Remove from ``folder`` (``owned``'s folder, moved aside) the verified files and the folders they empty;
    returns what is left (nothing, unless an entry appeared or changed since it was verified)."""
    files, folders, _ = _walk(folder)
    for name, info in files.items():
        if owned.files.get(name) == _identity(info):
            (folder / name).unlink()
    for name in sorted(folders & owned.folders, key=lambda n: -len(PurePosixPath(n).parts)):
        with contextlib.suppress(OSError):  # something appeared in it: kept
            (folder / name).rmdir()
    try:
        folder.rmdir()
        return []
    except OSError:
        left, left_folders, other = _walk(folder)
        return sorted(left) + sorted(f"{f}/" for f in left_folders) + other


def name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system of ``folder`` (or its nearest existing parent) takes."""
    existing = _existing_ancestor(folder)
    try:
        return int(os.pathconf(existing, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return NAME_MAX


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        try:
            candidate.lstat()
            return candidate
        except OSError:  # missing, or a name too long to look up
            continue
    return Path(path.anchor or ".")


def check_name_lengths(path: Path, option: str = "--out") -> None:
    """Refuse a path with a name longer than the file system takes (before anything looks it up)."""
    longest = name_max(path.parent)
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > longest:
            raise KiMapError(f"the name {part[:40]}... is {size} bytes long; the file system takes at most {longest}",
                             input_name=option, hint="choose a shorter name")


def check_writable_place(target: Path, option: str = "--out") -> None:
    """Refuse, before any work, an output whose name is too long or whose folder cannot be written."""
    check_name_lengths(target, option)
    existing = _existing_ancestor(target.parent)
    if not existing.is_dir():
        raise KiMapError(f"{existing} is a file, so {target} cannot be created", input_name=option,
                         hint="choose a path inside a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise KiMapError(f"cannot write in {existing} (read-only or no permission)", input_name=option,
                         hint="choose a folder you can write to; nothing was changed")


def _same_or_inside(inner: Path, outer: Path) -> bool:
    """``inner`` is ``outer`` or lies inside it, through symlinks, hard links and case-insensitive names too."""
    inner_resolved, outer_resolved = inner.resolve(), outer.resolve()
    if inner_resolved == outer_resolved or outer_resolved in inner_resolved.parents:
        return True
    if not outer_resolved.exists():
        return False
    for candidate in (inner_resolved, *inner_resolved.parents):
        try:
            if candidate.exists() and os.path.samefile(candidate, outer_resolved):
                return True
        except OSError:
            continue
    return False


def check_not_inputs(outputs: Iterable[str | Path], inputs: Inputs, option: str = "--out") -> None:
    """Refuse an output that is an input, or a folder that holds one, naming both (before any work).

    Inputs that are folders are compared as a whole; a command that reads files inside a folder lists those
    files too (an output may be a new file inside an input folder, never one of the files read)."""
    given = [(label, Path(path)) for label, path in inputs if path is not None and str(path).strip()]
    for output in outputs:
        output = Path(output)
        for label, path in given:
            if _same_or_inside(path, output):
                relation = "holds" if output.resolve() in path.resolve().parents else "is"
                raise KiMapError(f"{output} {relation} the input {label} ({path})", input_name=option,
                                 hint="choose an output path apart from the inputs; nothing was written")


def check_output_folder(target: str | Path, kind: str, inputs: Inputs = (), option: str = "--out"
                        ) -> OwnedFolder | None:
    """Everything about an output folder that can be refused before the work: inputs, name, permissions, and
    whether it is new, empty or an earlier unchanged KiMap ``kind`` output (returned)."""
    target = Path(target)
    check_name_lengths(target.absolute(), option)
    check_not_inputs([target], inputs, option)
    check_writable_place(target.absolute(), option)
    return inspect_output_folder(target.resolve(), kind, option)


def check_output_files(paths: Iterable[str | Path], inputs: Inputs = (), option: str = "--out") -> None:
    """The same for single-file outputs (a CSV, a JSON): an existing file is replaced, unless it is an input."""
    paths = [Path(p) for p in paths]
    for path in paths:
        check_name_lengths(path.absolute(), option)
    check_not_inputs(paths, inputs, option)
    for path in paths:
        check_writable_place(path.absolute(), option)
        if path.is_dir():
            raise KiMapError(f"{path} is a folder", input_name=option, hint="give a file name")
