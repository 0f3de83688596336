"""Alignment across N and k: `compare_curves` / `compare --k 5,10 --n-samples ...` and `plot --kind n-curve`,
on small synthetic caches checked against plain compare, plain-numpy mutual kNN and the closed-form chance level."""

import hashlib

import numpy as np
import pandas as pd
import pytest
from cli_helpers import run_main

from embeddings_cache import CacheWriter
from repalign.compare import compare_curves, compare_models
from repalign.compare.curves import draw_subsets
from repalign.errors import RepalignError
from repalign.metrics import reference
from repalign.plot import curve_scores, n_curve

N = 90
LAYERS_A, LAYERS_B = ["a0", "a1", "a2"], ["b0", "b1"]


def h(sample_id):
    return hashlib.sha256(sample_id.encode()).hexdigest()


def _write(path, model, ids, feats):
    with CacheWriter(path, model, provenance={"model": model, "options": {}}, layers=list(feats)) as w:
        w.append(ids, [h(i) for i in ids], feats)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Two models sharing a signal; B stored in another sample order (rows are matched by id)."""
    path = tmp_path_factory.mktemp("curves") / "c.h5"
    ids = [f"s{i:03d}" for i in range(N)]
    rng = np.random.default_rng(3)
    base = rng.standard_normal((N, 12))
    fa = {x: (base @ rng.standard_normal((12, 10)) + (1 + i) * rng.standard_normal((N, 10))).astype(np.float32)
          for i, x in enumerate(LAYERS_A)}
    fb = {x: (base @ rng.standard_normal((12, 8)) + (1.5 + i) * rng.standard_normal((N, 8))).astype(np.float32)
          for i, x in enumerate(LAYERS_B)}
    _write(path, "ma", ids, fa)
    perm = rng.permutation(N)
    _write(path, "mb", [ids[i] for i in perm], {x: v[perm] for x, v in fb.items()})
    return path, ids, fa, fb


SHARED = ["model_a", "layer_a", "model_b", "layer_b", "metric", "params", "n_samples", "best"]


def _full(table, metric, k=None):
    rows = table[(table["metric"] == metric) & (table["n_samples"] == N)]
    if k is not None:
        rows = rows[rows["k"] == k]
    return rows.reset_index(drop=True)


def test_full_size_rows_equal_plain_compare_at_every_k(cache):
    path, *_ = cache
    curves = compare_curves(path, "ma", "mb", ["mknn", "cka"], ks=[4, 7], sizes=[30, 60], repeats=2, permutations=19)
    for k in (4, 7):
        plain = compare_models(path, "ma", "mb", ["mknn"], k=k, permutations=19).table
        full = _full(curves.table, "mutual_knn", k)
        assert len(full) == len(plain) == len(LAYERS_A) * len(LAYERS_B)
        pd.testing.assert_frame_equal(full[SHARED], plain[SHARED], check_dtype=False)
        for column in ("score", "null_mean", "p_value", "p_value_adjusted", "calibrated", "chance_level"):
            np.testing.assert_allclose(full[column], plain[column], rtol=0, atol=1e-12)
    plain = compare_models(path, "ma", "mb", ["cka"], permutations=19).table
    full = _full(curves.table, "cka")
    pd.testing.assert_frame_equal(full[SHARED], plain[SHARED], check_dtype=False)
    np.testing.assert_allclose(full["score"], plain["score"], rtol=0, atol=1e-12)
    # every row of every subset carries its null mean and calibrated score
    assert curves.table[["null_mean", "calibrated", "p_value"]].notna().all().all()


def test_kernel_metrics_are_scored_once_per_subset_and_knn_metrics_once_per_k(cache):
    path, *_ = cache
    table = compare_curves(path, "ma", "mb", ["mknn", "cka"], ks=[4, 7, 10], sizes=[30, 60], repeats=3).table
    pairs = len(LAYERS_A) * len(LAYERS_B)
    subsets = 2 * 3 + 1
    cka = table[table["metric"] == "cka"]
    assert len(cka) == subsets * pairs and cka["k"].isna().all()
    knn = table[table["metric"] == "mutual_knn"]
    assert len(knn) == 3 * subsets * pairs
    assert sorted(knn["k"].unique()) == [4, 7, 10]
    counts = table.groupby(["metric", "n_samples"])["subset"].nunique().to_dict()
    assert counts == {("cka", 30): 3, ("cka", 60): 3, ("cka", N): 1,
                      ("mutual_knn", 30): 3, ("mutual_knn", 60): 3, ("mutual_knn", N): 1}
    assert (table.loc[table["n_samples"] == N, "subset"] == 0).all()
    # one best pair per (metric, k, size, subset)
    best = table.groupby(["metric", "params", "n_samples", "subset"])["best"].sum()
    assert (best == 1).all()


def test_subsets_are_seeded_nested_and_sized():
    first = draw_subsets(200, [20, 50, 120], 4, seed=11)
    again = draw_subsets(200, [20, 50, 120], 4, seed=11)
    other = draw_subsets(200, [20, 50, 120], 4, seed=12)
    assert [(s.size, s.index) for s in first] == [(n, r) for n in (20, 50, 120) for r in range(4)] + [(200, 0)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.rows, b.rows)
    assert any(not np.array_equal(a.rows, b.rows) for a, b in zip(first, other))
    by = {(s.size, s.index): s.rows for s in first}
    for (size, r), rows in by.items():
        assert len(rows) == size == len(set(rows.tolist())) and np.all(np.diff(rows) > 0)  # distinct, stored order
        assert rows.min() >= 0 and rows.max() < 200
    for r in range(4):  # repeat r's smaller subsets lie inside its larger ones
        assert set(by[(20, r)]) <= set(by[(50, r)]) <= set(by[(120, r)]) <= set(range(200))
    assert len({tuple(by[(50, r)]) for r in range(4)}) == 4  # the repeats differ
    # the full size, asked or not, is scored once, on every sample in stored order
    asked = draw_subsets(200, [50, 200], 3, seed=11)
    assert [(s.size, s.index) for s in asked] == [(50, 0), (50, 1), (50, 2), (200, 0)]
    np.testing.assert_array_equal(asked[-1].rows, np.arange(200))
    # more sizes or repeats leave the other subsets as they were
    wider = {(s.size, s.index): s.rows for s in draw_subsets(200, [20, 35, 50, 120], 6, seed=11)}
    for key, rows in by.items():
        np.testing.assert_array_equal(wider[key], rows)


def test_same_seed_same_rows_other_seed_other_scores(cache):
    path, *_ = cache
    one = compare_curves(path, "ma", "mb", ["mknn"], ks=[5], sizes=[30], repeats=3, seed=2).table
    two = compare_curves(path, "ma", "mb", ["mknn"], ks=[5], sizes=[30], repeats=3, seed=2).table
    three = compare_curves(path, "ma", "mb", ["mknn"], ks=[5], sizes=[30], repeats=3, seed=3).table
    pd.testing.assert_frame_equal(one, two)
    small = one["n_samples"] == 30
    assert not np.allclose(one.loc[small, "score"], three.loc[small, "score"])
    np.testing.assert_allclose(one.loc[~small, "score"], three.loc[~small, "score"], rtol=0, atol=1e-12)


def test_chance_level_of_every_row_is_the_closed_form(cache):
    path, *_ = cache
    table = compare_curves(path, "ma", "mb", ["mknn", "cka", "unbiased_cka"], ks=[3, 9], sizes=[25, 50], repeats=2).table
    knn = table[table["metric"] == "mutual_knn"]
    np.testing.assert_allclose(knn["chance_level"], knn["k"].astype(float) / (knn["n_samples"] - 1), rtol=1e-12)
    assert table.loc[table["metric"] == "cka", "chance_level"].isna().all()  # biased CKA: no closed form
    assert (table.loc[table["metric"] == "unbiased_cka", "chance_level"] == 0.0).all()


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_one_subset_scores_equal_plain_numpy_mutual_knn_on_its_rows(cache):
    path, ids, fa, fb = cache
    seed, k = 5, 6
    table = compare_curves(path, "ma", "mb", ["mknn"], ks=[k], sizes=[40], repeats=3, seed=seed).table
    subset = [s for s in draw_subsets(N, [40], 3, seed) if s.size == 40 and s.index == 2][0]
    chosen = [ids[i] for i in subset.rows]  # ids in model A's stored order, as compare matches them
    position_b = {sample: i for i, sample in enumerate(ids)}  # the fixture's B features, indexed like ids
    rows = table[(table["n_samples"] == 40) & (table["subset"] == 2)]
    assert len(rows) == len(LAYERS_A) * len(LAYERS_B)
    for _, row in rows.iterrows():
        x = _unit(fa[row.layer_a][[ids.index(s) for s in chosen]])
        y = _unit(fb[row.layer_b][[position_b[s] for s in chosen]])
        assert row.score == pytest.approx(reference.mutual_knn(x, y, k), abs=1e-12)


@pytest.mark.filterwarnings("ignore:mutual_knn. N=")  # small N for k on purpose
def test_null_scores_sit_at_the_chance_level_at_every_n_and_k(tmp_path):
    """Independent layers: at each N and k the mean mutual-kNN score over layer pairs and subsets is
    the closed-form chance level k/(N - 1), the reference each row is read against (seeded; the
    tolerance is several standard deviations of that mean, about 0.005 at k=3, N=60)."""
    path = tmp_path / "null.h5"
    ids = [f"s{i:03d}" for i in range(120)]
    rng = np.random.default_rng(21)
    _write(path, "x", ids, {f"l{i}": rng.standard_normal((120, 6)).astype(np.float32) for i in range(3)})
    _write(path, "y", ids, {f"l{i}": rng.standard_normal((120, 6)).astype(np.float32) for i in range(3)})
    table = compare_curves(path, "x", "y", ["mknn"], ks=[3, 10], sizes=[30, 60], repeats=5).table
    means = table.groupby(["k", "n_samples"]).agg(score=("score", "mean"), chance=("chance_level", "first"))
    for (k, n), row in means.iterrows():
        assert row.chance == pytest.approx(k / (n - 1))
        assert abs(row.score - row.chance) < 0.25 * row.chance + 0.01, (k, n, row.score, row.chance)


def test_errors_name_both_numbers_and_the_fix(cache):
    path, *_ = cache
    with pytest.raises(RepalignError, match=r"sizes: 500 is more than the 90 samples shared by ma and mb"):
        compare_curves(path, "ma", "mb", ["mknn"], ks=[5], sizes=[30, 500])
    with pytest.raises(RepalignError, match=r"k=30 needs more than 30 samples but the smallest size scored is 30"):
        compare_curves(path, "ma", "mb", ["mknn"], ks=[5, 30], sizes=[30])
    with pytest.raises(RepalignError, match=r"ks=\[\.\.\.\]"):
        compare_curves(path, "ma", "mb", ["mknn"], k=5, sizes=[30])
    with pytest.raises(RepalignError, match=r"repeats=0 is invalid"):
        compare_curves(path, "ma", "mb", ["mknn"], sizes=[30], repeats=0)
    with pytest.raises(RepalignError, match=r"anchors"):
        compare_curves(path, "ma", "mb", ["mknn"], sizes=[30], anchors=5)


@pytest.fixture(scope="module")
def cli_table(cache, tmp_path_factory):
    path, *_ = cache
    out = tmp_path_factory.mktemp("cli") / "curves.csv"
    res = run_main("compare", path, "--a", "ma", "--b", "mb", "--metric", "mknn", "cka", "--k", "4,8",
                   "--n-samples", "30,60", "--repeats", "3", "--permutations", "9", "-o", out)
    assert res.returncode == 0, res.stderr
    assert "scored on 3 subset(s) of each of n_samples 30, 60 and on all 90, at k 4, 8" in res.stdout
    return out


def test_cli_writes_the_curve_table_whose_full_size_equals_plain_compare(cache, cli_table, tmp_path):
    path, *_ = cache
    table = pd.read_csv(cli_table)
    assert {"k", "n_samples", "subset", "chance_level", "null_mean", "calibrated"} <= set(table.columns)
    pairs = len(LAYERS_A) * len(LAYERS_B)
    assert len(table) == (2 * 3 + 1) * (2 + 1) * pairs  # (subsets) x (two k of mknn + cka once) x pairs
    plain_path = tmp_path / "plain.csv"
    res = run_main("compare", path, "--a", "ma", "--b", "mb", "--metric", "mknn", "--k", "8", "--permutations", "9",
                   "-o", plain_path)
    assert res.returncode == 0, res.stderr
    plain = pd.read_csv(plain_path)
    assert "k" not in plain.columns and "subset" not in plain.columns  # one k, no sizes: the table of today
    full = _full(table, "mutual_knn", 8)
    pd.testing.assert_frame_equal(full[SHARED], plain[SHARED], check_dtype=False)
    np.testing.assert_allclose(full["score"], plain["score"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("args, fragment", [
    (["--n-samples", "30,900"], "--n-samples: 900 is more than the 90 samples shared by ma and mb"),
    (["--k", "5,40", "--n-samples", "40,60"], "--k: k=40 needs more than 40 samples but the smallest size scored is 40"),
    (["--k", "5,95"], "--k: k=95 needs more than 95 samples but the smallest size scored is 90"),
    (["--k", "5,,10"], "--k '5,,10' is not a comma-separated list of whole numbers"),
    (["--n-samples", "30;60"], "--n-samples '30;60' is not a comma-separated list of whole numbers"),
    (["--k", "ten"], "--k 'ten' is not a comma-separated list of whole numbers"),
    (["--repeats", "3"], "--repeats sets the subsets drawn per size of --n-samples; add --n-samples"),
    (["--n-samples", "30", "--repeats", "0"], "--repeats 0 is invalid"),
    (["--k", "4,8", "--tokens"], "drop --tokens"),
])
def test_cli_bad_curve_input_is_one_line(cache, args, fragment):
    path, *_ = cache
    res = run_main("compare", path, "--a", "ma", "--b", "mb", *args)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("repalign: error: ") and fragment in lines[0], res.stderr


def _expected_means(table, layer_a, layer_b, k):
    rows = table[(table["metric"] == "mutual_knn") & (table["layer_a"] == layer_a) & (table["layer_b"] == layer_b)
                 & (table["k"] == k)]
    return rows.groupby("n_samples")["score"].agg(["mean", "min", "max"]).sort_index()


def test_plot_n_curve_writes_the_figure_and_draws_the_table_means(cli_table, tmp_path):
    res = run_main("plot", cli_table, "--kind", "n-curve", "--layer", "ma=a1", "--layer", "mb=b0",
                   "-o", tmp_path / "curve", "--format", "png,svg")
    assert res.returncode == 0, res.stderr
    png = tmp_path / "curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "<svg" in (tmp_path / "curve.svg").read_text()
    table = pd.read_csv(cli_table)
    fig = n_curve(table, layers={"ma": "a1", "mb": "b0"})
    lines = {line.get_gid(): line for line in fig.axes[0].get_lines()}
    for k in (4, 8):
        expected = _expected_means(table, "a1", "b0", k)
        line = lines[f"n-curve-k={k}"]
        np.testing.assert_allclose(line.get_xdata(), expected.index.to_numpy(dtype=float))
        np.testing.assert_allclose(line.get_ydata(), expected["mean"], rtol=1e-12)
        chance = lines[f"chance-k={k}"]
        np.testing.assert_allclose(chance.get_ydata(), k / (expected.index.to_numpy(dtype=float) - 1), rtol=1e-12)
        assert f"null-mean-k={k}" in lines  # the table has permutations
    assert fig.axes[0].get_xscale() == "log"
    texts = [t for t in fig.findobj(lambda o: hasattr(o, "get_fontsize") and hasattr(o, "get_text")) if t.get_text()]
    assert texts and min(t.get_fontsize() for t in texts) >= 7


def test_curve_scores_spread_and_default_pair(cli_table):
    table = pd.read_csv(cli_table)
    data = curve_scores(table)
    full = table[(table["metric"] == "mutual_knn") & (table["n_samples"] == 90)]
    votes = full[full["best"]].groupby(["layer_a", "layer_b"]).size()
    assert (data.attrs["layer_a"], data.attrs["layer_b"]) in set(votes[votes == votes.max()].index)
    for k in (4, 8):
        expected = _expected_means(table, data.attrs["layer_a"], data.attrs["layer_b"], k)
        part = data[data["label"] == f"k={k}"]
        np.testing.assert_allclose(part["low"], expected["min"])
        np.testing.assert_allclose(part["high"], expected["max"])
        assert list(part["subsets"]) == [3, 3, 1]
    cka = curve_scores(table, "cka", layers={"ma": "a2", "mb": "b1"})
    assert list(cka["label"].unique()) == ["cka"] and cka["chance_level"].isna().all()


@pytest.mark.parametrize("width", ["single", "double"])
def test_n_curve_calibrated_and_widths(cli_table, width):
    fig = n_curve(pd.read_csv(cli_table), value="calibrated", width=width)
    assert fig.get_figwidth() == pytest.approx({"single": 3.3, "double": 6.85}[width])
    gids = {line.get_gid() for line in fig.axes[0].get_lines()}
    assert {"n-curve-k=4", "n-curve-k=8"} <= gids and not any(g.startswith("chance-") for g in gids if g)


def test_plot_n_curve_errors_are_one_line(cache, tmp_path):
    path, *_ = cache
    plain = tmp_path / "plain.csv"
    assert run_main("compare", path, "--a", "ma", "--b", "mb", "-o", plain).returncode == 0
    res = run_main("plot", plain, "--kind", "n-curve", "-o", tmp_path / "x")
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
    assert "compare --n-samples" in res.stderr
    res = run_main("plot", plain, "--kind", "n-curve", "--layer-b", "b0", "-o", tmp_path / "x")
    assert res.returncode == 1 and "--layer-b does not apply to --kind n-curve" in res.stderr


def test_out_of_core_subsets_read_the_same_rows_as_in_memory_ones(cache):
    """With block_rows each subset is a cache reference to its samples, read in blocks: the same
    neighbour lists, so the same kNN scores."""
    path, *_ = cache
    in_memory = compare_curves(path, "ma", "mb", ["mknn"], ks=[4], sizes=[35], repeats=1).table
    blocked = compare_curves(path, "ma", "mb", ["mknn"], ks=[4], sizes=[35], repeats=1, block_rows=64).table
    pd.testing.assert_frame_equal(blocked[SHARED + ["k", "subset"]], in_memory[SHARED + ["k", "subset"]])
    np.testing.assert_allclose(blocked["score"], in_memory["score"], rtol=0, atol=1e-12)


def test_crowded_sizes_keep_tick_labels_apart(cache):
    path, *_ = cache
    table = compare_curves(path, "ma", "mb", ["mknn"], ks=[3, 5], sizes=[20, 22, 25, 40, 45, 60], repeats=1).table
    fig = n_curve(table, width="single")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in fig.axes[0].get_xticklabels() if t.get_visible() and t.get_text()]
    boxes = [t.get_window_extent(renderer) for t in labels]
    texts = [t.get_text() for t in labels]
    assert "90" in texts and len(texts) >= 3 and len(set(texts)) == len(texts)  # each size labelled once at most
    for n, a in enumerate(boxes):
        for b in boxes[n + 1:]:
            assert min(a.x1, b.x1) <= max(a.x0, b.x0), [t.get_text() for t in labels]
