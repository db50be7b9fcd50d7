"""Import ``skops.io`` in about a second instead of 2.5 s, with identical results.

At import, skops builds its default trusted-type lists by naming every public ufunc of numpy and scipy.special
(``_trusted_types``). Ufuncs without ``__module__`` are named by ``whichmodule``, copied from ``pickle``: for each it
scans every loaded module, silencing warnings and formatting an AttributeError message per module that lacks the
name: 120,000 misses and ~1.5 s of CPU in a process that has loaded scikit-learn, SimpleITK and numba. This module
installs, for that import only, the same search without the per-miss exception formatting (same modules, same order,
same first match), so skops' lists come out identical (checked by a test).

In the ``kimap`` executable (:func:`claim_process`), skops' default trust list of every scikit-learn estimator is
also left empty: KiMap passes each file's allow-listed types explicitly, so its loads are unchanged, and the import of
all of scikit-learn that builds the list is spared. Inside Slicer, whose Python other extensions share, skops keeps
its defaults.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
import warnings
from types import ModuleType

_MISSING = object()
_LOCK = threading.Lock()
_OWN_PROCESS = False


def claim_process() -> None:
    """Declare that KiMap owns this interpreter (the ``kimap`` executable, not Slicer's shared Python): skops may
    then be imported without its default trust list of every scikit-learn estimator. KiMap never relies on that list
    (each file's types are checked against KiMap's allow-list and passed to skops explicitly), and building it imports
    all of scikit-learn (~0.7 s)."""
    global _OWN_PROCESS
    _OWN_PROCESS = True


def fast_whichmodule(obj: object, name: str) -> str:
    """``skops.io._utils.whichmodule`` (pickle's), without building an exception message per module missed."""
    module_name = getattr(obj, "__module__", None)
    if module_name is not None:
        return module_name
    parts = name.split(".")
    if "<locals>" in parts:  # pickle's _getattribute refuses these in every module
        return "__main__"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for module_name, module in sys.modules.copy().items():
            if module_name in ("__main__", "__mp_main__") or module is None:
                continue
            found = module
            for part in parts:
                found = getattr(found, part, _MISSING)
                if found is _MISSING:
                    break
            if found is obj:
                return module_name
    return "__main__"


class _PatchBeforeTrustedTypes(importlib.abc.MetaPathFinder):
    """Swaps in :func:`fast_whichmodule` just before ``skops.io._trusted_types`` runs (``_utils`` is loaded by then);
    finds nothing itself."""

    def __init__(self) -> None:
        self.original = None

    def find_spec(self, fullname, path, target=None):
        if fullname == "skops.io._trusted_types":
            utils = sys.modules.get("skops.io._utils")
            if utils is not None and self.original is None:
                self.original = utils.whichmodule
                utils.whichmodule = fast_whichmodule
        return None


def import_skops_io() -> ModuleType:
    """``skops.io``, imported with the fast module search during its import (restored afterwards); after
    :func:`claim_process`, without skops' default list of trusted scikit-learn estimators."""
    with _LOCK:
        if "skops.io" not in sys.modules:
            import sklearn.utils

            all_estimators = sklearn.utils.all_estimators
            if _OWN_PROCESS:
                sklearn.utils.all_estimators = lambda *args, **kwargs: []
            finder = _PatchBeforeTrustedTypes()
            sys.meta_path.insert(0, finder)
            try:
                import skops.io
            finally:
                sys.meta_path.remove(finder)
                sklearn.utils.all_estimators = all_estimators
                if finder.original is not None:
                    sys.modules["skops.io._utils"].whichmodule = finder.original
        import skops.io
    return skops.io
