"""Grey Level Co-occurrence Matrix features per kernel (pyradiomics ``RadiomicsGLCM``), numba.

Per angle the matrix is built on the kernel's present grey levels only (absent levels are zero rows and change no
feature except through ``Ng`` in Idmn/Idn and the matrix size in MCC, both passed in). Features are averaged over the
kernel's non-empty angles, as pyradiomics' ``nanmean`` after deleting empty angles; a kernel without any pair is NaN.
MCC uses the symmetric similarity transform of pyradiomics' Q (same eigenvalues, real arithmetic).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from KiMapLib.features.featuremaps.kernels import insertion_sort

EPS = np.spacing(1)
NF = 24
IMC2_TIE = 0.0
#: Largest MCC matrix solved by the allocation-free QL (LAPACK's eigvalsh is faster above).
QL_MAX = 32


@nb.njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _tridiagonalize(a, n, d, e, p):
    """Householder reduction of the symmetric a[:n, :n] (lower triangle read, overwritten) to the tridiagonal
    (d[:n], e[:n-1]), eigenvalues only, without allocation (``p``: n scratch values).

    Numerical Recipes' tred2 order (rows from the last up) without its scaling (MCC matrices hold values in [-1, 1]),
    with every loop running along rows: A v is accumulated row by row (a dot product and an axpy per row) instead of
    reading the columns, and the rank-2 update runs along rows too, so the inner loops vectorize (~1.4x faster)."""
    for i in range(n - 1, 0, -1):
        lo = i - 1
        if lo == 0:
            e[i] = a[i, 0]
            continue
        h = 0.0
        for k in range(lo):
            h += a[i, k] * a[i, k]
        f = a[i, lo]
        if h == 0.0:  # already tridiagonal in this row
            e[i] = f
            continue
        h += f * f
        g = -np.sqrt(h) if f >= 0.0 else np.sqrt(h)
        e[i] = g
        h -= f * g
        a[i, lo] = f - g  # the Householder vector v = a[i, :lo + 1], H = I - v v^T / h
        for k in range(lo + 1):
            p[k] = 0.0
        for j in range(lo + 1):  # p = A v (lower triangle, row by row)
            vj = a[i, j]
            s = a[j, j] * vj
            for k in range(j):
                ajk = a[j, k]
                s += ajk * a[i, k]
                p[k] += ajk * vj
            p[j] += s
        invh = 1.0 / h
        kk = 0.0
        for k in range(lo + 1):
            p[k] *= invh
            kk += a[i, k] * p[k]
        kk *= 0.5 * invh
        for k in range(lo + 1):
            p[k] -= kk * a[i, k]  # q = p - K v
        for j in range(lo + 1):  # A -= v q^T + q v^T (lower triangle)
            vj = a[i, j]
            qj = p[j]
            for k in range(j + 1):
                a[j, k] -= vj * p[k] + qj * a[i, k]
    for i in range(n):
        d[i] = a[i, i]
    for i in range(1, n):
        e[i - 1] = e[i]
    e[n - 1] = 0.0


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _ql(d, e, n):
    """All eigenvalues of the tridiagonal (d[:n], e[:n-1]) into d by implicit QL (Numerical Recipes' tqli);
    False if it did not converge."""
    for lo in range(n):
        it = 0
        while True:
            m = lo
            while m < n - 1:
                dd = abs(d[m]) + abs(d[m + 1])
                if abs(e[m]) <= EPS * dd:
                    break
                m += 1
            if m == lo:
                break
            it += 1
            if it > 60:
                return False
            g = (d[lo + 1] - d[lo]) / (2.0 * e[lo])
            r = np.sqrt(g * g + 1.0) if abs(g) < 1e150 else np.hypot(g, 1.0)
            g = d[m] - d[lo] + e[lo] / (g + (r if g >= 0.0 else -r))
            s = 1.0
            c = 1.0
            p = 0.0
            underflow = False
            i = m - 1
            while i >= lo:
                f = s * e[i]
                b = c * e[i]
                r = np.sqrt(f * f + g * g)  # hypot (slow) only where squares could over/underflow
                if r < 1e-150 or r > 1e150:
                    r = np.hypot(f, g)
                e[i + 1] = r
                if r == 0.0:
                    d[i + 1] -= p
                    e[m] = 0.0
                    underflow = True
                    break
                s = f / r
                c = g / r
                g = d[i + 1] - p
                r = (d[i] - g) * s + 2.0 * c * b
                p = s * r
                d[i + 1] = g + p
                g = c * r - b
                i -= 1
            if underflow:
                continue
            d[lo] -= p
            e[lo] = g
            e[m] = 0.0
    return True


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _extreme_eigenvalue(d, e, n, largest):
    """Largest (or smallest) eigenvalue of the symmetric tridiagonal (d[:n], e[:n-1]) by Laguerre's method started
    at the Gershgorin bound (monotone, cubically convergent for real-rooted polynomials); NaN if not converged."""
    x = -np.inf if largest else np.inf
    for i in range(n):
        radius = (abs(e[i - 1]) if i > 0 else 0.0) + (abs(e[i]) if i < n - 1 else 0.0)
        x = max(x, d[i] + radius) if largest else min(x, d[i] - radius)
    nf = float(n)
    for _ in range(100):
        # det(T - x I) and its first two derivatives by the three-term recurrence
        p0, p1 = 1.0, d[0] - x
        q0, q1 = 0.0, -1.0
        r0, r1 = 0.0, 0.0
        for k in range(1, n):
            t = d[k] - x
            e2 = e[k - 1] * e[k - 1]
            p2 = t * p1 - e2 * p0
            q2 = -p1 + t * q1 - e2 * q0
            r2 = -2.0 * q1 + t * r1 - e2 * r0
            p0, p1 = p1, p2
            q0, q1 = q1, q2
            r0, r1 = r1, r2
        if p1 == 0.0:
            return x
        g = q1 / p1
        h = g * g - r1 / p1
        disc = (nf - 1.0) * (nf * h - g * g)
        root = np.sqrt(disc) if disc > 0.0 else 0.0
        den = g + root if g >= 0.0 else g - root
        if den == 0.0:
            return np.nan
        step = nf / den
        x -= step
        if abs(step) <= 1e-14 * max(1.0, abs(x)):
            return x
    return np.nan


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _mcc_matrix(ei, ej, ev, nnz, m, px, py, symmetric, ridx, mat, start, fill, order, isq, u):
    """The deflated symmetric matrix of :func:`_mcc`, B = M - u u^T with u = sqrt(px), into the lower triangle of
    mat[:r, :r] (the asymmetric case fills it whole); returns r (levels with px > 0). ``isq[a]`` = 1 / sqrt(px),
    ``u[a]`` = sqrt(px) of row a. Symmetric entries are assigned, so one triangle or both may be listed."""
    r = 0
    for i in range(m):
        if px[i] > 0:
            ridx[i] = r
            fill[r] = i
            root = np.sqrt(px[i])
            u[r] = root
            isq[r] = 1.0 / root
            r += 1
        else:
            ridx[i] = -1
    if symmetric:
        for a in range(r):
            ua = u[a]
            for b in range(a + 1):
                mat[a, b] = -ua * u[b]
        for t in range(nnz):
            a = ridx[ei[t]]
            b = ridx[ej[t]]
            if a < b:
                a, b = b, a
            mat[a, b] = ev[t] * isq[a] * isq[b] - u[a] * u[b]
        return r
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
        order[k] = start[k]
    for t in range(nnz):
        k = ej[t]
        order[m + order[k]] = t
        order[k] += 1
    for k in range(m):
        for x in range(start[k], start[k + 1]):
            t = order[m + x]
            a = ridx[ei[t]]
            q = ev[t] / py[k]
            for y in range(start[k], start[k + 1]):
                w = order[m + y]
                mat[a, ridx[ei[w]]] += q * ev[w]
    for a in range(r):
        for b in range(r):
            mat[a, b] = mat[a, b] * isq[a] * isq[b] - u[a] * u[b]
    return r


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _count_below(d, e, n, x):
    """Number of eigenvalues of the tridiagonal (d[:n], e[:n-1]) below x (Sturm count of the LDL^T pivots)."""
    count = 0
    q = d[0] - x
    for k in range(n):
        if k > 0:
            q = d[k] - x - e[k - 1] * e[k - 1] / q
        if q == 0.0:
            q = -1e-300
        count += q < 0.0
    return count


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _small_radius(mat, r):
    """Spectral radius of the deflated symmetric B (lower triangle of mat[:r, :r]) for r <= 3 in closed form.

    B u = 0, so its eigenvalues are 0 and the roots of x^2 - t x + e2 (t = trace, e2 = the sum of its principal
    2x2 minors): r = 1, 2 give |trace|, r = 3 the larger root in absolute value."""
    if r == 1:
        return abs(mat[0, 0])
    if r == 2:
        return abs(mat[0, 0] + mat[1, 1])
    b00, b11, b22 = mat[0, 0], mat[1, 1], mat[2, 2]
    b10, b20, b21 = mat[1, 0], mat[2, 0], mat[2, 1]
    t = b00 + b11 + b22
    e2 = b00 * b11 - b10 * b10 + b00 * b22 - b20 * b20 + b11 * b22 - b21 * b21
    disc = t * t - 4.0 * e2
    return 0.5 * (abs(t) + np.sqrt(disc if disc > 0.0 else 0.0))


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _mcc_fallback(ei, ej, ev, nnz, m, px, py, symmetric, ridx, mat, start, fill, order, w, work, scratch, r):
    """(largest, smallest) eigenvalue of the deflated matrix where Laguerre did not converge or r > QL_MAX: QL on
    the tridiagonal (w, work) if r <= QL_MAX, else (or if QL fails) LAPACK on the rebuilt matrix. Kept apart from
    :func:`_mcc`: its array temporaries cost every call ~0.25 us when inlined there."""
    if r <= QL_MAX and _ql(w, work, r):
        top = -np.inf
        low = np.inf
        for i in range(r):
            top = max(top, w[i])
            low = min(low, w[i])
        return top, low
    _mcc_matrix(ei, ej, ev, nnz, m, px, py, symmetric, ridx, mat, start, fill, order, w, scratch)
    full = np.empty((r, r), np.float64)
    for a in range(r):
        for b in range(a + 1):
            full[a, b] = mat[a, b] if symmetric else 0.5 * (mat[a, b] + mat[b, a])
            full[b, a] = full[a, b]
    lapack = np.linalg.eigvalsh(full)
    return lapack[r - 1], lapack[0]


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _components(ei, ej, nnz, m, px, parent):
    """Number of connected components of the levels with px > 0, linked by the non-zero entries (union-find with
    path halving; ``parent``: m scratch integers)."""
    count = 0
    for i in range(m):
        parent[i] = i
        count += px[i] > 0
    for t in range(nnz):
        a = ei[t]
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        b = ej[t]
        while parent[b] != b:
            parent[b] = parent[parent[b]]
            b = parent[b]
        if a != b:
            parent[a] = b
            count -= 1
    return count


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _split(ei, ej, nnz, m, px, adjacent, parent):
    """True if the levels with px > 0 fall into more than one group linked by the non-zero entries. Up to 63 levels
    by bit masks (each level's neighbours as a mask in ``adjacent``, then a flood fill from the first level: O(nnz + m)
    independent operations instead of union-find's chains of dependent loads), else :func:`_components`
    (``adjacent``, ``parent``: m scratch integers)."""
    if m > 63:
        return _components(ei, ej, nnz, m, px, parent) > 1
    for i in range(m):
        adjacent[i] = 0
    for t in range(nnz):
        a = ei[t]
        b = ej[t]
        adjacent[a] |= 1 << b
        adjacent[b] |= 1 << a
    present = 0
    for i in range(m):
        if px[i] > 0:
            present |= 1 << i
    if present == 0:
        return False
    reached = present & -present  # the first present level
    frontier = reached
    while frontier != 0:
        grown = 0
        for i in range(m):
            if (frontier >> i) & 1:
                grown |= adjacent[i]
        frontier = grown & ~reached
        reached |= grown
    return (present & ~reached) != 0


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _mcc(ei, ej, ev, nnz, m, px, py, mdim, symmetric, ridx, mat, start, fill, order, w, work, scratch):
    """sqrt of the 2nd largest eigenvalue of pyradiomics' Q = P Dy^-1 P^T Dx^-1 (in [0, 1]).

    Symmetric P: Q is similar to A^2 with the symmetric A = Dx^-1/2 P Dx^-1/2, so the answer is the 2nd largest
    |eigenvalue| of A (absent levels add zero eigenvalues). Otherwise Q is similar to the symmetric
    M = Dx^-1/2 P Dy^-1 P^T Dx^-1/2, whose 2nd largest eigenvalue is taken. Both have the top eigenpair
    (1, sqrt(px)); after deflating it only the extreme eigenvalues of the rest are needed: in closed form for
    r <= 3 levels (symmetric), else by Laguerre on the tridiagonal form (QL, then LAPACK, as fallbacks). A symmetric
    P whose levels fall into several groups that never co-occur has the eigenvalue 1 once per group: MCC = 1, no
    eigenproblem (3/4 of brain1's angle matrices at r = 1, 1/8 at r = 3)."""
    if mdim < 2:
        return 1.0
    if symmetric and _split(ei, ej, nnz, m, px, fill, start):
        return 1.0  # every component has the eigenvalue 1 (eigenvector sqrt(px) on it): 1 is at least double
    r = _mcc_matrix(ei, ej, ev, nnz, m, px, py, symmetric, ridx, mat, start, fill, order, w, scratch)
    if symmetric and r <= 3:
        return _small_radius(mat, r)
    top = low = np.nan
    if r <= QL_MAX:
        _tridiagonalize(mat, r, w, work, scratch)
        top = _extreme_eigenvalue(w, work, r, True)
        low = 0.0
        if symmetric and not np.isnan(top) and _count_below(w, work, r, -abs(top)) > 0:
            low = _extreme_eigenvalue(w, work, r, False)  # an eigenvalue below -|top| decides
    if np.isnan(top) or np.isnan(low):  # large, or not converged
        top, low = _mcc_fallback(ei, ej, ev, nnz, m, px, py, symmetric, ridx, mat, start, fill, order, w, work,
                                 scratch, r)
    if symmetric:
        return max(abs(top), abs(low))
    return np.sqrt(max(top, 0.0))


@nb.njit(cache=True, nogil=True, error_model="numpy")
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
    insertion_sort(su, 0, nu)
    insertion_sort(sv, 0, nv)
    a = su
    b = sv
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


#: Groups of features that share a costly sum (bits of ``need``): only the requested groups are computed.
NEED_ENTROPY = 1  # JointEntropy, Imc1, Imc2: HXY
NEED_IMC = 2  # Imc1, Imc2: HX, HY, HXY1, HXY2
NEED_DIFF = 4  # the features of p_(x-y)
NEED_SUM = 8  # the features of p_(x+y)
NEED_MCC = 16
_GROUPS = {NEED_ENTROPY: ("JointEntropy", "Imc1", "Imc2"), NEED_IMC: ("Imc1", "Imc2"),
           NEED_DIFF: ("DifferenceAverage", "DifferenceEntropy", "DifferenceVariance", "Idm", "Idmn", "Id", "Idn",
                       "InverseVariance"),
           NEED_SUM: ("SumAverage", "SumEntropy"), NEED_MCC: ("MCC",)}


def needs(names) -> int:
    """The ``need`` bits of the requested GLCM feature names (features outside every group are always computed)."""
    return sum(bit for bit, group in _GROUPS.items() if set(group) & set(names))


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _angle_features(ei, ej, ev, ec, em, nnz, total, lt, m, glv, ng, mdim, need, symmetric, px, py, pxc, pyc, psub,
                    padd, su, sv, ridx, mat, start, fill, order, res):
    """Features of one matrix given by its non-zero entries (ei, ej) into res: ``ev`` normalized, ``ec`` raw,
    ``em`` the entry's multiplicity (symmetric matrices list the upper triangle once: 2 off the diagonal).

    With integer counts (``lt`` non-empty: lt[k] = log2(k)), every log2(x + eps) of pyradiomics is taken as the
    table difference log2(count) - log2(total): eps changes an entropy by at most (terms x 3.2e-16), far below the
    tolerance, and HXY2 = -sum_ij px_i py_j log2(px_i py_j) separates into HX sum(py) + HY sum(px).
    Features of groups not in ``need`` are NaN."""
    integer = lt.shape[0] > 0
    ent = (need & NEED_ENTROPY) != 0
    imc = (need & NEED_IMC) != 0
    diff = (need & NEED_DIFF) != 0
    summ = (need & NEED_SUM) != 0
    for i in range(m):
        px[i] = 0.0
        py[i] = 0.0
        pxc[i] = 0.0
        pyc[i] = 0.0
    for t in range(nnz):
        px[ei[t]] += ev[t]
        py[ej[t]] += ev[t]
        pxc[ei[t]] += ec[t]
        pyc[ej[t]] += ec[t]
    if symmetric:  # px = py: add the lower triangle's entries
        for i in range(m):
            px[i] += py[i]
            pxc[i] += pyc[i]
        for t in range(nnz):
            if ei[t] == ej[t]:
                px[ei[t]] -= ev[t]
                pxc[ei[t]] -= ec[t]
        for i in range(m):
            py[i] = px[i]
            pyc[i] = pxc[i]
    ltot = np.log2(total) if integer else 0.0
    ux = 0.0
    uy = 0.0
    for i in range(m):
        ux += glv[i] * px[i]
        uy += glv[i] * py[i]
    sx2 = 0.0
    sy2 = 0.0
    for i in range(m):
        dx = glv[i] - ux
        sx2 += px[i] * dx * dx
        dy = glv[i] - uy
        sy2 += py[i] * dy * dy
    lo = glv[0]
    hi = glv[m - 1]
    if diff:
        for k in range(hi - lo + 1):
            psub[k] = 0.0
    if summ:
        for k in range(2 * lo, 2 * hi + 1):
            padd[k] = 0.0
    ac = cp = cs = ct = con = corm = ene = hxy = hxy1 = 0.0
    maxp = 0.0
    for t in range(nnz):
        v = ev[t]
        mult = em[t]
        w = mult * v
        i = ei[t]
        j = ej[t]
        gi = float(glv[i])
        gj = float(glv[j])
        ac += w * gi * gj
        d = gi + gj - ux - uy
        d2 = d * d
        ct += w * d2
        cs += w * d2 * d
        cp += w * d2 * d2
        dg = gi - gj
        con += w * dg * dg
        corm += w * (gi - ux) * (gj - uy)
        ene += w * v
        if integer:
            if ent:
                hxy -= w * (lt[int(ec[t])] - ltot)
            if imc:
                hxy1 -= w * (lt[int(pxc[i])] + lt[int(pyc[j])] - 2.0 * ltot)
            if diff:
                psub[abs(glv[i] - glv[j])] += mult * ec[t]
            if summ:
                padd[glv[i] + glv[j]] += mult * ec[t]
        else:
            if ent:
                hxy -= w * np.log2(v + EPS)
            if imc:
                hxy1 -= w * np.log2(px[i] * py[j] + EPS)
            if diff:
                psub[abs(glv[i] - glv[j])] += w
            if summ:
                padd[glv[i] + glv[j]] += w
        if v > maxp:
            maxp = v
    hx = 0.0
    hy = 0.0
    hxy2 = 0.0
    if imc and integer:
        sx = 0.0
        sy = 0.0
        for i in range(m):
            if pxc[i] > 0:
                hx -= px[i] * (lt[int(pxc[i])] - ltot)
                sx += px[i]
            if pyc[i] > 0:
                hy -= py[i] * (lt[int(pyc[i])] - ltot)
                sy += py[i]
        hxy2 = hx * sy + hy * sx
    elif imc:
        for i in range(m):
            if px[i] > 0:
                hx -= px[i] * np.log2(px[i] + EPS)
            if py[i] > 0:
                hy -= py[i] * np.log2(py[i] + EPS)
        hxy2 = _entropy_pairs(px, py, m, su, sv)
    da = de = dv = idm = idmn = idd = idn = iv = 0.0
    ngf = float(ng)
    if diff:
        for k in range(hi - lo + 1):
            v = psub[k]
            if v == 0.0:
                continue
            if integer:
                de -= v / total * (lt[int(v)] - ltot)
                v = v / total
                psub[k] = v
            else:
                de -= v * np.log2(v + EPS)
            kf = float(k)
            da += kf * v
            idm += v / (1.0 + kf * kf)
            idmn += v / (1.0 + (kf * kf) / (ngf * ngf))
            idd += v / (1.0 + kf)
            idn += v / (1.0 + kf / ngf)
            if k > 0:
                iv += v / (kf * kf)
        for k in range(hi - lo + 1):
            v = psub[k]
            if v != 0.0:
                dk = k - da
                dv += v * dk * dk
    sa = se = 0.0
    if summ:
        for k in range(2 * lo, 2 * hi + 1):
            v = padd[k]
            if v != 0.0:
                if integer:
                    se -= v / total * (lt[int(v)] - ltot)
                    v = v / total
                else:
                    se -= v * np.log2(v + EPS)
                sa += k * v
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
    res[7] = da if diff else np.nan
    res[8] = de if diff else np.nan
    res[9] = dv if diff else np.nan
    res[10] = ene
    res[11] = hxy if ent else np.nan
    res[12] = imc1 if imc else np.nan
    res[13] = imc2 if imc else np.nan
    res[14] = idm if diff else np.nan
    res[15] = idmn if diff else np.nan
    res[16] = idd if diff else np.nan
    res[17] = idn if diff else np.nan
    res[18] = iv if diff else np.nan
    res[19] = maxp
    res[20] = sa if summ else np.nan
    res[21] = se if summ else np.nan
    res[22] = sx2
    if need & NEED_MCC:
        res[23] = _mcc(ei, ej, ev, nnz, m, px, py, mdim, symmetric, ridx, mat, start, fill, order, su, sv, pxc)
    else:
        res[23] = np.nan


@nb.njit(cache=True, nogil=True, error_model="numpy")
def finish(cnt, lst, ln, sh, m, weights, symmetric, F, li, lj, ei, ej, ev, ec, em, lt, glv, ng, mdim, need,
           px, py, pxc, pyc, psub, padd, su, sv, ridx, mat, start, fill, order, res, acc, accn, out, base, c):
    """Features from the per-angle pair counts ``cnt[a, ((i + 1) << sh) | (j + 1)]`` of one kernel (compact levels;
    the non-zero entries listed in ``lst[a, :ln[a]]``), averaged over non-empty angles; the counts are reset here.

    ``symmetric``: the counts are of unordered pairs (i <= j), and the matrix P + P^T is listed by its upper
    triangle (multiplicity in ``em``). ``weights`` non-empty: the angles are summed with these weights into one
    matrix (``weightingNorm``) through ``F``."""
    ncm = ln.shape[0]
    neff = 1 if weights.shape[0] > 0 else ncm
    low = (1 << sh) - 1
    for f in range(NF):
        acc[f] = 0.0
        accn[f] = 0.0
    for e in range(neff):
        nnz = 0
        if neff == ncm:  # one angle: its listed cells are distinct
            for t in range(ln[e]):
                x = lst[e, t]
                ei[nnz] = (x >> sh) - 1
                ej[nnz] = (x & low) - 1
                ev[nnz] = cnt[e, x]
                cnt[e, x] = 0
                nnz += 1
        else:
            nl = 0
            for a in range(ncm):
                w = weights[a]
                for t in range(ln[a]):
                    x = lst[a, t]
                    i = (x >> sh) - 1
                    j = (x & low) - 1
                    if F[i, j] == 0.0:
                        li[nl] = i
                        lj[nl] = j
                        nl += 1
                    F[i, j] += w * cnt[a, x]
                    cnt[a, x] = 0
            for t in range(nl):
                ei[t] = li[t]
                ej[t] = lj[t]
                ev[t] = F[li[t], lj[t]]
                F[li[t], lj[t]] = 0.0
            nnz = nl
        for a in range(0 if neff == 1 else e, ncm if neff == 1 else e + 1):
            ln[a] = 0
            for i in range(1, m + 1):  # pairs leaving the kernel were counted at (i, 0), or (0, i) if unordered
                cnt[a, i << sh] = 0
                cnt[a, i] = 0
        total = 0.0
        for t in range(nnz):
            if symmetric:
                diagonal = ei[t] == ej[t]
                ev[t] *= 2.0 if diagonal else 1.0  # P + P^T doubles the diagonal
                em[t] = 1.0 if diagonal else 2.0
            else:
                em[t] = 1.0
            total += em[t] * ev[t]
        if total > 0.0:
            for t in range(nnz):
                ec[t] = ev[t]
                ev[t] /= total
            _angle_features(ei, ej, ev, ec, em, nnz, total, lt, m, glv, ng, mdim, need, symmetric, px, py, pxc, pyc,
                            psub, padd, su, sv, ridx, mat, start, fill, order, res)
            for f in range(NF):
                if not np.isnan(res[f]):
                    acc[f] += res[f]
                    accn[f] += 1.0
    for f in range(NF):
        out[base + f, c] = acc[f] / accn[f] if accn[f] > 0 else np.nan
