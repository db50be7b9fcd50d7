"""The QC montage of a tumour segmentation: label contours on FLAIR and t1c, axial slices through the lesion plus a
coronal and a sagittal slice through its centre, in radiological display with orientation letters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from KiMapLib.inputs.case import Case
from KiMapLib.inputs.geometry import lps_axes, to_lps
from KiMapLib.region.tumour_region import LABEL_COLORS, LABEL_NAMES

#: Rows of the montage, in order of preference (two are shown).
ROW_SEQUENCES = ("flair", "t1c", "t2", "t1")


def _window(image: np.ndarray) -> tuple[float, float]:
    values = image[np.isfinite(image) & (image != 0)]
    return (float(np.percentile(values, 0.5)), float(np.percentile(values, 99.5))) if values.size else (0.0, 1.0)


def _lps_mm(image: sitk.Image, axis: int, index: int, order: tuple[int, int, int], flips: tuple[int, ...]) -> float:
    """Where slice ``index`` along LPS array ``axis`` lies, in Slicer's RAS millimetres: S for axial slices, A for
    coronal, R for sagittal (RAS = LPS with x and y negated)."""
    shape = sitk.GetArrayViewFromImage(image).shape
    kji = [s // 2 for s in shape]
    original = order[axis]
    kji[original] = shape[original] - 1 - index if axis in flips else index
    lps = image.TransformIndexToPhysicalPoint((kji[2], kji[1], kji[0]))[2 - axis]
    return float(lps if axis == 0 else -lps)


def _bounding_box(mask: np.ndarray, margin: int = 3) -> tuple[slice, slice, slice]:
    where = np.nonzero(mask)
    if not where[0].size:
        return (slice(None),) * 3
    return tuple(slice(max(0, int(w.min()) - margin), int(w.max()) + margin + 1) for w in where)


def _views(labels: np.ndarray, n_axial: int) -> list[tuple[str, int]]:
    """Axial slices across the lesion's extent (5th-95th percentile) and through its centre, then coronal, sagittal."""
    where = np.nonzero(labels)
    if where[0].size:
        centre = [round(float(np.mean(c))) for c in where]
        low, high = np.percentile(where[0], [5, 95])
    else:
        centre = [s // 2 for s in labels.shape]
        low, high = labels.shape[0] * 0.3, labels.shape[0] * 0.7
    axial = sorted({round(v) for v in np.linspace(low, high, n_axial)} | {centre[0]})[: n_axial + 1]
    return [("axial", z) for z in axial] + [("coronal", centre[1]), ("sagittal", centre[2])]


def qc_montage(case: Case, labels: np.ndarray, path: str | Path, title: str = "", n_axial: int = 5) -> Path:
    """Write the montage PNG of ``labels`` (z y x on the case's t1c grid) and return its path."""
    from matplotlib.patches import Patch

    from KiMapLib.plotting import pyplot

    plt = pyplot()
    rows = [name for name in ROW_SEQUENCES if name in case.images][:2]
    order, flips, spacing = lps_axes(case.reference)
    brain = to_lps(case.foreground, order, flips)
    crop = _bounding_box(brain)
    lab = to_lps(labels, order, flips)[crop]
    images = {}
    for name in rows:
        image = to_lps(sitk.GetArrayViewFromImage(case.images[name]), order, flips).astype(np.float32)
        image[~brain] = np.nan  # black outside the brain
        images[name] = image[crop]
    sx, sy, sz = spacing
    views = _views(lab, n_axial)
    fig, axes = plt.subplots(len(rows), len(views), figsize=(2.6 * len(views), 2.9 * len(rows)), squeeze=False)
    for r, name in enumerate(rows):
        low, high = _window(np.nan_to_num(images[name]))
        cmap = plt.get_cmap("gray").with_extremes(bad="black")
        for c, (view, index) in enumerate(views):
            ax = axes[r, c]
            # LPS arrays: x runs to the patient's left, y to posterior, z to superior. Radiological display puts the
            # patient's right on the image's left, anterior and superior at the top.
            if view == "axial":
                image, lb, aspect, letters = images[name][index], lab[index], sy / sx, "APRL"
            elif view == "coronal":
                image, lb, aspect, letters = images[name][::-1, index, :], lab[::-1, index, :], sz / sx, "SIRL"
            else:
                image, lb, aspect, letters = images[name][::-1, :, index], lab[::-1, :, index], sz / sy, "SIAP"
            ax.imshow(image, cmap=cmap, vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
            for value, color in LABEL_COLORS.items():
                if (lb == value).any():
                    ax.contour(lb == value, levels=[0.5], colors=[color], linewidths=0.9)
            h, w = image.shape
            style = {"color": "cyan", "fontsize": 8, "ha": "center", "va": "center"}
            for text, (x, y) in zip(letters, ((w / 2, h * 0.04), (w / 2, h * 0.96), (w * 0.04, h / 2),
                                              (w * 0.96, h / 2)), strict=True):
                ax.text(x, y, text, **style)
            axis = {"axial": 0, "coronal": 1, "sagittal": 2}[view]
            position = _lps_mm(case.reference, axis, index + (crop[axis].start or 0), order, flips)
            ax.set_title(f"{name} {view} {'SAR'[axis]} {position:+.1f} mm", fontsize=8, pad=2)
            ax.set_axis_off()
    ml = float(np.prod(spacing)) / 1000.0
    handles = [Patch(color=LABEL_COLORS[v], label=f"{v} {LABEL_NAMES[v]} ({(labels == v).sum() * ml:.1f} ml)")
               for v in LABEL_NAMES]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97 if title else 1))
    path = Path(path)
    fig.savefig(path, dpi=110, facecolor="white")
    plt.close(fig)
    return path
