"""Neighbouring Grey Tone Difference Matrix features per kernel (pyradiomics ``RadiomicsNGTDM``), numba."""

from __future__ import annotations

import numba as nb
import numpy as np

from KiMapLib.featuremaps.kernels import clear, gather, present_levels, reset_levels

NF = 5


@nb.njit(cache=True, nogil=True)
def run(centers, valid, lev, vals, row, shift, offs, flat, box_size, maxlev, aoff, bounds, out):
    na = aoff.shape[0]
    nmax = min(maxlev, offs.shape[0])
    for blk in range(len(bounds) - 1):
        box_lev = np.zeros(box_size, np.int32)
        box_val = np.zeros(box_size, np.float64)
        cells = np.zeros(offs.shape[0], np.int64)
        lmap = np.zeros(maxlev + 2, np.int64)
        glv = np.zeros(nmax + 1, np.int64)
        ni = np.zeros(nmax, np.float64)
        si = np.zeros(nmax, np.float64)
        pi = np.zeros(nmax, np.float64)
        for c in range(bounds[blk], bounds[blk + 1]):
            n = gather(c, centers, valid, lev, vals, row, shift, offs, flat, box_lev, box_val, cells)
            if n == 0:
                for f in range(NF):
                    out[f, c] = np.nan
                continue
            m = present_levels(box_lev, cells, n, lmap, glv)
            for t in range(n):
                b = cells[t]
                g = box_lev[b]
                count = 0.0
                total = 0.0
                for a in range(na):
                    g2 = box_lev[b + aoff[a]]
                    if g2 > 0:
                        count += 1.0
                        total += g2
                diff = 0.0 if count == 0.0 else abs(float(g) - total / count)
                ni[lmap[g]] += 1.0
                si[lmap[g]] += diff
            nvp = float(n)
            sum_ps = 0.0
            sum_s = 0.0
            for i in range(m):
                pi[i] = ni[i] / nvp
                sum_ps += pi[i] * si[i]
                sum_s += si[i]
            coarse = 1.0 / sum_ps if sum_ps != 0.0 else 1e6
            con = absdiff = cplx = strength = 0.0
            for i in range(m):
                gi = float(glv[i])
                for j in range(m):
                    gj = float(glv[j])
                    dg2 = (gi - gj) ** 2
                    con += pi[i] * pi[j] * dg2
                    absdiff += abs(gi * pi[i] - gj * pi[j])
                    cplx += abs(gi - gj) * (pi[i] * si[i] + pi[j] * si[j]) / (pi[i] + pi[j])
                    strength += (pi[i] + pi[j]) * dg2
            div = float(m * (m - 1))
            con = con * sum_s / nvp / div if div != 0.0 else 0.0
            busy = sum_ps / absdiff if absdiff != 0.0 else 0.0
            strength = strength / sum_s if sum_s != 0.0 else 0.0
            out[0, c] = coarse
            out[1, c] = con
            out[2, c] = busy
            out[3, c] = cplx / nvp
            out[4, c] = strength
            for i in range(m):
                ni[i] = 0.0
                si[i] = 0.0
            reset_levels(lmap, glv, m)
            clear(box_lev, cells, n)
