"""Metric values against (1) the published platonic-rep numbers in tests/data/platonic_rep and
(2) an independent float64 implementation written plainly below (full N×N matrices, sorting,
sets, textbook dynamic programming, explicit centring matrices)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import repalign.metrics as M

REFERENCE_DIR = Path(__file__).parent / "data" / "platonic_rep"  # provenance: its README.md


# ----------------------------------------------------------------------------- independent reference
def ref_knn(X, k):
    X = np.asarray(X, dtype=np.float64)
    S = X @ X.T
    n = len(X)
    return [sorted((j for j in range(n) if j != i), key=lambda j: (-S[i, j], j))[:k] for i in range(n)]


def ref_mknn(X, Y, k):
    a, b = ref_knn(X, k), ref_knn(Y, k)
    return np.mean([len(set(p) & set(q)) / k for p, q in zip(a, b)])


def ref_cycle(X, Y, k):
    a, b = ref_knn(X, k), ref_knn(Y, k)
    return np.mean([any(i in a[j] for j in b[i]) for i in range(len(a))])


def ref_lcs_len(x, y):
    T = np.zeros((len(x) + 1, len(y) + 1), dtype=int)
    for p in range(1, len(x) + 1):
        for q in range(1, len(y) + 1):
            T[p, q] = T[p - 1, q - 1] + 1 if x[p - 1] == y[q - 1] else max(T[p - 1, q], T[p, q - 1])
    return T[-1, -1]


def ref_levenshtein(x, y):
    T = np.zeros((len(x) + 1, len(y) + 1), dtype=int)
    T[:, 0] = np.arange(len(x) + 1)
    T[0, :] = np.arange(len(y) + 1)
    for p in range(1, len(x) + 1):
        for q in range(1, len(y) + 1):
            T[p, q] = min(T[p - 1, q] + 1, T[p, q - 1] + 1, T[p - 1, q - 1] + (x[p - 1] != y[q - 1]))
    return T[-1, -1]


def ref_lcs_knn(X, Y, k):
    return np.mean([ref_lcs_len(p, q) for p, q in zip(ref_knn(X, k), ref_knn(Y, k))]) / k


def ref_edit_knn(X, Y, k):
    return 1 - np.mean([ref_levenshtein(p, q) for p, q in zip(ref_knn(X, k), ref_knn(Y, k))]) / k


def ref_hsic_biased(K, L):
    n = len(K)
    H = np.eye(n) - np.ones((n, n)) / n
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def ref_hsic_unbiased(K, L):
    n = len(K)
    Kt = K * (1 - np.eye(n))
    Lt = L * (1 - np.eye(n))
    one = np.ones(n)
    return (np.trace(Kt @ Lt) + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2)) - 2 * one @ Kt @ Lt @ one / (n - 2)) / (n * (n - 3))


def ref_rbf(X, sigma):
    D2 = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    if sigma is None:
        sigma = np.median(np.sqrt(D2[np.triu_indices(len(X), 1)]))
    return np.exp(-D2 / (2 * sigma**2))


def ref_cka(X, Y, kernel="linear", sigma=None, unbiased=False):
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    K, L = (X @ X.T, Y @ Y.T) if kernel == "linear" else (ref_rbf(X, sigma), ref_rbf(Y, sigma))
    h = ref_hsic_unbiased if unbiased else ref_hsic_biased
    return h(K, L) / np.sqrt(h(K, K) * h(L, L))


def ref_cknna(X, Y, k):
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    n = len(X)
    K, L = X @ X.T, Y @ Y.T

    def mask(P):
        m = np.zeros((n, n))
        for i, row in enumerate(ref_knn_from_kernel(P, k)):
            m[i, row] = 1
        return m

    mK, mL = mask(K), mask(L)
    M_ = mK * mL
    return ref_hsic_unbiased(M_ * K, M_ * L) / np.sqrt(ref_hsic_unbiased(mK * K, mK * K) * ref_hsic_unbiased(mL * L, mL * L))


def ref_knn_from_kernel(P, k):
    n = len(P)
    return [sorted((j for j in range(n) if j != i), key=lambda j: (-P[i, j], j))[:k] for i in range(n)]


def ref_svcca(X, Y, dim=None, variance=None):
    """Standardised features and a fixed dim (platonic-rep's variant), or centred features and the
    directions explaining ``variance`` (Raghu et al., 2017); then textbook CCA."""
    def reduce(Z):
        Z = np.asarray(Z, dtype=np.float64)
        Z = Z - Z.mean(0)
        if dim is not None:
            sd = Z.std(0, ddof=1)
            Z = Z / np.where(sd > 0, sd, 1)
        U, s, Vt = np.linalg.svd(Z, full_matrices=False)
        keep = dim if dim is not None else next(i + 1 for i in range(len(s)) if np.sum(s[:i + 1] ** 2) >= variance * np.sum(s**2))
        return Z @ Vt[:keep].T  # projections onto the top directions (= U s), not orthonormalised

    A, B = reduce(X), reduce(Y)
    # Textbook CCA: singular values of Σaa^{-1/2} Σab Σbb^{-1/2}.
    n = len(A)
    Saa, Sbb, Sab = A.T @ A / (n - 1), B.T @ B / (n - 1), A.T @ B / (n - 1)
    # min(da, db) canonical correlations

    def inv_sqrt(S):
        w, V = np.linalg.eigh(S)
        return V @ np.diag(w**-0.5) @ V.T

    return np.mean(np.linalg.svd(inv_sqrt(Saa) @ Sab @ inv_sqrt(Sbb), compute_uv=False))


def ref_dcor(X, Y):
    def centred(Z):
        Z = np.asarray(Z, dtype=np.float64)
        a = np.sqrt(((Z[:, None, :] - Z[None, :, :]) ** 2).sum(-1))
        return a - a.mean(0, keepdims=True) - a.mean(1, keepdims=True) + a.mean()

    A, B = centred(X), centred(Y)
    return np.sqrt((A * B).mean() / np.sqrt((A * A).mean() * (B * B).mean()))


def l2(X):
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def correlated_pair(n, dx, dy, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 5))
    X = Z @ rng.standard_normal((5, dx)) + rng.standard_normal((n, dx))
    Y = Z @ rng.standard_normal((5, dy)) + 1.5 * rng.standard_normal((n, dy))
    return l2(X).astype(dtype), l2(Y).astype(dtype)


# ----------------------------------------------------------------------------- published numbers
def _reference_cases():
    spec = importlib.util.spec_from_file_location("metric_cases", REFERENCE_DIR / "metric_cases.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = json.loads((REFERENCE_DIR / "metric_vectors.json").read_text())["cases"]
    cases = []
    for key, case in data.items():
        name, n, da, db, seed, k = case["case"]
        A, B = module.make_case(name, n, da, db, seed)
        cases.append(pytest.param(module.l2norm(A), module.l2norm(B), k, case["peer"], case["exact"], id=key))
    return cases


@pytest.mark.parametrize("A, B, k, peer, exact", _reference_cases())
def test_matches_platonic_rep_reference_numbers(A, B, k, peer, exact):
    # kNN metrics are counts: identical up to float rounding of the mean.
    assert M.mutual_knn(A, B, k=k) == pytest.approx(peer["mutual_knn"], abs=1e-12)
    assert M.cycle_knn(A, B, k=k) == pytest.approx(peer["cycle_knn"], abs=1e-12)
    # platonic-rep reports the raw mean LCS length (float32 there, hence abs=1e-6).
    assert M.lcs_knn(A, B, k=k) * k == pytest.approx(peer["lcs_knn_not_divided_by_k"], abs=1e-6)
    assert M.edit_distance_knn(A, B, k=k) == pytest.approx(peer["edit_distance_knn"], abs=1e-12)
    # Exact definitions: agree to rounding.
    assert M.unbiased_cka(A, B) == pytest.approx(exact["unbiased_cka_linear"], rel=1e-9, abs=1e-12)
    assert M.cknna(A, B, k=k) == pytest.approx(exact["cknna"], rel=1e-9)
    # platonic-rep adds 1e-6 to the denominator; the gap stays at that order.
    assert M.cka(A, B) == pytest.approx(peer["cka_linear"], abs=1e-6)
    assert M.cka(A, B, kernel="rbf", sigma=1.0) == pytest.approx(peer["cka_rbf_sigma1"], abs=1e-6)
    assert M.cka_rbf(A, B, sigma=1.0) == pytest.approx(peer["cka_rbf_sigma1"], abs=1e-6)
    assert M.unbiased_cka(A, B) == pytest.approx(peer["unbiased_cka_linear_with_eps"], abs=1e-4)
    assert M.cknna(A, B, k=k) == pytest.approx(peer["cknna_with_eps"], abs=1e-4)


# ----------------------------------------------------------------------------- independent implementation
SHAPES = [(12, 3, 5, 2), (40, 8, 6, 5), (73, 20, 31, 10)]  # (N, Dx, Dy, k)


@pytest.mark.parametrize("n, dx, dy, k", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_knn_metrics_match_reference(n, dx, dy, k, seed):
    X, Y = correlated_pair(n, dx, dy, seed)
    assert M.mutual_knn(X, Y, k=k) == pytest.approx(ref_mknn(X, Y, k), abs=1e-12)
    assert M.cycle_knn(X, Y, k=k) == pytest.approx(ref_cycle(X, Y, k), abs=1e-12)
    assert M.lcs_knn(X, Y, k=k) == pytest.approx(ref_lcs_knn(X, Y, k), abs=1e-12)
    assert M.edit_distance_knn(X, Y, k=k) == pytest.approx(ref_edit_knn(X, Y, k), abs=1e-12)
    assert M.cknna(X, Y, k=k) == pytest.approx(ref_cknna(X, Y, k), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("n, dx, dy, k", SHAPES)
def test_kernel_and_other_metrics_match_reference(n, dx, dy, k):
    X, Y = correlated_pair(n, dx, dy, seed=n)
    for unbiased in (False, True):
        assert M.cka(X, Y, unbiased=unbiased) == pytest.approx(ref_cka(X, Y, unbiased=unbiased), rel=1e-9, abs=1e-12)
        for sigma in (None, 0.7):
            got = M.cka(X, Y, kernel="rbf", sigma=sigma, unbiased=unbiased)
            assert got == pytest.approx(ref_cka(X, Y, "rbf", sigma, unbiased), rel=1e-9, abs=1e-12)
    dim = min(4, dx, dy)
    assert M.svcca_platonic(X, Y, dim=dim) == pytest.approx(ref_svcca(X, Y, dim), rel=1e-8)
    for variance in (0.99, 0.8):
        assert M.svcca(X, Y, variance=variance) == pytest.approx(ref_svcca(X, Y, variance=variance), rel=1e-8)
    assert M.distance_correlation(X, Y) == pytest.approx(ref_dcor(X, Y), rel=1e-9)
    # the bias-corrected statistic against the dcor package (Székely & Rizzo, 2014)
    dcor = pytest.importorskip("dcor")
    assert M.bias_corrected_distance_correlation(X, Y) == pytest.approx(
        dcor.u_distance_correlation_sqr(np.asarray(X, float), np.asarray(Y, float)), rel=1e-9, abs=1e-12)


def test_linear_cka_feature_space_equals_gram_path_when_d_exceeds_n():
    # D > N switches the per-layer state to N×N Grams; D < N stays in feature space; mixed pairs too.
    rng = np.random.default_rng(7)
    X = rng.standard_normal((15, 40))
    Y = X[:, :10] @ rng.standard_normal((10, 6)) + rng.standard_normal((15, 6))
    for unbiased in (False, True):
        assert M.cka(X, Y, unbiased=unbiased) == pytest.approx(ref_cka(X, Y, unbiased=unbiased), rel=1e-9)
        assert M.cka(X, X[:, :30], unbiased=unbiased) == pytest.approx(ref_cka(X, X[:, :30], unbiased=unbiased), rel=1e-9)


def test_float32_input_matches_float64_reference():
    X, Y = correlated_pair(60, 16, 24, seed=3, dtype=np.float32)
    assert M.mutual_knn(X, Y, k=5) == pytest.approx(ref_mknn(X, Y, 5), abs=1e-12)
    assert M.cka(X, Y) == pytest.approx(ref_cka(X, Y), rel=1e-5)
    assert M.cknna(X, Y, k=5) == pytest.approx(ref_cknna(X, Y, 5), rel=1e-5)


@pytest.mark.parametrize("block", [1, 3, 7, 64])
def test_blocked_search_equals_full_sort_with_ties(block):
    # Small integer features make many exactly equal similarities: the lower index must win.
    rng = np.random.default_rng(11)
    X = rng.integers(0, 3, size=(30, 4)).astype(np.float64)
    idx, sims = M.nearest_neighbors(X, k=6, block=block)
    expected = ref_knn(X, 6)
    np.testing.assert_array_equal(idx, np.array(expected))
    np.testing.assert_array_equal(sims, np.take_along_axis(X @ X.T, np.array(expected), axis=1))
    assert len(np.unique(X @ X.T)) < 30  # the case really has ties
