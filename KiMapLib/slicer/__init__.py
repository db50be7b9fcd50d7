"""The MRML adapter (a front end): Slicer nodes in, Slicer nodes out — the console API.

The only package besides the web front end that imports ``slicer``/``vtk``. It runs inside 3D Slicer and on the
``slicer-core`` wheel (no Qt): no dialogs, no layout. The Qt module (``KiMap/KiMap.py``) and the browser front end
call :class:`KiMapLogic`; neither holds logic of its own.

Console example (Slicer's Python console)::

    from KiMapLib.slicer import KiMapLogic
    logic = KiMapLogic()
    model = logic.loadModel()                      # the packaged model
    volumes = {"t1c": getNode("T1C"), "t2": getNode("T2"), "flair": getNode("FLAIR")}
    table = logic.predictBiopsies(volumes, getNode("Biopsies"), model)
    tumour = logic.proposeTumorRegion(volumes)   # three editable segments; refused when not plausible
    ki67Node, probabilityNode = logic.computeMap(volumes, tumour, model)
    parts = logic.mapNodes(ki67Node)             # also "lower", "upper" (90 % interval) and "ood" (out of domain)
    logic.exportMap(ki67Node, "/tmp/kimap", probabilityNode=probabilityNode, tableNode=table)
"""

from KiMapLib.errors import Cancelled, KiMapError
from KiMapLib.resources import resources_dir
from KiMapLib.slicer.dependencies import dependency_message, missing_dependencies
from KiMapLib.slicer.display import add_color_legend, set_map_display, uncertainty_text
from KiMapLib.slicer.logic import KiMapLogic

__all__ = ["Cancelled", "KiMapError", "KiMapLogic", "add_color_legend", "dependency_message", "missing_dependencies",
           "resources_dir", "set_map_display", "uncertainty_text"]
