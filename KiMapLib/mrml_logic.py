"""KiMap on the MRML scene: Slicer nodes in, Slicer nodes out (the console API and what the module widget calls).

This is the only KiMapLib module that imports ``slicer``/``vtk``. It runs inside 3D Slicer and on the
``slicer-core`` wheel (no Qt, no application): nothing here opens a dialog or touches the layout. Bad input
raises :class:`KiMapLib.errors.KiMapError` with a one-line message *before* any node is added or changed,
so a failed or cancelled call leaves the scene as it was.

Console example (Slicer's Python console)::

    from KiMapLib.mrml_logic import KiMapLogic
    logic = KiMapLogic()
    model = logic.loadModel()                      # the packaged model
    volumes = {"t1c": getNode("T1C"), "t2": getNode("T2"), "flair": getNode("FLAIR"), "adc": getNode("ADC")}
    table = logic.predictBiopsies(volumes, getNode("Biopsies"), model)
    ki67Node, probabilityNode = logic.computeMap(volumes, getNode("Tumor"), model)
    logic.exportMap(ki67Node, "/tmp/kimap", probabilityNode=probabilityNode, tableNode=table)

Map nodes keep the files' convention: NaN outside the mapped region. Slicer's slice pipeline (the same CPU
reslice + threshold + blend in Slicer and in ``vtkMRMLSliceLogic`` on slicer-core, checked by the tests) makes NaN
voxels transparent because they fail the display threshold, as are values below ``lowerThreshold``.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtkmodules.util.numpy_support import vtk_to_numpy

from KiMapLib import geometry
from KiMapLib.errors import BiopsyError, GeometryError, KiMapError
from KiMapLib.progress import ProgressCallback, report, scaled
from KiMapLib.resources import color_table_path
from KiMapLib.settings import SEQUENCES

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

#: Biopsy table columns: (name, vtk array class, title shown in the table view, unit).
TABLE_COLUMNS = (
    ("biopsy", "vtkStringArray", "Biopsy", ""),
    ("predicted_ki67", "vtkDoubleArray", "Predicted ki67", "%"),
    ("probability_high", "vtkDoubleArray", "P(high)", ""),
    ("measured_ki67", "vtkDoubleArray", "Measured ki67", "%"),
    ("r", "vtkDoubleArray", "R", "mm"),
    ("a", "vtkDoubleArray", "A", "mm"),
    ("s", "vtkDoubleArray", "S", "mm"),
    ("note", "vtkStringArray", "Note", ""),
)

#: Python import name -> (what it is, pip requirement) of the heavy, lazily imported dependencies.
DEPENDENCIES = {
    "radiomics": ("pyradiomics", "pyradiomics-bhklab"),
    "sklearn": ("scikit-learn", "scikit-learn"),
    "skops": ("skops", "skops"),
}

_headless: dict[str, object] = {}


# --------------------------------------------------------------------------------------------------------------
# Dependencies, scene access


def missing_dependencies() -> list[str]:
    """Import names of the heavy dependencies that are not installed (checked without importing them)."""
    return [name for name in DEPENDENCIES if importlib.util.find_spec(name) is None]


def dependency_message(missing: list[str] | None = None) -> str | None:
    """A one-line message naming what is missing and how to get it, or None when everything is there."""
    missing = missing_dependencies() if missing is None else missing
    if not missing:
        return None
    names = ", ".join(DEPENDENCIES[name][0] for name in missing)
    text = f"KiMap needs {names}, which is not installed in this Python"
    if "radiomics" in missing:
        text += " — install the SlicerRadiomics extension (Extensions Manager), then restart Slicer"
    requirements = " ".join(DEPENDENCIES[name][1] for name in missing if name != "radiomics")
    if requirements:
        text += f"; or run slicer.util.pip_install('{requirements}')"
    return text


def _require_dependencies() -> None:
    message = dependency_message()
    if message:
        raise KiMapError(message)


def _module_logic(name: str):
    """A Slicer module logic (``"Colors"``, ``"Segmentations"``...) in the app or a headless scene, or None."""
    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, name.lower()):
        return getattr(modules, name.lower()).logic()
    app = _headless.get("app")
    return app.GetModuleLogic(name) if app is not None else None


# --------------------------------------------------------------------------------------------------------------
# Node <-> SimpleITK (geometry through KiMapLib.geometry only)


def _ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def image_from_node(node, name: str) -> sitk.Image:
    """The SimpleITK image (LPS) of a scalar or labelmap volume node; refuses transformed or empty nodes."""
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        raise KiMapError("not a scalar volume", input_name=name, hint="select a scalar volume node")
    if node.GetImageData() is None:
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


def _volume_images(volume_nodes: Mapping[str, object]) -> dict[str, sitk.Image]:
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


def _region_image(region_node, reference_node, name: str = "tumor region") -> sitk.Image | None:
    """A labelmap/scalar volume or the visible segments of a segmentation, as a SimpleITK image."""
    if region_node is None:
        return None
    if region_node.IsA("vtkMRMLSegmentationNode"):
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
            if label_node.GetImageData() is None:
                raise KiMapError("the segmentation has no visible segment", input_name=name)
            return image_from_node(label_node, name)
        finally:
            added = [scene.GetNthNode(n) for n in range(scene.GetNumberOfNodes())]
            for node in added:
                if node.GetID() not in existing and not node.IsA("vtkMRMLSubjectHierarchyNode"):
                    scene.RemoveNode(node)
    return image_from_node(region_node, name)


def biopsies_from_markups(markups_node, patient_id: str | None = None,
                          covariates: Mapping[str, object] | None = None) -> list:
    """The defined control points of a markups node as :class:`KiMapLib.biopsies.Biopsy` (world RAS)."""
    from KiMapLib.biopsies import Biopsy

    if markups_node is None or not markups_node.IsA("vtkMRMLMarkupsNode"):
        raise KiMapError("no markups node selected", input_name="biopsies", hint="place biopsy points first")
    patient = patient_id or markups_node.GetAttribute("KiMap.PatientId") or "patient"
    biopsies, seen = [], set()
    for index in range(markups_node.GetNumberOfControlPoints()):
        if markups_node.GetNthControlPointPositionStatus(index) != markups_node.PositionDefined:
            continue
        label = markups_node.GetNthControlPointLabel(index) or f"B{index + 1}"
        if label in seen:
            raise BiopsyError(f"point label '{label}' is used twice in '{markups_node.GetName()}'",
                              input_name="biopsies", hint="give each point a unique label")
        seen.add(label)
        ras = np.zeros(3)
        markups_node.GetNthControlPointPositionWorld(index, ras)
        biopsies.append(Biopsy(patient_id=patient, biopsy_id=label, ras=ras.copy(), covariates=dict(covariates or {})))
    if not biopsies:
        raise KiMapError(f"'{markups_node.GetName()}' has no placed points", input_name="biopsies",
                         hint="place at least one biopsy point")
    return biopsies


def check_points_inside(biopsies: list, reference: sitk.Image) -> None:
    """Raise naming the first point that lies outside the t1c volume."""
    for biopsy in biopsies:
        if geometry.nearest_voxel(reference, biopsy.ras) is None:
            r, a, s = (float(v) for v in biopsy.ras)
            raise BiopsyError(f"point {biopsy.biopsy_id} (R {r:.1f}, A {a:.1f}, S {s:.1f}) is outside the t1c volume",
                              input_name="biopsies", hint="move the point into the imaged volume")


# --------------------------------------------------------------------------------------------------------------
# Tables


def _table_values(table_node) -> list[dict[str, object]]:
    """Rows of a table node as dicts (strings and floats)."""
    table = table_node.GetTable()
    rows = []
    for row in range(table.GetNumberOfRows()):
        values = {}
        for column in range(table.GetNumberOfColumns()):
            array = table.GetColumn(column)
            value = array.GetValue(row)
            values[array.GetName()] = value if isinstance(value, str) else float(value)
        rows.append(values)
    return rows


def measured_ki67_from_table(table_node) -> dict[str, float]:
    """Measured ki67 by biopsy label from a KiMap table node (entries typed in by the user)."""
    if table_node is None or table_node.GetTable().GetColumnByName("measured_ki67") is None:
        return {}
    measured = {}
    for row in _table_values(table_node):
        value = row.get("measured_ki67")
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                continue
        if value is not None and math.isfinite(value):
            measured[str(row.get("biopsy"))] = float(value)
    return measured


def _fill_table(table_node, records: list[dict[str, object]]) -> None:
    arrays = []
    for name, class_name, _title, _unit in TABLE_COLUMNS:
        array = getattr(vtk, class_name)()
        array.SetName(name)
        for record in records:
            value = record.get(name)
            if class_name == "vtkStringArray":
                array.InsertNextValue("" if value is None else str(value))
            else:
                array.InsertNextValue(math.nan if value is None else float(value))
        arrays.append(array)
    was_modifying = table_node.StartModify()
    table_node.RemoveAllColumns()
    for array in arrays:
        table_node.AddColumn(array)
    for name, class_name, title, unit in TABLE_COLUMNS:
        table_node.SetColumnTitle(name, title)
        table_node.SetColumnUnitLabel(name, unit)
        table_node.SetColumnType(name, vtk.VTK_STRING if class_name == "vtkStringArray" else vtk.VTK_DOUBLE)
    table_node.SetColumnDescription("measured_ki67", "ki67 measured on the biopsy (%); type it in")
    table_node.SetColumnDescription("probability_high", "probability that ki67 is above the model's threshold")
    table_node.SetUseColumnTitleAsColumnHeader(True)
    table_node.SetLocked(False)  # measured ki67 is edited in the table view
    table_node.Modified()
    table_node.EndModify(was_modifying)


# --------------------------------------------------------------------------------------------------------------
# Colors and display


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
        window = (0.0, 100.0) if node.GetAttribute(ATTRIBUTE_MAP) != "probability" else (0.0, 1.0)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*window)
    display.AutoThresholdOff()
    display.ApplyThresholdOn()
    display.SetThreshold(window[0] if lower_threshold is None else lower_threshold, max(window[1], 1e6))
    display.SetInterpolate(True)
    display.EndModify(was_modifying)


def add_color_legend(node):
    """A color legend for the map in slice and 3D views (Colors module logic), or None when unavailable."""
    colors = _module_logic("Colors")
    if colors is None or not hasattr(colors, "AddDefaultColorLegendDisplayNode"):
        return None
    legend = colors.AddDefaultColorLegendDisplayNode(node)
    if legend is not None:
        legend.SetTitleText("ki67 (%)" if node.GetAttribute(ATTRIBUTE_MAP) != "probability" else "P(high)")
        legend.SetLabelFormat("%.0f" if node.GetAttribute(ATTRIBUTE_MAP) != "probability" else "%.1f")
    return legend


# --------------------------------------------------------------------------------------------------------------
# The logic


class KiMapLogic:
    """Predict biopsies, compute and export ki67 maps on a MRML scene. Nodes in, nodes out, no dialogs.

    ``progress(fraction, message)`` callbacks may return False to cancel (:class:`KiMapLib.errors.Cancelled`).
    """

    def __init__(self, scene=None):
        self._scene = scene

    @property
    def scene(self):
        return self._scene or slicer.mrmlScene

    # -- model --------------------------------------------------------------------------------------------------

    @staticmethod
    def dependencyMessage() -> str | None:
        """None when pyradiomics and scikit-learn are importable, else what to install."""
        return dependency_message()

    @staticmethod
    def loadModel(path: str | Path | None = None):
        """The packaged model (``path=None``) or a model bundle folder/file; see ``KiMapLib.model_bundle``."""
        _require_dependencies()
        from KiMapLib.model_bundle import load_model

        return load_model(path)

    @staticmethod
    def modelCardText(model) -> str:
        """A short HTML summary of a model card: sequences, training data, metrics and the research-use notice."""
        card = dict(getattr(model, "card", {}) or {})
        sequences = ", ".join(getattr(model, "required_sequences", ()) or card.get("required_sequences", ()))
        lines = [f"<b>{card.get('model_id', getattr(model, 'model_id', 'model'))}</b>",
                 f"Required sequences: {sequences or 'not stated'}"]
        threshold = getattr(model, "threshold_percent", card.get("threshold_percent"))
        if threshold is not None:
            lines.append(f"P(high) = probability that ki67 &gt; {threshold:g} %")
        shown = {"model_id", "required_sequences", "threshold_percent", "notice", "research_use_notice",
                 "intended_use", "extraction_settings", "settings", "features"}
        for key, value in card.items():
            if key in shown or value in (None, "", [], {}):
                continue
            if isinstance(value, Mapping):
                value = ", ".join(f"{k}: {_short(v)}" for k, v in value.items() if not isinstance(v, (dict, list)))
            lines.append(f"{key.replace('_', ' ').capitalize()}: {_short(value)}")
        notice = card.get("research_use_notice") or card.get("notice") or card.get("intended_use") or (
            "Research use only: not a medical device; no clinical validity is claimed.")
        lines.append(f"<i>{notice}</i>")
        return "<br>".join(lines)

    def _resolve_model(self, model):
        return self.loadModel() if model is None else model

    def _case(self, volume_nodes, model, progress: ProgressCallback | None):
        from KiMapLib.case import prepare_case

        images = _volume_images(volume_nodes)
        report(progress, 0.0, "checking volumes")
        required = tuple(getattr(model, "required_sequences", ()) or ()) or None
        return prepare_case(images, settings=getattr(model, "settings", None), required=required)

    # -- biopsies -----------------------------------------------------------------------------------------------

    def predictBiopsies(self, volumeNodes: Mapping[str, object], markupsNode, model=None, tableNode=None,
                        covariates: Mapping[str, object] | None = None, patientId: str | None = None,
                        measuredKi67: Mapping[str, float] | None = None, progress: ProgressCallback | None = None):
        """Predicted ki67 and P(high) at each placed point of ``markupsNode``, as a table node.

        ``tableNode`` (optional) is refilled in place; measured ki67 already typed into it is kept by point label
        (``measuredKi67``, label -> %, adds or overrides values).
        Raises :class:`KiMapError` (missing sequence, point outside the volume, volumes that do not overlap)
        before touching the scene. A point whose neighbourhood cannot be used gets a note in its row.
        """
        _require_dependencies()
        from KiMapLib import prediction

        model = self._resolve_model(model)
        case = self._case(volumeNodes, model, scaled(progress, 0.0, 0.1))
        biopsies = biopsies_from_markups(markupsNode, patientId, covariates)
        check_points_inside(biopsies, case.reference)
        measured = measured_ki67_from_table(tableNode)
        measured.update({str(label): float(value) for label, value in (measuredKi67 or {}).items()})
        for biopsy in biopsies:
            biopsy.ki67 = measured.get(biopsy.biopsy_id)
        rows, errors = prediction.predict_biopsies(case, biopsies, model, progress=scaled(progress, 0.1, 0.95))
        if not rows and errors:
            raise errors[0]
        by_id = {str(row["biopsy_id"]): row for row in rows}
        records = []
        for biopsy in biopsies:
            row = by_id.get(biopsy.biopsy_id, {})
            name = f"biopsy {biopsy.patient_id}/{biopsy.biopsy_id}"
            note = "" if row else next((str(e) for e in errors if getattr(e, "input_name", None) == name),
                                       "not predicted")
            r, a, s = (float(v) for v in biopsy.ras)
            records.append({"biopsy": biopsy.biopsy_id, "predicted_ki67": row.get("predicted_ki67"),
                            "probability_high": row.get("probability_high"), "measured_ki67": biopsy.ki67,
                            "r": r, "a": a, "s": s, "note": note})
        report(progress, 0.97, "filling the table")
        if tableNode is None:
            tableNode = self.scene.AddNewNodeByClass(
                "vtkMRMLTableNode", self.scene.GenerateUniqueName(f"{markupsNode.GetName()} ki67"))
        _fill_table(tableNode, records)
        tableNode.SetAttribute(ATTRIBUTE_MODEL, str(getattr(model, "model_id", "")))
        markupsNode.SetAttribute(ATTRIBUTE_TABLE, tableNode.GetID())
        report(progress, 1.0, "done")
        return tableNode

    # -- map ----------------------------------------------------------------------------------------------------

    def computeMap(self, volumeNodes: Mapping[str, object], regionNode=None, model=None, ki67Node=None,
                   probabilityNode=None, covariates: Mapping[str, object] | None = None,
                   lowerThreshold: float = 0.0, progress: ProgressCallback | None = None):
        """The ki67 (%) and P(high) maps inside the tumor region, as two scalar volume nodes on the t1c grid.

        ``regionNode``: a labelmap/scalar volume (voxels > 0) or a segmentation (its visible segments).
        Existing ``ki67Node``/``probabilityNode`` are overwritten, otherwise new nodes are added. Display:
        KiMap's color table, window 0-100 % (0-1), values below ``lowerThreshold`` and outside the region
        transparent. Returns ``(ki67Node, probabilityNode)``.
        """
        _require_dependencies()
        from KiMapLib import mapping
        from KiMapLib.images import check_region

        model = self._resolve_model(model)
        case = self._case(volumeNodes, model, scaled(progress, 0.0, 0.05))
        t1c_node = volumeNodes["t1c"]
        region = _region_image(regionNode, t1c_node)
        if region is not None:
            region = check_region(region, case.reference, "tumor region")
        result = mapping.compute_map(case, model, region=region, covariates=dict(covariates) if covariates else None,
                                     progress=scaled(progress, 0.05, 0.97))
        # Everything below only adds/updates nodes: all checks and the computation are done.
        nodes = self._writeMapNodes(t1c_node, result.ki67, result.probability, getattr(result, "summary", {}),
                                    str(getattr(model, "model_id", "")), ki67Node, probabilityNode, lowerThreshold)
        report(progress, 1.0, "done")
        return nodes

    def loadMap(self, mapDirectory: str | Path, t1cNode, lowerThreshold: float = 0.0):
        """Load a map written by ``kimap map`` / :meth:`exportMap` (``ki67_map.nrrd`` or ``.nii.gz``, the
        probability and ``summary.json``) as display-ready nodes on ``t1cNode``'s grid."""
        folder = Path(mapDirectory)
        images = {}
        for key, stem in (("ki67", "ki67_map"), ("probability", "ki67_probability")):
            path = next((folder / f"{stem}{suffix}" for suffix in (".nrrd", ".nii.gz") if (folder / f"{stem}{suffix}")
                         .is_file()), None)
            if path is None:
                raise KiMapError(f"no {stem}.nrrd or {stem}.nii.gz in {folder}", input_name="map folder",
                                 hint="give a folder written by `kimap map`")
            images[key] = sitk.ReadImage(str(path), sitk.sitkFloat32)
        reference = image_from_node(t1cNode, "t1c")
        for image in images.values():
            if not geometry.same_grid(image, reference):
                raise GeometryError("the map is not on this t1c volume's grid", input_name="map folder",
                                    hint="select the t1c the map was computed on")
        summary_path = folder / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        return self._writeMapNodes(t1cNode, images["ki67"], images["probability"], summary,
                                   str(summary.get("model_id", "")), None, None, lowerThreshold)

    def _writeMapNodes(self, t1c_node, ki67, probability, summary, model_id, ki67_node, probability_node,
                       lower_threshold):
        color_node = color_table_node(self.scene)
        base = t1c_node.GetName()
        ki67_node = ki67_node or self.scene.AddNewNodeByClass(
            "vtkMRMLScalarVolumeNode", self.scene.GenerateUniqueName(f"{base} ki67"))
        probability_node = probability_node or self.scene.AddNewNodeByClass(
            "vtkMRMLScalarVolumeNode", self.scene.GenerateUniqueName(f"{base} P(high)"))
        summary_text = json.dumps(_jsonable(summary or {}))
        for node, image, kind in ((ki67_node, ki67, "ki67"), (probability_node, probability, "probability")):
            update_node_from_image(node, sitk.Cast(image, sitk.sitkFloat32), reference_node=t1c_node)
            node.SetAttribute(ATTRIBUTE_MAP, kind)
            node.SetAttribute(ATTRIBUTE_MODEL, model_id)
            node.SetAttribute(ATTRIBUTE_SUMMARY, summary_text)
            node.SetAttribute(ATTRIBUTE_T1C, t1c_node.GetID())
            node.SetVoxelValueUnits(_unit("%" if kind == "ki67" else ""))
            set_map_display(node, lower_threshold=lower_threshold if kind == "ki67" else 0.0, color_node=color_node)
        ki67_node.SetAttribute(ATTRIBUTE_PARTNER, probability_node.GetID())
        return ki67_node, probability_node

    # -- export -------------------------------------------------------------------------------------------------

    def exportMap(self, ki67Node, outputDirectory: str | Path, probabilityNode=None, tableNode=None,
                  formats: tuple[str, ...] | list[str] = ("nrrd", "nifti"), folderName: str | None = None,
                  referenceDicomDirectory: str | Path | None = None, levels: list[str] | None = None,
                  progress: ProgressCallback | None = None) -> Path:
        """Write the maps (NaN outside the region, as the command line writes them), region, summary, overlay
        and the biopsy table (CSV) into a new folder ``outputDirectory/folderName`` and return that folder.

        The folder (default: the ki67 node's name) is replaced as a whole and atomically, so it is always a
        dedicated sub-folder: the chosen ``outputDirectory`` itself is never emptied. ``formats``: "nrrd",
        "nifti", and "dicom" — the radiation-planning export (:func:`KiMapLib.planning_export.export_planning`:
        Parametric Maps and an RT Structure Set of ``levels``) into ``<folder>_planning`` beside it, referencing
        the t1c DICOM series in ``referenceDicomDirectory``.
        """
        from KiMapLib import mapping

        dicom = "dicom" in formats
        formats = tuple(f for f in formats if f != "dicom") or (("nrrd",) if dicom else ())
        if dicom and not str(referenceDicomDirectory or "").strip():
            raise KiMapError("DICOM export needs the folder of the t1c DICOM series", input_name="t1c DICOM",
                             hint="choose the series the map was computed on")

        if ki67Node is None or ki67Node.GetAttribute(ATTRIBUTE_MAP) != "ki67":
            raise KiMapError("select a ki67 map computed by KiMap", input_name="map")
        formats = tuple(formats)
        if not formats:
            raise KiMapError("choose at least one format", input_name="export")
        if probabilityNode is None:
            probabilityNode = self.scene.GetNodeByID(ki67Node.GetAttribute(ATTRIBUTE_PARTNER) or "")
        if probabilityNode is None:
            raise KiMapError("the P(high) map of this ki67 map is not in the scene", input_name="map")
        if not str(outputDirectory).strip():
            raise KiMapError("no export folder chosen", input_name="export folder")
        parent = Path(outputDirectory)
        if parent.exists() and not parent.is_dir():
            raise KiMapError(f"{parent} is a file", input_name="export folder", hint="choose a folder")
        out_dir = parent / _safe_name(folderName or ki67Node.GetName())
        ki67 = sitk.Cast(image_from_node(ki67Node, "map"), sitk.sitkFloat32)
        probability = sitk.Cast(image_from_node(probabilityNode, "map"), sitk.sitkFloat32)
        region = geometry.copy_geometry(np.isfinite(sitk.GetArrayViewFromImage(ki67)).astype(np.uint8), ki67)
        t1c_node = self.scene.GetNodeByID(ki67Node.GetAttribute(ATTRIBUTE_T1C) or "")
        t1c = image_from_node(t1c_node, "t1c") if t1c_node is not None else None
        summary = json.loads(ki67Node.GetAttribute(ATTRIBUTE_SUMMARY) or "{}")
        summary["exported_from"] = "3D Slicer scene (KiMap module)"
        result = mapping.MapResult(ki67=ki67, probability=probability, region=region, t1c=t1c, summary=summary)
        with tempfile.TemporaryDirectory() as scratch:
            table_csv = write_table_csv(tableNode, Path(scratch) / "biopsies.csv") if tableNode is not None else None
            if dicom:  # first, so that a reference series that does not fit the map stops the export early
                from KiMapLib.planning_export import export_planning

                staged = mapping.write_map(result, Path(scratch) / "map", formats=("nrrd",), overlay=False)
                export_planning(staged, Path(referenceDicomDirectory), out_dir.with_name(f"{out_dir.name}_planning"),
                                levels=levels, progress=progress)
            mapping.write_map(result, out_dir, formats=formats, overlay=t1c is not None)
            if table_csv is not None:
                table_csv.replace(out_dir / "biopsies.csv")
        return out_dir


# --------------------------------------------------------------------------------------------------------------
# Helpers


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return cleaned or "kimap"


def write_table_csv(table_node, path: str | Path) -> Path:
    """A KiMap biopsy table as CSV (column names as in :data:`TABLE_COLUMNS`, empty for missing values)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = _table_values(table_node)
    names = [table_node.GetTable().GetColumn(i).GetName() for i in range(table_node.GetNumberOfColumns())]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()})
    tmp.replace(path)
    return path


def _unit(symbol: str):
    unit = slicer.vtkCodedEntry()
    if symbol == "%":
        unit.SetValueSchemeMeaning("%", "UCUM", "Percent")
    else:
        unit.SetValueSchemeMeaning("1", "UCUM", "no units")
    return unit


def _short(value, limit: int = 160) -> str:
    if isinstance(value, float):
        text = f"{value:.3g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_short(v, 40) for v in value)
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# --------------------------------------------------------------------------------------------------------------
# Headless scenes (slicer-core): set up, save/load .mrb, render a slice view


def setup_headless_scene(cache_dir: str | Path | None = None):
    """A MRML scene with the application and module logics KiMap needs, set as ``slicer.mrmlScene``.

    For ``slicer-core`` (no Slicer application). Inside Slicer, use ``slicer.mrmlScene`` instead.
    """
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    home = Path(tempfile.mkdtemp(prefix="kimap-slicer-home-"))  # no Slicer install: an empty ColorFiles folder
    (home / "share" / "ColorFiles").mkdir(parents=True)
    app.SetHomeDirectory(str(home))
    app.SetShareDirectory("share")
    app.SetMRMLScene(scene)
    app.GetColorLogic().SetMRMLScene(scene)
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    logics = {"Colors": slicer.vtkSlicerColorLogic, "Volumes": slicer.vtkSlicerVolumesLogic,
              "Markups": slicer.vtkSlicerMarkupsLogic, "Tables": slicer.vtkSlicerTablesLogic,
              "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic}
    kept = {}
    for name, cls in logics.items():
        logic = cls()
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(name, logic)
        kept[name] = logic
    remote_io = slicer.vtkMRMLRemoteIOLogic()
    remote_io.SetMRMLScene(scene)
    data_io = slicer.vtkDataIOManagerLogic()
    data_io.SetMRMLApplicationLogic(app)
    data_io.SetAndObserveDataIOManager(remote_io.GetDataIOManager())
    cache = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="kimap-cache-"))
    remote_io.GetCacheManager().SetRemoteCacheDirectory(str(cache))
    scene.SetCacheManager(remote_io.GetCacheManager())
    scene.SetDataIOManager(remote_io.GetDataIOManager())
    _headless.update(app=app, logics=kept, remote_io=remote_io, data_io=data_io, scene=scene)
    slicer.mrmlScene = scene
    return scene


def save_scene_mrb(path: str | Path, scene=None) -> Path:
    """Write the scene with all its data as a Slicer ``.mrb`` bundle."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scene = scene or slicer.mrmlScene
    if not scene.WriteToMRB(str(path)):
        raise KiMapError(f"could not write {path}", input_name="scene")
    return path


def load_scene_mrb(path: str | Path, scene=None):
    """Read a ``.mrb`` into ``scene`` (a fresh headless scene by default); returns the scene."""
    scene = scene or setup_headless_scene()
    if not Path(path).exists() or not scene.ReadFromMRB(str(path)):
        raise KiMapError(f"could not read {path}", input_name="scene")
    return scene


def _slice_logic(name: str, scene):
    """A slice logic on the scene's slice node ``name`` (created when the scene has none)."""
    slice_logic = slicer.vtkMRMLSliceLogic()
    if _headless.get("app") is not None:
        slice_logic.SetMRMLApplicationLogic(_headless["app"])
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
