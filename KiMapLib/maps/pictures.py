"""Pictures of a map people read: the ki67 overlay on t1c slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from KiMapLib.inputs.geometry import LPS_FROM_RAS
from KiMapLib.plotting import pyplot


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
