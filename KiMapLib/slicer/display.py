"""How KiMap maps look in Slicer: the ki67 color table, window, threshold, legend, units; node attributes."""

from __future__ import annotations

import math

import slicer

from KiMapLib.errors import KiMapError
from KiMapLib.resources import KI67_WINDOW, PROBABILITY_WINDOW, color_table_path
from KiMapLib.slicer.scene_io import module_logic

#: Value of map nodes outside the mapped region (as in the files); transparent in slice views.
OUTSIDE_VALUE = math.nan
COLOR_TABLE_NAME = "KiMapKi67"
#: Node attributes KiMap sets (saved with the scene).
ATTRIBUTE_MAP = "KiMap.Map"  # "ki67" or "probability"
ATTRIBUTE_MODEL = "KiMap.ModelId"
ATTRIBUTE_SUMMARY = "KiMap.Summary"  # JSON of the map summary
ATTRIBUTE_PARTNER = "KiMap.ProbabilityNodeID"  # on the ki67 node
ATTRIBUTE_TABLE = "KiMap.BiopsyTable"  # on the markups node
ATTRIBUTE_T1C = "KiMap.T1cNodeID"  # on the map nodes


def color_table_node(scene=None):
    """KiMap's ki67 color table node in the scene (read once from ``Resources/ColorTables``)."""
    scene = scene or slicer.mrmlScene
    existing = slicer.util.getFirstNodeByClassByName("vtkMRMLColorTableNode", COLOR_TABLE_NAME, scene)
    if existing is not None:
        return existing
    path = color_table_path()
    node = slicer.vtkMRMLColorTableNode()
    storage = slicer.vtkMRMLColorTableStorageNode()  # not added to the scene: saving must never write Resources
    storage.SetFileName(str(path))
    if not path.exists() or not storage.ReadData(node) or node.GetNumberOfColors() < 2:
        raise KiMapError(f"cannot read the color table {path}", input_name="resources",
                         hint="reinstall KiMap (Resources/ColorTables is missing)")
    node.SetName(COLOR_TABLE_NAME)
    node.SetDescription("KiMap ki67 map colors (viridis, perceptually uniform)")
    node.SetAttribute("Category", "KiMap")
    scene.AddNode(node)
    return node


def set_map_display(node, *, window: tuple[float, float] | None = None, lower_threshold: float | None = None,
                    color_node=None) -> None:
    """Colors, fixed window and threshold of a KiMap map node (values below the threshold are transparent)."""
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    was_modifying = display.StartModify()
    display.SetAndObserveColorNodeID((color_node or color_table_node(node.GetScene())).GetID())
    if window is None:
        window = KI67_WINDOW if node.GetAttribute(ATTRIBUTE_MAP) != "probability" else PROBABILITY_WINDOW
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*window)
    display.AutoThresholdOff()
    display.ApplyThresholdOn()
    display.SetThreshold(window[0] if lower_threshold is None else lower_threshold, max(window[1], 1e6))
    display.SetInterpolate(True)
    display.EndModify(was_modifying)


def add_color_legend(node):
    """A color legend for the map in slice and 3D views (Colors module logic), or None when unavailable."""
    colors = module_logic("Colors")
    if colors is None or not hasattr(colors, "AddDefaultColorLegendDisplayNode"):
        return None
    legend = colors.AddDefaultColorLegendDisplayNode(node)
    if legend is not None:
        legend.SetTitleText("ki67 (%)" if node.GetAttribute(ATTRIBUTE_MAP) != "probability" else "P(high)")
        legend.SetLabelFormat("%.0f" if node.GetAttribute(ATTRIBUTE_MAP) != "probability" else "%.1f")
    return legend


def unit(symbol: str):
    unit = slicer.vtkCodedEntry()
    if symbol == "%":
        unit.SetValueSchemeMeaning("%", "UCUM", "Percent")
    else:
        unit.SetValueSchemeMeaning("1", "UCUM", "no units")
    return unit
