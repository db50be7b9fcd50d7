"""Grey Level Run Length Matrix features per kernel (pyradiomics ``RadiomicsGLRLM``), numba.

Runs follow pyradiomics' C code: along each of the 13 mono-directional angles, runs of equal grey level are cut by
voxels outside the kernel; an angle whose lines all hold at most one kernel voxel is emptied ("2D for this angle").
Features are averaged over angles with runs (pyradiomics' ``nanmean``); with ``weightingNorm`` the angles are summed.
The runs themselves are counted by :mod:`KiMapLib.features.featuremaps.texture`.
"""

from __future__ import annotations

import numba as nb
import numpy as np

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
def _store(res, nr, sre, lre, gln, rln, np_, glvar, rv, ent, lgl, hgl, srlg, srhg, lrlg, lrhg):
    """The 16 features in ``names.FEATURES`` order from a matrix's sums (``glvar``, ``rv`` and ``ent`` final, the
    rest divided by the number of runs ``nr`` here)."""
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
        dg = glv[g] - ui
        glvar += pg[g] / nr * dg * dg
    uj = 0.0
    for ln in range(1, maxl + 1):
        uj += pr[ln] / nr * ln
    rv = 0.0
    for ln in range(1, maxl + 1):
        dl = ln - uj
        rv += pr[ln] / nr * dl * dl
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
    _store(res, nr, sre, lre, gln, rln, np_, glvar, rv, ent, lgl, hgl, srlg, srhg, lrlg, lrhg)
    return True


#: Features that need a pass over the matrix entries (the rest come from the per-level and per-length sums).
ENTRY_FEATURES = frozenset({"RunEntropy", "ShortRunLowGrayLevelEmphasis", "ShortRunHighGrayLevelEmphasis",
                            "LongRunLowGrayLevelEmphasis", "LongRunHighGrayLevelEmphasis"})


def needs_entries(names) -> bool:
    return bool(ENTRY_FEATURES & set(names))


@nb.njit(cache=True, nogil=True)
def _angle_counts(pa, stride, top, m, glv, ig2, inv_sq, pr, pg, lt, entries, res):
    """Features of one angle's integer run counts ``pa[g * stride + length]`` (reset here), in one pass over the
    counts: per-level and per-length sums, and (``entries``) the entropy and the four joint emphases; their terms
    use the reciprocal tables ``ig2`` (1 / level^2) and ``inv_sq`` (1 / length^2) instead of divisions."""
    for ln in range(1, top + 1):
        pr[ln] = 0.0
    nr = 0.0
    vlog = srlg = srhg = lrlg = lrhg = 0.0
    for g in range(m):
        row = g * stride
        total = 0.0
        if entries:
            gf = float(glv[g])
            g2 = gf * gf
            low = high = 0.0  # sums over lengths of v / l^2 and v l^2
            for ln in range(1, top + 1):
                v = pa[row + ln]
                if v != 0:
                    pa[row + ln] = 0
                    vf = float(v)
                    total += vf
                    pr[ln] += vf
                    vlog += vf * lt[v]
                    low += vf * inv_sq[ln]
                    high += vf * float(ln * ln)
            srlg += low * ig2[g]
            srhg += low * g2
            lrlg += high * ig2[g]
            lrhg += high * g2
        else:
            for ln in range(1, top + 1):
                v = pa[row + ln]
                if v != 0:
                    pa[row + ln] = 0
                    total += float(v)
                    pr[ln] += float(v)
        pg[g] = total
        nr += total
    sre = lre = rln = np_ = 0.0
    for ln in range(1, top + 1):
        v = pr[ln]
        lf = float(ln)
        sre += v * inv_sq[ln]
        lre += v * lf * lf
        rln += v * v
        np_ += v * lf
    gln = lgl = hgl = ui = 0.0
    for g in range(m):
        v = pg[g]
        gf = float(glv[g])
        gln += v * v
        lgl += v * ig2[g]
        hgl += v * gf * gf
        ui += v * gf
    ui /= nr
    glvar = 0.0
    for g in range(m):
        dg = glv[g] - ui
        glvar += pg[g] * dg * dg
    uj = np_ / nr
    rv = 0.0
    for ln in range(1, top + 1):
        dl = ln - uj
        rv += pr[ln] * dl * dl
    if entries:
        _store(res, nr, sre, lre, gln, rln, np_, glvar / nr, rv / nr, np.log2(nr) - vlog / nr, lgl, hgl, srlg, srhg,
               lrlg, lrhg)
    else:
        _store(res, nr, sre, lre, gln, rln, np_, glvar / nr, rv / nr, np.nan, lgl, hgl, np.nan, np.nan, np.nan, np.nan)


@nb.njit(cache=True, nogil=True)
def finish(box, cells, n, shape, pad, rang, Pa, stride, maxla, m, weights, P, eg, el, ne, glv, pr, pg, lt, ig2, inv_sq,
           entries, res, acc, accn, out, base, c):
    """Features from the per-angle run counts ``Pa[r, g * stride + length]`` (reset here) of one kernel.

    An angle whose longest run is 1 and whose lines all hold at most one kernel voxel is dropped (pyradiomics'
    "2D for this angle"); ``weights`` non-empty: the angles are summed with these weights into one matrix.
    ``entries``: the features of ``ENTRY_FEATURES`` are wanted (unweighted only; else they are NaN)."""
    nrun = rang.shape[0]
    if weights.shape[0] == 0:  # angles averaged: each angle's features straight from its integer counts
        for g in range(m):
            ig2[g] = 1.0 / (float(glv[g]) * float(glv[g]))
        for f in range(NF):
            acc[f] = 0.0
            accn[f] = 0.0
        for a in range(nrun):
            top = maxla[a]
            maxla[a] = 1
            if top > 1 or _multi_element(box, cells, n, rang[a, 0], rang[a, 1], rang[a, 2], shape, pad):
                _angle_counts(Pa[a], stride, top, m, glv, ig2, inv_sq, pr, pg, lt, entries, res)
                for f in range(NF):
                    if not np.isnan(res[f]):
                        acc[f] += res[f]
                        accn[f] += 1.0
            else:
                for g in range(m):
                    Pa[a, g * stride + 1] = 0
        for f in range(NF):
            out[base + f, c] = acc[f] / accn[f] if accn[f] > 0 else np.nan
        return
    maxl = 1  # weighted: the angles summed into one matrix P[0]
    for a in range(nrun):
        w = weights[a]
        top = maxla[a]
        multi = top > 1 or _multi_element(box, cells, n, rang[a, 0], rang[a, 1], rang[a, 2], shape, pad)
        for g in range(m):
            for ln in range(1, top + 1):
                v = Pa[a, g * stride + ln]
                if v != 0:
                    Pa[a, g * stride + ln] = 0
                    if multi:
                        if P[0, g, ln] == 0.0:
                            eg[0, ne[0]] = g
                            el[0, ne[0]] = ln
                            ne[0] += 1
                        P[0, g, ln] += w * v
        if multi and top > maxl:
            maxl = top
        maxla[a] = 1
    ok = _features(P[0], eg[0], el[0], ne[0], m, maxl, glv, pr, pg, lt, res)
    for t in range(ne[0]):
        P[0, eg[0, t], el[0, t]] = 0.0
    ne[0] = 0
    for f in range(NF):
        out[base + f, c] = res[f] if ok else np.nan
