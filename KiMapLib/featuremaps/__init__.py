"""Deprecated alias (kept for one release): the voxel engine moved to :mod:`KiMapLib.features.featuremaps`.

Takes and gives what that package does; import ``feature_maps`` from there.
"""

from KiMapLib.features.featuremaps import *  # noqa: F403
from KiMapLib.features.featuremaps import __all__  # noqa: F401
