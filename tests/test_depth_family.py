"""Depth profiles follow the layer family of the table's best pair: each layer of A is scored
against B's best layer *in the family* (under ``hidden``, never B's input layer), A's input layer
is kept but flagged, and a table that does not carry the family ranges over all of B's layers."""

import hashlib

import numpy as np
import pandas as pd
import pytest

from embeddings_cache import Cache, CacheWriter
from repalign import plot
from repalign.compare import StatsOptions, compare_models
from repalign.metrics import mutual_knn, prepare
from repalign.plot.style import caption
from repalign.table import read_table

N = 90
LAYERS = ["emb", "h1", "h2"]


@pytest.fixture(scope="module")
def input_heavy_cache(tmp_path_factory):
    """Two 'networks' whose declared input layers ('emb') are the same signal and whose hidden layers
    are noisier views of it: against B's input layer, A's layers score higher than against B's
    hidden ones, so an all-layers maximum picks B's input layer."""
    rng = np.random.default_rng(3)
    ids = [f"s{i:03d}" for i in range(N)]
    signal = rng.standard_normal((N, 12))
    path = tmp_path_factory.mktemp("depth") / "c.h5"
    for model in ("ma", "mb"):
        feats = {"emb": signal.astype(np.float32)}
        for i, name in enumerate(LAYERS[1:], start=1):
            feats[name] = (signal @ rng.standard_normal((12, 10)) + i * rng.standard_normal((N, 10))).astype(np.float32)
        prov = {"model": model, "options": {}, "input_layers": ["emb"]}
        with CacheWriter(path, model, provenance=prov, layers=LAYERS) as w:
            w.append(ids, [hashlib.sha256(s.encode()).hexdigest() for s in ids], feats)
    return path


@pytest.fixture(scope="module")
def scores(input_heavy_cache):
    """Mutual kNN (k=5, rows l2-normalised as compare does) of every layer pair, computed directly."""
    cache = Cache(input_heavy_cache)
    ids = cache.ids("ma")
    return {(x, y): mutual_knn(prepare(cache.read_layer("ma", x, ids=ids), "l2"),
                               prepare(cache.read_layer("mb", y, ids=ids), "l2"), k=5)
            for x in LAYERS for y in LAYERS}


@pytest.fixture(scope="module")
def tables(input_heavy_cache):
    return {family: compare_models(input_heavy_cache, "ma", "mb", ["mknn"], k=5,
                                   stats=StatsOptions(layer_family=family)).table
            for family in ("hidden", "all")}


def _expected(scores, layers_b):
    """(score, layer_b) per layer of A: the maximum over ``layers_b``."""
    return {x: max((scores[(x, y)], y) for y in layers_b) for x in LAYERS}


def test_compare_tables_carry_the_family_of_their_best_pair(tables):
    hidden, every = tables["hidden"], tables["all"]
    expected = (hidden.layer_a != "emb") & (hidden.layer_b != "emb")
    assert hidden["in_family"].tolist() == expected.tolist()
    assert every["in_family"].all()
    best = hidden[hidden["best"]].iloc[0]
    assert best.in_family


def test_depth_scores_take_the_max_over_the_hidden_layers_of_b(tables, scores):
    all_max = _expected(scores, LAYERS)
    # the case this guards: over all layers, B's input layer wins for some layer of A
    assert any(y == "emb" for _, y in all_max.values())
    hidden_max = _expected(scores, ["h1", "h2"])
    got = plot.depth_scores(tables["hidden"], model_b="mb")
    assert got["layer"].tolist() == LAYERS
    assert got["layer_b"].tolist() == [hidden_max[x][1] for x in LAYERS]
    np.testing.assert_allclose(got["score"], [hidden_max[x][0] for x in LAYERS], atol=1e-12)
    # A's input layer is drawn (scored against B's hidden layers too) but flagged
    assert got["input_layer"].tolist() == [True, False, False]
    assert got.attrs["hidden_b"]


def test_the_all_family_and_a_table_without_the_column_give_the_all_layers_max(tables, scores):
    all_max = _expected(scores, LAYERS)
    for table in (tables["all"], tables["hidden"].drop(columns=["in_family"])):
        got = plot.depth_scores(table, model_b="mb")
        assert got["layer_b"].tolist() == [all_max[x][1] for x in LAYERS]
        np.testing.assert_allclose(got["score"], [all_max[x][0] for x in LAYERS], atol=1e-12)
        assert not got["input_layer"].any() and not got.attrs["hidden_b"]


def test_the_family_survives_a_csv_round_trip_and_b_seen_from_either_side(tables, tmp_path):
    direct = plot.depth_scores(tables["hidden"], model_b="mb")
    tables["hidden"].to_csv(tmp_path / "t.csv", index=False)
    pd.testing.assert_frame_equal(plot.depth_scores(read_table(tmp_path / "t.csv"), model_b="mb"), direct)
    # ma as the reference: the rows are read with the sides exchanged, B's ('mb') input layer flagged
    swapped = plot.depth_scores(tables["hidden"], model_b="ma")
    assert swapped["input_layer"].tolist() == [True, False, False]
    assert "emb" not in set(swapped["layer_b"])


def test_depth_profile_marks_the_input_layer(tables):
    fig = plot.depth_profile(tables["hidden"], model_b="mb")
    ax = fig.axes[0]
    assert "best hidden layer of mb" in ax.get_ylabel().replace("\n", " ")
    assert "input layer" in [t.get_text() for t in fig.legends[0].get_texts()]
    assert "square: a model's input layer" in caption(fig)
    # the input layer's point sits at depth 0 with its hidden-family score
    data = plot.depth_scores(tables["hidden"], model_b="mb")
    squares = [c for c in ax.collections if c.get_offsets().shape[0] and c.get_paths()[0].vertices.shape[0] == 5]
    np.testing.assert_allclose(np.vstack([c.get_offsets() for c in squares]), [[0.0, data["score"].iloc[0]]])
    plain = plot.depth_profile(tables["all"], model_b="mb")
    assert "input layer" not in [t.get_text() for t in plain.legends[0].get_texts()]


def _dotted_cells(fig) -> list[tuple[int, int]]:
    (patch,) = [p for p in fig.axes[0].patches if p.get_gid() == "outside-family"]
    return sorted((int(round(y + 0.5)), int(round(x + 0.5))) for x, y in patch.get_path().vertices[::5])


def test_heatmap_dots_the_cells_outside_the_family_and_says_so(tables):
    """Cells with an input layer were neither searched nor adjusted (no p to hatch): they are dotted,
    and the caption names the mark; with the all-layers family nothing is dotted."""
    fig = plot.layer_heatmap(tables["hidden"], "mutual_knn", "ma", "mb")
    expected = sorted((i, j) for i, x in enumerate(LAYERS) for j, y in enumerate(LAYERS) if "emb" in (x, y))
    assert _dotted_cells(fig) == expected
    assert "dotted: outside the layer family" in caption(fig)
    fig_all = plot.layer_heatmap(tables["all"], "mutual_knn", "ma", "mb")
    assert not [p for p in fig_all.axes[0].patches if p.get_gid() == "outside-family"]
    assert "dotted" not in caption(fig_all)
