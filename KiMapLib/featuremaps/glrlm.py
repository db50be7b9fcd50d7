"""Grey Level Run Length Matrix features per kernel (pyradiomics ``RadiomicsGLRLM``), numba.

Runs follow pyradiomics' C code: along each of the 13 mono-directional angles, runs of equal grey level are cut by
voxels outside the kernel; an angle whose lines all hold at most one kernel voxel is emptied ("2D for this angle").
Features are averaged over angles with runs (pyradiomics' ``nanmean``); with ``weightingNorm`` the angles are summed.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from KiMapLib.featuremaps.kernels import clear, gather, present_levels, reset_levels

EPS = np.spacing(1)
NF = 16


@nb.njit(cache=True, nogil=True)
def _multi_element(box_lev, cells, n, dk, dj, di, shape, pad):
    """True if some line along (dk, dj, di) holds two kernel voxels (not necessarily adjacent)."""
    sk, sj, si = shape
    for t in range(n):
        b = cells[t]
        k = b // (sj * si)
        j = (b // si) % sj
        i = b % si
        while True:
            k += dk
            j += dj
            i += di
            if k < pad or k >= sk - pad or j < pad or j >= sj - pad or i < pad or i >= si - pad:
                break
            if box_lev[(k * sj + j) * si + i] > 0:
                return True
    return False


@nb.njit(cache=True, nogil=True)
def _features(P, m, maxl, glv, pr, pg, res):
    nr = 0.0
    for g in range(m):
        pg[g] = 0.0
    for ln in range(1, maxl + 1):
        pr[ln] = 0.0
    for g in range(m):
        for ln in range(1, maxl + 1):
            v = P[g, ln]
            pg[g] += v
            pr[ln] += v
            nr += v
    if nr == 0.0:
        return False
    sre = lre = rln = np_ = 0.0
    for ln in range(1, maxl + 1):
        v = pr[ln]
        if v == 0.0:
            continue
        lf = float(ln)
        sre += v / (lf * lf)
        lre += v * lf * lf
        rln += v * v
        np_ += v * lf
    gln = lgl = hgl = 0.0
    for g in range(m):
        v = pg[g]
        if v == 0.0:
            continue
        gf = float(glv[g])
        gln += v * v
        lgl += v / (gf * gf)
        hgl += v * gf * gf
    ui = 0.0
    for g in range(m):
        ui += pg[g] / nr * glv[g]
    glvar = 0.0
    for g in range(m):
        glvar += pg[g] / nr * (glv[g] - ui) ** 2
    uj = 0.0
    for ln in range(1, maxl + 1):
        uj += pr[ln] / nr * ln
    rv = 0.0
    for ln in range(1, maxl + 1):
        rv += pr[ln] / nr * (ln - uj) ** 2
    ent = srlg = srhg = lrlg = lrhg = 0.0
    for g in range(m):
        gf = float(glv[g])
        g2 = gf * gf
        for ln in range(1, maxl + 1):
            v = P[g, ln]
            if v == 0.0:
                continue
            lf = float(ln)
            l2 = lf * lf
            q = v / nr
            ent -= q * np.log2(q + EPS)
            srlg += v / (g2 * l2)
            srhg += v * g2 / l2
            lrlg += v * l2 / g2
            lrhg += v * l2 * g2
    res[0] = sre / nr
    res[1] = lre / nr
    res[2] = gln / nr
    res[3] = gln / (nr * nr)
    res[4] = rln / nr
    res[5] = rln / (nr * nr)
    res[6] = nr / np_
    res[7] = glvar
    res[8] = rv
    res[9] = ent
    res[10] = lgl / nr
    res[11] = hgl / nr
    res[12] = srlg / nr
    res[13] = srhg / nr
    res[14] = lrlg / nr
    res[15] = lrhg / nr
    return True


@nb.njit(cache=True, nogil=True)
def run(centers, valid, lev, vals, row, shift, offs, flat, box_shape, pad, maxlev, ang, aoff, weights, bounds, out):
    na = aoff.shape[0]
    neff = 1 if weights.shape[0] > 0 else na
    nmax = min(maxlev, offs.shape[0])
    box_size = box_shape[0] * box_shape[1] * box_shape[2]
    maxrun = max(box_shape[0], max(box_shape[1], box_shape[2]))
    shp = (box_shape[0], box_shape[1], box_shape[2])
    for blk in range(len(bounds) - 1):
        box_lev = np.zeros(box_size, np.int32)
        box_val = np.zeros(box_size, np.float64)
        cells = np.zeros(offs.shape[0], np.int64)
        lmap = np.zeros(maxlev + 2, np.int64)
        glv = np.zeros(nmax + 1, np.int64)
        P = np.zeros((neff, nmax, maxrun + 1), np.float64)
        run_g = np.zeros(offs.shape[0], np.int64)
        run_l = np.zeros(offs.shape[0], np.int64)
        pr = np.zeros(maxrun + 1, np.float64)
        pg = np.zeros(nmax, np.float64)
        res = np.zeros(NF, np.float64)
        acc = np.zeros(NF, np.float64)
        cnt = np.zeros(NF, np.float64)
        for c in range(bounds[blk], bounds[blk + 1]):
            n = gather(c, centers, valid, lev, vals, row, shift, offs, flat, box_lev, box_val, cells)
            if n == 0:
                for f in range(NF):
                    out[f, c] = np.nan
                continue
            m = present_levels(box_lev, cells, n, lmap, glv)
            maxl = 1
            for a in range(na):
                d = aoff[a]
                e = 0 if neff == 1 else a
                w = weights[a] if neff == 1 else 1.0
                nruns = 0
                multi = False
                for t in range(n):
                    b = cells[t]
                    g = box_lev[b]
                    if box_lev[b - d] == g:
                        continue
                    ln = 1
                    q = b + d
                    while box_lev[q] == g:
                        ln += 1
                        q += d
                    if ln > 1:
                        multi = True
                    run_g[nruns] = lmap[g]
                    run_l[nruns] = ln
                    nruns += 1
                if not multi:
                    multi = _multi_element(box_lev, cells, n, ang[a, 0], ang[a, 1], ang[a, 2], shp, pad)
                if multi:
                    for r in range(nruns):
                        P[e, run_g[r], run_l[r]] += w
                        if run_l[r] > maxl:
                            maxl = run_l[r]
            for f in range(NF):
                acc[f] = 0.0
                cnt[f] = 0.0
            for e in range(neff):
                if _features(P[e], m, maxl, glv, pr, pg, res):
                    for f in range(NF):
                        if not np.isnan(res[f]):
                            acc[f] += res[f]
                            cnt[f] += 1.0
                for g in range(m):
                    for ln in range(1, maxl + 1):
                        P[e, g, ln] = 0.0
            for f in range(NF):
                out[f, c] = acc[f] / cnt[f] if cnt[f] > 0 else np.nan
            reset_levels(lmap, glv, m)
            clear(box_lev, cells, n)
