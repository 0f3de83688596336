"""Relative representations (anchors, Moschella et al. 2023): the transform, its invariances, and
``compare_models(anchors=...)`` / ``repalign compare --anchors`` on a real cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import run_main
from scipy.stats import ortho_group
from sklearn.metrics.pairwise import cosine_similarity

from embeddings_cache import CacheWriter
from repalign.compare import compare_models
from repalign.errors import RepalignError
from repalign.metrics import draw_anchors, mutual_knn, prepare, relative_representation, unbiased_cka

ROOT = Path(__file__).resolve().parents[1]


def test_relative_representation_is_cosine_similarity_to_the_anchors():
    rng = np.random.default_rng(0)
    X, A = rng.standard_normal((50, 7)), rng.standard_normal((6, 7))
    np.testing.assert_allclose(relative_representation(X, A), cosine_similarity(X, A), rtol=0, atol=1e-12)
    R32 = relative_representation(X.astype(np.float32), A.astype(np.float32))
    assert R32.dtype == np.float32 and np.abs(R32).max() <= 1
    np.testing.assert_allclose(R32, cosine_similarity(X, A), atol=1e-6)


def test_relative_representation_ignores_rotation_and_scale_of_the_space():
    """The point of the method: two spaces that differ by an orthogonal map and a global scale give
    the same relative representation, so even metrics that are not rotation-invariant agree."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 12))
    Q = ortho_group.rvs(12, random_state=2)
    Y = 3.5 * X @ Q
    idx = draw_anchors(300, 20, seed=4)
    rest = np.setdiff1d(np.arange(300), idx)
    RX = relative_representation(X[rest], X[idx])
    RY = relative_representation(Y[rest], Y[idx])
    np.testing.assert_allclose(RX, RY, atol=1e-10)
    assert mutual_knn(RX, RY, k=10) == pytest.approx(1.0)
    # an unrelated space shares little with it, after the transform as before
    Z = rng.standard_normal((300, 12))
    assert unbiased_cka(RX, relative_representation(Z[rest], Z[idx])) < 0.2


def test_anchor_draws_are_distinct_sorted_and_seeded():
    a = draw_anchors(1000, 50, seed=7)
    assert len(set(a)) == 50 and (np.diff(a) > 0).all() and a.min() >= 0 and a.max() < 1000
    np.testing.assert_array_equal(a, draw_anchors(1000, 50, seed=7))
    assert not np.array_equal(a, draw_anchors(1000, 50, seed=8))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(RepalignError, match="positive number"):
            draw_anchors(100, bad)
    with pytest.raises(RepalignError, match="leave no sample"):
        draw_anchors(10, 10)


def test_zero_rows_and_mismatched_widths_are_one_line_errors():
    X = np.ones((4, 3))
    with pytest.raises(RepalignError, match="an anchor has an all-zero"):
        relative_representation(X, np.zeros((2, 3)))
    with pytest.raises(RepalignError, match="a sample has an all-zero"):
        relative_representation(np.vstack([X, np.zeros((1, 3))]), X[:2])
    with pytest.raises(RepalignError, match="anchors have 2 features and X has 3"):
        relative_representation(X, np.ones((2, 2)))


@pytest.fixture(scope="module")
def rotated_cache(tmp_path_factory):
    """Model A (2 layers) and model B: A's last layer rotated, scaled and slightly noisy, plus a layer
    of noise; 400 samples."""
    rng = np.random.default_rng(5)
    n = 400
    base = rng.standard_normal((n, 16)).astype(np.float32)
    a = {"l0": rng.standard_normal((n, 16)).astype(np.float32), "l1": base}
    q = ortho_group.rvs(16, random_state=6).astype(np.float32)
    b = {"m0": (2.0 * base @ q + 0.05 * rng.standard_normal((n, 16))).astype(np.float32),
         "m1": rng.standard_normal((n, 24)).astype(np.float32)}
    path = tmp_path_factory.mktemp("anchors") / "c.h5"
    ids = [f"s{i}" for i in range(n)]
    for model, layers in (("A", a), ("B", b)):
        with CacheWriter(path, model, provenance={"options": {}}, layers=list(layers)) as w:
            w.append(ids, [f"{i + 1:064x}" for i in range(n)], layers)  # all-zero: "no hash"
    return path, a, b, ids


def test_compare_models_with_anchors_scores_the_relative_representations(rotated_cache):
    path, a, b, ids = rotated_cache
    res = compare_models(path, "A", "B", ["mknn", "unbiased_cka"], k=10, anchors=40, seed=3)
    table = res.table
    assert (table.n_samples == 360).all() and table.params.str.contains("anchors=40").all()
    # the same numbers computed here from the arrays, with the anchors drawn the same way
    idx = draw_anchors(400, 40, seed=3)
    rest = np.setdiff1d(np.arange(400), idx)
    expected = mutual_knn(prepare(relative_representation(a["l1"][rest], a["l1"][idx])),  # compare's default l2 rows
                          prepare(relative_representation(b["m0"][rest], b["m0"][idx])), k=10)
    row = table[(table.metric == "mutual_knn") & (table.layer_a == "l1") & (table.layer_b == "m0")]
    assert row.score.item() == pytest.approx(expected, abs=1e-6) and expected > 0.8
    noise = table[(table.metric == "mutual_knn") & (table.layer_a == "l0") & (table.layer_b == "m1")].score.item()
    assert noise < 0.1
    # anchors given as ids: the same anchors give the same scores
    by_ids = compare_models(path, "A", "B", ["mknn"], k=10, anchors=[ids[i] for i in idx])
    np.testing.assert_allclose(by_ids.table.score, table[table.metric == "mutual_knn"].score, atol=1e-9)


def test_compare_models_refuses_bad_anchors(rotated_cache):
    path, _, _, ids = rotated_cache
    with pytest.raises(RepalignError, match="1 anchor id.*not samples of both models.*'nope'"):
        compare_models(path, "A", "B", anchors=[ids[0], "nope"])
    with pytest.raises(RepalignError, match="leave no sample"):
        compare_models(path, "A", "B", anchors=400)
    with pytest.raises(RepalignError, match="in memory"):
        compare_models(path, "A", "B", anchors=10, block_rows=100)
    with pytest.raises(RepalignError, match="positive number"):
        compare_models(path, "A", "B", anchors=2.5)
    # ids in any iterable (a numpy array of ids, duplicates dropped)
    same = compare_models(path, "A", "B", anchors=np.array(ids[:5] + ids[:2]))
    assert (same.table.n_samples == 395).all()


def test_cli_compare_with_anchors(rotated_cache, tmp_path):
    path, _, _, ids = rotated_cache

    def run(*args):
        return run_main("compare", path, "--a", "A", "--b", "B", *args, cwd=tmp_path)

    (tmp_path / "anchors.txt").write_text("\n".join(ids[:30]) + "\n")
    out = tmp_path / "t.csv"
    proc = run("--anchors", "anchors.txt", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out)
    assert (table.n_samples == 370).all() and table.params.str.contains("anchors=30").all()
    (tmp_path / "bad.txt").write_text("s1\nmissing-id\n")
    for args, message in ((("--anchors", "bad.txt"), "not samples of both models"),
                          (("--anchors", "0"), "positive number"),
                          (("--anchors", "10", "--tokens"), "drop --tokens")):
        proc = run(*args)
        assert proc.returncode != 0 and message in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
