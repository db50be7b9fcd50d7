"""Keep numba's on-disk cache of the engine consistent with its sources.

numba invalidates a cached function only when *its own* file changes, yet a cached kernel holds the compiled code of
the functions it calls from other files (``texture.run`` holds ``glcm._mcc``...). After an update that touches only
a callee's file, stale machine code would run. So the package's cache is dropped whenever any engine source (or the
numba version) changes: a stamp of their hash sits next to the cache files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numba

PACKAGE = Path(__file__).resolve().parent
STAMP = "kimap-engine-sources.sha256"


def sources_digest(package: Path = PACKAGE) -> str:
    """Hash of every ``.py`` file of the package (name and bytes) and the numba version."""
    digest = hashlib.sha256(numba.__version__.encode())
    for path in sorted(package.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def ensure_fresh(package: Path = PACKAGE) -> bool:
    """Delete the package's numba cache files (``__pycache__/*.nbi``, ``*.nbc``) if the sources changed since they
    were written; returns whether it did. Silently does nothing where the cache folder is not writable."""
    cache = package / "__pycache__"
    digest = sources_digest(package)
    stamp = cache / STAMP
    try:
        if stamp.is_file() and stamp.read_text().strip() == digest:
            return False
        cache.mkdir(exist_ok=True)
        for path in [*cache.glob("*.nbi"), *cache.glob("*.nbc")]:
            path.unlink(missing_ok=True)
        stamp.write_text(digest + "\n")
    except OSError:
        return False
    return True
