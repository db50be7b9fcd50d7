"""Grey-level discretization, replicating ``radiomics.imageoperations.getBinEdges``/``binImage`` bit for bit.

Voxel-based (cube) extraction bins once over the whole discretization region. Normal-mode extraction on a ball bins
each ball on its own voxels: with a fixed bin width the edges are multiples of ``binWidth`` starting at the bin of the
ball's minimum, so a ball's levels are the global levels minus a per-ball shift whenever the ball's edges coincide
with the global ones (checked exactly); otherwise the ball gets its own table row.
"""

from __future__ import annotations

import numpy as np

from KiMapLib.errors import KiMapError


def bin_edges(values: np.ndarray, bin_width, bin_count) -> np.ndarray:
    """The edges pyradiomics computes for these values (same dtypes and operations as ``getBinEdges``)."""
    if bin_count is not None:
        edges = np.histogram(values, bin_count)[1]
        edges[-1] += 1
        return edges
    minimum = values.min()
    maximum = values.max()
    low = minimum - (minimum % bin_width)
    high = maximum + 2 * bin_width
    edges = np.arange(low, high, bin_width)
    if len(edges) == 1:
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    return edges


def discretize(values: np.ndarray, bin_width, bin_count) -> tuple[np.ndarray, np.ndarray]:
    """Grey levels (1-based, int32) of ``values`` binned over themselves, and the edges."""
    edges = bin_edges(values, bin_width, bin_count)
    return np.digitize(values, edges).astype(np.int32), edges


def per_ball_levels(region_values: np.ndarray, ball_minima: np.ndarray, bin_width,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Level table rows, row index and shift per ball for fixed-bin-width normal-mode discretization.

    ``region_values``: values (original dtype) of every voxel a ball may contain; ``ball_minima``: each ball's
    minimum (same dtype). Returns ``(table, row, shift)`` with the ball level of voxel v = ``table[row, v] - shift``.
    """
    global_edges = bin_edges(region_values, bin_width, None)
    top = region_values.max() + 2 * bin_width
    global_levels = np.digitize(region_values, global_edges).astype(np.int32)
    minima, inverse = np.unique(ball_minima, return_inverse=True)
    lows = minima - (minima % bin_width)  # the same array operation pyradiomics applies to a scalar minimum
    rows = [global_levels]
    row_of = np.zeros(len(minima), dtype=np.int32)
    shift_of = np.zeros(len(minima), dtype=np.int32)
    for u, low in enumerate(lows):
        edges = np.arange(low, top, bin_width)
        k = int(np.searchsorted(global_edges, edges[0]))
        aligned = (edges.dtype == global_edges.dtype and k + len(edges) <= len(global_edges)
                   and np.array_equal(edges, global_edges[k:k + len(edges)]))
        if aligned:
            shift_of[u] = k
        else:
            row_of[u] = len(rows)
            rows.append(np.digitize(region_values, edges).astype(np.int32))
    return np.stack(rows), row_of[inverse.ravel()], shift_of[inverse.ravel()]


def check_bins(levels: np.ndarray, name: str = "image") -> None:
    if levels.size and levels.max() > 100_000:
        raise KiMapError(f"discretization gives {int(levels.max())} grey levels", input_name=name,
                         hint="use a larger binWidth (or binCount) for this intensity range")
