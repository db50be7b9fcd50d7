"""Hostile model bundles, built here by editing a real bundle's schema.json (card sha256 updated, so the refusal
comes from KiMap's allow-list, not from the hash): each is refused in one line naming the file and the node, before
skops builds anything, and nothing is written or run. Real bundles (packaged, freshly trained ridge and forest) still
load and predict exactly as skops alone loads them."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from KiMapLib.errors import ModelError
from KiMapLib.model.bundle import load_model, save_bundle

SENTINEL_NAME = "kimap-hostile-sentinel.txt"


# -- building hostile bundles -----------------------------------------------------------------------------------

def read_schema(bundle: Path) -> dict:
    with zipfile.ZipFile(bundle / "model.skops") as archive:
        return json.loads(archive.read("schema.json"))


def write_schema(bundle: Path, schema: dict, extra_members: dict[str, bytes] | None = None) -> None:
    """Replace schema.json inside model.skops (other members kept) and put the new sha256 into the card."""
    path = bundle / "model.skops"
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist() if name != "schema.json"}
    members.update(extra_members or {})
    members["schema.json"] = json.dumps(schema).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    card = json.loads((bundle / "model_card.json").read_text())
    card["model_file"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (bundle / "model_card.json").write_text(json.dumps(card))


def step(schema: dict, index: int) -> dict:
    """The ObjectNode of pipeline step ``index``."""
    return schema["content"]["pipeline"]["content"]["content"]["steps"]["content"][index]["content"][1]


def set_attribute(node: dict, name: str, value: dict) -> None:
    """Give an ObjectNode (or DictNode) attribute ``name`` the node ``value``, with its key type, as skops writes."""
    mapping = node["content"] if node["__loader__"] == "ObjectNode" else node
    if name not in mapping["content"]:
        mapping["key_types"]["content"].append({"__class__": "str", "__module__": "builtins",
                                                "__loader__": "TypeNode", "__id__": 1})
    mapping["content"][name] = value


def json_node(value: object, node_id: int = 7) -> dict:
    return {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode", "content": json.dumps(value),
            "is_json": True, "__id__": node_id}


def array_member(schema: dict) -> str:
    """Name of one .npy member the file already holds (SimpleImputer.statistics_)."""
    return step(schema, 0)["content"]["content"]["statistics_"]["file"]


@pytest.fixture
def bundle(tmp_path, tiny_model_dir):
    target = tmp_path / "bundle"
    shutil.copytree(tiny_model_dir, target)
    return target


@pytest.fixture
def no_skops_build(monkeypatch):
    """Fail the test if skops is asked to build anything (the refusal must come first)."""
    from KiMapLib.model.skops_import import import_skops_io

    sio = import_skops_io()

    def forbidden(*args, **kwargs):
        raise AssertionError("skops was asked to load a hostile file")

    monkeypatch.setattr(sio, "loads", forbidden)
    monkeypatch.setattr(sio, "load", forbidden)


def refusal(bundle: Path, *expected: str) -> str:
    """The one-line refusal of ``bundle``, in the foreground and in background mode alike."""
    for background in (False, True):
        with pytest.raises(ModelError) as caught:
            load_model(bundle, background=background)
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"{bundle}: model.skops ")
        for text in expected:
            assert text in message, message
    return message


# -- nodes that would run code: refused before skops builds anything ----------------------------------------------

def method_node(cls: str, module: str, func: str, obj: dict) -> dict:
    return {"__class__": cls, "__module__": module, "__loader__": "MethodNode", "__id__": 11,
            "content": {"func": func, "obj": obj}}


def test_method_node_str_format_as_a_step_attribute_is_refused(bundle, no_skops_build):
    schema = read_schema(bundle)
    set_attribute(step(schema, 0), "strategy", method_node("str", "builtins", "format", json_node("{0}")))
    write_schema(bundle, schema)
    refusal(bundle, "refused at pipeline.steps[0][1].strategy: MethodNode builtins.str.format (a bound method)")


def test_method_node_ndarray_tofile_is_refused_and_writes_nothing(bundle, tmp_path, no_skops_build, monkeypatch):
    schema = read_schema(bundle)
    array = {"__class__": "ndarray", "__module__": "numpy", "__loader__": "NdArrayNode", "type": "numpy",
             "file": array_member(schema), "__id__": 12}
    set_attribute(step(schema, 2), "_write", method_node("ndarray", "numpy", "tofile", array))
    write_schema(bundle, schema)
    monkeypatch.chdir(tmp_path)
    refusal(bundle, "pipeline.steps[2][1]._write: MethodNode numpy.ndarray.tofile")
    assert not (tmp_path / SENTINEL_NAME).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_the_tofile_payload_is_live_under_skops_own_check(bundle, tmp_path):
    """Control: skops' own audit (get_untrusted_types as trusted, the old KiMap path) builds the bound method, and
    calling it writes a file: the payload of the test above is real."""
    from KiMapLib.model.skops_import import import_skops_io

    sio = import_skops_io()
    schema = read_schema(bundle)
    array = {"__class__": "ndarray", "__module__": "numpy", "__loader__": "NdArrayNode", "type": "numpy",
             "file": array_member(schema), "__id__": 12}
    set_attribute(step(schema, 2), "_write", method_node("ndarray", "numpy", "tofile", array))
    write_schema(bundle, schema)
    data = (bundle / "model.skops").read_bytes()
    loaded = sio.loads(data, trusted=sio.get_untrusted_types(data=data))
    writer = loaded["pipeline"].steps[2][1]._write
    writer(str(tmp_path / SENTINEL_NAME))
    assert (tmp_path / SENTINEL_NAME).stat().st_size > 0


@pytest.mark.parametrize("module, name", [("os", "system"), ("builtins", "eval"), ("numpy", "save"),
                                          ("numpy", "add")])
def test_function_nodes_outside_the_list_are_refused(bundle, no_skops_build, module, name):
    schema = read_schema(bundle)
    set_attribute(step(schema, 3), "score_func", {"__class__": name, "__module__": module,
                                                  "__loader__": "FunctionNode", "__id__": 13})
    write_schema(bundle, schema)
    refusal(bundle, f"pipeline.steps[3][1].score_func: FunctionNode of {module}.{name} is not on KiMap's allow-list")


def test_a_foreign_type_nested_three_levels_deep_is_refused(bundle, no_skops_build):
    """An OrderedDict (trusted by skops by default) inside a dict inside a list inside a Ridge attribute."""
    schema = read_schema(bundle)
    inner = {"__class__": "OrderedDict", "__module__": "collections", "__loader__": "DictNode", "__id__": 21,
             "content": {}, "key_types": {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode",
                                          "content": [], "__id__": 22}}
    middle = {"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode", "__id__": 23,
              "content": {"deep": inner},
              "key_types": {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode", "__id__": 24,
                            "content": [{"__class__": "str", "__module__": "builtins", "__loader__": "TypeNode",
                                         "__id__": 1}]}}
    outer = {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode", "__id__": 25,
             "content": [middle]}
    set_attribute(step(schema, 4), "notes", outer)
    write_schema(bundle, schema)
    refusal(bundle, "pipeline.steps[4][1].notes[0].deep: DictNode of collections.OrderedDict is not on KiMap's")


def test_an_unknown_loader_is_refused(bundle, no_skops_build):
    schema = read_schema(bundle)
    set_attribute(step(schema, 1), "threshold", {"__class__": "float", "__module__": "builtins",
                                                 "__loader__": "EvilNode", "__id__": 31, "content": "0"})
    write_schema(bundle, schema)
    refusal(bundle, "pipeline.steps[1][1].threshold: unknown skops loader 'EvilNode'")


@pytest.mark.parametrize("loader", ["LossNode", "ReduceNode", "ConstructorFromReduceNode"])
def test_a_reduce_of_builtins_getattr_is_refused(bundle, no_skops_build, loader):
    """skops' LossNode calls the class it names with the __reduce__ args (here getattr(os, 'system'))."""
    schema = read_schema(bundle)
    args = {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode", "__id__": 41,
            "content": [json_node("os", 42), json_node("system", 43)]}
    node = {"__class__": "getattr", "__module__": "builtins", "__loader__": loader, "__id__": 44,
            "__reduce__": {"args": args}, "content": args}
    set_attribute(step(schema, 4), "alpha", node)
    write_schema(bundle, schema)
    refusal(bundle, f"pipeline.steps[4][1].alpha: {loader} builtins.getattr", "is never loaded by KiMap")


def test_a_tree_node_naming_another_class_is_refused(bundle, no_skops_build):
    schema = read_schema(bundle)
    args = {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode", "__id__": 41, "content": []}
    set_attribute(step(schema, 4), "tree_", {"__class__": "getattr", "__module__": "builtins",
                                             "__loader__": "TreeNode", "__id__": 44, "__reduce__": {"args": args},
                                             "content": json_node({})})
    write_schema(bundle, schema)
    refusal(bundle, "pipeline.steps[4][1].tree_: TreeNode of builtins.getattr is not on KiMap's allow-list")


@pytest.mark.parametrize("cls", ["attrgetter", "methodcaller"])
def test_operator_nodes_are_refused(bundle, no_skops_build, cls):
    schema = read_schema(bundle)
    attrs = {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode", "__id__": 51,
             "content": [json_node("system", 52)]}
    set_attribute(step(schema, 3), "k", {"__class__": cls, "__module__": "operator", "__loader__": "OperatorFuncNode",
                                         "__id__": 53, "attrs": attrs})
    write_schema(bundle, schema)
    refusal(bundle, f"pipeline.steps[3][1].k: OperatorFuncNode operator.{cls}", "is never loaded by KiMap")


def test_an_array_node_naming_a_callable_class_is_refused(bundle, no_skops_build):
    """skops' NdArrayNode calls its class on the loaded array."""
    schema = read_schema(bundle)
    node = step(schema, 0)["content"]["content"]["statistics_"]
    node["__module__"], node["__class__"] = "os", "system"
    write_schema(bundle, schema)
    refusal(bundle, "pipeline.steps[0][1].statistics_: NdArrayNode of os.system is not on KiMap's allow-list")


def test_a_dict_key_type_outside_the_list_is_refused(bundle, no_skops_build):
    """skops' DictNode calls each key type on its key."""
    schema = read_schema(bundle)
    step(schema, 1)["content"]["key_types"]["content"][0] = {"__class__": "eval", "__module__": "builtins",
                                                             "__loader__": "TypeNode", "__id__": 61}
    write_schema(bundle, schema)
    refusal(bundle, "TypeNode of builtins.eval is not on KiMap's allow-list")


def test_a_node_reusing_the_id_of_another_kind_is_refused(bundle, no_skops_build):
    """skops puts the first node with an __id__ wherever that __id__ appears again."""
    schema = read_schema(bundle)
    function_id = step(schema, 3)["content"]["content"]["score_func"]["__id__"]
    set_attribute(step(schema, 4), "alpha", json_node(1.0, function_id))
    write_schema(bundle, schema)
    refusal(bundle, "pipeline.steps[4][1].alpha: JsonNode builtins.str reuses the __id__ of a FunctionNode")


def test_a_json_container_and_an_object_array_are_refused(bundle, no_skops_build):
    schema = read_schema(bundle)
    set_attribute(step(schema, 4), "alpha", {**json_node(0), "content": '{"__class__": "x"}'})
    write_schema(bundle, schema)
    refusal(bundle, "pipeline.steps[4][1].alpha: JsonNode: content must be the JSON text of a number")
    schema = read_schema(bundle)
    set_attribute(step(schema, 4), "alpha", {"__class__": "ndarray", "__module__": "numpy", "__loader__": "NdArrayNode",
                                             "__id__": 71, "type": "json", "content": [], "shape": json_node([0])})
    write_schema(bundle, schema)
    refusal(bundle, "pipeline.steps[4][1].alpha: NdArrayNode numpy.ndarray has unexpected key(s) content, shape")


def test_another_protocol_and_a_deflate_bomb_are_refused(bundle, no_skops_build, monkeypatch):
    from KiMapLib.model import skops_audit

    schema = read_schema(bundle)
    write_schema(bundle, dict(schema, protocol=1))
    refusal(bundle, "skops protocol 1 (KiMap reads protocol 2)")
    monkeypatch.setattr(skops_audit, "MAX_UNPACKED_BYTES", 8 << 20)  # (2 GiB in use; the test stays small)
    write_schema(bundle, schema)
    path = bundle / "model.skops"
    before = path.stat().st_size
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb.npy", b"\0" * (16 << 20))  # 16 MiB unpacked, 16 kB packed
    assert path.stat().st_size - before < 200_000
    card = json.loads((bundle / "model_card.json").read_text())
    card["model_file"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (bundle / "model_card.json").write_text(json.dumps(card))
    refusal(bundle, "unpacks to 0.0 GiB", "more than a KiMap model can hold")


# -- structure: allowed types holding the wrong things, refused before the first prediction ------------------------

def dump_bundle(pipeline, card: dict, folder: Path) -> Path:
    """A bundle written with skops directly (save_bundle itself refuses such pipelines)."""
    from KiMapLib.model.skops_import import import_skops_io

    folder.mkdir()
    sio = import_skops_io()
    sio.dump({"pipeline": pipeline, "input_features": list(card["input_features"])}, folder / "model.skops")
    card = dict(card, model_file={"path": "model.skops", "format": "skops",
                                  "sha256": hashlib.sha256((folder / "model.skops").read_bytes()).hexdigest()})
    (folder / "model_card.json").write_text(json.dumps(card))
    return folder


def test_an_extra_callable_attribute_is_refused_before_predicting(tmp_path, tiny_model_dir):
    """f_regression is an allowed node, but only as SelectKBest.score_func."""
    from sklearn.feature_selection import f_regression

    model = load_model(tiny_model_dir)
    model.pipeline.steps[4][1].postprocess = f_regression
    folder = dump_bundle(model.pipeline, model.card, tmp_path / "extra")
    with pytest.raises(ModelError, match=r"model.skops refused at pipeline.steps\[4\]\[1\].postprocess: unexpected "
                                         r"attribute of Ridge \(function\)"):
        load_model(folder)
    lazy = load_model(folder, background=True)  # the node audit passes; the structure check stops the prediction
    with pytest.raises(ModelError, match="unexpected attribute of Ridge"):
        lazy.predict_matrix(np.zeros((1, len(model.input_features))))


@pytest.mark.parametrize("attribute, value, expected", [
    ("coef_", "12", r"coef_: must be a float array of \d+ values"),
    ("coef_", np.array(["1"] * 8), r"coef_: must be a float array"),
    ("intercept_", float("nan"), "intercept_: must be a finite number"),
    ("alpha", "10", r"steps\[4\]\[1\]: invalid hyper-parameter \(The 'alpha' parameter of Ridge must be"),
])
def test_allowed_types_holding_the_wrong_values_are_refused(tmp_path, tiny_model_dir, attribute, value, expected):
    model = load_model(tiny_model_dir)
    setattr(model.pipeline.steps[4][1], attribute, value)
    folder = dump_bundle(model.pipeline, model.card, tmp_path / "wrong")
    with pytest.raises(ModelError, match=expected) as caught:
        load_model(folder)
    assert "\n" not in str(caught.value) and str(folder) in str(caught.value)


def test_a_foreign_estimator_is_refused_and_save_bundle_refuses_it_too(tmp_path, tiny_model_dir):
    from sklearn.dummy import DummyRegressor

    model = load_model(tiny_model_dir)
    model.pipeline.steps.append(("extra", DummyRegressor()))
    with pytest.raises(ModelError, match=r"pipeline.steps: must be a list of 5 steps"):
        save_bundle(model.pipeline, model.card, tmp_path / "sneaky")
    assert not (tmp_path / "sneaky").exists()
    folder = dump_bundle(model.pipeline, model.card, tmp_path / "dumped")
    with pytest.raises(ModelError, match=r"refused at pipeline.steps\[5\]\[1\]: ObjectNode of "
                                         r"sklearn.dummy.DummyRegressor is not on KiMap's allow-list"):
        load_model(folder)


# -- real bundles: unchanged --------------------------------------------------------------------------------------

def skops_alone(folder: Path):
    """The pipeline as skops alone loads it (trusting what the file names): the reference for predictions."""
    from KiMapLib.model.skops_import import import_skops_io

    sio = import_skops_io()
    data = (folder / "model.skops").read_bytes()
    return sio.loads(data, trusted=sio.get_untrusted_types(data=data))["pipeline"]


def design(n_features: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    matrix = rng.normal(0, 100, size=(16, n_features))
    matrix[::4, ::3] = np.nan  # missing values go through the imputer
    return matrix


def test_the_packaged_model_loads_and_predicts_as_before():
    from KiMapLib.model.bundle import packaged_model_dir

    model = load_model()
    matrix = design(len(model.input_features))
    reference = np.clip(skops_alone(packaged_model_dir()).predict(matrix), 0, 100)
    np.testing.assert_array_equal(model.predict_matrix(matrix)[0], reference)
    assert type(model.pipeline.steps[-1][1]).__name__ == "RandomForestRegressor"  # v3: a forest (README)
    assert type(model.spread).__name__ == "RandomForestRegressor"  # the intervals' spread model, checked as well


@pytest.mark.parametrize("estimator", ["ridge", "rf"])
def test_freshly_trained_models_load_and_predict_identically(tmp_path, tiny_cohort_rows, estimator):
    from KiMapLib.model.training import TrainingConfig, train
    from KiMapLib.settings import ExtractionSettings

    result = train(tiny_cohort_rows, TrainingConfig(k_features=8, estimator=estimator),
                   settings=ExtractionSettings(ball_radius_mm=3.0), model_id=f"test-{estimator}")
    folder = save_bundle(result.pipeline, result.card, spread=result.spread, out_dir=tmp_path / estimator)
    model = load_model(folder)
    matrix = design(len(model.input_features))
    expected = result.pipeline.predict(matrix)
    np.testing.assert_array_equal(model.pipeline.predict(matrix), expected)
    np.testing.assert_array_equal(skops_alone(folder).predict(matrix), expected)
    if estimator == "rf":
        assert len(model.pipeline.steps[-1][1].estimators_) == 300


def test_a_forest_with_a_broken_tree_is_refused(tmp_path, tiny_model_dir, tiny_cohort_rows):
    """A split pointing outside the node table would make scikit-learn's compiled predict read outside memory."""
    from KiMapLib.model.design import design_matrix
    from KiMapLib.model.training import TrainingConfig, build_pipeline

    card = copy.deepcopy(load_model(tiny_model_dir).card)
    card["estimator"]["name"] = "rf"
    matrix = design_matrix(tiny_cohort_rows, card["input_features"])
    forest = build_pipeline(TrainingConfig(estimator="rf", k_features=8), matrix.shape[1]).fit(
        matrix, [row["ki67"] for row in tiny_cohort_rows])
    folder = save_bundle(forest, card, tmp_path / "forest", spread=load_model(tiny_model_dir).spread)
    assert load_model(folder).pipeline.steps[-1][1].n_estimators == 300
    schema = read_schema(folder)
    tree = step(schema, 4)["content"]["content"]["estimators_"]["content"][7]["content"]["content"]["tree_"]
    nodes_file = tree["content"]["content"]["nodes"]["file"]
    with zipfile.ZipFile(folder / "model.skops") as archive:
        nodes = np.load(io.BytesIO(archive.read(nodes_file)))
    nodes["left_child"][0] = 10**9
    buffer = io.BytesIO()
    np.save(buffer, nodes, allow_pickle=False)
    write_schema(folder, schema, extra_members={nodes_file: buffer.getvalue()})
    with pytest.raises(ModelError, match=r"estimators_\[7\].tree_: a node's children are outside the node table"):
        load_model(folder)


def test_a_spread_model_of_another_kind_or_size_is_refused(tiny_model_dir):
    """The prediction intervals' spread model is checked like the pipeline: its class, attributes and size."""
    from sklearn.linear_model import Ridge

    from KiMapLib.model.pipeline_check import check_spread

    model = load_model(tiny_model_dir)
    n = len(model.card["uncertainty"]["columns"])
    with pytest.raises(ModelError, match="spread: a Ridge, not one of RandomForestRegressor"):
        check_spread({"spread": Ridge().fit(np.zeros((3, n)), [0.0, 1.0, 2.0])}, n, "bundle")
    with pytest.raises(ModelError, match=rf"spread.n_features_in_: must be {n + 1}"):
        check_spread({"spread": model.spread}, n + 1, "bundle")
    assert check_spread({"spread": model.spread}, n, "bundle") is model.spread


def test_a_deflated_member_that_inflates_past_its_header_is_refused():
    """Bundles are written deflated; a member whose header understates its size is read only up to that size (then
    fails), so the audit's bound on the unpacked sizes holds for compressed members too."""
    import struct

    from KiMapLib.model.skops_audit import audit_model_file

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("schema.json", b'{"a": "' + b"x" * (64 << 20) + b'"}')
    data = bytearray(buffer.getvalue())
    data[22:26] = struct.pack("<I", 10)  # local header: uncompressed size
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = struct.pack("<I", 10)  # central directory: uncompressed size
    with pytest.raises(ModelError, match="schema.json is not readable JSON"):
        audit_model_file(bytes(data), "bomb")
