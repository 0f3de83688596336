"""compare_controls / compare --controls: trained rows, each seed's rows and the contrast rows against
plain comparisons and an independent rank test; the missing-control errors; a real tiny network."""

import numpy as np
import pandas as pd
import pytest
from cli_helpers import run_main
from cluster_helpers import random_fasta
from controls_helpers import write_control_cache

from embeddings_cache import Cache
from repalign.compare import StatsOptions, compare_controls, compare_models
from repalign.compare.controls import parse_seeds
from repalign.errors import RepalignError
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
