"""Exact ties (duplicate rows): scores are a property of the data, not of sample order, BLAS or threads.

The definition under test (docs/metrics.md, "Ties"): samples tied with the k-th neighbour enter with
their probability of being chosen under uniformly random tie-breaking, independently in X and Y.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import repalign.metrics as M
from repalign.metrics import _numba, neighbors
from repalign.metrics.neighbors import knn_state
from repalign.stats import permutation_test

KNN_METRICS = ["mknn", "cycle_knn", "lcs_knn", "edit_distance_knn", "cknna"]


def duplicated(rng, n, distinct, width):
    """n rows drawn from `distinct` random vectors: heavy exact duplication, as in element-embedding layers."""
    return rng.standard_normal((distinct, width))[rng.integers(0, distinct, n)]


def partly_duplicated(rng, n, width, share=0.4):
    """Continuous rows of which a share are copies of other rows."""
    X = rng.standard_normal((n, width))
    copies = rng.choice(n, int(share * n), replace=False)
    X[copies] = X[rng.choice(np.setdiff1d(np.arange(n), copies), copies.size)]
    return X


def hard_lists(S, k, rng):
    """One uniformly random tie-breaking: rank by similarity, equal values in a random order."""
    n = S.shape[0]
    noise = rng.permutation(n * n).reshape(n, n)  # random, distinct secondary keys
    order = np.lexsort((noise, -S), axis=1)
    return order[:, :k]


def test_mknn_and_cycle_knn_are_the_expectation_over_random_tie_breaking():
    """Monte Carlo over explicit random tie-breakings converges to the exact expected score."""
    rng = np.random.default_rng(0)
    n, k = 60, 6
    X = M.prepare(duplicated(rng, n, 9, 5))
    Y = M.prepare(duplicated(rng, n, 7, 4))
    exact_mknn, exact_cycle = M.mknn(X, Y, k=k), M.cycle_knn(X, Y, k=k)

    def dense(Z):
        # similarities from the distinct rows, so duplicates carry identical values (exact ties)
        _, first, inverse = np.unique(Z, axis=0, return_index=True, return_inverse=True)
        U = Z[first].astype(np.float64)
        S = (U @ U.T)[inverse.ravel()][:, inverse.ravel()]
        np.fill_diagonal(S, -np.inf)
        return S

    SX, SY = dense(X), dense(Y)
    draws_mknn, draws_cycle = [], []
    for _ in range(3000):
        a, b = hard_lists(SX, k, rng), hard_lists(SY, k, rng)
        draws_mknn.append(np.mean([len(set(x) & set(y)) for x, y in zip(a.tolist(), b.tolist())]) / k)
        in_a = [set(r) for r in a.tolist()]
        draws_cycle.append(np.mean([any(i in in_a[j] for j in b[i]) for i in range(n)]))
    for exact, draws in ((exact_mknn, draws_mknn), (exact_cycle, draws_cycle)):
        se = np.std(draws) / np.sqrt(len(draws))
        assert abs(np.mean(draws) - exact) < 4 * se + 1e-12, (exact, np.mean(draws), se)
    # the old rule (ties to the lower index on both sides) is coordinated across X and Y and inflated
    lowest = lambda S: np.argsort(-S, axis=1, kind="stable")[:, :k]  # noqa: E731
    a, b = lowest(SX), lowest(SY)
    coordinated = np.mean([len(set(x) & set(y)) for x, y in zip(a.tolist(), b.tolist())]) / k
    assert coordinated > exact_mknn + 0.01


@pytest.mark.parametrize("name", KNN_METRICS)
def test_scores_do_not_depend_on_the_order_of_the_samples(name):
    rng = np.random.default_rng(1)
    n = 150
    X = M.prepare(partly_duplicated(rng, n, 8))
    Y = M.prepare(X[:, :6] + 0.3 * partly_duplicated(rng, n, 6))
    func = M.get_metric(name).function
    base = func(X, Y, k=7)
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(n)
        if name == "cknna":  # sums of real kernel values in another order
            assert func(X[perm], Y[perm], k=7) == pytest.approx(base, abs=1e-6)
        else:  # counts and products of tie weights: exactly equal
            assert func(X[perm], Y[perm], k=7) == base


def test_neighbour_lists_do_not_depend_on_blas_threads_numba_threads_or_blocks():
    rng = np.random.default_rng(2)
    X = M.prepare(partly_duplicated(rng, 500, 48).astype(np.float32))
    with threadpool_limits(1):
        one = knn_state(X, 9, block=64)
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        with threadpool_limits(2):
            two = knn_state(X, 9, block=2048)
    finally:
        numba.set_num_threads(previous)
    for field in ("indices", "similarities", "weights", "levels"):
        np.testing.assert_array_equal(getattr(one, field), getattr(two, field))


def test_duplicates_are_neighbours_with_weights_summing_to_k():
    rng = np.random.default_rng(3)
    X = M.prepare(duplicated(rng, 100, 6, 8))
    state = knn_state(X, 10)
    assert np.allclose(state.weights.sum(axis=1), 10)
    # each group holds about 16 copies: all of a sample's own copies tie at the top; 10 of its 15+ copies are drawn
    counts = np.unique(X, axis=0, return_counts=True)[1]
    assert counts.min() > 11
    row_copies = [(state.similarities[i][state.indices[i] < 100] == state.similarities[i].max()).sum() for i in range(100)]
    assert all(w < 1 for w in state.weights[0][state.indices[0] < 100])  # a tie of more than k copies
    assert min(row_copies) >= 11


@pytest.mark.parametrize("data", ["continuous", "duplicates"])
@pytest.mark.parametrize("metric, params", [("mknn", {"k": 10}), ("cknna", {"k": 10}), ("cka", {}), ("dcor", {})])
def test_type_one_error_with_and_without_duplicates(data, metric, params):
    """Null data (X and Y unrelated): p ≤ 0.05 in about 5% of data sets, for single pairs and the best pair.

    60 data sets, 99 permutations, 2×2 layers. Binomial(60, 0.05): 99.9% of outcomes lie in 0..9."""
    sets, rejected_single, rejected_best = 60, 0, 0
    for s in range(sets):
        rng = np.random.default_rng(1000 + s)
        if data == "duplicates":
            base_a, base_b = duplicated(rng, 100, 6, 8), duplicated(rng, 100, 6, 8)
        else:
            base_a, base_b = rng.standard_normal((100, 8)), rng.standard_normal((100, 8))
        # a second layer per model: a non-linear function of the first (duplicates stay duplicates)
        A = [base_a, np.tanh(base_a @ rng.standard_normal((8, 6)))]
        B = [base_b, np.tanh(base_b @ rng.standard_normal((8, 5)))]
        res = permutation_test(A, B, metric, permutations=99, seed=s, **params)
        rejected_single += res.p_value[0, 0] <= 0.05
        rejected_best += res.p_value_best <= 0.05
    assert rejected_single <= 9 and rejected_best <= 9, (rejected_single, rejected_best)


# ----------------------------------------------------------------------------- the fused search against the two-pass one
def two_pass_search(rows, ks, block):
    """The search before the fused merge, kept as the reference: upper-triangle blocks in row order,
    each merged into its rows' lists and then, transposed, into its columns' lists."""
    n = rows.n
    best_sim, best_idx = np.full((n, ks), -np.inf), np.full((n, ks), n, dtype=np.int64)
    for r0, Xr in neighbors.rechunked_rows(rows, block):
        for c0, Xc in neighbors.rechunked_rows(rows, block):
            if c0 >= r0:
                S = Xr @ Xc.T
                _numba.topk_update_rows(S, r0, c0, best_sim, best_idx, c0 == r0)
                _numba.topk_update_cols(S, r0, c0, best_sim, best_idx, c0 == r0)
    return best_idx, best_sim


def lattice(rng, n, width):
    """Rows of small integers: many exactly equal inner products between different rows, some duplicates."""
    X = rng.integers(-2, 3, (n, width)).astype(np.float32)
    X[rng.choice(n, n // 5, replace=False)] = X[rng.choice(n, n // 5)]
    return X


@pytest.mark.parametrize("buffer", [0, 1, 16], ids=["always-overflow", "small-buffer", "default"])
@pytest.mark.parametrize("block", [50, 256])
def test_fused_search_gives_the_two_pass_candidates_bit_for_bit(monkeypatch, buffer, block):
    monkeypatch.setattr(neighbors, "_BUFFER", buffer)
    rng = np.random.default_rng(8)
    for X in (M.prepare(rng.standard_normal((700, 24)).astype(np.float32)), lattice(rng, 600, 5)):
        rows = neighbors.DistinctRows.in_memory(X)
        for ks in (1, 12):
            idx, sim = neighbors.exact_search(rows, ks, block)
            ref_idx, ref_sim = two_pass_search(rows, ks, block)
            np.testing.assert_array_equal(idx, ref_idx)
            np.testing.assert_array_equal(sim, ref_sim)


def test_fused_search_with_two_numba_threads():
    rng = np.random.default_rng(9)
    rows = neighbors.DistinctRows.in_memory(lattice(rng, 900, 6))
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        idx, sim = neighbors.exact_search(rows, 9, 128)
    finally:
        numba.set_num_threads(previous)
    ref_idx, ref_sim = two_pass_search(rows, 9, 128)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(sim, ref_sim)


def test_row_groups_equal_the_digest_groups_also_on_a_hash_collision(monkeypatch):
    rng = np.random.default_rng(10)
    X = duplicated(rng, 400, 37, 6).astype(np.float32)
    X[::7] *= -0.0  # -0.0 rows group with 0.0 rows
    reference = neighbors.duplicate_groups(neighbors.row_digests(X))
    fields = ("group", "counts", "first", "mptr", "members")
    for groups in (neighbors.row_groups(X),):
        for field in fields:
            np.testing.assert_array_equal(getattr(groups, field), getattr(reference, field))
    # every row hashing alike: the byte check finds the collision and the digests decide
    monkeypatch.setattr(neighbors._numba, "row_hashes", lambda B: np.zeros(B.shape[0], dtype=np.uint64))
    collided = neighbors.row_groups(X)
    for field in fields:
        np.testing.assert_array_equal(getattr(collided, field), getattr(reference, field))


def test_completed_lists_equal_lists_from_every_candidate():
    """Rows completed against all rows (tied boundaries: lattice data) give the lists that a search
    proposing every row as a candidate gives (no truncation, no completion)."""
    rng = np.random.default_rng(11)
    X = lattice(rng, 500, 4)
    groups = neighbors.duplicate_groups(neighbors.row_digests(X))
    rows = neighbors.DistinctRows.in_memory(np.ascontiguousarray(X[groups.first]))

    def every_row(rows, ks):
        U = rows.blocks().__next__()[1].astype(np.float64)
        S = U @ U.T
        np.fill_diagonal(S, -np.inf)
        order = np.argsort(-S, axis=1, kind="stable")[:, :-1]
        return order.astype(np.int64), np.take_along_axis(S, order, axis=1)

    for k in (3, 10):
        ours = knn_state(X, k)
        full = neighbors.build_knn_state(groups, rows, k, every_row)
        for field in ("indices", "similarities", "weights", "levels"):
            np.testing.assert_array_equal(getattr(ours, field), getattr(full, field))
