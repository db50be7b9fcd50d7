"""Grey Level Dependence Matrix features per kernel (pyradiomics ``RadiomicsGLDM``), numba."""

from __future__ import annotations

import numba as nb
import numpy as np

from KiMapLib.featuremaps.kernels import clear, gather, present_levels, reset_levels

EPS = np.spacing(1)
NF = 14


@nb.njit(cache=True, nogil=True)
def run(centers, valid, lev, vals, row, shift, offs, flat, box_size, maxlev, aoff, alpha, bounds, out):
    na = aoff.shape[0]
    nd = 2 * na + 2
    nmax = min(maxlev, offs.shape[0])
    for blk in range(len(bounds) - 1):
        box_lev = np.zeros(box_size, np.int32)
        box_val = np.zeros(box_size, np.float64)
        cells = np.zeros(offs.shape[0], np.int64)
        lmap = np.zeros(maxlev + 2, np.int64)
        glv = np.zeros(nmax + 1, np.int64)
        P = np.zeros((nmax, nd), np.float64)
        pd = np.zeros(nd, np.float64)
        pg = np.zeros(nmax, np.float64)
        for c in range(bounds[blk], bounds[blk + 1]):
            n = gather(c, centers, valid, lev, vals, row, shift, offs, flat, box_lev, box_val, cells)
            if n == 0:
                for f in range(NF):
                    out[f, c] = np.nan
                continue
            m = present_levels(box_lev, cells, n, lmap, glv)
            maxd = 0
            for t in range(n):
                b = cells[t]
                g = box_lev[b]
                dep = 0
                for a in range(na):
                    g2 = box_lev[b + aoff[a]]
                    if g2 > 0 and abs(g - g2) <= alpha:
                        dep += 1
                P[lmap[g], dep] += 1.0
                pd[dep] += 1.0
                pg[lmap[g]] += 1.0
                if dep > maxd:
                    maxd = dep
            nzf = float(n)
            sde = lde = dn = uj = 0.0
            for d in range(maxd + 1):
                v = pd[d]
                if v == 0.0:
                    continue
                jf = float(d + 1)
                sde += v / (jf * jf)
                lde += v * jf * jf
                dn += v * v
                uj += v / nzf * jf
            dv = 0.0
            for d in range(maxd + 1):
                v = pd[d]
                if v != 0.0:
                    dv += v / nzf * (d + 1 - uj) ** 2
                pd[d] = 0.0
            gln = lgl = hgl = ui = 0.0
            for g in range(m):
                v = pg[g]
                gf = float(glv[g])
                gln += v * v
                lgl += v / (gf * gf)
                hgl += v * gf * gf
                ui += v / nzf * gf
            glvar = 0.0
            for g in range(m):
                glvar += pg[g] / nzf * (glv[g] - ui) ** 2
                pg[g] = 0.0
            ent = sdlg = sdhg = ldlg = ldhg = 0.0
            for g in range(m):
                gf = float(glv[g])
                g2 = gf * gf
                for d in range(maxd + 1):
                    v = P[g, d]
                    if v == 0.0:
                        continue
                    jf = float(d + 1)
                    j2 = jf * jf
                    q = v / nzf
                    ent -= q * np.log2(q + EPS)
                    sdlg += v / (g2 * j2)
                    sdhg += v * g2 / j2
                    ldlg += v * j2 / g2
                    ldhg += v * g2 * j2
                    P[g, d] = 0.0
            out[0, c] = sde / nzf
            out[1, c] = lde / nzf
            out[2, c] = gln / nzf
            out[3, c] = dn / nzf
            out[4, c] = dn / (nzf * nzf)
            out[5, c] = glvar
            out[6, c] = dv
            out[7, c] = ent
            out[8, c] = lgl / nzf
            out[9, c] = hgl / nzf
            out[10, c] = sdlg / nzf
            out[11, c] = sdhg / nzf
            out[12, c] = ldlg / nzf
            out[13, c] = ldhg / nzf
            reset_levels(lmap, glv, m)
            clear(box_lev, cells, n)
