"""How KiMap maps look in Slicer: the ki67 color table, window, threshold, legend, units; node attributes."""

from __future__ import annotations

import json
import math

import slicer

from KiMapLib.errors import KiMapError
from KiMapLib.resources import KI67_WINDOW, OOD_WINDOW, PROBABILITY_WINDOW, color_table_path
from KiMapLib.slicer.scene_io import module_logic

#: Value of map nodes outside the mapped region (as in the files); transparent in slice views.
OUTSIDE_VALUE = math.nan
COLOR_TABLE_NAME = "KiMapKi67"
#: Node attributes KiMap sets (saved with the scene).
ATTRIBUTE_MAP = "KiMap.Map"  # "ki67", "probability", "lower", "upper" or "ood" (MAP_KINDS)
ATTRIBUTE_MODEL = "KiMap.ModelId"
ATTRIBUTE_SUMMARY = "KiMap.Summary"  # JSON of the map summary
ATTRIBUTE_PARTNER = "KiMap.ProbabilityNodeID"  # on the ki67 node
ATTRIBUTE_TABLE = "KiMap.BiopsyTable"  # on the markups node
ATTRIBUTE_T1C = "KiMap.T1cNodeID"  # on the map nodes
#: Each kind of map node: (display window, legend title, legend label format, unit, name suffix, file stem).
MAP_KINDS = {
    "ki67": (KI67_WINDOW, "ki67 (%)", "%.0f", "%", "ki67", "ki67_map"),
    "probability": (PROBABILITY_WINDOW, "P(high)", "%.1f", "", "P(high)", "ki67_probability"),
    "lower": (KI67_WINDOW, "ki67 lower bound (%)", "%.0f", "%", "ki67 lower", "ki67_lower"),
    "upper": (KI67_WINDOW, "ki67 upper bound (%)", "%.0f", "%", "ki67 upper", "ki67_upper"),
    "ood": (OOD_WINDOW, "out-of-domain score (>1: out)", "%.1f", "", "out of domain", "out_of_domain"),
}
#: On the ki67 node: the node IDs of its interval bounds and out-of-domain map ("KiMap.lowerNodeID", ...).
UNCERTAINTY_KINDS = ("lower", "upper", "ood")


def partner_attribute(kind: str) -> str:
    return ATTRIBUTE_PARTNER if kind == "probability" else f"KiMap.{kind}NodeID"


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
        window = MAP_KINDS.get(node.GetAttribute(ATTRIBUTE_MAP) or "ki67", MAP_KINDS["ki67"])[0]
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
        _, title, label_format, *_ = MAP_KINDS.get(node.GetAttribute(ATTRIBUTE_MAP) or "ki67", MAP_KINDS["ki67"])
        legend.SetTitleText(title)
        legend.SetLabelFormat(label_format)
    return legend


def unit(symbol: str):
    unit = slicer.vtkCodedEntry()
    if symbol == "%":
        unit.SetValueSchemeMeaning("%", "UCUM", "Percent")
    else:
        unit.SetValueSchemeMeaning("1", "UCUM", "no units")
    return unit


def uncertainty_text(ki67_node) -> str:
    """One line on how sure a ki67 map is, from its summary: interval level and width, out-of-domain voxels."""
    if ki67_node is None:
        return ""
    try:
        summary = json.loads(ki67_node.GetAttribute(ATTRIBUTE_SUMMARY) or "{}").get("uncertainty") or {}
    except (ValueError, AttributeError):
        return ""
    intervals, domain = summary.get("intervals"), summary.get("out_of_domain")
    if not intervals:
        return "This model has no prediction intervals."
    width = intervals["width_percent"]
    text = (f"{intervals['level']:.0%} prediction interval width: median {width['median']:.1f} ki67 points "
            f"(5-95 %: {width['p05']:.1f}-{width['p95']:.1f}).")
    if domain:
        text += f" Out of the model's domain: {domain['voxels']} voxels ({domain['fraction']:.1%})."
    return text
