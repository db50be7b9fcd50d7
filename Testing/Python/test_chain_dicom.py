"""The whole chain offline: synthetic case as DICOM -> packaged model -> map -> planning export."""

import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from KiMapLib.export.planning import export_planning
from KiMapLib.features.neighbourhood import ball_mask_array
from KiMapLib.inputs.biopsies import read_biopsies
from KiMapLib.inputs.case import prepare_case
from KiMapLib.inputs.geometry import copy_geometry, nearest_voxel, same_grid
from KiMapLib.inputs.images import read_volume
from KiMapLib.maps.mapping import compute_map, write_map
from KiMapLib.model.bundle import load_model
from KiMapLib.phantom import generate_cohort


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_dicom_case_to_planning_export(tmp_path):
    generate_cohort(tmp_path / "cohort", 1, seed=31, dicom=True)
    patient = tmp_path / "cohort" / "SYN001"
    model = load_model()  # the packaged model, verified against Resources/Models.json
    t1c = read_volume(patient / "dicom" / "t1c", "t1c")
    assert same_grid(t1c, sitk.ReadImage(str(patient / "t1c.nrrd")))
    volumes = {name: read_volume(patient / "dicom" / name, name) for name in model.required_sequences}
    case = prepare_case(volumes, model.settings, required=model.required_sequences)

    biopsy = read_biopsies(patient / "biopsies.csv")[0]
    centre = nearest_voxel(t1c, biopsy.ras)
    small = ball_mask_array(t1c.GetSize()[::-1], centre, t1c.GetSpacing(), 3.0)
    result = compute_map(case, model, copy_geometry(small.astype(np.uint8), t1c))
    source = result.summary["t1c_source"]
    first = pydicom.dcmread(sorted((patient / "dicom" / "t1c").iterdir())[0], stop_before_pixels=True)
    assert source["SeriesInstanceUID"] == first.SeriesInstanceUID
    assert source["FrameOfReferenceUID"] == first.FrameOfReferenceUID
    write_map(result, tmp_path / "map")

    report = export_planning(tmp_path / "map", patient / "dicom" / "t1c", tmp_path / "planning",
                             levels=["prob>=0.05"])
    assert report["reference_series"]["PatientID"] == "SYN001"
    assert report["rois"][0]["dice_contours_vs_mask"] >= 0.95
    assert report["interval_level"] == 0.9 and report["notes"] == []  # the packaged model has intervals and domain
    assert report["dicom"]["lower"]["SeriesDescription"] == "KiMap ki67 lower 90% bound (%) (research)"
    assert {"upper", "ood"} <= report["dicom"].keys()
    stored = json.loads((tmp_path / "planning" / "export_report.json").read_text())
    assert stored["reference_series"]["SeriesInstanceUID"] == first.SeriesInstanceUID
