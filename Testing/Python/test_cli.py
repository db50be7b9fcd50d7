"""The `kimap` command line: one-line errors naming the input, non-zero exits, earlier outputs kept."""

import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_volume, synthetic_patient, write_case_folder

from KiMapLib.app.cli import main
from KiMapLib.features.table import read_table
from KiMapLib.inputs.biopsies import Biopsy
from KiMapLib.model.bundle import load_model


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    patient = synthetic_patient(21)
    far = Biopsy("P21", "FAR", patient["biopsies"][0].ras + 300.0)
    return write_case_folder(tmp_path_factory.mktemp("case"), patient, [far])


def volume_args(folder, **replace):
    args = []
    for name in ("t1c", "t2", "flair", "adc"):
        args += ["--volume", f"{name}={replace.get(name, folder / f'{name}.nrrd')}"]
    return args


def _without(args, sequence):
    index = args.index(next(a for a in args if a.startswith(f"{sequence}=")))
    return args[:index - 1] + args[index + 1:]


def one_error_line(capsys, prefix):
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


def test_extract_reports_the_bad_point_and_keeps_the_others(tmp_path, case_dir, capsys):
    out = tmp_path / "table.csv"
    code = main(["extract", *volume_args(case_dir), "--biopsies", str(case_dir / "biopsies.csv"), "--radius", "3",
                 "--out", str(out)])
    assert code == 1
    line = one_error_line(capsys, "kimap extract: error: biopsy P21/FAR: point (")
    assert "outside the t1c volume" in line
    rows = read_table(out)
    assert len(rows) == 4 and all(r["patient_id"] == "P21" for r in rows)
    assert (tmp_path / "table.settings.json").exists()


def test_map_bad_inputs_fail_cleanly_and_keep_the_earlier_map(tmp_path, case_dir, tiny_model_dir, capsys):
    out = tmp_path / "map"
    good = ["map", *volume_args(case_dir), "--region", str(case_dir / "label.nrrd"), "--model", str(tiny_model_dir),
            "--out", str(out)]
    assert main(good) == 0
    snapshot = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()

    far = make_volume(np.ones((6, 6, 6)), origin=(800.0, 800.0, 800.0))
    sitk.WriteImage(far, str(tmp_path / "far.nrrd"))
    nan_values = sitk.GetArrayFromImage(sitk.ReadImage(str(case_dir / "adc.nrrd")))
    nan_values[3, 4, 5] = np.nan
    nan_image = sitk.GetImageFromArray(nan_values)
    nan_image.CopyInformation(sitk.ReadImage(str(case_dir / "adc.nrrd")))
    sitk.WriteImage(nan_image, str(tmp_path / "nan.nrrd"))
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_model_dir, tampered)
    (tampered / "model.skops").write_bytes((tampered / "model.skops").read_bytes()[:-10])

    needed = load_model(tiny_model_dir).required_sequences[-1]  # a sequence the model cannot do without
    assert needed != "t1c"
    cases = [
        (volume_args(case_dir, flair=tmp_path / "far.nrrd"), tiny_model_dir, "flair: does not overlap the t1c"),
        (volume_args(case_dir, adc=tmp_path / "nan.nrrd"), tiny_model_dir, "adc: 1 voxels are NaN or Inf"),
        (_without(volume_args(case_dir), needed), tiny_model_dir, f"{needed}: the model needs "),
        (volume_args(case_dir), tampered, f"{tampered}: model.skops does not match the sha256"),
        (volume_args(case_dir, t2=tmp_path / "missing.nrrd"), tiny_model_dir, "t2: file not found"),
    ]
    for volumes, model, message in cases:
        code = main(["map", *volumes, "--region", str(case_dir / "label.nrrd"), "--model", str(model),
                     "--out", str(out)])
        assert code == 2
        one_error_line(capsys, f"kimap map: error: {message}")
        assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot
    assert sorted(p.name for p in tmp_path.iterdir()) == ["far.nrrd", "map", "nan.nrrd", "tampered"]


@pytest.mark.parametrize("flag, value, named", [("--bin-width", "1e-9", "bin_width"), ("--radius", "200",
                                                                                       "ball_radius_mm")])
def test_extract_refuses_settings_outside_the_card_bounds_before_any_work(tmp_path, case_dir, capsys, flag, value,
                                                                           named):
    """A bin width of 1e-9 would need terabytes of texture matrices: refused in one line, nothing written."""
    code = main(["extract", *volume_args(case_dir), "--biopsies", str(case_dir / "biopsies.csv"), flag, value,
                 "--out", str(tmp_path / "table.csv")])
    assert code != 0
    line = one_error_line(capsys, f"kimap extract: error: --radius/--bin-width: {named}: {named} ")
    assert "is outside" in line
    assert list(tmp_path.iterdir()) == []


def test_predict_writes_intervals_probability_domain_and_contributions(tmp_path, case_dir, tiny_model_dir, capsys):
    out = tmp_path / "predictions.csv"
    code = main(["predict", *volume_args(case_dir), "--biopsies", str(case_dir / "biopsies.csv"), "--model",
                 str(tiny_model_dir), "--interval-level", "0.8", "--out", str(out)])
    rows = read_table(out)
    assert rows and code in (0, 1)  # the case folder holds one deliberately bad point (its own error line)
    model = load_model(tiny_model_dir)
    for row in rows:
        assert row["interval_level"] == 0.8
        assert row["ki67_lower"] <= row["ki67_pred"] <= row["ki67_upper"]
        assert 0.0 <= row["p_high"] <= 1.0 and row["ood_score"] >= 0.0
        assert row["contribution_1_feature"] in model.card["uncertainty"]["columns"]
        assert abs(row["contribution_1_ki67"]) >= abs(row["contribution_2_ki67"]) >= abs(row["contribution_3_ki67"])
        assert not any("_original_" in key and not key.startswith("contribution") for key in row)
    wide = tmp_path / "wide.csv"
    main(["predict", *volume_args(case_dir), "--biopsies", str(case_dir / "biopsies.csv"), "--model",
          str(tiny_model_dir), "--out", str(wide)])
    for narrow_row, wide_row in zip(rows, read_table(wide), strict=True):  # 90 % (the card's) is wider than 80 %
        assert wide_row["ki67_upper"] - wide_row["ki67_lower"] >= narrow_row["ki67_upper"] - narrow_row["ki67_lower"]
    assert main(["predict", *volume_args(case_dir), "--biopsies", str(case_dir / "biopsies.csv"), "--model",
                 str(tiny_model_dir), "--interval-level", "1.5", "--out", str(tmp_path / "x.csv")]) == 2
    assert "interval level 1.5 is outside 0.5-0.99" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
