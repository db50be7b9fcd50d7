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


#: The display window of every ki67 picture and view (overlay.png, the Slicer and web views, the legends): 0-100 %.
KI67_WINDOW = (0.0, 100.0)
#: The display window of P(ki67 >= threshold).
PROBABILITY_WINDOW = (0.0, 1.0)
#: Window of the prediction-interval width (ki67 percentage points) and of its bounds' maps is KI67_WINDOW.
INTERVAL_WIDTH_WINDOW = (0.0, 50.0)
#: Window of the out-of-domain score (1 = the model's threshold: above it, out of domain).
OOD_WINDOW = (0.0, 2.0)


def color_table_rgba() -> list[tuple[float, float, float, float]]:
    """The entries of KiMap's ki67 color table as RGBA in 0-1 (Slicer's text format: index name r g b a)."""
    entries = []
    for line in color_table_path().read_text().splitlines():
        fields = line.split()
        if fields and not line.lstrip().startswith("#") and len(fields) >= 6:
            entries.append(tuple(int(value) / 255.0 for value in fields[2:6]))
    return entries
