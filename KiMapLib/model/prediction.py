"""Predict ki67 at biopsy points: extraction on the model's sequences and settings, then the model."""

from __future__ import annotations

import math
from collections.abc import Sequence

from KiMapLib.errors import BiopsyError, FieldOfViewError, ModelError
from KiMapLib.features.extraction import extract_biopsies
from KiMapLib.inputs.biopsies import Biopsy
from KiMapLib.inputs.case import Case
from KiMapLib.model.bundle import KiMapModel, Prediction
from KiMapLib.progress import ProgressCallback, scaled


def check_case_for_model(case: Case, model: KiMapModel) -> None:
    """The case must hold every sequence the model needs and use the model's extraction settings."""
    missing = [name for name in model.required_sequences if name not in case.images]
    if missing:
        raise ModelError(f"model {model.model_id} needs {', '.join(model.required_sequences)}; "
                         f"{', '.join(missing)} missing", input_name=missing[0],
                         hint=f"give the {missing[0]} volume or choose a model that does not need it")
    if case.settings != model.settings:
        raise ModelError("the case was prepared with other extraction settings than the model's",
                         input_name="settings", hint="prepare the case with model.settings")


def predict_biopsies(case: Case, biopsies: Sequence[Biopsy], model: KiMapModel,
                     progress: ProgressCallback | None = None, *, level: float | None = None,
                     explain: bool = False) -> tuple[list[dict], list[BiopsyError]]:
    """Rows with features, ``predicted_ki67`` (%), its interval ``ki67_lower``/``ki67_upper`` at ``level`` (default:
    the model card's), ``probability_high`` = P(ki67 >= threshold), ``ood_score`` (> 1: out of domain) and, with
    ``explain``, the three largest feature contributions; bad points become errors.

    A point whose ball leaves the field of view of a sequence the model uses is not predicted (its error says
    which sequence): imputing the missing features would give a plausible but unfounded value.
    """
    check_case_for_model(case, model)
    rows, errors = extract_biopsies(case, biopsies, scaled(progress, 0.0, 0.95),
                                   sequences=model.required_sequences)
    used = tuple(model.used_features)
    unusable = {error.input_name for error in errors
                if isinstance(error, FieldOfViewError) and any(f.startswith(f"{error.sequence}_") for f in used)}
    rows = [row for row in rows if f"biopsy {row['patient_id']}/{row['biopsy_id']}" not in unusable]
    if rows:
        prediction = model.predict_rows(rows, level)
        tops = model.top_contributions(rows) if explain else [None] * len(rows)
        for number, (row, top) in enumerate(zip(rows, tops, strict=True)):
            row.update(prediction_fields(prediction, number))
            if top is not None:
                for rank, (name, value) in enumerate(top, start=1):
                    row[f"contribution_{rank}_feature"] = name
                    row[f"contribution_{rank}_ki67"] = round(float(value), 3)
    if progress:
        progress(1.0, "predicted")
    return rows, errors


def prediction_fields(prediction: Prediction, row: int) -> dict:
    """One row's columns of a :class:`Prediction` (NaN parts, of models without them, as None)."""

    def number(values):
        value = float(values[row])
        return value if math.isfinite(value) else None

    ood = number(prediction.ood)
    return {"predicted_ki67": number(prediction.ki67), "ki67_lower": number(prediction.lower),
            "ki67_upper": number(prediction.upper), "interval_level": prediction.level,
            "probability_high": number(prediction.p_high), "ood_score": ood,
            "out_of_domain": None if ood is None else bool(ood > 1.0)}
