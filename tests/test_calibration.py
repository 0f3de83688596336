"""Calibrated scores and p-values equal those of the reference implementation of null calibration,
``calibrated-similarity`` 0.1.1 (Gröger, Wen & Brbić, ICML 2026), on the same permutations.

The package draws its permutations through ``perm_fn``; we hand it the permutations that
``permutation_test`` draws (``numpy.random.default_rng(seed).permutation(N)``, in order) and a
``sim`` that scores a pair from scratch with repalign's metric function. It computes in float32,
hence the 1e-5 tolerance. Per pair: ``calibrate``; best pair: ``calibrate_layers(agg="max")``,
one permutation for all layers."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest

import repalign.metrics as M
from repalign.stats import permutation_test

cs = pytest.importorskip("calibrated_similarity")
torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def one_numba_thread():
    """The package calls the metric once per pair and permutation: on one thread at N = 40 (starting
    numba's parallel threads costs 30x the score itself)."""
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(previous)


def layers(n, dims, seed, noise, latent):
    rng = np.random.default_rng(seed)
    return [latent @ rng.standard_normal((latent.shape[1], d)) + noise * rng.standard_normal((n, d)) for d in dims]


def our_permutations(seed: int, n: int, count: int):
    """perm_fn for the package: the permutations permutation_test draws, in the same order."""
    rng = np.random.default_rng(seed)
    perms = iter([torch.from_numpy(rng.permutation(n)) for _ in range(count)])
    return lambda n_, device: next(perms)


CASES = [("mknn", M.mutual_knn, {"k": 4}, 0.05), ("cka", M.cka, {}, 0.1), ("unbiased_cka", M.unbiased_cka, {}, 0.05)]


@pytest.mark.parametrize("metric, func, params, alpha", CASES)
def test_calibration_equals_calibrated_similarity_on_the_same_permutations(metric, func, params, alpha):
    n, permutations, seed = 40, 59, 3
    latent = np.random.default_rng(1).standard_normal((n, 2))
    A = layers(n, [5, 4], seed=2, noise=1.2, latent=latent)
    B = layers(n, [6, 3, 5], seed=4, noise=1.2, latent=latent)
    res = permutation_test(A, B, metric, permutations=permutations, seed=seed, alpha=alpha, **params)
    top = M.get_metric(metric).bounds[1]
    assert top == 1.0  # the package's default smax; ours is the metric's upper bound

    def sim(X, Y):
        return func(X.numpy(), Y.numpy(), **params)

    prepared_a = [torch.from_numpy(M.prepare(a)) for a in A]
    prepared_b = [torch.from_numpy(M.prepare(b)) for b in B]
    for i, X in enumerate(prepared_a):
        for j, Y in enumerate(prepared_b):
            calibrated, p, tau = cs.calibrate(X, Y, sim, K=permutations, alpha=alpha, smax=top,
                                              perm_fn=our_permutations(seed, n, permutations))
            assert res.calibrated[i, j] == pytest.approx(float(calibrated), abs=1e-5)
            assert res.p_value[i, j] == pytest.approx(float(p), abs=1e-5)
            assert res.null_quantile[i, j] == pytest.approx(float(tau), abs=1e-5)
    calibrated, p, tau = cs.calibrate_layers(prepared_a, prepared_b, sim, agg="max", K=permutations, alpha=alpha, smax=top,
                                             perm_fn=our_permutations(seed, n, permutations))
    assert res.calibrated_best == pytest.approx(float(calibrated), abs=1e-5)
    assert res.p_value_best == pytest.approx(float(p), abs=1e-5)
    # the case is informative: some calibrated scores are strictly between 0 and 1, some p-values above the minimum
    assert ((res.calibrated > 0) & (res.calibrated < 1)).any() and (res.p_value > 1 / (permutations + 1)).any()


def test_threshold_is_the_order_statistic_of_observed_and_null_together():
    """τ = the ⌈(1 − α)(K + 1)⌉-th smallest of {s, null_1..null_K}; not the interpolated null quantile."""
    from repalign.stats import _calibrate, _threshold

    rng = np.random.default_rng(0)
    null = rng.uniform(0.0, 0.3, size=(19, 4))
    observed = np.array([0.5, 0.1, 0.25, 0.29])
    tau = _threshold(observed, null, 0.05)  # ⌈0.95 · 20⌉ = 19: the second largest of the 20 scores
    expected = np.sort(np.vstack([observed, null]), axis=0)[18]
    np.testing.assert_array_equal(tau, expected)
    assert tau[0] == null[:, 0].max() and math.isclose(_calibrate(0.5, tau[0], 1.0), (0.5 - tau[0]) / (1 - tau[0]))
    assert not np.allclose(tau, np.quantile(null, 0.95, axis=0))
    assert _calibrate(0.1, 1.0, 1.0) == 0.0 and _calibrate(1.0, 0.2, 1.0) == 1.0
    # a metric bounded by 2 divides by 2 − τ: the package with smax=2, fed the same observed and null scores
    scores = [1.8, 0.2, 1.0, 0.5, 1.2]
    feed = iter(scores)
    calibrated, p, tau_cs = cs.calibrate(torch.zeros(3, 1), torch.zeros(3, 1), lambda X, Y: next(feed), K=4, alpha=0.5, smax=2.0)
    ours = _threshold(np.float64(1.8), np.array(scores[1:]), 0.5)
    assert float(tau_cs) == pytest.approx(float(ours)) == 1.0
    assert float(calibrated) == pytest.approx(float(_calibrate(1.8, ours, 2.0)), abs=1e-6) and float(p) == pytest.approx(0.2)
