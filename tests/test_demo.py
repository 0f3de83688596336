"""The README's first command: `repalign demo` end to end with real pretrained models, offline; its
headlines are those of its table, and `repalign report` on its cache reproduces them."""

import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from embeddings_cache import Cache, align_ids
from repalign.compare import headlines
from repalign.demo import CONTROL_SEEDS, STUDIES, demo_outputs
from repalign.metrics import mutual_knn, prepare
from repalign.plot import FIGURES
from repalign.plot.layout import pdf_layout_problems
from repalign.report import build_report


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    run = subprocess.run([sys.executable, "-m", "repalign", "demo", "-o", str(out), "--quiet"],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr
    return out, run.stdout


@pytest.mark.slow
def test_demo_runs_offline_and_its_table_matches_the_cache(demo):
    out, _ = demo
    table = pd.read_csv(out / "scores.csv", float_precision="round_trip")
    trained = table[table["level"] == "trained"]
    assert set(zip(trained["model_a"], trained["model_b"])) == {("antiberty", "iglm"), ("chgnet-0.3.0", "sevennet-0")}
    assert set(table["metric"]) == {"mutual_knn", "unbiased_cka"}
    assert set(table["level"]) == {"trained", "random_init", "contrast"}
    assert set(table["control_seed"].dropna().astype(int)) == set(CONTROL_SEEDS)
    assert table["score"].between(-1, 1).all()
    # adjusted p-values on the hidden layer pairs (the family searched); none on pairs with an input layer
    adjusted = trained["p_value_adjusted"].dropna()
    assert len(adjusted) > len(trained) / 2 and adjusted.between(0, 1).all()
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert set(demo_outputs()) <= names
    assert all(n.startswith("demo-cache.h5.") for n in names - set(demo_outputs()))  # the cache's own lock and parts
    # every model spans its whole input set, and a score recomputed from the cache agrees with the table
    cache = Cache(out / "demo-cache.h5")
    assert cache.n_samples("antiberty") >= 40 and cache.n_samples("sevennet-0") >= 30
    row = trained[(trained.metric == "mutual_knn") & (trained.model_b == "iglm")].iloc[3]
    ids = align_ids(cache, "antiberty", cache, "iglm")
    assert row.params.startswith(f"k={max(1, min(10, len(ids) // 10))},")  # k chosen for N: N >= 10 k
    x = prepare(cache.read_layer("antiberty", row.layer_a, ids=ids), normalize="l2")
    y = prepare(cache.read_layer("iglm", row.layer_b, ids=ids), normalize="l2")
    assert row.score == pytest.approx(mutual_knn(x, y, k=int(row.params.split(",")[0][2:])), abs=1e-12)


@pytest.mark.slow
def test_the_best_pair_of_every_trained_pair_is_a_hidden_layer_pair(demo):
    out, _ = demo
    table = pd.read_csv(out / "scores.csv", float_precision="round_trip")
    trained = table[table["level"] == "trained"]
    with Cache(out / "demo-cache.h5") as cache:
        for (model_a, model_b, metric), rows in trained.groupby(["model_a", "model_b", "metric"]):
            best = rows[rows["best"]]
            assert len(best) == 1
            inputs_a, inputs_b = (cache.provenance(m).get("input_layers") or [] for m in (model_a, model_b))
            assert inputs_a and inputs_b  # every demo network declares its input layer
            assert best["layer_a"].iloc[0] not in inputs_a and best["layer_b"].iloc[0] not in inputs_b
            # the best of the hidden pairs: no hidden pair scores higher
            hidden = rows[~rows["layer_a"].isin(inputs_a) & ~rows["layer_b"].isin(inputs_b)]
            assert best["score"].iloc[0] == hidden["score"].max()


@pytest.mark.slow
def test_the_headlines_come_from_the_table_and_the_report_reproduces_them(demo, tmp_path):
    out, stdout = demo
    table = pd.read_csv(out / "scores.csv", float_precision="round_trip")
    found = headlines(table)
    printed = stdout.split("headline (")[1].split("score table")[0]
    for modality, _, (model_a, model_b) in STUDIES:
        lines = [x.strip() for x in printed.splitlines() if x.strip().startswith(f"{modality}:")]
        rows = found[(found["model_a"] == model_a) & (found["model_b"] == model_b)]
        assert len(lines) == len(rows) == 2
        for line, (_, row) in zip(lines, rows.iterrows()):
            assert f"{model_a} {row.layer_a} ~ {model_b} {row.layer_b}: {row.metric} {row.score:.3f}" in line
            assert f"random-init controls (best pair of each, {len(CONTROL_SEEDS)} seeds)" in line
            assert f"smallest attainable {1 / (len(CONTROL_SEEDS) + 1):.2f}" in line
            assert np.isfinite(row.control_mean) and row.n_seeds == len(CONTROL_SEEDS)
    # the report of the demo's cache compares it with the demo's settings: the same headline numbers
    index = build_report(out / "demo-cache.h5", tmp_path / "report")
    text = index.read_text()
    items = re.findall(r'<li class="headline" data-metric="([^"]*)" data-model-a="([^"]*)" data-model-b="([^"]*)" '
                       r'data-layer-a="([^"]*)" data-layer-b="([^"]*)" data-score="([^"]*)" data-control-mean="([^"]*)" '
                       r'data-difference="([^"]*)" data-p-value="([^"]*)"', text)
    assert len(items) == len(found) == 4
    assert text.index('class="headline"') < text.index("<img")
    for item, (_, row) in zip(items, found.iterrows()):
        assert item[:5] == (row.metric, row.model_a, row.model_b, row.layer_a, row.layer_b)
        # the same computation on the same cache: equal up to float summation order
        assert [float(v) for v in item[5:]] == pytest.approx([row.score, row.control_mean, row.difference, row.p_value],
                                                             rel=1e-9, abs=1e-12)


@pytest.mark.slow
def test_every_figure_of_the_demo_passes_the_layout_check(demo):
    out, _ = demo
    pdfs = sorted(out.glob("*.pdf"))
    kinds = 2 if "controls" in FIGURES else 1
    assert len(pdfs) == len(STUDIES) * 2 * kinds
    assert all(p.stat().st_size > 1000 for p in out.glob("*.png"))
    for pdf in pdfs:
        assert pdf_layout_problems(pdf) == [], pdf.name
