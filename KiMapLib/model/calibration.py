"""Calibration of P(ki67 >= threshold) on held-out patients: reliability curve, ECE, Brier score, and its picture.

Bins are equal-width on [0, 1] (probability 1 falls in the last bin); empty bins are left out of the curve (JSON has
no NaN). ECE = sum over bins of (bin count / n) * |observed fraction - mean predicted probability|.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from KiMapLib.errors import KiMapError
from KiMapLib.plotting import pyplot


def _checked(outcome, probability) -> tuple[np.ndarray, np.ndarray]:
    outcome = np.asarray(outcome, dtype=float).reshape(-1)
    probability = np.asarray(probability, dtype=float).reshape(-1)
    if outcome.size != probability.size or outcome.size == 0:
        raise KiMapError(f"{outcome.size} outcomes but {probability.size} probabilities", input_name="calibration",
                         hint="give one probability per held-out biopsy")
    if not (np.isfinite(probability).all() and (probability >= 0).all() and (probability <= 1).all()):
        raise KiMapError("probabilities must be finite and within [0, 1]", input_name="calibration")
    if not np.isin(outcome, (0.0, 1.0)).all():
        raise KiMapError("outcomes must be 0/1 (ki67 >= threshold)", input_name="calibration")
    return outcome, probability


def reliability_curve(outcome, probability, bins: int = 10) -> dict:
    """Per non-empty bin: ``bin`` index, ``mean_predicted``, ``observed_fraction``, ``count``; plus ``edges``."""
    outcome, probability = _checked(outcome, probability)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probability, edges) - 1, 0, bins - 1)
    curve = {"edges": edges.tolist(), "bin": [], "mean_predicted": [], "observed_fraction": [], "count": []}
    for b in range(bins):
        chosen = which == b
        if chosen.any():
            curve["bin"].append(b)
            curve["mean_predicted"].append(float(probability[chosen].mean()))
            curve["observed_fraction"].append(float(outcome[chosen].mean()))
            curve["count"].append(int(chosen.sum()))
    return curve


def expected_calibration_error(outcome, probability, bins: int = 10) -> float:
    """Count-weighted mean |observed fraction - mean predicted probability| over the bins."""
    curve = reliability_curve(outcome, probability, bins)
    counts = np.asarray(curve["count"], dtype=float)
    gaps = np.abs(np.asarray(curve["observed_fraction"]) - np.asarray(curve["mean_predicted"]))
    return float(np.sum(counts * gaps) / counts.sum())


def brier_score(outcome, probability) -> float:
    """Mean squared difference between the 0/1 outcome and the probability."""
    outcome, probability = _checked(outcome, probability)
    return float(np.mean((probability - outcome) ** 2))


def calibration_summary(outcome, probability, bins: int = 10) -> dict:
    """``n``, ``prevalence``, ``ece``, ``brier`` and the ``curve`` (JSON-ready, for cv_report.json)."""
    outcome, probability = _checked(outcome, probability)
    return {"n": int(outcome.size), "prevalence": float(outcome.mean()), "bins": int(bins),
            "ece": expected_calibration_error(outcome, probability, bins), "brier": brier_score(outcome, probability),
            "curve": reliability_curve(outcome, probability, bins)}


def plot_reliability(summary: dict, path: str | Path, threshold: float,
                     title: str = "Calibration (leave-one-patient-out)") -> None:
    """Reliability diagram of a :func:`calibration_summary`: observed fraction vs mean predicted probability per bin,
    bin counts annotated, ECE and Brier in the title, and the histogram of the predictions underneath."""
    plt = pyplot()
    curve = summary["curve"]
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), dpi=120, sharex=True,
                                   gridspec_kw={"height_ratios": [4, 1]})
    ax.plot([0, 1], [0, 1], color="0.4", lw=1, ls="--", label="perfect calibration")
    ax.plot(curve["mean_predicted"], curve["observed_fraction"], "o-", label="held-out patients")
    for x, y, n in zip(curve["mean_predicted"], curve["observed_fraction"], curve["count"], strict=True):
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed fraction",
           title=f"{title}\nECE {summary['ece']:.3f}, Brier {summary['brier']:.3f}, n = {summary['n']}")
    ax.legend(fontsize=8, loc="upper left")
    edges = np.asarray(curve["edges"])
    counts = np.zeros(len(edges) - 1)
    counts[np.asarray(curve["bin"], dtype=int)] = curve["count"]
    hist.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="0.6", edgecolor="0.3")
    hist.set(xlabel=f"predicted P(ki67 ≥ {threshold:g} %)", ylabel="biopsies")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
