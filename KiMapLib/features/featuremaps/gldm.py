"""Grey Level Dependence Matrix features of one kernel (pyradiomics ``RadiomicsGLDM``), numba.

The dependence counts are gathered by :mod:`KiMapLib.features.featuremaps.texture`; ``features`` turns them into the 14
features and resets its inputs.
"""

from __future__ import annotations

import numba as nb
import numpy as np

EPS = np.spacing(1)
NF = 14


@nb.njit(cache=True, nogil=True)
def features(P, pd, pg, m, maxd, n, glv, out, base, c):
    """``P[g, d]``: kernel voxels of compact level g with d dependent neighbours; ``pd``/``pg`` its marginals."""
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
            dd = d + 1 - uj
            dv += v / nzf * dd * dd
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
        dg = glv[g] - ui
        glvar += pg[g] / nzf * dg * dg
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
    out[base + 0, c] = sde / nzf
    out[base + 1, c] = lde / nzf
    out[base + 2, c] = gln / nzf
    out[base + 3, c] = dn / nzf
    out[base + 4, c] = dn / (nzf * nzf)
    out[base + 5, c] = glvar
    out[base + 6, c] = dv
    out[base + 7, c] = ent
    out[base + 8, c] = lgl / nzf
    out[base + 9, c] = hgl / nzf
    out[base + 10, c] = sdlg / nzf
    out[base + 11, c] = sdhg / nzf
    out[base + 12, c] = ldlg / nzf
    out[base + 13, c] = ldhg / nzf
