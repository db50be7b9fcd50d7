"""KiMapLogic on a real MRML scene (slicer-core, no Qt): geometry, table, colors, display, .mrb round trip, bad input.

The volumes are oblique (rotated about two axes) and anisotropic so that a RAS/LPS or row/column mix-up shows.
Most tests use a *probe model*: ``compute_map``/``predict_biopsies`` are replaced by functions whose output is a
known linear function of each voxel's RAS position, so node values can be checked against geometry exactly.
``test_packaged_model_end_to_end`` runs the real pipeline with the packaged model when it is installed.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
pytest.importorskip("vtk")

from KiMapLib import mrml_logic  # noqa: E402  (the deprecated alias, kept working for one release)
from KiMapLib.errors import BiopsyError, Cancelled, GeometryError, KiMapError  # noqa: E402
from KiMapLib.inputs import geometry  # noqa: E402
from KiMapLib.maps import mapping  # noqa: E402
from KiMapLib.model import prediction  # noqa: E402
from KiMapLib.settings import ExtractionSettings  # noqa: E402
from KiMapLib.slicer.logic import KiMapLogic  # noqa: E402

SHAPE_KJI = (24, 40, 40)
SPACING = (1.1, 0.9, 2.2)


def _rotation(ax: float, az: float) -> np.ndarray:
    cx, sx, cz, sz = math.cos(ax), math.sin(ax), math.cos(az), math.sin(az)
    about_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    about_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return about_z @ about_x


def oblique_ijk_to_ras(spacing=SPACING, origin=(-30.0, 12.0, -8.0), angles=(0.35, 0.5)) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = _rotation(*angles) @ np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


def voxel_ras(ijk_to_ras: np.ndarray, shape_kji=SHAPE_KJI) -> np.ndarray:
    """RAS of every voxel centre, array [k, j, i, 3]."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_kji), indexing="ij")
    ijk1 = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float)
    return (ijk1 @ ijk_to_ras.T)[..., :3]


def probe_ki67(ras: np.ndarray) -> np.ndarray:
    """The probe model's ki67: a linear function of RAS (mm), different along every axis."""
    ras = np.asarray(ras, dtype=float)
    return 30.0 + 0.8 * ras[..., 0] - 0.5 * ras[..., 1] + 0.3 * ras[..., 2]


def probe_probability(ki67: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(np.asarray(ki67) - 30.0) / 5.0))


def fake_compute_map(case, model, region=None, covariates=None, progress=None, method="auto", **options):
    from KiMapLib.progress import report
    from KiMapLib.region.tumour_region import TumourRegion

    report(progress, 0.1, "probe features")
    ras = voxel_ras(geometry.ijk_to_ras_matrix(case.reference), sitk.GetArrayViewFromImage(case.reference).shape)
    if isinstance(region, TumourRegion):
        inside = region.mapped
    else:
        inside = sitk.GetArrayFromImage(region).astype(bool) if region is not None else case.foreground
    ki67 = np.where(inside, probe_ki67(ras), np.nan).astype(np.float32)
    report(progress, 0.9, "probe model")
    return mapping.MapResult(ki67=geometry.copy_geometry(ki67, case.reference),
                             probability=geometry.copy_geometry(probe_probability(ki67).astype(np.float32),
                                                                case.reference),
                             region=geometry.copy_geometry(inside.astype(np.uint8), case.reference),
                             t1c=case.reference,
                             summary={"model_id": model.model_id, "region_voxels": int(inside.sum())})


def fake_predict_biopsies(case, biopsies, model, progress=None, *, level=None, explain=False):
    rows, errors = [], []
    for biopsy in biopsies:
        if biopsy.biopsy_id == "EDGE":
            errors.append(BiopsyError("only 3 of 60 ball voxels are foreground",
                                      input_name=f"biopsy {biopsy.patient_id}/{biopsy.biopsy_id}"))
            continue
        value = float(probe_ki67(biopsy.ras))
        rows.append({**biopsy.row(), "predicted_ki67": value, "probability_high": float(probe_probability(value))})
    return rows, errors


def probe_model(required=("t1c", "t2", "flair")):
    card = {"model_id": "probe-model", "required_sequences": list(required), "threshold_percent": 30.0,
            "training": {"patients": 3}, "research_use_notice": "Research use only (test probe)."}
    return SimpleNamespace(card=card, model_id="probe-model", required_sequences=tuple(required),
                           settings=ExtractionSettings(), threshold_percent=30.0)


@pytest.fixture
def probe(monkeypatch):
    monkeypatch.setattr(mapping, "compute_map", fake_compute_map)
    monkeypatch.setattr(prediction, "predict_biopsies", fake_predict_biopsies)
    return probe_model()


def make_case_scene():
    """A fresh headless scene with four oblique sequences, a tumor labelmap and segmentation, and biopsy points."""
    scene = mrml_logic.setup_headless_scene()
    ijk_to_ras = oblique_ijk_to_ras()
    ras = voxel_ras(ijk_to_ras)
    centre = ras[12, 20, 20]
    distance = np.linalg.norm(ras - centre, axis=-1)
    rng = np.random.default_rng(7)
    k, j, i = np.indices(SHAPE_KJI)
    brain = ((i - 19.5) / 17) ** 2 + ((j - 19.5) / 17) ** 2 + ((k - 11.5) / 10.5) ** 2 <= 1.0
    tumor = distance < 9.0
    nodes = {}
    for number, name in enumerate(("t1c", "t2", "flair", "adc")):
        texture = rng.normal(0, 8, SHAPE_KJI) + 5 * np.sin(i / 3.0 + number) * np.cos(j / 4.0)
        array = np.where(brain, 100 + 20 * number + texture + 60 * tumor, 0).astype(np.float32)
        nodes[name] = slicer.util.addVolumeFromArray(array, ijkToRAS=ijk_to_ras, name=name.upper())
    label = slicer.util.addVolumeFromArray(tumor.astype(np.uint8), ijkToRAS=ijk_to_ras, name="Tumor label",
                                           nodeClassName="vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Tumor segmentation")
    segmentation.CreateDefaultDisplayNodes()
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label, segmentation)
    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Biopsies")
    markups.CreateDefaultDisplayNodes()
    for label_text, ijk in (("B1", (20, 20, 12)), ("B2", (23, 18, 13)), ("B3", (17, 22, 11))):
        point = ijk_to_ras @ np.array([*ijk, 1.0])
        markups.AddControlPoint(*point[:3], label_text)
    return SimpleNamespace(scene=scene, volumes=nodes, label=label, segmentation=segmentation, markups=markups,
                           ijk_to_ras=ijk_to_ras, tumor=tumor)


@pytest.fixture
def case_scene():
    return make_case_scene()


def node_ijk_to_ras(node) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def scene_state(scene) -> list[tuple[str, int]]:
    """IDs of the nodes in the scene, to check that failed calls leave it as it was."""
    return sorted(scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes()))


def volumes_of(case, names=("t1c", "t2", "flair", "adc")):
    return {name: case.volumes[name] for name in names}


# ----------------------------------------------------------------------------------------------------------------


def test_compute_map_geometry_values_and_display(case_scene, probe):
    logic = KiMapLogic()
    ki67_node, probability_node = logic.computeMap(volumes_of(case_scene), case_scene.label, probe)
    t1c = case_scene.volumes["t1c"]
    for node in (ki67_node, probability_node):
        assert node.GetImageData().GetDimensions() == t1c.GetImageData().GetDimensions()
        difference = np.abs(node_ijk_to_ras(node) - node_ijk_to_ras(t1c)).max()
        assert difference == 0.0, f"map geometry differs from the t1c by {difference} mm"
    ki67 = slicer.util.arrayFromVolume(ki67_node)
    inside = case_scene.tumor
    assert np.isnan(ki67[~inside]).all()
    # Values equal the probe function of each voxel's RAS: node <-> SimpleITK geometry is consistent.
    expected = probe_ki67(voxel_ras(node_ijk_to_ras(ki67_node)))
    np.testing.assert_allclose(ki67[inside], expected[inside], rtol=0, atol=1e-3)
    probability = slicer.util.arrayFromVolume(probability_node)
    assert np.nanmin(probability) >= 0.0 and np.nanmax(probability) <= 1.0

    color = mrml_logic.color_table_node()
    assert color.GetName() == "KiMapKi67" and color.GetNumberOfColors() == 256
    for node, window in ((ki67_node, (0.0, 100.0)), (probability_node, (0.0, 1.0))):
        display = node.GetDisplayNode()
        assert display.GetColorNodeID() == color.GetID()
        assert not display.GetAutoWindowLevel()
        assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx(window)
        assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.0)
    assert ki67_node.GetAttribute("KiMap.Map") == "ki67"
    assert ki67_node.GetAttribute("KiMap.ProbabilityNodeID") == probability_node.GetID()
    assert json.loads(ki67_node.GetAttribute("KiMap.Summary"))["model_id"] == "probe-model"

    # Recomputing into the same nodes adds nothing.
    before = scene_state(case_scene.scene)
    logic.computeMap(volumes_of(case_scene), case_scene.label, probe, ki67Node=ki67_node,
                     probabilityNode=probability_node, lowerThreshold=5.0)
    assert scene_state(case_scene.scene) == before
    assert ki67_node.GetDisplayNode().GetLowerThreshold() == pytest.approx(5.0)


def test_segmentation_region_equals_labelmap_region(case_scene, probe):
    logic = KiMapLogic()
    from_label, probability = logic.computeMap(volumes_of(case_scene), case_scene.label, probe)
    before = scene_state(case_scene.scene)
    from_segmentation, _ = logic.computeMap(volumes_of(case_scene), case_scene.segmentation, probe,
                                            ki67Node=from_label, probabilityNode=probability)
    assert scene_state(case_scene.scene) == before  # the temporary labelmap is gone
    np.testing.assert_array_equal(np.isnan(slicer.util.arrayFromVolume(from_segmentation)), ~case_scene.tumor)


def test_predict_biopsies_table(case_scene, probe):
    logic = KiMapLogic()
    case_scene.markups.AddControlPoint(*(case_scene.ijk_to_ras @ np.array([19, 19, 12, 1.0]))[:3], "EDGE")
    table = logic.predictBiopsies(volumes_of(case_scene), case_scene.markups, probe, measuredKi67={"B2": 21.5})
    rows = mrml_logic.table_values(table)
    assert [row["biopsy"] for row in rows] == ["B1", "B2", "B3", "EDGE"]
    assert [table.GetTable().GetColumn(n).GetName() for n in range(table.GetNumberOfColumns())] == [
        name for name, *_ in mrml_logic.TABLE_COLUMNS]
    for index, row in enumerate(rows[:3]):
        position = np.zeros(3)
        case_scene.markups.GetNthControlPointPositionWorld(index, position)
        assert row["predicted_ki67"] == pytest.approx(float(probe_ki67(position)))
        assert row["probability_high"] == pytest.approx(float(probe_probability(probe_ki67(position))))
        assert (row["r"], row["a"], row["s"]) == pytest.approx(tuple(position))
        assert row["note"] == ""
    assert rows[1]["measured_ki67"] == 21.5 and math.isnan(rows[0]["measured_ki67"])
    assert math.isnan(rows[3]["predicted_ki67"]) and "ball voxels" in rows[3]["note"]
    assert table.GetColumnTitle("probability_high") == "P(high)" and not table.GetLocked()

    # Measured ki67 typed into the table survives a re-run into the same table.
    table.GetTable().GetColumnByName("measured_ki67").SetValue(0, 33.0)
    before = scene_state(case_scene.scene)
    logic.predictBiopsies(volumes_of(case_scene), case_scene.markups, probe, tableNode=table)
    assert scene_state(case_scene.scene) == before
    rows = mrml_logic.table_values(table)
    assert rows[0]["measured_ki67"] == 33.0 and rows[1]["measured_ki67"] == 21.5


def test_table_ki67_matches_map_at_points(case_scene, probe):
    """The biopsy table and the map agree at the voxel containing each point (both go through geometry)."""
    logic = KiMapLogic()
    table = logic.predictBiopsies(volumes_of(case_scene), case_scene.markups, probe)
    ki67_node, _ = logic.computeMap(volumes_of(case_scene), case_scene.label, probe)
    ras_to_ijk = np.linalg.inv(node_ijk_to_ras(ki67_node))
    array = slicer.util.arrayFromVolume(ki67_node)
    slope = np.linalg.norm([0.8, 0.5, 0.3]) * max(SPACING)  # the probe changes at most this much within a voxel
    for row in mrml_logic.table_values(table):
        i, j, k = np.rint(ras_to_ijk @ np.array([row["r"], row["a"], row["s"], 1.0]))[:3].astype(int)
        assert abs(array[k, j, i] - row["predicted_ki67"]) <= slope


@pytest.mark.parametrize("problem", ["missing sequence", "point outside", "no overlap", "transformed", "empty region",
                                     "cancel"])
def test_bad_input_raises_and_leaves_scene_unchanged(case_scene, probe, problem):
    logic = KiMapLogic()
    volumes = volumes_of(case_scene)
    region = case_scene.label
    progress = None
    expected: type[Exception] = KiMapError
    if problem == "missing sequence":
        volumes.pop("flair")
        match = "flair"
    elif problem == "point outside":
        case_scene.markups.AddControlPoint(500.0, 500.0, 500.0, "FAR")
        match = "point FAR .* is outside the t1c volume"
    elif problem == "no overlap":
        far = slicer.util.addVolumeFromArray(slicer.util.arrayFromVolume(volumes["t2"]),
                                             ijkToRAS=oblique_ijk_to_ras(origin=(400.0, 400.0, 400.0)), name="far")
        volumes["t2"] = far
        expected, match = GeometryError, "t2: does not overlap"
    elif problem == "transformed":
        transform = case_scene.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        volumes["t2"].SetAndObserveTransformNodeID(transform.GetID())
        expected, match = GeometryError, "under a transform"
    elif problem == "empty region":
        region = slicer.util.addVolumeFromArray(np.zeros(SHAPE_KJI, np.uint8), ijkToRAS=case_scene.ijk_to_ras,
                                                name="empty", nodeClassName="vtkMRMLLabelMapVolumeNode")
        match = "empty"
    else:
        expected, match = Cancelled, None

        def progress(fraction, message):
            return fraction < 0.5

    before = scene_state(case_scene.scene)
    with pytest.raises(expected, match=match):
        if problem == "point outside":
            logic.predictBiopsies(volumes, case_scene.markups, probe, progress=progress)
        else:
            logic.computeMap(volumes, region, probe, progress=progress)
    assert scene_state(case_scene.scene) == before


def test_mrb_round_trip(case_scene, probe, tmp_path):
    logic = KiMapLogic()
    table = logic.predictBiopsies(volumes_of(case_scene), case_scene.markups, probe, measuredKi67={"B1": 12.0})
    ki67_node, probability_node = logic.computeMap(volumes_of(case_scene), case_scene.label, probe)
    mrml_logic.set_slice_viewer_layers(case_scene.volumes["t1c"], ki67_node, opacity=0.7)
    ki67 = slicer.util.arrayFromVolume(ki67_node).copy()
    points = slicer.util.arrayFromMarkupsControlPoints(case_scene.markups).copy()
    rows = mrml_logic.table_values(table)
    path = mrml_logic.save_scene_mrb(tmp_path / "kimap.mrb")
    assert any(name.endswith(".mrml") for name in zipfile.ZipFile(path).namelist())

    scene = mrml_logic.load_scene_mrb(path)  # a fresh scene
    assert scene is not case_scene.scene
    loaded = slicer.util.getFirstNodeByClassByName("vtkMRMLScalarVolumeNode", ki67_node.GetName(), scene)
    assert loaded is not None and loaded.GetAttribute("KiMap.Map") == "ki67"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(loaded), ki67)  # NaN in the same places
    assert np.abs(node_ijk_to_ras(loaded) - node_ijk_to_ras(ki67_node)).max() < 1e-9
    display = loaded.GetDisplayNode()
    color = display.GetColorNode()
    assert color is not None and color.GetName() == "KiMapKi67" and color.GetNumberOfColors() == 256
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((0.0, 100.0))
    assert display.GetApplyThreshold() and not display.GetAutoWindowLevel()
    partner = scene.GetNodeByID(loaded.GetAttribute("KiMap.ProbabilityNodeID"))
    assert partner is not None and partner.GetName() == probability_node.GetName()
    markups = slicer.util.getFirstNodeByClassByName("vtkMRMLMarkupsFiducialNode", "Biopsies", scene)
    np.testing.assert_allclose(slicer.util.arrayFromMarkupsControlPoints(markups), points, atol=1e-6)
    loaded_table = slicer.util.getFirstNodeByClassByName("vtkMRMLTableNode", table.GetName(), scene)
    loaded_rows = mrml_logic.table_values(loaded_table)
    assert [r["biopsy"] for r in loaded_rows] == [r["biopsy"] for r in rows]
    for old, new in zip(rows, loaded_rows, strict=True):
        for key in ("predicted_ki67", "probability_high", "measured_ki67"):
            if math.isnan(old[key]):
                assert math.isnan(float(new[key]))
            else:  # Slicer's table TSV keeps 6 significant digits
                assert float(new[key]) == pytest.approx(old[key], rel=1e-5)
    composite = scene.GetSingletonNode("Red", "vtkMRMLSliceCompositeNode")
    assert composite is not None and composite.GetForegroundVolumeID() == loaded.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.7)


def test_export_map_writes_nan_outside_and_table(case_scene, probe, tmp_path):
    logic = KiMapLogic()
    table = logic.predictBiopsies(volumes_of(case_scene), case_scene.markups, probe)
    ki67_node, _ = logic.computeMap(volumes_of(case_scene), case_scene.label, probe)
    keep = tmp_path / "keep.txt"
    keep.write_text("the chosen folder is never emptied")
    folder = logic.exportMap(ki67_node, tmp_path, tableNode=table, formats=("nrrd", "nifti"))
    assert folder.parent == tmp_path and keep.exists()
    for name in ("ki67_map.nrrd", "ki67_map.nii.gz", "ki67_probability.nrrd", "region.nrrd", "summary.json",
                 "biopsies.csv"):
        assert (folder / name).is_file(), name
    image = sitk.ReadImage(str(folder / "ki67_map.nrrd"))
    array = sitk.GetArrayFromImage(image)
    np.testing.assert_array_equal(np.isnan(array), ~case_scene.tumor)
    np.testing.assert_allclose(geometry.ijk_to_ras_matrix(image), node_ijk_to_ras(ki67_node), atol=1e-6)
    assert "B1" in (folder / "biopsies.csv").read_text()
    with pytest.raises(KiMapError, match="at least one format"):
        logic.exportMap(ki67_node, tmp_path, formats=())


def test_export_map_keeps_user_files_and_the_scene_s_own_files(case_scene, probe, tmp_path):
    """exportMap replaces only an earlier, unchanged KiMap map; a folder holding a file the scene was loaded
    from, or a file the user added, is refused before anything is written (issue 12, items 2 and 3)."""
    logic = KiMapLogic()
    ki67_node, _ = logic.computeMap(volumes_of(case_scene), case_scene.label, probe)
    case = tmp_path / "case"
    case.mkdir()
    (case / "t1c.nrrd").write_bytes(b"the t1c the scene was loaded from")
    storage = logic.scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(case / "t1c.nrrd"))
    t1c = case_scene.volumes["t1c"]
    t1c.SetAndObserveStorageNodeID(storage.GetID())
    try:
        with pytest.raises(KiMapError, match=rf"^export folder: {case} holds the input scene file of "
                                             rf"'{t1c.GetName()}' \({case / 't1c.nrrd'}\)"):
            logic.exportMap(ki67_node, tmp_path, folderName="case", formats=("nrrd",))
    finally:
        t1c.SetAndObserveStorageNodeID(None)
        logic.scene.RemoveNode(storage)
    assert (case / "t1c.nrrd").read_bytes() == b"the t1c the scene was loaded from"

    folder = logic.exportMap(ki67_node, tmp_path, folderName="map", formats=("nrrd",))
    manifest = json.loads((folder / ".kimap-manifest.json").read_text())
    assert manifest["kind"] == "map" and "ki67_map.nrrd" in manifest["files"]
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(KiMapError, match=r"holds files KiMap did not write .*notes\.txt \(not KiMap's\)"):
        logic.exportMap(ki67_node, tmp_path, folderName="map", formats=("nifti",))
    assert (folder / "ki67_map.nrrd").is_file() and (folder / "notes.txt").read_text() == "mine"
    (folder / "notes.txt").unlink()
    logic.exportMap(ki67_node, tmp_path, folderName="map", formats=("nifti",))
    assert sorted(p.name for p in folder.iterdir()) == [".kimap-manifest.json", "ki67_map.nii.gz",
                                                        "ki67_probability.nii.gz", "overlay.png", "region.nii.gz",
                                                        "summary.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case", "map"]


def test_slice_view_overlay_shows_map_colors(case_scene, probe):
    logic = KiMapLogic()
    ki67_node, _ = logic.computeMap(volumes_of(case_scene), case_scene.label, probe)
    centre = (case_scene.ijk_to_ras @ np.array([20, 20, 12, 1.0]))[:3]
    rgba = mrml_logic.slice_view_image(case_scene.volumes["t1c"], ki67_node, opacity=1.0, ras=tuple(centre),
                                       size=120)
    assert rgba.shape == (120, 120, 4)
    rgb = rgba[..., :3].astype(int)
    coloured = (np.abs(rgb[..., 0] - rgb[..., 1]) > 10) | (np.abs(rgb[..., 1] - rgb[..., 2]) > 10)
    grey = ~coloured & (rgb.sum(axis=-1) > 30)
    assert coloured.sum() > 50, "the map is not visible over the t1c"
    assert grey.sum() > coloured.sum(), "outside the region the t1c must show through (NaN transparent)"
    assert coloured[60, 60]


def test_dependency_message_names_what_to_install():
    assert mrml_logic.dependency_message([]) is None
    message = mrml_logic.dependency_message(["radiomics", "sklearn"])
    assert "SlicerRadiomics" in message and "pip_install('scikit-learn')" in message


def test_model_card_text():
    text = KiMapLogic.modelCardText(probe_model())
    assert "probe-model" in text and "t1c, t2, flair" in text and "Research use only" in text


def test_packaged_model_end_to_end(case_scene):
    """The real pipeline (features + packaged model) on the small oblique scene, when the model is installed."""
    if mrml_logic.dependency_message():
        pytest.skip(mrml_logic.dependency_message())
    from KiMapLib.model import bundle as model_bundle

    try:
        model = model_bundle.load_model()
    except KiMapError as error:
        pytest.skip(f"no packaged model yet: {error}")
    logic = KiMapLogic()
    volumes = {name: case_scene.volumes[name] for name in model.required_sequences}
    small = np.zeros(SHAPE_KJI, np.uint8)
    small[11:13, 18:22, 18:22] = 1
    region = slicer.util.addVolumeFromArray(small, ijkToRAS=case_scene.ijk_to_ras, name="small region",
                                            nodeClassName="vtkMRMLLabelMapVolumeNode")
    table = logic.predictBiopsies(volumes, case_scene.markups, model)
    rows = mrml_logic.table_values(table)
    assert all(math.isfinite(row["predicted_ki67"]) for row in rows)
    ki67_node, _ = logic.computeMap(volumes, region, model)
    array = slicer.util.arrayFromVolume(ki67_node)
    assert np.isfinite(array[small.astype(bool)]).any() and np.isnan(array[~small.astype(bool)]).all()
    assert np.abs(node_ijk_to_ras(ki67_node) - node_ijk_to_ras(case_scene.volumes["t1c"])).max() == 0.0


def test_demo_scene_writes_mrb_that_reloads_with_overlay(tmp_path):
    """``write_demo_scene`` (called by ``make demo``): the .mrb reopens with map, color node, markups and table."""
    from KiMapLib.inputs.biopsies import Biopsy
    from KiMapLib.inputs.case import prepare_case
    from KiMapLib.slicer.demo_scene import write_demo_scene

    source = make_case_scene()
    images = {name: mrml_logic.image_from_node(node, name) for name, node in source.volumes.items()}
    case = prepare_case(images)
    region = geometry.copy_geometry(source.tumor.astype(np.uint8), case.reference)
    result = fake_compute_map(case, probe_model(), region=region)
    biopsies = [Biopsy("p1", f"B{n}", (source.ijk_to_ras @ np.array([*ijk, 1.0]))[:3], ki67=10.0 * n)
                for n, ijk in enumerate(((20, 20, 12), (23, 18, 13)), start=1)]
    rows, _ = fake_predict_biopsies(case, biopsies, probe_model())
    paths = write_demo_scene(tmp_path, case, result, rows, size=200)
    assert [p.name for p in paths] == ["kimap_demo.mrb", "overlay_slicer.png"]

    import matplotlib.image

    picture = matplotlib.image.imread(paths[1])
    assert picture.shape[:2] == (200, 200)
    rgb = (picture[..., :3] * 255).astype(int)
    assert ((np.abs(rgb[..., 0] - rgb[..., 1]) > 10) | (np.abs(rgb[..., 1] - rgb[..., 2]) > 10)).sum() > 100

    scene = mrml_logic.load_scene_mrb(paths[0])
    ki67 = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode", scene)
            if n.GetAttribute("KiMap.Map") == "ki67"]
    assert len(ki67) == 1
    np.testing.assert_array_equal(np.isnan(slicer.util.arrayFromVolume(ki67[0])), ~source.tumor)
    assert np.abs(node_ijk_to_ras(ki67[0]) - source.ijk_to_ras).max() < 1e-6
    assert ki67[0].GetDisplayNode().GetColorNode().GetName() == "KiMapKi67"
    markups = slicer.util.getFirstNodeByClassByName("vtkMRMLMarkupsFiducialNode", "Biopsies", scene)
    assert markups.GetNumberOfControlPoints() == 2 and markups.GetNthControlPointLabel(1) == "B2"
    table = slicer.util.getFirstNodeByClassByName("vtkMRMLTableNode", "Biopsies ki67", scene)
    rows_loaded = mrml_logic.table_values(table)
    assert [float(r["measured_ki67"]) for r in rows_loaded] == [10.0, 20.0]
    composite = scene.GetSingletonNode("Red", "vtkMRMLSliceCompositeNode")
    assert composite.GetForegroundVolumeID() == ki67[0].GetID()


def test_export_map_dicom_planning_from_the_scene(case_scene, probe, tmp_path):
    from KiMapLib.inputs.dicom import write_mr_series
    from KiMapLib.slicer.logic import image_from_node

    logic = KiMapLogic()
    ki67_node, _ = logic.computeMap(volumes_of(case_scene), case_scene.label, probe)
    t1c = image_from_node(case_scene.volumes["t1c"], "t1c")
    write_mr_series(t1c, tmp_path / "t1c_dicom", patient_id="SCENE01", patient_name="SYNTHETIC^SCENE",
                    series_description="t1c (SYNTHETIC)")
    folder = logic.exportMap(ki67_node, tmp_path / "export", formats=("nrrd", "dicom"),
                             referenceDicomDirectory=tmp_path / "t1c_dicom", levels=["ki67>=10"])
    planning = folder.with_name(f"{folder.name}_planning")
    report = json.loads((planning / "export_report.json").read_text())
    assert [roi["name"] for roi in report["rois"]] and report["rois"][0]["dice_contours_vs_mask"] >= 0.95
    assert (planning / "dicom" / "KiMap_ki67_levels_RTSTRUCT.dcm").is_file()
    assert report["reference_series"]["PatientID"] == "SCENE01"

    # A reference series on another grid is refused before anything is written.
    shifted = sitk.Image(t1c)
    shifted.SetOrigin([v + 7.0 for v in t1c.GetOrigin()])
    write_mr_series(shifted, tmp_path / "other_dicom", patient_id="SCENE01", patient_name="SYNTHETIC^SCENE",
                    series_description="t1c (SYNTHETIC)")
    with pytest.raises(KiMapError, match="--reference-dicom other_dicom"):
        logic.exportMap(ki67_node, tmp_path / "export2", formats=("nrrd", "dicom"),
                        referenceDicomDirectory=tmp_path / "other_dicom")
    assert not (tmp_path / "export2").exists()


def test_tumour_segments_round_trip_on_an_oblique_grid(case_scene, probe):
    """Three named, colored segments from a BraTS label map come back as the same labels; computeMap with them maps
    every visible segment except the necrotic core."""
    from KiMapLib.slicer.segments import SEGMENT_NAMES, fill_tumour_segments, tumour_labels

    t1c = case_scene.volumes["t1c"]
    reference = mrml_logic.image_from_node(t1c, "t1c")
    k, _, _ = np.indices(SHAPE_KJI)
    labels = np.where(case_scene.tumor, np.where(k < 11, 1, np.where(k < 13, 3, 2)), 0).astype(np.uint8)
    image = geometry.copy_geometry(labels, reference)
    segmentation = case_scene.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "KiMap tumour")
    fill_tumour_segments(segmentation, image, t1c)
    names = [segmentation.GetSegmentation().GetNthSegment(n).GetName() for n in range(3)]
    assert names == list(SEGMENT_NAMES.values())
    back = sitk.GetArrayFromImage(tumour_labels(segmentation, t1c))
    np.testing.assert_array_equal(back, labels)
    ki67_node, _ = KiMapLogic().computeMap(volumes_of(case_scene), segmentation, probe)
    mapped = np.isfinite(slicer.util.arrayFromVolume(ki67_node))
    np.testing.assert_array_equal(mapped, (labels == 2) | (labels == 3))
    # a segment the user adds (no KiMap tag) extends the viable tumour: mapped, never silently dropped
    extra = np.zeros(SHAPE_KJI, np.uint8)
    extra[2:4, 2:5, 2:5] = 1
    extra_node = slicer.util.addVolumeFromArray(extra, ijkToRAS=case_scene.ijk_to_ras, name="extra",
                                                nodeClassName="vtkMRMLLabelMapVolumeNode")
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(extra_node, segmentation)
    back = sitk.GetArrayFromImage(tumour_labels(segmentation, t1c))
    np.testing.assert_array_equal(back[extra > 0], 2)


TCGA = Path(__file__).resolve().parents[3] / "shared" / "data" / "tcga-du-7294"


@pytest.mark.skipif(not (TCGA / "t1c.nii.gz").is_file(), reason="../shared/data/tcga-du-7294 not present")
def test_propose_tumor_region_on_real_mri_gives_editable_segments():
    from KiMapLib.slicer.segments import tumour_labels

    scene = mrml_logic.setup_headless_scene()
    volumes = {}
    for name in ("t1", "t1c", "t2", "flair"):
        image = sitk.ReadImage(str(TCGA / f"{name}.nii.gz"), sitk.sitkFloat32)
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name.upper())
        mrml_logic.update_node_from_image(node, image)
        volumes[name] = node
    before = scene_state(scene)
    with pytest.raises(KiMapError, match="only t1c"):  # t1c alone is refused, and the scene stays as it was
        KiMapLogic().proposeTumorRegion({"t1c": volumes["t1c"]})
    assert scene_state(scene) == before
    # a failure while the segments are made leaves the user's own segmentation as it was
    mine = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    mine.GetSegmentation().AddEmptySegment("my edit", "my edit")
    before = scene_state(scene)

    def broken(*args, **kwargs):
        raise KiMapError("simulated failure", input_name="tumour region")

    import KiMapLib.slicer.logic as logic_module

    original = logic_module.fill_tumour_segments
    logic_module.fill_tumour_segments = broken
    try:
        with pytest.raises(KiMapError, match="simulated"):
            KiMapLogic().proposeTumorRegion(volumes, mine)
    finally:
        logic_module.fill_tumour_segments = original
    assert scene_state(scene) == before
    assert [mine.GetSegmentation().GetNthSegment(n).GetName() for n in range(mine.GetSegmentation()
                                                                             .GetNumberOfSegments())] == ["my edit"]
    segmentation = KiMapLogic().proposeTumorRegion(volumes)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 3
    labels = sitk.GetArrayFromImage(tumour_labels(segmentation, volumes["t1c"])) > 0
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(TCGA / "tumor_seg_fusion_mav.nii.gz"))) > 0
    assert 2 * (labels & reference).sum() / (labels.sum() + reference.sum()) >= 0.80


def test_load_map_refuses_a_summary_with_a_non_numeric_threshold(case_scene, probe, tmp_path):
    logic = KiMapLogic()
    ki67_node, _ = logic.computeMap(volumes_of(case_scene), case_scene.label, probe)
    folder = logic.exportMap(ki67_node, tmp_path, formats=("nrrd",))
    loaded, _ = logic.loadMap(folder, case_scene.volumes["t1c"])
    summary = json.loads((folder / "summary.json").read_text())
    assert json.loads(loaded.GetAttribute("KiMap.Summary"))["model_id"] == summary["model_id"]
    summary["threshold_percent"] = "twenty"
    (folder / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(KiMapError, match=r"^map folder: summary.json field threshold_percent is 'twenty', not a "
                                         r"number between 0 and 100"):
        logic.loadMap(folder, case_scene.volumes["t1c"])
