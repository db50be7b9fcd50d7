"""Neighbouring Grey Tone Difference Matrix features of one kernel (pyradiomics ``RadiomicsNGTDM``), numba.

The per-level counts and grey-tone differences are gathered by :mod:`KiMapLib.features.featuremaps.texture`.
"""

from __future__ import annotations

import numba as nb

NF = 5


@nb.njit(cache=True, nogil=True)
def features(ni, si, pi, m, n, glv, out, base, c):
    """``ni[g]``: kernel voxels of compact level g; ``si[g]``: their summed |g - neighbourhood mean|. Resets both."""
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
            dg2 = (gi - gj) * (gi - gj)
            con += pi[i] * pi[j] * dg2
            absdiff += abs(gi * pi[i] - gj * pi[j])
            cplx += abs(gi - gj) * (pi[i] * si[i] + pi[j] * si[j]) / (pi[i] + pi[j])
            strength += (pi[i] + pi[j]) * dg2
    div = float(m * (m - 1))
    con = con * sum_s / nvp / div if div != 0.0 else 0.0
    busy = sum_ps / absdiff if absdiff != 0.0 else 0.0
    strength = strength / sum_s if sum_s != 0.0 else 0.0
    out[base + 0, c] = coarse
    out[base + 1, c] = con
    out[base + 2, c] = busy
    out[base + 3, c] = cplx / nvp
    out[base + 4, c] = strength
    for i in range(m):
        ni[i] = 0.0
        si[i] = 0.0
