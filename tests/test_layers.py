"""The layer engine: scores equal the pairwise functions, states are computed once per layer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import repalign.metrics as M
from repalign.errors import RepalignError
from repalign.metrics import kernel, neighbors


def make_layers(n, dims, seed):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 3))
    return [(Z @ rng.standard_normal((3, d)) + (0.3 + i) * rng.standard_normal((n, d))).astype(np.float32) for i, d in enumerate(dims)]


def test_scores_equal_pairwise_metric_on_prepared_layers():
    A = make_layers(40, [6, 8, 5], seed=0)
    B = make_layers(40, [7, 4], seed=1)
    result = M.align_layers(A, B, metric="mknn", k=5, names_a=["a0", "a1", "a2"], names_b=["b0", "b1"])
    expected = np.array([[M.mknn(M.prepare(a), M.prepare(b), k=5) for b in B] for a in A])
    np.testing.assert_array_equal(result.scores, expected)
    assert result.metric == "mutual_knn"
    assert result.params == {"k": 5, "normalize": "l2", "clip_quantile": None}
    assert result.n_samples == 40
    r, c = np.unravel_index(np.argmax(expected), expected.shape)
    assert result.best == (r, c, expected[r, c])


@pytest.mark.parametrize("metric, params", [("cka", {}), ("unbiased_cka", {}), ("cka_rbf", {"sigma": 0.8}), ("cknna", {"k": 4}),
                                            ("svcca_platonic", {"dim": 3}), ("svcca", {}), ("dcor", {}), ("cycle_knn", {"k": 3})])
def test_every_metric_through_the_engine(metric, params):
    A = make_layers(30, [6, 5], seed=2)
    B = make_layers(30, [4, 9, 6], seed=3)
    result = M.align_layers(A, B, metric=metric, normalize="center", clip_quantile=0.95, **params)
    f = M.get_metric(metric).function
    expected = [[f(M.prepare(a, "center", 0.95), M.prepare(b, "center", 0.95), **params) for b in B] for a in A]
    np.testing.assert_allclose(result.scores, expected, rtol=1e-6)


def test_each_layer_searched_once_and_states_shared_between_metrics(monkeypatch):
    calls = []
    real = neighbors.knn_state

    def counting(X, k, *args, **kwargs):
        calls.append(X.shape)
        return real(X, k, *args, **kwargs)

    monkeypatch.setattr(neighbors, "knn_state", counting)
    A = make_layers(30, [5, 6, 7, 8], seed=4)
    B = make_layers(30, [4, 5, 6], seed=5)
    results = M.align_layers(A, B, metric=["mknn", "cycle_knn", "lcs_knn", "cknna"], k=4)
    assert len(calls) == len(A) + len(B)  # not 4 metrics x 12 pairs x 2 sides
    for res in results:
        single = M.align_layers(A, B, metric=res.metric, k=4)
        np.testing.assert_array_equal(res.scores, single.scores)
    calls.clear()
    M.align_layers(A, A, metric="mknn", k=4)  # the same arrays on both sides: one search per layer
    assert len(calls) == len(A)


def test_linear_cka_states_computed_once(monkeypatch):
    calls = []
    real = kernel.kernel_state
    monkeypatch.setattr(kernel, "kernel_state", lambda X, *a, **kw: calls.append(1) or real(X, *a, **kw))
    A = make_layers(25, [5, 6, 7], seed=6)
    B = make_layers(25, [4, 5], seed=7)
    result = M.align_layers(A, B, metric="cka")
    assert len(calls) == 5
    np.testing.assert_allclose(result.scores, [[M.cka(M.prepare(a), M.prepare(b)) for b in B] for a in A], rtol=1e-6)


def test_to_frame_is_tidy():
    A = make_layers(20, [5, 6], seed=8)
    B = make_layers(20, [4, 5, 3], seed=9)
    res = M.align_layers(A, B, metric="mknn", names_a=["l0", "l1"], k=3)
    frame = res.to_frame(model_a="esm2", model_b="prott5")
    assert list(frame.columns) == ["model_a", "layer_a", "model_b", "layer_b", "metric", "params", "score", "n_samples", "best"]
    assert frame["best"].sum() == 1 and frame.loc[frame["best"], "score"].iloc[0] == res.scores.max()
    assert len(frame) == 6
    assert set(frame["params"]) == {"k=3,normalize=l2"}
    pivot = frame.pivot(index="layer_a", columns="layer_b", values="score").loc[["l0", "l1"], ["0", "1", "2"]]
    np.testing.assert_array_equal(pivot.to_numpy(), res.scores)
    assert (frame["n_samples"] == 20).all() and (frame["model_a"] == "esm2").all() and (frame["metric"] == "mutual_knn").all()
    assert isinstance(frame, pd.DataFrame)


def test_engine_rejects_bad_input_with_one_line():
    A = make_layers(20, [5, 6], seed=10)
    B = make_layers(19, [4], seed=11)
    cases = [
        (lambda: M.align_layers(A, B), "19 samples"),
        (lambda: M.align_layers(A, A, names_a=["x"]), "names_a"),
        (lambda: M.align_layers([], A), "empty"),
        (lambda: M.align_layers(A[0], A), "single 2-D"),
        (lambda: M.align_layers(A, A, metric="nope"), "unknown metric"),
        (lambda: M.align_layers(A, A, metric="cka", k=5), "not accepted"),
        (lambda: M.align_layers(A, A, metric="mknn", k=20), "k=20"),
        (lambda: M.align_layers(A, A, normalize="max"), "normalize"),
        (lambda: M.align_layers([A[0], np.zeros((20, 3))], A), "layer '1' of layers_a: .*all zeros"),
        (lambda: M.align_layers([np.ones((20, 3))], A, metric="cka", normalize=None), "layer '0' \\(X\\) with layer '0' \\(Y\\): X has zero"),
    ]
    for fn, text in cases:
        with pytest.raises(RepalignError, match=text) as info:
            fn()
        assert "\n" not in str(info.value)


def test_rbf_bandwidth_is_recorded():
    A = make_layers(20, [5], seed=12)
    res = M.align_layers(A, A, metric="cka_rbf")
    assert res.params["sigma"] == "median" and res.params["kernel"] == "rbf"
    assert res.to_frame()["params"][0] == "kernel=rbf,normalize=l2,sigma=median,unbiased=false"
    X = M.prepare(A[0])
    assert M.cka(X, X[:, ::-1], kernel="rbf", sigma="median") == M.cka(X, X[:, ::-1], kernel="rbf")
