"""Per-layer profiles: profile_layers on a real cache, `repalign profile` and `repalign plot --kind profile`."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from cli_helpers import run_main

from embeddings_cache import CacheWriter
from repalign.errors import RepalignError
from repalign.metrics.intrinsic import intrinsic_dimension
from repalign.plot import FIGURES, draw
from repalign.profile import PROFILE_COLUMNS, profile_layers

N = 400


@pytest.fixture(scope="module")
def plane_cache(tmp_path_factory):
    """Model 'planes' whose layer l holds points on a (l + 2)-dimensional plane in 30-D."""
    rng = np.random.default_rng(0)
    arrays = {f"layer.{i}": (rng.uniform(size=(N, d)) @ rng.standard_normal((d, 30))).astype(np.float32)
              for i, d in enumerate((2, 3, 4))}
    ids = [f"s{i}" for i in range(N)]
    path = tmp_path_factory.mktemp("profile") / "c.h5"
    with CacheWriter(path, "planes", provenance={"model": "planes", "options": {}}, layers=list(arrays)) as w:
        w.append(ids, [hashlib.sha256(i.encode()).hexdigest() for i in ids], arrays)
    return path, arrays


def test_profile_layers_is_the_measure_of_each_stored_layer(plane_cache):
    path, arrays = plane_cache
    table = profile_layers(path, "planes", "intrinsic_dimension")
    assert tuple(table.columns) == PROFILE_COLUMNS
    assert table["layer"].tolist() == list(arrays) and table["position"].tolist() == [0, 1, 2]
    assert (table["params"] == "fraction=0.9,method=twonn").all() and (table["n_samples"] == N).all()
    for row, X in zip(table.itertuples(), arrays.values()):
        assert row.value == pytest.approx(intrinsic_dimension(X), abs=1e-12)
    np.testing.assert_allclose(table["value"], [2, 3, 4], rtol=0.15)  # each plane's dimension
    mle = profile_layers(path, "planes", "intrinsic_dimension", layers=["layer.2", "layer.0"], method="mle", k=10)
    assert mle["layer"].tolist() == ["layer.0", "layer.2"] and (mle["params"] == "k=10,method=mle").all()
    assert mle["value"].iloc[1] == pytest.approx(intrinsic_dimension(arrays["layer.2"], method="mle", k=10), abs=1e-12)


def test_profile_errors_are_one_line(plane_cache):
    path, _ = plane_cache
    with pytest.raises(RepalignError, match="model 'nope' is not in"):
        profile_layers(path, "nope")
    with pytest.raises(RepalignError, match="layer\\(s\\) layer.9 not in model"):
        profile_layers(path, "planes", layers=["layer.9"])
    with pytest.raises(RepalignError, match="k do\\(es\\) not apply to method='twonn'"):
        profile_layers(path, "planes", k=5)
    with pytest.raises(RepalignError, match="unknown measure 'volume'"):
        profile_layers(path, "planes", "volume")


def test_profile_cli_writes_the_table_and_plot_draws_it(plane_cache, tmp_path):
    path, _ = plane_cache
    out = tmp_path / "id.csv"
    res = run_main("profile", path, "--model", "planes", "--measure", "intrinsic_dimension", "--method", "twonn", "-o", out)
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(out)
    assert table["value"].tolist() == pytest.approx(profile_layers(path, "planes")["value"].tolist(), abs=1e-12)
    assert "planes layer.0: intrinsic_dimension" in res.stdout
    res = run_main("plot", out, "--kind", "profile", "-o", tmp_path / "id", "--format", "png")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "id.png").stat().st_size > 0
    assert "profile" in FIGURES
    fig = draw(table, "profile")
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_gid() == "profile-planes"]
    np.testing.assert_allclose(line.get_xdata(), [0, 0.5, 1])
    np.testing.assert_allclose(line.get_ydata(), table["value"])
    res = run_main("plot", out, "--kind", "profile", "--metric", "intrinsic_dimension", "--a", "planes", "-o", tmp_path / "id2",
                   "--format", "png")
    assert res.returncode == 0, res.stderr
    wrong_model = run_main("plot", out, "--kind", "profile", "--a", "other", "-o", tmp_path / "id3")
    assert wrong_model.returncode == 1 and "model(s) other not in the table" in wrong_model.stderr
    bad = run_main("profile", path, "--model", "planes", "--method", "mle", "--fraction", 0.5, "-o", out)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "fraction" in bad.stderr
    wrong = run_main("plot", out, "--kind", "profile", "--b", "x", "-o", tmp_path / "x")
    assert wrong.returncode == 1 and "--b does not apply to --kind profile" in wrong.stderr
