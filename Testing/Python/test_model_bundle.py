"""Model bundles load only when sha256, schema, trusted types and feature list all check out; the card schema types
and bounds every field KiMap reads (hostile model files: test_hostile_bundles.py)."""

import json
import shutil

import pytest

from KiMapLib.errors import ModelError
from KiMapLib.model.bundle import load_model


@pytest.fixture
def bundle(tmp_path, tiny_model_dir):
    target = tmp_path / "bundle"
    shutil.copytree(tiny_model_dir, target)
    return target


def test_tampered_model_file_is_refused(bundle):
    data = bytearray((bundle / "model.skops").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "model.skops").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="model.skops does not match the sha256 in its model card"):
        load_model(bundle)


def test_card_that_breaks_the_schema_is_refused(bundle):
    card = json.loads((bundle / "model_card.json").read_text())
    del card["required_sequences"]
    (bundle / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="does not match the KiMap schema.*required_sequences"):
        load_model(bundle)


def test_card_with_another_feature_list_is_refused(bundle):
    card = json.loads((bundle / "model_card.json").read_text())
    card["input_features"] = card["input_features"][::-1]
    (bundle / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="feature list in the model file differs from its model card"):
        load_model(bundle)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(ModelError, match="no model_card.json"):
        load_model(tmp_path / "nowhere")


def test_background_load_verifies_first_and_predicts_the_same(bundle):
    import numpy as np

    eager = load_model(bundle)
    lazy = load_model(bundle, background=True)
    matrix = np.zeros((3, len(eager.input_features)))
    np.testing.assert_array_equal(lazy.predict_matrix(matrix)[0], eager.predict_matrix(matrix)[0])
    card = json.loads((bundle / "model_card.json").read_text())
    card["input_features"] = card["input_features"][::-1]  # passes the card checks; caught when the file is read
    (bundle / "model_card.json").write_text(json.dumps(card))
    late = load_model(bundle, background=True)
    with pytest.raises(ModelError, match="feature list in the model file differs"):
        late.predict_matrix(matrix)
    data = bytearray((bundle / "model.skops").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "model.skops").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match the sha256"):  # refused at once, not in the background
        load_model(bundle, background=True)


def test_design_rows_and_one_pipeline_pass_predict_exactly_as_before(bundle):
    """A map's rows (constant columns imputed once, KiMapModel.design_rows) and the one pass through the pipeline's
    transformers for ki67 and Z give the very numbers of the plain design matrix and two passes."""
    import numpy as np

    from KiMapLib.model.design import design_matrix
    from KiMapLib.model.transformed import predicted_and_transformed, transformed

    model = load_model(bundle)
    row = {"sex": None, "age": 61.0, "tumor_type": None}
    values = np.random.default_rng(3).normal(size=(40, len(model.used_features)))
    values[::7, 0] = np.nan  # a missing feature is still imputed by the pipeline
    columns = [model.input_features.index(name) for name in model.used_features]
    plain = np.repeat(design_matrix([row], model.input_features), len(values), axis=0)
    rows = model.design_rows(row, len(values))
    plain[:, columns] = values
    rows[:, columns] = values
    assert not np.isnan(np.delete(rows, columns, axis=1)).any()
    before, after = model.predict(plain), model.predict(rows)
    for name in ("ki67", "lower", "upper", "p_high", "ood"):
        np.testing.assert_array_equal(getattr(after, name), getattr(before, name))
    pipeline, _ = model._fitted()
    mu, z = predicted_and_transformed(pipeline, plain)
    np.testing.assert_array_equal(mu, pipeline.predict(plain))
    np.testing.assert_array_equal(z, transformed(pipeline, plain)[0])


def test_fast_skops_import_gives_skops_its_own_trusted_lists():
    """KiMap imports skops.io with a faster module search (skops_import); skops' default trusted-type lists come out
    exactly as with a plain import (both imported in fresh processes after numpy, scipy, sklearn and SimpleITK)."""
    import subprocess
    import sys

    script = ("import json, sys, numpy, scipy.special, sklearn.linear_model, SimpleITK\n"
              "from KiMapLib.model.skops_import import import_skops_io\n"
              "import_skops_io() if sys.argv[1] == 'fast' else __import__('skops.io')\n"
              "from skops.io import _trusted_types as t, _utils as u\n"
              "assert u.whichmodule.__module__.startswith('skops'), 'whichmodule not restored'\n"
              "print(json.dumps({k: getattr(t, k) for k in dir(t) if k.endswith('_NAMES')}, sort_keys=True))\n")
    lists = [json.loads(subprocess.run([sys.executable, "-c", script, how], capture_output=True, text=True,
                                       check=True).stdout) for how in ("plain", "fast")]
    assert lists[0] == lists[1]
    assert len(lists[0]["SCIPY_UFUNC_TYPE_NAMES"]) > 100


def test_fast_whichmodule_equals_skops_whichmodule():
    import numpy as np
    import scipy.special
    from skops.io._utils import whichmodule

    from KiMapLib.model.skops_import import fast_whichmodule

    objects = [getattr(scipy.special, n) for n in dir(scipy.special)[:80]] + [np.add, np.ufunc, json.dumps]
    for obj in objects:
        name = getattr(obj, "__name__", None)
        if name:
            assert fast_whichmodule(obj, name) == whichmodule(obj, name)


def test_card_schema_is_a_valid_json_schema():
    from jsonschema.validators import validator_for

    from KiMapLib.model.bundle import card_schema

    schema = card_schema()
    validator_for(schema).check_schema(schema)


def test_model_loads_the_same_in_the_kimap_process(bundle, tmp_path):
    """After claim_process (the kimap executable), skops has no default estimator trust list; KiMap's loads, which
    pass each file's allow-listed types, read the same pipeline (same predictions)."""
    import subprocess
    import sys

    import numpy as np

    script = ("import sys, json, numpy as np\n"
              "from KiMapLib.model import skops_import\n"
              "if sys.argv[2] == 'own': skops_import.claim_process()\n"
              "from KiMapLib.model.bundle import load_model\n"
              "model = load_model(sys.argv[1])\n"
              "from skops.io import _trusted_types as t\n"
              "x = np.linspace(-1, 1, 3 * len(model.input_features)).reshape(3, -1)\n"
              "print(json.dumps([len(t.SKLEARN_ESTIMATOR_TYPE_NAMES), model.predict_matrix(x)[0].tolist()]))\n")
    runs = [json.loads(subprocess.run([sys.executable, "-c", script, str(bundle), how], capture_output=True,
                                      text=True, check=True).stdout) for how in ("shared", "own")]
    assert runs[0][0] > 100 and runs[1][0] == 0
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


# -- the card: every field KiMap reads is typed and bounded ---------------------------------------------------------

def edit_card(bundle, change) -> None:
    card = json.loads((bundle / "model_card.json").read_text())
    change(card)
    (bundle / "model_card.json").write_text(json.dumps(card))


def card_refusal(bundle, change) -> str:
    edit_card(bundle, change)
    with pytest.raises(ModelError) as caught:
        load_model(bundle)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{bundle}: model card")
    return message


@pytest.mark.parametrize("field, value, expected", [
    ("bin_width", 1e-9, "extraction/bin_width: 1e-09 is less than the minimum of 0.5"),
    ("bin_width", "25", "extraction/bin_width: '25' is not of type 'number'"),
    ("ball_radius_mm", 200, "extraction/ball_radius_mm: 200 is greater than the maximum of 50"),
    ("min_ball_fraction", 0, "extraction/min_ball_fraction: 0 is less than or equal to the minimum of 0"),
    ("min_ball_fraction", 1.5, "extraction/min_ball_fraction: 1.5 is greater than the maximum of 1"),
    ("normalize_scale", None, "extraction/normalize_scale: None is not of type 'number'"),
    ("normalization", "none", "extraction/normalization: 'none' is not one of ['zscore-within-foreground']"),
    ("feature_classes", ["shape"], "extraction/feature_classes/0: 'shape' is not one of"),
    ("pyradiomics_extra", {"binWidth": 1e-9}, "extraction/pyradiomics_extra: Additional properties are not allowed"),
    ("resampledPixelSpacing", [0.01, 0.01, 0.01], "extraction: Additional properties are not allowed "
                                                  "('resampledPixelSpacing' was unexpected)"),
])
def test_card_extraction_settings_are_bounded(bundle, field, value, expected):
    message = card_refusal(bundle, lambda card: card["extraction"].__setitem__(field, value))
    assert f"model card does not match the KiMap schema at {expected}" in message


def test_too_many_grey_levels_per_standard_deviation_are_refused(bundle):
    def change(card):
        card["extraction"].update(normalize_scale=1000.0, bin_width=1.0)

    assert "extraction: bin_width: bin_width 1 gives more than 200 grey levels per standard deviation" in \
        card_refusal(bundle, change)


@pytest.mark.parametrize("path, value, expected", [
    (("target", "threshold_percent"), 150, "target/threshold_percent: 150 is greater than or equal to the maximum"),
    (("target", "threshold_percent"), "20", "target/threshold_percent: '20' is not of type 'number'"),
    (("probability", "intercept"), float("inf"), "probability/intercept: inf is greater than the maximum"),
    (("model_file", "path"), "../model.skops", "model_file/path: '../model.skops' does not match"),
    (("model_id",), 7, "model_id: 7 is not of type 'string'"),
    (("required_sequences",), ["t1c", "dwi"], "required_sequences/1: 'dwi' is not one of"),
    (("estimator", "name"), "svm", "estimator/name: 'svm' is not one of ['ridge', 'enet', 'rf', 'gbr']"),
])
def test_card_fields_of_the_wrong_type_or_range_are_named(bundle, path, value, expected):
    def change(card):
        parent = card
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = value

    assert f"model card does not match the KiMap schema at {expected}" in card_refusal(bundle, change)


def test_a_feature_name_without_its_class_is_refused_naming_it(bundle):
    def change(card):
        card["input_features"][1] = "t1c_original_Mean"

    message = card_refusal(bundle, change)
    assert "at input_features/1: 't1c_original_Mean' is not a feature name <sequence>_original_<class>_<Feature>" \
        in message

    def used(card):
        card["used_features"][0] = "t1c_original_glcm_NotAFeature"

    assert "used_features/0: 't1c_original_glcm_NotAFeature' is not a feature name" in card_refusal(bundle, used)


def test_card_lists_that_do_not_fit_together_are_refused(bundle):
    card = json.loads((bundle / "model_card.json").read_text())
    used = card["used_features"][0]

    def unused_input(c):
        c["input_features"].remove(used)

    assert f"model card: used feature {used} is not among input_features" in card_refusal(bundle, unused_input)
    edit_card(bundle, lambda c: c.__setitem__("input_features", card["input_features"]))
    assert f"model card: used feature {used} is of a class outside extraction/feature_classes" in card_refusal(
        bundle, lambda c: c["extraction"].__setitem__("feature_classes", ["ngtdm"] if "ngtdm" not in used else
                                                      ["firstorder"]))
    edit_card(bundle, lambda c: c.__setitem__("extraction", card["extraction"]))
    def unrequired(c):  # a used adc feature (the model may already use some) without adc required
        c["used_features"].append("adc_original_glcm_Contrast")
        c["required_sequences"] = [s for s in c["required_sequences"] if s != "adc"]

    assert "needs adc, which is not in required_sequences" in card_refusal(bundle, unrequired)


NON_FINITE = [
    (lambda card: card["target"].__setitem__("threshold_percent", float("nan")),
     "model card field target/threshold_percent is nan (a finite number is needed)"),
    (lambda card: card["uncertainty"]["scores"].__setitem__(0, float("nan")),
     "model card: uncertainty holds a number that is not finite"),
    (lambda card: card["domain"]["precision"][0].__setitem__(0, float("nan")),
     "model card: domain holds a number that is not finite"),
    (lambda card: card["domain"]["centre"].append(0.0), "domain centre/precision do not fit"),
    (lambda card: card.pop("uncertainty"), "probability/slope is missing (a card without uncertainty needs it)"),
    (lambda card: (card.pop("uncertainty"), card["probability"].update(slope=0.1, intercept=-2.0)),
     "section domain without section uncertainty"),
]


@pytest.mark.parametrize("change, expected", NON_FINITE)
def test_non_finite_or_misfitting_card_numbers_are_refused(bundle, change, expected):
    """JSON Schema bounds let NaN through (every comparison with NaN is false); KiMap checks them itself, and that
    the interval and domain sections fit together."""
    assert expected in card_refusal(bundle, change)


def test_a_card_without_intervals_does_not_fit_a_model_file_with_them(bundle):
    edit_card(bundle, lambda card: (card.pop("uncertainty"), card.pop("domain"),
                                    card["probability"].update(slope=0.1, intercept=-2.0)))
    with pytest.raises(ModelError, match="disagree on prediction intervals"):
        load_model(bundle)

def test_unknown_descriptive_fields_are_allowed_and_ignored(bundle):
    import numpy as np

    before = load_model(bundle)
    edit_card(bundle, lambda card: card.update(notes="trained for the 2026 cohort", reviewer={"name": "A"}))
    after = load_model(bundle)
    matrix = np.zeros((2, len(before.input_features)))
    np.testing.assert_array_equal(after.predict_matrix(matrix)[0], before.predict_matrix(matrix)[0])


def test_unreadable_and_oversized_cards_are_one_line(bundle, monkeypatch):
    from KiMapLib.model import bundle as bundle_module

    (bundle / "model_card.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ModelError, match="model_card.json cannot be read \\(UnicodeDecodeError\\)"):
        load_model(bundle)
    (bundle / "model_card.json").write_text("[" * 100_000)
    with pytest.raises(ModelError, match="model_card.json cannot be read|not valid JSON"):
        load_model(bundle)
    monkeypatch.setattr(bundle_module, "MAX_CARD_BYTES", 10)
    with pytest.raises(ModelError, match="model_card.json is larger than"):
        load_model(bundle)


def test_schema_bounds_agree_with_the_settings_and_the_feature_names():
    import re

    from KiMapLib.features.featuremaps.names import FEATURES
    from KiMapLib.model.bundle import card_schema
    from KiMapLib.model.design import COVARIATE_ENCODERS
    from KiMapLib.settings import BOUNDS, FEATURE_CLASSES, PYRADIOMICS_EXTRA_KEYS, SEQUENCES, ExtractionSettings

    schema = card_schema()["properties"]
    extraction = schema["extraction"]["properties"]
    for name, (low, high) in BOUNDS.items():
        bound = extraction[name]
        assert bound.get("minimum", bound.get("exclusiveMinimum")) == low and bound["maximum"] == high, name
    assert "exclusiveMinimum" in extraction["min_ball_fraction"]
    assert set(ExtractionSettings.__dataclass_fields__) | {"pyradiomics_version"} == set(extraction)
    assert set(extraction["pyradiomics_extra"]["properties"]) == set(PYRADIOMICS_EXTRA_KEYS)
    assert extraction["feature_classes"]["items"]["enum"] == list(FEATURE_CLASSES) == list(FEATURES)
    assert schema["required_sequences"]["items"]["enum"] == list(SEQUENCES)
    feature = re.compile(schema["used_features"]["items"]["pattern"])
    names = [f"{s}_original_{c}_{f}" for s in SEQUENCES for c in FEATURES for f in FEATURES[c]]
    assert all(feature.search(name) for name in names)
    for wrong in ("t1c_original_Mean", "dwi_original_glcm_Contrast", "t1c_original_glcm_Contrastx",
                  "t1c_original_shape_Sphericity", "t1c_wavelet-LLH_glcm_Contrast", "age"):
        assert not feature.search(wrong), wrong
    inputs = re.compile(schema["input_features"]["items"]["pattern"])
    assert all(inputs.search(name) for name in [*names, *COVARIATE_ENCODERS])
    assert schema["covariates"]["properties"]["numeric"]["items"]["enum"] == list(COVARIATE_ENCODERS)


def test_every_card_field_the_code_reads_is_in_the_schema():
    """Scan KiMapLib for card["a"]["b"] / card.get("a") reads; each path must be a schema property."""
    import re
    from pathlib import Path

    from KiMapLib.model.bundle import card_schema

    schema = card_schema()
    reads = set()
    library = Path(__file__).resolve().parents[2].joinpath("KiMapLib")
    for path in library.rglob("*.py"):
        if path.parent.name == "region":  # segmentation-model cards have their own schema
            continue
        text = path.read_text()
        for match in re.finditer(r'card(?:\["(\w+)"\]|\.get\("(\w+)")(?:\["(\w+)"\])?', text):
            reads.add(tuple(part for part in (match[1] or match[2], match[3]) if part))
    reads -= {("threshold_percent",), ("notice",), ("research_use_notice",)}  # Slicer's legacy fallbacks, not cards
    assert ("extraction",) in reads and ("probability",) in reads and ("model_file", "sha256") in reads
    for keys in sorted(reads):
        node = schema
        for key in keys:
            assert key in node.get("properties", {}), f"card field {'/'.join(keys)} is not in the schema"
            node = node["properties"][key]


def test_the_case_sequences_choose_the_packaged_model(monkeypatch):
    """Without --model: the packaged model that uses the most of the given sequences; ties and cases no packaged
    model fits go to the default (whose sequence check then names what is missing)."""
    from KiMapLib.model import bundle as bundle_module

    entries = [{"id": "adc", "path": "adc", "default": False, "required_sequences": ["t1c", "t2", "flair", "adc"]},
               {"id": "three", "path": "three", "default": True, "required_sequences": ["t1c", "t2", "flair"]},
               {"id": "t1c-only", "path": "t1c-only", "default": False, "required_sequences": ["t1c"]}]
    monkeypatch.setattr(bundle_module, "registry", lambda: entries)
    choose = bundle_module.packaged_entry
    assert choose()["id"] == "three"
    assert choose(sequences=["t1c", "t2", "flair", "adc", "t1"])["id"] == "adc"
    assert choose(sequences=["t1c", "t2", "flair", "t1"])["id"] == "three"
    assert choose(sequences=["t1c", "flair"])["id"] == "t1c-only"
    assert choose(sequences=["t2"])["id"] == "three"
    assert choose("t1c-only", sequences=["t1c", "t2", "flair", "adc"])["id"] == "t1c-only"
    with pytest.raises(ModelError, match="no packaged model nope"):
        choose("nope")


def test_packaged_models_are_chosen_by_sequences_and_load():
    from KiMapLib.model.bundle import packaged_entry

    assert list(load_model(None).required_sequences) == ["t1c", "t2", "flair"]
    with_adc = load_model(None, sequences=["t1c", "t2", "flair", "adc"])
    assert "adc" in with_adc.required_sequences
    assert with_adc.model_id == packaged_entry(sequences=["t1c", "t2", "flair", "adc"])["id"]


def test_model_by_packaged_id_or_folder(tmp_path):
    """``--model`` takes a folder or a packaged model's id; an id never shadows an existing folder of that name."""
    from KiMapLib.model.bundle import model_folder, packaged_model_dir

    assert model_folder("kimap-ki67-synthetic-v3") == packaged_model_dir("kimap-ki67-synthetic-v3")
    assert load_model("kimap-ki67-synthetic-adc-v3").model_id == "kimap-ki67-synthetic-adc-v3"
    assert model_folder(None, ["t1c", "t2", "flair", "adc"]) == packaged_model_dir("kimap-ki67-synthetic-adc-v3")
    local = tmp_path / "kimap-ki67-synthetic-v3"
    local.mkdir()
    assert model_folder(local) == local
    with pytest.raises(ModelError, match="no-such-model"):
        load_model(tmp_path / "no-such-model")


def test_bundles_are_written_deflated_and_packaged_ones_stay_small():
    """A forest's tree tables are text inside skops' schema.json: stored, a packaged model was 6 MB."""
    import zipfile

    from KiMapLib.model.bundle import packaged_model_dir, registry

    for entry in registry():
        path = packaged_model_dir(entry["id"]) / "model.skops"
        with zipfile.ZipFile(path) as archive:
            assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_DEFLATED}
        assert path.stat().st_size < 1 << 20
