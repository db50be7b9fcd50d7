"""Pictures of a map people read: ``overlay.png``, a montage of axial t1c slices through the tumour centre and every
biopsy, with the ki67 map in KiMap's color table and window (the same as the Slicer and web views), the mapped
region's contour, the biopsies, orientation letters and each slice's position."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from KiMapLib.inputs.geometry import lps_axes, to_lps
from KiMapLib.plotting import pyplot
from KiMapLib.resources import INTERVAL_WIDTH_WINDOW, KI67_WINDOW, color_table_rgba


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
            out_of_domain: sitk.Image | None = None, title: str = "") -> list[dict]:
    """Save the overlay montage and return its slices: ``[{"index_k": ..., "s_mm": ..., "biopsies": [...]}]``.

    The map is drawn with the shipped color table over the window :data:`KiMapLib.resources.KI67_WINDOW`; values
    outside the window are outlined in white and counted in the caption (never saturated silently); voxels whose
    out-of-domain score exceeds 1 are outlined in magenta and counted.
    """
    return _montage(t1c, ki67, path, ki67_colormap(), KI67_WINDOW, "ki67 estimate (%)", region=region,
                    points_ijk=points_ijk, point_labels=point_labels, out_of_domain=out_of_domain,
                    title=title or "ki67 map")


def uncertainty_picture(t1c: sitk.Image, lower: sitk.Image, upper: sitk.Image, path: str | Path, *,
                        region: sitk.Image | None = None, out_of_domain: sitk.Image | None = None,
                        points_ijk: Sequence[Sequence[int]] | None = None, point_labels: Sequence[str] | None = None,
                        level: float | None = None, title: str = "") -> list[dict]:
    """Save ``uncertainty.png``: the width of the prediction interval (upper - lower, percentage points) on the
    slices of the overlay, in a fixed window (:data:`KiMapLib.resources.INTERVAL_WIDTH_WINDOW`) so that maps can be
    compared; out-of-domain voxels outlined in magenta."""
    from matplotlib import colormaps

    width = sitk.Subtract(sitk.Cast(upper, sitk.sitkFloat32), sitk.Cast(lower, sitk.sitkFloat32))
    colormap = colormaps["viridis"].with_extremes(bad=(0, 0, 0, 0))
    what = f"{level:.0%} interval width (ki67 percentage points)" if level else "interval width (points)"
    return _montage(t1c, width, path, colormap, INTERVAL_WIDTH_WINDOW, what, region=region, points_ijk=points_ijk,
                    point_labels=point_labels, out_of_domain=out_of_domain, title=title or "interval width")


def _montage(t1c: sitk.Image, image: sitk.Image, path: str | Path, colormap, window: tuple[float, float],
             what: str, *, region: sitk.Image | None, points_ijk: Sequence[Sequence[int]] | None,
             point_labels: Sequence[str] | None, out_of_domain: sitk.Image | None, title: str) -> list[dict]:
    plt = pyplot()
    order, flips, spacing = lps_axes(t1c)
    shape = sitk.GetArrayViewFromImage(t1c).shape
    base = to_lps(sitk.GetArrayViewFromImage(t1c), order, flips).astype(np.float32)
    values = to_lps(sitk.GetArrayViewFromImage(image), order, flips).astype(np.float32)
    mapped = np.isfinite(values)
    outline = to_lps(sitk.GetArrayViewFromImage(region), order, flips) > 0 if region is not None else mapped
    foreign = (to_lps(sitk.GetArrayViewFromImage(out_of_domain), order, flips) > 1.0 if out_of_domain is not None
               else np.zeros_like(mapped))
    labels = list(point_labels or [f"B{n + 1}" for n in range(len(points_ijk or []))])
    points = [(label, _lps_index(ijk, shape, order, flips))
              for label, ijk in zip(labels, points_ijk or [], strict=True)]
    slices = _slices(mapped, points)
    low_window, high_window = window
    clipped = mapped & ((values < low_window) | (values > high_window))
    crop, (grey_low, grey_high) = _brain_window(base)
    columns = min(4, len(slices))
    rows = -(-len(slices) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(max(3.3 * columns, 7.0), 3.5 * rows + 1.3), squeeze=False,
                             dpi=110)
    shown = None
    info = []
    for ax, (z, biopsies) in zip(axes.flat, slices, strict=False):
        aspect = spacing[1] / spacing[0]
        # LPS arrays: x to the patient's left, y to posterior; radiological display puts the patient's right on the
        # left and anterior at the top, which is the array as it is.
        ax.imshow(base[z][crop], cmap="gray", vmin=grey_low, vmax=grey_high, aspect=aspect, interpolation="nearest")
        shown = ax.imshow(np.ma.masked_invalid(values[z][crop]), cmap=colormap, vmin=low_window,
                          vmax=high_window, alpha=0.8, aspect=aspect, interpolation="nearest")
        if outline[z].any():
            ax.contour(outline[z][crop], levels=[0.5], colors=["white"], linewidths=0.7)
        if clipped[z].any():
            ax.contour(clipped[z][crop], levels=[0.5], colors=["white"], linewidths=1.2, linestyles="dashed")
        if foreign[z].any():
            ax.contour(foreign[z][crop], levels=[0.5], colors=["magenta"], linewidths=1.2, linestyles="dotted")
        for label, (pz, py, px) in points:
            if pz == z:
                x, y = px - (crop[1].start or 0), py - (crop[0].start or 0)
                ax.plot(x, y, "c+", ms=11, mew=2)
                ax.text(x + 3, y - 3, label, color="cyan", fontsize=8, fontweight="bold")
        height, width = base[z][crop].shape
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
    notes = [f"{what}, window {low_window:g}-{high_window:g}; transparent: not mapped (outside the region, "
             "necrotic core)"]
    if clipped.any():
        notes.append(f"{int(clipped.sum())} voxels outside the window, outlined dashed")
    if foreign.any():
        share = foreign.sum() / max(mapped.sum(), 1)
        notes.append(f"{int(foreign.sum())} voxels out of the model's domain ({share:.1%}), outlined magenta dotted")
    bar.set_label(textwrap.fill("; ".join(notes), 110), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, facecolor="white")
    plt.close(fig)
    return info


def _brain_window(base: np.ndarray) -> tuple[tuple[slice, slice], tuple[float, float]]:
    """The in-plane crop around the non-zero (brain) voxels of every slice, 4 voxels of margin, and the grey window
    (their 1st and 99th percentiles); the whole plane and (0, 1) for an all-zero volume. The extent comes from the
    projections of the non-zero mask (the same bounds as its voxel indices, without listing them)."""
    brain = base != 0
    rows = np.flatnonzero(brain.any(axis=(0, 2)))
    if rows.size == 0:
        return (slice(None), slice(None)), (0.0, 1.0)
    columns = np.flatnonzero(brain.any(axis=(0, 1)))
    crop = tuple(slice(max(0, int(w[0]) - 4), int(w[-1]) + 5) for w in (rows, columns))
    grey_low, grey_high = np.percentile(base[brain], [1, 99])
    return crop, (grey_low, grey_high)


def _superior_mm(image: sitk.Image, z: int, order: tuple[int, int, int], flips: tuple[int, ...],
                 shape: tuple[int, int, int]) -> float:
    """The S (= LPS z) coordinate of the centre of LPS slice ``z``."""
    kji = [s // 2 for s in shape]
    original_axis = order[0]  # the image's array axis that became LPS axis 0
    kji[original_axis] = shape[original_axis] - 1 - z if 0 in flips else z
    return float(image.TransformIndexToPhysicalPoint((kji[2], kji[1], kji[0]))[2])
