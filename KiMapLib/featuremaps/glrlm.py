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
def _features(P, eg, el, ne, m, maxl, glv, pr, pg, lt, res):
    """Features of the run matrix P whose non-zero entries are (eg, el)[:ne]; ``lt`` non-empty: integer counts
    (lt[k] = log2(k), so log2(v / nr + eps) is taken as lt[v] - log2(nr): eps shifts the entropy by < 1e-13)."""
    if ne == 0:
        return False
    for g in range(m):
        pg[g] = 0.0
    for ln in range(1, maxl + 1):
        pr[ln] = 0.0
    nr = 0.0
    for t in range(ne):
        v = P[eg[t], el[t]]
        pg[eg[t]] += v
        pr[el[t]] += v
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
    integer = lt.shape[0] > 0
    lnr = np.log2(nr) if integer else 0.0
    ent = srlg = srhg = lrlg = lrhg = 0.0
    for t in range(ne):
        v = P[eg[t], el[t]]
        gf = float(glv[eg[t]])
        g2 = gf * gf
        lf = float(el[t])
        l2 = lf * lf
        q = v / nr
        if integer:
            ent -= q * (lt[int(v)] - lnr)
        else:
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
    """``offs``/``flat`` must list the kernel in increasing box order (any order gives the same runs otherwise)."""
    na = aoff.shape[0]
    neff = 1 if weights.shape[0] > 0 else na
    nmax = min(maxlev, offs.shape[0])
    box_size = box_shape[0] * box_shape[1] * box_shape[2]
    maxrun = max(box_shape[0], max(box_shape[1], box_shape[2]))
    shp = (box_shape[0], box_shape[1], box_shape[2])
    cap = min(nmax * (maxrun + 1), offs.shape[0] * (na if neff == 1 else 1))
    lt = np.zeros(0, np.float64)
    if weights.shape[0] == 0:  # integer run counts: log2 table (a matrix holds at most one run per kernel voxel)
        lt = np.log2(np.maximum(np.arange(offs.shape[0] + 2), 1).astype(np.float64))
    for blk in range(len(bounds) - 1):
        box_lev = np.zeros(box_size, np.int32)
        box_val = np.zeros(box_size, np.float64)
        cells = np.zeros(offs.shape[0], np.int64)
        lmap = np.zeros(maxlev + 2, np.int64)
        glv = np.zeros(nmax + 1, np.int64)
        P = np.zeros((neff, nmax, maxrun + 1), np.float64)
        cg = np.zeros(offs.shape[0], np.int64)
        runlen = np.zeros(box_size, np.int64)
        Pa = np.zeros((nmax, maxrun + 1), np.int64)
        pr = np.zeros(maxrun + 1, np.float64)
        eg = np.zeros((neff, cap), np.int64)
        el = np.zeros((neff, cap), np.int64)
        ne = np.zeros(neff, np.int64)
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
            for t in range(n):
                cg[t] = lmap[box_lev[cells[t]]]
            maxl = 1
            for a in range(na):
                d = aoff[a]
                e = 0 if neff == 1 else a
                w = weights[a] if neff == 1 else 1.0
                # branch-free runs: length of the run ending at each voxel (cells are in increasing box order, so
                # b - d is visited first for d > 0), counted once where the run ends
                maxla = 1
                for x in range(n):
                    t = x if d > 0 else n - 1 - x
                    b = cells[t]
                    g = box_lev[b]
                    ln = (box_lev[b - d] == g) * runlen[b - d] + 1
                    runlen[b] = ln
                    Pa[cg[t], ln] += box_lev[b + d] != g
                    maxla = max(maxla, ln)
                multi = maxla > 1
                if not multi:
                    multi = _multi_element(box_lev, cells, n, ang[a, 0], ang[a, 1], ang[a, 2], shp, pad)
                for g in range(m):
                    for ln in range(1, maxla + 1):
                        v = Pa[g, ln]
                        if v != 0:
                            Pa[g, ln] = 0
                            if multi:
                                if P[e, g, ln] == 0.0:
                                    eg[e, ne[e]] = g
                                    el[e, ne[e]] = ln
                                    ne[e] += 1
                                P[e, g, ln] += w * v
                if multi and maxla > maxl:
                    maxl = maxla
            for f in range(NF):
                acc[f] = 0.0
                cnt[f] = 0.0
            for e in range(neff):
                if _features(P[e], eg[e], el[e], ne[e], m, maxl, glv, pr, pg, lt, res):
                    for f in range(NF):
                        if not np.isnan(res[f]):
                            acc[f] += res[f]
                            cnt[f] += 1.0
                for t in range(ne[e]):
                    P[e, eg[e, t], el[e, t]] = 0.0
                ne[e] = 0
            for f in range(NF):
                out[f, c] = acc[f] / cnt[f] if cnt[f] > 0 else np.nan
            reset_levels(lmap, glv, m)
            clear(box_lev, cells, n)
