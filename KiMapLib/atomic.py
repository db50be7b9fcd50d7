"""Write a whole output folder so that a failure never leaves a half-written result behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from KiMapLib.errors import KiMapError


def check_replaceable(target: Path, marker: str, what: str) -> None:
    """Refuse to replace a folder that holds anything but an earlier KiMap output (with ``marker`` in it)."""
    if not target.exists():
        return
    if not target.is_dir():
        raise KiMapError(f"{target} exists and is not a folder", input_name="--out")
    if any(target.iterdir()) and not (target / marker).is_file():
        raise KiMapError(f"{target} is not empty and is not an earlier KiMap {what}", input_name="--out",
                         hint=f"choose a new or empty folder (an earlier {what}, with its {marker}, is replaced)")


@contextlib.contextmanager
def atomic_directory(target: str | Path, marker: str, what: str = "output") -> Iterator[Path]:
    """Yield a fresh staging folder beside ``target``; on success it replaces ``target`` in one step.

    ``target`` must be new, empty, or an earlier KiMap output holding ``marker`` (so that ``--out ~/Desktop``
    can never wipe a user's folder). On any exception (cancel included) the staging folder is removed and
    ``target`` stays as it was.
    """
    target = Path(target).resolve()
    check_replaceable(target, marker, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    try:
        yield staging
        if not (staging / marker).is_file():
            raise RuntimeError(f"internal error: {what} written without its {marker}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup = None
    if target.exists():
        backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, backup / "previous")
    try:
        os.replace(staging, target)
    except OSError:
        if backup is not None:
            os.replace(backup / "previous", target)
        raise
    finally:
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
