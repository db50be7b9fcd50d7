"""What the slice views show: the t1c in the background, the ki67 map over it, the region outline, the points.

The map goes into the slice views' *label* layer: a drag in a view then changes the t1c's window/level as in
Slicer, while the map keeps the window and color table :func:`KiMapLib.slicer.display.set_map_display` gave it.
"""

from __future__ import annotations

from collections.abc import Sequence


def window_level_mode(slicer_app) -> None:
    """A left drag in a slice view adjusts the background's window/level (Slicer's "Window/level" mouse mode)."""
    interaction = slicer_app.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
    if interaction is not None:
        interaction.SetCurrentInteractionMode(interaction.AdjustWindowLevel)


def _composite_nodes(scene) -> list:
    return list(scene.GetNodesByClass("vtkMRMLSliceCompositeNode"))


def show_background(slicer_app, volume_node) -> None:
    """The volume in every slice view's background, views fitted to it (no volume rendering)."""
    display_manager = slicer_app.display_manager
    display_manager.show_volume_in_slice_background(volume_node)
    display_manager.show_volume_in_slice_foreground(None)
    for view in slicer_app.view_manager.get_slice_views():
        view.fit_view_to_content()
        view.schedule_render()


def show_map(slicer_app, map_node, opacity: float) -> None:
    """``map_node`` over the background in every slice view (label layer), with this opacity."""
    for composite in _composite_nodes(slicer_app.scene):
        composite.SetLabelVolumeID(map_node.GetID() if map_node is not None else None)
        composite.SetLabelOpacity(float(opacity))
    _render(slicer_app)


def set_map_opacity(slicer_app, opacity: float) -> None:
    for composite in _composite_nodes(slicer_app.scene):
        composite.SetLabelOpacity(float(opacity))
    _render(slicer_app)


def show_region_outline(region_node) -> None:
    """Segments drawn as outlines only, so the map underneath stays readable."""
    if region_node is None or not region_node.IsA("vtkMRMLSegmentationNode"):
        return
    if region_node.GetDisplayNode() is None:
        region_node.CreateDefaultDisplayNodes()
    display = region_node.GetDisplayNode()
    display.SetVisibility2DOutline(True)
    display.SetVisibility2DFill(False)
    display.SetSliceIntersectionThickness(2)


def center_views_on(slicer_app, ras: Sequence[float]) -> None:
    """Every slice view through ``ras``, centred on it."""
    for node in slicer_app.scene.GetNodesByClass("vtkMRMLSliceNode"):
        node.JumpSliceByCentering(*(float(v) for v in ras))
    _render(slicer_app)


def _render(slicer_app) -> None:
    for view in slicer_app.view_manager.get_slice_views():
        view.schedule_render()
