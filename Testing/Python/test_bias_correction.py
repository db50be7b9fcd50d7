"""N4 bias-field correction: removes a known smooth bias, is recorded in the settings and the model card (absent means
none), keeps the identity of settings made before it existed, and is applied by prepare_case to the weighted
sequences only, the same way for the extraction and the map."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import synthetic_patient, write_case_folder

from KiMapLib.errors import KiMapError, ModelError
from KiMapLib.inputs.bias_correction import n4_correct, n4_log_bias_field
from KiMapLib.inputs.case import prepare_case
from KiMapLib.inputs.normalization import zscore
from KiMapLib.settings import BIAS_CORRECTIONS, ExtractionSettings

#: ExtractionSettings.to_dict() keys before the bias correction existed (tables, cards and databases made then).
LEGACY_KEYS = {"ball_radius_mm", "bin_width", "normalize_scale", "normalization", "foreground", "feature_classes",
               "min_ball_fraction", "pyradiomics_extra"}


def biased_phantom(shape=(48, 56, 56), spacing=2.0, seed=0):
    """Two tissues (100 inside, 60 in a shell) in an ellipsoid, times exp(known smooth log field), light noise."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius = np.sqrt(k**2 + j**2 + i**2)
    brain = radius < 0.9
    tissue = np.where(radius < 0.5, 100.0, 60.0)
    log_field = 0.4 * i + 0.3 * k**2 - 0.2 * j
    values = np.where(brain, tissue * np.exp(log_field) + rng.normal(0, 1.0, shape), 0.0)
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing((spacing,) * 3)
    return image, brain, radius, log_field


def test_n4_removes_a_known_smooth_bias():
    image, brain, radius, log_field = biased_phantom()
    inner = brain & (radius < 0.45)
    before = np.log(sitk.GetArrayFromImage(image)[inner])
    corrected = sitk.GetArrayFromImage(n4_correct(image, brain, name="t1c"))
    after = np.log(corrected[inner])
    assert before.std() > 0.09  # the bias spreads the inner tissue by about 10 % (log sd)
    assert after.std() < before.std() / 4
    shell = brain & (radius > 0.55)  # the tissue contrast (100 / 60) comes back from the biased 1.56
    raw = sitk.GetArrayFromImage(image)
    assert np.median(raw[inner]) / np.median(raw[shell]) == pytest.approx(1.56, abs=0.01)
    assert np.median(corrected[inner]) / np.median(corrected[shell]) == pytest.approx(100 / 60, rel=0.04)
    fitted = sitk.GetArrayFromImage(n4_log_bias_field(image, brain, shrink_factor=4, iterations=50,
                                                      fitting_levels=2))
    assert np.corrcoef(fitted[brain], log_field[brain])[0, 1] > 0.97
    assert corrected.dtype == np.float64 and corrected.shape == log_field.shape
    again = sitk.GetArrayFromImage(n4_correct(image, brain, name="t1c"))
    np.testing.assert_array_equal(again, corrected)  # deterministic: no random sampling


def test_n4_needs_positive_intensities():
    image, brain, _, _ = biased_phantom(shape=(16, 16, 16))
    negative = sitk.GetImageFromArray(-np.abs(sitk.GetArrayFromImage(image)))
    with pytest.raises(KiMapError, match="N4 bias-field correction needs positive values") as caught:
        n4_correct(negative, brain, name="flair")
    assert caught.value.input_name == "flair"


def test_settings_record_the_correction_and_old_settings_mean_none():
    settings = ExtractionSettings(bias_correction="n4", n4_iterations=20)
    data = settings.to_dict()
    assert data["bias_correction"] == "n4" and data["n4_iterations"] == 20 and data["n4_shrink_factor"] == 4
    assert ExtractionSettings.from_dict(data) == settings
    legacy = {key: value for key, value in ExtractionSettings().to_dict().items() if key in LEGACY_KEYS}
    assert ExtractionSettings.from_dict(legacy).bias_correction == "none"
    assert BIAS_CORRECTIONS == ("none", "n4")
    for wrong, message in ((dict(bias_correction="n3"), "unknown bias correction 'n3'"),
                           (dict(bias_correction="n4", n4_iterations=2.5), "n4_iterations 2.5 is outside \\[1, 500\\] "
                                                                           "or not a whole number"),
                           (dict(n4_shrink_factor=9), "n4_shrink_factor 9 is outside \\[1, 8\\]")):
        with pytest.raises(KiMapError, match=message):
            ExtractionSettings(**wrong).check()


def test_settings_without_a_correction_keep_their_database_identity():
    from KiMapLib.cohort.settings_identity import settings_digest

    settings = ExtractionSettings(ball_radius_mm=3.0)
    assert set(settings.identity_dict()) == LEGACY_KEYS
    legacy = {key: value for key, value in settings.to_dict().items() if key in LEGACY_KEYS}
    text = json.dumps({"settings": legacy, "pyradiomics_version": "v3.1.4"}, sort_keys=True, separators=(",", ":"))
    assert settings_digest(settings, "v3.1.4") == hashlib.sha256(text.encode()).hexdigest()
    assert settings_digest(ExtractionSettings(ball_radius_mm=3.0, bias_correction="n4"), "v3.1.4") != \
        settings_digest(settings, "v3.1.4")


@pytest.fixture(scope="module")
def patient():
    return synthetic_patient(7)


def test_prepare_case_corrects_the_weighted_sequences_only(patient):
    plain = prepare_case(patient["volumes"], ExtractionSettings(ball_radius_mm=3.0))
    settings = ExtractionSettings(ball_radius_mm=3.0, bias_correction="n4")
    corrected = prepare_case(patient["volumes"], settings)
    np.testing.assert_array_equal(corrected.foreground, plain.foreground)  # from the t1c as given
    for name in ("t1c", "t2", "flair"):
        assert not np.array_equal(sitk.GetArrayViewFromImage(corrected.images[name]),
                                  sitk.GetArrayViewFromImage(plain.images[name])), name
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(corrected.images["adc"]),
                                  sitk.GetArrayViewFromImage(plain.images["adc"]))  # a computed map: never corrected
    expected = zscore(n4_correct(patient["volumes"]["t1c"], plain.foreground, name="t1c"), plain.foreground, 100.0,
                      "t1c")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(corrected.images["t1c"]),
                                  sitk.GetArrayViewFromImage(expected))


def test_kimap_extract_records_the_correction_beside_the_table(tmp_path, patient):
    from KiMapLib.app.cli import main
    from KiMapLib.features.table import read_table

    folder = write_case_folder(tmp_path, patient)
    tables = {}
    for choice in ("none", "n4"):
        out = tmp_path / f"{choice}.csv"
        args = ["extract", *[f"--volume={n}={folder / f'{n}.nrrd'}" for n in ("t1c", "t2", "flair", "adc")],
                "--biopsies", str(folder / "biopsies.csv"), "--radius", "3", "--bias-correction", choice,
                "--out", str(out)]
        assert main(args) == 0
        assert json.loads(out.with_suffix(".settings.json").read_text())["bias_correction"] == choice
        tables[choice] = read_table(out)
    plain, corrected = tables["none"], tables["n4"]
    assert [row["biopsy_id"] for row in plain] == [row["biopsy_id"] for row in corrected]
    assert all(a["adc_original_firstorder_Mean"] == b["adc_original_firstorder_Mean"]
               for a, b in zip(plain, corrected, strict=True))
    assert any(a["t1c_original_firstorder_Mean"] != b["t1c_original_firstorder_Mean"]
               for a, b in zip(plain, corrected, strict=True))


def test_the_model_card_carries_the_correction_to_the_map(tmp_path, tiny_model_dir):
    from KiMapLib.model.bundle import load_model

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_model_dir, bundle)
    card_path = bundle / "model_card.json"
    card = json.loads(card_path.read_text())
    assert card["extraction"]["bias_correction"] == "none"
    card["extraction"].update(bias_correction="n4", n4_iterations=30)
    card_path.write_text(json.dumps(card))
    model = load_model(bundle)
    assert model.settings.bias_correction == "n4" and model.settings.n4_iterations == 30
    for key in ("bias_correction", "n4_shrink_factor", "n4_iterations", "n4_fitting_levels"):
        del card["extraction"][key]
    card_path.write_text(json.dumps(card))
    assert load_model(bundle).settings.bias_correction == "none"  # a card from before the option
    for key, value, expected in (("bias_correction", "n3", "'n3' is not one of ['none', 'n4']"),
                                 ("n4_iterations", 2.5, "2.5 is not of type 'integer'")):
        card["extraction"][key] = value
        card_path.write_text(json.dumps(card))
        with pytest.raises(ModelError, match=expected.replace("[", "\\[").replace("]", "\\]")):
            load_model(bundle)
        del card["extraction"][key]
