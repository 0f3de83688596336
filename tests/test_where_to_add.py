"""docs/architecture.md's "Where to add things", exercised: a toy model, a toy metric and a toy figure
kind, each added by the single step the table documents, reach `extract`, `compare` and `plot`."""

import uuid

import numpy as np
import pandas as pd
import pytest
from cli_helpers import run_main
from cluster_helpers import random_fasta

import repalign.metrics as M
from embeddings_cache import Cache
from repalign.models import REGISTRY
from repalign.models.base import ModelAdapter, ModelInfo, SampleFeatures
from repalign.plot import FIGURES


class ToyResidueModel(ModelAdapter):
    """A 'network' of two layers: one-hot residues (its input layer), then their running mean."""

    info = ModelInfo(name="toy-residues", family="toy", modality="protein sequence", input_kind="sequence",
                     extra="", license="MIT", weights="none", description="test model")
    OPTIONS = ("scale",)

    def load(self) -> None:
        pass

    def layer_names(self) -> list[str]:
        return ["onehot", "running_mean"]

    def forward(self, records, layers):
        scale = float(self.options.get("scale", 1.0))
        out = []
        for r in records:
            seq = "".join(r.chains)
            onehot = np.zeros((len(seq), 20), dtype=np.float32)
            onehot[np.arange(len(seq)), ["ACDEFGHIKLMNPQRSTVWY".index(c) for c in seq]] = 1.0
            running = np.cumsum(onehot, axis=0) / np.arange(1, len(seq) + 1)[:, None] * scale
            feats = {"onehot": onehot, "running_mean": running.astype(np.float32)}
            out.append(SampleFeatures(tokens={x: feats[x] for x in layers}))
        return out


@pytest.fixture()
def toy_model(monkeypatch):
    # the documented step: one module with the adapter, one line in REGISTRY
    monkeypatch.setitem(REGISTRY, "toy-residues", f"{__name__}:ToyResidueModel")
    return "toy-residues"


@pytest.fixture()
def toy_cache(toy_model, tmp_path):
    fasta = random_fasta(tmp_path / "in.fasta", 30, seed=4)
    cache = tmp_path / "c.h5"
    res = run_main("extract", fasta, "--model", toy_model, "--model", "aa-composition", "--option", "scale=2", "-o", cache)
    assert res.returncode == 0, res.stderr
    return cache, fasta


def test_a_model_added_by_its_module_and_one_registry_line_reaches_extract(toy_cache):
    cache, _ = toy_cache
    c = Cache(cache)
    assert c.layers("toy-residues") == ["onehot", "running_mean"]
    assert c.provenance("toy-residues")["input_layers"] == ["onehot"]
    assert c.provenance("toy-residues")["options"]["model"] == {"scale": "2"}
    # the option reached the adapter: each running mean of one-hot rows sums to the scale
    np.testing.assert_allclose(c.read_layer("toy-residues", "running_mean").sum(axis=1), 2.0, rtol=1e-5)
    # mean-pooled one-hot = the amino-acid composition, which the aa-composition baseline stores too
    ids = c.ids("toy-residues")
    np.testing.assert_allclose(c.read_layer("toy-residues", "onehot", ids=ids), c.read_layer("aa-composition", "aa", ids=ids),
                               atol=1e-6)


def test_a_metric_added_by_register_metric_reaches_compare_on_the_command_line(toy_cache, tmp_path):
    cache, _ = toy_cache
    name = f"toy_norm_corr_{uuid.uuid4().hex[:6]}"

    def norm_corr(X, Y):
        return float(np.corrcoef(np.linalg.norm(X, axis=1), np.linalg.norm(Y, axis=1))[0, 1])

    M.register_metric(name, norm_corr, bounds=(-1.0, 1.0))  # the documented step
    out = tmp_path / "t.csv"
    res = run_main("compare", cache, "--a", "toy-residues", "--b", "aa-composition", "--metric", name,
                   "--normalize", "none", "--permutations", 19, "-o", out)
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(out)
    c = Cache(cache)
    ids = c.ids("toy-residues")
    expected = norm_corr(c.read_layer("toy-residues", "running_mean", ids=ids), c.read_layer("aa-composition", "aa", ids=ids))
    row = table[table.layer_a == "running_mean"].iloc[0]
    assert row.score == pytest.approx(expected, abs=1e-9)
    assert table["p_value"].between(1 / 20, 1.0).all()  # 19 permutations: p is at least 1/20
    assert table[table["best"]].iloc[0].layer_a == "running_mean"  # the declared input layer is not searched


def test_a_figure_kind_added_by_one_function_and_one_entry_reaches_plot(toy_cache, tmp_path, monkeypatch):
    cache, _ = toy_cache
    table = tmp_path / "t.csv"
    assert run_main("compare", cache, "--a", "toy-residues", "--b", "aa-composition", "--k", 3, "-o", table).returncode == 0
    drawn = {}

    def score_bars(rows: pd.DataFrame, **options):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(3.5, 2.0))
        ax.bar(range(len(rows)), rows["score"].to_numpy())
        drawn["scores"] = rows["score"].to_numpy()
        return fig

    monkeypatch.setitem(FIGURES, "score-bars", score_bars)  # the documented step: one function, one entry
    out = tmp_path / "bars.pdf"
    res = run_main("plot", table, "--kind", "score-bars", "-o", out)
    assert res.returncode == 0, res.stderr
    assert out.stat().st_size > 0
    np.testing.assert_allclose(np.sort(drawn["scores"]), np.sort(pd.read_csv(table)["score"].to_numpy()))
