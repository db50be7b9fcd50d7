"""Where packaged resources live: ``Resources/`` beside ``KiMapLib/`` (source tree and Slicer install alike)."""

from __future__ import annotations

import os
from pathlib import Path


def resources_dir() -> Path:
    """The ``Resources`` folder (override with the ``KIMAP_RESOURCES`` environment variable)."""
    override = os.environ.get("KIMAP_RESOURCES")
    return Path(override) if override else Path(__file__).resolve().parent.parent / "Resources"


def models_dir() -> Path:
    return resources_dir() / "Models"


def color_table_path() -> Path:
    """KiMap's ki67 color table (a perceptual map) in Slicer's color-table text format."""
    return resources_dir() / "ColorTables" / "KiMapKi67.txt"
