"""The studies under analyses/: random-init controls, scoring with statistics, and each study's --quick run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from analyses.common import (
    RANDOM_SUFFIX,
    best_pairs,
    control_factory,
    model_seed,
    randomized,
    reinitialize,
    scored_pair,
    torch_modules,
)
from repalign.inputs import sequence_record
from repalign.models.base import ModelAdapter, ModelInfo, SampleFeatures

ROOT = Path(__file__).resolve().parents[1]
AMINO = "ACDEFGHIKLMNPQRSTVWY"


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(len(AMINO), 8)
        self.mix = torch.nn.Linear(8, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.custom = torch.nn.Parameter(torch.randn(8, 8) * 3.0)  # no reset_parameters: scaled normal
        self.freq = torch.nn.Parameter(torch.arange(1.0, 9.0))  # all positive: a basis frequency, kept
        self.constant = torch.nn.Parameter(torch.tensor([7.0]), requires_grad=False)  # frozen: kept


class _Runner:  # a non-module object holding the network, as real adapters do
    def __init__(self):
        self.model = _Net()


class TinyAdapter(ModelAdapter):
    """A small real torch model: residue embedding -> linear -> norm -> custom matrix."""

    info = ModelInfo(name="tiny", family="Tiny", modality="protein sequence", input_kind="sequence", extra="",
                     license="MIT", weights="built in")

    def load(self):
        torch.manual_seed(123)  # the "trained" weights
        self.runner = _Runner()

    def layer_names(self):
        return ["embed", "mix", "out"]

    def provenance(self):
        return {"model": "tiny", "family": "Tiny", "weights": "seed-123", "options": dict(self.options)}

    def forward(self, records, layers):
        self.ensure_loaded()
        net = self.runner.model
        out = []
        with torch.no_grad():
            for r in records:
                idx = torch.tensor([AMINO.index(c) for c in r.payload])
                e = net.embed(idx)
                m = torch.tanh(net.mix(e) * net.freq)
                o = net.norm(m) @ net.custom + net.constant
                feats = {"embed": e, "mix": m, "out": o}
                out.append(SampleFeatures(tokens={k: feats[k].numpy() for k in layers}))
        return out


def tiny_factory(name, weights=None, device="cpu", dtype="float32", **options):
    assert name == "tiny"
    return TinyAdapter(weights=weights, device=device, dtype=dtype, **options)


def _params(adapter):
    return {k: v.detach().clone() for k, v in adapter.runner.model.named_parameters()}


def test_reinitialize_rules_seeding_and_global_rng():
    trained = TinyAdapter()
    trained.ensure_loaded()
    before = _params(trained)
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    counts = reinitialize(torch_modules(trained), seed=0)
    assert torch.equal(torch.rand(3), expected_next)  # the global RNG stream is untouched
    after = _params(trained)
    assert counts == {"reset_parameters": 5, "scaled_normal": 1, "kept": 2}
    for name in ("embed.weight", "mix.weight", "mix.bias", "custom"):
        assert not torch.allclose(after[name], before[name])
    assert torch.equal(after["freq"], before["freq"]) and torch.equal(after["constant"], before["constant"])
    assert torch.equal(after["norm.weight"], torch.ones(8))  # LayerNorm's own reset
    # the custom matrix keeps the scale (std) of its trained values, not their values
    assert abs(after["custom"].std().item() / before["custom"].std().item() - 1) < 0.35

    again = TinyAdapter()
    again.ensure_loaded()
    reinitialize(torch_modules(again), seed=0)
    other = TinyAdapter()
    other.ensure_loaded()
    reinitialize(torch_modules(other), seed=1)
    for name, value in after.items():
        assert torch.equal(_params(again)[name], value)  # same seed, same control
    assert not torch.allclose(_params(other)["mix.weight"], after["mix.weight"])


def test_same_architecture_controls_are_independent_networks():
    class OtherTiny(TinyAdapter):  # same architecture and weights, another registered name
        info = ModelInfo(name="tiny-v2", family="Tiny", modality="protein sequence", input_kind="sequence",
                         extra="", license="MIT", weights="built in")

    a, b = randomized(TinyAdapter(), 0), randomized(OtherTiny(), 0)
    a.ensure_loaded()
    b.ensure_loaded()
    assert (a.name, b.name) == ("tiny@random", "tiny-v2@random")
    assert model_seed(0, "tiny") != model_seed(0, "tiny-v2") and model_seed(0, "tiny") == model_seed(0, "tiny")
    assert not torch.allclose(a.inner.runner.model.mix.weight, b.inner.runner.model.mix.weight)


def test_torch_modules_finds_nested_networks_once():
    adapter = TinyAdapter()
    adapter.ensure_loaded()
    adapter.alias = adapter.runner.model.mix  # a submodule held twice is not listed on its own
    modules = torch_modules(adapter)
    assert modules == [adapter.runner.model]


def test_control_is_stored_under_its_own_name_with_provenance(tmp_path):
    from embeddings_cache import Cache
    from repalign.extract import extract

    records = [sequence_record(f"s{i}", seq) for i, seq in enumerate(["MKTAYIAK", "GSHMLEWW", "ACDEFGHIK"])]
    factory = control_factory(seed=3, base_factory=tiny_factory)
    cache = tmp_path / "c.h5"
    extract(records, ["tiny", "tiny" + RANDOM_SUFFIX], cache, layers=["all"], adapter_factory=factory, quiet=True)
    with Cache(cache) as c:
        assert set(c.models) == {"tiny", "tiny@random"}
        prov_control = c.provenance("tiny@random")
        assert prov_control["random_init"]["seed"] == 3 and prov_control["model"] == "tiny@random"
        assert prov_control["random_init"]["stream"] == model_seed(3, "tiny")
        assert "random_init" not in c.provenance("tiny")
        trained = c.read_layer("tiny", "out", ids=["s0", "s1", "s2"])
        control = c.read_layer("tiny@random", "out", ids=["s0", "s1", "s2"])
    assert not np.allclose(trained, control)
    # the control equals the trained adapter re-initialised by hand with the model's own stream
    manual = TinyAdapter()
    manual.ensure_loaded()
    reinitialize(torch_modules(manual), seed=model_seed(3, "tiny"))
    expected = np.stack([f.tokens["out"].mean(axis=0) for f in manual.forward(records, ["out"])])
    np.testing.assert_allclose(control, expected, rtol=1e-5, atol=1e-6)
    # another seed on resume is a changed option, not silently mixed features
    from repalign.errors import RepalignError

    with pytest.raises(RepalignError):
        extract(records, ["tiny@random"], cache, layers=["all"], adapter_factory=control_factory(4, tiny_factory), quiet=True)


def _mknn_reference(X, Y, k):
    def neighbours(Z):
        Z = Z / np.linalg.norm(Z, axis=1, keepdims=True)
        d = ((Z[:, None, :] - Z[None, :, :]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        return [set(np.argsort(row, kind="stable")[:k]) for row in d]

    na, nb = neighbours(X), neighbours(Y)
    return float(np.mean([len(a & b) / k for a, b in zip(na, nb)]))


def test_scored_pair_matches_reference_and_has_valid_statistics():
    rng = np.random.default_rng(0)
    n = 30
    latent = rng.normal(size=(n, 4))
    a = [latent @ rng.normal(size=(4, 6)) + 0.1 * rng.normal(size=(n, 6)), rng.normal(size=(n, 5))]
    b = [latent @ rng.normal(size=(4, 7)) + 0.1 * rng.normal(size=(n, 7))]
    table = scored_pair(a, b, ["shared", "noise"], ["shared"], "A", "B", "mknn", permutations=50, n_subsamples=10, k=4)
    assert list(table.layer_a) == ["shared", "noise"]
    for i, row in table.iterrows():
        assert row.score == pytest.approx(_mknn_reference(a[i], b[0], 4), abs=1e-12)
    assert ((table.p_value > 0) & (table.p_value <= 1)).all()
    assert (table.ci_low <= table.ci_high).all()
    shared, noise = table.iloc[0], table.iloc[1]
    assert shared.p_value == pytest.approx(1 / 51)  # no permutation reaches a real shared structure
    assert shared.score > noise.score


def test_best_pairs_skips_a_layer_against_itself():
    table = pd.DataFrame({
        "level": "x", "metric": "mutual_knn", "model_a": "m", "model_b": "m",
        "layer_a": ["l0", "l0", "l1", "l1"], "layer_b": ["l0", "l1", "l0", "l1"], "score": [1.0, 0.4, 0.6, 1.0],
    })
    best = best_pairs(table)
    assert len(best) == 1 and (best.layer_a[0], best.layer_b[0], best.score[0]) == ("l1", "l0", 0.6)


# ----------------------------------------------------------------------------- the studies, end to end
def _run_study(name, out, timeout=900):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", f"analyses.{name}", "--quick", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _check_outputs(out: Path, controls: set[str]):
    table = pd.read_csv(out / "scores.csv")
    best = pd.read_csv(out / "best_pairs.csv")
    assert table.score.between(-1e-9, 1 + 1e-9).all(), "mutual kNN and linear CKA lie in [0, 1]"
    assert ((table.p_value > 0) & (table.p_value <= 1)).all()
    assert ((table.p_value_best > 0) & (table.p_value_best <= 1)).all()
    assert (table.ci_low <= table.ci_high + 1e-12).all()
    assert set(table.metric) == {"mutual_knn", "cka"}
    assert "random_init" in set(table.level)
    control_rows = table[table.level == "random_init"]
    assert control_rows.model_a.str.endswith(RANDOM_SUFFIX).all() and control_rows.model_b.str.endswith(RANDOM_SUFFIX).all()
    assert controls <= set(control_rows.model_a) | set(control_rows.model_b)
    assert not table[table.level != "random_init"].model_a.str.endswith(RANDOM_SUFFIX).any()
    # best_pairs is the argmax of scores.csv for each group
    for row in best.itertuples():
        group = table[(table.level == row.level) & (table.metric == row.metric) & (table.model_a == row.model_a)
                      & (table.model_b == row.model_b)]
        if "dataset" in table.columns:
            group = group[(group.dataset == row.dataset) & (group.granularity == row.granularity)]
        group = group[(group.model_a != group.model_b) | (group.layer_a != group.layer_b)]
        assert row.score == pytest.approx(group.score.max(), abs=1e-6)
    pngs = list(out.glob("*.png"))
    assert pngs and all(p.stat().st_size > 5000 for p in pngs)
    readme = (out / "README.md").read_text()
    assert "--quick" in readme and "random" in readme
    return table, best, readme


def _check_cache_provenance(cache_file: Path):
    from embeddings_cache import Cache

    with Cache(cache_file) as c:
        for model in c.models:
            prov = c.provenance(model)
            assert ("random_init" in prov) == model.endswith(RANDOM_SUFFIX)


@pytest.mark.slow
def test_antibody_study_quick(tmp_path):
    out = tmp_path / "antibody"
    _run_study("antibody_models", out)
    table, best, readme = _check_outputs(out, {"igfold@random", "antiberty@random", "iglm@random"})
    assert set(table.model_a) >= {"igfold", "antiberty"} and set(table.n_samples) == {5}
    # IgFold's 'antiberty' stage is the AntiBERTy embedding it consumes: it must match AntiBERTy's last layer
    row = table[(table.model_a == "igfold") & (table.model_b == "antiberty") & (table.layer_a == "antiberty")
                & (table.layer_b == "layer.7") & (table.metric == "cka")]
    assert row.score.iloc[0] > 0.99
    _check_cache_provenance(out / ".cache" / "features-quick.h5")


@pytest.mark.slow
def test_interatomic_study_quick(tmp_path):
    out = tmp_path / "potentials"
    _run_study("interatomic_potentials", out)
    table, best, readme = _check_outputs(out, {"chgnet-0.3.0@random", "diep@random", "ani-1x@random"})
    assert set(table.granularity) == {"structure", "atom"}
    atoms = table[(table.granularity == "atom") & (table.dataset == "molecules")].n_samples
    structures = table[(table.granularity == "structure") & (table.dataset == "molecules")].n_samples
    assert atoms.min() > structures.max()  # per-atom rows are atoms, not molecules
    _check_cache_provenance(out / ".cache" / "crystals-quick.h5")


@pytest.mark.slow
def test_esmfold2_study_quick(tmp_path):
    out = tmp_path / "esmfold2"
    _run_study("esmfold2_stages", out)
    table, best, readme = _check_outputs(out, {"esmfold2@random", "esmc-300m@random"})
    assert "not findings" in readme
    # the stand-alone ESMC is the backbone saved from the same checkpoint: same layer, same features
    same = table[(table.model_a == "esmfold2") & (table.model_b == "esmc-300m") & (table.layer_a == table.layer_b)
                 & (table.metric == "cka")]
    assert len(same) >= 3 and (same.score > 0.9999).all()
    layers = set(table[table.model_a == "esmfold2"].layer_a)
    assert {"folding_trunk.0", "parcae", "distogram", "confidence.single"} <= layers
    _check_cache_provenance(out / ".cache" / "features-smoke-quick.h5")


def test_bad_arguments_are_one_line_errors(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "analyses.esmfold2_stages", "--esmc-weights", str(tmp_path),
                           "--out", str(tmp_path / "o")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
