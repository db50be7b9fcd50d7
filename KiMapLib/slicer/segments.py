"""The tumour region as a segmentation node: three named, colored segments the user edits in the Segment Editor.

Each segment carries its BraTS label in the tag ``KiMap.Label`` (1 necrotic core, 2 oedema / non-enhancing tumour,
3 enhancing tumour), so that an edited segmentation comes back as the same label map.
"""

from __future__ import annotations

import contextlib

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from KiMapLib.errors import KiMapError
from KiMapLib.inputs.geometry import same_grid
from KiMapLib.region.tumour_region import LABEL_COLORS, LABEL_NAMES, OEDEMA
from KiMapLib.slicer.nodes import image_from_node, update_node_from_image

LABEL_TAG = "KiMap.Label"
SEGMENT_NAMES = {1: "Necrotic core", 2: "Oedema / non-enhancing tumour", 3: "Enhancing tumour"}


@contextlib.contextmanager
def _temporary_nodes(scene):
    """Nodes added inside the block are removed at its end (the scene is left as it was)."""
    existing = {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}
    try:
        yield
    finally:
        added = [scene.GetNthNode(n) for n in range(scene.GetNumberOfNodes())]
        for node in added:
            if node.GetID() not in existing and not node.IsA("vtkMRMLSubjectHierarchyNode"):
                scene.RemoveNode(node)


def fill_tumour_segments(segmentation_node, labels: sitk.Image, reference_node) -> None:
    """Replace the segments of ``segmentation_node`` by one segment per tumour label (empty ones included)."""
    scene = segmentation_node.GetScene()
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    segmentation = segmentation_node.GetSegmentation()
    array = sitk.GetArrayViewFromImage(labels)
    with _temporary_nodes(scene):
        segmentation.RemoveAllSegments()
        for value, name in SEGMENT_NAMES.items():
            color = LABEL_COLORS[value]
            if not (array == value).any():
                segment_id = segmentation.AddEmptySegment(name, name, color)
            else:
                label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
                update_node_from_image(label_node, sitk.Cast(labels == value, sitk.sitkUInt8),
                                       reference_node=reference_node)
                before = set(segmentation.GetSegmentIDs())
                if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                        label_node, segmentation_node):
                    raise KiMapError(f"could not make the {LABEL_NAMES[value]} segment", input_name="tumour region")
                segment_id = next(s for s in segmentation.GetSegmentIDs() if s not in before)
                segment = segmentation.GetSegment(segment_id)
                segment.SetName(name)
                segment.SetColor(*color)
            segmentation.GetSegment(segment_id).SetTag(LABEL_TAG, str(value))
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()


def tumour_labels(segmentation_node, reference_node, name: str = "tumor region") -> sitk.Image | None:
    """The visible segments of a KiMap tumour segmentation as a BraTS label map on the reference grid (a segment the
    user added, without KiMap's tag, counts as viable tumour, label 2); None when no segment is KiMap's."""
    segmentation = segmentation_node.GetSegmentation()
    display = segmentation_node.GetDisplayNode()
    visible = []
    for segment_id in segmentation.GetSegmentIDs():
        value = vtk.mutable("")
        has_tag = segmentation.GetSegment(segment_id).GetTag(LABEL_TAG, value) and str(value).isdigit()
        if display is None or display.GetSegmentVisibility(segment_id):
            visible.append((int(str(value)) if has_tag else None, segment_id))
    if not any(value is not None for value, _ in visible):
        return None
    # a segment the user added to KiMap's three (no tag) extends the viable tumour: it is mapped, never dropped
    tagged = [(OEDEMA if value is None else value, segment_id) for value, segment_id in visible]
    reference = image_from_node(reference_node, "t1c")
    labels = np.zeros(sitk.GetArrayViewFromImage(reference).shape, np.uint8)
    scene = segmentation_node.GetScene()
    with _temporary_nodes(scene):
        for value, segment_id in sorted(tagged):
            label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segment_id)
            on_reference_grid = slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                    segmentation_node, ids, label_node, reference_node, on_reference_grid):
                raise KiMapError(f"cannot read segment '{segmentation.GetSegment(segment_id).GetName()}'",
                                 input_name=name)
            if label_node.GetImageData() is None:
                continue  # an empty segment
            segment = image_from_node(label_node, name)
            if not same_grid(segment, reference):
                raise KiMapError("a segment left the t1c grid", input_name=name, hint="set the segmentation's "
                                 "reference geometry to the t1c volume (Segment Editor: master volume)")
            labels[sitk.GetArrayViewFromImage(segment) > 0] = value
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(reference)
    return image
