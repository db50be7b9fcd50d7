"""Grey Level Size Zone Matrix of one kernel (pyradiomics ``RadiomicsGLSZM``, 26-connected zones), numba."""

from __future__ import annotations

import numba as nb
import numpy as np

EPS = np.spacing(1)
NF = 16


@nb.njit(cache=True, nogil=True)
def zones(box, cells, n, zoff, stack, zone_g, zone_s):
    """Flood fill of the kernel's zones in ``box`` (compact levels >= 1 on kernel voxels; visited voxels are negated,
    so the caller clears the box afterwards). Writes each zone's compact level (0-based) and size; returns the count."""
    nz = 0
    for t in range(n):
        b0 = cells[t]
        g = box[b0]
        if g < 0:
            continue
        box[b0] = -g
        top = 1
        stack[0] = b0
        size = 0
        while top > 0:
            top -= 1
            b = stack[top]
            size += 1
            for a in range(zoff.shape[0]):
                q = b + zoff[a]
                if box[q] == g:
                    box[q] = -g
                    stack[top] = q
                    top += 1
        zone_g[nz] = g - 1
        zone_s[nz] = size
        nz += 1
    return nz


@nb.njit(cache=True, nogil=True)
def features(zone_g, zone_s, nz, n, m, glv, pg, ps, keys, inv_sq, out, base, c):
    """The 16 features of the zones (``pg``/``ps`` zeroed work arrays of size m and n + 1, left zeroed;
    ``inv_sq[s]`` = 1 / s^2 for s <= n)."""
    nzf = float(nz)
    sae = lae = lgl = hgl = salg = sahg = lalg = lahg = 0.0
    for z in range(nz):
        g = zone_g[z]
        size = zone_s[z]
        gf = float(glv[g])
        sf = float(size)
        g2 = gf * gf
        ig2 = 1.0 / g2
        s2 = sf * sf
        i_s2 = inv_sq[size]
        pg[g] += 1.0
        ps[size] += 1.0
        sae += i_s2
        lae += s2
        lgl += ig2
        hgl += g2
        salg += ig2 * i_s2
        sahg += g2 * i_s2
        lalg += s2 * ig2
        lahg += g2 * s2
        keys[z] = g * (n + 1) + size
    gln = 0.0
    ui = 0.0
    for g in range(m):
        gln += pg[g] * pg[g]
        ui += pg[g] / nzf * glv[g]
    glvar = 0.0
    for g in range(m):
        dg = glv[g] - ui
        glvar += pg[g] / nzf * dg * dg
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
            ds = s - uj
            zv += -ps[s] / nzf * ds * ds
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
    out[base + 0, c] = sae / nzf
    out[base + 1, c] = lae / nzf
    out[base + 2, c] = gln / nzf
    out[base + 3, c] = gln / (nzf * nzf)
    out[base + 4, c] = szn / nzf
    out[base + 5, c] = szn / (nzf * nzf)
    out[base + 6, c] = nzf / n
    out[base + 7, c] = glvar
    out[base + 8, c] = zv
    out[base + 9, c] = ent
    out[base + 10, c] = lgl / nzf
    out[base + 11, c] = hgl / nzf
    out[base + 12, c] = salg / nzf
    out[base + 13, c] = sahg / nzf
    out[base + 14, c] = lalg / nzf
    out[base + 15, c] = lahg / nzf
