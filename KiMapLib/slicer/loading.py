"""Files into the scene: volumes (files or a DICOM series folder), tumour labels as segmentations, biopsy points,
and the synthetic demo case. Every reader checks its input completely before the first node is added."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from KiMapLib.errors import KiMapError
from KiMapLib.slicer.display import ATTRIBUTE_TABLE
from KiMapLib.slicer.nodes import update_node_from_image
from KiMapLib.slicer.tables import fill_table

#: Node attribute on a volume read from a DICOM series: the series folder (the reference of a DICOM export).
ATTRIBUTE_DICOM_FOLDER = "KiMap.DicomFolder"
#: Node attribute on a volume: the sequence it was loaded as (t1c, t2, flair, adc, t1), when known.
ATTRIBUTE_SEQUENCE = "KiMap.Sequence"
#: Tumour sub-regions (label value in the phantom and BraTS-like labels -> segment name, color).
TUMOUR_SEGMENTS = {1: ("necrotic core", (0.95, 0.85, 0.25)), 2: ("enhancing", (0.9, 0.3, 0.3)),
                   3: ("oedema", (0.35, 0.7, 0.95))}
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


def segmentation_from_labels(scene, labels: sitk.Image, reference_node, name: str = "tumour region",
                             segment_names: Mapping[int, tuple[str, tuple[float, float, float]]] | None = None):
    """A segmentation node with one named, colored segment per label value > 0 of ``labels``.

    ``labels`` must already be on the reference volume's grid (see :func:`KiMapLib.inputs.images.check_region`).
    Label values without a name in ``segment_names`` are called ``label N``.
    """
    names = dict(TUMOUR_SEGMENTS if segment_names is None else segment_names)
    array = sitk.GetArrayFromImage(labels)
    values = [int(v) for v in np.unique(array) if v > 0]
    if not values:
        raise KiMapError("the label volume is empty (no voxel > 0)", input_name=name, hint="give a non-empty label")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    temporary = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__kimap_labels__")
    try:
        for value in values:
            segment_name, color = names.get(value, (f"label {value}", None))
            update_node_from_image(temporary, geometry_copy(array == value, labels), reference_node=reference_node)
            before = set(_segment_ids(segmentation))
            if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                    temporary, segmentation, ""):
                raise KiMapError(f"cannot import label {value} as a segment", input_name=name)
            for segment_id in set(_segment_ids(segmentation)) - before:
                segment = segmentation.GetSegmentation().GetSegment(segment_id)
                segment.SetName(segment_name)
                if color is not None:
                    segment.SetColor(*color)
    except Exception:
        scene.RemoveNode(segmentation)
        raise
    finally:
        scene.RemoveNode(temporary)
    return segmentation


def geometry_copy(mask: np.ndarray, reference: sitk.Image) -> sitk.Image:
    from KiMapLib.inputs.geometry import copy_geometry

    return copy_geometry(mask.astype(np.uint8), reference)


def _segment_ids(segmentation) -> list[str]:
    ids = vtk.vtkStringArray()
    segmentation.GetSegmentation().GetSegmentIDs(ids)
    return [ids.GetValue(i) for i in range(ids.GetNumberOfValues())]


def read_region_node(scene, path: str | Path, reference_node, name: str = "tumour region"):
    """A label file (or DICOM folder) as an editable segmentation on the reference volume's grid."""
    from KiMapLib.inputs.images import check_region, read_volume
    from KiMapLib.slicer.nodes import image_from_node

    labels = read_volume(path, name)
    reference = image_from_node(reference_node, "t1c")
    check_region(labels, reference, name)  # refuses an empty label or one outside the t1c
    if not _same_grid(labels, reference):
        from KiMapLib.inputs.geometry import resample_onto

        labels = resample_onto(labels, reference, interpolator=sitk.sitkNearestNeighbor)
    labels = sitk.Cast(labels, sitk.sitkUInt8) if sitk.GetArrayViewFromImage(labels).max() < 256 else labels
    return segmentation_from_labels(scene, labels, reference_node, _stem(Path(path)) or name)


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    from KiMapLib.inputs.geometry import same_grid

    return same_grid(a, b)


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
    region = segmentation_from_labels(scene, patient.label, volumes["t1c"], "tumour region (synthetic)")
    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", scene.GenerateUniqueName("Biopsies"))
    markups.CreateDefaultDisplayNodes()
    covariates = {k: patient.covariates.get(k) for k in ("sex", "age", "tumor_type")}
    return {"volumes": volumes, "region": region, "biopsies": markups, "covariates": covariates,
            "patient_id": patient.patient_id, "notice": SYNTHETIC_NOTICE}
