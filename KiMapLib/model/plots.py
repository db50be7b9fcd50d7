"""Pictures of a model's validation: predicted vs measured, the probability's calibration, the sequence ablation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from KiMapLib.plotting import pyplot


def predicted_vs_measured(measured: np.ndarray, predicted: np.ndarray, labels: list[str], metrics: dict,
                          path: str | Path, title: str = "Leave-one-patient-out") -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5), dpi=120)
    for label in sorted(set(labels)):
        chosen = np.array(labels) == label
        ax.scatter(measured[chosen], predicted[chosen], s=18, alpha=0.8, label=label)
    top = float(max(measured.max(), predicted.max(), 1.0)) * 1.05
    ax.plot([0, top], [0, top], color="0.4", lw=1, ls="--", label="identity")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="measured ki67 (%)", ylabel="predicted ki67 (%)",
           title=f"{title}\nRMSE {metrics['rmse']:.2f} %, R² {metrics['r2']:.2f}, n = {len(measured)}")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def calibration(high: np.ndarray, probability: np.ndarray, path: str | Path, threshold: float, bins: int = 8) -> None:
    plt = pyplot()
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probability, edges) - 1, 0, bins - 1)
    centres, observed, counts = [], [], []
    for b in range(bins):
        chosen = which == b
        if chosen.any():
            centres.append(probability[chosen].mean())
            observed.append(high[chosen].mean())
            counts.append(int(chosen.sum()))
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    ax.plot([0, 1], [0, 1], color="0.4", lw=1, ls="--", label="perfect calibration")
    ax.plot(centres, observed, "o-", label="held-out patients")
    for x, y, n in zip(centres, observed, counts, strict=True):
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=f"predicted P(ki67 ≥ {threshold:g} %)",
           ylabel="observed fraction", title="Calibration (leave-one-patient-out)")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def sequence_ablation(ablation: dict, path: str | Path) -> None:
    """Bars of LOPO RMSE: all sequences, each left out, each alone (``reports.sequence_ablation``'s dict)."""
    plt = pyplot()
    labels = ["all"] + [f"without {s}" for s in ablation["without"]] + [f"only {s}" for s in ablation["only"]]
    values = [ablation["all"], *ablation["without"].values(), *ablation["only"].values()]
    colours = ["0.35"] + ["tab:orange"] * len(ablation["without"]) + ["tab:blue"] * len(ablation["only"])
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(labels) + 1.4), dpi=120)
    positions = np.arange(len(labels))[::-1]
    ax.barh(positions, [v["rmse"] for v in values], color=colours)
    for y, value in zip(positions, values, strict=True):
        ax.annotate(f"{value['rmse']:.2f}  (R² {value['r2']:.2f})", (value["rmse"], y), xytext=(3, -3),
                    textcoords="offset points", fontsize=7)
    ax.set_yticks(positions, labels, fontsize=8)
    ax.set(xlabel="LOPO RMSE (ki67 %)", xlim=(0, max(v["rmse"] for v in values) * 1.35),
           title=f"Sequence ablation ({ablation['candidate']})")
    ax.title.set_fontsize(8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def importance(values: dict[str, float], path: str | Path, top: int = 15) -> None:
    """Global feature importance: mean |contribution| (ki67 percentage points) of the model's largest features."""
    plt = pyplot()
    names = list(values)[:top][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(names) + 1.4), dpi=120)
    ax.barh(range(len(names)), [values[name] for name in names], color="#3b7dd8")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set(xlabel="mean |contribution| to the estimate (ki67 percentage points)",
           title="Feature importance over the training biopsies")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
