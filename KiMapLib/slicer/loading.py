"""Files into the scene: volumes (files or a DICOM series folder), tumour labels as segmentations, biopsy points,
and the synthetic demo case. Every reader checks its input completely before the first node is added."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer

from KiMapLib.errors import KiMapError
from KiMapLib.slicer.display import ATTRIBUTE_TABLE
from KiMapLib.slicer.nodes import update_node_from_image
from KiMapLib.slicer.segments import fill_tumour_segments
from KiMapLib.slicer.tables import fill_table

#: Node attribute on a volume read from a DICOM series: the series folder (the reference of a DICOM export).
ATTRIBUTE_DICOM_FOLDER = "KiMap.DicomFolder"
#: Node attribute on a volume: the sequence it was loaded as (t1c, t2, flair, adc, t1), when known.
ATTRIBUTE_SEQUENCE = "KiMap.Sequence"
#: The phantom's labels (1 necrotic core, 2 enhancing rim, 3 oedema) -> KiMap's BraTS labels (1 necrotic core,
#: 2 oedema / non-enhancing tumour, 3 enhancing tumour).
PHANTOM_TO_BRATS = {0: 0, 1: 1, 2: 3, 3: 2}
DISPLAY_NAMES = {"t1c": "T1C", "t2": "T2", "flair": "FLAIR", "adc": "ADC", "t1": "T1"}


def add_volume_node(scene, image: sitk.Image, name: str, *, label: bool = False):
    """A new scalar (or labelmap) volume node holding ``image`` (geometry through KiMapLib.inputs.geometry)."""
    class_name = "vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    update_node_from_image(node, image)
    node.CreateDefaultDisplayNodes()
    if not label:
        from KiMapLib.slicer.demo_scene import _window_from_percentiles

        _window_from_percentiles(node, image)
    return node


def read_volume_node(scene, path: str | Path, sequence: str | None = None, name: str | None = None):
    """A volume file (NRRD, NIfTI, MHA) or a DICOM series folder as a scalar volume node.

    Read and checked completely before the node is added; a DICOM folder is recorded on the node
    (:data:`ATTRIBUTE_DICOM_FOLDER`) for the DICOM planning export.
    """
    from KiMapLib.inputs.images import read_volume

    path = Path(path)
    image = read_volume(path, sequence or path.name)
    node = add_volume_node(scene, image, name or DISPLAY_NAMES.get(sequence or "", "") or _stem(path))
    if sequence:
        node.SetAttribute(ATTRIBUTE_SEQUENCE, sequence)
    if path.is_dir():
        node.SetAttribute(ATTRIBUTE_DICOM_FOLDER, str(path.resolve()))
    return node


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def segmentation_from_labels(scene, labels: sitk.Image, reference_node, name: str = "tumour region"):
    """A segmentation node from a label map on the reference volume's grid, one segment per label value > 0.

    Labels in BraTS convention (values within 1-4, more than one of them) become KiMap's three tumour segments
    (:func:`KiMapLib.slicer.segments.fill_tumour_segments`: necrotic core, oedema / non-enhancing tumour, enhancing
    tumour; BraTS 2021's 4 is enhancing); the necrotic core is then not mapped. A one-value mask becomes one segment
    ``name``, other values ``label N`` — all of them mapped.
    """
    array = sitk.GetArrayFromImage(labels)
    values = [int(v) for v in np.unique(array) if v > 0]
    if not values:
        raise KiMapError("the label volume is empty (no voxel > 0)", input_name=name, hint="give a non-empty label")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    try:
        if len(values) > 1 and set(values) <= {1, 2, 3, 4}:
            brats = geometry_copy(np.where(array == 4, 3, array), labels)
            fill_tumour_segments(segmentation, brats, reference_node)
        else:
            _plain_segments(segmentation, array, labels, reference_node, values, name)
    except Exception:
        scene.RemoveNode(segmentation)
        raise
    if segmentation.GetDisplayNode() is None:
        segmentation.CreateDefaultDisplayNodes()
    return segmentation


def _plain_segments(segmentation, array, labels, reference_node, values, name) -> None:
    scene = segmentation.GetScene()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    temporary = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__kimap_labels__")
    try:
        for value in values:
            update_node_from_image(temporary, geometry_copy(array == value, labels), reference_node=reference_node)
            before = set(segmentation.GetSegmentation().GetSegmentIDs())
            if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                    temporary, segmentation, ""):
                raise KiMapError(f"cannot import label {value} as a segment", input_name=name)
            for segment_id in set(segmentation.GetSegmentation().GetSegmentIDs()) - before:
                segmentation.GetSegmentation().GetSegment(segment_id).SetName(
                    name if len(values) == 1 else f"label {value}")
    finally:
        scene.RemoveNode(temporary)


def geometry_copy(mask: np.ndarray, reference: sitk.Image) -> sitk.Image:
    from KiMapLib.inputs.geometry import copy_geometry

    return copy_geometry(mask.astype(np.uint8), reference)


def read_region_node(scene, path: str | Path, reference_node, name: str = "tumour region"):
    """A label file (or DICOM folder) as an editable segmentation on the reference volume's grid; checked (whole
    labels 0-255, not empty, overlapping the t1c) before the first node is added."""
    from KiMapLib.inputs.images import read_volume
    from KiMapLib.region.tumour_region import given_region
    from KiMapLib.slicer.nodes import image_from_node

    reference = image_from_node(reference_node, "t1c")
    region = given_region(read_volume(path, name), reference, name)  # on the t1c grid, labels kept
    return segmentation_from_labels(scene, geometry_copy(region.labels, reference), reference_node,
                                    _stem(Path(path)) or name)


def markups_from_biopsies(scene, biopsies: Sequence, name: str = "Biopsies", markups_node=None):
    """A point list of the biopsies (RAS, labelled by biopsy id) and, when ki67 was measured, its table node."""
    markups = markups_node or scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", scene.GenerateUniqueName(name))
    if markups.GetDisplayNode() is None:
        markups.CreateDefaultDisplayNodes()
    for biopsy in biopsies:
        r, a, s = (float(v) for v in biopsy.ras)
        markups.AddControlPoint(r, a, s, str(biopsy.biopsy_id))
    records = [{"biopsy": b.biopsy_id, "measured_ki67": b.ki67, "r": float(b.ras[0]), "a": float(b.ras[1]),
                "s": float(b.ras[2]), "note": ""} for b in biopsies]
    if any(record["measured_ki67"] is not None for record in records):
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{markups.GetName()} ki67"))
        fill_table(table, records)
        markups.SetAttribute(ATTRIBUTE_TABLE, table.GetID())
    return markups


def demo_case_nodes(scene, seed: int) -> dict[str, object]:
    """The synthetic demo case (the patient ``kimap demo --seed`` maps) as nodes; SYNTHETIC DATA.

    Returns ``{"volumes": {sequence: node}, "region": segmentation, "biopsies": empty point list,
    "covariates": {...}, "notice": ...}``. Nothing is written to disk.
    """
    from KiMapLib.phantom import SYNTHETIC_NOTICE, demo_patient

    patient = demo_patient(seed)
    volumes = {sequence: add_volume_node(scene, image, f"{DISPLAY_NAMES[sequence]} (synthetic)")
               for sequence, image in patient.images.items()}
    for sequence, node in volumes.items():
        node.SetAttribute(ATTRIBUTE_SEQUENCE, sequence)
        node.SetAttribute("KiMap.Synthetic", "1")
    phantom = sitk.GetArrayFromImage(patient.label)
    brats = geometry_copy(np.vectorize(PHANTOM_TO_BRATS.get, otypes=[np.uint8])(phantom), patient.label)
    region = segmentation_from_labels(scene, brats, volumes["t1c"], "tumour region (synthetic)")
    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", scene.GenerateUniqueName("Biopsies"))
    markups.CreateDefaultDisplayNodes()
    covariates = {k: patient.covariates.get(k) for k in ("sex", "age", "tumor_type")}
    return {"volumes": volumes, "region": region, "biopsies": markups, "covariates": covariates,
            "patient_id": patient.patient_id, "notice": SYNTHETIC_NOTICE}
