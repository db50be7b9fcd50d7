"""The page: an app bar, the KiMap side panel (images, model, region, biopsies, map, export), trame-slicer's
segment editor, and the slice views. Layout only: every button calls a handler of :class:`KiMapLib.web.app.KiMapWebApp`.

Buttons carry their accessible name in their text or ``aria-label`` ("Load demo case", "Compute map", ...), so the
workflow can be scripted (and is, by the browser test)."""

from __future__ import annotations

from trame.ui.vuetify3 import VAppLayout
from trame.widgets import client, html
from trame.widgets import vuetify3 as v3

#: Layout width of the side panel, px.
PANEL_WIDTH = 430
STYLE = """
.km-panel .v-expansion-panel-text__wrapper { padding: 8px 12px 12px; }
.km-panel .v-expansion-panel-title { min-height: 40px; padding: 6px 12px; font-weight: 600; }
.km-table td, .km-table th { padding: 0 6px !important; font-size: 12px; height: 30px !important; }
.km-legend-bar { height: 14px; border-radius: 3px; border: 1px solid rgba(255,255,255,.35); }
.km-card { font-size: 12px; line-height: 1.45; }
.km-card-scroll { max-height: 150px; overflow-y: auto; }
.km-number { width: 70px; color: inherit; border-bottom: 1px solid rgba(255,255,255,.4); padding: 0 2px; }
html { overflow-y: auto; }
"""


def aria(label: str | None = None, *, expression: str | None = None, role: str | None = None,
         live: str | None = None) -> list[str]:
    """Accessibility attributes as raw template attributes (trame drops unknown keyword attributes):
    a fixed ``label`` or a JavaScript ``expression`` for it, a ``role``, an ``aria-live`` politeness."""
    attributes = []
    if label is not None:
        attributes.append(f'aria-label="{label}"')
    if expression is not None:
        attributes.append(f':aria-label="{expression}"')
    if role is not None:
        attributes.append(f'role="{role}"')
    if live is not None:
        attributes.append(f'aria-live="{live}"')
    return attributes


def build_page(app) -> VAppLayout:
    """The whole page of ``app`` (a :class:`KiMapLib.web.app.KiMapWebApp`)."""
    with VAppLayout(app.server, full_height=True) as layout:
        layout.root.theme = "dark"
        client.Style(STYLE)
        _app_bar(app)
        with v3.VNavigationDrawer(permanent=True, width=PANEL_WIDTH, location="left", classes="km-panel"):
            with v3.VTabs(v_model=("km_tab", "kimap"), density="compact", grow=True):
                v3.VTab("KiMap", value="kimap")
                v3.VTab("Segment editor", value="segments", disabled=("!km_region_id",))
            with v3.VWindow(v_model=("km_tab",)):
                with v3.VWindowItem(value="kimap"):
                    _kimap_panel(app)
                with v3.VWindowItem(value="segments", style="height: calc(100vh - 120px);"):
                    app.build_segment_editor()
        with v3.VMain(), html.Div(style="height: calc(100vh - 48px); display: flex;"):
            app.layout_manager.initialize_layout_grid(layout)
    return layout


def _app_bar(app) -> None:
    with v3.VAppBar(density="compact", elevation=1):
        v3.VAppBarTitle("KiMap — ki67 maps of glioblastoma", style="flex: 0 1 auto;")
        v3.VChip("Research use only — not a medical device", color="warning", size="small", variant="tonal",
                 classes="ml-3")
        v3.VChip("{{ km_notice }}", v_if=("km_notice",), color="info", size="small", variant="tonal", classes="ml-2")
        v3.VSpacer()
        v3.VProgressCircular(v_if=("trame__busy || km_busy",), indeterminate=True, size=20, width=2, classes="mr-3",
                             raw_attrs=aria("working"))


def _section(title: str, value: str):
    panel = v3.VExpansionPanel(value=value)
    with panel:
        v3.VExpansionPanelTitle(title)
    return panel


def _kimap_panel(app) -> None:
    with html.Div(classes="pa-2"):
        v3.VAlert(v_if=("km_error",), text=("km_error",), type="error", density="compact", closable=True,
                  classes="mb-2", click_close="km_error = ''")
        html.Div("{{ km_status }}", classes="text-caption mb-2", raw_attrs=aria(role="status", live="polite"))
        with v3.VExpansionPanels(v_model=("km_open", ["images", "model", "region", "biopsies", "map", "export"]),
                                 multiple=True, variant="accordion"):
            with _section("1 · Images", "images"), v3.VExpansionPanelText():
                _images(app)
            with _section("2 · Model", "model"), v3.VExpansionPanelText():
                _model(app)
            with _section("3 · Tumour region", "region"), v3.VExpansionPanelText():
                _region(app)
            with _section("4 · Biopsies", "biopsies"), v3.VExpansionPanelText():
                _biopsies(app)
            with _section("5 · ki67 map", "map"), v3.VExpansionPanelText():
                _map(app)
            with _section("6 · Export", "export"), v3.VExpansionPanelText():
                _export(app)


def _button(text: str, click, *, disabled="km_busy", **kwargs):
    kwargs.setdefault("variant", "tonal")
    kwargs.setdefault("size", "small")
    kwargs.setdefault("classes", "mr-2 mb-2")
    return v3.VBtn(text, click=click, disabled=(disabled,), **kwargs)


def _images(app) -> None:
    with html.Div(classes="d-flex flex-wrap align-center"):
        _button("Load demo case", app.load_demo_case, color="primary", prepend_icon="mdi-flask-outline")
        app.build_upload("Load volume files", app.upload_volumes, directory=False, icon="mdi-file-upload")
        app.build_upload("Load DICOM folder", app.upload_dicom, directory=True, icon="mdi-folder-upload")
    with v3.VTable(density="compact", classes="km-table mb-1"):
        with html.Thead(), html.Tr():
            html.Th("Sequence")
            html.Th("Volume")
            html.Th("Status")
        with html.Tbody(), html.Tr(v_for="row in km_volume_rows", key="row.slot"):
            html.Td("{{ row.title }}")
            with html.Td(style="min-width: 150px;"):
                v3.VSelect(items=("km_volume_items",), model_value=("row.node_id",), density="compact",
                           hide_details=True, variant="plain", clearable=True,
                           raw_attrs=aria(expression="`${row.title} volume`"),
                           update_modelValue=(app.assign_volume, "[row.slot, $event]"))
            with html.Td():
                v3.VIcon(("row.ok ? 'mdi-check-circle' : 'mdi-alert-circle'",), size="x-small",
                         color=("row.ok ? 'success' : 'error'",), classes="mr-1")
                html.Span("{{ row.status }}")
                html.Div("{{ row.grid }}", v_if=("row.grid",), classes="text-medium-emphasis")


def _model(app) -> None:
    html.Div(v_html=("km_model_card",), classes="km-card km-card-scroll mb-2")
    v3.VAlert(text=("km_model_notice",), type="warning", variant="tonal", density="compact", classes="mb-2 km-card",
              raw_attrs=aria(role="note"))  # a standing notice, not an alert
    with html.Div(classes="d-flex align-center"):
        v3.VTextField(v_model=("km_model_path", ""), label="Model bundle folder (on the server)", density="compact",
                      hide_details=True, classes="mr-2")
        _button("Load model", app.load_model_bundle)
    _button("Use packaged model", app.load_packaged_model, variant="text")


def _region(app) -> None:
    v3.VSelect(label="Region to map", items=("km_region_items", []), v_model=("km_region_id", None),
               density="compact", hide_details=True, classes="mb-2", clearable=True,
               hint="none: the automatic FLAIR hyperintensity region")
    with html.Div(classes="d-flex flex-wrap align-center"):
        _button("Propose tumour region", app.propose_region, v_if=("km_can_propose",), prepend_icon="mdi-auto-fix")
        app.build_upload("Load label file", app.upload_region, directory=False, icon="mdi-shape-outline")
        _button("Edit segments", "km_tab = 'segments'", disabled="!km_region_id || km_busy", variant="text",
                prepend_icon="mdi-brush")
    html.Div("Mapped segments (uncheck to leave one out):", v_if=("km_segments.length",),
             classes="text-caption mt-1")
    with html.Div(classes="d-flex flex-wrap"):
        v3.VCheckbox(v_for="seg in km_segments.filter(s => !s.never_mapped)", key="seg.id", label=("seg.name",),
                     model_value=("seg.visible",), color=("seg.color",), density="compact", hide_details=True,
                     classes="mr-3", update_modelValue=(app.set_segment_mapped, "[seg.id, $event]"))
    html.Div("The necrotic core is shown but never mapped.", v_if=("km_segments.some(s => s.never_mapped)",),
             classes="text-caption")


def _biopsies(app) -> None:
    with html.Div(classes="d-flex flex-wrap align-center"):
        _button("{{ km_placing ? 'Stop placing points' : 'Place biopsy points' }}", app.toggle_placing,
                prepend_icon="mdi-map-marker-plus", disabled="km_busy || !km_has_volumes",
                color=("km_placing ? 'secondary' : undefined",))
        _button("Predict biopsies", app.predict_biopsies, disabled="km_busy || !km_biopsies.length",
                color="primary", prepend_icon="mdi-calculator")
    html.Div("Click in a slice view to place a point.", v_if=("km_placing",), classes="text-caption mb-1")
    with v3.VTable(density="compact", classes="km-table", v_if=("km_biopsies.length",)):
        with html.Thead(), html.Tr():
            for title in ("Point", "R, A, S (mm)", "Predicted ki67", "Interval", "P(high)", "Domain", "Measured ki67"):
                html.Th(title)
        with html.Tbody(), html.Tr(v_for="row in km_biopsies", key="row.biopsy"):
            html.Td("{{ row.biopsy }}")
            html.Td("{{ row.r }}, {{ row.a }}, {{ row.s }}")
            html.Td("{{ row.predicted_ki67 === null ? '—' : row.predicted_ki67.toFixed(1) + ' %' }}",
                    title=("row.note",))
            html.Td("{{ row.ki67_lower === null ? '—' : row.ki67_lower.toFixed(0) + '–' + row.ki67_upper.toFixed(0) "
                    "+ ' %' }}", title=("row.drivers",))
            html.Td("{{ row.probability_high === null ? '—' : row.probability_high.toFixed(2) }}")
            html.Td("{{ row.ood_score === null ? '—' : (row.ood_score > 1 ? 'outside' : 'inside') }}",
                    title=("row.ood_score === null ? '' : 'out-of-domain score ' + row.ood_score.toFixed(2)",))
            with html.Td(style="width: 90px;"):
                html.Input(type="number", min=0, max=100, step=0.1, value=("row.measured_ki67 ?? ''",),
                           placeholder="%", classes="km-number",
                           raw_attrs=aria(expression="`measured ki67 of ${row.biopsy}`"),
                           change=(app.set_measured, "[row.biopsy, $event.target.value]"))


def _map(app) -> None:
    with html.Div(classes="d-flex flex-wrap align-center"):
        _button("Compute map", app.compute_map, disabled="km_busy || !km_has_volumes", color="primary",
                prepend_icon="mdi-grid")
        _button("Cancel", app.cancel, disabled="!km_computing", color="error", variant="outlined")
    with html.Div(v_if=("km_computing",), classes="mb-2"):
        v3.VProgressLinear(model_value=("km_progress", 0), height=14, color="primary", rounded=True,
                           raw_attrs=aria("map progress"))
        html.Div("{{ Math.round(km_progress) }} % {{ km_progress_text }}", classes="text-caption")
    with html.Div(v_if=("km_legend",), classes="mt-1"):
        v3.VSelect(v_model=("km_layer", "ki67"), items=("km_layers", []), label="Show", density="compact",
                   hide_details=True, classes="mb-1", v_if=("km_layers.length > 1",))
        html.Div("{{ km_uncertainty }}", v_if=("km_uncertainty",), classes="text-caption")
        html.Div("{{ km_legend.title }} — color table {{ km_legend.color_table }}", classes="text-caption")
        html.Div(classes="km-legend-bar", style=("{ background: km_legend.gradient }",),
                 raw_attrs=aria(role="img", expression="`color legend ${km_legend.ticks.join(', ')}`"))
        with html.Div(classes="d-flex justify-space-between text-caption"):
            html.Span("{{ t }}", v_for="t in km_legend.ticks", key="t")
        html.Div("Outside the region and below the threshold: transparent.", classes="text-caption mb-1")
    v3.VSlider(v_model=("km_opacity", 0.6), min=0, max=1, step=0.05, label="Opacity", density="compact",
               hide_details=True, thumb_label=True, disabled=("!km_legend",))
    v3.VSlider(v_model=("km_threshold", 0.0), min=0, max=100, step=1, label="Hide below (%)", density="compact",
               hide_details=True, thumb_label=True, disabled=("!km_legend",))


def _export(app) -> None:
    v3.VTextField(v_model=("km_export_dir", ""), label="Export folder (on the server)", density="compact",
                  hide_details=True, classes="mb-1")
    with html.Div(classes="d-flex flex-wrap"):
        v3.VCheckbox(v_model=("km_export_nrrd", True), label="NRRD", density="compact", hide_details=True,
                     classes="mr-2")
        v3.VCheckbox(v_model=("km_export_nifti", True), label="NIfTI", density="compact", hide_details=True,
                     classes="mr-2")
        v3.VCheckbox(v_model=("km_export_dicom", False), label="DICOM planning", density="compact",
                     hide_details=True, disabled=("!km_can_dicom",))
    with html.Div(classes="d-flex flex-wrap align-center"):
        _button("Export", app.export_map, disabled="km_busy || !km_legend", color="primary",
                prepend_icon="mdi-content-save")
        v3.VBtn("Download", disabled=("km_busy || !km_exported",), variant="tonal", size="small",
                classes="mr-2 mb-2", prepend_icon="mdi-download",
                click=f"utils.download('kimap-export.zip', trigger('{app.server.trigger_name(app.download_export)}'),"
                      " 'application/zip')")
    html.Div("{{ km_exported }}", v_if=("km_exported",), classes="text-caption")
