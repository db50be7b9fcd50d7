"""GLCM MCC of the engine (deflation + Laguerre on the tridiagonal form) against pyradiomics' formula in numpy."""

from __future__ import annotations

import numpy as np
import pytest

from KiMapLib.features.featuremaps import glcm


def _engine_mcc(P: np.ndarray, symmetric: bool) -> float:
    m = P.shape[0]
    ei, ej = np.nonzero(P)
    ev = P[ei, ej].copy()
    work = [np.zeros(m, np.int64), np.zeros((m, m)), np.zeros(m + 2, np.int64), np.zeros(m + 1, np.int64),
            np.zeros(2 * len(ei) + m + 2, np.int64), np.zeros(m), np.zeros(m), np.zeros(m)]
    return glcm._mcc(ei.astype(np.int64), ej.astype(np.int64), ev, len(ei), m, P.sum(1), P.sum(0), m, symmetric,
                     *work)


def _pyradiomics_mcc(P: np.ndarray) -> float:
    """pyradiomics: sqrt of the 2nd largest eigenvalue of Q = (P / px) (P / py)^T."""
    px, py = P.sum(1), P.sum(0)
    with np.errstate(all="ignore"):
        Q = (P / np.where(px > 0, px, 1)[:, None]) @ (P / np.where(py > 0, py, 1)[None, :]).T
    return float(np.sqrt(max(np.sort(np.linalg.eigvals(Q).real)[-2], 0.0)))


@pytest.mark.parametrize("symmetric", [True, False])
def test_mcc_equals_pyradiomics_formula(symmetric):
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(1500):
        m = int(rng.integers(2, 20))
        C = rng.integers(0, 5, (m, m)) * (rng.random((m, m)) < rng.uniform(0.1, 0.9))
        shape = rng.integers(0, 3)
        if shape == 1:  # two disconnected level groups: eigenvalue 1 twice, MCC = 1
            C[: m // 2, m // 2:] = 0
            C[m // 2:, : m // 2] = 0
        elif shape == 2:  # diagonal
            C = np.diag(rng.integers(1, 4, m))
        C = C.astype(float)
        if symmetric:
            C = C + C.T
        if C.sum() == 0:
            continue
        P = C / C.sum()
        got, want = _engine_mcc(P, symmetric), _pyradiomics_mcc(P)
        # 3e-8: the reference's own sqrt of a rounding-level (1e-16) eigenvalue where the true MCC is 0
        assert abs(got - want) <= 3e-8 + 1e-7 * want, (m, shape, got, want)
        checked += 1
    assert checked > 1400


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_mcc_few_present_levels_among_absent_ones(levels):
    """1-3 present levels take the closed form (eigenvalues 0 and the roots of x^2 - trace x + e2 of the deflated
    matrix), 4 the tridiagonal path; absent levels are zero rows and columns of a larger matrix, as in a kernel."""
    rng = np.random.default_rng(levels)
    for _ in range(400):
        ng = int(rng.integers(max(levels, 2), levels + 6))  # Ng = 1: pyradiomics has no 2nd eigenvalue
        present = np.sort(rng.choice(ng, levels, replace=False))
        C = np.zeros((ng, ng))
        block = rng.integers(0, 6, (levels, levels)) * (rng.random((levels, levels)) < 0.7)
        block = block + block.T + np.diag(rng.integers(0, 3, levels))
        C[np.ix_(present, present)] = block
        if C.sum() == 0 or np.any(C[present].sum(1) == 0):
            continue
        P = C / C.sum()
        got, want = _engine_mcc(P, True), _pyradiomics_mcc(P)
        assert abs(got - want) <= 3e-8 + 1e-7 * want, (levels, got, want)


def test_split_levels_by_bit_masks_equals_union_find():
    """MCC's shortcut test (several never co-occurring level groups -> MCC = 1): the bit-mask flood fill (up to 63
    levels) and union-find (beyond) agree, also with absent levels (px = 0) between present ones."""
    rng = np.random.default_rng(11)
    seen = set()
    for _ in range(3000):
        m = int(rng.integers(1, 80))
        nnz = int(rng.integers(0, 2 * m + 1))
        ei = rng.integers(0, m, nnz).astype(np.int64)
        ej = rng.integers(0, m, nnz).astype(np.int64)
        px = np.zeros(m)
        px[ei] += 1.0
        px[ej] += 1.0
        want = glcm._components(ei, ej, nnz, m, px, np.zeros(m, np.int64)) > 1
        got = glcm._split(ei, ej, nnz, m, px, np.zeros(m, np.int64), np.zeros(m, np.int64))
        assert got == want, (m, nnz)
        seen.add((m > 63, bool(want)))
    assert seen == {(False, False), (False, True), (True, False), (True, True)}
