"""The heavy Python dependencies KiMap imports lazily: which are missing and what to install."""

from __future__ import annotations

import importlib.util

from KiMapLib.errors import KiMapError

#: Python import name -> (what it is, pip requirement) of the heavy, lazily imported dependencies.
DEPENDENCIES = {
    "radiomics": ("pyradiomics", "pyradiomics-bhklab"),
    "sklearn": ("scikit-learn", "scikit-learn"),
    "skops": ("skops", "skops"),
}


def missing_dependencies() -> list[str]:
    """Import names of the heavy dependencies that are not installed (checked without importing them)."""
    return [name for name in DEPENDENCIES if importlib.util.find_spec(name) is None]


def dependency_message(missing: list[str] | None = None) -> str | None:
    """A one-line message naming what is missing and how to get it, or None when everything is there."""
    missing = missing_dependencies() if missing is None else missing
    if not missing:
        return None
    names = ", ".join(DEPENDENCIES[name][0] for name in missing)
    text = f"KiMap needs {names}, which is not installed in this Python"
    if "radiomics" in missing:
        text += " — install the SlicerRadiomics extension (Extensions Manager), then restart Slicer"
    requirements = " ".join(DEPENDENCIES[name][1] for name in missing if name != "radiomics")
    if requirements:
        text += f"; or run slicer.util.pip_install('{requirements}')"
    return text


def require_dependencies() -> None:
    message = dependency_message()
    if message:
        raise KiMapError(message)
