"""Reliability warnings reach notebooks through warnings.warn (RepalignWarning) and the command line
as one line each on standard error; Comparison.warnings keeps them."""

import hashlib
import warnings

import numpy as np
import pytest
from cli_helpers import run_main

from embeddings_cache import CacheWriter
from repalign.compare import compare_models
from repalign.errors import RepalignWarning

N = 40


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Models A (a healthy layer and a rank-one layer) and B (one layer) over N samples."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("warnings") / "cache.h5"
    ids = [f"s{i}" for i in range(N)]
    hashes = [hashlib.sha256(i.encode()).hexdigest() for i in ids]
    base = rng.standard_normal((N, 6))
    spike = np.outer(rng.standard_normal(N), rng.standard_normal(16)) + 1e-4 * rng.standard_normal((N, 16))
    layers = {"A": {"healthy": base @ rng.standard_normal((6, 12)), "spike": spike},
              "B": {"b": base @ rng.standard_normal((6, 9)) + 0.3 * rng.standard_normal((N, 9))}}
    for model, arrays in layers.items():
        with CacheWriter(path, model, provenance={"options": {}}, layers=list(arrays)) as writer:
            writer.append(ids, hashes, {name: x.astype(np.float32) for name, x in arrays.items()})
    return path


def test_compare_models_warns_and_keeps_the_warnings(cache):
    with pytest.warns(RepalignWarning) as caught:
        result = compare_models(cache, "A", "B", ["mknn"], k=10)
    texts = [str(w.message) for w in caught if w.category is RepalignWarning]
    assert texts == result.warnings and len(texts) == 1
    chance = 10 / (N - 1)  # mutual kNN's chance level k/(N - 1)
    assert f"N={N} is small for k=10" in texts[0] and f"chance level {chance:.3f}" in texts[0]
    assert "warning:" in result.summary() and "warning:" not in result.summary(with_warnings=False)


def test_a_degenerate_layer_warns_for_linear_cka(cache):
    with pytest.warns(RepalignWarning, match=r"layer 'A:spike': participation ratio 1\.\d+ .* meaningless"):
        result = compare_models(cache, "A", "B", ["cka"])
    assert not any("healthy" in w for w in result.warnings)


def test_warnings_can_be_silenced_like_any_python_warning(cache):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=RepalignWarning)
        result = compare_models(cache, "A", "B", ["mknn"], k=10)
    assert not [w for w in caught if issubclass(w.category, RepalignWarning)]
    assert len(result.warnings) == 1


def test_the_cli_shows_each_warning_once_in_flag_words(cache):
    res = run_main("compare", cache, "--a", "A", "--b", "B", "--metric", "mknn", "cka", "--k", "10", "--permutations", "9")
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if "warning" in line.lower()]
    assert all(line.startswith("repalign: warning: ") for line in lines), lines
    assert len(lines) == len(set(lines)) == 3, lines  # N small for k, the rank-one layer, too few permutations
    assert any("--permutations 9: the smallest possible p-value is 0.1 > alpha=0.05" in line for line in lines), lines
    assert "RepalignWarning" not in res.stderr and ".py:" not in res.stderr
    assert "warning" not in res.stdout  # not a second time in the summary


def test_report_shows_a_warning_repeated_over_pairs_once(cache, tmp_path):
    res = run_main("report", cache, "-o", tmp_path / "report", "--metric", "mknn", "--k", "10", "--permutations", "19")
    assert res.returncode == 0, res.stderr
    small = [line for line in res.stderr.splitlines() if "is small for k=10" in line]
    assert len(small) == 1 and small[0].startswith("repalign: warning: "), res.stderr
