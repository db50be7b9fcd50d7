"""Model bundles: a skops file (scikit-learn pipeline) plus a JSON model card that pins its sha256.

Loading never unpickles. The card must match its JSON schema (every field KiMap reads typed and bounded), the file
the sha256 in its card; every node of the file must be on KiMap's own allow-list before skops builds anything
(:mod:`~KiMapLib.model.skops_audit`), and the built pipeline must have KiMap's structure and the card's feature list
before its first prediction (:mod:`~KiMapLib.model.pipeline_check`). README "Threat model" lists what may be in it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import threading
import zipfile
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from KiMapLib.atomic import atomic_directory
from KiMapLib.errors import KiMapError, ModelError
from KiMapLib.model.design import design_matrix
from KiMapLib.model.pipeline_check import check_pipeline, check_spread
from KiMapLib.model.skops_audit import audit_model_file
from KiMapLib.outputs import sha256_file
from KiMapLib.resources import models_dir, resources_dir
from KiMapLib.settings import SEQUENCES, ExtractionSettings

MODEL_FILE = "model.skops"
CARD_FILE = "model_card.json"
RESEARCH_NOTICE = ("Research use only. Not a medical device. Trained on synthetic phantom data unless the card "
                   "says otherwise; no clinical validity is claimed.")

#: Largest card and model file KiMap reads (a 300-tree forest is about 10 MB).
MAX_CARD_BYTES = 16 << 20
MAX_MODEL_BYTES = 1 << 30
#: Card lists of feature names (refusals name the offending entry in words, not the schema's pattern).
FEATURE_LISTS = ("input_features", "radiomic_features", "used_features", "selected_columns")
ESTIMATOR_CLASSES = {"ridge": "Ridge", "enet": "ElasticNet", "rf": "RandomForestRegressor",
                     "gbr": "GradientBoostingRegressor"}


def card_schema() -> dict:
    return json.loads((resources_dir() / "model_card.schema.json").read_text())


@functools.cache
def _card_validator():
    """A validator of KiMap's own card schema (checked by the tests, so not re-checked on every load)."""
    from jsonschema.validators import validator_for

    schema = card_schema()
    return validator_for(schema)(schema)


def _schema_message(error) -> str:
    """One line for a schema violation: where in the card, and what is wrong (feature names in words)."""
    path = list(error.absolute_path)
    location = "/".join(str(p) for p in path) or "(top level)"
    message = error.message
    if path and path[0] in FEATURE_LISTS and len(path) == 2 and isinstance(error.instance, str):
        covariate = " or a covariate (age, sex_female, tumor_recurrent)" if path[0] in (
            "input_features", "selected_columns") else ""
        message = (f"{error.instance[:100]!r} is not a feature name <sequence>_original_<class>_<Feature> "
                   f"(sequence {', '.join(SEQUENCES)}; a pyradiomics class and one of its features){covariate}")
    message = " ".join(message.split())
    message = message if len(message) <= 300 else f"{message[:300]}..."
    return f"model card does not match the KiMap schema at {location}: {message}"


def _card_consistency(card: dict) -> str | None:
    """What the schema cannot say: numbers are finite (NaN passes JSON Schema bounds), settings fit together, and
    the feature lists agree with each other (None when all is well)."""
    if not math.isfinite(card["target"]["threshold_percent"]):
        value = card["target"]["threshold_percent"]
        return f"model card field target/threshold_percent is {value} (a finite number is needed)"
    if "uncertainty" not in card:
        for key in ("slope", "intercept"):  # Platt scaling: cards without prediction intervals
            value = card["probability"].get(key)
            if value is None:
                return f"model card field probability/{key} is missing (a card without uncertainty needs it)"
            if not math.isfinite(value):
                return f"model card field probability/{key} is {value} (a finite number is needed)"
    problem = _uncertainty_consistency(card)
    if problem:
        return problem
    try:
        ExtractionSettings.from_dict(card["extraction"]).check("extraction")
    except KiMapError as error:
        return f"model card does not fit KiMap's bounds at {error}"
    inputs = set(card["input_features"])
    known = set(card["radiomic_features"]) | set(card["covariates"]["numeric"])
    outside = [name for name in card["input_features"] if name not in known]
    if outside:
        return f"model card: input feature {outside[0]} is neither in radiomic_features nor a covariate"
    for name in card["used_features"]:
        sequence, _, rest = name.partition("_original_")
        if name not in inputs:
            return f"model card: used feature {name} is not among input_features"
        if sequence not in card["required_sequences"]:
            return f"model card: used feature {name} needs {sequence}, which is not in required_sequences"
        if rest.split("_", 1)[0] not in card["extraction"]["feature_classes"]:
            return f"model card: used feature {name} is of a class outside extraction/feature_classes"
    return None


def _uncertainty_consistency(card: dict) -> str | None:
    """The sections uncertainty and domain: finite numbers, shapes that fit their columns, columns of the pipeline."""
    uncertainty, domain = card.get("uncertainty"), card.get("domain")
    if domain is not None and uncertainty is None:
        return "model card: section domain without section uncertainty"
    if uncertainty is None:
        return None
    columns = uncertainty["columns"]
    selected = set(card.get("selected_columns") or card["input_features"])
    if any(name not in selected for name in columns):
        return "model card: uncertainty/columns names a column the pipeline does not select"
    if not np.isfinite(np.asarray(uncertainty["scores"], dtype=float)).all() or not math.isfinite(uncertainty["level"]):
        return "model card: uncertainty holds a number that is not finite"
    if domain is not None:
        if domain["columns"] != columns:
            return "model card: domain/columns differ from uncertainty/columns"
        centre = np.asarray(domain["centre"], dtype=float)
        try:
            precision = np.asarray(domain["precision"], dtype=float)
        except ValueError:
            return "model card: domain/precision is not a square matrix"
        if centre.shape != (len(columns),) or precision.shape != (len(columns), len(columns)):
            return f"model card: domain centre/precision do not fit its {len(columns)} columns"
        if not (np.isfinite(centre).all() and np.isfinite(precision).all() and math.isfinite(domain["threshold"])):
            return "model card: domain holds a number that is not finite"
    return None


def validate_card(card: dict, where: str) -> None:
    """The card matches KiMap's schema (types and bounds of every field KiMap reads) and its parts fit together."""
    from jsonschema.exceptions import best_match

    error = best_match(_card_validator().iter_errors(card))
    if error is not None:
        raise ModelError(_schema_message(error), input_name=where, hint="use a bundle written by `kimap train`")
    problem = _card_consistency(card)
    if problem:
        raise ModelError(problem, input_name=where, hint="use a bundle written by `kimap train`")


def read_card(folder: Path, where: str) -> dict:
    """The folder's model card, parsed and validated (one-line ModelError otherwise)."""
    card_path = folder / CARD_FILE
    if not folder.exists():
        ids = ", ".join(e["id"] for e in registry()) or "none"
        raise ModelError(f"no {CARD_FILE}: no such model folder, nor a packaged model id ({ids})",
                         input_name=where, hint="give a folder written by `kimap train` or a packaged model's id")
    if not card_path.is_file():
        raise ModelError(f"no {CARD_FILE} in the model folder", input_name=where,
                         hint="give a folder written by `kimap train`")
    if card_path.stat().st_size > MAX_CARD_BYTES:
        raise ModelError(f"{CARD_FILE} is larger than {MAX_CARD_BYTES >> 20} MB", input_name=where,
                         hint="give a folder written by `kimap train`")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelError(f"{CARD_FILE} is not valid JSON ({error.msg})", input_name=where) from None
    except (UnicodeDecodeError, RecursionError, OSError) as error:
        raise ModelError(f"{CARD_FILE} cannot be read ({type(error).__name__})", input_name=where) from None
    validate_card(card, where)
    return card


@dataclass
class KiMapModel:
    """A loaded, verified model: predicts ki67 (%) and P(ki67 >= threshold) from cohort-table rows."""

    card: dict
    pipeline: object  # the fitted pipeline (a Future of (pipeline, spread) while a background load reads it)
    path: Path
    spread: object = None  # the fitted spread model of the prediction intervals (None in models without them)
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

    @property
    def interval_level(self) -> float | None:
        """Default level of the prediction intervals (None for a model trained without them)."""
        uncertainty = self.card.get("uncertainty")
        return float(uncertainty["level"]) if uncertainty else None

    @property
    def domain_threshold(self) -> float | None:
        domain = self.card.get("domain")
        return float(domain["threshold"]) if domain else None

    def _fitted(self) -> tuple[object, object]:
        if isinstance(self.pipeline, Future):
            self.pipeline, self.spread = self.pipeline.result()  # raises the loader's ModelError, if any
        return self.pipeline, self.spread

    def predict(self, matrix: np.ndarray, level: float | None = None) -> Prediction:
        """ki67 (%) with its prediction interval at ``level`` (default: the card's), P(ki67 >= threshold) from the
        predictive distribution, and the out-of-domain score, for a design matrix (rows x input_features).

        A model without uncertainty parts (trained before KiMap 0.4) gives NaN intervals and scores and its
        Platt probability."""
        pipeline, spread_model = self._fitted()
        uncertainty, domain = self.card.get("uncertainty"), self.card.get("domain")
        if not uncertainty or spread_model is None:
            ki67 = np.clip(np.asarray(pipeline.predict(matrix), dtype=float), 0.0, 100.0)
            nan = np.full(len(ki67), np.nan)
            return Prediction(ki67, nan, nan.copy(), self._platt(ki67), nan.copy(), level)
        from KiMapLib.model import intervals
        from KiMapLib.model.domain import domain_score
        from KiMapLib.model.transformed import predicted_and_transformed

        level = float(uncertainty["level"]) if level is None else float(level)
        check_level(level)
        mu, z = predicted_and_transformed(pipeline, matrix)  # one pass through the transformers for both
        mu = np.asarray(mu, dtype=float)
        ki67 = np.clip(mu, 0.0, 100.0)
        nan = np.full(len(mu), np.nan)
        if z.shape[1] != len(uncertainty["columns"]):
            raise ModelError("the model's used columns differ from its card's uncertainty/columns",
                             input_name=str(self.path), hint="the card and the model were not saved together; retrain")
        spread = intervals.predict_spread(spread_model, z)
        scores = np.asarray(uncertainty["scores"], dtype=float)
        lower, upper = intervals.interval(mu, spread, scores, level)
        p_high = intervals.exceedance_probability(mu, spread, scores, self.threshold_percent)
        ood = domain_score(domain, z) / float(domain["threshold"]) if domain else nan
        return Prediction(ki67, np.clip(lower, 0.0, 100.0), np.clip(upper, 0.0, 100.0), p_high, ood, level, spread)

    def design_rows(self, row: dict, count: int) -> np.ndarray:
        """``count`` copies of ``row``'s design-matrix row with its missing values already imputed by the pipeline's
        own imputer (its first step, :mod:`~KiMapLib.model.pipeline_check`).

        A map's rows differ only in the used features, which the caller fills in afterwards; without this the imputer
        would scatter its medians into the same ~200 empty columns of every row (0.3 s of CPU on a 24,000-voxel map,
        3 s on 114,000). Predictions are the same: the imputer changes only missing values, so a value it filled
        before passes through it unchanged, and the used columns it fills here are overwritten."""
        base = design_matrix([row], self.input_features)
        pipeline, _ = self._fitted()
        imputed = np.asarray(pipeline[0].transform(base), dtype=float)
        if imputed.shape == base.shape:  # a plain imputer (no missing-value indicator columns)
            base = imputed
        return np.repeat(base, count, axis=0)

    def predict_matrix(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ki67 (%) clipped to [0, 100] and P(ki67 >= threshold) for a design matrix."""
        prediction = self.predict(matrix)
        return prediction.ki67, prediction.p_high

    def _platt(self, ki67: np.ndarray) -> np.ndarray:
        platt = self.card["probability"]
        return 1.0 / (1.0 + np.exp(-(platt["slope"] * np.asarray(ki67) + platt["intercept"])))

    def predict_rows(self, rows: list[dict], level: float | None = None) -> Prediction:
        return self.predict(design_matrix(rows, self.input_features), level)

    def top_contributions(self, rows: list[dict], n: int = 3) -> list[list[tuple[str, float]]]:
        """The ``n`` largest contributions (ki67 percentage points, by absolute size) to each row's prediction:
        exact for linear models, TreeSHAP for forests (KiMapLib.model.explain)."""
        from KiMapLib.model.explain import contributions, top_contributions

        pipeline, _ = self._fitted()
        explanation = contributions(pipeline, design_matrix(rows, self.input_features), self.input_features)
        return [top_contributions(explanation.names, values, n) for values in explanation.values]


def check_level(level: float) -> None:
    """Interval levels KiMap computes: 0.5 to 0.99 (beyond that the calibration scores are too few)."""
    if not (math.isfinite(level) and 0.5 <= level <= 0.99):
        raise ModelError(f"interval level {level} is outside 0.5-0.99", input_name="--interval-level",
                         hint="give e.g. 0.9 for 90 % intervals")


@dataclass
class Prediction:
    """What a model says about each row: ki67 (%), its interval [lower, upper] at ``level``, P(ki67 >= threshold),
    and the out-of-domain score (distance from the training biopsies' features in units of the card's threshold:
    > 1 is out of domain). NaN where the model has no such part."""

    ki67: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    p_high: np.ndarray
    ood: np.ndarray
    level: float | None
    spread: np.ndarray | None = None

    @property
    def out_of_domain(self) -> np.ndarray:
        return np.asarray(self.ood > 1.0)

    def take(self, rows: np.ndarray) -> Prediction:
        """The predictions of ``rows`` (an index or mask)."""
        spread = None if self.spread is None else self.spread[rows]
        return Prediction(self.ki67[rows], self.lower[rows], self.upper[rows], self.p_high[rows], self.ood[rows],
                          self.level, spread)


def save_bundle(pipeline: object, card: dict, out_dir: str | Path, extra_files: dict[str, bytes] | None = None,
                spread: object | None = None) -> Path:
    """Write ``model.skops`` and ``model_card.json`` (with the file's sha256) atomically into ``out_dir``; the
    pipeline (and the intervals' ``spread`` model, when given) and the written file pass the same checks as a load
    (so every bundle written can be read back)."""
    from KiMapLib.model.skops_import import import_skops_io

    sio = import_skops_io()
    content = {"pipeline": pipeline, "input_features": list(card["input_features"])}
    if spread is not None:
        content["spread"] = spread
    check_pipeline(content, len(card["input_features"]), str(out_dir))
    _check_spread_card(content, card, str(out_dir))
    with atomic_directory(out_dir, "model bundle") as staging:
        # deflated: a forest's tree tables sit in skops' schema.json as text (6 MB stored, 0.5 MB deflated); the audit
        # bounds the unpacked sizes from the zip's headers, and zipfile never inflates a member past its header's size
        sio.dump(content, staging / MODEL_FILE, compression=zipfile.ZIP_DEFLATED)
        audit_model_file((staging / MODEL_FILE).read_bytes(), str(out_dir), MODEL_FILE)
        card = dict(card, model_file={"path": MODEL_FILE, "sha256": sha256_file(staging / MODEL_FILE),
                                      "format": "skops"})
        validate_card(card, str(out_dir))
        (staging / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        for name, content_bytes in (extra_files or {}).items():
            (staging / name).write_bytes(content_bytes)
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


def packaged_entry(model_id: str | None = None, sequences: Iterable[str] | None = None) -> dict:
    """The registry entry of a packaged model: ``model_id``'s, else — when the case's ``sequences`` are known — the
    packaged model that uses the most of them (all of its required sequences given; the default wins ties), else
    the registry's default. So ``kimap map`` with ADC uses the ADC model, and without it the t1c/T2/FLAIR one."""
    entries = registry()
    if model_id is not None:
        found = [e for e in entries if e["id"] == model_id]
    else:
        found = [e for e in entries if e.get("default")]
        given = set(sequences or ())
        usable = [e for e in entries if given and set(e.get("required_sequences", ())) <= given]
        if usable:
            found = [max(usable, key=lambda e: (len(e["required_sequences"]), bool(e.get("default"))))]
    if not found:
        raise ModelError(f"no packaged model {model_id or '(default)'} in Resources/Models.json", input_name="model",
                         hint="give --model MODEL_DIR or reinstall KiMap")
    return found[0]


def packaged_id_entry(path: str | Path) -> dict | None:
    """The registry entry whose id ``path`` is, when ``path`` names no existing file or folder (``--model
    kimap-ki67-synthetic-v3`` picks a packaged model by id); else None."""
    if Path(path).exists():
        return None
    return next((e for e in registry() if e["id"] == str(path)), None)


def _resolve_model(path: str | Path | None, sequences: Iterable[str] | None) -> tuple[dict | None, Path]:
    """(registry entry or None, bundle folder) of what ``--model`` means (see :func:`model_folder`)."""
    entry = packaged_entry(sequences=sequences) if path is None else packaged_id_entry(path)
    return entry, models_dir() / entry["path"] if entry is not None else Path(path)


def model_folder(path: str | Path | None = None, sequences: Iterable[str] | None = None) -> Path:
    """The bundle folder ``--model`` means: a folder, a packaged model's id, or (None) the packaged model the case's
    ``sequences`` choose (:func:`packaged_entry`)."""
    return _resolve_model(path, sequences)[1]


def packaged_model_dir(model_id: str | None = None) -> Path:
    """Folder of a packaged model: ``model_id``'s, or the registry's default (see :func:`packaged_entry`)."""
    return models_dir() / packaged_entry(model_id)["path"]


def load_model(path: str | Path | None = None, background: bool = False,
               start_after: threading.Event | None = None, sequences: Iterable[str] | None = None) -> KiMapModel:
    """Load and verify a bundle folder (or the packaged default). Raises one-line ModelError naming the problem.

    Order: the card (schema: types and bounds) -> the model file's sha256 from the card -> every node of the file
    against KiMap's allow-list (:mod:`~KiMapLib.model.skops_audit`) -> skops builds the objects, trusting exactly
    the allow-listed types found -> the pipeline's structure (:mod:`~KiMapLib.model.pipeline_check`) -> predictions.
    The file is read once; the same bytes are hashed, audited and loaded.

    ``background``: everything up to the audit is done now, and skops builds the verified bytes in a background
    thread (importing skops takes a second or more); the first prediction waits for it (and its structure check).
    That thread starts once ``start_after`` is set, if given (work that is needed sooner goes first).
    ``sequences``: without ``path``, the case's sequences choose the packaged model (:func:`packaged_entry`)."""
    entry, folder = _resolve_model(path, sequences)
    where = str(folder)
    card = read_card(folder, where)
    model_path = folder / card["model_file"]["path"]
    if not model_path.is_file():
        raise ModelError(f"model file {model_path.name} is missing", input_name=where)
    if entry is not None and entry.get("sha256") != card["model_file"]["sha256"]:
        raise ModelError("the packaged model card does not match Resources/Models.json (sha256)", input_name=where,
                         hint="reinstall KiMap or run `make model`")
    if model_path.stat().st_size > MAX_MODEL_BYTES:
        raise ModelError(f"{model_path.name} is larger than {MAX_MODEL_BYTES >> 30} GiB", input_name=where,
                         hint="only bundles written by `kimap train` can be loaded")
    data = model_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != card["model_file"]["sha256"]:
        raise ModelError(f"{model_path.name} does not match the sha256 in its model card (modified or corrupted)",
                         input_name=where, hint="reinstall the model or retrain it; never load an unverified file")
    trusted = audit_model_file(data, where, model_path.name)
    if background:
        loader = ThreadPoolExecutor(1, thread_name_prefix="kimap-model")
        pipeline = loader.submit(_read_pipeline, data, trusted, model_path.name, card, where, start_after)
        loader.shutdown(wait=False)
        return KiMapModel(card=card, pipeline=pipeline, path=folder)
    pipeline, spread = _read_pipeline(data, trusted, model_path.name, card, where)
    return KiMapModel(card=card, pipeline=pipeline, path=folder, spread=spread)


def _read_pipeline(data: bytes, trusted: list[str], name: str, card: dict, where: str,
                   start_after: threading.Event | None = None) -> tuple[object, object]:
    """The fitted pipeline and spread model (or None) of audited model bytes (skops trusting exactly ``trusted``),
    checked against its card."""
    if start_after is not None:
        start_after.wait()
    from KiMapLib.model.skops_import import import_skops_io

    sio = import_skops_io()
    try:
        content = sio.loads(data, trusted=trusted)
    except Exception as error:  # skops raises many types for a corrupt file
        raise ModelError(f"cannot read {name} ({type(error).__name__})", input_name=where) from None
    features = content.get("input_features") if isinstance(content, dict) else None
    if features != list(card["input_features"]):
        raise ModelError("the feature list in the model file differs from its model card", input_name=where,
                         hint="the card and the model were not saved together; retrain")
    pipeline = check_pipeline(content, len(card["input_features"]), where, name)
    spread = _check_spread_card(content, card, where, name)
    expected = ESTIMATOR_CLASSES.get(card.get("estimator", {}).get("name"))
    if expected and type(pipeline.steps[-1][1]).__name__ != expected:
        raise ModelError(f"the model card says {card['estimator']['name']} but {name} holds a "
                         f"{type(pipeline.steps[-1][1]).__name__}", input_name=where,
                         hint="the card and the model were not saved together; retrain")
    return pipeline, spread


def _check_spread_card(content: dict, card: dict, where: str, name: str = MODEL_FILE) -> object:
    """The spread model and the card's uncertainty section come together (neither without the other)."""
    uncertainty = card.get("uncertainty")
    if (content.get("spread") is None) != (uncertainty is None):
        raise ModelError("the model file and its card disagree on prediction intervals (spread model vs card "
                         "section uncertainty)", input_name=where,
                         hint="the card and the model were not saved together; retrain")
    if uncertainty is None:
        return None
    return check_spread(content, len(uncertainty["columns"]), where, name)
