"""One pass per kernel for the five texture classes (GLCM, GLRLM, GLSZM, GLDM, NGTDM), numba.

The kernel is copied once into a zero-padded box of compact grey levels (1..m, 0 outside the kernel). From that box,
one scan per mono-directional angle counts the GLCM pairs (v, v + d) branch-free; one scan per voxel sums its GLDM
dependence and NGTDM neighbourhood over its neighbours (in registers); one scan per distance-1 angle extends the GLRLM
runs in box order; GLSZM's zones are a flood fill of the same box. The per-class modules then turn the counts into
pyradiomics' features.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from KiMapLib.features.featuremaps import glcm, gldm, glrlm, glszm, ngtdm
from KiMapLib.features.featuremaps.kernels import clear, gather_compact, reset_levels
from KiMapLib.features.featuremaps.neighbour_sums import neighbour_sums

#: Classes of this pass and their first row in its output (rows in ``names.FEATURES`` order).
CLASSES = ("glcm", "glrlm", "glszm", "gldm", "ngtdm")
SIZES = (glcm.NF, glrlm.NF, glszm.NF, gldm.NF, ngtdm.NF)
BASE = tuple(int(x) for x in np.cumsum((0, *SIZES))[:-1])
ROWS = int(sum(SIZES))


@nb.njit(cache=True, nogil=True)
def run(centers, valid, lev, row, shift, offs, flat, box_shape, pad, maxlev, cmoff, nboff, runoff, run_angles, zoff,
        cm_weights, run_weights, symmetric, ng_global, mdim_global, cm_need, run_entries, alpha, separable, want,
        bounds, out):
    """Texture features of the centres ``bounds[0]..bounds[-1]`` into ``out[ROWS, centres]``.

    ``cmoff``: flat box offsets (all > 0) of the mono-directional angles at ``distances`` (GLCM matrices);
    ``nboff``: the same both ways (GLDM and NGTDM neighbours); ``runoff``: those of the distance-1 angles (GLRLM,
    whose (dk, dj, di) are ``run_angles``).
    ``want``: compute flags per class of ``CLASSES``; ``cm_need``: the GLCM feature groups (``glcm.needs``);
    ``run_entries``: GLRLM features of ``glrlm.ENTRY_FEATURES`` are wanted.
    ``separable``: ``nboff`` is the 26-neighbourhood and ``alpha`` 0: GLDM/NGTDM sums by :mod:`neighbour_sums`.
    ``offs``/``flat`` list the kernel in increasing box order (GLRLM's runs need it)."""
    nk = offs.shape[0]
    ncm = cmoff.shape[0]
    nrun = runoff.shape[0]
    nmax = min(maxlev, nk)
    sh = 1  # GLCM cells (i, j) at (i << sh) | j: shifts, not divisions, recover i and j
    while (1 << sh) < nmax + 1:
        sh += 1
    stride = 1 << sh
    box_size = box_shape[0] * box_shape[1] * box_shape[2]
    maxrun = max(box_shape[0], max(box_shape[1], box_shape[2]))
    shp = (box_shape[0], box_shape[1], box_shape[2])
    want_cm, want_run, want_zone, want_dep, want_ngt = want[0], want[1], want[2], want[3], want[4]
    neff_cm = 1 if cm_weights.shape[0] > 0 else max(ncm, 1)
    weighted_run = run_weights.shape[0] > 0  # GLRLM angles summed into one matrix (else averaged from counts)
    # log2 table of integer counts, for unweighted matrices (both weight sets come from weightingNorm): a GLCM holds
    # at most 2 x kernel size pairs, a GLRLM at most one run per kernel voxel
    lt = np.zeros(0, np.float64)
    if cm_weights.shape[0] == 0:
        lt = np.log2(np.maximum(np.arange(2 * nk + 2), 1).astype(np.float64))
    cap = min(nmax * nmax, nk * (ncm if neff_cm == 1 else 1))  # entries of one matrix (symmetric: upper triangle)
    rcap = min(nmax * (maxrun + 1), nk * nrun) if weighted_run else 1
    # 1 / x^2 of run lengths (GLRLM) and zone sizes (GLSZM): multiplications instead of divisions
    inv_sq = 1.0 / np.maximum(np.arange(max(nk, maxrun) + 1), 1).astype(np.float64) ** 2
    for blk in range(len(bounds) - 1):
        box = np.zeros(box_size, np.int32)
        gbox = np.zeros(box_size if want_dep or want_ngt else 1, np.int32)  # grey levels (0 outside)
        no_vals = np.zeros(1, np.float64)
        no_xs = np.zeros(0, np.float64)
        cells = np.zeros(nk, np.int64)
        lmap = np.zeros(maxlev + 2, np.int64)
        glv = np.zeros(nmax + 1, np.int64)
        glz = np.zeros(nmax + 2, np.int64)  # level of compact index (0: outside -> 0)
        # GLCM
        cnt = np.zeros((max(ncm, 1), stride * stride if want_cm else 1), np.int32)
        lst = np.zeros((max(ncm, 1), nk + 1 if want_cm else 1), np.int64)
        ln = np.zeros(max(ncm, 1), np.int64)
        F = np.zeros((nmax, nmax), np.float64)
        li = np.zeros(cap, np.int64)
        lj = np.zeros(cap, np.int64)
        ei = np.zeros(cap, np.int64)
        ej = np.zeros(cap, np.int64)
        ev = np.zeros(cap, np.float64)
        ec = np.zeros(cap, np.float64)
        em = np.zeros(cap, np.float64)
        px = np.zeros(nmax, np.float64)
        py = np.zeros(nmax, np.float64)
        pxc = np.zeros(nmax, np.float64)
        pyc = np.zeros(nmax, np.float64)
        su = np.zeros(nmax, np.float64)
        sv = np.zeros(nmax, np.float64)
        psub = np.zeros(maxlev + 2, np.float64)
        padd = np.zeros(2 * maxlev + 3, np.float64)
        ridx = np.zeros(nmax, np.int64)
        mat = np.zeros((nmax, nmax) if cm_need & glcm.NEED_MCC else (1, 1), np.float64)
        start = np.zeros(nmax + 2, np.int64)
        fill = np.zeros(nmax + 1, np.int64)
        order = np.zeros(cap + nmax + 2, np.int64)
        # GLRLM
        runlen = np.zeros((max(nrun, 1), box_size if want_run else 1), np.int32)
        Pa = np.zeros((max(nrun, 1), nmax * (maxrun + 1) if want_run else 1), np.int32)
        maxla = np.ones(max(nrun, 1), np.int64)
        Pr = np.zeros((1, nmax, maxrun + 1) if want_run and weighted_run else (1, 1, 1), np.float64)
        eg = np.zeros((1, rcap), np.int64)
        el = np.zeros((1, rcap), np.int64)
        ne = np.zeros(1, np.int64)
        pr = np.zeros(maxrun + 1, np.float64)
        ig2 = np.zeros(nmax, np.float64)
        # GLSZM
        stack = np.zeros(nk, np.int64)
        zone_g = np.zeros(nk, np.int64)
        zone_s = np.zeros(nk, np.int64)
        keys = np.zeros(nk, np.int64)
        ps = np.zeros(nk + 1, np.float64)
        # GLDM / NGTDM
        Pd = np.zeros((nmax, 2 * ncm + 2), np.float64)
        pd = np.zeros(2 * ncm + 2, np.float64)
        pg = np.zeros(nmax, np.float64)
        pgr = np.zeros(nmax, np.float64)
        cvals = np.zeros(nk, np.int64)
        ncount = np.zeros(nk, np.int64)
        ntotal = np.zeros(nk, np.int64)
        ndep = np.zeros(nk, np.int64)
        nsx = np.zeros(box_size if separable and (want_dep or want_ngt) else 1, np.int64)
        nsa = np.zeros(box_shape[1] * box_shape[2] if separable and (want_dep or want_ngt) else 1, np.int64)
        nsb = np.zeros_like(nsx)
        ni = np.zeros(nmax, np.float64)
        si = np.zeros(nmax, np.float64)
        pi = np.zeros(nmax, np.float64)
        res = np.zeros(glcm.NF, np.float64)
        acc = np.zeros(glcm.NF, np.float64)
        accn = np.zeros(glcm.NF, np.float64)
        for c in range(bounds[blk], bounds[blk + 1]):
            n, m = gather_compact(c, centers, valid, lev, row, shift, offs, flat, box, cells, lmap, glv, no_vals,
                                  no_xs)
            if n == 0:
                for f in range(out.shape[0]):
                    out[f, c] = np.nan
                continue
            for g in range(m):
                glz[g + 1] = glv[g]
            maxd = 0
            for t in range(n):
                cvals[t] = box[cells[t]]
            if want_cm:  # angle-major: per-angle constants stay in registers
                for q in range(ncm):
                    d = cmoff[q]
                    cnt_q = cnt[q]
                    lst_q = lst[q]
                    nl = 0
                    if symmetric:  # P + P^T: count unordered pairs at (low, high)
                        for t in range(n):
                            cn = box[cells[t] + d]
                            cv = cvals[t]
                            x = (min(cv, cn) << sh) | max(cv, cn)
                            old = cnt_q[x]
                            lst_q[nl] = x
                            nl += (old == 0) & (cn > 0)
                            cnt_q[x] = old + 1
                    else:
                        for t in range(n):
                            cn = box[cells[t] + d]
                            x = (cvals[t] << sh) | cn
                            old = cnt_q[x]
                            lst_q[nl] = x
                            nl += (old == 0) & (cn > 0)
                            cnt_q[x] = old + 1
                    ln[q] = nl
            if want_dep or want_ngt:
                for t in range(n):
                    gbox[cells[t]] = glz[cvals[t]]
            if separable and (want_dep or want_ngt):
                neighbour_sums(gbox, box, cells, n, shp, m, want_ngt, want_dep, nsx, nsa, nsb, ncount, ntotal, ndep)
            elif want_dep or want_ngt:  # voxel-major: the neighbourhood sums stay in registers
                for t in range(n):
                    b = cells[t]
                    gv = gbox[b]
                    count = 0
                    total = 0
                    dep = 0
                    for q in range(nboff.shape[0]):
                        g2 = gbox[b + nboff[q]]
                        inside = g2 > 0
                        count += inside
                        total += g2
                        dep += inside & (abs(gv - g2) <= alpha)
                    ncount[t] = count
                    ntotal[t] = total
                    ndep[t] = dep
            if want_run:
                stride_run = maxrun + 1
                for q in range(nrun):
                    d = runoff[q]
                    runlen_q = runlen[q]
                    pa_q = Pa[q]
                    top = 1
                    for t in range(n):
                        b = cells[t]
                        cv = cvals[t]
                        length = (box[b - d] == cv) * runlen_q[b - d] + 1
                        runlen_q[b] = length
                        pa_q[(cv - 1) * stride_run + length] += box[b + d] != cv
                        top = max(top, length)
                    maxla[q] = top
            if want_ngt:
                for t in range(n):
                    cv = cvals[t]
                    ni[cv - 1] += 1.0
                    si[cv - 1] += 0.0 if ncount[t] == 0 else abs(float(glz[cv]) - ntotal[t] / ncount[t])
            if want_dep:
                for t in range(n):
                    cv = cvals[t]
                    dep = ndep[t]
                    Pd[cv - 1, dep] += 1.0
                    pd[dep] += 1.0
                    pg[cv - 1] += 1.0
                    maxd = max(maxd, dep)
            if want_cm:
                ng = ng_global if ng_global > 0 else glv[m - 1]
                mdim = mdim_global if mdim_global > 0 else m
                glcm.finish(cnt, lst, ln, sh, m, cm_weights, symmetric, F, li, lj, ei, ej, ev, ec, em, lt,
                            glv, ng, mdim, cm_need, px, py, pxc, pyc, psub, padd, su, sv, ridx, mat, start, fill, order,
                            res, acc, accn, out, BASE[0], c)
            if want_run:
                glrlm.finish(box, cells, n, shp, pad, run_angles, Pa, maxrun + 1, maxla, m, run_weights, Pr, eg, el,
                             ne, glv, pr, pgr, lt, ig2, inv_sq, run_entries, res, acc, accn, out, BASE[1], c)
            if want_dep:
                gldm.features(Pd, pd, pg, m, maxd, n, glv, out, BASE[3], c)
            if want_ngt:
                ngtdm.features(ni, si, pi, m, n, glv, out, BASE[4], c)
            if want_zone:  # last: the flood fill negates the box
                nz = glszm.zones(box, cells, n, zoff, stack, zone_g, zone_s)
                glszm.features(zone_g, zone_s, nz, n, m, glv, pg, ps, keys, inv_sq, out, BASE[2], c)
            reset_levels(lmap, glv, m)
            clear(box, cells, n)
            if want_dep or want_ngt:
                clear(gbox, cells, n)
