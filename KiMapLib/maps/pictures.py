"""Pictures of a map people read: ``overlay.png``, a montage of axial t1c slices through the tumour centre and every
biopsy, with the ki67 map in KiMap's color table and window (the same as the Slicer and web views), the mapped
region's contour, the biopsies, orientation letters and each slice's position."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from KiMapLib.inputs.geometry import lps_axes, to_lps
from KiMapLib.plotting import pyplot
from KiMapLib.resources import KI67_WINDOW, color_table_rgba


def ki67_colormap():
    """KiMap's shipped color table as a matplotlib colormap; NaN (not mapped) is transparent."""
    from matplotlib.colors import ListedColormap

    return ListedColormap(color_table_rgba(), name="KiMapKi67").with_extremes(bad=(0, 0, 0, 0))


def _lps_index(ijk: Sequence[int], shape: tuple[int, int, int], order: tuple[int, int, int],
               flips: tuple[int, ...]) -> tuple[int, int, int]:
    """Where voxel (i, j, k) of the image lies in its LPS-ordered array (see :func:`to_lps`)."""
    kji = (int(ijk[2]), int(ijk[1]), int(ijk[0]))
    moved = [kji[order[n]] for n in range(3)]
    sizes = [shape[order[n]] for n in range(3)]
    return tuple(sizes[n] - 1 - moved[n] if n in flips else moved[n] for n in range(3))


def _slices(mapped: np.ndarray, points: list[tuple[str, tuple[int, int, int]]]) -> list[tuple[int, list[str]]]:
    """Axial slices (LPS z index) to show: the mapped region's centre, then each biopsy's slice; with their labels."""
    chosen: dict[int, list[str]] = {}
    where = np.nonzero(mapped.any(axis=(1, 2)))[0]
    if where.size:
        weights = mapped.sum(axis=(1, 2))[where]
        chosen[round(float(np.average(where, weights=weights)))] = []
    for label, (z, _, _) in points:  # every biopsy is shown, on its own slice
        chosen.setdefault(z, []).append(label)
    if not chosen:
        chosen[mapped.shape[0] // 2] = []
    return sorted(chosen.items())


def overlay(t1c: sitk.Image, ki67: sitk.Image, path: str | Path, *, region: sitk.Image | None = None,
            points_ijk: Sequence[Sequence[int]] | None = None, point_labels: Sequence[str] | None = None,
            title: str = "") -> list[dict]:
    """Save the overlay montage and return its slices: ``[{"index_k": ..., "s_mm": ..., "biopsies": [...]}]``.

    The map is drawn with the shipped color table over the window :data:`KiMapLib.resources.KI67_WINDOW`; values
    outside the window are outlined in white and counted in the caption (never saturated silently).
    """
    plt = pyplot()
    order, flips, spacing = lps_axes(t1c)
    shape = sitk.GetArrayViewFromImage(t1c).shape
    base = to_lps(sitk.GetArrayViewFromImage(t1c), order, flips).astype(np.float32)
    values = to_lps(sitk.GetArrayViewFromImage(ki67), order, flips).astype(np.float32)
    mapped = np.isfinite(values)
    outline = to_lps(sitk.GetArrayViewFromImage(region), order, flips) > 0 if region is not None else mapped
    labels = list(point_labels or [f"B{n + 1}" for n in range(len(points_ijk or []))])
    points = [(label, _lps_index(ijk, shape, order, flips))
              for label, ijk in zip(labels, points_ijk or [], strict=True)]
    slices = _slices(mapped, points)
    low_window, high_window = KI67_WINDOW
    clipped = mapped & ((values < low_window) | (values > high_window))
    brain = np.nonzero(base != 0)
    crop = tuple(slice(max(0, int(w.min()) - 4), int(w.max()) + 5) for w in brain[1:]) if brain[0].size else (
        slice(None), slice(None))
    grey_low, grey_high = np.percentile(base[base != 0], [1, 99]) if brain[0].size else (0.0, 1.0)
    columns = min(4, len(slices))
    rows = -(-len(slices) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.3 * columns, 3.5 * rows + 0.9), squeeze=False, dpi=110)
    colormap = ki67_colormap()
    shown = None
    info = []
    for ax, (z, biopsies) in zip(axes.flat, slices, strict=False):
        window = (slice(None), *crop)
        aspect = spacing[1] / spacing[0]
        # LPS arrays: x to the patient's left, y to posterior; radiological display puts the patient's right on the
        # left and anterior at the top, which is the array as it is.
        ax.imshow(base[z][window[1:]], cmap="gray", vmin=grey_low, vmax=grey_high, aspect=aspect,
                  interpolation="nearest")
        shown = ax.imshow(np.ma.masked_invalid(values[z][window[1:]]), cmap=colormap, vmin=low_window,
                          vmax=high_window, alpha=0.8, aspect=aspect, interpolation="nearest")
        if outline[z].any():
            ax.contour(outline[z][window[1:]], levels=[0.5], colors=["white"], linewidths=0.7)
        if clipped[z].any():
            ax.contour(clipped[z][window[1:]], levels=[0.5], colors=["white"], linewidths=1.2, linestyles="dashed")
        for label, (pz, py, px) in points:
            if pz == z:
                x, y = px - (crop[1].start or 0), py - (crop[0].start or 0)
                ax.plot(x, y, "c+", ms=11, mew=2)
                ax.text(x + 3, y - 3, label, color="cyan", fontsize=8, fontweight="bold")
        height, width = base[z][window[1:]].shape
        style = {"color": "yellow", "fontsize": 8, "ha": "center", "va": "center"}
        for text, (x, y) in zip("APRL", ((width / 2, height * 0.03), (width / 2, height * 0.97),
                                         (width * 0.03, height / 2), (width * 0.97, height / 2)), strict=True):
            ax.text(x, y, text, **style)
        s_mm = _superior_mm(t1c, z, order, flips, shape)
        caption = f"S {s_mm:+.1f} mm" + (f" — {', '.join(biopsies)}" if biopsies else " — tumour centre")
        ax.set_title(caption, fontsize=8)
        ax.set_axis_off()
        info.append({"lps_slice": int(z), "s_mm": round(s_mm, 2), "biopsies": biopsies})
    for ax in list(axes.flat)[len(slices):]:
        ax.set_axis_off()
    bar = fig.colorbar(shown, ax=axes.ravel().tolist(), orientation="horizontal", fraction=0.05, pad=0.04, aspect=40)
    bar.set_label(f"ki67 estimate (%), window {low_window:g}-{high_window:g} %; transparent: not mapped "
                  "(outside the region, necrotic core)" + (f"; {int(clipped.sum())} voxels outside the window, "
                                                           "outlined dashed" if clipped.any() else ""), fontsize=8)
    fig.suptitle(title or "ki67 map", fontsize=10)
    fig.savefig(path, facecolor="white")
    plt.close(fig)
    return info


def _superior_mm(image: sitk.Image, z: int, order: tuple[int, int, int], flips: tuple[int, ...],
                 shape: tuple[int, int, int]) -> float:
    """The S (= LPS z) coordinate of the centre of LPS slice ``z``."""
    kji = [s // 2 for s in shape]
    original_axis = order[0]  # the image's array axis that became LPS axis 0
    kji[original_axis] = shape[original_axis] - 1 - z if 0 in flips else z
    return float(image.TransformIndexToPhysicalPoint((kji[2], kji[1], kji[0]))[2])
