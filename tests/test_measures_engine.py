"""The new measures in the registry and the layer engine: align_layers equals the plain functions,
states relabel exactly under permutations, the asymmetric pair keeps its direction, `compare
--metric X --permutations 19` runs, and the permutation test holds its level (simulation)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from cli_helpers import run_main

from embeddings_cache import CacheWriter
from repalign.errors import RepalignError
from repalign.metrics import align_layers, get_metric, layer_state, prepare, resolve_metrics, score
from repalign.metrics.cca import pwcca
from repalign.metrics.imbalance import information_imbalance
from repalign.metrics.rsa import rsa
from repalign.metrics.shape import procrustes, shape_similarity
from repalign.stats import permutation_test
from repalign.table import select_pair, swap_sides

NEW = ["procrustes", "shape_similarity", "rsa", "pwcca", "imbalance_similarity_a_to_b", "imbalance_similarity_b_to_a"]


def layers(seed, n=50):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 4))
    A = [base @ rng.standard_normal((4, d)) + 0.5 * rng.standard_normal((n, d)) for d in (6, 9)]
    B = [base @ rng.standard_normal((4, d)) + 0.8 * rng.standard_normal((n, d)) for d in (5, 7, 8)]
    return A, B


def plain(metric, X, Y, **params):
    X, Y = prepare(X), prepare(Y)  # the engine's default preprocessing: l2-normalised rows
    return {
        "procrustes": lambda: procrustes(X, Y),
        "shape_similarity": lambda: shape_similarity(X, Y, **params),
        "rsa": lambda: rsa(X, Y, **params),
        "pwcca": lambda: pwcca(X, Y),
        "imbalance_similarity_a_to_b": lambda: 1 - information_imbalance(X, Y),
        "imbalance_similarity_b_to_a": lambda: 1 - information_imbalance(Y, X),
    }[metric]()


@pytest.mark.parametrize("metric,params", [("procrustes", {}), ("shape_similarity", {"whitening": 0.5}),
                                           ("rsa", {"rdm": "euclidean", "compare": "tau_a"}), ("rsa", {}), ("pwcca", {}),
                                           ("imbalance_similarity_a_to_b", {}), ("imbalance_similarity_b_to_a", {})])
def test_align_layers_equals_the_plain_functions(metric, params):
    A, B = layers(0)
    res = align_layers(A, B, metric=metric, **params)
    expected = np.array([[plain(metric, a, b, **params) for b in B] for a in A])
    np.testing.assert_allclose(res.scores, expected, atol=1e-12)


@pytest.mark.parametrize("metric,params", [("shape_similarity", {"whitening": 0.3}), ("rsa", {"compare": "spearman"}),
                                           ("rsa", {"compare": "tau_a"}), ("pwcca", {}), ("imbalance_similarity_a_to_b", {})])
def test_permuted_states_equal_fresh_states_of_permuted_rows(metric, params):
    A, B = layers(1)
    resolved = resolve_metrics([metric], 50, params)
    perm = np.random.default_rng(0).permutation(50)
    sa = layer_state(A[0], resolved)
    sb, sb_perm = layer_state(B[1], resolved), layer_state(B[1][perm], resolved)
    relabelled = sb.permuted(perm)
    m, p = resolved[0]
    assert score(m, p, sa.states[0], relabelled.states[0]) == pytest.approx(score(m, p, sa.states[0], sb_perm.states[0]), abs=1e-12)


def test_imbalance_pair_is_registered_as_similarities_with_their_swapped_partner():
    ab, ba = get_metric("imbalance_similarity_a_to_b"), get_metric("imbalance_similarity_b_to_a")
    assert (ab.swapped, ba.swapped) == (ba.name, ab.name)
    assert all(get_metric(name).swapped is None for name in NEW[:4])
    assert ab.chance_level(100) == 0.0 and ab.bounds == (-1.0, 1.0)
    A, B = layers(2)
    fwd = align_layers(A, B, metric="imbalance_similarity_a_to_b").scores
    back = align_layers(B, A, metric="imbalance_similarity_b_to_a").scores
    np.testing.assert_allclose(fwd, back.T, atol=1e-12)  # (A, B) of a_to_b is (B, A) of b_to_a
    rows = pd.DataFrame({"model_a": ["x"], "layer_a": ["l0"], "model_b": ["y"], "layer_b": ["m0"],
                         "metric": ["imbalance_similarity_a_to_b"], "score": [0.4]})
    swapped = swap_sides(rows)
    assert swapped.iloc[0][["model_a", "model_b", "metric"]].tolist() == ["y", "x", "imbalance_similarity_b_to_a"]
    assert swap_sides(rows.assign(metric="procrustes")).iloc[0]["metric"] == "procrustes"
    # a pair stored as (y, x) is read for (x, y) from the counterpart metric's rows, never relabelled
    stored = pd.concat([rows.assign(score=0.4), rows.assign(metric="imbalance_similarity_b_to_a", score=0.7)])
    stored = stored.assign(params="", model_a="y", model_b="x", layer_a="m0", layer_b="l0")
    picked = select_pair(stored, "imbalance_similarity_a_to_b", "x", "y")
    assert picked[["model_a", "model_b", "metric", "score"]].values.tolist() == [["x", "y", "imbalance_similarity_a_to_b", 0.7]]
    with pytest.raises(RepalignError, match="no rows comparing"):  # only a_to_b of (y, x): the (x, y) value is not there
        select_pair(stored[stored.metric == "imbalance_similarity_a_to_b"], "imbalance_similarity_a_to_b", "x", "y")
    # a model matrix mirrors a symmetric metric's (x, y) into (y, x), never an asymmetric one's
    from repalign.plot import model_scores

    one = stored[stored.metric == "imbalance_similarity_a_to_b"].assign(best=True)
    matrix = model_scores(one, "imbalance_similarity_a_to_b")
    assert matrix.loc["y", "x"] == 0.4 and np.isnan(matrix.loc["x", "y"])
    assert model_scores(one.assign(metric="procrustes"), "procrustes").loc["x", "y"] == 0.4


def test_metric_parameters_are_checked_in_one_line():
    from repalign.errors import RepalignError

    A, B = layers(0)
    with pytest.raises(RepalignError, match="whitening=2"):
        align_layers(A, B, metric="shape_similarity", whitening=2)
    with pytest.raises(RepalignError, match="rdm='city'"):
        align_layers(A, B, metric="rsa", rdm="city")


def test_permutation_test_level_by_simulation():
    """Type-I error of the per-pair permutation p-value (19 permutations: smallest p = 1/20 = 0.05)
    for unrelated layers of realistic width (N = 40, widths 32 and 24), 300 replicates per metric:
    the rejection rate at alpha = 0.05 must lie within the binomial 99.9% range of 0.05."""
    rng = np.random.default_rng(11)
    reps, low, high = 300, 3, 29  # binomial(300, 0.05): P(X < 3) + P(X > 29) < 0.001
    for metric in ("procrustes", "rsa", "pwcca", "imbalance_similarity_a_to_b"):
        rejections = 0
        for rep in range(reps):
            X, Y = rng.standard_normal((40, 32)), rng.standard_normal((40, 24))
            result = permutation_test([X], [Y], metric=metric, permutations=19, seed=rep)
            assert result.p_value[0, 0] >= 1 / 20
            rejections += result.p_value[0, 0] <= 0.05
        assert low <= rejections <= high, (metric, rejections)


def _write(path, model, ids, arrays):
    with CacheWriter(path, model, provenance={"model": model, "options": {}}, layers=list(arrays)) as w:
        w.append(ids, [hashlib.sha256(i.encode()).hexdigest() for i in ids], arrays)


def test_compare_cli_runs_the_new_metrics_with_permutations(tmp_path):
    A, B = layers(3, n=60)
    ids = [f"s{i}" for i in range(60)]
    path = tmp_path / "c.h5"
    _write(path, "ma", ids, {f"a{i}": a.astype(np.float32) for i, a in enumerate(A)})
    _write(path, "mb", ids, {f"b{i}": b.astype(np.float32) for i, b in enumerate(B)})
    out = tmp_path / "scores.csv"
    res = run_main("compare", path, "--a", "ma", "--b", "mb", "--metric", *NEW, "--permutations", 19, "-o", out)
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(out)
    assert set(table["metric"]) == set(NEW)
    assert len(table) == len(NEW) * 6
    assert table["p_value"].between(1 / 20, 1).all()
    # the shared signal is found by every measure: the best pair's p-value is the smallest attainable
    best = table[table["best"]]
    assert (best["p_value"] == 1 / 20).all()
    procrustes_rows = table[table["metric"] == "procrustes"].set_index(["layer_a", "layer_b"])["score"]
    assert procrustes_rows[("a1", "b2")] == pytest.approx(procrustes(prepare(A[1].astype(np.float32)), prepare(B[2].astype(np.float32))), abs=1e-6)


def test_compare_cli_passes_the_measure_parameters_and_words_errors_as_flags(tmp_path):
    A, B = layers(4, n=40)
    ids = [f"s{i}" for i in range(40)]
    path = tmp_path / "c.h5"
    _write(path, "ma", ids, {"a0": A[0].astype(np.float32)})
    _write(path, "mb", ids, {"b0": B[0].astype(np.float32)})
    out = tmp_path / "s.csv"
    res = run_main("compare", path, "--a", "ma", "--b", "mb", "--metric", "shape_similarity", "rsa", "mknn",
                   "--whitening", 0.5, "--rdm", "euclidean", "--rdm-compare", "tau_a", "--k", 5, "-o", out)
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(out).set_index("metric")
    X, Y = prepare(A[0].astype(np.float32)), prepare(B[0].astype(np.float32))
    assert table.loc["shape_similarity", "score"] == pytest.approx(shape_similarity(X, Y, whitening=0.5), abs=1e-6)
    assert "whitening=0.5" in table.loc["shape_similarity", "params"]
    assert table.loc["rsa", "score"] == pytest.approx(rsa(X, Y, rdm="euclidean", compare="tau_a"), abs=1e-6)
    assert "compare=tau_a" in table.loc["rsa", "params"] and "rdm=euclidean" in table.loc["rsa", "params"]
    bad = run_main("compare", path, "--a", "ma", "--b", "mb", "--metric", "shape_similarity", "--whitening", 2)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "--whitening 2" in bad.stderr, bad.stderr
