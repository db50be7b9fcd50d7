"""The console API, :class:`KiMapLogic`: Slicer nodes in, Slicer nodes out (called by the module and the web app).

It runs inside 3D Slicer and on the ``slicer-core`` wheel (no Qt, no application): nothing here opens a dialog or
touches the layout. Bad input raises :class:`KiMapLib.errors.KiMapError` with a one-line message *before* any node
is added or changed, so a failed or cancelled call leaves the scene as it was.

Map nodes keep the files' convention: NaN outside the mapped region. Slicer's slice pipeline (the same CPU reslice +
threshold + blend in Slicer and in ``vtkMRMLSliceLogic`` on slicer-core, checked by the tests) makes NaN voxels
transparent because they fail the display threshold, as are values below ``lowerThreshold``.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer

from KiMapLib.atomic import atomic_directory
from KiMapLib.errors import GeometryError, KiMapError
from KiMapLib.inputs import geometry
from KiMapLib.maps.summary import check_summary, read_summary
from KiMapLib.outputs import check_output_folder
from KiMapLib.progress import ProgressCallback, report, scaled
from KiMapLib.slicer import loading
from KiMapLib.slicer.dependencies import dependency_message, require_dependencies
from KiMapLib.slicer.display import (
    ATTRIBUTE_MAP,
    ATTRIBUTE_MODEL,
    ATTRIBUTE_PARTNER,
    ATTRIBUTE_SUMMARY,
    ATTRIBUTE_T1C,
    ATTRIBUTE_TABLE,
    MAP_KINDS,
    UNCERTAINTY_KINDS,
    color_table_node,
    partner_attribute,
    set_map_display,
    unit,
)
from KiMapLib.slicer.markups import biopsies_from_markups, check_points_inside
from KiMapLib.slicer.nodes import image_from_node, region_image, update_node_from_image, volume_images
from KiMapLib.slicer.segments import fill_tumour_segments, tumour_labels
from KiMapLib.slicer.tables import fill_table, measured_ki67_from_table, write_table_csv


@dataclass
class MapJob:
    """The checked inputs of one map (see :meth:`KiMapLogic.prepareMap`); ``run`` touches no MRML node."""

    case: object
    region: sitk.Image | None
    model: object
    t1c_node: object
    covariates: dict[str, object] | None = None
    allow_t1c_only: bool = False
    exclude_labels: tuple[int, ...] = ()
    proposal: dict | None = None  # the summary of the automatic proposal the region was reviewed from, if any

    def run(self, progress: ProgressCallback | None = None):
        """Compute the map (:func:`KiMapLib.maps.mapping.compute_map`); ``progress`` returning False cancels."""
        from KiMapLib.maps import mapping

        result = mapping.compute_map(self.case, self.model, region=self.region, covariates=self.covariates,
                                     progress=progress, allow_t1c_only=self.allow_t1c_only,
                                     exclude_labels=self.exclude_labels)
        if self.proposal:  # a reviewed (perhaps edited) automatic proposal: keep what made it
            result.summary["tumour_region"]["proposal"] = self.proposal
        return result


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
        """The packaged model (``path=None``) or a model bundle folder/file; see ``KiMapLib.model.bundle``."""
        require_dependencies()
        from KiMapLib.model.bundle import load_model

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
        from KiMapLib.inputs.case import prepare_case

        images = volume_images(volume_nodes)
        report(progress, 0.0, "checking volumes")
        required = tuple(getattr(model, "required_sequences", ()) or ()) or None
        return prepare_case(images, settings=getattr(model, "settings", None), required=required)

    # -- inputs -------------------------------------------------------------------------------------------------

    def loadVolume(self, path: str | Path, sequence: str | None = None, name: str | None = None):
        """A volume file (NRRD, NIfTI, MHA) or a DICOM series folder as a new scalar volume node.

        Read exactly as the command line reads it (RAS/LPS in one place); a DICOM folder is remembered on the node
        (attribute ``KiMap.DicomFolder``) as the reference of a DICOM planning export."""
        return loading.read_volume_node(self.scene, path, sequence, name)

    def loadRegion(self, path: str | Path, t1cNode):
        """A tumour label file as an editable segmentation on the t1c grid: BraTS labels (1-4) as KiMap's three tumour
        segments (the necrotic core is not mapped), a one-value mask as one segment, other values as ``label N``."""
        return loading.read_region_node(self.scene, path, t1cNode)

    def loadBiopsies(self, path: str | Path, markupsNode=None, patientId: str | None = None):
        """Biopsy points from a CSV (RAS mm) or ``.mrk.json`` into a point list (new or ``markupsNode``); measured
        ki67 in the file goes into the point list's biopsy table."""
        from KiMapLib.inputs.biopsies import read_biopsies

        biopsies = read_biopsies(path, patientId)
        return loading.markups_from_biopsies(self.scene, biopsies, markups_node=markupsNode)

    def loadDemoCase(self, seed: int | None = None) -> dict[str, object]:
        """The synthetic demo case (SYNTHETIC DATA; the patient ``kimap demo`` maps) as nodes, nothing on disk:
        ``{"volumes": {"t1c": node, "t2": ..., "flair": ..., "adc": ...}, "region": segmentation (KiMap's three
        tumour segments, from the phantom's truth), "biopsies": empty point list, "covariates": {...},
        "patient_id", "notice"}``."""
        from KiMapLib.phantom import DEMO_SEED

        return loading.demo_case_nodes(self.scene, DEMO_SEED if seed is None else seed)

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
        require_dependencies()
        from KiMapLib.inputs.biopsies import check_covariate_values, check_ki67
        from KiMapLib.model import prediction

        covariates = check_covariate_values(covariates)  # every input is checked before any work
        biopsies = biopsies_from_markups(markupsNode, patientId, covariates)
        measured = measured_ki67_from_table(tableNode)
        measured.update({str(label): check_ki67(value, f"point {label}", "measured ki67", "measuredKi67")
                         for label, value in (measuredKi67 or {}).items()})
        model = self._resolve_model(model)
        case = self._case(volumeNodes, model, scaled(progress, 0.0, 0.1))
        check_points_inside(biopsies, case.reference)
        for biopsy in biopsies:
            biopsy.ki67 = measured.get(biopsy.biopsy_id)
        rows, errors = prediction.predict_biopsies(case, biopsies, model, progress=scaled(progress, 0.1, 0.95),
                                                   explain=True)
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
            if row.get("out_of_domain"):
                note = "out of the model's domain (features unlike its training biopsies)"
            records.append({"biopsy": biopsy.biopsy_id, "predicted_ki67": row.get("predicted_ki67"),
                            "ki67_lower": row.get("ki67_lower"), "ki67_upper": row.get("ki67_upper"),
                            "probability_high": row.get("probability_high"), "ood_score": row.get("ood_score"),
                            "measured_ki67": biopsy.ki67, "r": r, "a": a, "s": s,
                            "drivers": _drivers(row), "note": note})
        report(progress, 0.97, "filling the table")
        if tableNode is None:
            tableNode = self.scene.AddNewNodeByClass(
                "vtkMRMLTableNode", self.scene.GenerateUniqueName(f"{markupsNode.GetName()} ki67"))
        fill_table(tableNode, records)
        tableNode.SetAttribute(ATTRIBUTE_MODEL, str(getattr(model, "model_id", "")))
        markupsNode.SetAttribute(ATTRIBUTE_TABLE, tableNode.GetID())
        report(progress, 1.0, "done")
        return tableNode

    # -- map ----------------------------------------------------------------------------------------------------

    def proposeTumorRegion(self, volumeNodes: Mapping[str, object], segmentationNode=None,
                           allowT1cOnly: bool = False, progress: ProgressCallback | None = None,
                           segmentationModel: str | Path | None = None):
        """The automatic tumour segmentation from every given sequence, as a segmentation node to edit.

        Three named, colored segments (necrotic core, oedema / non-enhancing tumour, enhancing tumour) on the t1c
        grid; :meth:`computeMap` with this node maps the visible segments except the necrotic core. A proposal that
        fails its plausibility checks (normal anatomy, t1c only unless ``allowT1cOnly``) raises one line saying what
        to do, and the scene is left as it was. ``segmentationNode`` (optional) is refilled in place.
        ``segmentationModel``: the folder of the user's own segmentation model (``model.onnx`` and
        ``segmentation_card.json``, verified by its sha256) to use instead of the automatic method.
        """
        from KiMapLib.inputs.case import prepare_case
        from KiMapLib.region.model_region import model_region
        from KiMapLib.region.onnx_model import load_segmentation_model
        from KiMapLib.region.tumour_region import propose_region, require_plausible

        report(progress, 0.0, "checking volumes")
        segmenter = load_segmentation_model(segmentationModel) if segmentationModel else None
        images = volume_images(volumeNodes)
        case = prepare_case(images)
        report(progress, 0.1, "segmenting the tumour")
        if segmenter is not None:
            tumour = model_region(case, segmenter, images, scaled(progress, 0.1, 0.9))
        else:
            tumour = propose_region(case)
        require_plausible(tumour, allowT1cOnly)
        report(progress, 0.9, "making segments")
        t1c_node = volumeNodes["t1c"]
        staging = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")  # the user's node changes only on success
        try:
            fill_tumour_segments(staging, tumour.label_image(case.reference), t1c_node)
            if segmentationNode is None:
                segmentationNode = self.scene.AddNewNodeByClass(
                    "vtkMRMLSegmentationNode", self.scene.GenerateUniqueName(f"{t1c_node.GetName()} tumour"))
                segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(t1c_node)
            segmentationNode.GetSegmentation().DeepCopy(staging.GetSegmentation())
        finally:
            self.scene.RemoveNode(staging)
        segmentationNode.SetAttribute(ATTRIBUTE_SUMMARY, json.dumps(_jsonable(tumour.summary(
            case.reference.GetSpacing()))))
        report(progress, 1.0, "done")
        return segmentationNode

    def computeMap(self, volumeNodes: Mapping[str, object], regionNode=None, model=None, ki67Node=None,
                   probabilityNode=None, covariates: Mapping[str, object] | None = None,
                   lowerThreshold: float = 0.0, progress: ProgressCallback | None = None,
                   allowT1cOnly: bool = False):
        """The ki67 (%) and P(high) maps over the viable tumour, as two scalar volume nodes on the t1c grid.

        ``regionNode``: a labelmap/scalar volume (voxels > 0), a segmentation (its visible segments; for KiMap's
        tumour segments, all but the necrotic core), or None for the automatic tumour segmentation (refused when it
        is not plausible). Existing ``ki67Node``/``probabilityNode`` are overwritten, otherwise new nodes are added.
        Display: KiMap's color table, window 0-100 % (0-1), values below ``lowerThreshold`` and outside the region
        transparent. Returns ``(ki67Node, probabilityNode)``. The same as :meth:`prepareMap`, ``job.run()`` and
        :meth:`addMapNodes` in a row.
        """
        job = self.prepareMap(volumeNodes, regionNode, model, covariates, allowT1cOnly=allowT1cOnly,
                              progress=scaled(progress, 0.0, 0.05))
        result = job.run(scaled(progress, 0.05, 0.97))
        # Everything below only adds/updates nodes: all checks and the computation are done.
        nodes = self.addMapNodes(job, result, ki67Node, probabilityNode, lowerThreshold)
        report(progress, 1.0, "done")
        return nodes

    def prepareMap(self, volumeNodes: Mapping[str, object], regionNode=None, model=None,
                   covariates: Mapping[str, object] | None = None, allowT1cOnly: bool = False,
                   progress: ProgressCallback | None = None):
        """Read and check the inputs of :meth:`computeMap` from the scene; returns a :class:`MapJob`.

        For front ends that compute off the scene's thread (the web app): ``job.run(progress)`` reads and writes
        no node, so it may run in a worker thread; :meth:`addMapNodes` then adds its result on the scene's thread.
        """
        require_dependencies()
        from KiMapLib.inputs.biopsies import check_covariate_values
        from KiMapLib.region.tumour_region import given_region

        covariates = check_covariate_values(covariates)  # every input is checked before the map is computed
        model = self._resolve_model(model)
        case = self._case(volumeNodes, model, progress)
        t1c_node = volumeNodes["t1c"]
        region, exclude = None, ()
        proposal = None
        if regionNode is not None and regionNode.IsA("vtkMRMLSegmentationNode"):
            region = tumour_labels(regionNode, t1c_node)
            exclude = (1,) if region is not None else ()
            proposal = json.loads(regionNode.GetAttribute(ATTRIBUTE_SUMMARY) or "null")
        if region is None:
            region = region_image(regionNode, t1c_node)
        if region is not None:  # checked here, before the computation: empty or foreign regions stop at once
            region = given_region(region, case.reference, "tumor region", exclude)
        return MapJob(case=case, region=region, model=model, t1c_node=t1c_node, covariates=covariates or None,
                      allow_t1c_only=allowT1cOnly, exclude_labels=exclude, proposal=proposal or None)

    def addMapNodes(self, job: MapJob, result, ki67Node=None, probabilityNode=None, lowerThreshold: float = 0.0):
        """The map nodes of a finished :class:`MapJob` (``result`` = ``job.run()``): ``(ki67Node, probabilityNode)``;
        the interval bounds and the out-of-domain map come with them (:meth:`mapNodes`)."""
        extras = {kind: getattr(result, kind, None) for kind in UNCERTAINTY_KINDS}
        return self._writeMapNodes(job.t1c_node, result.ki67, result.probability, getattr(result, "summary", {}),
                                   str(getattr(job.model, "model_id", "")), ki67Node, probabilityNode,
                                   lowerThreshold, extras)

    def mapNodes(self, ki67Node) -> dict[str, object]:
        """Every node of a ki67 map by kind: "ki67", "probability", and — for models with prediction intervals —
        "lower", "upper" (the interval bounds, %) and "ood" (out-of-domain score, > 1 = outside the training data)."""
        nodes = {"ki67": ki67Node}
        for kind in ("probability", *UNCERTAINTY_KINDS):
            node = self.scene.GetNodeByID(ki67Node.GetAttribute(partner_attribute(kind)) or "")
            if node is not None:
                nodes[kind] = node
        return nodes

    def loadMap(self, mapDirectory: str | Path, t1cNode, lowerThreshold: float = 0.0):
        """Load a map written by ``kimap map`` / :meth:`exportMap` (``ki67_map.nrrd`` or ``.nii.gz``, the
        probability and ``summary.json``) as display-ready nodes on ``t1cNode``'s grid."""
        folder = Path(mapDirectory)
        images = {}
        for key in ("ki67", "probability", *UNCERTAINTY_KINDS):
            stem = MAP_KINDS[key][5]
            path = next((folder / f"{stem}{suffix}" for suffix in (".nrrd", ".nii.gz") if (folder / f"{stem}{suffix}")
                         .is_file()), None)
            if path is None and key in UNCERTAINTY_KINDS:
                continue  # maps of models without prediction intervals
            if path is None:
                raise KiMapError(f"no {stem}.nrrd or {stem}.nii.gz in {folder}", input_name="map folder",
                                 hint="give a folder written by `kimap map`")
            images[key] = sitk.ReadImage(str(path), sitk.sitkFloat32)
        reference = image_from_node(t1cNode, "t1c")
        for image in images.values():
            if not geometry.same_grid(image, reference):
                raise GeometryError("the map is not on this t1c volume's grid", input_name="map folder",
                                    hint="select the t1c the map was computed on")
        summary = read_summary(folder / "summary.json", "map folder")
        return self._writeMapNodes(t1cNode, images["ki67"], images["probability"], summary,
                                   str(summary.get("model_id", "")), None, None, lowerThreshold,
                                   {kind: images.get(kind) for kind in UNCERTAINTY_KINDS})

    def _writeMapNodes(self, t1c_node, ki67, probability, summary, model_id, ki67_node, probability_node,
                       lower_threshold, extras: Mapping[str, object] | None = None):
        color_node = color_table_node(self.scene)
        base = t1c_node.GetName()
        summary_text = json.dumps(_jsonable(summary or {}))
        nodes = {}
        images = {"ki67": ki67, "probability": probability,
                  **{kind: image for kind, image in (extras or {}).items() if image is not None}}
        given = {"ki67": ki67_node, "probability": probability_node}
        if ki67_node is not None:  # recomputing into the same ki67 node reuses its partners
            given.update({kind: self.scene.GetNodeByID(ki67_node.GetAttribute(partner_attribute(kind)) or "")
                          for kind in UNCERTAINTY_KINDS})
        for kind, image in images.items():
            node = given.get(kind) or self.scene.AddNewNodeByClass(
                "vtkMRMLScalarVolumeNode", self.scene.GenerateUniqueName(f"{base} {MAP_KINDS[kind][4]}"))
            update_node_from_image(node, sitk.Cast(image, sitk.sitkFloat32), reference_node=t1c_node)
            node.SetAttribute(ATTRIBUTE_MAP, kind)
            node.SetAttribute(ATTRIBUTE_MODEL, model_id)
            node.SetAttribute(ATTRIBUTE_SUMMARY, summary_text)
            node.SetAttribute(ATTRIBUTE_T1C, t1c_node.GetID())
            node.SetVoxelValueUnits(unit(MAP_KINDS[kind][3]))
            set_map_display(node, lower_threshold=lower_threshold if kind == "ki67" else None, color_node=color_node)
            nodes[kind] = node
        for kind, node in nodes.items():
            if kind != "ki67":
                nodes["ki67"].SetAttribute(partner_attribute(kind), node.GetID())
        return nodes["ki67"], nodes["probability"]

    # -- export -------------------------------------------------------------------------------------------------

    def exportMap(self, ki67Node, outputDirectory: str | Path, probabilityNode=None, tableNode=None,
                  formats: tuple[str, ...] | list[str] = ("nrrd", "nifti"), folderName: str | None = None,
                  referenceDicomDirectory: str | Path | None = None, levels: list[str] | None = None,
                  progress: ProgressCallback | None = None) -> Path:
        """Write the maps (NaN outside the region, as the command line writes them), region, summary, overlay
        and the biopsy table (CSV) into a new folder ``outputDirectory/folderName`` and return that folder.

        The folder (default: the ki67 node's name) is replaced as a whole and atomically, so it is always a
        dedicated sub-folder: the chosen ``outputDirectory`` itself is never emptied, and an existing sub-folder
        is replaced only when it is an earlier, unchanged KiMap map (its manifest); a folder holding a file the
        scene was loaded from is refused before anything is written (KiMapLib.outputs). ``formats``: "nrrd",
        "nifti", and "dicom" — the radiation-planning export (:func:`KiMapLib.export.planning.export_planning`:
        Parametric Maps and an RT Structure Set of ``levels``) into ``<folder>_planning`` beside it, referencing
        the t1c DICOM series in ``referenceDicomDirectory``.
        """
        from KiMapLib.maps import mapping

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
        planning_dir = out_dir.with_name(f"{out_dir.name}_planning")
        inputs = [*self._scene_files(), ("t1c DICOM", referenceDicomDirectory if dicom else None)]
        check_output_folder(out_dir, "map", inputs, option="export folder")
        if dicom:
            check_output_folder(planning_dir, "export", inputs, option="export folder")
        ki67 = sitk.Cast(image_from_node(ki67Node, "map"), sitk.sitkFloat32)
        probability = sitk.Cast(image_from_node(probabilityNode, "map"), sitk.sitkFloat32)
        region = geometry.copy_geometry(np.isfinite(sitk.GetArrayViewFromImage(ki67)).astype(np.uint8), ki67)
        t1c_node = self.scene.GetNodeByID(ki67Node.GetAttribute(ATTRIBUTE_T1C) or "")
        t1c = image_from_node(t1c_node, "t1c") if t1c_node is not None else None
        try:
            summary = check_summary(json.loads(ki67Node.GetAttribute(ATTRIBUTE_SUMMARY) or "{}"), "map")
        except ValueError as error:
            raise error if isinstance(error, KiMapError) else KiMapError(
                f"the map's {ATTRIBUTE_SUMMARY} attribute is not valid JSON", input_name="map") from None
        summary["exported_from"] = "3D Slicer scene (KiMap module)"
        extras = {kind: sitk.Cast(image_from_node(node, "map"), sitk.sitkFloat32)
                  for kind, node in self.mapNodes(ki67Node).items() if kind in UNCERTAINTY_KINDS}
        result = mapping.MapResult(ki67=ki67, probability=probability, region=region, t1c=t1c, summary=summary,
                                   **extras)
        if dicom:  # first, so that a reference series that does not fit the map stops the export early
            from KiMapLib.export.planning import export_planning

            with tempfile.TemporaryDirectory() as scratch:
                staged = mapping.write_map(result, Path(scratch) / "map", formats=("nrrd",), overlay=False)
                export_planning(staged, Path(referenceDicomDirectory), planning_dir, levels=levels,
                                progress=progress)
        with atomic_directory(out_dir, "map", option="export folder") as staging:
            mapping.write_map_files(result, staging, formats, overlay=t1c is not None)
            if tableNode is not None:
                write_table_csv(tableNode, staging / "biopsies.csv")
        return out_dir

    def _scene_files(self) -> list[tuple[str, Path]]:
        """The files the scene's nodes were loaded from or are stored in (no export may overwrite or hold one)."""
        files = []
        for node in self.scene.GetNodesByClass("vtkMRMLStorableNode"):
            storage = node.GetStorageNode()
            if storage is None:
                continue
            names = {storage.GetFileName(), *(storage.GetNthFileName(i) for i in range(storage.GetNumberOfFileNames()))}
            files += [(f"scene file of '{node.GetName()}'", Path(name)) for name in sorted(n for n in names if n)]
        return files


def _drivers(row: dict) -> str:
    """The three largest contributions of a prediction row, e.g. ``adc_original_firstorder_Mean -4.1``."""
    parts = [f"{row[f'contribution_{rank}_feature']} {row[f'contribution_{rank}_ki67']:+.1f}"
             for rank in (1, 2, 3) if row.get(f"contribution_{rank}_feature")]
    return "; ".join(parts)


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return cleaned or "kimap"


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
