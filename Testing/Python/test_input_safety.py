"""Hostile and careless inputs (issue 12): no silent wrong output, no memory blow-up, one clear error per bad input.

One section per class: a sequence that does not cover a biopsy's ball (its features are missing, never padding);
grids too coarse or too fine for the ball; truncated DICOM slices; sizes estimated before allocating; malformed
points files; CSV encodings, byte-order marks and huge fields; out-of-range clinical values; an empty segmentation.
"""

from __future__ import annotations

import json
import math
import re
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from KiMapLib.app.cli import main
from KiMapLib.errors import BiopsyError, FieldOfViewError, GeometryError, KiMapError
from KiMapLib.features.extraction import extract_biopsies, features_at_voxel
from KiMapLib.features.neighbourhood import MIN_KERNEL_VOXELS, ball_offsets, min_kernel_voxels
from KiMapLib.features.table import read_table
from KiMapLib.inputs import csv_text
from KiMapLib.inputs.biopsies import Biopsy, read_biopsies, read_biopsies_csv
from KiMapLib.inputs.case import prepare_case
from KiMapLib.inputs.dicom import write_mr_series
from KiMapLib.inputs.geometry import MAX_BALL_VOXELS, voxel_to_ras
from KiMapLib.inputs.images import read_volume
from KiMapLib.limits import MEMORY_LIMIT_ENV
from KiMapLib.maps import mapping
from KiMapLib.settings import ExtractionSettings

SHAPE = (30, 30, 30)  # [k, j, i], 1 mm voxels, axis-aligned
FLAIR_I = 14  # the flair covers t1c columns i = 0..13 only


def brain_volume(seed: int, shape=SHAPE, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    """Textured values in a box 'brain' (2..27 on every axis), zero outside (the foreground is the box)."""
    rng = np.random.default_rng(seed)
    values = np.zeros(shape, np.float32)
    inner = tuple(slice(2, n - 2) for n in shape)
    values[inner] = 100 + 20 * rng.normal(size=values[inner].shape)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def partial_flair(t1c: sitk.Image, columns: int = FLAIR_I) -> sitk.Image:
    """A flair on its own grid (so it is resampled) that covers only the first ``columns`` t1c columns."""
    values = sitk.GetArrayFromImage(brain_volume(5))[:, :, :columns] + 50.0
    flair = sitk.GetImageFromArray(values)
    flair.CopyInformation(sitk.RegionOfInterest(t1c, [columns, *t1c.GetSize()[1:]], [0, 0, 0]))
    return flair


# -- 4a. a ball that leaves one sequence's field of view --------------------------------------------------------


def test_coverage_of_a_partial_sequence_is_its_field_of_view_on_the_t1c_grid():
    t1c = brain_volume(1)
    case = prepare_case({"t1c": t1c, "flair": partial_flair(t1c)}, ExtractionSettings(ball_radius_mm=3.0))
    i = np.indices(SHAPE)[2]
    np.testing.assert_array_equal(case.coverage["flair"], i < FLAIR_I)
    assert "t1c" not in case.coverage
    assert any("flair: covers 47% of the t1c grid" in note for note in case.notes)


def test_biopsy_whose_ball_leaves_the_flair_gets_no_flair_features_and_its_own_error():
    t1c = brain_volume(1)
    settings = ExtractionSettings(ball_radius_mm=3.0, feature_classes=("firstorder", "glcm"))
    case = prepare_case({"t1c": t1c, "flair": partial_flair(t1c)}, settings)
    t1c_only = prepare_case({"t1c": t1c}, settings)
    inside = Biopsy("P1", "IN", voxel_to_ras(t1c, (8, 15, 15)))  # ball reaches i = 11 < 14
    edge = Biopsy("P1", "EDGE", voxel_to_ras(t1c, (12, 15, 15)))  # ball reaches i = 15: outside the flair
    rows, errors = extract_biopsies(case, [inside, edge])
    assert [row["biopsy_id"] for row in rows] == ["IN", "EDGE"]  # the point stays, the other points continue
    assert len(errors) == 1 and isinstance(errors[0], FieldOfViewError) and errors[0].sequence == "flair"
    offsets = ball_offsets(t1c.GetSpacing(), 3.0)
    outside = int(np.sum(12 + offsets[:, 2] >= FLAIR_I))  # all inside the box foreground
    assert str(errors[0]).startswith(f"biopsy P1/EDGE: {outside} voxel(s) of its 3 mm ball lie outside the flair")
    flair_keys = [key for key in rows[1] if key.startswith("flair_original_")]
    assert flair_keys and all(math.isnan(rows[1][key]) for key in flair_keys)
    # its t1c features are the t1c-only case's, exactly; the covered point gets finite flair features
    expected = features_at_voxel(t1c_only, (12, 15, 15))
    assert {k: v for k, v in rows[1].items() if k.startswith("t1c_")} == expected
    assert all(math.isfinite(rows[0][key]) for key in flair_keys)


def test_kimap_extract_keeps_the_row_and_reports_the_sequence(tmp_path, capsys):
    t1c = brain_volume(1)
    sitk.WriteImage(t1c, str(tmp_path / "t1c.nrrd"))
    sitk.WriteImage(partial_flair(t1c), str(tmp_path / "flair.nrrd"))
    (tmp_path / "b.csv").write_text("patient_id,biopsy_id,r,a,s\n" + "".join(
        f"P1,{name},{','.join(str(v) for v in voxel_to_ras(t1c, ijk))}\n"
        for name, ijk in (("IN", (8, 15, 15)), ("EDGE", (12, 15, 15)))))
    code = main(["extract", "--volume", f"t1c={tmp_path / 't1c.nrrd'}", "--volume", f"flair={tmp_path / 'flair.nrrd'}",
                 "--biopsies", str(tmp_path / "b.csv"), "--radius", "3", "--out", str(tmp_path / "table.csv")])
    captured = capsys.readouterr()
    assert code == 1
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("kimap extract: error: biopsy P1/EDGE: ")
    assert "(1 sequence(s) outside a field of view left empty; listed above)" in captured.out
    rows = {row["biopsy_id"]: row for row in read_table(tmp_path / "table.csv")}
    flair_keys = [key for key in rows["IN"] if key.startswith("flair_original_")]
    assert all(math.isfinite(rows["IN"][key]) for key in flair_keys)
    assert all(math.isnan(rows["EDGE"][key]) for key in flair_keys)


def test_flair_normalization_ignores_the_padding_outside_its_field_of_view():
    """The covered point's flair features equal those of a case whose foreground is cut to the flair's view: the
    flair's mean and standard deviation come from the voxels it covers, never from the zero padding."""
    t1c = brain_volume(1)
    flair = partial_flair(t1c)
    settings = ExtractionSettings(ball_radius_mm=3.0, feature_classes=("firstorder",))
    case = prepare_case({"t1c": t1c, "flair": flair}, settings)
    cut = prepare_case({"t1c": t1c, "flair": flair}, settings, foreground=case.foreground & case.coverage["flair"])
    ours, theirs = features_at_voxel(case, (7, 15, 15)), features_at_voxel(cut, (7, 15, 15))
    flair_keys = [key for key in ours if key.startswith("flair_")]
    assert flair_keys and all(ours[key] == pytest.approx(theirs[key], rel=1e-9, abs=1e-9) for key in flair_keys)


class MeanModel:
    """A stand-in model: ki67 = mean of the used features (any NaN feature would make it NaN)."""

    def __init__(self, settings: ExtractionSettings, used: list[str]):
        self.model_id, self.threshold_percent, self.settings = "mean-model", 20.0, settings
        self.required_sequences = ("t1c", "flair")
        self.used_features = self.input_features = used

    def predict(self, matrix, level=None):
        from KiMapLib.model.bundle import Prediction

        ki67 = np.mean(matrix, axis=1)
        nan = np.full(len(ki67), np.nan)
        return Prediction(ki67, nan, nan, self.probability(ki67), nan, None)

    def probability(self, ki67):
        return 1.0 / (1.0 + np.exp(-np.asarray(ki67)))

    def design_rows(self, row, count):
        from KiMapLib.model.design import design_matrix

        return np.repeat(design_matrix([row], self.input_features), count, axis=0)


def test_map_voxels_whose_ball_leaves_a_sequence_are_nan_and_counted():
    t1c = brain_volume(1)
    settings = ExtractionSettings(ball_radius_mm=3.0)
    case = prepare_case({"t1c": t1c, "flair": partial_flair(t1c)}, settings)
    model = MeanModel(settings, ["t1c_original_firstorder_Mean", "flair_original_firstorder_Mean"])
    region = np.zeros(SHAPE, np.uint8)
    region[12:18, 12:18, 6:20] = 1  # well inside the box in k and j; crosses the flair edge along i
    label = sitk.GetImageFromArray(region)
    label.CopyInformation(t1c)
    result = mapping.compute_map(case, model, label)
    ki67 = sitk.GetArrayFromImage(result.ki67)
    i = np.indices(SHAPE)[2]
    leaves = (region == 1) & (i + 3 >= FLAIR_I)  # a 3 mm ball on 1 mm voxels reaches 3 columns
    assert np.isnan(ki67[leaves]).all()
    assert np.isfinite(ki67[(region == 1) & ~leaves]).all()
    assert result.summary["unmapped_voxels_outside_field_of_view"] == int(leaves.sum()) == 6 * 6 * 9
    assert result.summary["unmapped_voxels_outside_field_of_view_by_sequence"] == {"flair": int(leaves.sum())}
    assert result.summary["mapped_voxels"] == int(region.sum() - leaves.sum())


# -- 4b. grids too coarse for the ball, kernels below the minimum ------------------------------------------------


def test_coarse_grid_is_refused_naming_the_volume_and_spacing():
    t1c = brain_volume(1, shape=(8, 8, 8), spacing=(100.0, 100.0, 100.0))
    with pytest.raises(GeometryError, match=r"^t1c: voxel spacing 100x100x100 mm is coarser than the 5 mm ball"):
        prepare_case({"t1c": t1c})
    thick = brain_volume(1, spacing=(1.0, 1.0, 6.0))  # one axis is enough: the ball would be one slice
    with pytest.raises(GeometryError, match=r"^t1c: voxel spacing 1x1x6 mm .* along k"):
        prepare_case({"t1c": thick})


def test_coarse_grid_is_refused_by_kimap_extract_before_any_work(tmp_path, capsys):
    sitk.WriteImage(brain_volume(1, shape=(8, 8, 8), spacing=(100.0, 100.0, 100.0)), str(tmp_path / "t1c.nrrd"))
    (tmp_path / "b.csv").write_text("patient_id,biopsy_id,r,a,s\nP,B1,-300,-300,300\n")
    code = main(["extract", "--volume", f"t1c={tmp_path / 't1c.nrrd'}", "--biopsies", str(tmp_path / "b.csv"),
                 "--out", str(tmp_path / "table.csv")])
    assert code == 2 and not (tmp_path / "table.csv").exists()
    assert "error: t1c of patient: voxel spacing 100x100x100 mm is coarser" in capsys.readouterr().err


def test_kernel_minimum_is_seven_voxels_whatever_the_fraction():
    assert MIN_KERNEL_VOXELS == 7
    assert min_kernel_voxels(515, 0.5) == 258 and min_kernel_voxels(7, 0.5) == 7 and min_kernel_voxels(9, 0.1) == 7
    # radius = spacing: the full ball is the centre and its 6 face neighbours; 5 foreground voxels are too few
    t1c = brain_volume(1, spacing=(2.0, 2.0, 2.0))
    case = prepare_case({"t1c": t1c}, ExtractionSettings(ball_radius_mm=2.0, min_ball_fraction=0.5))
    assert len(ball_offsets(t1c.GetSpacing(), 2.0)) == 7
    with pytest.raises(BiopsyError, match=r"only 5 of 7 ball voxels are foreground \(needs 7: 50% of the ball"):
        features_at_voxel(case, (2, 2, 15))  # a box corner-edge voxel: two of its neighbours are background


# -- 5. sizes estimated before allocating -----------------------------------------------------------------------


def peak_bytes(function) -> tuple[Exception, int]:
    tracemalloc.start()
    try:
        function()
    except Exception as error:  # the error is what the test checks
        caught = error
    else:
        caught = None
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return caught, peak


def test_very_fine_spacing_is_refused_before_the_ball_is_listed():
    t1c = brain_volume(1, shape=(16, 16, 16), spacing=(0.005, 0.005, 0.005))  # a 5 mm ball: 4e9 voxels, ~746 GiB
    error, peak = peak_bytes(lambda: prepare_case({"t1c": t1c}))
    assert isinstance(error, GeometryError)
    assert str(error).startswith("t1c: a 5 mm ball on voxels of 0.005x0.005x0.005 mm would hold about 4.19e+09 "
                                 "voxels (about 746 GiB to list them)")
    assert f"more than the limit of {MAX_BALL_VOXELS} voxels" in str(error)
    assert peak < 2 * 2**20  # refused from arithmetic: nothing near the estimate was allocated


def test_huge_radius_is_refused_before_the_ball_is_listed():
    t1c = brain_volume(1)
    error, peak = peak_bytes(lambda: prepare_case({"t1c": t1c}, ExtractionSettings(ball_radius_mm=200.0)))
    assert isinstance(error, GeometryError) and "a 200 mm ball on voxels of 1x1x1 mm would hold about 3.35e+07" \
        in str(error)
    assert peak < 2 * 2**20
    with pytest.raises(GeometryError, match="would hold about 3.35e"):
        ball_offsets((1.0, 1.0, 1.0), 200.0)  # the engine's own entry point refuses too


def test_volume_whose_header_exceeds_the_memory_budget_is_refused_unread(tmp_path, monkeypatch):
    header = tmp_path / "t1c.mhd"  # 4000^3 int16 voxels, and no data at all: only the header may be read
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4000 4000 4000\nElementSpacing = 1 1 1\n"
                      "ElementType = MET_SHORT\nElementDataFile = t1c.raw\n")
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "16")
    error, peak = peak_bytes(lambda: read_volume(header, "t1c"))
    assert isinstance(error, KiMapError)
    assert str(error).startswith("t1c: t1c.mhd (4000x4000x4000 voxels) would need about 358 GiB of memory, more "
                                 "than KiMap's limit of 16 GiB")
    assert peak < 2**20


def test_case_larger_than_the_memory_budget_is_refused_before_resampling(monkeypatch):
    t1c = brain_volume(1)
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "0.001")  # 1 MiB; the case needs 27000 x (2 x 28 + 2) bytes
    with pytest.raises(KiMapError, match=r"^t1c: 2 sequence\(s\) on the t1c grid \(30x30x30 voxels\) would need "
                                         r"about 1.49 MiB of memory, more than KiMap's limit of 1.02 MiB"):
        prepare_case({"t1c": t1c, "flair": partial_flair(t1c)}, ExtractionSettings(ball_radius_mm=3.0))
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "lots")
    with pytest.raises(KiMapError, match=f"^{MEMORY_LIMIT_ENV}: 'lots' is not a positive number of GiB"):
        prepare_case({"t1c": t1c})


# -- 4c. DICOM slices with truncated pixel data -------------------------------------------------------------------


@pytest.fixture
def dicom_series(tmp_path) -> list[Path]:
    values = (np.arange(6 * 32 * 32) % 700).reshape(6, 32, 32).astype(np.int16)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.9, 0.9, 1.5))
    info = write_mr_series(image, tmp_path / "t1c", patient_id="P", patient_name="P", series_description="t1c")
    return [Path(f) for f in info["files"]]


def test_dicom_slice_cut_off_is_refused_naming_the_file(dicom_series):
    assert read_volume(dicom_series[0].parent, "t1c").GetSize() == (32, 32, 6)
    data = dicom_series[2].read_bytes()
    dicom_series[2].write_bytes(data[:-500])  # GDCM would fill the missing 250 pixels with zeros
    with pytest.raises(KiMapError, match=r"^t1c: IM_0003.dcm in series .* is cut off: its pixel data needs "
                                         rf"{len(data)} bytes but the file has {len(data) - 500}"):
        read_volume(dicom_series[0].parent, "t1c")


def test_dicom_slice_with_short_pixel_data_is_refused_naming_the_file(dicom_series):
    dataset = pydicom.dcmread(dicom_series[-1])
    dataset.PixelData = dataset.PixelData[:-64]
    dataset.save_as(dicom_series[-1])
    with pytest.raises(KiMapError, match=r"^t1c: IM_0006.dcm in series .* holds 1984 bytes of pixel data where its "
                                         r"32 x 32 pixels need 2048"):
        read_volume(dicom_series[0].parent, "t1c")


def test_dicom_slice_cut_inside_its_header_is_not_skipped(dicom_series):
    dicom_series[-1].write_bytes(dicom_series[-1].read_bytes()[:600])  # the last slice: a gap check cannot see it
    with pytest.raises(KiMapError, match=r"^t1c: IM_0006.dcm is a damaged DICOM file|^t1c: IM_0006.dcm .* no pixel"):
        read_volume(dicom_series[0].parent, "t1c")


# -- 6. malformed points files: one error naming the file, checked before any work -------------------------------

GOOD_POINT = {"label": "B1", "position": [1.0, 2.0, 3.0], "positionStatus": "defined"}


@pytest.mark.parametrize(("document", "message"), [
    ([GOOD_POINT], "the document is a JSON list, not an object"),
    ({"markups": {"controlPoints": []}}, '"markups" is not a list of objects'),
    ({"markups": [{"controlPoints": [{"label": "B1"}]}]}, "markup 1, control point 1 ('B1') has no position"),
    ({"markups": [{"controlPoints": [{"position": [1.0, 2.0]}]}]},
     "markup 1, control point 1: position [1.0, 2.0] is not three coordinates"),
    ({"markups": [{"controlPoints": [{"position": ["1", "2", "3"]}]}]},
     'markup 1, control point 1: position ["1", "2", "3"] is not three finite numbers'),
    ({"markups": [{"controlPoints": [{"position": [1.0, float("nan"), 3.0]}]}]},
     "markup 1, control point 1: position [1.0, NaN, 3.0] is not three finite numbers"),
    ({"markups": [{"controlPoints": [{"position": 7}]}]},
     "markup 1, control point 1: position 7 is not three coordinates"),
    ({"markups": [{"controlPoints": ["B1"]}]}, "markup 1, control point 1 is not an object"),
    ({"markups": [{"coordinateSystem": "XYZ", "controlPoints": [GOOD_POINT]}]},
     "markup 1 has unknown coordinateSystem 'XYZ'"),
])
def test_malformed_points_file_is_one_error_naming_it(tmp_path, document, message):
    path = tmp_path / "bad.mrk.json"
    path.write_text(json.dumps(document))  # json writes NaN as NaN, which Python (and Slicer) read back
    with pytest.raises(KiMapError, match=f"^biopsies: bad.mrk.json: {re.escape(message)} — expected "):
        read_biopsies(path)


def test_unplaced_points_are_skipped_and_lps_is_converted(tmp_path):
    path = tmp_path / "p.mrk.json"
    path.write_text(json.dumps({"markups": [{"coordinateSystem": "LPS", "controlPoints": [
        GOOD_POINT, {"label": "B2", "position": [0.0, 0.0, 0.0], "positionStatus": "undefined"}]}]}))
    (biopsy,) = read_biopsies(path, "P")
    assert biopsy.biopsy_id == "B1" and biopsy.ras.tolist() == [-1.0, -2.0, 3.0]


def test_kimap_map_refuses_a_bad_points_file_before_mapping(tmp_path, monkeypatch, capsys):
    t1c = brain_volume(1)
    sitk.WriteImage(t1c, str(tmp_path / "t1c.nrrd"))
    (tmp_path / "bad.mrk.json").write_text(json.dumps({"markups": [{"controlPoints": [{"position": [1, 2]}]}]}))

    def must_not_run(*args, **kwargs):
        raise AssertionError("the map was computed before the points file was checked")

    monkeypatch.setattr(mapping, "compute_map", must_not_run)
    code = main(["map", "--volume", f"t1c={tmp_path / 't1c.nrrd'}", "--biopsies", str(tmp_path / "bad.mrk.json"),
                 "--out", str(tmp_path / "map")])
    assert code == 2 and not (tmp_path / "map").exists()
    assert "kimap map: error: biopsies: bad.mrk.json: markup 1, control point 1: position [1, 2] is not three" \
        in capsys.readouterr().err


# -- 6. CSV encodings and byte-order marks; huge lines and fields ------------------------------------------------

CSV_TEXT = "patient_id,biopsy_id,r,a,s,ki67,sex,institution\nP1,B1,1.5,-2,3,12.5,F,Zürich\nP1,B2,4,5,6,,m,\n"


def test_csv_with_byte_order_mark_reads_like_plain_utf8(tmp_path):
    plain, bom = tmp_path / "plain.csv", tmp_path / "bom.csv"
    plain.write_bytes(CSV_TEXT.encode("utf-8"))
    bom.write_bytes(b"\xef\xbb\xbf" + CSV_TEXT.encode("utf-8"))
    rows = [(b.patient_id, b.biopsy_id, b.ras.tolist(), b.ki67, b.covariates) for b in read_biopsies_csv(bom)]
    assert rows == [(b.patient_id, b.biopsy_id, b.ras.tolist(), b.ki67, b.covariates)
                    for b in read_biopsies_csv(plain)]
    assert rows[0][:4] == ("P1", "B1", [1.5, -2.0, 3.0], 12.5) and rows[0][4]["institution"] == "Zürich"
    assert rows[1][4]["sex"] == "M"


def test_latin1_csv_is_refused_naming_the_line_and_byte(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(CSV_TEXT.encode("latin-1"))
    with pytest.raises(KiMapError, match=r"^biopsies: latin1.csv line 2, character 24: byte 0xfc is not UTF-8 text "
                                         r"— save it as UTF-8"):
        read_biopsies_csv(path)
    (tmp_path / "table.csv").write_bytes(CSV_TEXT.encode("latin-1"))
    with pytest.raises(KiMapError, match=r"^features table: table.csv line 2, character 24: byte 0xfc"):
        read_table(tmp_path / "table.csv")


def test_huge_line_is_refused_without_reading_it(tmp_path, monkeypatch):
    path = tmp_path / "huge.csv"
    with path.open("wb") as handle:  # a 50 MiB field on one line (the was 1 GB)
        handle.write(b"patient_id,biopsy_id,r,a,s\nP1,")
        for _ in range(50):
            handle.write(b"x" * 2**20)
        handle.write(b",1,2,3\n")
    assert csv_text.MAX_LINE_BYTES == 2**20
    monkeypatch.setattr(csv_text, "MAX_LINE_BYTES", 2**18)  # a lower bound keeps the test's own memory small
    error, peak = peak_bytes(lambda: read_biopsies_csv(path))
    assert isinstance(error, KiMapError) and str(error).startswith(
        "biopsies: huge.csv line 2 is longer than 262144 bytes")
    assert peak < 4 * 2**18  # the line was read in one bounded piece, never whole


def test_huge_quoted_field_over_many_lines_is_refused_at_the_field_bound(tmp_path):
    path = tmp_path / "quoted.csv"
    with path.open("wb") as handle:  # one quoted field of 10 MiB made of short lines
        handle.write(b'patient_id,biopsy_id,r,a,s\nP1,"')
        handle.write((b"y" * 1023 + b"\n") * 10240)
        handle.write(b'",1,2,3\n')
    limit = __import__("csv").field_size_limit()
    error, peak = peak_bytes(lambda: read_biopsies_csv(path))
    assert isinstance(error, KiMapError) and str(error).startswith(
        f"biopsies: quoted.csv line {2 + csv_text.MAX_FIELD_CHARS // 1024}: field larger than field limit "
        f"({csv_text.MAX_FIELD_CHARS})")
    assert peak < 8 * csv_text.MAX_FIELD_CHARS
    assert __import__("csv").field_size_limit() == limit  # the process-wide csv setting is restored


def test_shifted_row_is_refused(tmp_path):
    path = tmp_path / "shifted.csv"
    path.write_text("patient_id,biopsy_id,r,a,s,ki67\nP1,B1,1,2,3,4,12\n")
    with pytest.raises(KiMapError, match="^biopsies: shifted.csv line 2 has 7 fields but the header has 6"):
        read_biopsies_csv(path)


# -- 8. out-of-range values refused with the row named ------------------------------------------------------------


@pytest.mark.parametrize(("column", "value", "allowed"), [
    ("ki67", "300", "a number from 0 to 100 %, or empty"),
    ("ki67", "-5", "a number from 0 to 100 %, or empty"),
    ("age", "130", "a number from 0 to 120 years, or empty"),
    ("sex", "X", "F, M (or female, male), or empty"),
    ("tumor_type", "metastasis", "primary or recurrent, or empty"),
    ("r", "inf", "a finite number (RAS mm)"),
    ("s", "", "a finite number (RAS mm)"),
    ("a", "12mm", "a finite number (RAS mm)"),
])
def test_out_of_range_value_is_refused_naming_file_line_column(tmp_path, column, value, allowed):
    row = {"patient_id": "P1", "biopsy_id": "B2", "r": "1", "a": "2", "s": "3", "ki67": "10", "age": "50",
           "sex": "F", "tumor_type": "primary"}
    header = ",".join(row)
    good = ",".join(row.values())
    row[column] = value
    path = tmp_path / "biopsies.csv"
    path.write_text(f"{header}\n{good.replace('B2', 'B1')}\n{','.join(row.values())}\n")
    with pytest.raises(KiMapError, match=rf"^biopsies: biopsies.csv line 3, column {column}: '{value}' is not "
                                         rf"allowed — allowed: {re.escape(allowed)}$"):
        read_biopsies_csv(path)


def test_cohort_table_with_out_of_range_ki67_is_refused(tmp_path):
    path = tmp_path / "cohort.csv"
    path.write_text("patient_id,biopsy_id,ki67,t1c_original_firstorder_Mean\nP1,B1,12,0.5\nP1,B2,300,0.7\n")
    with pytest.raises(KiMapError, match=r"^features table: cohort.csv line 3, column ki67: '300.0' is not allowed"):
        read_table(path)
    path.write_text("patient_id,biopsy_id,ki67,t1c_original_firstorder_Mean\nP1,B1,12,high\n")
    with pytest.raises(KiMapError, match=r"^features table: cohort.csv line 2, column t1c_original_firstorder_Mean: "
                                         r"'high' is not a number"):
        read_table(path)


def test_kimap_map_refuses_an_age_out_of_range(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["map", "--volume", "t1c=t1c.nrrd", "--age", "300", "--out", str(tmp_path / "map")])
    assert "'300' is not an age from 0 to 120 years" in capsys.readouterr().err


# -- 6. the console API: an empty segmentation, covariates out of range ------------------------------------------


def _slicer_case():
    pytest.importorskip("slicer")
    from test_mrml_logic import make_case_scene, probe_model, scene_state, volumes_of

    case = make_case_scene()
    return SimpleNamespace(case=case, model=probe_model(), state=scene_state, volumes=volumes_of(case))


@pytest.mark.parametrize("problem", ["no segments", "empty segment", "hidden segment"])
def test_compute_map_refuses_an_empty_segmentation_in_one_line(problem, monkeypatch):
    scene = _slicer_case()
    from KiMapLib.slicer.logic import KiMapLogic

    monkeypatch.setattr(mapping, "compute_map", lambda *a, **k: pytest.fail("mapped an empty region"))
    segmentation = scene.case.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Empty")
    segmentation.CreateDefaultDisplayNodes()
    match = "^tumor region: segmentation 'Empty' has no segments"
    if problem != "no segments":
        segment = segmentation.GetSegmentation().AddEmptySegment("tumor")
        match = "^tumor region: the region is empty"
    if problem == "hidden segment":
        segmentation.GetDisplayNode().SetSegmentVisibility(segment, False)
        match = "^tumor region: segmentation 'Empty' has no visible segment"
    before = scene.state(scene.case.scene)
    with pytest.raises(KiMapError, match=match):
        KiMapLogic().computeMap(scene.volumes, segmentation, scene.model)
    assert scene.state(scene.case.scene) == before


def test_console_api_refuses_covariates_and_measured_ki67_out_of_range(monkeypatch):
    scene = _slicer_case()
    from KiMapLib.slicer.logic import KiMapLogic

    monkeypatch.setattr(mapping, "compute_map", lambda *a, **k: pytest.fail("mapped with bad covariates"))
    logic = KiMapLogic()
    with pytest.raises(KiMapError, match=r"^covariates: covariates, column sex: 'X' is not allowed"):
        logic.computeMap(scene.volumes, scene.case.label, scene.model, covariates={"sex": "X"})
    with pytest.raises(KiMapError, match=r"^covariates: unknown covariate 'weight'"):
        logic.computeMap(scene.volumes, scene.case.label, scene.model, covariates={"weight": 70})
    with pytest.raises(KiMapError, match=r"^measuredKi67: point B1, column measured ki67: '300' is not allowed"):
        logic.predictBiopsies(scene.volumes, scene.case.markups, scene.model, measuredKi67={"B1": 300})
