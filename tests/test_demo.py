"""The README's first command: `repalign demo` end to end with real pretrained models, offline."""

import subprocess
import sys

import pandas as pd
import pytest

from embeddings_cache import Cache, align_ids
from repalign.metrics import mutual_knn, prepare


@pytest.mark.slow
def test_demo_runs_offline_and_its_table_matches_the_cache(tmp_path):
    out = tmp_path / "demo"
    env_run = subprocess.run([sys.executable, "-m", "repalign", "demo", "-o", str(out), "--quiet"],
                             capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert env_run.returncode == 0, env_run.stderr
    table = pd.read_csv(out / "scores.csv")
    assert set(table["model_a"]) == {"antiberty", "chgnet-0.3.0", "antiberty@random:0", "chgnet-0.3.0@random:0"}
    assert set(table["metric"]) == {"mutual_knn", "unbiased_cka"}
    assert set(table["level"]) == {"trained", "random_init"}
    assert table["score"].between(-1, 1).all() and table["p_value_adjusted"].between(0, 1).all()
    figures = sorted(p.name for p in out.iterdir() if p.suffix in (".png", ".pdf"))
    assert len(figures) == 8 and all((out / f).stat().st_size > 1000 for f in figures)
    # the headline is a hidden-layer pair, read against the random-init controls at the same layers
    headline = env_run.stdout.split("headline (hidden layers, beyond random-init controls):")[1].split("score table")[0]
    for modality, model in (("antibody", "antiberty"), ("crystal", "chgnet-0.3.0")):
        line = next(x for x in headline.splitlines() if x.strip().startswith(modality))
        first = Cache(out / "demo-cache.h5").layers(model)[0]
        assert f"{model} {first} ~" not in line
        assert "random-init controls" in line or "aligns significantly" in line
    assert any(f.startswith("crystal-chgnet-0.3.0-vs-sevennet-0") for f in figures)
    # every model spans its whole input set, and a score recomputed from the cache agrees with the table
    cache = Cache(out / "demo-cache.h5")
    assert cache.n_samples("antiberty") >= 40 and cache.n_samples("sevennet-0") >= 30
    row = table[(table.metric == "mutual_knn") & (table.model_b == "iglm")].iloc[3]
    assert row.level == "trained"
    ids = align_ids(cache, "antiberty", cache, "iglm")
    x = prepare(cache.read_layer("antiberty", row.layer_a, ids=ids), normalize="l2")
    y = prepare(cache.read_layer("iglm", row.layer_b, ids=ids), normalize="l2")
    assert row.score == pytest.approx(mutual_knn(x, y, k=4), abs=1e-12)
