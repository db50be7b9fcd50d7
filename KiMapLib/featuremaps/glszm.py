"""Grey Level Size Zone Matrix features per kernel (pyradiomics ``RadiomicsGLSZM``, 26-connected zones), numba."""

from __future__ import annotations

import numba as nb
import numpy as np

from KiMapLib.featuremaps.kernels import clear, gather, present_levels, reset_levels

EPS = np.spacing(1)
NF = 16


@nb.njit(cache=True, nogil=True)
def run(centers, valid, lev, vals, row, shift, offs, flat, box_size, maxlev, aoff, bounds, out):
    na = aoff.shape[0]
    nmax = min(maxlev, offs.shape[0])
    nk = offs.shape[0]
    for blk in range(len(bounds) - 1):
        box_lev = np.zeros(box_size, np.int32)
        box_val = np.zeros(box_size, np.float64)
        cells = np.zeros(nk, np.int64)
        stack = np.zeros(nk, np.int64)
        lmap = np.zeros(maxlev + 2, np.int64)
        glv = np.zeros(nmax + 1, np.int64)
        zone_g = np.zeros(nk, np.int64)
        zone_s = np.zeros(nk, np.int64)
        keys = np.zeros(nk, np.int64)
        pg = np.zeros(nmax, np.float64)
        ps = np.zeros(nk + 1, np.float64)
        for c in range(bounds[blk], bounds[blk + 1]):
            n = gather(c, centers, valid, lev, vals, row, shift, offs, flat, box_lev, box_val, cells)
            if n == 0:
                for f in range(NF):
                    out[f, c] = np.nan
                continue
            m = present_levels(box_lev, cells, n, lmap, glv)
            nz = 0
            for t in range(n):  # flood fill; a visited voxel's level is negated (so it matches no level >= 1)
                b0 = cells[t]
                g = box_lev[b0]
                if g < 0:
                    continue
                box_lev[b0] = -g
                top = 1
                stack[0] = b0
                size = 0
                while top > 0:
                    top -= 1
                    b = stack[top]
                    size += 1
                    for a in range(na):
                        q = b + aoff[a]
                        if box_lev[q] == g:
                            box_lev[q] = -g
                            stack[top] = q
                            top += 1
                zone_g[nz] = lmap[g]
                zone_s[nz] = size
                nz += 1
            nzf = float(nz)
            sae = lae = lgl = hgl = salg = sahg = lalg = lahg = 0.0
            for z in range(nz):
                gf = float(glv[zone_g[z]])
                sf = float(zone_s[z])
                g2 = gf * gf
                s2 = sf * sf
                pg[zone_g[z]] += 1.0
                ps[zone_s[z]] += 1.0
                sae += 1.0 / s2
                lae += s2
                lgl += 1.0 / g2
                hgl += g2
                salg += 1.0 / (g2 * s2)
                sahg += g2 / s2
                lalg += s2 / g2
                lahg += g2 * s2
                keys[z] = zone_g[z] * (nk + 1) + zone_s[z]
            gln = 0.0
            ui = 0.0
            for g in range(m):
                gln += pg[g] * pg[g]
                ui += pg[g] / nzf * glv[g]
            glvar = 0.0
            for g in range(m):
                glvar += pg[g] / nzf * (glv[g] - ui) ** 2
                pg[g] = 0.0
            szn = 0.0
            uj = 0.0
            for z in range(nz):
                s = zone_s[z]
                if ps[s] > 0:
                    szn += ps[s] * ps[s]
                    uj += ps[s] / nzf * s
                    ps[s] = -ps[s]  # mark as counted
            zv = 0.0
            for z in range(nz):
                s = zone_s[z]
                if ps[s] < 0:
                    zv += -ps[s] / nzf * (s - uj) ** 2
                    ps[s] = 0.0
            ks = np.sort(keys[:nz])
            ent = 0.0
            run_len = 1
            for z in range(1, nz + 1):
                if z < nz and ks[z] == ks[z - 1]:
                    run_len += 1
                else:
                    q = run_len / nzf
                    ent -= q * np.log2(q + EPS)
                    run_len = 1
            out[0, c] = sae / nzf
            out[1, c] = lae / nzf
            out[2, c] = gln / nzf
            out[3, c] = gln / (nzf * nzf)
            out[4, c] = szn / nzf
            out[5, c] = szn / (nzf * nzf)
            out[6, c] = nzf / n
            out[7, c] = glvar
            out[8, c] = zv
            out[9, c] = ent
            out[10, c] = lgl / nzf
            out[11, c] = hgl / nzf
            out[12, c] = salg / nzf
            out[13, c] = sahg / nzf
            out[14, c] = lalg / nzf
            out[15, c] = lahg / nzf
            reset_levels(lmap, glv, m)
            clear(box_lev, cells, n)
