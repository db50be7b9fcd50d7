"""GLDM/NGTDM neighbourhoods of one kernel by separable 3x3x3 box sums (``distances`` [1]), numba.

Per kernel voxel, NGTDM needs the number and grey-level sum of its 26 neighbours inside the kernel, and GLDM (with
``gldm_a`` 0) the number of those with its own grey level. Each is a 3x3x3 box sum minus the voxel itself, so
three passes of 3-term sums (along i and j over the flat box, along k at the kernel voxels) replace 26 look-ups
per voxel. Count and level sum share one int64 (count << 32 | sum: 27 levels sum below 2^32); the equal-level counts
are 5-bit fields, 12 compact levels per int64 (a field counts at most 27 voxels), one round of passes per 12
levels. Integer sums: exact in any order.
"""

from __future__ import annotations

import numba as nb
import numpy as np

FIELD = 5
PER_WORD = 12  # 12 fields x 5 bits < 63
MASK = (1 << FIELD) - 1
COUNT_SHIFT = 32
LOW = (1 << COUNT_SHIFT) - 1


@nb.njit(cache=True, nogil=True)
def _box_sum(x, a, b, shape):
    """b = the 3x3 sums of x along i and j, slice by slice (``a``: one slice of work; contiguous loops on views
    starting at 0, which the compiler vectorizes). Cells at a pad column get sums across rows, never read at kernel
    voxels; b's pad rows and slices are never written (stay 0)."""
    sk, sj, si = shape
    plane = sj * si
    a_mid = a[1:plane - 1]
    a_prev = a[:plane - 2 * si]  # row j - 1 of b's row j
    a_same = a[si:plane - si]
    a_next = a[2 * si:plane]
    for k in range(1, sk - 1):
        lo = k * plane
        x_left = x[lo:lo + plane - 2]
        x_mid = x[lo + 1:lo + plane - 1]
        x_right = x[lo + 2:lo + plane]
        for p in range(plane - 2):
            a_mid[p] = x_left[p] + x_mid[p] + x_right[p]
        b_row = b[lo + si:lo + plane - si]
        for p in range(plane - 2 * si):
            b_row[p] = a_prev[p] + a_same[p] + a_next[p]


@nb.njit(cache=True, nogil=True)
def neighbour_sums(gbox, box, cells, n, shape, m, with_sum, with_equal, x, a, b, count, total, equal):
    """For the kernel voxels ``cells[:n]``: neighbours inside the kernel (``count``), their grey-level sum
    (``total``; grey levels in ``gbox``), if ``with_sum``; neighbours of the same compact level (``equal``; compact
    levels 1..m in ``box``), if ``with_equal``. The box's pad is 1. ``x``/``b``: int64 work boxes (``x`` zero, left
    zero; ``b`` zero on first use, then only overwritten), ``a``: one int64 slice of work."""
    plane = shape[1] * shape[2]
    rounds = (m + PER_WORD - 1) // PER_WORD if with_equal else 0
    if with_sum:
        for t in range(n):
            p = cells[t]
            x[p] = gbox[p] + (np.int64(1) << COUNT_SHIFT)
        _box_sum(x, a, b, shape)
        for t in range(n):  # along k; minus the voxel itself
            p = cells[t]
            s = b[p - plane] + b[p] + b[p + plane]
            count[t] = (s >> COUNT_SHIFT) - 1
            total[t] = (s & LOW) - gbox[p]
    for r in range(rounds):
        first = r * PER_WORD
        for t in range(n):
            q = box[cells[t]] - 1 - first
            x[cells[t]] = (np.int64(1) << (FIELD * q)) if 0 <= q < PER_WORD else 0
        _box_sum(x, a, b, shape)
        for t in range(n):
            p = cells[t]
            q = box[p] - 1 - first
            if 0 <= q < PER_WORD:
                s = b[p - plane] + b[p] + b[p + plane]
                equal[t] = ((s >> (FIELD * q)) & MASK) - 1
    for t in range(n):
        x[cells[t]] = 0
