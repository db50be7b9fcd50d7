"""Slice views on a scene without the application: layers, and what the Red view shows as an RGBA array."""

from __future__ import annotations

import numpy as np
import slicer
from vtkmodules.util.numpy_support import vtk_to_numpy

from KiMapLib.slicer.scene_io import HEADLESS


def _slice_logic(name: str, scene):
    """A slice logic on the scene's slice node ``name`` (created when the scene has none)."""
    slice_logic = slicer.vtkMRMLSliceLogic()
    if HEADLESS.get("app") is not None:
        slice_logic.SetMRMLApplicationLogic(HEADLESS["app"])
    slice_logic.SetMRMLScene(scene)
    existing = scene.GetSingletonNode(name, "vtkMRMLSliceNode")
    if existing is None:
        slice_logic.AddSliceNode(name)
    else:
        slice_logic.SetSliceNode(existing)
    return slice_logic


def set_slice_viewer_layers(background_node, foreground_node=None, opacity: float = 0.6, scene=None) -> None:
    """Show ``foreground_node`` over ``background_node`` in the Red, Yellow and Green slice views.

    In Slicer this is ``slicer.util.setSliceViewerLayers``; on slicer-core it creates the slice and composite
    nodes, so that a saved scene opens in Slicer with the overlay.
    """
    if hasattr(slicer, "app"):
        slicer.util.setSliceViewerLayers(background=background_node, foreground=foreground_node,
                                         foregroundOpacity=opacity)
        return
    scene = scene or slicer.mrmlScene
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        slice_logic = _slice_logic(name, scene)
        slice_logic.GetSliceNode().SetOrientation(orientation)
        composite = slice_logic.GetSliceCompositeNode()
        composite.SetBackgroundVolumeID(background_node.GetID())
        composite.SetForegroundVolumeID(foreground_node.GetID() if foreground_node is not None else None)
        composite.SetForegroundOpacity(opacity)
        slice_logic.FitSliceToBackground()
        slice_logic.SetMRMLScene(None)


def slice_view_image(background_node, foreground_node=None, *, opacity: float = 0.6, orientation: str = "Axial",
                     ras: tuple[float, float, float] | None = None, size: int = 400, scene=None) -> np.ndarray:
    """What Slicer's Red slice view shows (``vtkMRMLSliceLogic`` blend), as an RGBA array (rows top to bottom).

    Also leaves the Red slice and composite nodes in the scene, so a saved scene opens with this overlay.
    """
    scene = scene or slicer.mrmlScene
    slice_logic = _slice_logic("Red", scene)
    slice_node = slice_logic.GetSliceNode()
    slice_node.SetOrientation(orientation)
    slice_node.SetDimensions(size, size, 1)
    composite = slice_logic.GetSliceCompositeNode()
    composite.SetBackgroundVolumeID(background_node.GetID())
    composite.SetForegroundVolumeID(foreground_node.GetID() if foreground_node is not None else None)
    composite.SetForegroundOpacity(opacity)
    slice_logic.FitSliceToBackground()
    if ras is not None:
        slice_node.JumpSliceByCentering(*ras)
    blend = slice_logic.GetBlend()
    blend.Update()
    image = blend.GetOutput()
    columns, rows, _ = image.GetDimensions()
    scalars = vtk_to_numpy(image.GetPointData().GetScalars())
    array = scalars.reshape(rows, columns, -1)[::-1].copy()
    slice_logic.SetMRMLScene(None)
    return array
