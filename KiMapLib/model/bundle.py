"""Model bundles: a skops file (scikit-learn pipeline) plus a JSON model card that pins its sha256.

Loading never unpickles: skops loads only an allow-list of scikit-learn/numpy types, and the file must match
the sha256 in its card, the card must match its JSON schema, and the feature list inside the file must
match the card's.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from KiMapLib.atomic import atomic_directory
from KiMapLib.errors import ModelError
from KiMapLib.model.design import design_matrix
from KiMapLib.resources import models_dir, resources_dir
from KiMapLib.settings import ExtractionSettings

MODEL_FILE = "model.skops"
CARD_FILE = "model_card.json"
RESEARCH_NOTICE = ("Research use only. Not a medical device. Trained on synthetic phantom data unless the card "
                   "says otherwise; no clinical validity is claimed.")

#: The only types a KiMap model file may contain (anything else is refused before loading).
TRUSTED_TYPES = frozenset({
    "sklearn.pipeline.Pipeline",
    "sklearn.impute._base.SimpleImputer",
    "sklearn.feature_selection._variance_threshold.VarianceThreshold",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.feature_selection._univariate_selection.SelectKBest",
    "sklearn.feature_selection._univariate_selection.f_regression",
    "sklearn.ensemble._forest.RandomForestRegressor",
    "sklearn.ensemble._forest.ExtraTreesRegressor",
    "sklearn.tree._classes.DecisionTreeRegressor",
    "sklearn.tree._classes.ExtraTreeRegressor",
    "sklearn.tree._tree.Tree",
    "sklearn.linear_model._ridge.Ridge",
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.float64",
    "numpy.int64",
    "builtins.dict",
    "builtins.list",
    "builtins.tuple",
    "builtins.str",
    "builtins.int",
    "builtins.float",
    "builtins.bool",
    "builtins.NoneType",
    "builtins.slice",
})


def types_in_file(path: str | Path) -> set[str]:
    """Every ``module.class`` named in a skops file's schema (read as JSON; nothing is instantiated)."""
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "__module__" in node and "__class__" in node:
                found.add(f"{node['__module__']}.{node['__class__']}")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    with zipfile.ZipFile(path) as archive:
        walk(json.loads(archive.read("schema.json")))
    return found


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def card_schema() -> dict:
    return json.loads((resources_dir() / "model_card.schema.json").read_text())


@functools.cache
def _card_validator():
    """A validator of KiMap's own card schema (checked by the tests, so not re-checked on every load)."""
    from jsonschema.validators import validator_for

    schema = card_schema()
    return validator_for(schema)(schema)


def validate_card(card: dict, where: str) -> None:
    from jsonschema.exceptions import best_match

    error = best_match(_card_validator().iter_errors(card))
    if error is not None:
        location = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ModelError(f"model card does not match the KiMap schema at {location}: {error.message}",
                         input_name=where, hint="use a bundle written by `kimap train`")


@dataclass
class KiMapModel:
    """A loaded, verified model: predicts ki67 (%) and P(ki67 >= threshold) from cohort-table rows."""

    card: dict
    pipeline: object  # the fitted pipeline (a Future while ``load_model(..., background=True)`` reads it)
    path: Path
    settings: ExtractionSettings = field(init=False)

    def __post_init__(self) -> None:
        self.settings = ExtractionSettings.from_dict(self.card["extraction"])

    @property
    def model_id(self) -> str:
        return self.card["model_id"]

    @property
    def required_sequences(self) -> tuple[str, ...]:
        return tuple(self.card["required_sequences"])

    @property
    def input_features(self) -> list[str]:
        return list(self.card["input_features"])

    @property
    def used_features(self) -> list[str]:
        """Radiomic features the fitted model depends on (the map computes only these)."""
        return list(self.card["used_features"])

    @property
    def threshold_percent(self) -> float:
        return float(self.card["target"]["threshold_percent"])

    def predict_matrix(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ki67 (%) clipped to [0, 100] and calibrated P(ki67 >= threshold) for a design matrix."""
        if isinstance(self.pipeline, Future):
            self.pipeline = self.pipeline.result()  # raises the loader's ModelError, if any
        ki67 = np.clip(self.pipeline.predict(matrix), 0.0, 100.0)
        return ki67, self.probability(ki67)

    def probability(self, ki67: np.ndarray) -> np.ndarray:
        platt = self.card["probability"]
        return 1.0 / (1.0 + np.exp(-(platt["slope"] * np.asarray(ki67) + platt["intercept"])))

    def predict_rows(self, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        return self.predict_matrix(design_matrix(rows, self.input_features))


def save_bundle(pipeline: object, card: dict, out_dir: str | Path, extra_files: dict[str, bytes] | None = None
                ) -> Path:
    """Write ``model.skops`` and ``model_card.json`` (with the file's sha256) atomically into ``out_dir``."""
    from KiMapLib.model.skops_import import import_skops_io

    sio = import_skops_io()
    with atomic_directory(out_dir, "model bundle") as staging:
        sio.dump({"pipeline": pipeline, "input_features": list(card["input_features"])}, staging / MODEL_FILE)
        card = dict(card, model_file={"path": MODEL_FILE, "sha256": sha256_of(staging / MODEL_FILE),
                                      "format": "skops"})
        validate_card(card, str(out_dir))
        (staging / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        for name, content in (extra_files or {}).items():
            (staging / name).write_bytes(content)
    return Path(out_dir)


def registry() -> list[dict]:
    """Entries of ``Resources/Models.json`` (packaged models)."""
    path = resources_dir() / "Models.json"
    return json.loads(path.read_text())["models"] if path.exists() else []


def register_packaged(folder: str | Path, default: bool = True) -> dict:
    """Add (or update) a bundle inside ``Resources/Models`` in the registry ``Resources/Models.json``."""
    folder = Path(folder).resolve()
    try:
        relative = folder.relative_to(models_dir().resolve())
    except ValueError:
        raise ModelError("only bundles inside Resources/Models can be registered", input_name=str(folder)) from None
    card = load_model(folder).card
    entry = {"id": card["model_id"], "title": card.get("title", ""), "path": relative.as_posix(),
             "sha256": card["model_file"]["sha256"], "default": default,
             "required_sequences": card["required_sequences"], "intended_use": card["intended_use"]}
    entries = [e for e in registry() if e["id"] != entry["id"]]
    if default:
        for other in entries:
            other["default"] = False
    document = {"description": "KiMap packaged models (verified against each model card's sha256 on load).",
                "models": [*entries, entry]}
    (resources_dir() / "Models.json").write_text(json.dumps(document, indent=2) + "\n")
    return entry


def packaged_model_dir(model_id: str | None = None) -> Path:
    """Folder of a packaged model (the registry's default when ``model_id`` is None)."""
    entries = registry()
    for entry in entries:
        if (model_id is None and entry.get("default")) or entry["id"] == model_id:
            return models_dir() / entry["path"]
    raise ModelError(f"no packaged model {model_id or '(default)'} in Resources/Models.json", input_name="model",
                     hint="give --model MODEL_DIR or reinstall KiMap")


def load_model(path: str | Path | None = None, background: bool = False,
               start_after: threading.Event | None = None) -> KiMapModel:
    """Load and verify a bundle folder (or the packaged default). Raises ModelError naming the problem.

    ``background``: the card, the file's sha256 and its type allow-list are checked now, and the verified file is
    read by skops in a background thread (importing skops takes a second or more); the first prediction waits for it.
    That thread starts reading once ``start_after`` is set, if given (work that is needed sooner goes first)."""
    entry = None
    if path is None:
        entry = next((e for e in registry() if e.get("default")), None)
    folder = Path(path) if path is not None else packaged_model_dir()
    where = str(folder)
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise ModelError(f"no {CARD_FILE} in the model folder", input_name=where,
                         hint="give a folder written by `kimap train`")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as error:
        raise ModelError(f"{CARD_FILE} is not valid JSON ({error.msg})", input_name=where) from None
    validate_card(card, where)
    model_path = folder / card["model_file"]["path"]
    if not model_path.is_file():
        raise ModelError(f"model file {model_path.name} is missing", input_name=where)
    if entry is not None and entry.get("sha256") != card["model_file"]["sha256"]:
        raise ModelError("the packaged model card does not match Resources/Models.json (sha256)", input_name=where,
                         hint="reinstall KiMap or run `make model`")
    if sha256_of(model_path) != card["model_file"]["sha256"]:
        raise ModelError(f"{model_path.name} does not match the sha256 in its model card (modified or corrupted)",
                         input_name=where, hint="reinstall the model or retrain it; never load an unverified file")
    try:
        refused = sorted(types_in_file(model_path) - TRUSTED_TYPES)
    except Exception as error:  # not a zip / no schema
        raise ModelError(f"cannot read {model_path.name} ({type(error).__name__})", input_name=where) from None
    if refused:
        raise ModelError(f"model file contains types outside KiMap's allow-list: {', '.join(refused)}",
                         input_name=where, hint="only bundles written by `kimap train` can be loaded")
    if background:
        loader = ThreadPoolExecutor(1, thread_name_prefix="kimap-model")
        pipeline = loader.submit(_read_pipeline, model_path, card, where, start_after)
        loader.shutdown(wait=False)
    else:
        pipeline = _read_pipeline(model_path, card, where)
    return KiMapModel(card=card, pipeline=pipeline, path=folder)


def _read_pipeline(model_path: Path, card: dict, where: str, start_after: threading.Event | None = None) -> object:
    """The fitted pipeline of a verified model file (skops, allow-listed types only), checked against its card."""
    if start_after is not None:
        start_after.wait()
    from KiMapLib.model.skops_import import import_skops_io

    sio = import_skops_io()

    try:
        content = sio.load(model_path, trusted=sorted(sio.get_untrusted_types(file=model_path)))
    except Exception as error:  # skops raises many types for a corrupt file
        raise ModelError(f"cannot read {model_path.name} ({type(error).__name__})", input_name=where) from None
    if list(content.get("input_features", [])) != list(card["input_features"]):
        raise ModelError("the feature list in the model file differs from its model card", input_name=where,
                         hint="the card and the model were not saved together; retrain")
    pipeline = content["pipeline"]
    if getattr(pipeline, "n_features_in_", len(card["input_features"])) != len(card["input_features"]):
        raise ModelError("the model expects a different number of features than its card lists", input_name=where)
    return pipeline
