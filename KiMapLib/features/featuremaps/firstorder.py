"""First-order features per kernel (pyradiomics ``RadiomicsFirstOrder``), numba."""

from __future__ import annotations

import numba as nb
import numpy as np

from KiMapLib.features.featuremaps.kernels import clear, gather, insertion_sort

EPS = np.spacing(1)
#: Features needing the sorted kernel values / the central moments (the rest is cheap and always computed).
SORTED = frozenset({"Minimum", "10Percentile", "90Percentile", "Maximum", "Median", "InterquartileRange", "Range",
                    "RobustMeanAbsoluteDeviation"})
MOMENTS = frozenset({"MeanAbsoluteDeviation", "Skewness", "Kurtosis", "Variance"})


@nb.njit(cache=True, nogil=True)
def _pairwise(a, n):
    """numpy's pairwise summation of a[:n] (so flat regions give exactly the same mean as numpy)."""
    if n < 8:
        res = 0.0
        for t in range(n):
            res += a[t]
        return res
    if n <= 128:
        r0, r1, r2, r3 = a[0], a[1], a[2], a[3]
        r4, r5, r6, r7 = a[4], a[5], a[6], a[7]
        t = 8
        while t < n - (n % 8):
            r0 += a[t]
            r1 += a[t + 1]
            r2 += a[t + 2]
            r3 += a[t + 3]
            r4 += a[t + 4]
            r5 += a[t + 5]
            r6 += a[t + 6]
            r7 += a[t + 7]
            t += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while t < n:
            res += a[t]
            t += 1
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return _pairwise(a, n2) + _pairwise(a[n2:], n - n2)


@nb.njit(cache=True, nogil=True)
def _percentile(xs, n, q):
    """numpy's 'linear' percentile of the sorted xs[:n]."""
    qq = q / 100.0
    vi = (n - 1) * qq
    lo = np.floor(vi)
    gamma = vi - lo
    i0 = int(lo)
    i1 = i0 + 1
    if i0 < 0:
        i0 = 0
    if i1 > n - 1:
        i1 = n - 1
    if i0 > n - 1:
        i0 = n - 1
    a = xs[i0]
    b = xs[i1]
    d = b - a
    if gamma >= 0.5:
        return b - d * (1.0 - gamma)
    return a + d * gamma


@nb.njit(cache=True, nogil=True)
def _select(a, lo, hi, k):
    """Reorder a[lo:hi] so that a[k] holds the value of rank k there, smaller-or-equal values before it and
    greater-or-equal ones after it (quickselect, Hoare partition around a median of three; ties stay balanced)."""
    while hi - lo > 16:
        x = a[lo]
        y = a[(lo + hi - 1) // 2]
        z = a[hi - 1]
        pivot = max(min(x, y), min(max(x, y), z))
        i = lo
        j = hi - 1
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j + 1
        elif k >= i:
            lo = i
        else:  # j < k < i: a[k] equals the pivot, in place
            return
    insertion_sort(a, lo, hi)


@nb.njit(cache=True, nogil=True)
def _rank_sort(xs, box_lev, cells, n, lo, hi, counts, pos, done, srt):
    """Values in ``srt[:n]`` placed at the ranks the order statistics read (min, max, median, 10/25/75/90th
    percentile; the other positions are only partitioned): a counting sort by grey level (binning is monotone in
    value, so level g holds the ranks pos[g] .. pos[g] + counts[g] - 1), then, within the levels holding those
    ranks, a selection of each rank in increasing order (each from the previous one on: O(level size), not the
    O(size^2) of sorting the level)."""
    acc = 0
    for g in range(lo, hi + 1):
        pos[g] = acc
        acc += int(counts[g])
    for t in range(n):
        g = box_lev[cells[t]]
        srt[pos[g] + done[g]] = xs[t]
        done[g] += 1
    for g in range(lo, hi + 1):
        done[g] = 0
    ranks = np.empty(12, np.int64)
    ranks[0] = 0
    ranks[1] = n - 1
    ranks[2] = n // 2
    ranks[3] = max(n // 2 - 1, 0)
    r = 4
    for q in (10.0, 25.0, 75.0, 90.0):
        i0 = int(np.floor((n - 1) * (q / 100.0)))
        ranks[r] = min(max(i0, 0), n - 1)
        ranks[r + 1] = min(max(i0 + 1, 0), n - 1)
        r += 2
    insertion_sort(ranks, 0, 12)
    g = lo
    start = 0
    for r in range(12):
        k = ranks[r]
        if k < start:  # a repeated rank, already in place
            continue
        while k >= pos[g] + int(counts[g]):
            g += 1
        start = max(start, pos[g])
        _select(srt, start, pos[g] + int(counts[g]), k)
        start = k + 1


@nb.njit(cache=True, nogil=True)
def run(centers, valid, lev, vals, row, shift, offs, flat, box_size, maxlev, vshift, voxel_volume, need_sorted,
        need_moments, bounds, out):
    """``need_sorted`` False: skip the order statistics (minimum, percentiles, maximum, median, IQR, range, robust
    MAD: left NaN); ``need_moments`` False: skip MAD, skewness, kurtosis and variance (left NaN)."""
    for blk in range(len(bounds) - 1):
        box_lev = np.zeros(box_size, np.int32)
        cells = np.zeros(offs.shape[0], np.int64)
        xs = np.zeros(offs.shape[0], np.float64)
        tmp = np.zeros(offs.shape[0], np.float64)
        srt = np.zeros(offs.shape[0], np.float64)
        counts = np.zeros(maxlev + 2, np.float64)
        pos = np.zeros(maxlev + 2, np.int64)
        done = np.zeros(maxlev + 2, np.int64)
        for c in range(bounds[blk], bounds[blk + 1]):
            n = gather(c, centers, valid, lev, vals, row, shift, offs, flat, box_lev, xs, cells)
            if n == 0:
                for f in range(out.shape[0]):
                    out[f, c] = np.nan
                continue
            lo = 1 << 30
            hi = 0
            for t in range(n):
                g = box_lev[cells[t]]
                counts[g] += 1.0
                lo = min(lo, g)
                hi = max(hi, g)
            # energy / RMS with voxelArrayShift
            for t in range(n):
                x = xs[t] + vshift
                tmp[t] = x * x
            energy = _pairwise(tmp, n)
            # histogram entropy / uniformity
            ent = 0.0
            uni = 0.0
            for g in range(lo, hi + 1):
                if counts[g] > 0:
                    p = counts[g] / n
                    ent -= p * np.log2(p + EPS)
                    uni += p * p
            mean = _pairwise(xs, n) / n
            out[0, c] = energy
            out[1, c] = energy * voxel_volume
            out[2, c] = ent
            out[7, c] = mean
            out[13, c] = np.sqrt(energy / n)
            out[17, c] = uni
            if need_moments:
                for t in range(n):
                    tmp[t] = np.abs(xs[t] - mean)
                mad = _pairwise(tmp, n) / n
                for t in range(n):
                    x = xs[t] - mean
                    tmp[t] = x * x
                m2 = _pairwise(tmp, n) / n
                for t in range(n):
                    x = xs[t] - mean
                    tmp[t] = x * x * x
                m3 = _pairwise(tmp, n) / n
                for t in range(n):
                    x = xs[t] - mean
                    x2 = x * x
                    tmp[t] = x2 * x2
                m4 = _pairwise(tmp, n) / n
                # nanstd(...) ** 2 as pyradiomics: sqrt then square
                std = np.sqrt(m2)
                variance = std * std
                if m2 == 0.0:
                    m2 = 1.0
                out[11, c] = mad
                out[14, c] = m3 / m2 ** 1.5
                out[15, c] = m4 / (m2 * m2)
                out[16, c] = variance
            if need_sorted:
                _rank_sort(xs, box_lev, cells, n, lo, hi, counts, pos, done, srt)
                p10 = _percentile(srt, n, 10.0)
                p90 = _percentile(srt, n, 90.0)
                p25 = _percentile(srt, n, 25.0)
                p75 = _percentile(srt, n, 75.0)
                median = srt[n // 2] if n % 2 == 1 else (srt[n // 2 - 1] + srt[n // 2]) / 2.0
                # robust MAD over values within [p10, p90] (kernel order, as numpy's masked nanmean)
                m = 0
                for t in range(n):
                    if xs[t] >= p10 and xs[t] <= p90:
                        tmp[m] = xs[t]
                        m += 1
                if m > 0:
                    rmean = _pairwise(tmp, m) / m
                    for t in range(m):
                        tmp[t] = np.abs(tmp[t] - rmean)
                    rmad = _pairwise(tmp, m) / m
                else:
                    rmad = np.nan
                out[3, c] = srt[0]
                out[4, c] = p10
                out[5, c] = p90
                out[6, c] = srt[n - 1]
                out[8, c] = median
                out[9, c] = p75 - p25
                out[10, c] = srt[n - 1] - srt[0]
                out[12, c] = rmad
            for g in range(lo, hi + 1):
                counts[g] = 0.0
            clear(box_lev, cells, n)
