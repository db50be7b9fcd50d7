"""Grey Level Co-occurrence Matrix features per kernel (pyradiomics ``RadiomicsGLCM``), numba.

Per angle the matrix is built on the kernel's present grey levels only (absent levels are zero rows and change no
feature except through ``Ng`` in Idmn/Idn and the matrix size in MCC, both passed in). Features are averaged over the
kernel's non-empty angles, as pyradiomics' ``nanmean`` after deleting empty angles; a kernel without any pair is NaN.
MCC uses the symmetric similarity transform of pyradiomics' Q (same eigenvalues, real arithmetic).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from KiMapLib.featuremaps.kernels import clear, gather, present_levels, reset_levels

EPS = np.spacing(1)
NF = 24
IMC2_TIE = 0.0


@nb.njit(cache=True, nogil=True)
def _mcc(ei, ej, ev, nnz, m, px, py, mdim, ridx, mat, start, fill, order):
    """sqrt of the 2nd largest eigenvalue of Q, via the similar symmetric matrix D^-1/2 P Dy^-1 P^T D^-1/2."""
    if mdim < 2:
        return 1.0
    r = 0
    for i in range(m):
        if px[i] > 0:
            ridx[i] = r
            r += 1
        else:
            ridx[i] = -1
    for a in range(r):
        for b in range(r):
            mat[a, b] = 0.0
    # entries sharing a column k contribute P[a,k] P[b,k] / py[k]: bucket the entries by column
    for k in range(m + 1):
        start[k] = 0
    for t in range(nnz):
        start[ej[t] + 1] += 1
    for k in range(m):
        start[k + 1] += start[k]
    for k in range(m):
        fill[k] = start[k]
    for t in range(nnz):
        k = ej[t]
        order[fill[k]] = t
        fill[k] += 1
    for k in range(m):
        for x in range(start[k], start[k + 1]):
            t = order[x]
            a = ridx[ei[t]]
            q = ev[t] / py[k]
            for y in range(start[k], start[k + 1]):
                u = order[y]
                mat[a, ridx[ei[u]]] += q * ev[u]
    for i in range(m):
        if ridx[i] >= 0:
            for j in range(m):
                if ridx[j] >= 0:
                    mat[ridx[i], ridx[j]] /= np.sqrt(px[i] * px[j])
    zeros = mdim - r
    lam = 0.0
    if r >= 2:
        w = np.linalg.eigvalsh(mat[:r, :r].copy())
        lam = w[r - 2]
    if zeros > 0 and lam < 0.0:
        lam = 0.0
    if lam < 0.0:
        lam = 0.0
    return np.sqrt(lam)


@nb.njit(cache=True, nogil=True)
def _entropy_pairs(px, py, m, su, sv):
    """-sum_ij px_i py_j log2(px_i py_j + eps), grouping equal marginal values (exact up to summation order)."""
    nu = 0
    for i in range(m):
        if px[i] > 0:
            su[nu] = px[i]
            nu += 1
    nv = 0
    for i in range(m):
        if py[i] > 0:
            sv[nv] = py[i]
            nv += 1
    a = np.sort(su[:nu])
    b = np.sort(sv[:nv])
    h = 0.0
    i = 0
    while i < nu:
        ci = 1
        while i + ci < nu and a[i + ci] == a[i]:
            ci += 1
        j = 0
        while j < nv:
            cj = 1
            while j + cj < nv and b[j + cj] == b[j]:
                cj += 1
            q = a[i] * b[j]
            h -= ci * cj * q * np.log2(q + EPS)
            j += cj
        i += ci
    return h


@nb.njit(cache=True, nogil=True)
def _angle_features(ei, ej, ev, nnz, m, glv, ng, mdim, do_mcc, px, py, psub, padd, su, sv, ridx, mat, start, fill,
                    order, res):
    """Features of one normalized matrix given by its non-zero entries (ei, ej, ev) into res."""
    for i in range(m):
        px[i] = 0.0
        py[i] = 0.0
    for t in range(nnz):
        px[ei[t]] += ev[t]
        py[ej[t]] += ev[t]
    ux = 0.0
    uy = 0.0
    for i in range(m):
        ux += glv[i] * px[i]
        uy += glv[i] * py[i]
    lo = glv[0]
    hi = glv[m - 1]
    for k in range(hi - lo + 1):
        psub[k] = 0.0
    for k in range(2 * lo, 2 * hi + 1):
        padd[k] = 0.0
    ac = cp = cs = ct = con = corm = sx2 = sy2 = ene = hxy = hxy1 = 0.0
    maxp = 0.0
    for t in range(nnz):
        v = ev[t]
        i = ei[t]
        j = ej[t]
        gi = float(glv[i])
        gj = float(glv[j])
        ac += v * gi * gj
        d = gi + gj - ux - uy
        d2 = d * d
        ct += v * d2
        cs += v * d2 * d
        cp += v * d2 * d2
        con += v * (gi - gj) ** 2
        corm += v * (gi - ux) * (gj - uy)
        sx2 += v * (gi - ux) ** 2
        sy2 += v * (gj - uy) ** 2
        ene += v * v
        hxy -= v * np.log2(v + EPS)
        hxy1 -= v * np.log2(px[i] * py[j] + EPS)
        if v > maxp:
            maxp = v
        psub[abs(glv[i] - glv[j])] += v
        padd[glv[i] + glv[j]] += v
    hx = 0.0
    hy = 0.0
    for i in range(m):
        if px[i] > 0:
            hx -= px[i] * np.log2(px[i] + EPS)
        if py[i] > 0:
            hy -= py[i] * np.log2(py[i] + EPS)
    hxy2 = _entropy_pairs(px, py, m, su, sv)
    da = de = dv = idm = idmn = idd = idn = iv = 0.0
    ngf = float(ng)
    for k in range(hi - lo + 1):
        v = psub[k]
        if v == 0.0:
            continue
        kf = float(k)
        da += kf * v
        de -= v * np.log2(v + EPS)
        idm += v / (1.0 + kf * kf)
        idmn += v / (1.0 + (kf * kf) / (ngf * ngf))
        idd += v / (1.0 + kf)
        idn += v / (1.0 + kf / ngf)
        if k > 0:
            iv += v / (kf * kf)
    for k in range(hi - lo + 1):
        v = psub[k]
        if v != 0.0:
            dv += v * (k - da) ** 2
    sa = se = 0.0
    for k in range(2 * lo, 2 * hi + 1):
        v = padd[k]
        if v != 0.0:
            sa += k * v
            se -= v * np.log2(v + EPS)
    sx = np.sqrt(sx2)
    sy = np.sqrt(sy2)
    corr = 1.0 if sx * sy == 0.0 else corm / (sx * sy + EPS)
    div = max(hx, hy)
    imc1 = (hxy - hxy1) / div if div != 0.0 else 0.0
    if abs(hxy2 - hxy) <= 1e-12 * max(1.0, hxy):  # independent matrix: exactly 0, up to rounding
        imc2 = IMC2_TIE
    else:
        t = 1.0 - np.exp(-2.0 * (hxy2 - hxy))
        imc2 = np.sqrt(t) if t >= 0.0 else np.nan
    res[0] = ac
    res[1] = ux
    res[2] = cp
    res[3] = cs
    res[4] = ct
    res[5] = con
    res[6] = corr
    res[7] = da
    res[8] = de
    res[9] = dv
    res[10] = ene
    res[11] = hxy
    res[12] = imc1
    res[13] = imc2
    res[14] = idm
    res[15] = idmn
    res[16] = idd
    res[17] = idn
    res[18] = iv
    res[19] = maxp
    res[20] = sa
    res[21] = se
    res[22] = sx2
    res[23] = _mcc(ei, ej, ev, nnz, m, px, py, mdim, ridx, mat, start, fill, order) if do_mcc else np.nan


@nb.njit(cache=True, nogil=True)
def run(centers, valid, lev, vals, row, shift, offs, flat, box_size, maxlev, aoff, weights, symmetric,
        ng_global, mdim_global, do_mcc, bounds, out):
    """``weights`` empty: per-angle matrices; else one weighted sum. ``ng_global``/``mdim_global`` <= 0: per kernel."""
    na = aoff.shape[0]
    neff = 1 if weights.shape[0] > 0 else na
    nmax = min(maxlev, offs.shape[0])
    cap = min(nmax * nmax, offs.shape[0] * na)
    for blk in range(len(bounds) - 1):
        box_lev = np.zeros(box_size, np.int32)
        box_val = np.zeros(box_size, np.float64)
        cells = np.zeros(offs.shape[0], np.int64)
        lmap = np.zeros(maxlev + 2, np.int64)
        glv = np.zeros(nmax + 1, np.int64)
        P = np.zeros((neff, nmax, nmax), np.float64)
        S = np.zeros((nmax, nmax), np.float64)
        li = np.zeros((neff, cap), np.int64)
        lj = np.zeros((neff, cap), np.int64)
        ln = np.zeros(neff, np.int64)
        ei = np.zeros(2 * cap, np.int64)
        ej = np.zeros(2 * cap, np.int64)
        ev = np.zeros(2 * cap, np.float64)
        px = np.zeros(nmax, np.float64)
        py = np.zeros(nmax, np.float64)
        su = np.zeros(nmax, np.float64)
        sv = np.zeros(nmax, np.float64)
        psub = np.zeros(maxlev + 2, np.float64)
        padd = np.zeros(2 * maxlev + 3, np.float64)
        ridx = np.zeros(nmax, np.int64)
        mat = np.zeros((nmax, nmax), np.float64)
        start = np.zeros(nmax + 2, np.int64)
        fill = np.zeros(nmax + 1, np.int64)
        order = np.zeros(2 * cap, np.int64)
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
            for a in range(na):
                e = 0 if neff == 1 else a
                w = weights[a] if neff == 1 else 1.0
                d = aoff[a]
                for t in range(n):
                    b = cells[t]
                    g2 = box_lev[b + d]
                    if g2 > 0:
                        i = lmap[box_lev[b]]
                        j = lmap[g2]
                        if P[e, i, j] == 0.0:
                            li[e, ln[e]] = i
                            lj[e, ln[e]] = j
                            ln[e] += 1
                        P[e, i, j] += w
            ng = ng_global if ng_global > 0 else glv[m - 1]
            mdim = mdim_global if mdim_global > 0 else m
            for f in range(NF):
                acc[f] = 0.0
                cnt[f] = 0.0
            for e in range(neff):
                nnz = 0
                total = 0.0
                for t in range(ln[e]):
                    i = li[e, t]
                    j = lj[e, t]
                    if symmetric:
                        if S[i, j] == 0.0:
                            v = P[e, i, j] + P[e, j, i]
                            S[i, j] = v
                            ei[nnz] = i
                            ej[nnz] = j
                            ev[nnz] = v
                            nnz += 1
                            total += v
                            if i != j and S[j, i] == 0.0:
                                S[j, i] = v
                                ei[nnz] = j
                                ej[nnz] = i
                                ev[nnz] = v
                                nnz += 1
                                total += v
                    else:
                        v = P[e, i, j]
                        ei[nnz] = i
                        ej[nnz] = j
                        ev[nnz] = v
                        nnz += 1
                        total += v
                for t in range(ln[e]):
                    P[e, li[e, t], lj[e, t]] = 0.0
                ln[e] = 0
                for t in range(nnz):
                    S[ei[t], ej[t]] = 0.0
                if total > 0.0:
                    for t in range(nnz):
                        ev[t] /= total
                    _angle_features(ei, ej, ev, nnz, m, glv, ng, mdim, do_mcc, px, py, psub, padd, su, sv, ridx,
                                    mat, start, fill, order, res)
                    for f in range(NF):
                        if not np.isnan(res[f]):
                            acc[f] += res[f]
                            cnt[f] += 1.0
            for f in range(NF):
                out[f, c] = acc[f] / cnt[f] if cnt[f] > 0 else np.nan
            reset_levels(lmap, glv, m)
            clear(box_lev, cells, n)
