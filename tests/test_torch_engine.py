"""The torch backend (CPU torch here) against the numba engine: the same neighbour lists and kNN
scores bit for bit (the float64 finish decides them), kernel statistics within 1e-6, the same
permutation p-values for the same seed, through the Python API and the command line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cli_helpers import run_main

import repalign.metrics as M
from embeddings_cache import CacheWriter
from repalign.compare import EngineOptions, StatsOptions, compare_models
from repalign.errors import RepalignError
from repalign.metrics import neighbors
from repalign.metrics.backends import NUMBA, ComputeBackend, get_backend
from repalign.metrics.engine import layer_state, resolve_metrics
from repalign.metrics.torch_engine import TorchBackend
from repalign.stats import permutation_tests

KNN_METRICS = ["mknn", "cycle_knn", "lcs_knn", "edit_distance_knn", "cknna"]
KERNEL_METRICS = ["cka", "unbiased_cka", "cka_rbf"]
FIELDS = ("indices", "similarities", "weights", "levels")
SMALL_BLOCKS = TorchBackend("cpu", block=37)  # many row and column blocks, diagonal blocks cut across


def duplicated(rng, n, distinct, width):
    """n rows drawn from `distinct` random vectors: heavy exact duplication (as in tests/test_ties.py)."""
    return rng.standard_normal((distinct, width))[rng.integers(0, distinct, n)]


def lattice(rng, n, width):
    """Distinct rows of small integers, not normalised: many exactly equal inner products between
    different rows (tied distances), plus some duplicate rows."""
    X = rng.integers(-2, 3, (n, width)).astype(np.float32)
    X[rng.choice(n, n // 5, replace=False)] = X[rng.choice(n, n // 5)]
    return X


def layers(kind: str):
    rng = np.random.default_rng({"random": 0, "duplicates": 1, "lattice": 2}[kind])
    if kind == "random":
        X = rng.standard_normal((300, 24)).astype(np.float32)
        return X, (X[:, :16] @ rng.standard_normal((16, 20)) + rng.standard_normal((300, 20))).astype(np.float32), "l2"
    if kind == "duplicates":
        return duplicated(rng, 240, 30, 6).astype(np.float32), duplicated(rng, 240, 25, 5).astype(np.float32), "l2"
    return lattice(rng, 260, 5), lattice(rng, 260, 4), None


@pytest.mark.parametrize("kind", ["random", "duplicates", "lattice"])
@pytest.mark.parametrize("backend", [TorchBackend("cpu"), SMALL_BLOCKS], ids=["default-block", "block-37"])
def test_neighbour_lists_equal_the_numba_engine_bit_for_bit(kind, backend):
    X, Y, normalize = layers(kind)
    for Z in (X, Y):
        P = M.prepare(Z, normalize=normalize)
        for k in (1, 5, 12):
            ours, numba = backend.knn_state(P, k), NUMBA.knn_state(P, k)
            for field in FIELDS:
                np.testing.assert_array_equal(getattr(ours, field), getattr(numba, field))
    if kind != "random":  # the data do hold ties at the boundary: some weights are fractions
        weights = NUMBA.knn_state(M.prepare(X, normalize=normalize), 5).weights
        assert np.any((weights > 0) & (weights < 1))


@pytest.mark.parametrize("kind", ["random", "duplicates", "lattice"])
def test_knn_scores_identical_and_kernel_scores_within_1e_6(kind):
    X, Y, normalize = layers(kind)
    metrics = KNN_METRICS + KERNEL_METRICS
    numba = M.align_layers_multi([X, Y], [Y], metrics, normalize=normalize, k=6)
    torch_ = M.align_layers_multi([X, Y], [Y], metrics, normalize=normalize, k=6, backend="torch")
    for name, a, b in zip(metrics, numba, torch_):
        if name in KNN_METRICS and name != "cknna":
            np.testing.assert_array_equal(b.scores, a.scores)
        else:  # cknna sums the same kernel values; CKA from float32 products in another order
            np.testing.assert_allclose(b.scores, a.scores, rtol=0, atol=1e-6)


def test_candidate_search_is_exact_on_data_without_ties():
    """The device search itself finds the true top candidates (not only after the finish's completion pass)."""
    rng = np.random.default_rng(3)
    U = M.prepare(rng.standard_normal((500, 32)).astype(np.float32))
    rows = neighbors.DistinctRows.in_memory(U)
    idx, sim = SMALL_BLOCKS.search(rows, 9)
    ref_idx, ref_sim = neighbors.exact_search(rows, 9)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sim, ref_sim, rtol=0, atol=1e-6)
    S = U.astype(np.float64) @ U.T.astype(np.float64)  # independent reference: plain float64 products
    np.fill_diagonal(S, -np.inf)
    np.testing.assert_array_equal(idx, np.argsort(-S, axis=1, kind="stable")[:, :9])


def test_kernel_states_match_for_n_above_and_below_the_width():
    rng = np.random.default_rng(4)
    for n, d in ((120, 40), (30, 64)):  # the numba engine uses features, resp. the N×N Gram
        X = M.prepare(rng.standard_normal((n, d)).astype(np.float32))
        Y = M.prepare((X[:, : d // 2] @ rng.standard_normal((d // 2, d)) + rng.standard_normal((n, d))).astype(np.float32))
        for kernel, sigma in (("linear", None), ("rbf", None), ("rbf", 0.7)):
            for unbiased in (False, True):
                ours = [SMALL_BLOCKS.kernel_state(Z, kernel, sigma, unbiased) for Z in (X, Y)]
                ref = M.cka(X, Y, kernel=kernel, sigma=sigma, unbiased=unbiased)
                assert ours[0].hsic_with(ours[1]) / np.sqrt(ours[0].self_hsic * ours[1].self_hsic) == pytest.approx(ref, abs=1e-6)


def test_device_kernel_state_relabels_like_a_fresh_state():
    rng = np.random.default_rng(5)
    X = M.prepare(rng.standard_normal((80, 12)).astype(np.float32))
    Y = M.prepare(rng.standard_normal((80, 9)).astype(np.float32))
    perm = rng.permutation(80)
    for kernel in ("linear", "rbf"):
        for unbiased in (False, True):
            a = SMALL_BLOCKS.kernel_state(X, kernel, 1.0 if kernel == "rbf" else None, unbiased)
            b = SMALL_BLOCKS.kernel_state(Y, kernel, 1.0 if kernel == "rbf" else None, unbiased)
            fresh = SMALL_BLOCKS.kernel_state(Y[perm], kernel, 1.0 if kernel == "rbf" else None, unbiased)
            assert a.hsic_with(b.permuted(perm)) == pytest.approx(a.hsic_with(fresh), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("kind", ["random", "duplicates"])
def test_permutation_p_values_identical_for_the_same_seed(kind):
    X, Y, normalize = layers(kind)
    metrics = ["mknn", "cycle_knn", "cka", "unbiased_cka"]
    resolved = resolve_metrics(metrics, X.shape[0], {"k": 5})

    def run(backend):
        states_a = [layer_state(X, resolved, normalize=normalize, name="x", backend=backend)]
        states_b = [layer_state(Y, resolved, normalize=normalize, name="y", backend=backend)]
        return permutation_tests(states_a, states_b, resolved, permutations=60, seed=11)

    for name, a, b in zip(metrics, run(NUMBA), run("torch")):
        if name in ("mknn", "cycle_knn"):
            np.testing.assert_array_equal(b.null, a.null)
        else:
            np.testing.assert_allclose(b.null, a.null, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(b.p_value, a.p_value)
        np.testing.assert_array_equal(b.p_value_adjusted, a.p_value_adjusted)


def test_out_of_core_lists_with_the_torch_search_equal_in_memory():
    rng = np.random.default_rng(6)
    X = duplicated(rng, 300, 60, 8).astype(np.float32)
    resolved = resolve_metrics(["mknn"], 300, {"k": 7})
    blocked = layer_state(X, resolved, block_rows=50, backend=SMALL_BLOCKS).states[0]
    in_memory = NUMBA.knn_state(M.prepare(X), 7)
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(blocked, field), getattr(in_memory, field))


def test_a_backend_object_is_used_as_given():
    calls = []

    class Counting(TorchBackend):
        def search(self, rows, ks):
            calls.append(rows.n)
            return super().search(rows, ks)

    counting = Counting("cpu", block=64)
    assert isinstance(counting, ComputeBackend) and get_backend(counting) is counting
    X, Y, _ = layers("random")
    score = M.align_layers([X], [Y], "mknn", k=5, backend=counting).scores
    assert calls == [300, 300]
    assert score[0, 0] == M.mknn(M.prepare(X), M.prepare(Y), k=5)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    rng = np.random.default_rng(7)
    n = 200
    base = duplicated(rng, n, 120, 10).astype(np.float32)
    a = {"a0": base, "a1": rng.standard_normal((n, 12)).astype(np.float32)}
    b = {"b0": (base @ rng.standard_normal((10, 14)) + 0.3 * rng.standard_normal((n, 14))).astype(np.float32)}
    path = tmp_path_factory.mktemp("torch") / "c.h5"
    ids = [f"s{i}" for i in range(n)]
    for model, layer_map in (("A", a), ("B", b)):
        with CacheWriter(path, model, provenance={"options": {}}, layers=list(layer_map)) as w:
            w.append(ids, [f"{i + 1:064x}" for i in range(n)], layer_map)
    return path


def _split(table: pd.DataFrame):
    knn = table[table.metric.isin(["mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn"])].reset_index(drop=True)
    rest = table[~table.metric.isin(knn.metric)].reset_index(drop=True)
    return knn, rest


def test_compare_models_with_the_torch_engine_and_permutations(two_models):
    metrics = KNN_METRICS + ["cka", "unbiased_cka"]
    stats = StatsOptions(permutations=30, seed=2)
    numba = compare_models(two_models, "A", "B", metrics, k=5, stats=stats).table
    torch_ = compare_models(two_models, "A", "B", metrics, k=5, stats=stats,
                            engine=EngineOptions(engine="torch", device="cpu")).table
    (knn_n, rest_n), (knn_t, rest_t) = _split(numba), _split(torch_)
    pd.testing.assert_frame_equal(knn_t, knn_n)
    np.testing.assert_allclose(rest_t.score, rest_n.score, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(rest_t.p_value, rest_n.p_value)


def test_cli_compare_engine_torch_gives_the_numba_table(two_models, tmp_path):
    common = ["compare", two_models, "--a", "A", "--b", "B", "--metric", *KNN_METRICS, "cka", "--k", "5"]
    plain = run_main(*common, "-o", tmp_path / "numba.csv")
    on_torch = run_main(*common, "--engine", "torch", "--device", "cpu", "-o", tmp_path / "torch.csv")
    assert plain.returncode == 0 and on_torch.returncode == 0, plain.stderr + on_torch.stderr
    (knn_n, rest_n), (knn_t, rest_t) = (_split(pd.read_csv(tmp_path / f)) for f in ("numba.csv", "torch.csv"))
    pd.testing.assert_frame_equal(knn_t, knn_n)
    np.testing.assert_allclose(rest_t.score, rest_n.score, rtol=0, atol=1e-6)


@pytest.mark.parametrize("flags, words", [
    (["--engine", "torch", "--device", "cuda:7"], "--device cuda:7"),
    (["--engine", "torch", "--device", "gpu0"], "--device gpu0 is not understood by torch"),
    (["--device", "cuda"], "needs --engine torch"),
])
def test_cli_bad_device_is_a_one_line_error(two_models, flags, words):
    result = run_main("compare", two_models, "--a", "A", "--b", "B", *flags)
    assert result.returncode != 0
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_bad_engine_options_name_the_parameters():
    with pytest.raises(RepalignError, match="engine='jax' is not one of numba, torch"):
        EngineOptions(engine="jax")
    with pytest.raises(RepalignError, match="device='tpu' is not understood by torch|device='tpu' is not supported"):
        EngineOptions(engine="torch", device="tpu")
    with pytest.raises(RepalignError, match="drop cluster"):
        EngineOptions(engine="torch", cluster="local:2")
    with pytest.raises(RepalignError, match="neither one of numba, torch nor an object"):
        M.align_layers([np.eye(5)], [np.eye(5)], "mknn", k=2, backend=object())
