"""Kernel geometry: cube/ball offsets, pyradiomics' angles, and the padded local box the numba kernels work in.

Every class kernel copies the neighbourhood of one centre voxel into a small zero-padded box (``box_lev`` holds
grey levels >= 1 on kernel voxels and 0 elsewhere, ``box_val`` the raw intensities), so that neighbour look-ups
are a flat index offset without bounds checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba as nb
import numpy as np

from KiMapLib.features.neighbourhood import ball_offsets


def cube_offsets(radius: int) -> np.ndarray:
    """Offsets (dk, dj, di) of pyradiomics' voxel-based kernel: the cube of half-width ``radius`` voxels, C order."""
    axis = np.arange(-radius, radius + 1)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    return grid.astype(np.int64)


def angles(distances: Sequence[int], bidirectional: bool) -> np.ndarray:
    """pyradiomics' angles (``cmatrices.build_angles``): offsets whose infinity norm is one of ``distances``.

    Generated from (+d, +d, +d) downwards; the mono-directional set is the first half of that order.
    """
    dists = sorted({int(d) for d in distances})
    dmax = max(dists)
    rng = np.arange(dmax, -dmax - 1, -1)
    grid = np.stack(np.meshgrid(rng, rng, rng, indexing="ij"), axis=-1).reshape(-1, 3)
    norm = np.abs(grid).max(axis=1)
    chosen = grid[np.isin(norm, dists)]
    if not bidirectional:
        chosen = chosen[: len(chosen) // 2]
    return chosen.astype(np.int64)


@dataclass(frozen=True)
class Box:
    """The zero-padded local box around a centre voxel."""

    offsets: np.ndarray  # (m, 3) kernel offsets relative to the centre, int64
    flat: np.ndarray  # (m,) flat index of each offset in the box
    shape: tuple[int, int, int]
    pad: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def flat_offsets(self, offs: np.ndarray) -> np.ndarray:
        """Flat box index differences of the given (k, j, i) offsets."""
        _sk, sj, si = self.shape
        offs = np.asarray(offs, dtype=np.int64).reshape(-1, 3)
        return (offs[:, 0] * sj * si + offs[:, 1] * si + offs[:, 2]).astype(np.int64)


def make_box(offsets: np.ndarray, pad: int) -> Box:
    """Box holding ``offsets`` with ``pad`` empty voxels on every side (pad >= the largest neighbour distance)."""
    reach = np.abs(offsets).max(axis=0)
    shape = tuple(int(2 * r + 1 + 2 * pad) for r in reach)
    local = offsets + reach + pad
    flat = local[:, 0] * shape[1] * shape[2] + local[:, 1] * shape[2] + local[:, 2]
    return Box(offsets.astype(np.int64), flat.astype(np.int64), shape, int(pad))


def kernel_offsets(kernel: str, spacing: Sequence[float], kernel_radius: int, ball_radius: float) -> np.ndarray:
    """Offsets of the neighbourhood: pyradiomics' cube or KiMap's ball (``neighbourhood.ball_offsets``)."""
    if kernel == "cube":
        return cube_offsets(kernel_radius)
    return np.asarray(ball_offsets(spacing, ball_radius), dtype=np.int64)


@nb.njit(cache=True, nogil=True)
def gather(c, centers, valid, lev, vals, row, shift, offs, flat, box_lev, xs, cells):
    """Copy the kernel of centre ``c`` into the box (grey levels; raw intensities into ``xs`` in kernel order unless
    ``xs`` is empty); return the number of kernel voxels (listed in ``cells``).

    The volumes are flat and padded by the kernel's reach (see :func:`padded`): ``centers[c]`` is the centre's flat
    index, ``offs`` the kernel's flat index offsets, ``valid``/``vals`` flat, ``lev[row]`` a flat level table. No
    bounds checks and no branches: every offset is written, and counted only where valid."""
    p0 = centers[c]
    lev_r = lev[row[c]]
    s = shift[c]
    values = xs.shape[0] > 0
    n = 0
    for o in range(offs.shape[0]):
        p = p0 + offs[o]
        v = valid[p]
        b = flat[o]
        box_lev[b] = (lev_r[p] - s) * v
        if values:
            xs[n] = vals[p]
        cells[n] = b
        n += v
    return n


def padded(centers: np.ndarray, offs: np.ndarray, valid: np.ndarray, *volumes: np.ndarray):
    """Flat, zero-padded copies for :func:`gather`: (centre flat indices, kernel flat offsets, valid, volumes...).

    Each volume's last three axes are padded (only where a kernel reaches past them, e.g. at the image border), so
    every kernel voxel of every centre lies inside the padded volume (invalid there)."""
    low = np.maximum(-(centers.min(axis=0) + offs.min(axis=0)), 0)
    high = np.maximum(centers.max(axis=0) + offs.max(axis=0) - (np.asarray(valid.shape) - 1), 0)
    widths = [(int(a), int(b)) for a, b in zip(low, high, strict=True)]
    valid_p = np.pad(valid, widths)
    dims = valid_p.shape
    flat_centres = np.ravel_multi_index(tuple((centers + low).T), dims).astype(np.int64)
    flat_offs = (offs[:, 0] * dims[1] * dims[2] + offs[:, 1] * dims[2] + offs[:, 2]).astype(np.int64)
    out = [np.pad(v, [(0, 0)] * (v.ndim - 3) + widths).reshape(*v.shape[:-3], -1) for v in volumes]
    return (flat_centres, flat_offs, valid_p.reshape(-1), *out)


@nb.njit(cache=True, nogil=True)
def gather_compact(c, centers, valid, lev, row, shift, offs, flat, box, cells, lmap, glv, no_vals, no_xs):
    """Copy the kernel of centre ``c`` into the box as compact levels 1..m (``glv[:m]``: the sorted present grey
    levels; ``lmap[level]`` = compact index - 1, reset by the caller); returns (kernel voxels, m).
    ``no_vals``/``no_xs``: placeholders (any flat float64 array / an empty array): intensities are not copied."""
    n = gather(c, centers, valid, lev, no_vals, row, shift, offs, flat, box, no_xs, cells)
    if n == 0:
        return 0, 0
    m = present_levels(box, cells, n, lmap, glv)
    for t in range(n):
        box[cells[t]] = lmap[box[cells[t]]] + 1
    return n, m


@nb.njit(cache=True, nogil=True)
def insertion_sort(a, lo, hi):
    """Sort a[lo:hi] in place (fast for the short runs the kernels sort)."""
    for i in range(lo + 1, hi):
        x = a[i]
        j = i - 1
        while j >= lo and a[j] > x:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = x


@nb.njit(cache=True, nogil=True)
def clear(box_lev, cells, n):
    for t in range(n):
        box_lev[cells[t]] = 0


@nb.njit(cache=True, nogil=True)
def present_levels(box_lev, cells, n, lmap, glv):
    """Sorted grey levels present in the kernel (into ``glv``) and level -> compact index (``lmap``); returns count."""
    lo = 1 << 30
    hi = 0
    for t in range(n):
        g = box_lev[cells[t]]
        lmap[g] = 1
        if g < lo:
            lo = g
        if g > hi:
            hi = g
    m = 0
    for g in range(lo, hi + 1):
        if lmap[g]:
            lmap[g] = m
            glv[m] = g
            m += 1
    return m


@nb.njit(cache=True, nogil=True)
def reset_levels(lmap, glv, m):
    for t in range(m):
        lmap[glv[t]] = 0


def blocks(n: int, parts: int) -> np.ndarray:
    """Boundaries splitting ``n`` centres into ``parts`` contiguous blocks (one per thread)."""
    parts = max(1, min(parts, n))
    return np.linspace(0, n, parts + 1).round().astype(np.int64)
