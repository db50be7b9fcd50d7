"""A user's segmentation model (ONNX bundle): tiny graphs built here with onnx.helper, run with onnxruntime on CPU.

The graphs threshold normalized intensities voxel by voxel (label 2 where FLAIR z > 1, label 3 where t1c z > 2), so
the labels they should give are known exactly on any grid; a second graph differentiates along one tensor axis, so
that a wrong orientation or axis order would show."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_volume, rotation

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from KiMapLib.app.cli import main  # noqa: E402
from KiMapLib.errors import KiMapError, ModelError  # noqa: E402
from KiMapLib.inputs.case import prepare_case  # noqa: E402
from KiMapLib.inputs.geometry import same_grid  # noqa: E402
from KiMapLib.region.model_region import model_region  # noqa: E402
from KiMapLib.region.onnx_model import (  # noqa: E402
    CARD_FILE,
    MODEL_FILE,
    load_segmentation_model,
    save_segmentation_bundle,
    sha256_bytes,
)
from KiMapLib.region.tumour_region import require_plausible  # noqa: E402

SHAPE = (22, 26, 30)  # k, j, i
SHARP = 1000.0  # sigmoid(SHARP * (z - threshold)) is a step


def card(inputs=(("flair", "zscore-brain"), ("t1c", "zscore-brain")), kind="logits", **extra) -> dict:
    output = {"kind": kind}
    if kind in ("logits", "probabilities"):
        output["label_map"] = {"0": 0, "1": 3, "2": 2, "3": 1}  # the model's channels: bg, enhancing, oedema, core
    elif kind == "labels":
        output["label_map"] = {"0": 0, "1": 1, "2": 2, "4": 3}  # older BraTS: 4 = enhancing
    else:
        output["regions"] = ["enhancing_tumour", "whole_tumour", "tumour_core"]
    return {"schema_version": 1, "model_id": "test-threshold", "title": "thresholds",
            "intended_use": "tests of the ONNX bundle loader", "research_use_notice": "Research use only; a test.",
            "inputs": [{"sequence": s, "normalization": n} for s, n in inputs],
            "geometry": {"spacing_mm": [1.0, 1.0, 1.0], "orientation": "LPS", "axes": "zyx"},
            "output": output, **extra}


def threshold_graph(channels: int = 2, flair: int = 0, t1c: int = 1, thresholds=(1.0, 2.0), kind: str = "logits",
                    spatial=("D", "H", "W"), domain: str = "") -> bytes:
    """[1, C, *spatial] -> step(flair > t0), step(t1c > t1) -> the output the card's kind describes."""
    w1 = np.zeros((2, channels, 1, 1, 1), np.float32)
    w1[0, flair], w1[1, t1c] = SHARP, SHARP
    b1 = -SHARP * np.asarray(thresholds, np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"]), helper.make_node("Sigmoid", ["a"], ["s"])]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1")]
    out_channels = 1 if kind == "labels" else 3 if kind.startswith("region") else 4
    if kind.startswith("region"):  # channels enhancing, whole, core (the card's order)
        w2 = np.array([[0, 10], [10, 10], [0, 10]], np.float32)
        b2 = np.array([-5, -5, -5], np.float32)
    else:  # channels background, enhancing, oedema, core: logits 0.5, 2 s_t, s_f, -1
        w2 = np.array([[0, 0], [0, 2], [1, 0], [0, 0]], np.float32)
        b2 = np.array([0.5, 0, 0, -1], np.float32)
    inits += [numpy_helper.from_array(w2.reshape(*w2.shape, 1, 1, 1), "w2"), numpy_helper.from_array(b2, "b2")]
    last = "y"
    if kind in ("probabilities", "region_probabilities", "labels"):
        last = "logits"
    nodes.append(helper.make_node("Conv", ["s", "w2", "b2"], [last]))
    if kind == "probabilities":
        nodes.append(helper.make_node("Softmax", ["logits"], ["y"], axis=1))
    elif kind == "region_probabilities":
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["y"]))
    elif kind == "labels":  # argmax channel 0, 1, 2, 3 = bg, enhancing, oedema, core -> labels 0, 4, 2, 1
        inits.append(numpy_helper.from_array(np.array([0, 4, 2, 1], np.int64), "lut"))
        nodes += [helper.make_node("ArgMax", ["logits"], ["index"], axis=1, keepdims=1),
                  helper.make_node("Gather", ["lut", "index"], ["y"])]
    if domain:
        nodes.append(helper.make_node("Identity", ["y"], ["z"], domain=domain))
    out_type = TensorProto.INT64 if kind == "labels" else TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "thresholds", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, *spatial])],
        [helper.make_tensor_value_info("z" if domain else "y", out_type, [1, out_channels, *spatial])], inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=9).SerializeToString()


def gradient_graph(axis: int) -> bytes:
    """Label 2 where the single input rises by more than 0.5 per voxel along tensor spatial ``axis`` (0, 1, 2)."""
    kernel = np.zeros((1, 1, 3, 3, 3), np.float32)
    index = [1, 1, 1]
    index[axis] = 0
    kernel[(0, 0, *index)] = -0.5
    index[axis] = 2
    kernel[(0, 0, *index)] = 0.5
    w2 = np.array([[0], [SHARP]], np.float32).reshape(2, 1, 1, 1, 1)
    nodes = [helper.make_node("Conv", ["x", "k"], ["g"], pads=[1] * 6),
             helper.make_node("Conv", ["g", "w2", "b2"], ["y"])]
    inits = [numpy_helper.from_array(kernel, "k"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(np.array([0, -SHARP * 0.5], np.float32), "b2")]
    graph = helper.make_graph(nodes, "gradient", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "D",
                                                                                                     "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, "D", "H", "W"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9).SerializeToString()


def lesion_volumes(spacing=(1.0, 1.0, 1.0), direction=None, origin=(-14.0, -12.0, -10.0)) -> dict:
    """A brain ellipsoid; a FLAIR lesion off the centre (towards the patient's left, posterior and up) and an
    enhancing part inside it, placed in physical space so that every grid sees the same anatomy."""
    direction = np.eye(3) if direction is None else direction
    probe = make_volume(np.zeros(SHAPE), spacing, direction, origin)
    k, j, i = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    index = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(float)
    points = np.asarray(origin) + (index * np.asarray(spacing)) @ np.asarray(direction).reshape(3, 3).T
    centre = np.asarray(probe.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in SHAPE[::-1]]))
    relative = (points - centre).reshape(*SHAPE, 3)
    extent = np.array(SHAPE[::-1]) * np.asarray(spacing) * 0.45
    brain = ((relative / extent) ** 2).sum(axis=-1) < 1
    lesion = np.linalg.norm(relative - [4.0, 3.0, 2.0], axis=-1) < 6.0
    enhancing = np.linalg.norm(relative - [5.0, 3.5, 2.0], axis=-1) < 3.5
    texture = 3.0 * np.sin(relative[..., 0] / 3.0) * np.cos(relative[..., 1] / 4.0)
    flair = np.where(brain, 100 + texture + 150 * lesion, 0.0)
    t1c = np.where(brain, 100 - texture + 400 * enhancing, 0.0)
    t2 = np.where(brain, 80 + texture + 100 * lesion, 0.0)
    return {name: make_volume(values, spacing, np.asarray(direction), origin)
            for name, values in (("t1c", t1c), ("flair", flair), ("t2", t2))}


def expected_labels(case) -> np.ndarray:
    """What the threshold graph gives when it runs on the t1c grid itself."""
    z = {}
    for name in ("flair", "t1c"):
        values = sitk.GetArrayFromImage(case.images[name])
        inside = values[case.foreground]
        z[name] = (values - inside.mean()) / inside.std()
    labels = np.zeros(case.foreground.shape, np.uint8)
    labels[z["flair"] > 1.0] = 2
    labels[z["t1c"] > 2.0] = 3
    labels[~case.foreground] = 0
    return labels


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def bundle(tmp_path: Path, model: bytes, card_dict: dict, name: str = "bundle") -> Path:
    return save_segmentation_bundle(model, card_dict, tmp_path / name)


@pytest.mark.parametrize("kind", ["logits", "probabilities", "labels", "region_logits", "region_probabilities"])
@pytest.mark.parametrize("orientation,axes", [("LPS", "zyx"), ("RAS", "xyz")])
def test_output_kinds_and_channel_mapping_give_the_brats_labels(tmp_path, kind, orientation, axes):
    """On a t1c lying on the model's lattice nothing is interpolated: every voxel must be exact."""
    volumes = lesion_volumes()
    case = prepare_case(volumes)
    expected = expected_labels(case)
    assert set(np.unique(expected).tolist()) == {0, 2, 3}
    model_card = card(kind=kind, geometry={"spacing_mm": [1, 1, 1], "orientation": orientation, "axes": axes})
    model = load_segmentation_model(bundle(tmp_path, threshold_graph(kind=kind), model_card))
    region = model_region(case, model)
    np.testing.assert_array_equal(region.labels, expected)
    assert region.source == "model:test-threshold" and region.excluded_labels == (1,)
    assert region.method["sha256"] == sha256_bytes((tmp_path / "bundle" / MODEL_FILE).read_bytes())
    assert region.method["model_id"] == "test-threshold" and region.method["sequences"] == ["flair", "t1c"]
    require_plausible(region)


def test_labels_land_on_the_exact_t1c_grid_of_an_oblique_anisotropic_volume(tmp_path):
    spacing, direction = (0.9, 1.1, 1.6), rotation(20, 10)
    volumes = lesion_volumes(spacing, direction, origin=(12.0, -30.0, 5.0))
    case = prepare_case(volumes)
    expected = expected_labels(case)
    model = load_segmentation_model(bundle(tmp_path, threshold_graph(), card()))
    region = model_region(case, model)
    assert region.labels.shape == expected.shape
    assert same_grid(region.label_image(case.reference), volumes["t1c"], tolerance=0)
    for label in (2, 3):
        assert dice(region.labels == label, expected == label) > 0.9, label
        # centroids in physical space: a flipped or swapped axis would move them by centimetres
        got, want = (np.mean([case.reference.TransformIndexToPhysicalPoint([int(v) for v in p[::-1]])
                              for p in np.argwhere(labels == label)], axis=0) for labels in (region.labels, expected))
        assert np.linalg.norm(got - want) < 0.5, label
    assert region.qc["windows"] == 1 and "1x1x1 mm" in region.qc["model_grid"]


@pytest.mark.parametrize("orientation,axes,axis,rises", [
    ("LPS", "zyx", 2, True),  # tensor axis 2 = i, which runs to the patient's left, where the ramp rises
    ("LPS", "xyz", 0, True),  # tensor axis 0 = i
    ("RAS", "xyz", 0, False),  # i runs to the patient's right: the ramp falls along it
    ("LPS", "zyx", 0, False),  # k runs up: the ramp is flat along it
])
def test_orientation_and_axis_order_reach_the_model_as_the_card_says(tmp_path, orientation, axes, axis, rises):
    k, j, i = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    inside = (i > 0) & (i < SHAPE[2] - 1) & (k > 0)
    volumes = {"flair": make_volume(np.where(inside, 10.0 + 2.0 * i, 0.0), (1, 1, 1), np.eye(3)),
               "t1c": make_volume(np.where(inside, 100.0 + j % 3, 0.0), (1, 1, 1), np.eye(3))}
    model_card = card(inputs=(("flair", "none"),), geometry={"spacing_mm": [1, 1, 1], "orientation": orientation,
                                                            "axes": axes})
    model_card["output"]["label_map"] = {"0": 0, "1": 2}
    model = load_segmentation_model(bundle(tmp_path, gradient_graph(axis), model_card))
    labels = model_region(prepare_case(volumes), model, volumes).labels
    inner = np.zeros(SHAPE, bool)
    inner[3:-2, 2:-2, 3:-3] = True  # away from the edges, where the kernel sees the background
    assert (labels[inner] == 2).all() if rises else not (labels[inner] == 2).any()


def test_tiling_gives_the_same_labels_as_one_pass(tmp_path):
    volumes = lesion_volumes((0.9, 1.1, 1.6), rotation(20, 10))
    case = prepare_case(volumes)
    whole = model_region(case, load_segmentation_model(bundle(tmp_path, threshold_graph(), card(), "whole")))
    fixed = load_segmentation_model(bundle(tmp_path, threshold_graph(spatial=(8, 9, 10)),
                                           card(tiling={"overlap": 0.5}), "fixed"))
    assert fixed.patch_size == (8, 9, 10)
    tiled = model_region(case, fixed)
    assert tiled.qc["windows"] > 8 and whole.qc["windows"] == 1
    np.testing.assert_array_equal(tiled.labels, whole.labels)
    constant = model_region(case, load_segmentation_model(bundle(
        tmp_path, threshold_graph(), card(tiling={"patch_size": [16, 7, 12], "overlap": 0.25, "blend": "constant"}),
        "patched")))
    np.testing.assert_array_equal(constant.labels, whole.labels)
    padded = model_region(case, load_segmentation_model(bundle(
        tmp_path, threshold_graph(), card(tiling={"divisible_by": 16}), "padded")))
    np.testing.assert_array_equal(padded.labels, whole.labels)


def test_a_tampered_model_is_refused_before_it_is_parsed(tmp_path):
    folder = bundle(tmp_path, threshold_graph(), card())
    data = bytearray((folder / MODEL_FILE).read_bytes())
    data[-5] ^= 0x01
    (folder / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match the sha256") as refused:
        load_segmentation_model(folder)
    assert str(folder / MODEL_FILE) in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("change,where", [
    (lambda c: c["inputs"].append({"sequence": "dwi", "normalization": "zscore-brain"}), "inputs/2/sequence"),
    (lambda c: c.pop("inputs"), "'inputs' is a required property"),
    (lambda c: c["inputs"].clear(), "inputs"),
    (lambda c: c["inputs"][0].update(normalization="percentile"), "inputs/0/normalization"),
    (lambda c: c["inputs"].append({"sequence": "flair", "normalization": "none"}), "inputs name flair twice"),
    (lambda c: c["output"]["label_map"].update({"3": 4}), "output/label_map/3"),
    (lambda c: c["output"]["label_map"].pop("2"), "every channel"),
    (lambda c: c["geometry"].pop("orientation"), "geometry"),
])
def test_a_bad_card_is_refused_with_one_line(tmp_path, change, where):
    folder = bundle(tmp_path, threshold_graph(), card())
    written = json.loads((folder / CARD_FILE).read_text())
    change(written)
    (folder / CARD_FILE).write_text(json.dumps(written))
    with pytest.raises(ModelError) as refused:
        load_segmentation_model(folder)
    message = str(refused.value)
    assert where in message and str(folder / CARD_FILE) in message and "\n" not in message


def test_channels_of_the_graph_must_match_the_card(tmp_path):
    with pytest.raises(ModelError, match="takes 3 input channels, its card lists 2"):
        bundle(tmp_path, threshold_graph(channels=3), card())
    assert not (tmp_path / "bundle").exists()  # nothing left behind by a refused bundle


def test_an_input_the_model_needs_but_not_given_is_refused_naming_it(tmp_path):
    volumes = lesion_volumes()
    del volumes["flair"]
    model = load_segmentation_model(bundle(tmp_path, threshold_graph(), card()))
    with pytest.raises(ModelError, match="needs flair, t1c but flair was not given") as refused:
        model_region(prepare_case(volumes), model)
    assert refused.value.input_name == "flair" and "--volume flair=PATH" in str(refused.value)


def test_a_custom_operator_domain_is_refused(tmp_path):
    data = threshold_graph(domain="com.example.custom")
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / MODEL_FILE).write_bytes(data)
    (folder / CARD_FILE).write_text(json.dumps({**card(), "model_file": {"path": MODEL_FILE, "sha256": sha256_bytes(
        data), "format": "onnx"}}))
    with pytest.raises(ModelError, match=r"outside the standard ONNX domain \(com.example.custom:Identity\)"):
        load_segmentation_model(folder)


def external_weights_bundle(tmp_path: Path, location: str, listed: bool) -> Path:
    """The threshold model with its second weights in a file ``location`` (relative to the bundle folder)."""
    proto = onnx.load_model_from_string(threshold_graph())
    weights = next(t for t in proto.graph.initializer if t.name == "w2")
    folder = tmp_path / "external"
    folder.mkdir(parents=True)
    target = folder / location
    target.write_bytes(numpy_helper.to_array(weights).tobytes())
    weights.ClearField("raw_data")
    weights.ClearField("float_data")
    weights.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(target.stat().st_size))):
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    model_file = {"path": MODEL_FILE, "sha256": sha256_bytes(data), "format": "onnx"}
    if listed:
        model_file["external_data"] = [{"path": location, "sha256": sha256_bytes(target.read_bytes())}]
    (folder / MODEL_FILE).write_bytes(data)
    (folder / CARD_FILE).write_text(json.dumps({**card(), "model_file": model_file}))
    return folder


def test_tensor_data_outside_the_bundle_or_unverified_is_refused(tmp_path):
    with pytest.raises(ModelError, match=r"reads tensor data from '\.\./weights\.bin', which is not a verified"):
        load_segmentation_model(external_weights_bundle(tmp_path / "a", "../weights.bin", listed=False))
    with pytest.raises(ModelError, match=r"reads tensor data from 'weights\.bin', which is not a verified"):
        load_segmentation_model(external_weights_bundle(tmp_path / "b", "weights.bin", listed=False))


def test_verified_external_data_in_the_bundle_is_used(tmp_path):
    folder = external_weights_bundle(tmp_path, "weights.bin", listed=True)
    case = prepare_case(lesion_volumes())
    np.testing.assert_array_equal(model_region(case, load_segmentation_model(folder)).labels, expected_labels(case))
    weights = folder / "weights.bin"
    weights.write_bytes(bytes(len(weights.read_bytes())))  # every weight 0
    with pytest.raises(ModelError, match="does not match the sha256") as refused:
        load_segmentation_model(folder)
    assert str(weights) in str(refused.value)


def test_an_empty_output_is_refused(tmp_path):
    case = prepare_case(lesion_volumes())
    model = load_segmentation_model(bundle(tmp_path, threshold_graph(thresholds=(50.0, 50.0)), card()))
    region = model_region(case, model)
    assert not region.labels.any()
    with pytest.raises(KiMapError, match="tumour region of model:test-threshold is not plausible .*no viable tumour"):
        require_plausible(region)


def test_intensities_as_given_need_the_volumes_as_read(tmp_path):
    volumes = lesion_volumes()
    case = prepare_case(volumes)
    model = load_segmentation_model(bundle(tmp_path, threshold_graph(thresholds=(175.0, 300.0)),
                                           card(inputs=(("flair", "none"), ("t1c", "none")))))
    with pytest.raises(KiMapError, match="reads flair, t1c as given"):
        model_region(case, model)
    labels = model_region(case, model, volumes).labels
    flair, t1c = (sitk.GetArrayFromImage(volumes[name]) for name in ("flair", "t1c"))
    np.testing.assert_array_equal(labels, np.where(t1c > 300, 3, np.where(flair > 175, 2, 0)))


def test_segment_and_map_commands_use_the_model(tmp_path, tiny_model_dir):
    volumes = lesion_volumes((0.9, 1.1, 1.6), rotation(20, 10))
    volumes["adc"] = sitk.Mask(1000.0 - 2.0 * volumes["t2"], volumes["t2"] > 0)  # the tiny ki67 model needs it
    args = []
    for name, image in volumes.items():
        sitk.WriteImage(image, str(tmp_path / f"{name}.nrrd"))
        args += ["--volume", f"{name}={tmp_path / name}.nrrd"]
    folder = bundle(tmp_path, threshold_graph(), card())
    assert main(["segment", *args, "--segmentation-model", str(folder), "--out", str(tmp_path / "seg")]) == 0
    labels = sitk.ReadImage(str(tmp_path / "seg" / "tumour_labels.nrrd"))
    assert same_grid(labels, volumes["t1c"], tolerance=1e-6)
    case = prepare_case(volumes)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels),
                                  model_region(case, load_segmentation_model(folder)).labels)
    qc = json.loads((tmp_path / "seg" / "region_qc.json").read_text())
    assert qc["source"] == "model:test-threshold" and qc["method"]["sha256"] == load_segmentation_model(folder).sha256
    assert (tmp_path / "seg" / "region_qc.png").is_file()
    assert main(["map", *args, "--segmentation-model", str(folder), "--model", str(tiny_model_dir),
                 "--out", str(tmp_path / "map")]) == 0
    summary = json.loads((tmp_path / "map" / "summary.json").read_text())
    assert summary["tumour_region"]["source"] == "model:test-threshold"
    assert summary["sequence_use"]["tumour_region"] == ["flair", "t1c"]
    mapped = np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "map" / "ki67_map.nrrd"))))
    viable = np.isin(sitk.GetArrayFromImage(labels), (2, 3))
    assert mapped.sum() > 0.9 * viable.sum() and not (mapped & ~viable).any()
    code = main(["map", *args, "--segmentation-model", str(folder), "--region", str(tmp_path / "t1c.nrrd"),
                 "--model", str(tiny_model_dir), "--out", str(tmp_path / "both")])
    assert code == 2 and not (tmp_path / "both").exists()
    empty = bundle(tmp_path, threshold_graph(thresholds=(50.0, 50.0)), card(), "empty")
    assert main(["segment", *args, "--segmentation-model", str(empty), "--out", str(tmp_path / "review")]) == 3
    assert (tmp_path / "review" / "tumour_labels.nrrd").is_file()  # written for review, flagged by the exit status
    assert main(["map", *args, "--segmentation-model", str(empty), "--model", str(tiny_model_dir),
                 "--out", str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused").exists()


def test_console_api_proposes_the_models_region_as_segments(tmp_path):
    pytest.importorskip("slicer")
    from KiMapLib.slicer.logic import KiMapLogic
    from KiMapLib.slicer.nodes import update_node_from_image
    from KiMapLib.slicer.scene_io import setup_headless_scene
    from KiMapLib.slicer.segments import tumour_labels

    volumes = lesion_volumes((0.9, 1.1, 1.6), rotation(20, 10))
    scene = setup_headless_scene()
    nodes = {}
    for name, image in volumes.items():
        nodes[name] = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        update_node_from_image(nodes[name], image)
    folder = bundle(tmp_path, threshold_graph(), card())
    segmentation = KiMapLogic(scene).proposeTumorRegion(nodes, segmentationModel=str(folder))
    labels = sitk.GetArrayFromImage(tumour_labels(segmentation, nodes["t1c"]))
    expected = model_region(prepare_case(volumes), load_segmentation_model(folder)).labels
    np.testing.assert_array_equal(labels, expected)
    summary = json.loads(segmentation.GetAttribute("KiMap.Summary") or "{}")
    assert summary.get("source") == "model:test-threshold"
    tampered = tmp_path / "bundle" / MODEL_FILE
    tampered.write_bytes(tampered.read_bytes() + b"\0")
    count = scene.GetNumberOfNodes()
    with pytest.raises(ModelError, match="sha256"):
        KiMapLogic(scene).proposeTumorRegion(nodes, segmentationModel=folder)
    assert scene.GetNumberOfNodes() == count
