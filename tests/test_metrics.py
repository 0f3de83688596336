"""Kernels against their numpy twins, invariances, chance level, registry and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

import repalign.metrics as M
from repalign.errors import RepalignError
from repalign.metrics import _numba


def l2(X):
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def pair(n=50, dx=12, dy=9, seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 4))
    X = Z @ rng.standard_normal((4, dx)) + 0.7 * rng.standard_normal((n, dx))
    Y = Z @ rng.standard_normal((4, dy)) + 0.7 * rng.standard_normal((n, dy))
    return l2(X), l2(Y)


# ----------------------------------------------------------------------------- numba kernels vs twins
@pytest.mark.parametrize("n, d, k, block", [(9, 3, 8, 2), (57, 6, 5, 16), (130, 10, 12, 2048)])
def test_topk_blocked_matches_numpy_twin(n, d, k, block):
    X = np.random.default_rng(n).standard_normal((n, d))
    idx, sims = _numba.topk_blocked(X, k, block)
    ref_idx, ref_sims = _numba.topk_numpy(X, k)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, ref_sims, rtol=0, atol=1e-12)


def tied_lists(n, k, rng):
    """Random tie-aware lists: a few sure levels then one boundary level with weight r/m."""
    idx, w, lev = [], [], []
    for i in range(n):
        others = rng.permutation([j for j in range(n) if j != i])
        sure = int(rng.integers(0, k))
        m = int(rng.integers(k - sure, k - sure + 4))
        members = others[:sure + m]
        # sure members spread over contiguous levels 0..top-1 (several may share one)
        levels = list(np.unique(rng.integers(0, sure, sure), return_inverse=True)[1]) if sure else []
        top = max(levels) + 1 if levels else 0
        weights = [1.0] * sure + [(k - sure) / m] * m
        row_lev = levels + [top] * m
        order = np.argsort(members)
        idx.append(members[order])
        w.append(np.array(weights)[order])
        lev.append(np.array(row_lev)[order])
    width = max(len(r) for r in idx)

    def pad(rows, fill, dt):
        return np.array([np.concatenate([r, np.full(width - len(r), fill)]) for r in rows], dtype=dt)

    return pad(idx, n, np.int64), pad(w, 0.0, np.float64), pad(lev, -1, np.int64)


def test_list_kernels_match_numpy_twins():
    rng = np.random.default_rng(5)
    n, k = 30, 5
    ai, aw, alev = tied_lists(n, k, rng)
    bi, bw, blev = tied_lists(n, k, rng)
    bi[:6], bw[:6], blev[:6] = ai[:6], aw[:6], alev[:6]  # some identical rows
    np.testing.assert_allclose(_numba.expected_overlap(ai, aw, bi, bw), _numba.expected_overlap_numpy(ai, aw, bi, bw), atol=1e-12)
    np.testing.assert_allclose(_numba.cycle_probabilities(ai, aw, bi, bw, k), _numba.cycle_probabilities_numpy(ai, aw, bi, bw, k), atol=1e-12)
    np.testing.assert_allclose(_numba.group_lcs(ai, aw, alev, bi, bw, blev), _numba.group_lcs_numpy(ai, aw, alev, bi, bw, blev), atol=1e-12)
    np.testing.assert_allclose(_numba.group_levenshtein(ai, aw, alev, bi, bw, blev),
                               _numba.group_levenshtein_numpy(ai, aw, alev, bi, bw, blev), atol=1e-12)
    # identical rows: the whole expected overlap, and the list matched with itself level by level
    np.testing.assert_allclose(_numba.group_lcs(ai, aw, alev, ai, aw, alev), _numba.expected_overlap(ai, aw, ai, aw), atol=1e-12)


def state_of_ordered(idx):
    """KnnState of tie-free ordered lists (N, k): each neighbour its own level, rank = level."""
    from repalign.metrics.knn import KnnState

    n, k = idx.shape
    order = np.argsort(idx, axis=1)
    levels = np.broadcast_to(np.arange(k), idx.shape)
    return KnnState(np.take_along_axis(idx, order, axis=1).astype(np.int64), np.zeros(idx.shape), np.ones(idx.shape),
                    np.take_along_axis(levels, order, axis=1).astype(np.int64), k)


def test_known_lcs_and_levenshtein_values():
    from repalign.metrics.knn import edit_distance_knn_from_states, lcs_knn_from_states

    # 9 samples (labels must be sample indices); rows 3.. compare a list with itself
    same = [[0, 1, 2, 3]] * 6
    a = state_of_ordered(np.array([[1, 2, 3, 4]] * 3 + same))
    b = state_of_ordered(np.array([[1, 2, 4, 3], [5, 6, 7, 8], [2, 3, 4, 5]] + same))
    # swapped tail: LCS "123", two substitutions; disjoint: nothing shared, four substitutions;
    # shifted: LCS "234", delete 1 and append 5.
    lcs = _numba.group_lcs(a.indices, a.weights, a.levels, b.indices, b.weights, b.levels)
    lev = _numba.group_levenshtein(a.indices, a.weights, a.levels, b.indices, b.weights, b.levels)
    np.testing.assert_array_equal(lcs, [3, 0, 3] + [4] * 6)
    np.testing.assert_array_equal(lev, [2, 4, 2] + [0] * 6)
    assert lcs_knn_from_states(a, b, 4) == pytest.approx((6 + 24) / 36)
    assert edit_distance_knn_from_states(a, b, 4) == pytest.approx(1 - 8 / 36)


def test_masked_kernel_stats_and_unbiased_hsic_match_twins():
    from repalign.metrics.neighbors import knn_state

    X, Y = pair(35, 6, 8, seed=2)
    X[5:9] = X[4]  # duplicates: tie levels with weights below 1
    a, b = knn_state(X, 6), knn_state(Y, 6)
    assert (a.weights[(a.weights > 0)] < 1).any()
    got = _numba.masked_kernel_stats(a.indices, a.similarities, a.weights, b.indices, b.similarities, b.weights)
    ref = _numba.masked_kernel_stats_numpy(a.indices, a.similarities, a.weights, b.indices, b.similarities, b.weights)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    rng = np.random.default_rng(0)
    K, L = rng.standard_normal((2, 20, 20))  # non-symmetric on purpose
    Kt, Lt = K * (1 - np.eye(20)), L * (1 - np.eye(20))
    stats = (np.trace(Kt @ Lt), Kt.sum(), Lt.sum(), (Kt @ Lt).sum())
    assert _numba.hsic_unbiased_from_stats(*stats, 20.0) == pytest.approx(_numba.hsic_unbiased_numpy(K, L), rel=1e-12)


# ----------------------------------------------------------------------------- invariances
@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_invariant_to_orthogonal_transform_and_isotropic_scaling(unbiased):
    X, Y = pair(40, 10, 7, seed=4)
    Q = ortho_group.rvs(10, random_state=1)
    base = M.cka(X, Y, unbiased=unbiased)
    assert M.cka(3.5 * X @ Q, Y, unbiased=unbiased) == pytest.approx(base, rel=1e-10)
    assert M.cka(X, 0.01 * Y, unbiased=unbiased) == pytest.approx(base, rel=1e-10)
    # RBF with the median bandwidth scales with the data, so it is invariant too.
    rbf = M.cka(X, Y, kernel="rbf", unbiased=unbiased)
    assert M.cka(2.0 * X @ Q, Y, kernel="rbf", unbiased=unbiased) == pytest.approx(rbf, rel=1e-9)


def test_knn_metrics_invariant_to_positive_row_scaling_and_feature_rotation():
    X, Y = pair(60, 8, 8, seed=6)
    scale = np.random.default_rng(0).uniform(0.5, 3.0, size=(60, 1))
    Q = ortho_group.rvs(8, random_state=2)
    for f in (M.mutual_knn, M.cycle_knn, M.lcs_knn, M.edit_distance_knn):
        # Row scaling changes inner products, so it is applied before normalising, as the pipeline does.
        assert f(M.prepare(scale * X), Y, k=5) == f(X, Y, k=5)
        assert f(X @ Q, Y, k=5) == pytest.approx(f(X, Y, k=5), abs=0)
    assert M.cknna(X @ Q, Y, k=5) == pytest.approx(M.cknna(X, Y, k=5), rel=1e-9)


def test_metric_of_x_with_itself_is_one():
    X, _ = pair(45, 12, 12, seed=8)
    for name in ("mknn", "lcs_knn", "edit_distance_knn", "cka", "unbiased_cka", "cka_rbf", "cknna", "svcca", "dcor"):
        assert M.get_metric(name).function(X, X) == pytest.approx(1.0, abs=1e-12), name
    # cycle_knn(X, X) is the fraction of samples with at least one mutual neighbour (can be < 1).
    idx, _ = M.nearest_neighbors(X, k=10)
    mutual = [any(i in idx[j] for j in idx[i]) for i in range(len(X))]
    assert M.cycle_knn(X, X, k=10) == pytest.approx(np.mean(mutual))


def test_mknn_chance_level_for_independent_data():
    n, k, seeds = 120, 8, 24
    values = []
    for seed in range(seeds):
        rng = np.random.default_rng(100 + seed)
        values.append(M.mknn(l2(rng.standard_normal((n, 16))), l2(rng.standard_normal((n, 16))), k=k))
    chance = M.get_metric("mknn").chance_level(n, k=k)
    assert chance == k / (n - 1)
    # Per sample, the overlap of two independent k-subsets of n-1 is hypergeometric; mknn averages n of
    # them (weakly dependent) / k, then we average over seeds. Tolerance: 5 standard errors.
    p = k / (n - 1)
    var_overlap = k * p * (1 - p) * (n - 1 - k) / (n - 2)
    se = np.sqrt(var_overlap / (k**2 * n) / seeds)
    assert abs(np.mean(values) - chance) < 5 * se


def test_svcca_is_deterministic_and_invariant_to_feature_scaling():
    X, Y = pair(60, 12, 10, seed=9)
    first = M.svcca_platonic(X, Y, dim=5)
    assert all(M.svcca_platonic(X, Y, dim=5) == first for _ in range(3))
    col_scale = np.random.default_rng(1).uniform(0.1, 10, size=12)
    assert M.svcca_platonic(X * col_scale, Y, dim=5) == pytest.approx(first, rel=1e-9)


def test_dcor_invariant_to_similarity_transform():
    X, Y = pair(30, 5, 4, seed=10)
    Q = ortho_group.rvs(5, random_state=3)
    assert M.dcor(4.0 * X @ Q + 1.0, Y) == pytest.approx(M.dcor(X, Y), rel=1e-10)


# ----------------------------------------------------------------------------- prepare
def test_prepare_normalisations_and_clipping():
    rng = np.random.default_rng(12)
    X = rng.standard_normal((20, 30)) * rng.uniform(0.1, 5, size=(20, 1))
    X[3, 4] = 80.0  # an outlier dimension
    np.testing.assert_allclose(np.linalg.norm(M.prepare(X), axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(M.prepare(X, normalize="center").mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_array_equal(M.prepare(X, normalize=None), X)
    # Clip threshold: per-row 0.9-quantile of |x| (linear interpolation), averaged over rows.
    t = np.mean([np.quantile(np.abs(r), 0.9) for r in X])
    clipped = M.prepare(X, normalize=None, clip_quantile=0.9)
    np.testing.assert_allclose(clipped, np.minimum(np.maximum(X, -t), t))
    assert clipped[3, 4] == pytest.approx(t)
    assert M.prepare(X.astype(np.float32)).dtype == np.float32
    assert M.prepare(X.astype(int)).dtype == np.float64


# ----------------------------------------------------------------------------- registry
REQUIRED_NAMES = ["mknn", "mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn", "cka", "unbiased_cka", "cka_rbf",
                  "cknna", "svcca", "dcor", "distance_correlation"]


def test_registry_names_aliases_and_chance_levels():
    names = M.metric_names()
    assert set(REQUIRED_NAMES) <= set(names)
    assert M.get_metric("mknn") is M.get_metric("mutual_knn") is M.get_metric("Mutual-KNN")
    assert M.get_metric("dcor").name == "distance_correlation"
    assert M.get_metric("cknna").is_knn and not M.get_metric("cka").is_knn
    assert M.get_metric("unbiased_cka").chance_level(100) == 0.0
    assert M.get_metric("cka").chance_level(100) is None
    assert M.get_metric("mknn").chance_level(101, k=5) == pytest.approx(5 / 100)
    assert set(M.metric_names(aliases=False)) == {m.name for m in M.METRICS}


@pytest.mark.parametrize("name", REQUIRED_NAMES)
def test_registry_state_path_equals_public_function(name):
    X, Y = pair(30, 6, 5, seed=13)
    metric = M.get_metric(name)
    chosen = {"k": 4, "dim": 3}
    params = metric.resolve(30, **{p: v for p, v in chosen.items() if p in metric.params})
    from_states = metric.score(metric.state(X, params), metric.state(Y, params), params)
    call_params = {p: params[p] for p in metric.params if p in params}
    assert from_states == pytest.approx(metric.function(X, Y, **call_params), rel=1e-12, abs=1e-15)


def test_knn_state_permutation_relabels_without_new_search():
    X, _ = pair(50, 7, 7, seed=14)
    perm = np.random.default_rng(0).permutation(50)
    state = M.get_metric("mknn").state(X, {"k": 6})
    X[30:33] = X[7]  # duplicates: tie levels must relabel too
    state = M.get_metric("mknn").state(X, {"k": 6})
    permuted = state.permuted(perm)
    fresh = M.get_metric("mknn").state(X[perm], {"k": 6})
    # the lists are a function of the data: relabelling equals a fresh search, to the bit
    for field in ("indices", "similarities", "weights", "levels"):
        np.testing.assert_array_equal(getattr(permuted, field), getattr(fresh, field))
    idx, sims = M.nearest_neighbors(X[perm], k=6)
    np.testing.assert_array_equal(permuted.ordered()[0], idx)


@pytest.mark.parametrize("name", ["mknn", "cycle_knn", "lcs_knn", "edit_distance_knn", "cknna"])
def test_permuted_state_scores_equal_recomputed_scores(name):
    # What a permutation test does: shuffle one side's samples without a new neighbour search.
    X, Y = pair(40, 6, 6, seed=16)
    perm = np.random.default_rng(1).permutation(40)
    metric = M.get_metric(name)
    p = metric.resolve(40, k=5)
    shuffled = metric.score(metric.state(X, p), metric.state(Y, p).permuted(perm), p)
    assert shuffled == pytest.approx(metric.function(X, Y[perm], k=5), rel=1e-12)


# ----------------------------------------------------------------------------- bad input
def one_line_error(fn, *args, match=None, **kwargs):
    with pytest.raises(RepalignError, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 300, message
    return message


def test_bad_input_raises_one_line_errors():
    X, Y = pair(20, 4, 4, seed=15)
    one_line_error(M.mknn, X, Y[:19], match="same samples")
    bad = X.copy()
    bad[2, 1] = np.nan
    one_line_error(M.cka, bad, Y, match="NaN")
    bad[2, 1] = np.inf
    one_line_error(M.mknn, X, bad, match="NaN or infinite")
    one_line_error(M.mknn, X, Y, k=20, match="k=20")
    one_line_error(M.mknn, X, Y, k=0, match="k=0")
    one_line_error(M.mknn, X, Y, k=2.5, match="integer")
    one_line_error(M.cknna, X, Y, k=1, match="k=1")
    one_line_error(M.unbiased_cka, X[:3], Y[:3], match="at least 4")
    one_line_error(M.cknna, X[:3], Y[:3], k=2, match="at least 4")
    one_line_error(M.mknn, np.zeros((0, 4)), np.zeros((0, 4)), match="no rows")
    one_line_error(M.cka, np.zeros((5, 0)), Y[:5], match="zero features")
    one_line_error(M.mknn, X[:, 0], Y[:, 0], match="2-D")
    one_line_error(M.cka, np.array([["a", "b"]] * 4), Y[:4], match="dtype")
    one_line_error(M.get_metric, "mutual_nn", match="valid names: .*mknn")
    one_line_error(M.cka, np.ones((6, 3)), Y[:6], match="zero")
    one_line_error(M.cka, X, Y, kernel="poly", match="linear")
    one_line_error(M.cka, X, Y, sigma=1.0, match="rbf")
    one_line_error(M.cka, X, Y, kernel="rbf", sigma=-1.0, match="sigma")
    one_line_error(M.svcca_platonic, X, Y, dim=5, match="dim=5")
    rank_one = np.outer(np.arange(1.0, 21.0), np.ones(4)) + np.arange(4.0)
    one_line_error(M.svcca_platonic, rank_one, Y, dim=2, match="rank")
    one_line_error(M.svcca, X, Y, variance=1.5, match="variance=1.5")
    one_line_error(M.dcor, np.ones((6, 3)), Y[:6], match="zero distance variance")
    one_line_error(M.prepare, np.vstack([X, np.zeros(4)]), match="all zeros")
    one_line_error(M.prepare, X, normalize="zscore", match="normalize")
    one_line_error(M.prepare, X, clip_quantile=1.5, match="clip_quantile")
    one_line_error(M.get_metric("mknn").resolve, 20, kk=3, match="kk")


def test_metrics_package_imports_no_file_or_model_libraries():
    import subprocess
    import sys

    # the store's error root (embeddings_cache.errors, under repalign.errors) is fine; its file code is not
    code = ("import sys, repalign.metrics; bad = [m for m in sys.modules if m in ('h5py', 'torch') or "
            "(m.startswith('embeddings_cache') and m not in ('embeddings_cache', 'embeddings_cache.errors'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_a_registered_metric_works_in_the_engine_the_statistics_and_compare(tmp_path):
    """register_metric: a user function becomes a metric of align_layers, permutation_test and compare_models."""
    import uuid

    from embeddings_cache import CacheWriter
    from repalign.compare import compare_models
    from repalign.stats import permutation_test

    name = f"norm_rank_{uuid.uuid4().hex[:8]}"

    def norm_rank(X, Y, power=1.0):
        from scipy.stats import spearmanr

        return float(spearmanr(np.linalg.norm(X, axis=1) ** power, np.linalg.norm(Y, axis=1) ** power)[0])

    M.register_metric(name, norm_rank, defaults={"power": 1.0}, bounds=(-1.0, 1.0), chance=lambda n, p: 0.0)
    assert name in M.metric_names() and M.get_metric(name).chance_level(30) == 0.0
    with pytest.raises(RepalignError, match="is taken"):
        M.register_metric(name, norm_rank)
    rng = np.random.default_rng(3)
    A = [rng.standard_normal((40, 5)) * rng.uniform(0.5, 2, (40, 1)) for _ in range(2)]
    B = [np.hstack([a, a]) * 2 for a in A]  # norms rank the same way as A's
    res = M.align_layers(A, B, metric=name, normalize=None, power=2.0)
    np.testing.assert_allclose(res.scores, [[norm_rank(a, b, 2.0) for b in B] for a in A])
    test = permutation_test(A, B, name, permutations=19, normalize=None)
    assert test.p_value[0, 0] == pytest.approx(1 / 20) and test.scores[0, 0] == pytest.approx(1.0)
    path = tmp_path / "c.h5"
    ids, hashes = [f"s{i}" for i in range(40)], [f"{i:064x}" for i in range(40)]
    for model, mats in (("A", A), ("B", B)):
        with CacheWriter(path, model, provenance={"options": {}}, layers=["l0", "l1"]) as w:
            w.append(ids, hashes, {"l0": mats[0], "l1": mats[1]})
    table = compare_models(path, "A", "B", [name], normalize=None).table
    # the cache stores float32: the same function on the stored values
    stored = [[norm_rank(a.astype(np.float32), b.astype(np.float32)) for b in B] for a in A]
    np.testing.assert_allclose(table["score"].to_numpy(), np.ravel(stored), rtol=1e-6)
