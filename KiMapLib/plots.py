"""Pictures people read: predicted-vs-measured, calibration, and the ki67 overlay on a t1c slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from KiMapLib.geometry import LPS_FROM_RAS


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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


def _slice_to_display(values: np.ndarray, image: sitk.Image) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """An axial slice (2D [j, i]) oriented radiologically-ish for display, with its extent in mm.

    Flips the rows/columns so that anterior is up and patient right is on the viewer's left when the grid is
    near-axial; oblique grids are shown in their own in-plane axes.
    """
    direction = LPS_FROM_RAS @ np.array(image.GetDirection()).reshape(3, 3)  # RAS directions of i, j, k
    spacing = image.GetSpacing()
    if direction[0, 0] > 0:  # i points to patient left -> flip so patient right is on the left of the picture
        values = values[:, ::-1]
    if direction[1, 1] > 0:  # j points anterior -> flip rows so anterior is up
        values = values[::-1, :]
    height, width = values.shape
    return values, (0, width * spacing[0], height * spacing[1], 0)


def overlay(t1c: sitk.Image, ki67: sitk.Image, path: str | Path, *, slice_k: int | None = None,
            points_ijk: list[tuple[int, int, int]] | None = None, vmax: float = 60.0, title: str = "") -> int:
    """Save a t1c axial slice with the ki67 map in colour (transparent where NaN) and a colour bar.

    Picks the slice with the most mapped voxels unless ``slice_k`` is given; returns the slice index.
    """
    plt = pyplot()
    values = sitk.GetArrayViewFromImage(ki67)
    if slice_k is None:
        slice_k = int(np.argmax(np.isfinite(values).sum(axis=(1, 2))))
    base, extent = _slice_to_display(sitk.GetArrayViewFromImage(t1c)[slice_k].astype(float), t1c)
    colour, _ = _slice_to_display(values[slice_k].astype(float), t1c)
    low, high = np.percentile(base[base != 0], [1, 99]) if np.any(base != 0) else (0, 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=120)
    ax.imshow(base, cmap="gray", vmin=low, vmax=high, extent=extent)
    shown = ax.imshow(np.ma.masked_invalid(colour), cmap="inferno", vmin=0, vmax=vmax, alpha=0.75, extent=extent)
    for i, j, k in points_ijk or []:
        if k == slice_k:
            flipped_i, flipped_j = _flip_point(i, j, t1c)
            ax.plot(flipped_i * t1c.GetSpacing()[0], flipped_j * t1c.GetSpacing()[1], "c+", ms=10, mew=2)
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("ki67 estimate (%)")
    ax.set_title(title or f"ki67 map, axial slice k={slice_k}", fontsize=10)
    ax.set_xlabel("mm (patient right on the left)")
    ax.set_ylabel("mm (anterior up)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return slice_k


def _flip_point(i: int, j: int, image: sitk.Image) -> tuple[float, float]:
    direction = LPS_FROM_RAS @ np.array(image.GetDirection()).reshape(3, 3)
    width, height = image.GetSize()[0], image.GetSize()[1]
    x = (width - 1 - i) if direction[0, 0] > 0 else i
    y = (height - 1 - j) if direction[1, 1] > 0 else j
    return x + 0.5, y + 0.5
