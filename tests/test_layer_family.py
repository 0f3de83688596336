"""The layer family of a comparison: the best pair and the max-T layer-search adjustment range over
hidden layers (each network's input layer left out, as its adapter declared it at extraction)."""

import hashlib

import numpy as np
import pandas as pd
import pytest
from cli_helpers import run_main
from cluster_helpers import random_fasta

from embeddings_cache import Cache, CacheWriter
from repalign.compare import StatsOptions, compare_models
from repalign.errors import RepalignError
from repalign.extract import extract
from repalign.inputs import read_inputs
from repalign.metrics import mutual_knn, prepare

N = 90


def _h(sample_id):
    return hashlib.sha256(sample_id.encode()).hexdigest()


@pytest.fixture()
def input_heavy_cache(tmp_path):
    """Two 'networks' whose input layers are copies of one shared signal (the best pair by far when
    they are searched too) and whose hidden layers are noisier views of it; model b's first layer
    is its declared input layer, model c declares none (as an imported model)."""
    rng = np.random.default_rng(3)
    ids = [f"s{i:03d}" for i in range(N)]
    signal = rng.standard_normal((N, 12))
    path = tmp_path / "c.h5"
    for model, declared in (("ma", ["emb"]), ("mb", ["emb"]), ("mc", None)):
        layers = ["emb", "h1", "h2"]
        feats = {"emb": signal.astype(np.float32)}
        for i, name in enumerate(layers[1:], start=1):
            feats[name] = (signal @ rng.standard_normal((12, 10)) + i * rng.standard_normal((N, 10))).astype(np.float32)
        prov = {"model": model, "options": {}}
        if declared is not None:
            prov["input_layers"] = declared
        with CacheWriter(path, model, provenance=prov, layers=layers) as w:
            w.append(ids, [_h(i) for i in ids], feats)
    return path


def _best(table):
    row = table[table["best"]].iloc[0]
    return row.layer_a, row.layer_b


def test_hidden_family_leaves_declared_input_layers_out_of_the_best_pair(input_heavy_cache):
    hidden = compare_models(input_heavy_cache, "ma", "mb", ["mknn"], k=5).table
    every = compare_models(input_heavy_cache, "ma", "mb", ["mknn"], k=5, stats=StatsOptions(layer_family="all")).table
    assert _best(every) == ("emb", "emb")  # identical inputs: the trivial winner when searched
    a, b = _best(hidden)
    assert "emb" not in (a, b)
    # the best hidden pair is the maximum over the hidden pairs, computed independently here
    cache = Cache(input_heavy_cache)
    ids = cache.ids("ma")
    scores = {(x, y): mutual_knn(prepare(cache.read_layer("ma", x, ids=ids), "l2"),
                                 prepare(cache.read_layer("mb", y, ids=ids), "l2"), k=5)
              for x in ("h1", "h2") for y in ("h1", "h2")}
    assert max(scores, key=scores.get) == (a, b)
    np.testing.assert_allclose(hidden.set_index(["layer_a", "layer_b"]).score[(a, b)], max(scores.values()), atol=1e-12)
    # the scores themselves do not depend on the family
    pd.testing.assert_series_equal(hidden.score, every.score)


def test_a_model_without_declared_input_layers_keeps_all_its_layers(input_heavy_cache):
    table = compare_models(input_heavy_cache, "ma", "mc", ["mknn"], k=5).table
    best = table[table["best"]].iloc[0]
    assert best.layer_a != "emb" and best.layer_b == "emb"  # mc's first layer is searched: nothing declared it an input


def test_max_t_adjustment_ranges_over_the_hidden_family_only(input_heavy_cache):
    stats = StatsOptions(permutations=19, seed=1)
    table = compare_models(input_heavy_cache, "ma", "mb", ["mknn"], k=5, stats=stats).table
    inputs = (table.layer_a == "emb") | (table.layer_b == "emb")
    assert table.loc[inputs, "p_value_adjusted"].isna().all()
    assert table.loc[~inputs, "p_value_adjusted"].notna().all()
    assert table.loc[inputs, "p_value"].notna().all()  # unadjusted p-values stay for every pair
    # the adjusted p-value of the best hidden pair is at least its own p-value (a maximum over fewer pairs)
    best = table[table["best"]].iloc[0]
    assert best.p_value_adjusted >= best.p_value


def test_only_input_layers_chosen_falls_back_to_them(input_heavy_cache):
    table = compare_models(input_heavy_cache, "ma", "mb", ["mknn"], k=5, layers_a=["emb"], layers_b=["emb"]).table
    assert _best(table) == ("emb", "emb")


def test_cli_layer_family_flag_and_bad_value(input_heavy_cache, tmp_path):
    out = tmp_path / "all.csv"
    res = run_main("compare", input_heavy_cache, "--a", "ma", "--b", "mb", "--k", 5, "--layer-family", "all", "-o", out)
    assert res.returncode == 0, res.stderr
    assert _best(pd.read_csv(out)) == ("emb", "emb")
    bad = run_main("compare", input_heavy_cache, "--a", "ma", "--b", "mb", "--layer-family", "inputs")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    with pytest.raises(RepalignError, match="layer_family"):
        StatsOptions(layer_family="inputs")


def test_extraction_stores_the_adapters_input_layers(tiny_esm2, tmp_path):
    records = read_inputs([str(random_fasta(tmp_path / "in.fasta", 6, seed=2))])
    cache = tmp_path / "c.h5"
    extract(records, [f"hf:{tiny_esm2}", f"hf:{tiny_esm2}@random:1", "aa-composition"], cache, layers=["all"], quiet=True)
    c = Cache(cache)
    networks = [m for m in c.models if m != "aa-composition"]
    assert len(networks) == 2  # the trained network and its control declare the same input layer
    for network in networks:
        assert c.provenance(network)["input_layers"] == [c.layers(network)[0]]
    assert c.provenance("aa-composition")["input_layers"] == []


def test_igfold_declares_its_stages_before_the_structure_module():
    from repalign.models.igfold import IgFold

    adapter = IgFold.__new__(IgFold)  # layer names and input layers are declared without loading weights
    assert adapter.input_layers() == ["antiberty", "node_proj", "graph.0", "graph.1", "graph.2"]
    assert set(adapter.input_layers()) < set(adapter.layer_names()) and "graph.3" not in adapter.input_layers()
