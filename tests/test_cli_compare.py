"""`repalign compare` and `repalign cache info` end to end, through real subprocesses and real HDF5 files."""

import hashlib

import numpy as np
import pandas as pd
import pytest
from cli_helpers import run_main

from embeddings_cache import CacheWriter
from repalign.compare import compare_models
from repalign.metrics import cka, mutual_knn, prepare

N = 120


def h(sample_id):
    return hashlib.sha256(sample_id.encode()).hexdigest()


def run_cli(*args, cwd=None):
    return run_main(*args, cwd=cwd)


def _write_model(path, model, ids, layers, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(99).standard_normal((len(ids), 16))  # shared signal -> non-trivial alignment
    feats = {}
    for li, name in enumerate(layers):
        w = rng.standard_normal((16, 8 + 4 * li))
        feats[name] = (base @ w + (1 + li + shift) * rng.standard_normal((len(ids), 8 + 4 * li))).astype(np.float32)
    with CacheWriter(path, model, provenance={"model": model, "options": {}}, layers=layers) as w:
        half = len(ids) // 2
        for sl in (slice(0, half), slice(half, None)):
            w.append(ids[sl], [h(i) for i in ids[sl]], {k: v[sl] for k, v in feats.items()})
    return feats


@pytest.fixture()
def two_model_cache(tmp_path):
    path = tmp_path / "c.h5"
    ids = [f"s{i:03d}" for i in range(N)]
    fa = _write_model(path, "ma", ids, ["a0", "a1", "a2"], seed=1)
    # model B stored in a different sample order: comparisons must align by id
    perm = np.random.default_rng(5).permutation(N)
    fb_sorted = _write_model(tmp_path / "tmp_b.h5", "mb", ids, ["b0", "b1"], seed=2, shift=0.5)
    fb = {k: v[perm] for k, v in fb_sorted.items()}
    with CacheWriter(path, "mb", provenance={"model": "mb", "options": {}}, layers=["b0", "b1"]) as w:
        w.append([ids[i] for i in perm], [h(ids[i]) for i in perm], fb)
    return path, fa, fb_sorted


def test_compare_table_matches_direct_metric_calls(two_model_cache, tmp_path):
    path, fa, fb = two_model_cache
    out = tmp_path / "scores.csv"
    res = run_cli("compare", path, "--a", "ma", "--b", "mb", "--metric", "mknn", "cka", "--k", 7, "-o", out)
    assert res.returncode == 0, res.stderr
    assert "best" in res.stdout and "chance" in res.stdout
    table = pd.read_csv(out)
    assert set(table.columns) >= {"model_a", "layer_a", "model_b", "layer_b", "metric", "params", "score", "n_samples"}
    assert len(table) == 2 * 3 * 2 and (table["n_samples"] == N).all()
    for _, row in table.iterrows():
        x = prepare(fa[row.layer_a], normalize="l2")
        y = prepare(fb[row.layer_b], normalize="l2")
        expected = mutual_knn(x, y, k=7) if row.metric == "mutual_knn" else cka(x, y)
        assert row.score == pytest.approx(expected, abs=1e-9)


def test_compare_python_api_equals_cli_and_selects_layers(two_model_cache):
    path, fa, fb = two_model_cache
    res = compare_models(path, "ma", "mb", ["mknn"], layers_a=["a*"], layers_b=["b1"], k=5)
    assert list(res.table["layer_b"].unique()) == ["b1"]
    assert list(res.table["layer_a"]) == ["a0", "a1", "a2"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--metric", "nosuchmetric"], "nosuchmetric"),
        (["--k", "500"], "k"),
        (["--layers-a", "zzz*"], "no layer matches"),
        (["-o", "out.xlsx"], "unknown table format"),
        (["--search-block", "64"], "add --cluster"),
        (["--search-block", "0", "--cluster", "local:1"], "--search-block 0 is invalid"),
    ],
)
def test_compare_bad_input_one_line_no_output(two_model_cache, tmp_path, args, fragment):
    path, _, _ = two_model_cache
    res = run_cli("compare", path, "--a", "ma", "--b", "mb", *args, cwd=tmp_path)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("repalign: error:") and fragment in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out.xlsx").exists()


def test_compare_unknown_model_and_missing_cache(two_model_cache, tmp_path):
    path, _, _ = two_model_cache
    res = run_cli("compare", path, "--a", "ma", "--b", "nope")
    assert res.returncode != 0 and "nope" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("compare", tmp_path / "missing.h5", "--a", "ma", "--b", "mb")
    assert res.returncode != 0 and "missing.h5" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all" * 100)
    res = run_cli("compare", tmp_path / "junk.h5", "--a", "ma", "--b", "mb")
    assert res.returncode != 0 and "junk.h5" in res.stderr and "Traceback" not in res.stderr


def test_compare_across_two_cache_files(two_model_cache, tmp_path):
    path, fa, fb = two_model_cache
    res = run_cli("compare", path, "--a", "ma", "--b", "mb", "--cache-b", tmp_path / "tmp_b.h5", "--metric", "mknn")
    assert res.returncode == 0, res.stderr
    same = run_cli("compare", path, "--a", "ma", "--b", "mb", "--metric", "mknn")
    assert res.stdout.splitlines()[1:] == same.stdout.splitlines()[1:]


def test_cache_info_lists_models_layers_and_shapes(two_model_cache):
    path, _, _ = two_model_cache
    res = run_cli("cache", "info", path)
    assert res.returncode == 0, res.stderr
    for token in ("ma", "mb", "a0", "a2", "b1", str(N)):
        assert token in res.stdout


def test_compare_with_permutations_and_intervals(two_model_cache, tmp_path):
    from repalign.stats import permutation_test

    path, fa, fb = two_model_cache
    out = tmp_path / "scores.parquet"
    res = run_cli("compare", path, "--a", "ma", "--b", "mb", "--metric", "mknn", "unbiased_cka", "--k", 5,
                  "--permutations", 49, "--ci", 0.9, "--subsamples", 20, "-o", out)
    assert res.returncode == 0, res.stderr
    assert "p adjusted for the layer search" in res.stdout and "chance 0.0420" in res.stdout
    table = pd.read_parquet(out)
    for col in ("p_value", "p_value_adjusted", "null_mean", "calibrated"):
        assert table[col].notna().all(), col
    assert ((table["p_value"] > 0) & (table["p_value"] <= 1)).all()
    assert (table["p_value_adjusted"] >= table["p_value"]).all()
    for metric, rows in table.groupby("metric"):
        # the best pair is marked once, and p_value_best sits on its row only
        assert rows["best"].sum() == 1 and rows["p_value_best"].notna().sum() == 1
        assert rows.loc[rows["best"], "p_value_best"].iloc[0] == rows.loc[rows["best"], "p_value_adjusted"].iloc[0]
    knn_rows, cka_rows = table[table.metric == "mutual_knn"], table[table.metric == "unbiased_cka"]
    # kNN metrics at fixed k get no interval, and the table says why; unbiased CKA gets one
    assert knn_rows["ci_low"].isna().all() and knn_rows["note"].str.startswith("no valid interval for mutual_knn").all()
    assert cka_rows["ci_low"].notna().all() and (cka_rows["ci_low"] <= cka_rows["ci_high"]).all()
    # the CLI's p-values are those of the Python API on the same aligned layers
    ref = permutation_test([fa[n] for n in ("a0", "a1", "a2")], [fb[n] for n in ("b0", "b1")],
                           metric="mknn", permutations=49, seed=0, k=5)
    np.testing.assert_allclose(knn_rows["p_value"].to_numpy(), ref.p_value.ravel())
    np.testing.assert_allclose(knn_rows["p_value_adjusted"].to_numpy(), ref.p_value_adjusted.ravel())
    assert knn_rows.loc[knn_rows["best"], "p_value_best"].iloc[0] == pytest.approx(ref.p_value_best)


def test_model_compared_with_itself_leaves_the_trivial_pairs_out(two_model_cache):
    path, fa, _ = two_model_cache
    result = compare_models(path, "ma", "ma", ["mknn"], k=5, permutations=19)
    table = result.table
    diagonal = table.layer_a == table.layer_b
    assert (table.loc[diagonal, "score"] == 1.0).all()  # a layer with itself
    best = table[table.best]
    assert len(best) == 1 and not (best.layer_a == best.layer_b).any()  # the best pair is a real pair
    assert table.loc[diagonal, "p_value_adjusted"].isna().all()  # left out of the max-T family
    assert table.loc[~diagonal, "p_value_adjusted"].notna().all()
    assert best["p_value_best"].iloc[0] < 1


def test_out_of_core_and_approximate_neighbours_match_the_in_memory_engine(two_model_cache, tmp_path):
    path, _, _ = two_model_cache
    ref = compare_models(path, "ma", "mb", ["mknn", "cka"], k=5).table
    blocked = compare_models(path, "ma", "mb", ["mknn", "cka"], k=5, block_rows=17).table
    # kNN lists are identical; streamed CKA differs from the in-memory one only at float32 rounding
    np.testing.assert_allclose(blocked["score"], ref["score"], atol=1e-6)
    knn_rows = ref.metric == "mutual_knn"
    np.testing.assert_array_equal(blocked["score"][knn_rows], ref["score"][knn_rows])
    assert list(blocked["layer_a"]) == list(ref["layer_a"])
    pytest.importorskip("faiss")
    res = run_cli("compare", path, "--a", "ma", "--b", "mb", "--metric", "mknn", "--k", 5, "--knn", "faiss-hnsw",
                  "-o", tmp_path / "approx.csv")
    assert res.returncode == 0, res.stderr
    approx = pd.read_csv(tmp_path / "approx.csv")
    assert approx["knn_recall"].between(0.5, 1.0).all()
    # with perfect recall the approximate score is the exact one
    exact = ref[ref.metric == "mutual_knn"]["score"].to_numpy()
    perfect = approx["knn_recall"].to_numpy() == 1.0
    np.testing.assert_allclose(approx["score"].to_numpy()[perfect], exact[perfect], atol=1e-12)
    # one path: permutation tests and reliability warnings out of core too
    blocked = compare_models(path, "ma", "mb", ["mknn"], k=5, block_rows=10, permutations=9).table
    in_memory = compare_models(path, "ma", "mb", ["mknn"], k=5, permutations=9).table
    np.testing.assert_array_equal(blocked["p_value"], in_memory["p_value"])
    res = run_cli("compare", path, "--a", "ma", "--b", "mb", "--block-rows", 10, "--ci", 0.9)
    assert res.returncode != 0 and "--ci" in res.stderr and "Traceback" not in res.stderr
