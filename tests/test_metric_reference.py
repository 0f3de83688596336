"""Metric values against (1) the published platonic-rep numbers in tests/data/platonic_rep and
(2) the independent float64 implementations of repalign.metrics.reference (full N×N matrices,
sorting, sets, textbook dynamic programming, explicit centring matrices)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import repalign.metrics as M
from repalign.metrics import reference as R

REFERENCE_DIR = Path(__file__).parent / "data" / "platonic_rep"  # provenance: its README.md


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
    assert M.mutual_knn(X, Y, k=k) == pytest.approx(R.mutual_knn(X, Y, k), abs=1e-12)
    assert M.cycle_knn(X, Y, k=k) == pytest.approx(R.cycle_knn(X, Y, k), abs=1e-12)
    assert M.lcs_knn(X, Y, k=k) == pytest.approx(R.lcs_knn(X, Y, k), abs=1e-12)
    assert M.edit_distance_knn(X, Y, k=k) == pytest.approx(R.edit_distance_knn(X, Y, k), abs=1e-12)
    assert M.cknna(X, Y, k=k) == pytest.approx(R.cknna(X, Y, k), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("n, dx, dy, k", SHAPES)
def test_kernel_and_other_metrics_match_reference(n, dx, dy, k):
    X, Y = correlated_pair(n, dx, dy, seed=n)
    for unbiased in (False, True):
        assert M.cka(X, Y, unbiased=unbiased) == pytest.approx(R.cka(X, Y, unbiased=unbiased), rel=1e-9, abs=1e-12)
        for sigma in (None, 0.7):
            got = M.cka(X, Y, kernel="rbf", sigma=sigma, unbiased=unbiased)
            assert got == pytest.approx(R.cka(X, Y, "rbf", sigma, unbiased), rel=1e-9, abs=1e-12)
    dim = min(4, dx, dy)
    assert M.svcca_platonic(X, Y, dim=dim) == pytest.approx(R.svcca(X, Y, dim), rel=1e-8)
    for variance in (0.99, 0.8):
        assert M.svcca(X, Y, variance=variance) == pytest.approx(R.svcca(X, Y, variance=variance), rel=1e-8)
    assert M.distance_correlation(X, Y) == pytest.approx(R.dcor(X, Y), rel=1e-9)
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
        assert M.cka(X, Y, unbiased=unbiased) == pytest.approx(R.cka(X, Y, unbiased=unbiased), rel=1e-9)
        assert M.cka(X, X[:, :30], unbiased=unbiased) == pytest.approx(R.cka(X, X[:, :30], unbiased=unbiased), rel=1e-9)


def test_float32_input_matches_float64_reference():
    X, Y = correlated_pair(60, 16, 24, seed=3, dtype=np.float32)
    assert M.mutual_knn(X, Y, k=5) == pytest.approx(R.mutual_knn(X, Y, 5), abs=1e-12)
    assert M.cka(X, Y) == pytest.approx(R.cka(X, Y), rel=1e-5)
    assert M.cknna(X, Y, k=5) == pytest.approx(R.cknna(X, Y, 5), rel=1e-5)


@pytest.mark.parametrize("block", [1, 3, 7, 64])
def test_blocked_search_equals_full_sort_with_ties(block):
    # Small integer features make many exactly equal similarities: the lower index must win.
    rng = np.random.default_rng(11)
    X = rng.integers(0, 3, size=(30, 4)).astype(np.float64)
    idx, sims = M.nearest_neighbors(X, k=6, block=block)
    expected = R.knn_sets(X, 6)
    np.testing.assert_array_equal(idx, np.array(expected))
    np.testing.assert_array_equal(sims, np.take_along_axis(X @ X.T, np.array(expected), axis=1))
    assert len(np.unique(X @ X.T)) < 30  # the case really has ties
