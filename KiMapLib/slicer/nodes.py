"""Volume nodes ↔ SimpleITK images (geometry through :mod:`KiMapLib.inputs.geometry` only); regions from segments."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from KiMapLib.errors import GeometryError, KiMapError
from KiMapLib.inputs import geometry
from KiMapLib.settings import SEQUENCES


def _ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def image_from_node(node, name: str) -> sitk.Image:
    """The SimpleITK image (LPS) of a scalar or labelmap volume node; refuses transformed or empty nodes."""
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        raise KiMapError("not a scalar volume", input_name=name, hint="select a scalar volume node")
    if node.GetImageData() is None or node.GetImageData().GetPointData().GetScalars() is None:
        raise KiMapError(f"volume '{node.GetName()}' has no image data", input_name=name)
    if node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise KiMapError(f"volume '{node.GetName()}' is not a scalar (single-component) volume", input_name=name)
    if node.GetParentTransformNode() is not None:
        raise GeometryError(f"volume '{node.GetName()}' is under a transform", input_name=name,
                            hint="harden the transform first (Transforms module)")
    return geometry.image_from_array(slicer.util.arrayFromVolume(node).copy(), _ijk_to_ras(node))


def update_node_from_image(node, image: sitk.Image, *, reference_node=None) -> None:
    """Put a SimpleITK image into a volume node: voxels and geometry (the reference node's when on its grid)."""
    array = sitk.GetArrayFromImage(image)
    ijk_to_ras = geometry.ijk_to_ras_matrix(image)
    if reference_node is not None and array.shape == slicer.util.arrayFromVolume(reference_node).shape:
        reference = _ijk_to_ras(reference_node)
        if np.allclose(reference, ijk_to_ras, atol=geometry.GRID_TOLERANCE):
            ijk_to_ras = reference  # same grid: copy the matrix exactly
    slicer.util.updateVolumeFromArray(node, array)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))


def volume_images(volume_nodes: Mapping[str, object]) -> dict[str, sitk.Image]:
    if not isinstance(volume_nodes, Mapping):
        raise KiMapError("volumes must be a dict such as {'t1c': node, 't2': node}", input_name="volumes")
    images = {}
    for name, node in volume_nodes.items():
        if node is None:
            continue
        if name not in SEQUENCES:
            raise KiMapError(f"unknown sequence '{name}'", input_name="volumes", hint=f"use {', '.join(SEQUENCES)}")
        images[name] = image_from_node(node, name)
    if "t1c" not in images:
        raise KiMapError("no t1c volume selected", input_name="t1c", hint="every map is defined on the t1c grid")
    return images


def region_image(region_node, reference_node, name: str = "tumor region") -> sitk.Image | None:
    """A labelmap/scalar volume or the visible segments of a segmentation, as a SimpleITK image."""
    if region_node is None:
        return None
    if region_node.IsA("vtkMRMLSegmentationNode"):
        _check_visible_segments(region_node, name)
        scene = region_node.GetScene()
        existing = {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}
        label_node = slicer.vtkMRMLLabelMapVolumeNode()
        label_node.SetHideFromEditors(True)
        scene.AddNode(label_node)  # temporary: it and what the export adds are removed, leaving the scene as it was
        try:
            segmentations = slicer.vtkSlicerSegmentationsModuleLogic
            if not segmentations.ExportVisibleSegmentsToLabelmapNode(region_node, label_node, reference_node):
                raise KiMapError(f"cannot make a labelmap from segmentation '{region_node.GetName()}'",
                                 input_name=name, hint="check that it has visible, non-empty segments")
            image = label_node.GetImageData()
            if image is None or image.GetPointData().GetScalars() is None:
                raise KiMapError(f"segmentation '{region_node.GetName()}' has no visible, non-empty segment",
                                 input_name=name, hint="paint the tumor in a segment and show it")
            return image_from_node(label_node, name)
        finally:
            added = [scene.GetNthNode(n) for n in range(scene.GetNumberOfNodes())]
            for node in added:
                if node.GetID() not in existing and not node.IsA("vtkMRMLSubjectHierarchyNode"):
                    scene.RemoveNode(node)
    return image_from_node(region_node, name)


def _check_visible_segments(segmentation_node, name: str) -> None:
    """Refuse a segmentation without segments, or whose segments are all hidden, before exporting it."""
    segmentation = segmentation_node.GetSegmentation()
    if segmentation is None or segmentation.GetNumberOfSegments() == 0:
        raise KiMapError(f"segmentation '{segmentation_node.GetName()}' has no segments", input_name=name,
                         hint="paint the tumor in a segment (Segment Editor) or choose another region")
    display = segmentation_node.GetDisplayNode()
    if display is not None:
        visible = vtk.vtkStringArray()
        display.GetVisibleSegmentIDs(visible)
        if visible.GetNumberOfValues() == 0:
            raise KiMapError(f"segmentation '{segmentation_node.GetName()}' has no visible segment", input_name=name,
                             hint="show the tumor segment (Segmentations module) or choose another region")
