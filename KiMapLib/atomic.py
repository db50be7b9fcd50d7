"""How an output is written: in a staging folder (or file) beside it that replaces it in one step, so that a
failure, Ctrl-C or SIGTERM never leaves a half-written result, and the earlier output stays as it was.

- What may be replaced is decided by ``KiMapLib.outputs`` (manifests: only files KiMap wrote, unchanged).
- Staging names carry their owner, ``.<name>.kimap-<new|old>-<host>-<pid>-<start>-<random>``: a later write
  into the same folder removes those of processes that are gone (killed with SIGKILL, power loss), never those
  of a live process or of another computer.
- Writers of one output are serialized by an ``flock`` on the parent folder while they check and swap; the one
  that finishes last replaces the other's (verified) output.
- Files and folders are created with the user's umask; a full disk or a read-only folder is one KiMapError.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from KiMapLib.errors import KiMapError
from KiMapLib.outputs import (
    OwnedFolder,
    check_name_lengths,
    check_output_files,
    check_output_folder,
    inspect_output_folder,
    read_manifest,
    remove_owned,
    unchanged,
    write_manifest,
)

#: Bytes of the output's name kept in a staging name (the rest of the name is at most ~60 bytes).
STAGING_NAME_BYTES = 150
STAGING = re.compile(r"^\.(?P<name>.*)\.kimap-(?P<role>new|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)"
                     r"-(?P<random>[0-9a-f]{8})(?P<truncated>~?)$", re.DOTALL)
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
PERMISSION_ERRORS = {errno.EROFS, errno.EACCES, errno.EPERM}


# -- who owns a staging entry --------------------------------------------------------------------------------

def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def process_start(pid: int) -> int:
    """The start time of a process (clock ticks since boot, Linux), 0 where unknown; tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def staging_name(target_name: str, role: str) -> str:
    """A hidden name beside ``target_name`` that says it is KiMap's and whose process made it (``role``: "new" is
    the output being written, "old" the earlier output being removed)."""
    encoded = target_name.encode("utf-8", "surrogateescape")
    short = encoded[:STAGING_NAME_BYTES].decode("utf-8", "ignore")
    truncated = "~" if short != target_name else ""
    pid = os.getpid()
    return f".{short}.kimap-{role}-{_host_tag()}-{pid}-{process_start(pid)}-{secrets.token_hex(4)}{truncated}"


def owner_is_gone(match: re.Match) -> bool:
    """Whether the process that made a staging entry has ended (on this computer; never guessed for another)."""
    if os.name == "nt" or match["host"] != _host_tag():
        return False
    pid, start = int(match["pid"]), int(match["start"])
    if pid == os.getpid():
        return start != process_start(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    return bool(start) and process_start(pid) not in (0, start)


def clean_stale_staging(parent: str | Path) -> list[str]:
    """Remove the staging entries of ended KiMap processes in ``parent``; return what was done, one line each.

    A "new" entry (an output being written) is deleted. An "old" entry (an earlier output moved aside just
    before the swap) is moved back when its output is missing, else its files are removed by its manifest."""
    parent = Path(parent)
    done: list[str] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return done
    for entry in entries:
        match = STAGING.match(entry.name)
        if match is None or not owner_is_gone(match):
            continue
        path = Path(entry.path)
        try:
            if match["role"] == "new":
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(path)
                else:
                    path.unlink()
                done.append(f"removed {entry.name}")
            elif entry.is_dir(follow_symlinks=False) and not match["truncated"]:  # else its output is unknown
                target = parent / match["name"]
                if not os.path.lexists(target):
                    os.replace(path, target)
                    done.append(f"restored {target.name}")
                    continue
                owned = _owned_or_none(path)
                if owned is not None and not remove_owned(path, owned):
                    done.append(f"removed {entry.name}")
        except OSError:
            continue  # e.g. a read-only folder: left for another time
    return done


def _owned_or_none(folder: Path) -> OwnedFolder | None:
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    try:
        return inspect_output_folder(folder, manifest["kind"])
    except KiMapError:
        return None


# -- locks, signals, errors ----------------------------------------------------------------------------------

@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` (writers of outputs in one folder take turns); no-op where the
    platform or file system has no such lock."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):  # a file system without flock: unserialized, still atomic
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block is done (the swap of an output is never cut in two)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {}
    for number in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[number] = signal.signal(number, lambda received, frame: pending.append(received))
        except (ValueError, OSError):
            continue
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in pending:
            handler = previous.get(number)
            if callable(handler):
                handler(number, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(number)


def _disk_is_full(folder: Path) -> bool:
    try:
        return os.statvfs(folder).f_bavail == 0
    except (OSError, AttributeError):
        return False


def write_error(error: BaseException, target: Path, option: str) -> KiMapError | None:
    """One line for a failed write that is the disk's or the folder's fault, else None."""
    number = getattr(error, "errno", None)
    if number in DISK_ERRORS or (isinstance(error, (OSError, RuntimeError)) and _disk_is_full(target.parent)):
        return KiMapError(f"no space left on the disk of {target.parent} while writing {target.name}",
                          input_name=option, hint="free some space or choose another --out; nothing was changed "
                          "(an earlier output there is intact)")
    if number in PERMISSION_ERRORS and _on_the_way_to(getattr(error, "filename", None), target):
        return KiMapError(f"cannot write in {target.parent} ({os.strerror(number)})", input_name=option,
                          hint="choose a folder you can write to; nothing was changed")
    if number == errno.ENAMETOOLONG:
        return KiMapError(f"the name {target.name[:40]}... is too long for the file system", input_name=option,
                          hint="choose a shorter name")
    return None


def _on_the_way_to(filename: str | bytes | None, target: Path) -> bool:
    """Whether a failing path is one KiMap was writing for ``target``: inside its folder, or a folder above it
    (not, say, an input being read)."""
    if filename is None:
        return True
    failing = Path(os.fsdecode(filename)).absolute()
    return target.parent in failing.parents or failing in (target.parent, *target.parent.parents)


def _make_parent(target: Path, option: str) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise (write_error(error, target, option) or error) from None


def _new_entry(parent: Path, target_name: str, role: str, folder: bool) -> Path:
    """Create a staging folder (or empty file) beside the output; modes follow the umask."""
    while True:
        path = parent / staging_name(target_name, role)
        try:
            if folder:
                os.mkdir(path, 0o777)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue


def _discard(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


# -- the two writers -------------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_directory(target: str | Path, kind: str, option: str = "--out") -> Iterator[Path]:
    """Yield a fresh staging folder beside ``target``; on success it gets its manifest and replaces ``target``.

    ``target`` must be new, empty, or an earlier unchanged KiMap output of this ``kind`` (see KiMapLib.outputs);
    this is checked on entry and again, under the folder's lock, just before the swap. On any exception (Ctrl-C
    and SIGTERM included) the staging folder is removed and ``target`` stays as it was. Only the earlier output's
    own files are removed after the swap."""
    check_name_lengths(Path(target).absolute(), option)
    target = Path(target).resolve()
    owned = check_output_folder(target, kind, option=option)
    _make_parent(target, option)
    parent = target.parent
    with locked(parent):
        clean_stale_staging(parent)
        try:
            staging = _new_entry(parent, target.name, "new", folder=True)
        except OSError as error:
            raise (write_error(error, target, option) or error) from None
    previous = None
    try:
        yield staging
        if _disk_is_full(parent):
            raise OSError(errno.ENOSPC, "no space left after writing (a file may be truncated)")
        write_manifest(staging, kind)
        with deferred_signals(), locked(parent):
            if owned is None or not unchanged(owned):  # another writer may have finished meanwhile
                owned = inspect_output_folder(target, kind, option)
            if owned is not None:
                previous = parent / staging_name(target.name, "old")
                os.replace(target, previous)
                try:
                    os.replace(staging, target)
                except BaseException:
                    os.replace(previous, target)
                    previous = None
                    raise
            else:
                if os.path.isdir(target):
                    os.rmdir(target)  # empty (else inspect_output_folder refused it)
                os.replace(staging, target)
    except BaseException as error:
        converted = write_error(error, target, option) if isinstance(error, Exception) else None
        _discard(staging)
        if converted is not None:
            raise converted from None
        raise
    finally:
        if previous is not None:
            _remove_previous(previous, owned, target)


def _remove_previous(previous: Path, owned: OwnedFolder, target: Path) -> None:
    left = remove_owned(previous, owned)
    if left:  # something appeared in the earlier output while it was being replaced: kept, visible
        kept = target.with_name(f"{target.name}.kept-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(previous, kept)
        warnings.warn(f"{target}: files that appeared while it was replaced were kept in {kept}: {left}",
                      stacklevel=3)


@contextlib.contextmanager
def atomic_files(paths: Sequence[str | Path], option: str = "--out") -> Iterator[list[Path]]:
    """Yield a staging file beside each of ``paths``; on success each replaces its path (an existing file is
    overwritten: the caller checked it is not an input). On any exception the staging files are removed."""
    for path in paths:
        check_name_lengths(Path(path).absolute(), option)
    targets = [Path(p).resolve() for p in paths]
    check_output_files(targets, option=option)
    staged: list[Path] = []
    try:
        for target in targets:
            _make_parent(target, option)
            with locked(target.parent):
                clean_stale_staging(target.parent)
            staged.append(_new_entry(target.parent, target.name, "new", folder=False))
        yield staged
        if any(_disk_is_full(t.parent) for t in targets):
            raise OSError(errno.ENOSPC, "no space left after writing (a file may be truncated)")
        with deferred_signals(), contextlib.ExitStack() as stack:
            for parent in sorted({t.parent for t in targets}):
                stack.enter_context(locked(parent))
            for staging, target in zip(staged, targets, strict=True):
                if target.is_dir():
                    raise KiMapError(f"{target} is a folder", input_name=option, hint="give a file name")
                os.replace(staging, target)
    except BaseException as error:
        converted = write_error(error, targets[max(len(staged) - 1, 0)], option) \
            if isinstance(error, Exception) else None
        for staging in staged:
            _discard(staging)
        if converted is not None:
            raise converted from None
        raise


def write_text_file(path: str | Path, text: str, option: str = "--out") -> Path:
    """Write one text file atomically (UTF-8)."""
    with atomic_files([path], option) as (staging,):
        staging.write_text(text, encoding="utf-8")
    return Path(path)


def install_termination_handler() -> object:
    """Make SIGTERM stop the program like Ctrl-C (raising :class:`Terminated`), so that staging folders are removed
    on the way out; returns the previous handler for :func:`restore_termination_handler` (None off the main
    thread, where Python cannot set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _terminated)


def restore_termination_handler(previous: object) -> None:
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwinds like Ctrl-C."""


def _terminated(number, frame) -> None:
    raise Terminated()
