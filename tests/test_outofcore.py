"""Out-of-core metrics: blocked exact kNN and streamed linear CKA against in-memory references."""

import numpy as np
import pytest

from embeddings_cache import Cache, CacheWriter
from repalign.errors import RepalignError
from repalign.metrics import cka, mknn, nearest_neighbors, prepare
from repalign.metrics.engine import layer_state, resolve_metrics, score
from repalign.metrics.knn import KnnState, mutual_knn_from_states
from repalign.metrics.neighbors import knn_state
from repalign.metrics.outofcore import (
    LinearCkaStats,
    blocked_knn_state,
    blocked_nearest_neighbors,
    linear_cka_moments,
    linear_cka_stats,
    streamed_linear_cka,
)


def blocks_of(X, rows):
    return [X[s:s + rows] for s in range(0, X.shape[0], rows)]


def reference_linear_cka(X, Y):
    """Independent reference: Gram matrices, H K H, biased HSIC (Kornblith et al., 2019)."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    n = X.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    return float(np.sum(K * L) / np.sqrt(np.sum(K * K) * np.sum(L * L)))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((700, 20)).astype(np.float32)
    X[400:405] = X[17]  # exact duplicates: tied neighbours, whatever BLAS does with their products
    X[600] = 2 * X[5]  # same direction, different norm: a tie after l2 normalisation
    Y = (X[:, :12] @ rng.standard_normal((12, 9)) + rng.standard_normal((700, 9))).astype(np.float32)
    return X, Y


def assert_same_state(a, b):
    for field in ("indices", "similarities", "weights", "levels"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


@pytest.mark.parametrize("source_rows, block", [(700, 2048), (97, 128), (128, 128), (33, 50), (700, 7)])
def test_blocked_knn_equals_in_memory_search_whatever_the_blocks(data, source_rows, block):
    """With duplicate rows in the data, every block size and source cut gives the same state, to the
    bit: ties are decided on the rows' content and on index-order float64 sums, not on BLAS blocks."""
    X, _ = data
    ref = knn_state(prepare(X), 8)  # in memory, the default block
    assert_same_state(blocked_knn_state(blocks_of(X, source_rows), k=8, block=block), ref)
    idx, sim = blocked_nearest_neighbors(blocks_of(X, source_rows), k=8, block=block)
    np.testing.assert_array_equal(idx, nearest_neighbors(prepare(X), k=8)[0])
    # and the lists are the exact ones (independent brute force, up to float32 rounding)
    Xp = prepare(X).astype(np.float64)
    S = Xp @ Xp.T
    np.fill_diagonal(S, -np.inf)
    np.testing.assert_allclose(sim, -np.sort(-S, axis=1)[:, :8], atol=1e-6)
    # the duplicated rows are each other's (tied) neighbours with inclusion probability 1 (5 + 1 copies of row 17, k=8)
    row = list(ref.indices[17])
    assert {400, 401, 402, 403, 404} <= set(row) and all(ref.weights[17, row.index(j)] == 1.0 for j in range(400, 405))


def test_blocked_knn_without_normalisation_and_mknn(data):
    X, Y = data
    a = blocked_knn_state(blocks_of(X, 64), k=6, normalize=None, block=100)
    assert_same_state(a, knn_state(X, 6))
    b = blocked_knn_state(lambda: iter(blocks_of(Y, 200)), k=6, block=100)
    assert mutual_knn_from_states(blocked_knn_state(blocks_of(X, 64), k=6, block=100), b, 6) == mknn(prepare(X), prepare(Y), k=6)
    assert isinstance(a, KnnState)


def test_streamed_linear_cka_equals_cka(data):
    X, Y = data
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    for normalize in ("l2", None, "center"):
        got = streamed_linear_cka(blocks_of(X64, 123), blocks_of(Y64, 123), normalize=normalize)
        ref_in = prepare(X64, normalize), prepare(Y64, normalize)
        assert got == pytest.approx(cka(*ref_in), rel=1e-10)
        assert got == pytest.approx(reference_linear_cka(*ref_in), rel=1e-10)
    # float32 storage: the library's float32 products vs float64 accumulation
    assert streamed_linear_cka(blocks_of(X, 50), blocks_of(Y, 50)) == pytest.approx(cka(prepare(X), prepare(Y)), rel=1e-5)


def test_cka_statistics_of_row_ranges_merge(data):
    X, Y = data
    Xp, Yp = prepare(X.astype(np.float64)), prepare(Y.astype(np.float64))
    halves = [LinearCkaStats().update(Xp[:300], Yp[:300]), LinearCkaStats().update(Xp[300:], Yp[300:])]
    merged = halves[0].merge(halves[1])
    assert merged.n == 700
    assert merged.cka() == pytest.approx(linear_cka_stats([Xp], [Yp], normalize=None).cka(), rel=1e-12)
    # invariance: CKA is unchanged by an isotropic scaling and by reordering the samples
    perm = np.random.default_rng(0).permutation(700)
    assert streamed_linear_cka(blocks_of(3 * Xp[perm], 77), blocks_of(Yp[perm], 77), normalize=None) == pytest.approx(merged.cka(), rel=1e-10)


def test_layers_streamed_from_a_real_cache(tmp_path, data):
    X, Y = data
    path = tmp_path / "f.h5"
    ids = [f"s{i}" for i in range(700)]
    hashes = [f"{i:064x}" for i in range(700)]
    with CacheWriter(path, "m", provenance={"options": {}}, layers=["x", "y"], dtype="float16") as w:
        for s in range(0, 700, 250):
            w.append(ids[s:s + 250], hashes[s:s + 250], {"x": X[s:s + 250], "y": Y[s:s + 250]})
    c = Cache(path)
    Xs, Ys = c.read_layer("m", "x"), c.read_layer("m", "y")  # float16 values widened to float32
    src_x = lambda: c.iter_row_blocks("m", "x", block_rows=111)  # noqa: E731
    src_y = lambda: c.iter_row_blocks("m", "y", block_rows=111)  # noqa: E731
    assert_same_state(blocked_knn_state(src_x, k=5, block=256), knn_state(prepare(Xs), 5))
    assert streamed_linear_cka(src_x, src_y) == pytest.approx(cka(prepare(Xs), prepare(Ys)), rel=1e-5)


def test_layer_moments_are_the_self_terms_and_pairs_reuse_them(data):
    X, Y = data
    for normalize in ("l2", None):
        Xp = np.asarray(prepare(X, normalize=normalize) if normalize else X, dtype=np.float64)
        Xc = Xp - Xp.mean(axis=0)
        moments = linear_cka_moments(blocks_of(X, 97), normalize=normalize)
        assert moments.n == X.shape[0]
        assert moments.self_term == pytest.approx(np.sum((Xc.T @ Xc) ** 2), rel=1e-6)  # float32 block products
        both = linear_cka_moments(blocks_of(Y, 64), normalize=normalize)
        assert streamed_linear_cka(blocks_of(X, 100), blocks_of(Y, 230), normalize, moments, both) == pytest.approx(
            reference_linear_cka(Xp, prepare(Y, normalize=normalize) if normalize else Y), rel=1e-6)
    # through the engine: each layer's state carries its moments, computed once; pairs stream XᵀY only
    metrics = resolve_metrics(["cka"], X.shape[0], {})
    passes = {"x": 0, "y": 0}

    def counted(name, arr):
        def source():
            passes[name] += 1
            return iter(blocks_of(arr, 128))
        return source

    sx = layer_state(counted("x", X), metrics, block_rows=128, name="x", n_samples=X.shape[0])
    sy = layer_state(counted("y", Y), metrics, block_rows=128, name="y", n_samples=Y.shape[0])
    assert passes == {"x": 1, "y": 1}  # the moments pass; no cross product yet
    assert sx.states[0].moments.self_term == pytest.approx(linear_cka_moments(blocks_of(X, 50)).self_term, rel=1e-6)
    got = [score(metrics[0][0], metrics[0][1], sx.states[0], sy.states[0]) for _ in range(3)]
    assert passes == {"x": 4, "y": 4}  # one pass of each layer per pair
    assert got[0] == pytest.approx(cka(prepare(X), prepare(Y)), rel=1e-5)


def test_bad_sources_and_options_fail_clearly(data):
    X, Y = data
    with pytest.raises(RepalignError, match="callable returning a fresh iterator"):
        blocked_knn_state(iter(blocks_of(X, 100)), k=5)
    with pytest.raises(RepalignError, match="normalize='center' is not supported for kNN"):
        blocked_knn_state(blocks_of(X, 100), k=5, normalize="center")
    with pytest.raises(RepalignError, match="clip_quantile is not supported"):
        linear_cka_stats(blocks_of(X, 100), blocks_of(Y, 100), clip_quantile=0.9)
    with pytest.raises(RepalignError, match="different numbers of rows"):
        streamed_linear_cka(blocks_of(X, 100), blocks_of(Y[:650], 200))
    # different block sizes on the two sides are fine
    assert streamed_linear_cka(blocks_of(X, 100), blocks_of(Y, 230)) == pytest.approx(streamed_linear_cka([X], [Y]), rel=1e-12)
    with pytest.raises(RepalignError, match="every block must be the same layer"):
        blocked_knn_state([X[:100], Y[100:]], k=5)
    with pytest.raises(RepalignError, match="NaN"):
        bad = X.copy()
        bad[150, 2] = np.nan
        blocked_knn_state(blocks_of(bad, 100), k=5)
    with pytest.raises(RepalignError, match="k=700 is out of range"):
        blocked_knn_state(blocks_of(X, 100), k=700)
    with pytest.raises(RepalignError, match="yielded"):
        grow = iter([blocks_of(X, 100), blocks_of(X, 100) + [X[:3]]] * 50)
        blocked_knn_state(lambda: iter(next(grow)), k=5, n_samples=700)


def test_a_cache_layer_looks_its_ids_up_once_for_every_pass(tmp_path, data, monkeypatch):
    """An out-of-core search over a cache layer restricted to some ids (in another order) reads the
    rows that read_layer gives for those ids, on every pass, with one id lookup in all."""
    import embeddings_cache.reader as reader
    from repalign.compare.sources import CacheLayer

    X, _ = data
    path = tmp_path / "f.h5"
    ids = [f"s{i}" for i in range(700)]
    with CacheWriter(path, "m", provenance={"options": {}}, layers=["x"]) as w:
        w.append(ids, [f"{i:064x}" for i in range(700)], {"x": X})
    chosen = tuple(ids[i] for i in np.random.default_rng(4).permutation(700)[:500])
    lookups = []
    real_lookup = reader._ModelView.lookup
    monkeypatch.setattr(reader._ModelView, "lookup", lambda self, *a: lookups.append(1) or real_lookup(self, *a))
    layer = CacheLayer(str(path), "m", "x", chosen)
    expected = X[[int(i[1:]) for i in chosen]]
    state = blocked_knn_state(lambda: layer.blocks(128), k=6, block=64)
    assert len(lookups) == 1
    np.testing.assert_array_equal(np.concatenate(list(layer.blocks(128))), expected)
    assert len(lookups) == 1
    assert_same_state(state, knn_state(prepare(expected), 6))
    other = CacheLayer(str(path), "m", "x", chosen[::-1])  # its own lookup, not the first layer's rows
    np.testing.assert_array_equal(np.concatenate(list(other.blocks(128))), expected[::-1])
    assert len(lookups) == 2


def test_blocked_grouping_equals_the_digest_groups_also_on_a_hash_collision(data, monkeypatch):
    """Rows are grouped out of core by their 64-bit hash, refined by BLAKE2b digests where a hash is
    shared: the groups (and the state) of digest grouping, also when every row's hash collides."""
    from repalign.metrics import neighbors

    X, _ = data
    Xp = prepare(X)
    reference = neighbors.duplicate_groups(neighbors.row_digests(Xp))
    ref_state = knn_state(Xp, 7)
    calls = []
    real_digests = neighbors.row_digests
    monkeypatch.setattr("repalign.metrics.outofcore.row_digests", lambda Z: calls.append(Z.shape[0]) or real_digests(Z))
    hashes = neighbors.row_hashes(neighbors.row_bytes(Xp))
    for groups in (neighbors.refined_groups(hashes, lambda mask: real_digests(Xp[mask])),
                   neighbors.refined_groups(np.zeros_like(hashes), lambda mask: real_digests(Xp[mask]))):
        for field in ("group", "counts", "first", "mptr", "members"):
            np.testing.assert_array_equal(getattr(groups, field), getattr(reference, field))
    assert_same_state(blocked_knn_state(blocks_of(X, 128), k=7, block=64), ref_state)
    assert sum(calls) == 8  # digests of the rows that share their hash: a row and its 5 copies, and two rows equal after l2
    calls.clear()
    monkeypatch.setattr(neighbors._numba, "row_hashes", lambda B: np.zeros(B.shape[0], dtype=np.uint64))
    assert_same_state(blocked_knn_state(blocks_of(X, 128), k=7, block=64), ref_state)
    assert sum(calls) == 700  # every row collides: every row's digest decides
