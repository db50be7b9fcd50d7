"""Model bundles load only when sha256, schema, trusted types and feature list all check out."""

import json
import shutil

import pytest

from KiMapLib.errors import ModelError
from KiMapLib.model.bundle import load_model, save_bundle


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


def test_untrusted_types_are_refused_before_loading(tmp_path, tiny_model_dir):
    from sklearn.dummy import DummyRegressor

    model = load_model(tiny_model_dir)
    sneaky = DummyRegressor()  # a harmless type that is not on KiMap's allow-list
    model.pipeline.steps.append(("extra", sneaky))
    try:
        save_bundle(model.pipeline, model.card, tmp_path / "sneaky")
    finally:
        model.pipeline.steps.pop()
    with pytest.raises(ModelError, match="types outside KiMap's allow-list: sklearn.dummy.DummyRegressor"):
        load_model(tmp_path / "sneaky")


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
