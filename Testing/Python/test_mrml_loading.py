"""KiMapLogic's file and demo-case inputs and the split map computation (slicer-core, no Qt, no browser).

``loadVolume`` (files and DICOM folders), ``loadRegion`` (labels -> named segments), ``loadBiopsies``,
``loadDemoCase`` (the ``kimap demo`` patient), and ``prepareMap`` / ``job.run`` (in a worker thread) /
``addMapNodes`` against ``computeMap``. Volumes are oblique and anisotropic; failed calls leave the scene as it was.
"""

from __future__ import annotations

import csv
import threading

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

from dicom_case import oblique_volume  # noqa: E402
from test_mrml_logic import (  # noqa: E402
    make_case_scene,
    node_ijk_to_ras,
    probe,  # noqa: F401  (fixture)
    scene_state,
    volumes_of,
)

from KiMapLib.errors import Cancelled, GeometryError, KiMapError  # noqa: E402
from KiMapLib.inputs.geometry import copy_geometry, ijk_to_ras_matrix, image_from_array  # noqa: E402
from KiMapLib.slicer import KiMapLogic  # noqa: E402
from KiMapLib.slicer.nodes import region_image  # noqa: E402
from KiMapLib.slicer.scene_io import setup_headless_scene  # noqa: E402
from KiMapLib.slicer.segments import SEGMENT_NAMES, tumour_labels  # noqa: E402
from KiMapLib.slicer.tables import table_values  # noqa: E402


@pytest.fixture
def scene():
    return setup_headless_scene()


def test_load_volume_file_keeps_geometry_and_values(scene, tmp_path):
    image = oblique_volume(seed=3)
    path = tmp_path / "T1CE_patient.nii.gz"
    sitk.WriteImage(image, str(path))
    node = KiMapLogic(scene).loadVolume(path)
    assert node.GetName() == "T1CE_patient"
    np.testing.assert_allclose(node_ijk_to_ras(node), ijk_to_ras_matrix(image), atol=1e-5)  # NIfTI stores float32
    assert np.array_equal(slicer.util.arrayFromVolume(node), sitk.GetArrayFromImage(image))
    named = KiMapLogic(scene).loadVolume(path, "t1c")
    assert named.GetName() == "T1C" and named.GetAttribute("KiMap.Sequence") == "t1c"


def test_load_volume_from_a_dicom_folder_remembers_the_folder(scene, tmp_path):
    pytest.importorskip("pydicom")
    from KiMapLib.inputs.dicom import read_series, write_mr_series

    image = oblique_volume(seed=4, integer=True)
    write_mr_series(image, tmp_path / "t1c", patient_id="P1", patient_name="TEST^P1", series_description="t1c")
    node = KiMapLogic(scene).loadVolume(tmp_path / "t1c", "t1c")
    expected = read_series(tmp_path / "t1c")
    assert node.GetAttribute("KiMap.DicomFolder") == str((tmp_path / "t1c").resolve())
    np.testing.assert_allclose(node_ijk_to_ras(node), ijk_to_ras_matrix(expected), atol=1e-9)
    assert np.array_equal(slicer.util.arrayFromVolume(node), sitk.GetArrayFromImage(expected))


def test_load_volume_refuses_a_missing_file_and_adds_nothing(scene, tmp_path):
    before = scene_state(scene)
    with pytest.raises(KiMapError, match="t2: file not found"):
        KiMapLogic(scene).loadVolume(tmp_path / "nope.nrrd", "t2")
    assert scene_state(scene) == before


def test_load_region_gives_kimaps_tumour_segments_for_brats_labels(tmp_path):
    case = make_case_scene()
    t1c = case.volumes["t1c"]
    _, j, i = np.indices(case.tumor.shape)
    labels = np.zeros(case.tumor.shape, np.uint8)
    labels[case.tumor] = 2  # BraTS: 1 necrotic core, 2 oedema / non-enhancing, 3 enhancing
    labels[case.tumor & (i < 20)] = 3
    labels[case.tumor & (i < 20) & (j < 20)] = 1
    reference = image_from_array(np.zeros(case.tumor.shape, np.float32), case.ijk_to_ras)
    path = tmp_path / "tumor_label.nrrd"
    sitk.WriteImage(copy_geometry(labels, reference), str(path))
    segmentation = KiMapLogic(case.scene).loadRegion(path, t1c)
    names = [segmentation.GetSegmentation().GetNthSegment(n).GetName() for n in range(3)]
    assert names == list(SEGMENT_NAMES.values())
    assert np.array_equal(sitk.GetArrayFromImage(tumour_labels(segmentation, t1c)), labels)
    oedema = segmentation.GetSegmentation().GetNthSegmentID(1)
    segmentation.GetDisplayNode().SetSegmentVisibility(oedema, False)
    assert np.array_equal(sitk.GetArrayFromImage(tumour_labels(segmentation, t1c)), np.where(labels == 2, 0, labels))


def test_load_region_keeps_a_plain_mask_as_one_mapped_segment(tmp_path):
    case = make_case_scene()
    t1c = case.volumes["t1c"]
    path = tmp_path / "my_tumour.nii.gz"
    sitk.WriteImage(image_from_array(case.tumor.astype(np.uint8) * 7, case.ijk_to_ras), str(path))
    segmentation = KiMapLogic(case.scene).loadRegion(path, t1c)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    assert segmentation.GetSegmentation().GetNthSegment(0).GetName() == "my_tumour"
    assert tumour_labels(segmentation, t1c) is None  # not KiMap's tumour segments: all of it is mapped
    assert np.array_equal(sitk.GetArrayFromImage(region_image(segmentation, t1c)) > 0, case.tumor)


def test_load_region_refuses_empty_or_distant_labels_and_adds_nothing(tmp_path):
    case = make_case_scene()
    empty = image_from_array(np.zeros(case.tumor.shape, np.uint8), case.ijk_to_ras)
    sitk.WriteImage(empty, str(tmp_path / "empty.nrrd"))
    far = image_from_array(case.tumor.astype(np.uint8), case.ijk_to_ras)
    far.SetOrigin((900.0, 900.0, 900.0))
    sitk.WriteImage(far, str(tmp_path / "far.nrrd"))
    before = scene_state(case.scene)
    with pytest.raises(KiMapError, match="empty"):
        KiMapLogic(case.scene).loadRegion(tmp_path / "empty.nrrd", case.volumes["t1c"])
    with pytest.raises(GeometryError, match="does not overlap"):
        KiMapLogic(case.scene).loadRegion(tmp_path / "far.nrrd", case.volumes["t1c"])
    assert scene_state(case.scene) == before


def test_load_biopsies_csv_points_and_measured_ki67(scene, tmp_path):
    path = tmp_path / "biopsies.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "biopsy_id", "r", "a", "s", "ki67"])
        writer.writerow(["P1", "B7", "12.5", "-3.25", "40", "31.5"])
        writer.writerow(["P1", "B8", "-1", "2", "3", ""])
    markups = KiMapLogic(scene).loadBiopsies(path)
    assert [markups.GetNthControlPointLabel(i) for i in range(2)] == ["B7", "B8"]
    point = np.zeros(3)
    markups.GetNthControlPointPositionWorld(0, point)
    assert np.array_equal(point, [12.5, -3.25, 40.0])
    table = scene.GetNodeByID(markups.GetAttribute("KiMap.BiopsyTable"))
    rows = {row["biopsy"]: row for row in table_values(table)}
    assert rows["B7"]["measured_ki67"] == 31.5 and np.isnan(rows["B8"]["measured_ki67"])


def test_demo_case_is_the_kimap_demo_patient(scene, tmp_path):
    from KiMapLib.phantom import DEMO_SEED, demo_patient, generate_cohort

    case = KiMapLogic(scene).loadDemoCase()
    records = generate_cohort(tmp_path / "cohort", 1, DEMO_SEED)  # what `kimap demo` maps
    folder = tmp_path / "cohort" / records[0]["patient_id"]
    assert case["patient_id"] == records[0]["patient_id"]
    for sequence in ("t1c", "t2", "flair", "adc"):
        written = sitk.ReadImage(str(folder / f"{sequence}.nrrd"))
        node = case["volumes"][sequence]
        assert np.array_equal(slicer.util.arrayFromVolume(node), sitk.GetArrayFromImage(written))
        np.testing.assert_allclose(node_ijk_to_ras(node), ijk_to_ras_matrix(written), atol=1e-9)
    phantom = sitk.GetArrayFromImage(demo_patient().label)  # 1 necrotic, 2 enhancing rim, 3 oedema
    brats = np.choose(phantom, [0, 1, 3, 2])  # KiMap's (BraTS) labels: 1 necrotic, 2 oedema, 3 enhancing
    region = case["region"]
    names = [region.GetSegmentation().GetNthSegment(i).GetName() for i in range(3)]
    assert names == list(SEGMENT_NAMES.values())
    assert np.array_equal(sitk.GetArrayFromImage(tumour_labels(region, case["volumes"]["t1c"])), brats)
    assert case["biopsies"].GetNumberOfControlPoints() == 0
    assert case["covariates"]["age"] == records[0]["covariates"]["age"]
    assert "SYNTHETIC" in case["notice"]


def test_prepare_run_add_equals_compute_map_and_runs_off_thread(probe):  # noqa: F811
    case = make_case_scene()
    logic = KiMapLogic(case.scene)
    expected, _ = logic.computeMap(volumes_of(case), case.segmentation, probe)
    job = logic.prepareMap(volumes_of(case), case.segmentation, probe)
    before = scene_state(case.scene)
    results = {}
    worker = threading.Thread(target=lambda: results.update(map=job.run()))
    worker.start()
    worker.join()
    assert scene_state(case.scene) == before  # the job touched no node
    ki67, probability = logic.addMapNodes(job, results["map"])
    assert np.array_equal(node_ijk_to_ras(ki67), node_ijk_to_ras(case.volumes["t1c"]))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(ki67), slicer.util.arrayFromVolume(expected))
    assert ki67.GetAttribute("KiMap.ProbabilityNodeID") == probability.GetID()


def test_cancelled_job_adds_nothing(probe):  # noqa: F811
    case = make_case_scene()
    logic = KiMapLogic(case.scene)
    job = logic.prepareMap(volumes_of(case), case.label, probe)
    before = scene_state(case.scene)
    with pytest.raises(Cancelled):
        job.run(lambda fraction, message: False)
    assert scene_state(case.scene) == before
