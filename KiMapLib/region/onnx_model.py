"""A user's tumour segmentation model (ONNX): the bundle, its verification, and sliding-window inference on the CPU.

A bundle is a folder with ``model.onnx`` and ``segmentation_card.json`` (``Resources/segmentation_card.schema.json``).
It is untrusted, like a ki67 model: the card must match its schema and ``model.onnx`` (and any external data file) the
sha256 in the card before anything parses it; the graph may use standard ONNX operators only (no custom-op domain)
and no tensor data outside the bundle. onnxruntime (imported only here, when such a model is used) runs it on the CPU.
Nothing is downloaded.

The tensors here are in the model's own axes: input ``[C, *spatial]``, labels ``[*spatial]`` in BraTS convention
(1 necrotic core, 2 oedema / non-enhancing tumour, 3 enhancing tumour).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import numpy as np

from KiMapLib.atomic import atomic_directory
from KiMapLib.errors import ModelError
from KiMapLib.outputs import sha256_file
from KiMapLib.progress import ProgressCallback, report
from KiMapLib.resources import resources_dir

MODEL_FILE = "model.onnx"
CARD_FILE = "segmentation_card.json"
SCHEMA_FILE = "segmentation_card.schema.json"
#: Operator domains a model may use: standard ONNX only (a custom-op domain would need native code loaded).
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
#: ONNX element types of the image input that KiMap can feed (TensorProto.FLOAT, FLOAT16, DOUBLE).
INPUT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}
CLASS_KINDS = ("logits", "probabilities", "labels")
REGION_ORDER = ("whole_tumour", "tumour_core", "enhancing_tumour")
INSTALL_HINT = "pip install onnx onnxruntime (the versions in KiMap's requirements.txt)"
DEFAULT_OVERLAP = 0.5


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.cache
def _card_validator():
    from jsonschema.validators import validator_for

    schema = json.loads((resources_dir() / SCHEMA_FILE).read_text())
    return validator_for(schema)(schema)


def validate_card(card: object, where: str) -> None:
    """The card against its JSON schema and the rules a schema cannot say; one line naming the field, else."""
    from jsonschema.exceptions import best_match

    error = best_match(_card_validator().iter_errors(card))
    if error is not None:
        location = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ModelError(f"does not match the segmentation card schema at {location}: {error.message}",
                         input_name=where, hint=f"see Resources/{SCHEMA_FILE} and the README")
    sequences = [item["sequence"] for item in card["inputs"]]
    repeated = sorted({s for s in sequences if sequences.count(s) > 1})
    if repeated:
        raise ModelError(f"inputs name {repeated[0]} twice", input_name=where, hint="list each sequence once")
    output = card["output"]
    if output["kind"] in ("logits", "probabilities"):
        channels = sorted(int(key) for key in output["label_map"])
        if channels != list(range(len(channels))):
            raise ModelError(f"output/label_map must map every channel 0..{len(channels) - 1} (got {channels})",
                             input_name=where, hint='e.g. {"0": 0, "1": 1, "2": 2, "3": 3}')


@dataclass
class SegmentationModel:
    """A verified segmentation bundle with its onnxruntime session (CPU)."""

    card: dict
    path: Path
    session: object = field(repr=False)
    input_name: str
    output_name: str
    input_dtype: type
    fixed_spatial: tuple[int, int, int] | None  # the graph's fixed spatial input size, if it has one

    @property
    def model_id(self) -> str:
        return self.card["model_id"]

    @property
    def sha256(self) -> str:
        return self.card["model_file"]["sha256"]

    @property
    def sequences(self) -> tuple[str, ...]:
        """The sequences the model reads, in the order of its input channels."""
        return tuple(item["sequence"] for item in self.card["inputs"])

    @property
    def patch_size(self) -> tuple[int, int, int] | None:
        """The sliding-window patch (tensor axis order), or None for one whole-volume pass."""
        patch = self.card.get("tiling", {}).get("patch_size")
        return tuple(patch) if patch else self.fixed_spatial

    def describe(self) -> dict:
        """What ``summary.json`` records of the model."""
        card = self.card
        return {"name": "segmentation model (ONNX, onnxruntime CPU)", "model_id": self.model_id,
                "title": card.get("title", ""), "sha256": self.sha256, "inputs": card["inputs"],
                "geometry": card["geometry"], "tiling": {**card.get("tiling", {}), "patch_size": self.patch_size},
                "output": card["output"], "intended_use": card["intended_use"],
                "research_use_notice": card["research_use_notice"], "onnxruntime": _ort_version()}

    # -- inference ------------------------------------------------------------------------------------------------

    def segment(self, tensor: np.ndarray, progress: ProgressCallback | None = None) -> tuple[np.ndarray, int]:
        """BraTS labels (uint8, the tensor's spatial shape) of a normalized input ``[C, *spatial]``, and the number
        of windows run. Windows overlap by ``tiling/overlap``; their scores (probabilities) are blended."""
        tiling = self.card.get("tiling", {})
        spatial = tensor.shape[1:]
        patch = self.patch_size
        if patch is None:
            multiple = int(tiling.get("divisible_by", 1))
            patch = tuple(math.ceil(n / multiple) * multiple for n in spatial)
            step = patch
        else:
            overlap = float(tiling.get("overlap", DEFAULT_OVERLAP))
            step = tuple(max(1, int(p * (1.0 - overlap))) for p in patch)
        padded_shape = tuple(max(n, p) for n, p in zip(spatial, patch, strict=True))
        padded = np.zeros((tensor.shape[0], *padded_shape), self.input_dtype)
        padded[(slice(None), *(slice(0, n) for n in spatial))] = tensor
        windows = list(_windows(padded_shape, patch, step))
        weight = _blend_weights(patch, tiling.get("blend", "gaussian")) if len(windows) > 1 else np.ones(patch,
                                                                                                        np.float32)
        scores = total = None
        for number, corner in enumerate(windows):
            report(progress, number / len(windows), f"segmentation model: window {number + 1} of {len(windows)}")
            box = tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))
            window = self._scores(self._run(padded[(slice(None), *box)]))
            if scores is None:
                scores = np.zeros((window.shape[0], *padded_shape), np.float32)
                total = np.zeros(padded_shape, np.float32)
            scores[(slice(None), *box)] += window * weight
            total[box] += weight
        scores /= total
        report(progress, 1.0, "segmentation model: labels")
        return self._labels(scores[(slice(None), *(slice(0, n) for n in spatial))]), len(windows)

    def _run(self, window: np.ndarray) -> np.ndarray:
        """The graph's raw output for one window ``[C, *patch]``, checked against the card."""
        try:
            (out,) = self.session.run([self.output_name], {self.input_name: window[None]})
        except Exception as error:  # onnxruntime raises its own exception types, some with long messages
            message = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            raise ModelError(f"onnxruntime could not run {MODEL_FILE} on a {'x'.join(map(str, window.shape[1:]))} "
                             f"window ({message})", input_name=str(self.path / MODEL_FILE),
                             hint="check tiling/patch_size and divisible_by in the card") from None
        out = np.asarray(out)
        spatial = window.shape[1:]
        kind = self.card["output"]["kind"]
        if kind == "labels" and out.ndim == 4:
            out = out[:, None]
        if out.ndim != 5 or out.shape[0] != 1 or out.shape[2:] != spatial:
            raise ModelError(f"output of shape {list(out.shape)} does not fit the input window {list(spatial)}",
                             input_name=str(self.path / MODEL_FILE),
                             hint="the output must be [1, channels, *window] (labels: [1, 1, *window])")
        expected = {"labels": 1, "region_logits": 3, "region_probabilities": 3}.get(
            kind, len(self.card["output"].get("label_map", {})))
        if out.shape[1] != expected:
            raise ModelError(f"the model gives {out.shape[1]} output channels, the card's output describes {expected}",
                             input_name=str(self.path / CARD_FILE), hint="fix output/label_map or output/kind")
        return out[0]

    def _scores(self, raw: np.ndarray) -> np.ndarray:
        """Blendable scores of one window: BraTS class probabilities [4, ...] or region probabilities [3, ...] in
        the order whole tumour, tumour core, enhancing tumour."""
        output = self.card["output"]
        kind = output["kind"]
        raw = raw.astype(np.float32)
        if kind in ("region_logits", "region_probabilities"):
            if kind == "region_logits":
                raw = 1.0 / (1.0 + np.exp(-raw))
            return raw[[output["regions"].index(name) for name in REGION_ORDER]]
        label_map = {int(k): int(v) for k, v in output["label_map"].items()}
        if kind == "labels":
            values = raw[0]
            found = np.unique(values)
            unknown = [v for v in found if v not in label_map]
            if unknown:
                raise ModelError(f"the model gave label {unknown[0]:g}, which output/label_map does not map",
                                 input_name=str(self.path / CARD_FILE), hint="add it to output/label_map")
            brats = np.zeros(values.shape, np.uint8)
            for value, label in label_map.items():
                brats[values == value] = label
            return (brats[None] == np.arange(4, dtype=np.uint8).reshape(4, 1, 1, 1)).astype(np.float32)
        if kind == "logits":
            raw = np.exp(raw - raw.max(axis=0, keepdims=True))
            raw /= raw.sum(axis=0, keepdims=True)
        scores = np.zeros((4, *raw.shape[1:]), np.float32)
        for channel, label in label_map.items():
            scores[label] += raw[channel]
        return scores

    def _labels(self, scores: np.ndarray) -> np.ndarray:
        if scores.shape[0] == 4:
            return np.argmax(scores, axis=0).astype(np.uint8)
        threshold = float(self.card["output"].get("threshold", 0.5))
        whole, core, enhancing = (scores[i] > threshold for i in range(3))
        labels = np.zeros(scores.shape[1:], np.uint8)
        labels[whole] = 2
        labels[core] = 1
        labels[enhancing] = 3
        return labels


def _windows(shape: tuple[int, ...], patch: tuple[int, ...], step: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    """Corners of windows covering ``shape`` (>= patch on every axis), evenly spread, the last flush with the end."""
    starts = []
    for n, p, s in zip(shape, patch, step, strict=True):
        count = math.ceil((n - p) / s) + 1
        starts.append(sorted({round(i * (n - p) / (count - 1)) for i in range(count)} if count > 1 else {0}))
    yield from product(*starts)


def _blend_weights(patch: tuple[int, ...], blend: str) -> np.ndarray:
    """Window weights: a Gaussian (sigma = patch / 8, as nnU-Net) that trusts window centres, or constant."""
    if blend == "constant":
        return np.ones(patch, np.float32)
    axes = [np.exp(-0.5 * ((np.arange(p) - (p - 1) / 2) / max(p / 8.0, 1e-3)) ** 2) for p in patch]
    weight = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return np.maximum(weight / weight.max(), 1e-3).astype(np.float32)


# -- loading and verification -------------------------------------------------------------------------------------


def load_segmentation_model(folder: str | Path) -> SegmentationModel:
    """Load and verify a bundle folder; raises :class:`ModelError` naming the file and the problem."""
    folder = Path(folder)
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise ModelError(f"no {CARD_FILE} in the segmentation model folder", input_name=str(folder),
                         hint=f"a bundle is a folder with {MODEL_FILE} and {CARD_FILE} (see the README)")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError(f"is not valid JSON ({getattr(error, 'msg', type(error).__name__)})",
                         input_name=str(card_path)) from None
    validate_card(card, str(card_path))
    model_path = folder / MODEL_FILE
    if not model_path.is_file():
        raise ModelError("is missing", input_name=str(model_path), hint=f"put the ONNX model beside {CARD_FILE}")
    data = model_path.read_bytes()  # hashed, parsed and run from these very bytes
    if sha256_bytes(data) != card["model_file"]["sha256"]:
        raise ModelError(f"does not match the sha256 in {CARD_FILE} (modified or corrupted)",
                         input_name=str(model_path), hint="never load an unverified model: re-export it and put "
                         "its sha256 (sha256sum model.onnx) in the card")
    external = _verified_external_data(folder, card)
    try:
        import onnx
    except ImportError:
        raise ModelError("needs the onnx package", input_name=str(model_path), hint=INSTALL_HINT) from None
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as error:  # protobuf's DecodeError and friends
        raise ModelError(f"is not an ONNX model ({type(error).__name__})", input_name=str(model_path)) from None
    _check_graph(proto, model_path, external)
    input_name, output_name, dtype, fixed = _check_io(proto, card, model_path)
    session = _session(data if not external else model_path, model_path)
    return SegmentationModel(card=card, path=folder, session=session, input_name=input_name,
                             output_name=output_name, input_dtype=dtype, fixed_spatial=fixed)


def _verified_external_data(folder: Path, card: dict) -> set[str]:
    """Names of the card's external data files, each inside the bundle and matching its sha256."""
    names = set()
    root = folder.resolve()
    for item in card["model_file"].get("external_data", []):
        path = folder / item["path"]
        if not path.is_file() or path.resolve().parent != root:
            raise ModelError("is missing or lies outside the bundle folder", input_name=str(path),
                             hint="external data files must be plain files beside model.onnx")
        if sha256_file(path) != item["sha256"]:
            raise ModelError(f"does not match the sha256 in {CARD_FILE} (modified or corrupted)", input_name=str(path))
        names.add(item["path"])
    return names


def _check_graph(proto, model_path: Path, external: set[str]) -> None:
    """Standard operators only, and tensor data only from the verified files of the bundle."""
    from onnx import TensorProto

    custom: set[str] = set()
    for node in _nodes(proto.graph):
        if node.domain not in STANDARD_DOMAINS:
            custom.add(f"{node.domain}:{node.op_type}")
    for function in proto.functions:  # local functions: their bodies, and the calls to them, are checked alike
        for node in function.node:
            if node.domain not in STANDARD_DOMAINS:
                custom.add(f"{node.domain}:{node.op_type}")
    if custom:
        raise ModelError(f"uses operators outside the standard ONNX domain ({', '.join(sorted(custom))})",
                         input_name=str(model_path), hint="custom operators are never loaded: export the model with "
                         "standard ONNX operators only")
    for tensor in _tensors(proto):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        if location not in external:
            raise ModelError(f"reads tensor data from '{location}', which is not a verified file of the bundle",
                             input_name=str(model_path), hint="list each external data file beside model.onnx "
                             "with its sha256 in model_file/external_data, or save the model as one file")


def _nodes(graph) -> Iterator:
    from onnx import AttributeProto

    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == AttributeProto.GRAPH:
                yield from _nodes(attribute.g)
            elif attribute.type == AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _nodes(subgraph)


def _tensors(proto) -> Iterator:
    """Every tensor of the model: initializers, sparse initializers and constant attributes, subgraphs included."""
    from onnx import AttributeProto

    def of_graph(graph) -> Iterator:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            yield from of_attributes(node.attribute)

    def of_attributes(attributes) -> Iterator:
        for attribute in attributes:
            if attribute.type == AttributeProto.TENSOR:
                yield attribute.t
            elif attribute.type == AttributeProto.TENSORS:
                yield from attribute.tensors
            elif attribute.type == AttributeProto.SPARSE_TENSOR:
                yield attribute.sparse_tensor.values
                yield attribute.sparse_tensor.indices
            elif attribute.type == AttributeProto.GRAPH:
                yield from of_graph(attribute.g)
            elif attribute.type == AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from of_graph(subgraph)

    yield from of_graph(proto.graph)
    for function in proto.functions:
        for node in function.node:
            yield from of_attributes(node.attribute)


def _check_io(proto, card: dict, model_path: Path) -> tuple[str, str, type, tuple[int, int, int] | None]:
    """The image input and the output named by the card (or the only ones), checked against the card."""
    where = str(model_path)
    initializers = {tensor.name for tensor in proto.graph.initializer}
    inputs = [value for value in proto.graph.input if value.name not in initializers]
    outputs = list(proto.graph.output)
    names = card.get("onnx", {})
    image = _pick(inputs, names.get("input"), "input", where)
    output = _pick(outputs, names.get("output"), "output", where, first=True)
    tensor_type = image.type.tensor_type
    if tensor_type.elem_type not in INPUT_TYPES:
        raise ModelError(f"input '{image.name}' is not a float tensor", input_name=where,
                         hint="export the model with a float32 image input")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    if len(dims) != 5:
        raise ModelError(f"input '{image.name}' has {len(dims)} axes, not 5 [batch, channels, 3 spatial]",
                         input_name=where, hint="export a 3D model taking [1, C, D, H, W]")
    if dims[0] not in (None, 1):
        raise ModelError(f"input '{image.name}' has a fixed batch size {dims[0]}", input_name=where,
                         hint="export with batch size 1 or a dynamic batch axis")
    if dims[1] is not None and dims[1] != len(card["inputs"]):
        raise ModelError(f"the model takes {dims[1]} input channels, its card lists {len(card['inputs'])} inputs",
                         input_name=where, hint="list one sequence per input channel, in order")
    fixed = tuple(dims[2:]) if all(d for d in dims[2:]) else None
    patch = card.get("tiling", {}).get("patch_size")
    if fixed and patch and tuple(patch) != fixed:
        raise ModelError(f"tiling/patch_size {patch} differs from the model's fixed input size {list(fixed)}",
                         input_name=str(model_path.parent / CARD_FILE), hint="use the model's input size")
    return image.name, output.name, INPUT_TYPES[tensor_type.elem_type], fixed


def _pick(values: list, name: str | None, what: str, where: str, first: bool = False):
    if name is not None:
        chosen = next((v for v in values if v.name == name), None)
        if chosen is None:
            raise ModelError(f"has no {what} named '{name}' (it has {', '.join(v.name for v in values) or 'none'})",
                             input_name=where, hint=f"fix onnx/{what} in the card")
        return chosen
    if not values or (len(values) > 1 and not first):
        raise ModelError(f"has {len(values)} graph {what}s; name the image {what} in the card (onnx/{what})",
                         input_name=where)
    return values[0]


def _session(model: bytes | Path, model_path: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelError("needs the onnxruntime package", input_name=str(model_path), hint=INSTALL_HINT) from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: onnxruntime's warnings are not the user's business
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:
        message = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ModelError(f"onnxruntime cannot load it ({message})", input_name=str(model_path)) from None


def _ort_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def save_segmentation_bundle(onnx_model: str | Path | bytes, card: dict, out_dir: str | Path) -> Path:
    """Write ``model.onnx`` and its card (with the model's sha256) into a new, empty or earlier bundle folder,
    verified as :func:`load_segmentation_model` loads it; on any failure nothing is left behind."""
    data = onnx_model if isinstance(onnx_model, bytes) else Path(onnx_model).read_bytes()
    card = {**card, "model_file": {"path": MODEL_FILE, "sha256": sha256_bytes(data), "format": "onnx"}}
    with atomic_directory(out_dir, CARD_FILE, "segmentation model bundle") as staging:
        validate_card(card, str(Path(out_dir) / CARD_FILE))
        (staging / MODEL_FILE).write_bytes(data)
        (staging / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        load_segmentation_model(staging)
    return Path(out_dir)
