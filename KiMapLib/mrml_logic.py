"""Deprecated alias of :mod:`KiMapLib.slicer` (kept for one release): use ``from KiMapLib.slicer import KiMapLogic``."""

from KiMapLib.slicer.dependencies import *  # noqa: F403
from KiMapLib.slicer.display import *  # noqa: F403
from KiMapLib.slicer.logic import *  # noqa: F403
from KiMapLib.slicer.markups import *  # noqa: F403
from KiMapLib.slicer.nodes import *  # noqa: F403
from KiMapLib.slicer.rendering import *  # noqa: F403
from KiMapLib.slicer.scene_io import *  # noqa: F403
from KiMapLib.slicer.tables import *  # noqa: F403
