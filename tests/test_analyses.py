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
    Primary,
    StudyModel,
    best_pairs,
    chance_and_null,
    first_seeds,
    label_contrasts,
    model_plans,
    only_models,
    results_lock,
    run_main,
    study_pairs,
    with_earlier_parts,
)
from analyses.families import ALL_PAIRS_NOTE
from analyses.rederive import main as rederive_main
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
from repalign.stats import holm

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


def test_control_seeds_per_model_pair_only_the_seeds_both_models_have():
    """A cheap model gets more control seeds than the others; control pairs exist only for the seeds
    both models have, a model and its controls meet the baselines on all of its own seeds."""
    plans = model_plans(["cheap", "slow", "other"], {"base": {}}, seeds={"cheap": 4}, default_seeds=2)
    controls = [p.model for p in plans if p.level == "random_init"]
    assert controls == ["cheap@random:0", "slow@random:0", "other@random:0", "cheap@random:1", "slow@random:1",
                        "other@random:1", "cheap@random:2", "cheap@random:3"]  # seed by seed
    pairs = study_pairs(plans)
    control_pairs = {(p.model_a, p.model_b) for p in pairs if p.level == "random_init"}
    assert ("cheap@random:3", "slow@random:3") not in control_pairs
    assert {p.seed for p in pairs if p.level == "random_init"} == {0, 1}
    assert len(control_pairs) == 3 * 2  # 3 model pairs x the 2 shared seeds
    baseline_seeds = {p.model_a: p.seed for p in pairs if p.level == "baseline" and p.seed is not None}
    assert sorted(m for m in baseline_seeds if m.startswith("cheap@")) == [f"cheap@random:{s}" for s in range(4)]
    assert [p.model for p in model_plans(["a"], seeds={"a": 3})].count("a@random:2") == 1
    assert len([p for p in model_plans(["a", "b"], seeds={"a": 20}) if p.model.startswith("b@")]) == 5  # the default
    with pytest.raises(RepalignError, match="control seeds given for ani, not a model of this study"):
        model_plans(["a"], seeds={"ani": 20})


def test_primary_and_secondary_contrasts_are_holm_adjusted_in_separate_families():
    """The primary rows form one Holm family, each secondary (dataset, granularity, metric, layers,
    comparison, N) its own; primary rows come first, every row labelled."""
    rng = np.random.default_rng(0)
    rows = []
    for layers in ("all", "hidden"):
        for comparison in ("models", "baseline"):
            for metric in ("mutual_knn", "unbiased_cka"):
                for i in range(3):
                    rows.append({"dataset": "crystals", "granularity": "structure", "metric": metric, "layers": layers,
                                 "comparison": comparison, "model_a": f"m{i}", "model_b": "x" if comparison == "baseline" else f"m{i + 1}",
                                 "n_samples": 100 if i < 2 else 50, "p_value": rng.choice([1 / 21, 2 / 21, 0.5, 1.0])})
    contrasts = pd.DataFrame(rows)
    primary = Primary("q?", "crystals", "mutual_knn", "structure", "hidden", n_samples=100)
    out = label_contrasts(contrasts, [primary])
    is_primary = ((contrasts.metric == "mutual_knn") & (contrasts.layers == "hidden") & (contrasts.comparison == "models")
                  & (contrasts.n_samples == 100))
    assert (out.analysis == "primary").sum() == is_primary.sum() == 2
    assert list(out.analysis[:2]) == ["primary"] * 2 and (out.analysis[2:] == "secondary").all()
    np.testing.assert_allclose(out.p_value_adjusted[:2], holm(contrasts.p_value[is_primary].to_numpy()))
    rest = contrasts[~is_primary]
    for keys, family in rest.groupby(["metric", "layers", "comparison", "n_samples"]):
        label = "secondary: crystals/structure/{}/{}/{}/{}".format(*keys)
        labelled = out[out.holm_family == label]
        assert len(labelled) == len(family)
        np.testing.assert_allclose(labelled.p_value_adjusted, holm(family.p_value.to_numpy()))
    # the N=50 row of the primary's metric, layers and comparison is secondary, in a family of its own N=50 row
    assert out[(out.holm_family == "secondary: crystals/structure/mutual_knn/hidden/models/50")].n_samples.tolist() == [50]


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



def test_a_run_on_some_models_keeps_the_earlier_rows_of_the_pairs_it_did_not_score(tmp_path, capsys):
    """Within a part this run scored, the pairs it scored replace their earlier rows and every other
    pair keeps them (e.g. a cache with one model and its new seeds); each kept pair is named once."""
    def rows(level, a, b, score, seed=None, n=2):
        return pd.DataFrame({"dataset": "molecules", "granularity": "structure", "metric": "mutual_knn", "level": level,
                             "seed": pd.array([seed] * n, dtype="Int64"), "model_a": a, "layer_a": [f"l{i}" for i in range(n)],
                             "model_b": b, "layer_b": "x", "score": score})

    path = tmp_path / "scores.csv"
    pd.concat([rows("trained", "ani", "chgnet", 0.1), rows("baseline", "ani", "morgan", 0.2),
               rows("baseline", "chgnet", "morgan", 0.3), rows("baseline", "chgnet@random:0", "morgan", 0.4, 0),
               rows("baseline", "chgnet@random:1", "morgan", 0.5, 1),
               rows("baseline", "ani@random:0", "morgan", 0.6, 0)]).to_csv(path, index=False)
    new = pd.concat([rows("baseline", "ani", "morgan", 0.9)]
                    + [rows("baseline", f"ani@random:{s}", "morgan", 0.9, s) for s in range(3)])
    merged = with_earlier_parts(new, path)
    scores = merged.groupby(["model_a", "model_b"]).score.agg(["first", "size"])
    assert scores.to_dict("index") == {
        ("ani", "chgnet"): {"first": 0.1, "size": 2}, ("ani", "morgan"): {"first": 0.9, "size": 2},
        ("ani@random:0", "morgan"): {"first": 0.9, "size": 2}, ("ani@random:1", "morgan"): {"first": 0.9, "size": 2},
        ("ani@random:2", "morgan"): {"first": 0.9, "size": 2}, ("chgnet", "morgan"): {"first": 0.3, "size": 2},
        ("chgnet@random:0", "morgan"): {"first": 0.4, "size": 2}, ("chgnet@random:1", "morgan"): {"first": 0.5, "size": 2}}
    notes = [line for line in capsys.readouterr().out.splitlines() if "note: kept" in line]
    assert len(notes) == 2
    assert "kept 2 molecules mutual_knn rows per structure of ani vs chgnet (trained)" in notes[0]
    assert "kept 6 molecules mutual_knn rows per structure of chgnet vs morgan (baseline; control seeds 0-1)" in notes[1]


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


def _check_scores(out: Path, seeds: set[int], primary: dict):
    """The study columns, levels, seeds and valid statistics in a study's scores.csv; its contrasts
    and primary analysis (``primary``: the columns and N of the primary contrast rows)."""
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
    contrasts = _check_contrasts(out, table)
    _check_primary(out, contrasts, primary)
    return table


def _check_contrasts(out: Path, table: pd.DataFrame) -> pd.DataFrame:
    """control_contrasts.csv, recomputed from scores.csv: the trained pair's best score against the
    mean over seeds of its controls' best scores (input stages left out on both sides), over all
    layers and over hidden layers, at the row's N, with as many seeds as both sides have."""
    contrasts = pd.read_csv(out / "control_contrasts.csv")
    assert set(contrasts.comparison) == {"models", "baseline"}
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
                     & (table.granularity == row.granularity) & (table.n_samples == row.n_samples)]
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
        assert len(per_seed) == row.n_seeds >= 2 and row.control_mean == pytest.approx(per_seed.mean(), abs=1e-5)
        assert row.min_p_value == pytest.approx(1 / (row.n_seeds + 1), abs=1e-6)
        assert row.ci_low <= row.difference <= row.ci_high and 0 <= row.p_value <= row.p_value_adjusted <= 1
    return contrasts


def _check_primary(out: Path, contrasts: pd.DataFrame, primary: dict):
    """The primary analysis: its rows exist, come first and are labelled (contrasts and best pairs);
    Holm runs over the primary rows together and within each secondary family apart, recomputed
    here with repalign.stats.holm."""
    spec = {"metric": "mutual_knn", "layers": "hidden", "comparison": "models", **primary}
    in_spec = np.logical_and.reduce([contrasts[k] == v for k, v in spec.items()])
    assert in_spec.any() and (contrasts.analysis[in_spec] == "primary").all() and in_spec.sum() == (contrasts.analysis == "primary").sum()
    assert set(contrasts.analysis) == {"primary", "secondary"}
    first = contrasts.analysis.eq("primary").to_numpy()
    assert first[: first.sum()].all(), "primary rows come first"
    rows = contrasts[first]
    assert (rows.holm_family == "primary").all()
    np.testing.assert_allclose(rows.p_value_adjusted, holm(rows.p_value.to_numpy()), atol=1e-6)
    secondary = contrasts[~first]
    family = ["dataset", "granularity", "metric", "layers", "comparison", "control_scope", "n_samples"]
    labels = "secondary: " + secondary[family].astype(str).agg("/".join, axis=1)
    assert (secondary.holm_family == labels).all()
    for _, family in secondary.groupby("holm_family"):
        np.testing.assert_allclose(family.p_value_adjusted, holm(family.p_value.to_numpy()), atol=1e-6)
    best = pd.read_csv(out / "best_pairs.csv")
    flagged = best.analysis.eq("primary").to_numpy()
    assert flagged.any() and flagged[: flagged.sum()].all() and (best.layers[flagged] == "hidden").all()
    assert set(best.level[flagged]) == {"trained", "random_init"} and (best.n_samples[flagged] == primary["n_samples"]).all()
    tables = (out / "control_contrasts.md").read_text()
    assert tables.startswith("## Primary analyses") and "| n_seeds |" in tables and "| min_p_value |" in tables


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
    proc = _run_study("antibody_models", out, timeout=1800)  # IgFold and its controls load for minutes each on a busy machine
    assert proc.stdout.startswith("primary analyses (1;")
    table = _check_scores(out, {0, 1}, {"dataset": "antibodies", "n_samples": 5})
    primary = pd.read_csv(out / "control_contrasts.csv").query("analysis == 'primary'")
    assert len(primary) == 6  # every model pair, at one N
    # IgFold runs on its subset, and its partners are scored on the same antibodies; every other pair on all
    # antibodies and again on IgFold's
    igfold = table[(table.model_a.str.startswith("igfold")) | (table.model_b.str.startswith("igfold"))]
    assert set(igfold.n_samples) == {5} and set(table[~table.index.isin(igfold.index)].n_samples) == {5, 8}
    others = table[~table.index.isin(igfold.index)]
    assert len(others[others.n_samples == 5]) == len(others[others.n_samples == 8])
    # the N=5 rows are the first 5 antibodies: mutual kNN recomputed on them from the cache's features
    from embeddings_cache import Cache
    from repalign.datasets.antibodies import repertoire_records

    ids = [r.id for r in list(repertoire_records(8, seed=0))[:5]]
    row = others[(others.model_a == "antiberty") & (others.model_b == "iglm") & (others.layer_a == "layer.7")
                 & (others.layer_b == "layer.3") & (others.metric == "mutual_knn") & (others.n_samples == 5)]
    with Cache(out / ".cache" / "antibodies-quick.h5") as c:
        x, y = c.read_layer("antiberty", "layer.7", ids=ids), c.read_layer("iglm", "layer.3", ids=ids)
    assert row.score.iloc[0] == pytest.approx(_mknn_reference(x, y, 2), abs=1e-6)
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
    proc = _run_study("interatomic_potentials", out)
    assert proc.stdout.startswith("primary analyses (1;")
    table = _check_scores(out, {0, 1}, {"dataset": "crystals", "granularity": "structure", "n_samples": 12})
    # CHGNet has 3 control seeds, DIEP 2: their control pairs use the 2 seeds both have, CHGNet vs a baseline its 3
    contrasts = pd.read_csv(out / "control_contrasts.csv")
    assert set(contrasts[contrasts.comparison == "models"].n_seeds) == {2}
    assert set(contrasts[(contrasts.comparison == "baseline")].groupby("model_a").n_seeds.max().items()) == {("chgnet-0.3.0", 3), ("diep", 2)}
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
    proc = _run_study("molecules", out)
    assert proc.stdout.startswith("primary analyses (1;")
    table = _check_scores(out, {0, 1}, {"dataset": "molecules", "granularity": "structure", "n_samples": 12})
    assert set(table.granularity) == {"structure", "element"}
    elements = table[table.granularity == "element"].n_samples
    structures = table[table.granularity == "structure"].n_samples
    assert elements.min() > structures.max()  # rows are the elements of each molecule, not molecules
    assert {"morgan", "elements"} <= set(table.model_b)
    _check_cache_provenance(out / ".cache" / "molecules-quick.h5", "ccd_molecules", 12)
    # re-derived from the table alone, the hidden family's best pairs are those compare marked, and the
    # contrasts and best pairs are those the run wrote
    again = tmp_path / "rederived"
    stripped = tmp_path / "scores-without-family.csv"
    _without_family(table).to_csv(stripped, index=False)
    proc = subprocess.run([sys.executable, "-m", "analyses.rederive", "molecules", "--quick", "--scores", str(stripped),
                           "--out", str(again)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rederived = pd.read_csv(again / "scores.csv")
    assert table.best.sum() > 0 and (rederived.best == table.best).all()
    if "in_family" in table.columns:
        assert (rederived.in_family == table.in_family).all()
    # the control statistics of the re-derived contrasts come from the table's 6-digit scores
    pd.testing.assert_frame_equal(pd.read_csv(again / "control_contrasts.csv"), pd.read_csv(out / "control_contrasts.csv"),
                                  check_exact=False, atol=2e-6)
    best = pd.read_csv(again / "best_pairs.csv")
    pd.testing.assert_frame_equal(best.drop(columns="best_note"), pd.read_csv(out / "best_pairs.csv"))
    tested = best.p_value_adjusted.notna()
    assert (best.best_note[tested & (best.layers == "hidden")] == ALL_PAIRS_NOTE).all() and best.best_note[~tested].isna().all()


@pytest.mark.slow
def test_a_score_only_run_on_some_models_keeps_the_other_pairs(tmp_path):
    """New control seeds of one model without re-extracting the others: a --score-only run on a cache
    holding the baselines, ANI-1x and its controls replaces the rows of the pairs it scores and keeps
    the earlier rows of every other pair (CHGNet's), naming each kept pair once."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def study(*args):
        proc = subprocess.run([sys.executable, "-m", "analyses.molecules", "--quick", "--granularity", "structure", *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    study("--out", str(out), "--cache", str(tmp_path / "all"))
    first = pd.read_csv(out / "scores.csv")
    # mark the earlier rows: a kept row keeps the mark, a replaced one loses it
    marked = first.assign(score=-0.5)
    marked.to_csv(out / "scores.csv", index=False)
    study("--extract-only", "--models", "ani-1x", "--cache", str(tmp_path / "part"), "--out", str(tmp_path / "x"))
    printed = study("--score-only", "--cache", str(tmp_path / "part"), "--out", str(out))
    merged = pd.read_csv(out / "scores.csv")
    key = ["metric", "model_a", "layer_a", "model_b", "layer_b"]
    assert not merged.duplicated(key).any() and len(merged) == len(first)
    chgnet = merged.model_a.str.startswith("chgnet") | merged.model_b.str.startswith("chgnet")
    assert (merged.score[chgnet] == -0.5).all(), "pairs with CHGNet (not in the cache) keep their earlier rows"
    rescored = merged[~chgnet].merge(first, on=key, suffixes=("", "_first"))
    assert len(rescored) == (~chgnet).sum() and np.allclose(rescored.score, rescored.score_first, atol=1e-6)
    notes = [line for line in printed.splitlines() if "note: kept" in line]
    kept = merged[chgnet].assign(a=merged.model_a.str.split("@").str[0], b=merged.model_b.str.split("@").str[0])
    groups = kept.groupby(["metric", "a", "b"]).size()
    assert len(notes) == len(groups) > 0
    for (metric, a, b), n in groups.items():
        assert sum(f"kept {n} molecules {metric} rows per structure of {a} vs {b} " in line for line in notes) == 1


def _without_family(table: pd.DataFrame) -> pd.DataFrame:
    """A table as compare wrote it before it marked the hidden family: best over all layer pairs
    (the row-major argmax), no in_family, p_value_best or best_note."""
    out = table.drop(columns=["in_family", "p_value_best", "best_note"], errors="ignore")
    keys = [c for c in ("dataset", "granularity", "level", "seed", "metric", "model_a", "model_b", "n_samples") if c in out]
    first = out.groupby(keys, dropna=False, sort=False)["score"].idxmax()
    out["best"] = out.index.isin(first.to_numpy())
    return out


def test_a_run_keeping_rows_scored_before_the_family_re_derives_their_best(tmp_path):
    """Rows kept from an earlier table without the family get their best pair re-derived (what
    finish does), rows compare scored with the family keep compare's flags and p-values."""
    from analyses.families import rederived as rederive_rows

    table = pd.read_csv(ROOT / "analyses" / "results" / "molecules" / "scores.csv")
    table = table[(table.granularity == "structure") & (table.metric == "mutual_knn")]
    scored = table[table.level == "trained"]
    old = _without_family(table[table.level != "trained"])
    merged = rederive_rows(pd.concat([scored, old], ignore_index=True))
    kept = merged.iloc[: len(scored)]
    assert (kept.best.astype(str) == scored.best.astype(str).to_numpy()).all()
    np.testing.assert_array_equal(kept.p_value_best.to_numpy(float), scored.p_value_best.to_numpy(float))
    again = merged.iloc[len(scored):]
    assert again.in_family.notna().all()
    for _, group in again.groupby(["level", "seed", "model_a", "model_b"], dropna=False):
        hidden = group[group.in_family.astype(bool)]
        assert group[group.best.astype(bool)].score.tolist() == [hidden.score.max()]
        assert not ((group.layer_a == "embedding") | (group.layer_b == "embedding") | (group.layer_a == "aev"))[
            group.best.astype(bool)].any()


def test_rederive_on_a_copy_of_the_committed_molecule_table(tmp_path):
    """The committed molecules table (scored before compare's hidden family): re-derived best pairs
    are the maximum over the layer pairs without a network's first layer (a layer with itself left
    out), recomputed here from the rows; their p-values are the rows' own, marked as adjusted over
    all layer pairs; every output is written into --out, the committed files untouched."""
    source = ROOT / "analyses" / "results" / "molecules" / "scores.csv"
    copy = tmp_path / "scores.csv"
    _without_family(pd.read_csv(source)).to_csv(copy, index=False)  # as scored before compare marked the family
    before = source.read_bytes()
    out = tmp_path / "out"
    assert rederive_main(["molecules", "--scores", str(copy), "--out", str(out)]) == 0
    assert source.read_bytes() == before
    table = pd.read_csv(copy)
    rederived = pd.read_csv(out / "scores.csv")
    assert len(rederived) == len(table) and np.allclose(rederived.score, table.score)
    # independent reference: the first layer of a network in the table's order is its input layer; baselines have none
    baselines = set(table.model_b[table.level == "baseline"])
    first_layer = {}
    for model, layer in [*zip(table.model_a, table.layer_a), *zip(table.model_b, table.layer_b)]:
        first_layer.setdefault(model, layer)
    keys = ["dataset", "granularity", "level", "seed", "metric", "model_a", "model_b", "n_samples"]
    for _, group in rederived.groupby(keys, dropna=False):
        hidden = group[[la != first_layer[a] or a in baselines for a, la in zip(group.model_a, group.layer_a)]
                       & np.array([lb != first_layer[b] or b in baselines for b, lb in zip(group.model_b, group.layer_b)])]
        best = group[group.best]
        assert len(best) == 1 and best.score.iloc[0] == hidden.score.max()
        assert best.index[0] in hidden.index
    best = rederived[rederived.best]
    np.testing.assert_array_equal(best.p_value_best.to_numpy(), best.p_value_adjusted.to_numpy())
    assert (best.best_note[best.p_value_adjusted.notna()] == ALL_PAIRS_NOTE).all()
    assert rederived.p_value_best[~rederived.best].isna().all()
    assert {"best_pairs.csv", "control_contrasts.csv", "control_contrasts.md", "matrix_molecules_structure.png"} <= {
        p.name for p in out.iterdir()}
    contrasts = pd.read_csv(out / "control_contrasts.csv")
    assert contrasts.analysis.iloc[0] == "primary" and (contrasts[contrasts.analysis == "primary"].n_samples == 1000).all()


def test_rederive_refuses_a_missing_table_in_one_line(tmp_path, capsys):
    assert run_main(rederive_main, ["molecules", "--scores", str(tmp_path / "none.csv")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "none.csv" in err and len(err.splitlines()) == 1


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


def test_contrasts_keep_the_two_control_scopes_apart_and_only_the_default_answers_a_primary():
    """IgFold has two controls (NAME@random:S keeps its pretrained AntiBERTy, NAME@random-all:S
    re-initialises it too): each gets its own contrast row with its own seeds, and a primary
    analysis covers only the default scope."""
    from analyses.common import Primary, control_contrasts, label_best_pairs, label_contrasts

    rows = [("trained", "igfold", "antiberty", 0.40)]
    rows += [("random_init", f"igfold@random:{s}", f"antiberty@random:{s}", v) for s, v in enumerate([0.30, 0.35, 0.45])]
    rows += [("random_init", f"igfold@random-all:{s}", f"antiberty@random:{s}", v) for s, v in enumerate([0.10, 0.12, 0.08])]
    best = pd.DataFrame([{"dataset": "antibodies", "granularity": "structure", "metric": "mutual_knn", "level": level,
                          "model_a": a, "model_b": b, "layer_a": "structure_ipa.0", "layer_b": "layer.7", "score": v,
                          "n_samples": 200} for level, a, b, v in rows])
    contrasts = control_contrasts(best, layers="hidden").set_index("control_scope")
    assert sorted(contrasts.index) == ["all", "model"]
    assert contrasts.loc["model", "control_mean"] == pytest.approx(np.mean([0.30, 0.35, 0.45]))
    assert contrasts.loc["all", "control_mean"] == pytest.approx(np.mean([0.10, 0.12, 0.08]))
    # rank test: one of 3 default-scope controls is above the trained score, none of the other scope
    assert contrasts.loc["model", "p_value"] == pytest.approx(2 / 4) and contrasts.loc["all", "p_value"] == pytest.approx(1 / 4)
    primary = Primary("q", "antibodies", n_samples=200)
    labelled = label_contrasts(contrasts.reset_index(), [primary]).set_index("control_scope")
    assert labelled.loc["model", "analysis"] == "primary" and labelled.loc["all", "analysis"] == "secondary"
    # best pairs carry no scope column: their model names put a NAME@random-all:S row in the secondary analysis
    pairs = label_best_pairs(best.assign(layers="hidden"), [primary])
    all_scope = pairs.model_a.str.contains("@random-all:")
    assert (pairs.analysis[all_scope] == "secondary").all() and (pairs.analysis[~all_scope] == "primary").all()


def test_a_study_heatmap_title_states_its_pair_against_the_controls():
    """The committed molecules table: the ANI-1x - CHGNet heatmap's title carries the hidden-family
    contrast, its control mean equal to the mean of the control seeds' best pairs recomputed here
    from scores.csv."""
    from analyses.common import headline_contrast
    from repalign import plot

    results = ROOT / "analyses" / "results" / "molecules"
    scores = pd.read_csv(results / "scores.csv")
    scores = scores[(scores.granularity == "structure") & (scores.metric == "mutual_knn")]
    pair = scores[(scores.level == "trained") & (scores.model_a == "ani-1x") & (scores.model_b == "chgnet-0.3.0")]
    controls = scores[scores.model_a.str.startswith("ani-1x@random:") & scores.model_b.str.startswith("chgnet-0.3.0@random:")
                      & scores.best.astype(bool)]
    row = headline_contrast(pd.read_csv(results / "control_contrasts.csv"), pair)
    assert len(row) == 1 and controls.seed.nunique() == len(controls) == int(row.n_seeds.iloc[0])
    fig = plot.layer_heatmap(pd.concat([pair, row], ignore_index=True), "mutual_knn", "ani-1x", "chgnet-0.3.0")
    title = fig.get_suptitle().replace("\n", " ")
    assert f"control mean {controls.score.mean():.3f} ({len(controls)} seeds)" in title
