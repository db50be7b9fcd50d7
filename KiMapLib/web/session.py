"""What one web session is working on: which node is which sequence, the region, the biopsy points and table, the
map, the model; and the plain data (lists and dicts) the page shows. Every computation goes through
:class:`KiMapLib.slicer.KiMapLogic`; nothing here imports trame."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import vtk

from KiMapLib.settings import SEQUENCES
from KiMapLib.slicer import KiMapLogic, display
from KiMapLib.slicer.display import (
    ATTRIBUTE_MAP,
    ATTRIBUTE_PARTNER,
    ATTRIBUTE_TABLE,
    partner_attribute,
)
from KiMapLib.slicer.loading import ATTRIBUTE_DICOM_FOLDER, ATTRIBUTE_SEQUENCE
from KiMapLib.slicer.segments import LABEL_TAG
from KiMapLib.slicer.tables import fill_table, table_values

#: The sequences the page offers, in order; those not in :data:`KiMapLib.settings.SEQUENCES` are shown only.
SLOTS = ("t1c", "t2", "flair", "adc", "t1")
SLOT_TITLES = {"t1c": "T1c (contrast)", "t2": "T2", "flair": "FLAIR", "adc": "ADC", "t1": "T1 (native)"}
_GUESSES = (("flair", r"flair"), ("adc", r"adc"), ("t1c", r"t1c|t1ce|gd|gad|contrast|post|\+c"), ("t2", r"t2"),
            ("t1", r"t1"))


def guess_sequence(name: str) -> str | None:
    """The sequence a file or node name most likely holds (``T1CE.nii.gz`` -> t1c), or None."""
    lowered = name.lower()
    for sequence, pattern in _GUESSES:
        if re.search(pattern, lowered):
            return sequence
    return None


@dataclass
class KiMapSession:
    """The nodes one page works on, by MRML node ID (None: not chosen)."""

    logic: KiMapLogic
    assignment: dict[str, str | None] = field(default_factory=lambda: dict.fromkeys(SLOTS))
    region_id: str | None = None
    markups_id: str | None = None
    table_id: str | None = None
    map_id: str | None = None
    model: object | None = None
    model_error: str | None = None
    covariates: dict[str, object] = field(default_factory=dict)
    synthetic: bool = False

    @property
    def scene(self):
        return self.logic.scene

    def node(self, node_id: str | None):
        return self.scene.GetNodeByID(node_id) if node_id else None

    # -- volumes ------------------------------------------------------------------------------------------------

    def volume_nodes(self) -> dict[str, object]:
        """``{sequence: node}`` of the assigned sequences KiMap's models can use (what the logic is given)."""
        nodes = {name: self.node(node_id) for name, node_id in self.assignment.items() if name in SEQUENCES}
        return {name: node for name, node in nodes.items() if node is not None}

    def t1c(self):
        return self.node(self.assignment.get("t1c"))

    def assign(self, node, sequence: str | None = None) -> str | None:
        """Assign a loaded volume to its sequence (given, recorded on the node, or guessed from its name)."""
        sequence = sequence or node.GetAttribute(ATTRIBUTE_SEQUENCE) or guess_sequence(node.GetName())
        if sequence in self.assignment:
            self.assignment[sequence] = node.GetID()
        return sequence

    def candidate_volumes(self) -> list[dict[str, str]]:
        """Image volumes the user can assign (not labelmaps, not KiMap's maps)."""
        items = []
        for node in self.scene.GetNodesByClass("vtkMRMLScalarVolumeNode"):
            if node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetAttribute(ATTRIBUTE_MAP) or node.GetHideFromEditors():
                continue
            items.append({"title": node.GetName(), "value": node.GetID()})
        return items

    def volume_rows(self, required: tuple[str, ...] = ()) -> list[dict[str, object]]:
        """One row per slot: what is loaded (name, grid) and whether the model needs it."""
        rows = []
        for slot in SLOTS:
            node = self.node(self.assignment.get(slot))
            used = slot in SEQUENCES
            if node is not None:
                status = "loaded" if used else "shown only (not a model input)"
            elif slot in required:
                status = "missing — required by the model"
            else:
                status = "not loaded (optional)"
            rows.append({"slot": slot, "title": SLOT_TITLES[slot], "node_id": node.GetID() if node else None,
                         "name": node.GetName() if node else "—", "grid": grid_text(node) if node else "",
                         "status": status, "ok": node is not None or slot not in required,
                         "dicom": bool(node and node.GetAttribute(ATTRIBUTE_DICOM_FOLDER))})
        return rows

    def dicom_folder(self) -> str | None:
        """The DICOM series folder the t1c was read from (reference of the DICOM planning export), if any."""
        node = self.t1c()
        return node.GetAttribute(ATTRIBUTE_DICOM_FOLDER) if node is not None else None

    # -- region -------------------------------------------------------------------------------------------------

    def region(self):
        return self.node(self.region_id)

    def segment_rows(self) -> list[dict[str, object]]:
        """The region's segments: name, color, shown (= mapped; KiMap's necrotic core never is)."""
        node = self.region()
        if node is None or not node.IsA("vtkMRMLSegmentationNode"):
            return []
        segmentation = node.GetSegmentation()
        display = node.GetDisplayNode()
        rows = []
        for index in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(index)
            segment = segmentation.GetSegment(segment_id)
            color = "#" + "".join(f"{round(255 * c):02x}" for c in segment.GetColor())
            label = vtk.mutable("")
            necrotic = bool(segment.GetTag(LABEL_TAG, label)) and str(label) == "1"
            rows.append({"id": segment_id, "name": segment.GetName(), "color": color, "never_mapped": necrotic,
                         "visible": bool(display.GetSegmentVisibility(segment_id)) if display else True})
        return rows

    def set_segment_mapped(self, segment_id: str, mapped: bool) -> None:
        """Map a segment or leave it out (its visibility: the logic maps the visible segments)."""
        node = self.region()
        if node is not None and node.GetDisplayNode() is not None:
            node.GetDisplayNode().SetSegmentVisibility(segment_id, bool(mapped))

    # -- biopsies -----------------------------------------------------------------------------------------------

    def markups(self):
        return self.node(self.markups_id)

    def ensure_markups(self):
        """The biopsy point list (a new empty one when there is none)."""
        node = self.markups()
        if node is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", self.scene.GenerateUniqueName("Biopsies"))
            node.CreateDefaultDisplayNodes()
            self.markups_id = node.GetID()
        return node

    def table(self):
        node = self.node(self.table_id)
        markups = self.markups()
        if node is None and markups is not None:
            node = self.node(markups.GetAttribute(ATTRIBUTE_TABLE))
        return node

    def biopsy_rows(self) -> list[dict[str, object]]:
        """The points and, where predicted, their table values (None for missing numbers)."""
        markups = self.markups()
        if markups is None:
            return []
        table = self.table()
        by_label = {str(row.get("biopsy")): row for row in table_values(table)} if table is not None else {}
        rows = []
        position = np.zeros(3)
        for index in range(markups.GetNumberOfControlPoints()):
            if markups.GetNthControlPointPositionStatus(index) != markups.PositionDefined:
                continue  # the preview point that follows the mouse in place mode
            label = markups.GetNthControlPointLabel(index) or f"B{index + 1}"
            markups.GetNthControlPointPositionWorld(index, position)
            values = by_label.get(label, {})
            rows.append({"index": index, "biopsy": label, "r": round(float(position[0]), 1),
                         "a": round(float(position[1]), 1), "s": round(float(position[2]), 1),
                         "predicted_ki67": _number(values.get("predicted_ki67")),
                         "probability_high": _number(values.get("probability_high")),
                         "ki67_lower": _number(values.get("ki67_lower")),
                         "ki67_upper": _number(values.get("ki67_upper")),
                         "ood_score": _number(values.get("ood_score")), "drivers": str(values.get("drivers") or ""),
                         "measured_ki67": _number(values.get("measured_ki67")), "note": str(values.get("note") or "")})
        return rows

    def set_measured(self, label: str, value: float | None) -> None:
        """Type in the measured ki67 of one biopsy (kept in the table node; predictions keep it)."""
        markups = self.markups()
        if markups is None:
            return
        table = self.table()
        rows = table_values(table) if table is not None else []
        if not any(str(row.get("biopsy")) == label for row in rows):
            rows.append({"biopsy": label, "predicted_ki67": None, "probability_high": None, "r": None, "a": None,
                         "s": None, "note": ""})
        for row in rows:
            if str(row.get("biopsy")) == label:
                row["measured_ki67"] = value
        if table is None:
            table = self.scene.AddNewNodeByClass("vtkMRMLTableNode",
                                                 self.scene.GenerateUniqueName(f"{markups.GetName()} ki67"))
            markups.SetAttribute(ATTRIBUTE_TABLE, table.GetID())
        fill_table(table, [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                           for row in rows])
        self.table_id = table.GetID()

    # -- map ----------------------------------------------------------------------------------------------------

    def ki67(self):
        node = self.node(self.map_id)
        return node if node is not None and node.GetAttribute(ATTRIBUTE_MAP) == "ki67" else None

    def probability(self):
        node = self.ki67()
        return self.node(node.GetAttribute(ATTRIBUTE_PARTNER)) if node is not None else None

    def map_layer(self, kind: str):
        """The node of one kind of the current map ("ki67", "probability", "lower", "upper", "ood"), else the ki67."""
        node = self.ki67()
        if node is None or kind == "ki67":
            return node
        return self.node(node.GetAttribute(partner_attribute(kind))) or node

    def map_layers(self) -> list[dict[str, str]]:
        """The kinds the current map has, as select items."""
        node = self.ki67()
        if node is None:
            return []
        titles = {"ki67": "ki67 estimate", "lower": "ki67 lower bound", "upper": "ki67 upper bound",
                  "probability": "P(ki67 ≥ threshold)", "ood": "out-of-domain score"}
        return [{"title": title, "value": kind} for kind, title in titles.items()
                if kind == "ki67" or self.node(node.GetAttribute(partner_attribute(kind))) is not None]

    def uncertainty_text(self) -> str:
        """One line on how sure the current map is (from its summary)."""
        return display.uncertainty_text(self.ki67())


def _number(value) -> float | None:
    if value is None or isinstance(value, str):
        try:
            value = float(value) if value not in (None, "") else None
        except ValueError:
            return None
    return None if value is None or not math.isfinite(value) else float(value)


def grid_text(node) -> str:
    """``120 × 120 × 96, 1.0 × 1.0 × 1.0 mm`` for a volume node."""
    dims = node.GetImageData().GetDimensions() if node.GetImageData() is not None else (0, 0, 0)
    spacing = node.GetSpacing()
    return f"{' × '.join(str(d) for d in dims)}, {' × '.join(f'{s:.2g}' for s in spacing)} mm"


def default_export_folder() -> Path:
    return Path.cwd() / "kimap-export"


def covariates_text(covariates: Mapping[str, object]) -> str:
    return ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in covariates.items() if value is not None)


def safe_card_html(text: str) -> str:
    """The model card summary with only <b>, <i> and <br> kept (a bundle's card is not trusted markup)."""
    escaped = html.escape(text, quote=False)
    for tag in ("b", "i"):
        escaped = escaped.replace(f"&lt;{tag}&gt;", f"<{tag}>").replace(f"&lt;/{tag}&gt;", f"</{tag}>")
    escaped = escaped.replace("&lt;br&gt;", "<br>")
    for entity in ("gt", "lt", "amp"):
        escaped = escaped.replace(f"&amp;{entity};", f"&{entity};")
    return escaped
