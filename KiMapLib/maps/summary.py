"""A map folder's ``summary.json`` read back: the fields KiMap uses from it are checked, so a hand-edited or
foreign summary gives one line naming the field, never a traceback or a wrong label."""

from __future__ import annotations

import json
import math
from pathlib import Path

from KiMapLib.errors import KiMapError

SUMMARY_FILE = "summary.json"
MAX_SUMMARY_BYTES = 16 << 20


def check_summary(summary: object, input_name: str) -> dict:
    """``summary`` if the fields KiMap reads from it have their types: ``threshold_percent`` a finite number in
    (0, 100), ``model_id`` a text, ``t1c_source`` a mapping of texts (each optional)."""
    if not isinstance(summary, dict):
        raise KiMapError(f"{SUMMARY_FILE} is not a JSON object", input_name=input_name,
                         hint="give a folder written by `kimap map`")
    threshold = summary.get("threshold_percent")
    if threshold is not None and not (isinstance(threshold, int | float) and not isinstance(threshold, bool)
                                      and math.isfinite(threshold) and 0 < threshold < 100):
        raise KiMapError(f"{SUMMARY_FILE} field threshold_percent is {str(threshold)[:40]!r}, not a number between "
                         "0 and 100", input_name=input_name, hint="give a folder written by `kimap map`")
    if not isinstance(summary.get("model_id", ""), str | None):
        raise KiMapError(f"{SUMMARY_FILE} field model_id is not a text", input_name=input_name,
                         hint="give a folder written by `kimap map`")
    source = summary.get("t1c_source")
    if source is not None and not (isinstance(source, dict) and all(isinstance(v, str) for v in source.values())):
        raise KiMapError(f"{SUMMARY_FILE} field t1c_source is not a mapping of texts", input_name=input_name,
                         hint="give a folder written by `kimap map`")
    return summary


def read_summary(path: str | Path, input_name: str) -> dict:
    """The checked summary at ``path``; an empty one when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return {}
    if path.stat().st_size > MAX_SUMMARY_BYTES:
        raise KiMapError(f"{SUMMARY_FILE} is larger than {MAX_SUMMARY_BYTES >> 20} MB", input_name=input_name)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise KiMapError(f"{SUMMARY_FILE} is not valid JSON", input_name=input_name) from None
    return check_summary(summary, input_name)


def interval_level(summary: dict, input_name: str) -> float | None:
    """The prediction intervals' level (e.g. 0.9) from ``uncertainty.intervals.level``; None when the summary has
    none (a map from before KiMap 0.4, or a model without intervals). A level that is not a number in (0, 1) is
    refused in one line."""
    uncertainty = summary.get("uncertainty")
    intervals = uncertainty.get("intervals") if isinstance(uncertainty, dict) else None
    level = intervals.get("level") if isinstance(intervals, dict) else None
    if level is None:
        return None
    if not (isinstance(level, int | float) and not isinstance(level, bool) and math.isfinite(level)
            and 0 < level < 1):
        raise KiMapError(f"{SUMMARY_FILE} field uncertainty.intervals.level is {str(level)[:40]!r}, not a number "
                         "between 0 and 1", input_name=input_name, hint="give a folder written by `kimap map`")
    return float(level)
