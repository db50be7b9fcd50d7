"""The demo's Slicer scene: ``kimap_demo.mrb`` and ``overlay_slicer.png`` (a slice view rendered headless).

Needs ``slicer-core`` (or 3D Slicer); everything Slicer-specific goes through :mod:`KiMapLib.slicer.logic`, so
importing this module fails with ImportError where slicer is not installed (the demo then skips the scene).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer

from KiMapLib.inputs.geometry import ijk_to_ras_matrix
from KiMapLib.slicer.display import ATTRIBUTE_TABLE, add_color_legend
from KiMapLib.slicer.logic import KiMapLogic
from KiMapLib.slicer.nodes import update_node_from_image
from KiMapLib.slicer.rendering import set_slice_viewer_layers, slice_view_image
from KiMapLib.slicer.scene_io import save_scene_mrb, setup_headless_scene
from KiMapLib.slicer.tables import fill_table

MRB_NAME = "kimap_demo.mrb"
PNG_NAME = "overlay_slicer.png"
SEQUENCE_NAMES = {"t1c": "T1C", "t2": "T2", "flair": "FLAIR", "adc": "ADC"}


def _add_volume(image: sitk.Image, name: str, label: bool = False):
    class_name = "vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode"
    node = slicer.mrmlScene.AddNewNodeByClass(class_name, name)
    node.CreateDefaultDisplayNodes()
    update_node_from_image(node, image)
    return node


def _window_from_percentiles(node, image: sitk.Image) -> None:
    """Grey window 1st-99th percentile of the non-zero voxels (auto window/level needs the Slicer app)."""
    values = sitk.GetArrayViewFromImage(image)
    values = values[values != 0]
    if values.size:
        low, high = np.percentile(values, [1, 99])
        display = node.GetDisplayNode()
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(float(low), float(high))


def _biopsy_records(rows: Sequence[Mapping[str, object]]) -> list[dict[str, object]]:
    records = []
    for row in rows:
        def number(key, row=row):
            value = row.get(key)
            return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

        records.append({"biopsy": str(row.get("biopsy_id")), "predicted_ki67": number("predicted_ki67"),
                        "probability_high": number("probability_high"), "measured_ki67": number("ki67"),
                        "r": number("r"), "a": number("a"), "s": number("s"), "note": ""})
    return records


def write_demo_scene(out_dir: str | Path, case, result, rows: Sequence[Mapping[str, object]],
                     volume_paths: Mapping[str, str | Path] | None = None, *, opacity: float = 0.6,
                     size: int = 512) -> list[Path]:
    """Write ``out_dir/kimap_demo.mrb`` and ``out_dir/overlay_slicer.png``; return both paths.

    ``case``: the :class:`KiMapLib.inputs.case.Case` the map was computed on (its t1c is the background);
    ``result``: the :class:`KiMapLib.maps.mapping.MapResult`; ``rows``: rows of ``predict_biopsies`` (biopsy_id,
    r, a, s, ki67 measured, predicted_ki67, probability_high). ``volume_paths`` (sequence -> file) puts the
    original sequences in the scene; without it the other sequences are the case's normalized images.
    The scene holds the volumes, the tumor region, the biopsy markups, the ki67 and P(high) maps with KiMap's
    color table and display settings, the biopsy table, and slice views set to show the map over the t1c.
    """
    import matplotlib.image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scene = setup_headless_scene()

    images = {"t1c": case.reference}
    for name, image in case.images.items():
        if name != "t1c":
            images[name] = image
    if volume_paths:
        images.update({name: sitk.ReadImage(str(path)) for name, path in volume_paths.items()})
    volume_nodes = {}
    for name, image in images.items():
        normalized = not volume_paths or name not in volume_paths
        label = SEQUENCE_NAMES.get(name, name) + (" (normalized)" if normalized and name != "t1c" else "")
        volume_nodes[name] = _add_volume(sitk.Cast(image, sitk.sitkFloat32), label)
    t1c_node = volume_nodes["t1c"]
    region_node = _add_volume(sitk.Cast(result.region, sitk.sitkUInt8), "tumor region", label=True)
    region_node.GetDisplayNode().SetVisibility(False)

    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Biopsies")
    markups.CreateDefaultDisplayNodes()
    records = _biopsy_records(rows)
    for record in records:
        markups.AddControlPoint(record["r"], record["a"], record["s"], record["biopsy"])
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "Biopsies ki67")
    fill_table(table, records)
    markups.SetAttribute(ATTRIBUTE_TABLE, table.GetID())

    logic = KiMapLogic(scene)
    ki67_node, _probability_node = logic._writeMapNodes(
        t1c_node, result.ki67, result.probability, getattr(result, "summary", {}),
        str(getattr(result, "summary", {}).get("model_id", "")), None, None, 0.0)
    add_color_legend(ki67_node)
    for name, node in volume_nodes.items():
        _window_from_percentiles(node, images[name])

    region = sitk.GetArrayViewFromImage(result.region).astype(bool)
    centre_kji = np.argwhere(region).mean(axis=0) if region.any() else np.array(region.shape) / 2
    centre_ras = ijk_to_ras_matrix(result.ki67) @ np.array([*centre_kji[::-1], 1.0])
    set_slice_viewer_layers(t1c_node, ki67_node, opacity=opacity, scene=scene)
    rgba = slice_view_image(t1c_node, ki67_node, opacity=opacity, ras=tuple(centre_ras[:3]), size=size,
                                       scene=scene)
    png = out_dir / PNG_NAME
    matplotlib.image.imsave(png, np.ascontiguousarray(rgba[..., :3]))  # opaque: black outside the volume
    mrb = save_scene_mrb(out_dir / MRB_NAME, scene)
    return [mrb, png]
