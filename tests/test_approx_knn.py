"""Approximate neighbour lists (faiss) and their measured recall, against brute-force references."""

import numpy as np
import pytest

from repalign.errors import RepalignError
from repalign.metrics import mknn, nearest_neighbors, prepare
from repalign.metrics.approx import approximate_knn, knn_recall
from repalign.metrics.knn import mutual_knn_from_states


def brute_force_lists(X, k):
    """Independent reference: full similarity in float64, self excluded, ties to the lower index."""
    S = X.astype(np.float64) @ X.astype(np.float64).T
    np.fill_diagonal(S, -np.inf)
    return np.array([sorted(range(len(X)), key=lambda j: (-S[i, j], j))[:k] for i in range(len(X))])


@pytest.fixture(scope="module")
def clustered():
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((20, 24))
    X = centres[rng.integers(0, 20, 600)] + 0.4 * rng.standard_normal((600, 24))
    Y = X @ rng.standard_normal((24, 16)) + 0.5 * rng.standard_normal((600, 16))
    return prepare(X.astype(np.float32)), prepare(Y.astype(np.float32))


def test_exact_method_is_the_exact_search(clustered):
    X, _ = clustered
    state, recall = approximate_knn(X, 7, "exact")
    assert recall == 1.0
    np.testing.assert_array_equal(state.ordered()[0], nearest_neighbors(X, 7)[0])


def test_recall_of_a_list_against_reference():
    exact = np.array([[1, 2, 3], [0, 2, 3]])
    assert knn_recall(np.array([[3, 1, 9], [0, 2, 3]]), exact) == pytest.approx(5 / 6)
    with pytest.raises(RepalignError, match="cannot be compared"):
        knn_recall(exact[:, :2], exact)


@pytest.mark.parametrize("method, options", [("faiss-hnsw", {"hnsw_m": 16, "ef_search": 64}), ("faiss-ivf", {"nlist": 12, "nprobe": 4})])
def test_approximate_lists_follow_the_knn_convention_and_report_true_recall(clustered, method, options):
    pytest.importorskip("faiss")
    X, Y = clustered
    k = 8
    state, recall = approximate_knn(X, k, method, recall_queries=10_000, **options)  # all rows measured
    exact = brute_force_lists(X, k)
    indices, similarities = state.ordered()
    assert recall == pytest.approx(knn_recall(indices, exact))
    assert 0.8 <= recall <= 1.0
    n = X.shape[0]
    assert indices.shape == (n, k) and indices.dtype == np.int64
    assert not np.any(indices == np.arange(n)[:, None])  # self excluded
    assert all(len(set(row)) == k for row in indices)
    assert np.allclose(state.weights.sum(axis=1), k)  # every list holds k neighbours' worth of weight
    # similarities are the exact inner products of the listed pairs, in decreasing order
    sims = np.einsum("ij,ikj->ik", X.astype(np.float64), X[indices].astype(np.float64))
    np.testing.assert_allclose(similarities, sims, rtol=0, atol=1e-12)
    assert np.all(np.diff(similarities, axis=1) <= 0)
    # scores from approximate lists are close to exact ones when recall is high
    other, _ = approximate_knn(Y, k, method, **options)
    approx_score = mutual_knn_from_states(state, other, k)
    assert abs(approx_score - mknn(X, Y, k=k)) <= 2 * (1 - recall) + 0.05


def test_recall_is_measured_on_a_sample_when_n_is_large(clustered):
    pytest.importorskip("faiss")
    X, _ = clustered
    _, sampled = approximate_knn(X, 5, "faiss-hnsw", hnsw_m=4, ef_search=5, recall_queries=200, seed=1)
    state, full = approximate_knn(X, 5, "faiss-hnsw", hnsw_m=4, ef_search=5, recall_queries=10_000, seed=1)
    assert full == pytest.approx(knn_recall(state.ordered()[0], brute_force_lists(X, 5)))
    assert abs(sampled - full) < 0.1


def test_bad_options_fail_clearly(clustered):
    X, _ = clustered
    with pytest.raises(RepalignError, match="use one of exact, faiss-hnsw, faiss-ivf"):
        approximate_knn(X, 5, "annoy")
    with pytest.raises(RepalignError, match="k=600 is out of range"):
        approximate_knn(X, 600, "exact")
    pytest.importorskip("faiss")
    with pytest.raises(RepalignError, match="nprobe=50 is out of range"):
        approximate_knn(X, 5, "faiss-ivf", nlist=10, nprobe=50)
