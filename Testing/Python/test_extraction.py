"""Per-biopsy extraction equals pyradiomics on the same ball; bad points fail alone, with their names."""

import json
import logging

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import synthetic_patient

from KiMapLib.errors import ModelError
from KiMapLib.features.extraction import extract_biopsies
from KiMapLib.features.neighbourhood import ball_mask
from KiMapLib.inputs.biopsies import Biopsy, read_biopsies
from KiMapLib.inputs.case import prepare_case
from KiMapLib.inputs.geometry import voxel_to_ras
from KiMapLib.settings import ExtractionSettings


@pytest.fixture(scope="module")
def patient():
    return synthetic_patient(3)


def test_biopsy_features_equal_pyradiomics_on_the_same_ball(patient):
    from radiomics import featureextractor, setVerbosity

    setVerbosity(logging.ERROR)
    settings = ExtractionSettings(ball_radius_mm=4.0)
    case = prepare_case(patient["volumes"], settings)
    biopsy = patient["biopsies"][0]
    rows, errors = extract_biopsies(case, [biopsy])
    assert not errors
    row = rows[0]
    centre = (row["voxel_i"], row["voxel_j"], row["voxel_k"])
    np.testing.assert_allclose(voxel_to_ras(case.reference, centre), biopsy.ras, atol=1e-6)
    extractor = featureextractor.RadiomicsFeatureExtractor(binWidth=25, normalize=False, force2D=False)
    extractor.disableAllFeatures()
    for name in settings.feature_classes:
        extractor.enableFeatureClassByName(name)
    mask = ball_mask(case.images["t1c"], centre, 4.0, case.foreground)
    compared = 0
    for sequence in ("t1c", "flair", "adc"):
        direct = extractor.execute(case.images[sequence], mask)
        for key, value in direct.items():
            if key.startswith("original_"):
                assert row[f"{sequence}_{key}"] == pytest.approx(float(value), rel=1e-9, abs=1e-12), key
                compared += 1
    assert compared == 3 * 93  # every feature of the six classes, shape excluded
    assert not any("_shape_" in key for key in row)


def test_bad_points_get_their_own_error_and_the_others_continue(patient):
    case = prepare_case(patient["volumes"], ExtractionSettings(ball_radius_mm=3.0))
    good = patient["biopsies"][1]
    outside = Biopsy("P03", "FAR", good.ras + 400.0)
    background = Biopsy("P03", "EDGE", voxel_to_ras(case.reference, (0, 0, 0)))
    rows, errors = extract_biopsies(case, [outside, good, background])
    assert [row["biopsy_id"] for row in rows] == [good.biopsy_id]
    messages = [str(e) for e in errors]
    assert messages[0].startswith("biopsy P03/FAR: point (") and "outside the t1c volume" in messages[0]
    assert messages[1].startswith("biopsy P03/EDGE: lies in the image background")


def test_missing_required_sequence_is_named(patient):
    volumes = {k: v for k, v in patient["volumes"].items() if k != "adc"}
    with pytest.raises(ModelError, match="^adc: the model needs t1c, t2, flair, adc but adc was not given"):
        prepare_case(volumes, required=("t1c", "t2", "flair", "adc"))


def test_markups_json_lps_and_csv_ras_give_the_same_points(tmp_path, patient):
    biopsy = patient["biopsies"][0]
    lps = biopsy.ras * [-1, -1, 1]
    markups = {"markups": [{"type": "Fiducial", "coordinateSystem": "LPS",
                            "controlPoints": [{"label": "B01", "position": lps.tolist()}]}]}
    (tmp_path / "points.mrk.json").write_text(json.dumps(markups))
    (tmp_path / "points.csv").write_text(f"patient_id,biopsy_id,r,a,s\nP03,B01,{biopsy.ras[0]},{biopsy.ras[1]},"
                                         f"{biopsy.ras[2]}\n")
    from_json = read_biopsies(tmp_path / "points.mrk.json", "P03")[0]
    from_csv = read_biopsies(tmp_path / "points.csv")[0]
    np.testing.assert_allclose(from_json.ras, biopsy.ras)
    np.testing.assert_allclose(from_csv.ras, biopsy.ras)


def test_normalization_is_zscore_times_scale_inside_foreground(patient):
    case = prepare_case(patient["volumes"])
    values = sitk.GetArrayFromImage(case.images["t2"])[case.foreground]
    assert values.mean() == pytest.approx(0.0, abs=1e-3)
    assert values.std() == pytest.approx(100.0, rel=1e-4)
    assert np.all(sitk.GetArrayFromImage(case.images["t2"])[~case.foreground] == 0)
