"""compare_controls / compare --controls: trained rows, each seed's rows and the contrast rows against
plain comparisons and an independent rank test; the missing-control errors; a real tiny network; the
control scopes (NAME@random keeps a declared pretrained input model, NAME@random-all does not) on a
small real torch adapter and on IgFold (trained AntiBERTy + random IgFold network)."""

import numpy as np
import pandas as pd
import pytest
import torch
from cli_helpers import run_main
from cluster_helpers import random_fasta
from controls_helpers import TwoStageAdapter, two_stage_factory, write_control_cache

from embeddings_cache import Cache
from repalign.compare import StatsOptions, compare_cache, compare_controls, compare_models
from repalign.compare.controls import parse_seeds
from repalign.datasets.antibodies import antibody_records
from repalign.errors import RepalignError
from repalign.extract import extract
from repalign.extract_options import name_key
from repalign.inputs import sequence_record
from repalign.models import get_adapter, get_adapter_class, randomized
from repalign.models.controls import base_model, control_name, is_control, model_seed, parse_control, reinitialize, torch_modules
from repalign.stats import seed_contrast
from repalign.table import read_table

SEEDS = (0, 1, 2, 3, 4)
METRICS = ["mknn", "unbiased_cka"]
STATS_KEYS = ["model_a", "layer_a", "model_b", "layer_b", "metric", "params"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_control_cache(tmp_path_factory.mktemp("controls") / "c.h5", seeds=SEEDS)


@pytest.fixture(scope="module")
def result(cache):
    return compare_controls(cache, "ta", "tb", METRICS, SEEDS, k=5, stats=StatsOptions(permutations=19, seed=3))


def _plain(table):
    """A compare table's own columns (those of a plain comparison), index reset."""
    return table.drop(columns=["level", "control_seed", "control_mean", "control_sd", "n_seeds", "difference",
                               "min_p_value"], errors="ignore").reset_index(drop=True)


def test_trained_rows_equal_a_plain_compare(cache, result):
    plain = compare_models(cache, "ta", "tb", METRICS, k=5, stats=StatsOptions(permutations=19, seed=3)).table
    trained = result.table[result.table.level == "trained"]
    assert trained.control_seed.isna().all()
    pd.testing.assert_frame_equal(_plain(trained)[plain.columns], plain, check_dtype=False)


def test_each_seed_rows_equal_a_plain_compare_of_its_controls(cache, result):
    for seed in SEEDS:
        plain = compare_models(cache, f"ta@random:{seed}", f"tb@random:{seed}", METRICS, k=5).table
        rows = result.table[(result.table.level == "random_init") & (result.table.control_seed == seed)]
        pd.testing.assert_frame_equal(_plain(rows)[plain.columns], plain, check_dtype=False)
        # permutations applied to the trained rows only
        assert rows.p_value.isna().all() and rows.p_value_best.isna().all()


def test_per_pair_contrast_rows_are_the_rank_test_on_those_rows(result):
    t = result.table
    contrast = t[(t.level == "contrast") & ~t.best.astype(bool)]
    assert len(contrast) == len(t[t.level == "trained"])  # one per layer pair and metric
    for _, row in contrast.iterrows():
        at = (t.metric == row.metric) & (t.layer_a == row.layer_a) & (t.layer_b == row.layer_b)
        x = t[at & (t.level == "trained")].score.iloc[0]
        c = t[at & (t.level == "random_init")].sort_values("control_seed").score.to_numpy()
        assert len(c) == len(SEEDS) and row.score == x
        expected = seed_contrast(x, c, ci=0.95)
        np.testing.assert_allclose([row.control_mean, row.control_sd, row.difference, row.ci_low, row.ci_high],
                                   [expected.control_mean, expected.control_sd, expected.difference, expected.ci_low,
                                    expected.ci_high], rtol=1e-12)
        # the rank test's p, written out here: (1 + #controls at or above the trained score) / (n + 1)
        assert row.p_value == pytest.approx((1 + np.sum(c >= x)) / (len(c) + 1))
        assert row.min_p_value == pytest.approx(1 / 6) and row.n_seeds == 5
        assert np.isnan(row.p_value_adjusted)  # descriptive rows: no family correction


def test_best_contrast_uses_each_seed_own_best_hidden_pair(result):
    t = result.table
    best = t[(t.level == "contrast") & t.best.astype(bool)]
    assert list(best.metric) == ["mutual_knn", "unbiased_cka"]
    moved = 0
    for _, row in best.iterrows():
        trained = t[(t.level == "trained") & (t.metric == row.metric)]
        hidden = trained[(trained.layer_a != "emb") & (trained.layer_b != "emb")]
        top = hidden.loc[hidden.score.idxmax()]
        assert (row.layer_a, row.layer_b, row.score) == (top.layer_a, top.layer_b, top.score)
        seed_best = []
        for seed in SEEDS:  # each seed's maximum over the hidden family, found here
            rows = t[(t.level == "random_init") & (t.control_seed == seed) & (t.metric == row.metric)]
            rows = rows[(rows.layer_a != "emb") & (rows.layer_b != "emb")]
            own = rows.loc[rows.score.idxmax()]
            seed_best.append(own.score)
            moved += (own.layer_a, own.layer_b) != (top.layer_a, top.layer_b)
        c = np.asarray(seed_best)
        np.testing.assert_allclose([row.control_mean, row.difference], [c.mean(), row.score - c.mean()], rtol=1e-12)
        assert row.p_value == pytest.approx((1 + np.sum(c >= row.score)) / 6)
    assert moved > 0  # the fixture's seeds have best pairs of their own, so the rule is exercised
    # Holm over the metrics, written out for two p-values
    p = best.p_value.to_numpy()
    order = np.argsort(p, kind="stable")
    first = min(1.0, 2 * p[order[0]])
    expected = np.empty(2)
    expected[order[0]], expected[order[1]] = first, max(first, min(1.0, p[order[1]]))
    np.testing.assert_allclose(best.p_value_adjusted.to_numpy(), expected)


def test_baseline_b_is_its_own_control(cache):
    table = compare_controls(cache, "ta", "fb", ["mknn"], [0, 1, 2], k=5).table
    controls = table[table.level == "random_init"]
    assert set(controls.model_a) == {"ta@random:0", "ta@random:1", "ta@random:2"} and set(controls.model_b) == {"fb"}
    with pytest.raises(RepalignError, match="both baselines"):
        compare_controls(cache, "fb", "fb", ["mknn"], [0, 1], k=5)
    with pytest.raises(RepalignError, match="itself a random-init control"):
        compare_controls(cache, "ta@random:0", "tb", ["mknn"], [0, 1], k=5)


def test_missing_seeds_name_the_models_and_the_extract_command(cache):
    with pytest.raises(RepalignError) as info:
        compare_controls(cache, "ta", "tb", ["mknn"], "3-6", k=5)
    text = str(info.value)
    assert "\n" not in text
    assert "not in the cache: ta@random:5, ta@random:6, tb@random:5, tb@random:6;" in text
    assert text.endswith(f"repalign extract INPUTS --model ta@random:5 --model ta@random:6 --model tb@random:5 "
                         f"--model tb@random:6 --pool mean -o {cache}")


def test_a_control_lacking_samples_is_refused(tmp_path):
    path = write_control_cache(tmp_path / "c.h5", seeds=(0, 1), skip={"tb@random:1": 4})
    with pytest.raises(RepalignError, match=r"tb@random:1 lacks 4 of the 80 samples compared for tb \(first: 's076'\)"):
        compare_controls(path, "ta", "tb", ["mknn"], [0, 1], k=5)


def test_seed_text():
    assert parse_seeds("0-4,9") == [0, 1, 2, 3, 4, 9]
    assert parse_seeds("0,3,5") == [0, 3, 5]
    assert parse_seeds("0-19") == list(range(20))
    assert parse_seeds(range(3)) == [0, 1, 2]
    for bad in ("3", "4-2", "a", "1,,2", "-1,2"):
        with pytest.raises(RepalignError, match="seeds="):
            parse_seeds(bad)


def test_cli_table_and_headline_first(cache, tmp_path):
    out = tmp_path / "t.csv"
    run = run_main("compare", cache, "--a", "ta", "--b", "tb", "--metric", "mknn", "--k", "5", "--controls", "0-4",
                   "-o", out)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[1].startswith("  headline mutual_knn: ")
    assert "p = 0.167 (smallest possible 1/6 = 0.167)" in run.stdout.splitlines()[1]
    table = read_table(out)
    library = compare_controls(cache, "ta", "tb", ["mknn"], "0-4", k=5).table
    assert list(table.level) == list(library.level)
    np.testing.assert_allclose(table.score, library.score, rtol=1e-12)
    np.testing.assert_allclose(table.p_value.fillna(-1), library.p_value.fillna(-1), rtol=1e-12)
    assert table.control_seed.dropna().astype(int).tolist() == library.control_seed.dropna().astype(int).tolist()


@pytest.mark.parametrize("flags, expected", [
    (["--controls", "0-2", "--tokens"], "--controls compares pooled layers on all shared samples at one k; drop --tokens"),
    (["--controls", "0-2", "--n-samples", "20,40"], "drop --n-samples and the extra --k values"),
    (["--controls", "0-9"], "repalign extract INPUTS --model ta@random:5"),
    (["--controls", "2"], "--controls 2 gives 1 control seed(s)"),
])
def test_cli_refusals_are_one_line(cache, flags, expected):
    run = run_main("compare", cache, "--a", "ta", "--b", "tb", "--k", "5", *flags)
    assert run.returncode != 0
    assert expected in run.stderr and len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr


def test_real_network_and_its_controls_through_extract(tiny_esm2, tmp_path):
    """A tiny ESM-2 and two controls extracted by `repalign extract`, against a sequence baseline."""
    fasta = random_fasta(tmp_path / "in.fasta", 40, seed=2)
    cache = tmp_path / "c.h5"
    name = f"hf:{tiny_esm2}"
    for model in (name, f"{name}@random:0", f"{name}@random:1", "aa-composition"):
        run = run_main("extract", fasta, "--model", model, "-o", cache, "-q")
        assert run.returncode == 0, run.stderr
    c = Cache(cache)
    name = "hf:tiny"  # a local checkpoint is stored under its folder's name, and its controls beside it
    assert c.models == ["aa-composition", name, f"{name}@random:0", f"{name}@random:1"]
    assert c.provenance(f"{name}@random:1")["level"] == "random_init"
    declared = set(c.provenance(name)["input_layers"])
    assert declared and declared == set(c.provenance(f"{name}@random:0")["input_layers"])
    table = compare_controls(cache, name, "aa-composition", ["mknn"], [0, 1], k=5).table
    best = table[table.best.astype(bool)]
    assert not set(best.layer_a) & declared  # every best pair, trained and controls, is a hidden layer
    plain = compare_models(cache, f"{name}@random:1", "aa-composition", ["mknn"], k=5).table
    rows = table[(table.level == "random_init") & (table.control_seed == 1)]
    np.testing.assert_allclose(rows.score.to_numpy(), plain.score.to_numpy(), rtol=1e-12)
    contrast = best[best.level == "contrast"].iloc[0]
    seeds = best[best.level == "random_init"].score.to_numpy()
    assert contrast.p_value == pytest.approx((1 + np.sum(seeds >= contrast.score)) / 3)


# ---- control scopes -------------------------------------------------------------------------------

def _state(module):
    """A module's parameters and buffers, copied."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _differing(a, b):
    return {k for k in a if not torch.equal(a[k], b[k])}


def test_control_specs_of_both_scopes(tiny_esm2):
    for name, spec in (("igfold@random:3", ("igfold", 3, "model")), ("igfold@random-all:3", ("igfold", 3, "all")),
                       ("hf:tiny@random-all:0", ("hf:tiny", 0, "all"))):
        parsed = parse_control(name)
        assert parsed == spec and control_name(*parsed) == name
        assert base_model(name) == spec[0] and is_control(name)
    assert control_name("igfold", 2) == "igfold@random:2" and not is_control("igfold") and base_model("igfold") == "igfold"
    # a local checkpoint's control keeps its scope in its cache name
    assert name_key(f"hf:{tiny_esm2}@random-all:1") == "hf:tiny@random-all:1"
    assert name_key(f"hf:{tiny_esm2}@random:1") == "hf:tiny@random:1"
    for bad in ("igfold@random-some:1", "igfold@random-all", "igfold@random-all:x"):
        with pytest.raises(RepalignError, match=r"NAME@random:SEED \(or NAME@random-all:SEED"):
            parse_control(bad)
    with pytest.raises(RepalignError, match="control scope 'most' is not one of model, all"):
        control_name("igfold", 0, "most")
    with pytest.raises(RepalignError, match="control scope 'most' is not one of model, all"):
        randomized(TwoStageAdapter(), 0, scope="most")


@pytest.mark.parametrize("nested", [False, True], ids=["beside", "inside"])
def test_default_control_keeps_the_declared_pretrained_input(nested):
    """twostage@random:0 keeps the encoder (weights and batch-norm statistics), twostage@random-all:0
    re-initialises it too, and both draw the same head; with the encoder beside the head or inside it."""
    adapter_class = type("Nested" if nested else "Beside", (TwoStageAdapter,), {"nested": nested})
    factory = two_stage_factory(adapter_class)
    trained, control, everything = (factory(n) for n in ("twostage", "twostage@random:0", "twostage@random-all:0"))
    for adapter in (trained, control, everything):
        adapter.ensure_loaded()
    inner = {a: a.inner if a is not trained else a for a in (trained, control, everything)}
    encoder = {a: _state(inner[a]._encoder.model) for a in inner}
    head = {a: {k: v for k, v in _state(inner[a]._head).items() if not k.startswith("encoder.")} for a in inner}

    assert _same(encoder[control], encoder[trained])
    assert _differing(head[control], head[trained]) == {"linear.weight", "linear.bias", "custom"}
    # every encoder weight re-initialised (batch norm to its reset: weight 1, bias 0, statistics 0/1)
    assert _differing(encoder[everything], encoder[trained]) == set(encoder[trained]) - {"net.2.num_batches_tracked"}
    assert _same(head[everything], head[control])  # the same draws for what both re-initialise
    encoder_params = sum(1 for _ in inner[trained]._encoder.model.parameters())
    assert control.init_counts["pretrained"] == encoder_params and "pretrained" not in everything.init_counts

    assert control.provenance()["random_init"]["scope"] == "model"
    assert control.provenance()["random_init"]["kept_pretrained"] == ["encoder"]
    assert everything.provenance()["random_init"]["kept_pretrained"] == []
    assert control.options["random_init_kept"] == ["encoder"] and "random_init_kept" not in everything.options
    assert control.stream == everything.stream == model_seed(0, "twostage")

    records = [sequence_record("s0", "MKTAYIAKQR")]
    feats = {a: a.forward(records, ["encoder", "head"])[0].tokens for a in (trained, control, everything)}
    np.testing.assert_array_equal(feats[control]["encoder"], feats[trained]["encoder"])
    assert not np.allclose(feats[control]["head"], feats[trained]["head"])
    assert not np.allclose(feats[everything]["encoder"], feats[trained]["encoder"])


def test_a_model_without_pretrained_inputs_keeps_its_control(tiny_esm2):
    """Declaring no pretrained input (every model but IgFold), both scopes are the control as it was
    before scopes: the adapter's every torch module re-initialised from the model's stream, and the
    same options, so caches written before resume."""
    name = f"hf:{tiny_esm2}"
    reference = get_adapter(name)
    reference.ensure_loaded()
    assert reference.pretrained_inputs() == {}
    reinitialize(torch_modules(reference), model_seed(0, reference.name))
    expected = {k: v for m in torch_modules(reference) for k, v in _state(m).items()}
    for spec in (f"{name}@random:0", f"{name}@random-all:0"):
        control = get_adapter(spec)
        control.ensure_loaded()
        got = {k: v for m in torch_modules(control.inner) for k, v in _state(m).items()}
        assert _same(got, expected), spec
        assert control.options == {"random_init_seed": 0, "random_init_stream": model_seed(0, reference.name)}
        assert "pretrained" not in control.init_counts


def test_the_kept_inputs_are_an_option_so_a_resume_detects_the_other_scope(tmp_path):
    """A control stored before its model declared a pretrained input (every weight re-initialised) is
    not resumed as the new twostage@random:0; stored as twostage@random-all:0 it is."""
    records = [sequence_record(f"s{i}", seq) for i, seq in enumerate(["MKTAYIAK", "GSHMLEWW"])]
    cache = tmp_path / "c.h5"
    before = type("Undeclared", (TwoStageAdapter,), {"declares": False})
    extract(records, ["twostage@random:0", "twostage@random-all:0"], cache, layers=["all"],
            adapter_factory=two_stage_factory(before), quiet=True)
    with pytest.raises(RepalignError, match="random_init_kept"):
        extract(records, ["twostage@random:0"], cache, layers=["all"], adapter_factory=two_stage_factory(), quiet=True)
    runs = extract(records, ["twostage@random-all:0"], cache, layers=["all"], adapter_factory=two_stage_factory(), quiet=True)
    assert (runs[0].stored, runs[0].skipped_existing) == (0, 2)


def test_a_declared_input_holding_no_module_is_refused():
    broken = type("Broken", (TwoStageAdapter,), {"pretrained_inputs": lambda self: {"encoder": "_missing"}})
    with pytest.raises(RepalignError, match=r"twostage@random:0: the pretrained input encoder \(attribute '_missing'\) "
                                            "holds no torch module once loaded; fix Broken.pretrained_inputs"):
        randomized(broken(), 0).ensure_loaded()
    randomized(broken(), 0, scope="all").ensure_loaded()  # nothing kept, nothing to find


def test_every_pair_pairs_a_model_with_its_random_controls_only(tmp_path):
    """compare_cache pairs ta and tb with their one @random control seed; the @random-all controls in
    the same cache are neither trained models nor more seeds (counted as such, seed 0 would be two
    seeds, enough for a contrast against the baseline fb that then fails)."""
    path = write_control_cache(tmp_path / "c.h5", seeds=(0,), all_seeds=(0, 1))
    table = compare_cache(path, ["mknn"], k=5, stats=StatsOptions(permutations=0)).table
    controls = table[table.level == "random_init"]
    assert sorted(set(zip(controls.model_a, controls.model_b, controls.control_seed))) == [("ta@random:0", "tb@random:0", 0)]
    assert set(table.model_a) | set(table.model_b) == {"ta", "tb", "fb", "ta@random:0", "tb@random:0"}
    assert "contrast" not in set(table.level)


# ---- IgFold: trained AntiBERTy + random IgFold network ----------------------------------------------



@pytest.fixture(scope="module")
def igfolds():
    reason = get_adapter_class("igfold").unavailable_reason()
    if reason:
        pytest.skip(f"igfold unavailable: {reason}")
    adapters = {name: get_adapter(name) for name in ("igfold", "igfold@random:0", "igfold@random-all:0")}
    for adapter in adapters.values():
        adapter.ensure_loaded()
    return adapters


def _igfold_parts(adapter):
    inner = getattr(adapter, "inner", adapter)
    return _state(inner._antiberty.model), _state(inner._model)


def test_igfold_control_is_trained_antiberty_and_a_random_igfold_network(igfolds):
    antiberty, network = {}, {}
    for name, adapter in igfolds.items():
        antiberty[name], network[name] = _igfold_parts(adapter)
    assert _same(antiberty["igfold@random:0"], antiberty["igfold"])
    structure = {k for k in network["igfold"] if k.startswith("structure_ipa.") and network["igfold"][k].is_floating_point()}
    assert structure and structure <= _differing(network["igfold@random:0"], network["igfold"])
    assert _same(network["igfold@random-all:0"], network["igfold@random:0"])  # the same random IgFold network
    assert len(_differing(antiberty["igfold@random-all:0"], antiberty["igfold"])) > len(antiberty["igfold"]) // 2
    prov = igfolds["igfold@random:0"].provenance()["random_init"]
    assert (prov["scope"], prov["kept_pretrained"]) == ("model", ["antiberty"])
    assert igfolds["igfold@random:0"].options["random_init_kept"] == ["antiberty"]


def test_igfold_random_all_is_the_full_reinitialisation(igfolds):
    """igfold@random-all:s is every torch module of IgFold re-initialised from its stream: the control
    that igfold@random:s was before AntiBERTy was declared a pretrained input."""
    reference = get_adapter("igfold")
    reference.ensure_loaded()
    reinitialize(torch_modules(reference), model_seed(0, "igfold"))
    got = _igfold_parts(igfolds["igfold@random-all:0"])
    for expected, part in zip(_igfold_parts(reference), got):
        assert _same(part, expected)
    assert "random_init_kept" not in igfolds["igfold@random-all:0"].options


def test_igfold_control_features_start_from_trained_antiberty(igfolds):
    record = {r.id: r for r in antibody_records(5)}["igfold_nanobody"]  # IgFold's own example nanobody
    layers = igfolds["igfold"].layer_names()
    trained = igfolds["igfold"].forward([record], layers)[0].tokens
    control = igfolds["igfold@random:0"].forward([record], layers)[0].tokens
    np.testing.assert_array_equal(control["antiberty"], trained["antiberty"])
    for layer in layers[1:]:
        assert not np.allclose(control[layer], trained[layer], atol=1e-4), layer
