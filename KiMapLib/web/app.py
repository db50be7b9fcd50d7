"""KiMap in the browser: trame-slicer's scene, slice views and segment editor, and KiMap's side panel.

A thin composition: every step calls :class:`KiMapLib.slicer.KiMapLogic` (the methods the Qt module calls), and
the slice views are rendered on the server (the browser shows images). A failed step shows one message naming
its input (the :class:`KiMapLib.errors.KiMapError` text) and leaves the scene as it was. The map is computed in a
worker thread (:meth:`KiMapLogic.prepareMap` / ``job.run`` / :meth:`KiMapLogic.addMapNodes`): the page keeps
updating, shows progress, and Cancel stops it with nothing added.
"""

from __future__ import annotations

import asyncio
import html as html_text
import io
import logging
import tempfile
import threading
import zipfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import slicer
from trame.app import TrameApp, get_server
from trame_server.utils.typed_state import TypedState
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic import SegmentEditorLogic
from trame_slicer.app.ui import LoadVolumeButton, LoadVolumeItemsState, SegmentEditorUI
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.utils import write_client_files_to_dir
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

from KiMapLib.errors import Cancelled, KiMapError
from KiMapLib.slicer import KiMapLogic, set_map_display
from KiMapLib.slicer.display import ATTRIBUTE_PARTNER
from KiMapLib.web import views
from KiMapLib.web.legend import legend
from KiMapLib.web.panel import build_page
from KiMapLib.web.session import KiMapSession, covariates_text, default_export_folder, safe_card_html

log = logging.getLogger(__name__)
LAYOUT_ID = "KiMap: axial + sagittal + coronal"
RESEARCH_NOTICE = "Research use only: not a medical device; no clinical validity is claimed."


class KiMapWebApp(TrameApp):
    """One KiMap page on one MRML scene (``slicer_app.scene``); ``logic`` is the shared MRML adapter."""

    def __init__(self, server=None, *, model_path: str | Path | None = None, export_folder: str | Path | None = None):
        super().__init__(server)
        self.server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        slicer.mrmlScene = self.slicer_app.scene  # slicer.util helpers default to it
        self.logic = KiMapLogic(self.slicer_app.scene)
        self.session = KiMapSession(self.logic)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="kimap-map")
        self._cancel = threading.Event()
        self._uploads = Path(tempfile.mkdtemp(prefix="kimap-web-uploads-"))  # DICOM folders stay for the export
        self._export_folder: Path | None = None
        self._observed_markups: tuple[object, list[int]] | None = None
        self._points_update: asyncio.Handle | None = None
        self._map_task: asyncio.Task | None = None

        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration(), lazy_initialization=True)
        self.layout_manager.register_layout(LAYOUT_ID, Layout(LayoutDirection.Horizontal, [
            ViewLayoutDefinition.axial_view(),
            Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.sagittal_view(),
                                              ViewLayoutDefinition.coronal_view()]),
        ], flex_sizes=["2", "1"]))
        self.layout_manager.set_layout(LAYOUT_ID)
        self.segment_editor_logic = SegmentEditorLogic(self.server, self.slicer_app)
        views.window_level_mode(self.slicer_app)

        self._init_state(export_folder)
        self.ui = build_page(self)
        self.state.change("km_region_id")(self._on_region_changed)
        self.state.change("km_opacity")(self._on_opacity)
        self.state.change("km_threshold")(self._on_threshold)
        self.state.change("km_layer")(self._on_layer)
        self._use_model(model_path)

    # -- page pieces (used by KiMapLib.web.panel) ----------------------------------------------------------------

    def build_segment_editor(self) -> None:
        editor = SegmentEditorUI()
        self.segment_editor_logic.set_ui(editor)

    def build_upload(self, text: str, handler: Callable, *, directory: bool, icon: str) -> None:
        """trame-slicer's chunked file (or folder) upload, labelled; ``handler(list of client files)``."""
        from trame.widgets import html

        from KiMapLib.web.panel import aria

        namespace = f"km_upload_{len(text)}_{abs(hash(text)) % 10_000}"
        with html.Div(classes="d-flex align-center mr-2 mb-2", raw_attrs=aria(text, role="group")):
            button = LoadVolumeButton(name=text, load_directory=directory, icon=icon,
                                      typed_state=TypedState(self.state, LoadVolumeItemsState, namespace=namespace),
                                      style="width: 36px; height: 36px;")
            html.Span(text, classes="text-caption")
        button.on_load_volume.connect(handler)

    # -- state ----------------------------------------------------------------------------------------------------

    def _init_state(self, export_folder) -> None:
        state = self.state
        state.trame__title = "KiMap"
        state.update({
            "km_busy": False, "km_computing": False, "km_status": "Load volumes or the demo case to start.",
            "km_error": "", "km_notice": "", "km_volume_items": [], "km_volume_rows": self.session.volume_rows(),
            "km_has_volumes": False, "km_model_card": "", "km_model_notice": RESEARCH_NOTICE, "km_model_path": "",
            "km_region_items": [], "km_region_id": None, "km_segments": [],
            "km_can_propose": hasattr(self.logic, "proposeTumorRegion"), "km_placing": False, "km_biopsies": [],
            "km_progress": 0.0, "km_progress_text": "", "km_legend": None, "km_opacity": 0.6, "km_threshold": 0.0,
            "km_layer": "ki67", "km_layers": [], "km_uncertainty": "",
            "km_export_dir": str(export_folder or default_export_folder()), "km_export_nrrd": True,
            "km_export_nifti": True, "km_export_dicom": False, "km_can_dicom": False, "km_exported": "",
            "km_tab": "kimap",
        })

    def refresh(self) -> None:
        """Copy what the session holds into the page's state."""
        session = self.session
        model = session.model
        required = tuple(getattr(model, "required_sequences", ()) or ())
        with self.state as state:
            state.km_volume_items = session.candidate_volumes()
            state.km_volume_rows = session.volume_rows(required)
            state.km_has_volumes = session.t1c() is not None
            state.km_region_items = [{"title": node.GetName(), "value": node.GetID()} for cls in
                                     ("vtkMRMLSegmentationNode", "vtkMRMLLabelMapVolumeNode")
                                     for node in self.slicer_app.scene.GetNodesByClass(cls)
                                     if not node.GetHideFromEditors()]
            state.km_region_id = session.region_id
            state.km_segments = session.segment_rows()
            state.km_biopsies = session.biopsy_rows()
            state.km_layers = session.map_layers()
            if state.km_layer not in {item["value"] for item in state.km_layers}:
                state.km_layer = "ki67"
            state.km_legend = legend(session.map_layer(state.km_layer))
            state.km_uncertainty = session.uncertainty_text()
            state.km_can_dicom = bool(session.dicom_folder())

    def _fail(self, error: Exception, what: str) -> None:
        message = str(error) if isinstance(error, KiMapError) else f"{what} failed: {error}"
        if not isinstance(error, KiMapError):
            log.exception("KiMap web: %s failed", what)
        with self.state as state:
            state.km_error = message
            state.km_status = f"{what} failed; nothing was changed."

    def _step(self, what: str, function: Callable[[], str | None]) -> None:
        """Run one short step on the page's thread: busy while it runs, its message or its one error after."""
        with self.state as state:
            state.km_busy, state.km_error = True, ""
        try:
            message = function()
        except Exception as error:  # KiMapError: the input's message; anything else is logged with its trace
            self._fail(error, what)
        else:
            with self.state as state:
                state.km_status = message or f"{what}: done."
        finally:
            self.refresh()
            with self.state as state:
                state.km_busy = False

    # -- images ---------------------------------------------------------------------------------------------------

    def load_demo_case(self) -> None:
        def run():
            case = self.logic.loadDemoCase()
            self._adopt_volumes(case["volumes"])
            self.session.region_id = case["region"].GetID()
            self._use_markups(case["biopsies"])
            self.session.covariates = dict(case["covariates"])
            self.session.synthetic = True
            self._show_case()
            self.state.km_notice = case["notice"]
            return (f"Demo case {case['patient_id']} loaded ({case['notice']}; "
                    f"{covariates_text(case['covariates'])}). Place a point in a slice view, then Predict biopsies.")

        self._step("Load demo case", run)

    def load_volume_paths(self, paths: Mapping[str, str | Path]) -> None:
        """Volumes given on the command line, ``{sequence: path}`` (a DICOM series folder is fine)."""
        def run():
            nodes = {sequence: self.logic.loadVolume(path, sequence) for sequence, path in paths.items()}
            self._adopt_volumes(nodes)
            self._show_case()
            return f"Loaded {', '.join(nodes)}."

        self._step("Load volumes", run)

    async def upload_volumes(self, files: list[dict]) -> None:
        def run():
            folder = Path(tempfile.mkdtemp(dir=self._uploads))
            nodes = [self.logic.loadVolume(path) for path in sorted(write_client_files_to_dir(files, folder))]
            for node in nodes:
                self.session.assign(node)  # by its name (t1c, T2, FLAIR, ADC, T1); change it in the table
            self._show_case()
            return f"Loaded {', '.join(node.GetName() for node in nodes)}; check the sequence assignment."

        self._step("Load volume files", run)

    async def upload_dicom(self, files: list[dict]) -> None:
        def run():
            folder = Path(tempfile.mkdtemp(dir=self._uploads))
            write_client_files_to_dir(files, folder)
            node = self.logic.loadVolume(folder)
            sequence = self.session.assign(node)
            self._show_case()
            return f"Loaded the DICOM series as {node.GetName()}" + (f" ({sequence})." if sequence else
                                                                    "; assign its sequence.")

        self._step("Load DICOM folder", run)

    def assign_volume(self, slot: str, node_id: str | None) -> None:
        def run():
            self.session.assignment[slot] = node_id or None
            if slot == "t1c":
                self._show_case()
            return f"{slot}: {self.session.node(node_id).GetName() if node_id else 'none'}."

        self._step("Assign volume", run)

    def _adopt_volumes(self, nodes: Mapping[str, object]) -> None:
        for sequence, node in nodes.items():
            self.session.assign(node, sequence)

    def _show_case(self) -> None:
        t1c = self.session.t1c()
        if t1c is None:
            return
        views.show_background(self.slicer_app, t1c)
        region = self.session.region()
        views.show_region_outline(region)
        if region is not None and region.IsA("vtkMRMLSegmentationNode"):
            self.slicer_app.segmentation_editor.set_active_segmentation(region, t1c)
        centre = self._region_centre()
        if centre is not None:
            views.center_views_on(self.slicer_app, centre)

    def _region_centre(self):
        region = self.session.region()
        if region is None or not region.IsA("vtkMRMLSegmentationNode"):
            return None
        bounds = [0.0] * 6
        region.GetRASBounds(bounds)
        if bounds[0] > bounds[1]:
            return None
        return [(bounds[2 * i] + bounds[2 * i + 1]) / 2 for i in range(3)]

    # -- model ----------------------------------------------------------------------------------------------------

    def _use_model(self, path) -> None:
        try:
            self.session.model = self.logic.loadModel(path or None)
        except KiMapError as error:
            self.session.model = None
            with self.state as state:
                state.km_model_card = f"<b>No model</b>: {html_text.escape(str(error))}"
                state.km_error = str(error)
            return
        with self.state as state:
            state.km_model_card = safe_card_html(self.logic.modelCardText(self.session.model))
            state.km_model_path = str(path or "")
        self.refresh()

    def load_model_bundle(self) -> None:
        path = (self.state.km_model_path or "").strip()

        def run():
            if not path:
                raise KiMapError("no folder given", input_name="model", hint="type the model bundle folder")
            model = self.logic.loadModel(path)
            self.session.model = model
            self.state.km_model_card = safe_card_html(self.logic.modelCardText(model))
            return f"Model {getattr(model, 'model_id', path)} loaded (research use only)."

        self._step("Load model", run)

    def load_packaged_model(self) -> None:
        def run():
            self.session.model = self.logic.loadModel()
            self.state.km_model_card = safe_card_html(self.logic.modelCardText(self.session.model))
            self.state.km_model_path = ""
            return "Packaged model in use (research use only)."

        self._step("Load model", run)

    # -- region ---------------------------------------------------------------------------------------------------

    def _on_region_changed(self, km_region_id=None, **_):
        if km_region_id != self.session.region_id:
            self.session.region_id = km_region_id or None
            self._show_case()
            self.refresh()

    def propose_region(self) -> None:
        def run():
            region = self.logic.proposeTumorRegion(self.session.volume_nodes())  # a new node: nothing is overwritten
            self.session.region_id = region.GetID()
            self._show_case()
            return "Tumour region proposed: check and edit its segments (Segment editor) before mapping."

        self._step("Propose tumour region", run)

    async def upload_region(self, files: list[dict]) -> None:
        def run():
            t1c = self.session.t1c()
            if t1c is None:
                raise KiMapError("load the t1c first", input_name="tumour region", hint="the region is on its grid")
            folder = Path(tempfile.mkdtemp(dir=self._uploads))
            paths = write_client_files_to_dir(files, folder)
            region = self.logic.loadRegion(paths[0] if len(paths) == 1 else folder, t1c)
            self.session.region_id = region.GetID()
            self._show_case()
            count = region.GetSegmentation().GetNumberOfSegments()
            return f"Tumour region {region.GetName()} loaded ({count} segments)."

        self._step("Load label file", run)

    def set_segment_mapped(self, segment_id: str, mapped: bool) -> None:
        self.session.set_segment_mapped(segment_id, mapped)
        self.refresh()

    # -- biopsies -------------------------------------------------------------------------------------------------

    def _use_markups(self, markups) -> None:
        if self._observed_markups is not None:
            node, tags = self._observed_markups
            for tag in tags:
                node.RemoveObserver(tag)
        self.session.markups_id = markups.GetID()
        markups.SetMarkupLabelFormat("B%d")
        events = (markups.PointAddedEvent, markups.PointRemovedEvent, markups.PointModifiedEvent,
                  markups.PointPositionDefinedEvent, markups.PointEndInteractionEvent)
        self._observed_markups = (markups, [markups.AddObserver(e, self._on_points_changed) for e in events])

    def _on_points_changed(self, *_):
        """Points placed, moved or removed in a view: update the table once the burst of events is over."""
        if self._points_update is None:
            self._points_update = asyncio.get_event_loop().call_later(0.15, self._update_points)

    def _update_points(self) -> None:
        self._points_update = None
        with self.state as state:
            state.km_biopsies = self.session.biopsy_rows()

    def load_biopsy_file(self, path: str | Path) -> None:
        def run():
            markups = self.logic.loadBiopsies(path, self.session.markups())
            self._use_markups(markups)
            return f"{markups.GetNumberOfControlPoints()} biopsy points loaded from {Path(path).name}."

        self._step("Load biopsies", run)

    def toggle_placing(self) -> None:
        markups_logic = self.slicer_app.markups_logic
        if self.state.km_placing:
            self._stop_placing()
            return
        if self.session.markups() is None:
            self._use_markups(self.session.ensure_markups())
        markups_logic.place_node(self.session.markups(), persistent=True)
        self.state.km_placing = True

    def predict_biopsies(self) -> None:
        def run():
            self._stop_placing()
            table = self.logic.predictBiopsies(self.session.volume_nodes(), self.session.markups(),
                                               self.session.model, tableNode=self.session.table(),
                                               covariates=self.session.covariates or None)
            self.session.table_id = table.GetID()
            return f"Predicted ki67 at {table.GetNumberOfRows()} biopsy points (research use only)."

        self._step("Predict biopsies", run)

    def set_measured(self, label: str, text: str) -> None:
        def run():
            value = None
            if str(text).strip():
                try:
                    value = float(text)
                except ValueError:
                    raise KiMapError(f"'{text}' is not a number", input_name=f"measured ki67 of {label}") from None
                if not 0.0 <= value <= 100.0:
                    raise KiMapError(f"{value:g} is outside 0-100 %", input_name=f"measured ki67 of {label}")
            self.session.set_measured(label, value)
            return f"Measured ki67 of {label}: {'—' if value is None else f'{value:g} %'}."

        self._step("Measured ki67", run)

    def _stop_placing(self) -> None:
        if self.state.km_placing:
            views.window_level_mode(self.slicer_app)
            self.state.km_placing = False

    # -- map ------------------------------------------------------------------------------------------------------

    def compute_map(self) -> None:
        """Start the map in the background and return at once: the page keeps taking clicks (Cancel, views) while it
        runs (a handler that awaited the computation would hold the page's message queue until the end)."""
        if self.state.km_busy or (self._map_task is not None and not self._map_task.done()):
            return
        self._map_task = asyncio.get_running_loop().create_task(self._compute_map())

    async def _compute_map(self) -> None:
        with self.state as state:
            state.km_busy, state.km_computing, state.km_error = True, True, ""
            state.km_progress, state.km_progress_text = 0.0, "checking the inputs"
        self._stop_placing()
        self._cancel.clear()
        progress = {"fraction": 0.0, "message": "checking the inputs"}

        def callback(fraction: float, message: str = "") -> bool:
            progress.update(fraction=fraction, message=message)
            return not self._cancel.is_set()

        try:
            job = self.logic.prepareMap(self.session.volume_nodes(), self.session.region(), self.session.model,
                                        self.session.covariates or None, progress=callback)
            future = asyncio.get_running_loop().run_in_executor(self._executor, job.run, callback)
            while not future.done():
                with self.state as state:
                    state.km_progress = 100.0 * progress["fraction"]
                    state.km_progress_text = progress["message"]
                await asyncio.wait([future], timeout=0.25)
            result = future.result()
            old = self.session.ki67()
            partner = self.session.node(old.GetAttribute(ATTRIBUTE_PARTNER)) if old is not None else None
            ki67, _probability = self.logic.addMapNodes(job, result, old, partner,
                                                        lowerThreshold=float(self.state.km_threshold))
            self.session.map_id = ki67.GetID()
            views.show_map(self.slicer_app, self.session.map_layer(self.state.km_layer), self.state.km_opacity)
            voxels = int(np.isfinite(slicer.util.arrayFromVolume(ki67)).sum())
            message = f"ki67 map computed: {voxels} voxels (research use only)."
        except Cancelled:
            message = "Map computation cancelled; nothing was changed."
        except Exception as error:
            self._fail(error, "Compute map")
            message = None
        finally:
            self.refresh()
            with self.state as state:
                state.km_busy, state.km_computing = False, False
        if message:
            with self.state as state:
                state.km_status = message

    def cancel(self) -> None:
        self._cancel.set()
        self.state.km_progress_text = "cancelling…"

    def _on_opacity(self, km_opacity=0.6, **_):
        views.set_map_opacity(self.slicer_app, float(km_opacity))

    def _on_layer(self, km_layer="ki67", **_):
        """Show another part of the map (ki67, its interval bounds, P(high), out-of-domain score) in the views."""
        node = self.session.map_layer(km_layer)
        if node is not None:
            views.show_map(self.slicer_app, node, float(self.state.km_opacity))
            self.state.km_legend = legend(node)

    def _on_threshold(self, km_threshold=0.0, **_):
        node = self.session.ki67()
        if node is not None:
            set_map_display(node, lower_threshold=float(km_threshold))
            views.set_map_opacity(self.slicer_app, float(self.state.km_opacity))

    # -- export ---------------------------------------------------------------------------------------------------

    def export_map(self) -> None:
        def run():
            formats = [name for name, key in (("nrrd", "km_export_nrrd"), ("nifti", "km_export_nifti"),
                                              ("dicom", "km_export_dicom")) if self.state[key]]
            folder = self.logic.exportMap(self.session.ki67(), (self.state.km_export_dir or "").strip(),
                                          tableNode=self.session.table(), formats=formats,
                                          referenceDicomDirectory=self.session.dicom_folder())
            self._export_folder = folder
            self.state.km_exported = str(folder)
            return f"Exported to {folder}."

        self._step("Export", run)

    def download_export(self):
        """The last export (and its DICOM planning folder) as one zip, sent to the browser."""
        folder = self._export_folder
        if folder is None or not folder.is_dir():
            return None
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for root in (folder, folder.with_name(f"{folder.name}_planning")):
                for path in sorted(root.rglob("*")) if root.is_dir() else ():
                    if path.is_file():
                        archive.write(path, path.relative_to(folder.parent))
        return self.server.protocol.addAttachment(buffer.getvalue())


def create_app(name: str = "kimap", *, model_path: str | Path | None = None,
               export_folder: str | Path | None = None) -> KiMapWebApp:
    """A KiMap page on a new trame server called ``name`` (start it with :func:`KiMapLib.web.server.start`)."""
    return KiMapWebApp(get_server(name, client_type="vue3"), model_path=model_path, export_folder=export_folder)
