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
    StudyModel,
    best_pairs,
    chance_and_null,
    first_seeds,
    model_plans,
    only_models,
    results_lock,
    study_pairs,
    with_earlier_parts,
)
from repalign.errors import RepalignError
from repalign.inputs import sequence_record
from repalign.models import randomized
from repalign.models.base import ModelAdapter, ModelInfo, SampleFeatures
from repalign.models.controls import (
    control_name,
    is_control,
    model_seed,
    parse_control,
    reinitialize,
    torch_modules,
)

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
    """The registry's rule for controls (NAME@random:SEED) over a registry that knows only 'tiny'."""
    control = parse_control(name)
    if control is not None:
        return randomized(tiny_factory(control[0], weights=weights, device=device, dtype=dtype, **options), control[1])
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
    assert (a.name, b.name) == ("tiny@random:0", "tiny-v2@random:0")
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
    cache = tmp_path / "c.h5"
    extract(records, ["tiny", "tiny@random:3", "tiny@random:4"], cache, layers=["all"], adapter_factory=tiny_factory,
            quiet=True)
    with Cache(cache) as c:
        assert set(c.models) == {"tiny", "tiny@random:3", "tiny@random:4"}
        prov_control = c.provenance("tiny@random:3")
        assert prov_control["random_init"]["seed"] == 3 and prov_control["model"] == "tiny@random:3"
        assert prov_control["random_init"]["stream"] == model_seed(3, "tiny") and prov_control["level"] == "random_init"
        assert "random_init" not in c.provenance("tiny")
        trained = c.read_layer("tiny", "out", ids=["s0", "s1", "s2"])
        control = c.read_layer("tiny@random:3", "out", ids=["s0", "s1", "s2"])
        other_seed = c.read_layer("tiny@random:4", "out", ids=["s0", "s1", "s2"])
    assert not np.allclose(control, other_seed)
    assert not np.allclose(trained, control)
    # the control equals the trained adapter re-initialised by hand with the model's own stream
    manual = TinyAdapter()
    manual.ensure_loaded()
    reinitialize(torch_modules(manual), seed=model_seed(3, "tiny"))
    expected = np.stack([f.tokens["out"].mean(axis=0) for f in manual.forward(records, ["out"])])
    np.testing.assert_allclose(control, expected, rtol=1e-5, atol=1e-6)
    # a resumed control skips what is stored: nothing is re-extracted or mixed
    runs = extract(records, ["tiny@random:3"], cache, layers=["all"], adapter_factory=tiny_factory, quiet=True)
    assert (runs[0].stored, runs[0].skipped_existing) == (0, 3)


def test_control_specs_parse_and_refuse_bad_forms():
    from repalign.models import get_adapter

    assert parse_control("antiberty@random:3") == ("antiberty", 3, "model") and parse_control("antiberty") is None
    assert control_name("chgnet-0.3.0", 2) == "chgnet-0.3.0@random:2" and is_control("chgnet-0.3.0@random:2")
    for bad in ("antiberty@random", "antiberty@random:x", "antiberty@random:-1"):
        with pytest.raises(RepalignError, match="NAME@random:SEED"):
            get_adapter(bad)
    with pytest.raises(RepalignError, match="already a random-init control"):
        randomized(randomized(TinyAdapter(), 0), 1)
    # a baseline has no weights: its control is refused when it would load, with the reason
    control = get_adapter("aa-composition@random:0")
    with pytest.raises(RepalignError, match="cannot have a random-init control"):
        control.ensure_loaded()


def test_study_pairs_cover_levels_and_seeds():
    plans = model_plans(["a", "b"], {"base": {}}, seeds=(0, 1))
    assert [p.level for p in plans] == ["baseline", "trained", "trained"] + ["random_init"] * 4
    pairs = study_pairs(plans)
    keys = {(p.level, p.model_a, p.model_b, p.seed) for p in pairs}
    assert ("trained", "a", "b", None) in keys
    assert {("random_init", "a@random:0", "b@random:0", 0), ("random_init", "a@random:1", "b@random:1", 1)} <= keys
    assert ("random_init", "a@random:0", "b@random:1", 0) not in keys  # controls meet controls of the same seed
    assert {("baseline", m, "base", s) for m, s in (("a", None), ("b", None), ("a@random:1", 1))} <= keys
    assert len(pairs) == 1 + 2 + 2 + 4
    assert StudyModel("x@random:4", "random_init").seed == 4 and StudyModel("x", "trained").base == "x"


def test_extraction_can_be_limited_to_some_models_and_seeds():
    """``--models`` keeps the named models with their controls, and the baselines; ``--control-seeds``
    the first seeds; an unknown model is a one-line error naming the study's models."""
    plans = model_plans(["fast", "slow"], {"base": {}}, seeds=(0, 1, 2))
    kept = only_models(first_seeds(plans, 2), ["fast"])
    assert [p.model for p in kept] == ["base", "fast", "fast@random:0", "fast@random:1"]
    assert only_models(plans, None) == plans
    with pytest.raises(RepalignError, match="--models: slo not in this study; choose from fast, slow"):
        only_models(plans, ["slo"])


def test_chance_level_and_null_quantile_match_simulated_random_neighbours():
    n, k = 200, 10
    chance, q95 = chance_and_null(n, k, draws=4000)
    assert chance == pytest.approx(k / (n - 1))
    # independent simulation: mutual kNN between two random point clouds of the same samples
    from repalign.metrics import mutual_knn

    rng = np.random.default_rng(1)
    scores = [mutual_knn(rng.normal(size=(n, 8)), rng.normal(size=(n, 8)), k=k) for _ in range(200)]
    assert np.mean(scores) == pytest.approx(chance, abs=0.01)
    assert q95 == pytest.approx(np.quantile(scores, 0.95), abs=0.012)


def _mknn_reference(X, Y, k):
    def neighbours(Z):
        Z = Z / np.linalg.norm(Z, axis=1, keepdims=True)
        d = ((Z[:, None, :] - Z[None, :, :]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        return [set(np.argsort(row, kind="stable")[:k]) for row in d]

    na, nb = neighbours(X), neighbours(Y)
    return float(np.mean([len(a & b) / k for a, b in zip(na, nb)]))


def test_best_pairs_skips_a_layer_against_itself():
    table = pd.DataFrame({
        "level": "x", "metric": "mutual_knn", "model_a": "m", "model_b": "m",
        "layer_a": ["l0", "l0", "l1", "l1"], "layer_b": ["l0", "l1", "l0", "l1"], "score": [1.0, 0.4, 0.6, 1.0],
    })
    best = best_pairs(table)
    assert len(best) == 1 and (best.layer_a[0], best.layer_b[0], best.score[0]) == ("l1", "l0", 0.6)


def test_a_study_scored_in_parts_keeps_the_parts_it_did_not_rescore(tmp_path, capsys):
    def part(dataset, granularity, score, n=2, metric="mutual_knn"):
        return pd.DataFrame({"dataset": dataset, "granularity": granularity, "metric": metric, "level": "trained",
                             "seed": pd.NA, "model_a": "a", "layer_a": [f"l{i}" for i in range(n)], "score": score})

    path = tmp_path / "scores.csv"
    pd.concat([part("crystals", "structure", 0.1), part("crystals", "structure", 0.15, metric="unbiased_cka"),
               part("crystals", "element", 0.2, 3), part("molecules", "structure", 0.3)]).to_csv(path, index=False)
    merged = with_earlier_parts(part("crystals", "structure", 0.9), path)
    parts = merged.groupby(["dataset", "granularity", "metric"]).score.agg(["first", "size"])
    assert parts.to_dict("index") == {("crystals", "element", "mutual_knn"): {"first": 0.2, "size": 3},
                                      ("crystals", "structure", "mutual_knn"): {"first": 0.9, "size": 2},
                                      ("crystals", "structure", "unbiased_cka"): {"first": 0.15, "size": 2},
                                      ("molecules", "structure", "mutual_knn"): {"first": 0.3, "size": 2}}
    out = capsys.readouterr().out
    assert "kept 3 crystals mutual_knn rows per element" in out and "kept 2 crystals unbiased_cka rows per structure" in out
    assert with_earlier_parts(part("x", "structure", 0.5), tmp_path / "none.csv").shape[0] == 2



def test_a_second_run_waits_for_the_results_lock_of_the_first(tmp_path, capsys):
    """Two runs that score different parts merge into one scores.csv: the second merges only after
    the first has written (another process holds the lock here)."""
    import threading

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from analyses.common import results_lock\n"
         "with results_lock(Path(sys.argv[1])):\n    print('held', flush=True); sys.stdin.read()", str(tmp_path)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        entered = threading.Event()

        def second_run():
            with results_lock(tmp_path):
                entered.set()

        waiting = threading.Thread(target=second_run)
        waiting.start()
        assert not entered.wait(1.0), "the lock was taken while another process held it"
        holder.stdin.close()  # the first run finishes and releases the lock
        assert entered.wait(60)
        waiting.join()
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
    assert "another run is writing the results" in capsys.readouterr().out
    with results_lock(tmp_path):  # free again: taken at once, no note
        pass
    assert capsys.readouterr().out == ""


# ----------------------------------------------------------------------------- the studies, end to end
def _run_study(name, out, timeout=900):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", f"analyses.{name}", "--quick", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


SCORE_COLUMNS = ["dataset", "level", "seed", "model_a", "layer_a", "model_b", "layer_b", "metric", "score",
                 "n_samples", "p_value", "p_value_adjusted", "ci_low", "ci_high"]


def _check_statistics(table: pd.DataFrame):
    """Valid p-values and intervals where the metric has them; rows with a random-init control carry
    neither (they enter only through the test across seeds, control_contrasts.csv)."""
    control = table.model_a.str.contains("@random:") | table.model_b.str.contains("@random:")
    assert control.any() and table[control][["p_value", "ci_low", "ci_high"]].isna().all().all()
    tested = table[~control]
    assert ((tested.p_value > 0) & (tested.p_value <= 1)).all()
    # intervals where the metric has a valid one; NaN on both ends otherwise (kNN metrics, biased CKA)
    assert ((tested.ci_low <= tested.ci_high + 1e-12) | (tested.ci_low.isna() & tested.ci_high.isna())).all()
    assert tested.ci_low.notna().any(), "unbiased CKA rows have intervals"


def _check_scores(out: Path, seeds: set[int]):
    """The columns of the issue, levels, seeds and valid statistics in a study's scores.csv."""
    table = pd.read_csv(out / "scores.csv")
    assert list(table.columns[: len(SCORE_COLUMNS)]) == SCORE_COLUMNS
    assert table[table.metric == "mutual_knn"].score.between(-1e-9, 1 + 1e-9).all(), "mutual kNN lies in [0, 1]"
    assert table.score.between(-1 - 1e-9, 1 + 1e-9).all(), "unbiased CKA lies in [-1, 1]"
    _check_statistics(table)
    assert set(table.level) == {"trained", "random_init", "baseline"}
    controls = table[table.level == "random_init"]
    assert controls.model_a.str.contains("@random:").all() and controls.model_b.str.contains("@random:").all()
    assert set(controls.seed.astype(int)) == seeds
    # a control meets a control of its own seed
    assert (controls.model_a.str.split(":").str[-1].astype(int) == controls.seed).all()
    assert (controls.model_b.str.split(":").str[-1].astype(int) == controls.seed).all()
    trained = table[table.level == "trained"]
    assert not trained.model_a.str.contains("@").any() and trained.seed.isna().all()
    _check_contrasts(out, table, len(seeds))
    return table


def _check_contrasts(out: Path, table: pd.DataFrame, n_seeds: int):
    """control_contrasts.csv, recomputed from scores.csv: the trained pair's best score against the
    mean over seeds of its controls' best scores (input stages left out on both sides), over all
    layers and over hidden layers."""
    contrasts = pd.read_csv(out / "control_contrasts.csv")
    assert set(contrasts.comparison) == {"models", "baseline"} and (contrasts.n_seeds == n_seeds).all()
    assert set(contrasts.layers) == {"all", "hidden"}

    def first_layers_dropped(rows, sides):  # a model's first layer is its input embedding; baselines keep theirs
        drop = pd.Series(False, index=rows.index)
        for _, group in rows.groupby(["metric", "model_a", "model_b"]):
            for side in sides:
                if group[side].nunique() > 1:
                    drop[group.index[group[side] == group[side].iloc[0]]] = True
        return rows[~drop]

    for row in contrasts.itertuples():
        same = table[(table.dataset == row.dataset) & (table.metric == row.metric)
                     & (table.granularity == row.granularity)]
        a, b = same.model_a.str.split("@").str[0], same.model_b.str.split("@").str[0]
        pair = same[(a == row.model_a) & (b == row.model_b)]
        sides = ("layer_a",) if row.comparison == "baseline" else ("layer_a", "layer_b")  # model_b: the baseline
        pair = first_layers_dropped(pair, sides) if row.layers == "hidden" else pair
        if "input_stage" in pair.columns:  # antibodies: no headline on IgFold's input stages
            pair = pair[~pair.input_stage.astype(bool)]
        trained = pair[~pair.model_a.str.contains("@") & ~pair.model_b.str.contains("@")]
        controls = pair[pair.model_a.str.contains("@random:") | pair.model_b.str.contains("@random:")]
        assert row.trained == pytest.approx(trained.score.max(), abs=1e-5)  # the CSVs keep 6 digits
        per_seed = controls.groupby(["model_a", "model_b"]).score.max()
        assert len(per_seed) == n_seeds and row.control_mean == pytest.approx(per_seed.mean(), abs=1e-5)
        assert row.ci_low <= row.difference <= row.ci_high and 0 <= row.p_value <= row.p_value_adjusted <= 1


def _check_cache_provenance(cache_file: Path, builder: str, size: int):
    from embeddings_cache import Cache

    with Cache(cache_file) as c:
        for model in c.models:
            prov = c.provenance(model)
            assert ("random_init" in prov) == ("@random:" in model)
            assert prov["dataset"]["builder"] == builder and prov["dataset"]["size"] in (size, *range(1, size))
            assert len(prov["dataset"]["content_hash"]) == 64


@pytest.mark.slow
def test_antibody_study_quick(tmp_path):
    out = tmp_path / "antibody"
    _run_study("antibody_models", out)
    table = _check_scores(out, {0, 1})
    # IgFold runs on its subset, and its partners are scored on the same antibodies
    igfold = table[(table.model_a.str.startswith("igfold")) | (table.model_b.str.startswith("igfold"))]
    assert set(igfold.n_samples) == {5} and set(table[~table.index.isin(igfold.index)].n_samples) == {8}
    # IgFold's 'antiberty' stage is the AntiBERTy embedding it consumes: it matches AntiBERTy's last layer;
    # it and its projections (node_proj, then graph.0-2, which pass it through) are flagged so no headline rests on them
    igfold_vs_last = table[(table.model_a == "igfold") & (table.model_b == "antiberty") & (table.layer_b == "layer.7")
                           & (table.metric == "unbiased_cka")].set_index("layer_a")
    assert igfold_vs_last.score["antiberty"] > 0.99
    assert igfold_vs_last.score[["graph.0", "graph.1", "graph.2"]].to_numpy() == pytest.approx(igfold_vs_last.score["node_proj"])
    inputs = table.layer_a.isin(["antiberty", "node_proj", "graph.0", "graph.1", "graph.2"]) & table.model_a.str.startswith("igfold")
    assert table[inputs].input_stage.all() and not table[~inputs].input_stage.any()
    _check_cache_provenance(out / ".cache" / "antibodies-quick.h5", "repertoire_records", 8)


@pytest.mark.slow
def test_interatomic_study_quick(tmp_path):
    out = tmp_path / "potentials"
    _run_study("interatomic_potentials", out)
    table = _check_scores(out, {0, 1})
    assert set(table.dataset) == {"crystals"} and set(table.granularity) == {"structure", "element", "relative"}
    # per element of each crystal: one row per element present, at least one per crystal
    elements = table[table.granularity == "element"]
    assert elements.n_samples.min() > table[table.granularity == "structure"].n_samples.max()
    assert set(elements.n_units) == {12}
    # relative representations: the 4 anchor crystals are left out of the scored samples
    relative = table[table.granularity == "relative"]
    assert set(relative.n_samples) == {8} and relative.params.str.contains("anchors=4").all()
    assert {"structure", "element", "relative"} == set(pd.read_csv(out / "control_contrasts.csv").granularity)
    assert {"matrix_crystals_structure.png", "matrix_crystals_element.png", "best_pairs.csv"} <= {p.name for p in out.iterdir()}
    times = pd.read_csv(out / "extraction_times.csv")
    assert {"chgnet-0.3.0", "diep@random:1", "elements"} <= set(times.model)
    _check_cache_provenance(out / ".cache" / "crystals-quick.h5", "aflow_crystals", 12)


@pytest.mark.slow
def test_molecule_study_quick(tmp_path):
    out = tmp_path / "molecules"
    _run_study("molecules", out)
    table = _check_scores(out, {0, 1})
    assert set(table.granularity) == {"structure", "element"}
    elements = table[table.granularity == "element"].n_samples
    structures = table[table.granularity == "structure"].n_samples
    assert elements.min() > structures.max()  # rows are the elements of each molecule, not molecules
    assert {"morgan", "elements"} <= set(table.model_b)
    _check_cache_provenance(out / ".cache" / "molecules-quick.h5", "ccd_molecules", 12)


def _check_outputs(out: Path, controls: set[str]):
    table = pd.read_csv(out / "scores.csv")
    best = pd.read_csv(out / "best_pairs.csv")
    assert table[table.metric == "mutual_knn"].score.between(-1e-9, 1 + 1e-9).all(), "mutual kNN lies in [0, 1]"
    assert table.score.between(-1 - 1e-9, 1 + 1e-9).all(), "unbiased CKA lies in [-1, 1]"
    _check_statistics(table)
    control_rows = table[table.level == "random_init"]
    assert controls <= set(control_rows.model_a) | set(control_rows.model_b)
    readme = (out / "README.md").read_text()
    assert "--quick" in readme and "random" in readme
    return table, best, readme


@pytest.mark.slow
def test_esmfold2_study_quick(tmp_path):
    out = tmp_path / "esmfold2"
    _run_study("esmfold2_stages", out)
    table, best, readme = _check_outputs(out, {"esmfold2@random:0", "esmc-300m@random:0"})
    assert "not findings" in readme
    # the copies left out of the scored pairs are checked against what they copy: the stand-alone ESMC is the
    # backbone saved from the same checkpoint (same layer, same features); distogram is computed from parcae
    checks = pd.read_csv(out / "copy_checks.csv")
    same = checks[(checks.model_b == "esmc-300m") & (checks.layer_a == checks.layer_b)]
    assert len(same) >= 3 and (same.score > 0.9999).all()
    assert "distogram" in set(checks.layer_b) and not (table.layer_a.str.startswith("esmc.") & (table.model_b == "esmc-300m")).any()
    layers = set(table[table.model_a == "esmfold2"].layer_a)
    assert {"folding_trunk.0", "parcae", "confidence.single"} <= layers
    from embeddings_cache import Cache

    with Cache(out / ".cache" / "features-smoke-quick.h5") as c:
        for model in c.models:
            assert ("random_init" in c.provenance(model)) == ("@random:" in model)


def test_bad_arguments_are_one_line_errors(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "analyses.esmfold2_stages", "--esmc-weights", str(tmp_path),
                           "--out", str(tmp_path / "o")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1


def test_score_only_without_features_is_a_one_line_error(tmp_path):
    """--score-only scores what a cache holds; with nothing to score it says so and writes no table."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "analyses.molecules", "--quick", "--score-only", "--cache", str(tmp_path / "none"),
                           "--out", str(tmp_path / "o")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "scores.csv").exists()


@pytest.mark.slow
def test_control_spec_on_the_command_line_for_a_jax_model(tmp_path):
    """`repalign extract --model unirep-64@random:2`: a real JAX model re-initialised, stored under the spec."""
    from embeddings_cache import Cache

    fasta = tmp_path / "s.fasta"
    fasta.write_text(">a\nMKTAYIAKQRQISFVKSHFSRQ\n>b\nGSHMLEDPVDAFQ\n>c\nEVQLVESGGGLVQPGG\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("c1.h5", "c2.h5"):
        proc = subprocess.run([sys.executable, "-m", "repalign", "extract", str(fasta), "--model", "unirep-64",
                               "--model", "unirep-64@random:2", "-o", str(tmp_path / name)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    with Cache(tmp_path / "c1.h5") as c1, Cache(tmp_path / "c2.h5") as c2:
        assert set(c1.models) == {"unirep-64", "unirep-64@random:2"}
        prov = c1.provenance("unirep-64@random:2")
        assert prov["level"] == "random_init" and prov["random_init"]["seed"] == 2
        assert prov["random_init"]["initialisation"]["scaled_normal"] > 0
        ids = ["a", "b", "c"]
        trained, control = c1.read_layer("unirep-64", "layer.3", ids=ids), c1.read_layer("unirep-64@random:2", "layer.3", ids=ids)
        assert not np.allclose(trained, control, atol=1e-3)
        np.testing.assert_allclose(c2.read_layer("unirep-64@random:2", "layer.3", ids=ids), control, rtol=1e-5, atol=1e-6)
    bad = subprocess.run([sys.executable, "-m", "repalign", "extract", str(fasta), "--model", "unirep-64@random",
                          "-o", str(tmp_path / "c3.h5")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "NAME@random:SEED" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c3.h5").exists()


def test_results_go_to_the_checkout_or_to_the_working_directory(tmp_path, monkeypatch):
    """analyses/results/<study> only beside a source checkout; an installed copy writes ./repalign-results/<study>."""
    import analyses.common as common

    installed = tmp_path / "site-packages" / "analyses"
    installed.mkdir(parents=True)
    monkeypatch.setattr(common, "PACKAGE", installed)
    monkeypatch.chdir(tmp_path)
    assert not common.source_checkout()
    assert common.output_dir("molecules", None) == tmp_path / "repalign-results" / "molecules"
    assert not (installed / "results").exists()
    (installed.parent / "pyproject.toml").write_text("[project]\n")
    assert common.source_checkout() and common.default_results("molecules") == installed / "results" / "molecules"
    assert common.output_dir("x", tmp_path / "mine") == tmp_path / "mine"


def test_study_scoring_on_real_features_with_a_subset(tmp_path):
    """extract_plans + score_pooled on baselines: the study columns, shared ids of a subset, levels."""
    from analyses.common import SCORE_COLUMNS, Pair, extract_plans, score_pooled
    from repalign.datasets.antibodies import repertoire_records

    data = repertoire_records(12, seed=5)
    plans = [StudyModel("aa-composition", "baseline"), StudyModel("blosum62", "baseline", subset=8)]
    times = tmp_path / "times.csv"
    rows = extract_plans(data, plans, tmp_path / "c.h5", times, dataset="antibodies")
    assert list(rows.extracted) == [12, 8] and len(pd.read_csv(times)) == 2
    again = extract_plans(data, plans, tmp_path / "c.h5", times, dataset="antibodies")  # resumed: nothing new
    assert list(again.extracted) == [0, 0] and list(again.cached) == [12, 8] and len(pd.read_csv(times)) == 2
    table = score_pooled(tmp_path / "c.h5", "antibodies", [Pair("baseline", "aa-composition", "blosum62")],
                         ["mknn", "cka"], k=3, permutations=30, ci=0.9, n_subsamples=10)
    assert list(table.columns[: len(SCORE_COLUMNS)]) == list(SCORE_COLUMNS)
    assert set(table.n_samples) == {8} and set(table.metric) == {"mutual_knn", "cka"}
    assert (table.level == "baseline").all() and table.seed.isna().all()
    assert ((table.p_value > 0) & (table.p_value <= 1)).all() and table.p_value_adjusted.notna().all()
    # neither mknn nor biased CKA has a valid interval: NaN with the reason
    assert table.ci_low.isna().all() and table.note.str.startswith("no valid interval").all()
    # a BLOSUM62 profile is a linear map of the composition: linear CKA sees them as closely related
    assert table[table.metric == "cka"].score.iloc[0] > 0.5


def test_study_scoring_skips_models_missing_from_the_cache(tmp_path, capsys):
    """Controls not extracted yet: their pairs are skipped with a note; a metric can go without a test."""
    from analyses.common import Pair, extract_plans, score_pooled
    from repalign.datasets.antibodies import repertoire_records

    data = repertoire_records(10, seed=3)
    extract_plans(data, [StudyModel("aa-composition", "baseline"), StudyModel("onehot", "baseline")], tmp_path / "c.h5")
    pairs = [Pair("baseline", "aa-composition", "onehot"), Pair("random_init", "iglm@random:0", "antiberty@random:0", 0)]
    table = score_pooled(tmp_path / "c.h5", "antibodies", pairs, ["mknn", "unbiased_cka"], k=3,
                         permutations={"mknn": 30, "unbiased_cka": 0}, ci=0.9, n_subsamples=10)
    assert set(table.level) == {"baseline"}
    assert "random_init pairs skipped" in capsys.readouterr().out
    mknn, ucka = table[table.metric == "mutual_knn"], table[table.metric == "unbiased_cka"]
    assert mknn.p_value_adjusted.notna().all() and mknn.ci_low.isna().all()
    # no permutation test asked for unbiased CKA: no p-value; its interval is there and holds the score
    assert ucka.p_value.isna().all() and (ucka.ci_low <= ucka.score + 1e-12).all() and (ucka.score <= ucka.ci_high + 1e-12).all()
