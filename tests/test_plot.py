"""Figures from tidy tables: values drawn, stage groups, markers, hatching, ordering, files and the CLI."""

import hashlib
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from cli_helpers import run_main

from embeddings_cache import CacheWriter
from repalign import plot
from repalign.cli import main
from repalign.compare import compare_models
from repalign.errors import RepalignError

N = 40
FOLD_LAYERS = ["esmc.0", "esmc.1", "language_model", "lm_encoder.0", "folding_trunk.0", "folding_trunk.1",
               "confidence.single"]
LM_LAYERS = ["layer.0", "layer.1", "layer.2"]


def sha(sample_id):
    return hashlib.sha256(sample_id.encode()).hexdigest()


def _write(path, model, layers, seed):
    ids = [f"s{i:02d}" for i in range(N)]
    shared = np.random.default_rng(0).standard_normal((N, 6))
    rng = np.random.default_rng(seed)
    feats = {name: (shared @ rng.standard_normal((6, 5)) + (1 + i) * rng.standard_normal((N, 5))).astype(np.float32)
             for i, name in enumerate(layers)}
    with CacheWriter(path, model, provenance={"model": model, "options": {}}, layers=layers) as w:
        w.append(ids, [sha(i) for i in ids], feats)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "c.h5"
    _write(path, "fold", FOLD_LAYERS, seed=1)
    _write(path, "lm", LM_LAYERS, seed=2)
    return compare_models(path, "fold", "lm", ["mknn", "cka"], k=5).table


def reference_matrix(table, metric, column="score"):
    """Independent pivot: plain loops over the rows of one metric."""
    rows = table[table["metric"] == metric]
    la, lb = [], []
    for a, b in zip(rows["layer_a"], rows["layer_b"]):
        la += [a] if a not in la else []
        lb += [b] if b not in lb else []
    out = np.full((len(la), len(lb)), np.nan)
    for a, b, v in zip(rows["layer_a"], rows["layer_b"], rows[column]):
        out[la.index(a), lb.index(b)] = v
    return out, la, lb


def gids(ax, prefix):
    return sorted(a.get_gid() for a in ax.get_children() if (a.get_gid() or "").startswith(prefix))


def test_heatmap_draws_the_table_and_marks_the_best_pair(table):
    fig = plot.layer_heatmap(table, "cka", "fold", "lm")
    ax = fig.axes[0]
    expected, la, lb = reference_matrix(table, "cka")
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), expected)
    # several stages on A's axis: the bracket names the stage, the tick the rest of the layer name
    assert la == FOLD_LAYERS
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "", "0", "0", "1", "single"]
    assert [t.get_text() for t in ax.get_xticklabels()] == lb  # one stage: full names
    (best,) = [p for p in ax.patches if p.get_gid() == "best-pair"]
    i, j = np.unravel_index(np.argmax(expected), expected.shape)
    assert best.get_xy() == (j - 0.5, i - 0.5)
    # the colour bar names the metric (and k); the other settings are in the caption and the files' metadata
    assert fig.axes[1].get_ylabel() == "cka"
    assert "cka: kernel=linear" in plot.caption(fig)
    assert plot.hatched_cells(fig) == []  # no p_value column: nothing hatched


def test_heatmap_of_a_model_with_itself_marks_the_best_off_diagonal_pair():
    from repalign.metrics import align_layers

    rng = np.random.default_rng(3)
    base = rng.standard_normal((60, 6))
    layers = [base + s * rng.standard_normal((60, 6)) for s in (0.1, 0.2, 3.0)]
    frame = align_layers(layers, layers, metric="cka", names_a=["l0", "l1", "l2"],
                         names_b=["l0", "l1", "l2"]).to_frame(model_a="m", model_b="m")
    fig = plot.layer_heatmap(frame, "cka", "m", "m")
    (best,) = [p for p in fig.axes[0].patches if p.get_gid() == "best-pair"]
    scores = frame["score"].to_numpy().reshape(3, 3)
    off = np.where(np.eye(3, dtype=bool), -np.inf, scores)
    i, j = np.unravel_index(np.argmax(off), off.shape)
    assert i != j and best.get_xy() == (j - 0.5, i - 0.5)


def test_heatmap_of_the_reversed_pair_is_the_transpose(table):
    fig = plot.layer_heatmap(table, "mutual_knn", "lm", "fold")
    expected, _, _ = reference_matrix(table, "mutual_knn")
    np.testing.assert_allclose(np.asarray(fig.axes[0].images[0].get_array()), expected.T)


def test_metric_aliases_resolve_to_the_stored_name(table):
    fig = plot.layer_heatmap(table, "mknn")
    assert "mutual_knn" in fig.axes[1].get_ylabel().replace("\n", " ")


def test_layer_groups_follow_the_name_prefixes():
    names = ["esmc.0", "esmc.1", "language_model", "lm_encoder.0", "lm_encoder.1", "folding_trunk.0", "parcae",
             "diffusion.single", "diffusion.token_transformer.0", "confidence.input", "confidence.pair.0"]
    got = [(g.label, g.start, g.stop) for g in plot.layer_groups(names)]
    assert got == [("ESMC", 0, 2), ("LM", 2, 3), ("LM encoder", 3, 5), ("trunk", 5, 6), ("parcae", 6, 7),
                   ("diffusion", 7, 9), ("confidence", 9, 11)]
    # generic prefixes; a stage that comes back starts a new group
    got = [(g.label, g.start, g.stop) for g in plot.layer_groups(["a.0", "a.1", "b", "a.2"])]
    assert got == [("a", 0, 2), ("b", 2, 3), ("a", 3, 4)]
    assert len(plot.layer_groups(["layer.0", "layer.1"])) == 1


def test_heatmap_separates_stages_at_group_boundaries(table):
    ax = plot.layer_heatmap(table, "cka", "fold", "lm").axes[0]
    lines = {ln.get_gid(): ln for ln in ax.get_lines() if (ln.get_gid() or "").startswith("stage-separator-y")}
    # esmc | language_model | lm_encoder | folding_trunk | confidence: boundaries before rows 2, 3, 4, 6
    assert sorted(lines) == [f"stage-separator-y-{i}" for i in (2, 3, 4, 6)]
    for i in (2, 3, 4, 6):
        assert np.allclose(lines[f"stage-separator-y-{i}"].get_ydata(), i - 0.5)
    labels = {t.get_gid(): t.get_text() for t in ax.texts if (t.get_gid() or "").startswith("stage-label-y")}
    assert labels == {"stage-label-y-0": "ESMC", "stage-label-y-2": "LM", "stage-label-y-3": "LM encoder",
                      "stage-label-y-4": "trunk", "stage-label-y-6": "confidence"}
    assert gids(ax, "stage-separator-x") == []  # one group of B's layers: no separator


def with_stats(table):
    """Stats columns by hand: p-values from a fixed rule, calibrated = score shifted."""
    t = table.copy()
    rng = np.random.default_rng(3)
    t["p_value"] = rng.choice([0.001, 0.04, 0.05, 0.3], size=len(t))
    t["calibrated"] = np.clip(t["score"] - 0.1, 0, 1)
    t["p_value_best"] = 0.01
    return t


@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_only_non_significant_cells_are_hatched(table, alpha):
    t = with_stats(table)
    fig = plot.layer_heatmap(t, "cka", alpha=alpha)
    p, _, _ = reference_matrix(t, "cka", "p_value")
    expected = sorted((i, j) for i in range(p.shape[0]) for j in range(p.shape[1]) if p[i, j] >= alpha)
    assert expected and plot.hatched_cells(fig) == expected
    (patch,) = [pa for pa in fig.axes[0].patches if pa.get_gid() == "not-significant"]
    assert patch.get_hatch()
    # every drawn square is one cell wide, centred on its cell
    squares = patch.get_path().vertices.reshape(-1, 5, 2)
    assert np.allclose(squares.max(axis=1) - squares.min(axis=1), 1.0)
    # a p_value column with no values (no permutations run) hatches nothing
    t["p_value"] = np.nan
    assert plot.hatched_cells(plot.layer_heatmap(t, "cka")) == []


def test_calibrated_variant_draws_calibrated_scores(table):
    t = with_stats(table)
    fig = plot.layer_heatmap(t, "mutual_knn", value="calibrated")
    expected, _, _ = reference_matrix(t, "mutual_knn", "calibrated")
    np.testing.assert_allclose(np.asarray(fig.axes[0].images[0].get_array()), expected)
    assert fig.axes[1].get_ylabel().startswith("calibrated")
    assert fig.axes[0].images[0].get_clim() == (0.0, 1.0)
    with pytest.raises(RepalignError, match="no calibrated scores"):
        plot.layer_heatmap(table, "cka", value="calibrated")


def hand_table(pairs, layers=2, metric="cka"):
    """Rows for each (model_a, model_b, best score); the other layer pairs score lower."""
    rows = []
    for a, b, best in pairs:
        for i in range(layers):
            for j in range(layers):
                score = best if (i, j) == (layers - 1, 0) else best / 2
                rows.append({"model_a": a, "layer_a": f"l{i}", "model_b": b, "layer_b": f"l{j}", "metric": metric,
                             "params": "", "score": score, "n_samples": 50})
    return pd.DataFrame(rows)


def test_model_matrix_clusters_similar_models_together():
    sim = {("a", "b"): 0.1, ("a", "c"): 0.9, ("a", "d"): 0.15, ("b", "c"): 0.2, ("b", "d"): 0.8, ("c", "d"): 0.1}
    t = hand_table([(a, b, s) for (a, b), s in sim.items()])
    scores = plot.model_scores(t)
    for (a, b), s in sim.items():
        assert scores.loc[a, b] == s and scores.loc[b, a] == s  # best over layer pairs, symmetric
    order = plot.cluster_order(scores)
    pos = {m: i for i, m in enumerate(order)}
    assert abs(pos["a"] - pos["c"]) == 1 and abs(pos["b"] - pos["d"]) == 1
    fig = plot.model_matrix(t)
    assert fig.repalign_order == order
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == order
    cells = {t.get_gid(): t.get_text() for t in ax.texts}
    i, j = order.index("a"), order.index("c")
    assert cells[f"cell-{i}-{j}"] == "0.90" and cells[f"cell-{j}-{i}"] == "0.90"
    assert plot.model_matrix(t, order=["d", "c", "b", "a"]).repalign_order == ["d", "c", "b", "a"]
    with pytest.raises(RepalignError, match="every model once"):
        plot.model_matrix(t, order=["a", "b"])


def test_model_matrix_at_chosen_layers():
    t = hand_table([("a", "b", 0.8), ("a", "c", 0.6), ("b", "c", 0.4)])
    scores = plot.model_scores(t, layers={"a": "l0"})
    # a's l0 never holds the best pair: half the best score against b and c; b-c keeps its best
    assert scores.loc["a", "b"] == 0.4 and scores.loc["a", "c"] == 0.3 and scores.loc["b", "c"] == 0.4
    with pytest.raises(RepalignError, match="layer 'l9'"):
        plot.model_scores(t, layers={"a": "l9"})


def test_depth_scores_match_a_direct_computation(table):
    t = table[table["metric"] == "cka"]
    got = plot.depth_scores(t, model_b="lm")
    assert list(got["model"]) == ["fold"] * len(FOLD_LAYERS)
    expected, _, lb = reference_matrix(t, "cka")
    np.testing.assert_allclose(got["score"], expected.max(axis=1))
    np.testing.assert_allclose(got["depth"], np.arange(len(FOLD_LAYERS)) / (len(FOLD_LAYERS) - 1))
    fixed = plot.depth_scores(t, model_b="lm", layer_b="layer.1")
    np.testing.assert_allclose(fixed["score"], expected[:, lb.index("layer.1")])
    # the other side as reference: fold's layers are B, lm's layers run 0..1
    other = plot.depth_scores(t, model_b="fold")
    np.testing.assert_allclose(other["score"], expected.max(axis=0))
    np.testing.assert_allclose(other["depth"], [0, 0.5, 1])
    fig = plot.depth_profile(t, model_b="lm")
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_gid() == "depth-fold"]
    np.testing.assert_allclose(line.get_ydata(), expected.max(axis=1))
    assert not [ln for ln in fig.axes[0].get_lines() if ln.get_gid() == "chance-level"]
    fig = plot.depth_profile(t.assign(chance_level=0.125), model_b="lm")
    (chance,) = [ln for ln in fig.axes[0].get_lines() if ln.get_gid() == "chance-level"]
    assert np.allclose(chance.get_ydata(), 0.125)


@pytest.mark.parametrize("name, family, size", [
    ("esmc-300m", "esmc", 3e8), ("esmc-600M", "esmc", 6e8), ("unirep-1900", "unirep", 1900.0),
    ("esm2_t33_650M_UR50D", "esm2_t33_UR50D", 6.5e8), ("esm2-8m", "esm2", 8e6), ("prot-t5-3b", "prot-t5", 3e9),
])
def test_model_sizes_parse_from_names(name, family, size):
    assert plot.parse_model_size(name) == (family, size)


def test_model_size_absent():
    assert plot.parse_model_size("antiberty") is None
    assert plot.parse_model_size("chgnet") is None


def test_size_scores_keep_families_with_several_sizes():
    t = hand_table([("esmc-300m", "ref", 0.5), ("esmc-600m", "ref", 0.6), ("esm2-35m", "ref", 0.4),
                    ("antiberty", "ref", 0.3)])
    got = plot.size_scores(t, model_b="ref")
    assert list(got["model"]) == ["esmc-300m", "esmc-600m"] and list(got["score"]) == [0.5, 0.6]
    got = plot.size_scores(t, model_b="ref", sizes={"antiberty": 26e6}, families={"antiberty": "esm2"})
    assert set(got["model"]) == {"esmc-300m", "esmc-600m", "esm2-35m", "antiberty"}
    with pytest.raises(RepalignError, match="several sizes"):
        plot.size_scores(hand_table([("esmc-300m", "ref", 0.5), ("antiberty", "ref", 0.3)]), model_b="ref")


def test_figure_files_png_dpi_pdf_fonts_svg_text(table, tmp_path):
    from PIL import Image

    paths = plot.plot_table(table, tmp_path / "fig", "layers", "png,pdf,svg", metric="cka")
    assert [p.name for p in paths] == ["fig.png", "fig.pdf", "fig.svg"]
    with Image.open(tmp_path / "fig.png") as im:
        assert np.allclose(im.info["dpi"], (300, 300), atol=0.01)
        width_in = im.size[0] / 300
    assert width_in == pytest.approx(3.3, abs=1 / 300)  # one journal column
    pdf = (tmp_path / "fig.pdf").read_bytes()
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf  # TrueType (Type 42) embedded, no Type 3
    root = ET.parse(tmp_path / "fig.svg").getroot()
    texts = ["".join(e.itertext()) for e in root.iter("{http://www.w3.org/2000/svg}text")]
    assert any("fold vs lm" in t for t in texts) and "ESMC" in texts and "layer.0" in texts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.pdf", "fig.png", "fig.svg"]  # no temporaries left
    wide = plot.plot_table(table, tmp_path / "wide", "models", ["png"], metric="cka", width="double")[0]
    with Image.open(wide) as im:
        assert im.size[0] / 300 == pytest.approx(6.85, abs=1 / 300)  # two columns
    points = plot.plot_table(table, tmp_path / "pt", "layers", ["png"], metric="cka", width=300)[0]
    with Image.open(points) as im:
        assert im.size[0] / 300 == pytest.approx(300 / 72, abs=1 / 300)


def test_dots_in_the_stem_are_kept_and_files_are_not_private(table, tmp_path):
    import os

    paths = plot.plot_table(table, tmp_path / "crystal-chgnet-0.3.0-vs-sevennet-0-cka", "layers", "png,pdf")
    assert [p.name for p in paths] == ["crystal-chgnet-0.3.0-vs-sevennet-0-cka.png", "crystal-chgnet-0.3.0-vs-sevennet-0-cka.pdf"]
    assert plot.plot_table(table, tmp_path / "fig.svg", "layers", "svg")[0].name == "fig.svg"
    mask = os.umask(0)
    os.umask(mask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~mask for p in paths)


def test_same_table_gives_identical_vector_files(table, tmp_path):
    for stem in ("one", "two"):
        plot.plot_table(table, tmp_path / stem, "layers", "pdf,svg")
    assert (tmp_path / "one.svg").read_bytes() == (tmp_path / "two.svg").read_bytes()
    assert (tmp_path / "one.pdf").read_bytes() == (tmp_path / "two.pdf").read_bytes()


def test_cli_plot_end_to_end(table, tmp_path):
    src = tmp_path / "scores.csv"
    table.to_csv(src, index=False)
    res = run_main("plot", src, "--kind", "layers", "--metric", "mknn",
                   "--a", "lm", "--b", "fold", "--format", "png,svg", "-o", tmp_path / "heat")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["wrote", str(tmp_path / "heat.png"), "wrote", str(tmp_path / "heat.svg")]
    svg = (tmp_path / "heat.svg").read_text()
    assert "lm vs fold" in svg


@pytest.mark.parametrize("kind, extra", [("models", []), ("depth", ["--b", "lm"]), ("depth", ["--layer-b", "layer.2"])])
def test_cli_plot_other_kinds(table, tmp_path, kind, extra):
    src = tmp_path / "scores.parquet"
    table.to_parquet(src)
    assert main(["plot", str(src), "--kind", kind, *extra, "--format", "png", "-o", str(tmp_path / kind)]) == 0
    assert (tmp_path / f"{kind}.png").stat().st_size > 1000


@pytest.mark.parametrize("change, args, message", [
    ("drop-score", [], "lacks columns ['score']"),
    ("empty", [], "the score table is empty"),
    (None, ["--metric", "svcca"], "metric 'svcca' is not in the table"),
    (None, ["--metric", "nonsense"], "metric 'nonsense' is not in the table"),
    (None, ["--a", "esm9"], "model 'esm9' is not in the table"),
    (None, ["--kind", "size"], "no model family with several sizes"),
    (None, ["--kind", "models", "--b", "lm"], "--b does not apply to --kind models"),
    (None, ["--format", "png,jpg"], "figure format 'jpg' is not supported"),
    (None, ["--calibrated"], "no calibrated scores"),
    ("bad-folder", [], "no such folder"),
])
def test_cli_plot_bad_input_is_one_line_and_writes_nothing(table, tmp_path, capsys, change, args, message):
    t = table.copy()
    if change == "drop-score":
        t = t.drop(columns="score")
    elif change == "empty":
        t = t.iloc[:0]
    src = tmp_path / "in" / "scores.csv"
    src.parent.mkdir()
    t.to_csv(src, index=False)
    out = tmp_path / ("missing/fig" if change == "bad-folder" else "out/fig")
    (tmp_path / "out").mkdir()
    assert main(["plot", str(src), *args, "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("repalign: error: ") and err.count("\n") == 1 and message in err
    assert list((tmp_path / "out").iterdir()) == []


def test_cli_size_with_given_sizes(tmp_path):
    t = hand_table([("esmc-300m", "ref", 0.5), ("esmc-600m", "ref", 0.6), ("mini", "ref", 0.2)])
    src = tmp_path / "scores.tsv"
    t.to_csv(src, sep="\t", index=False)
    stem = tmp_path / "size"
    # 'mini' gets a size but forms a family of its own: one size is no scaling curve, so only esmc is drawn
    assert main(["plot", str(src), "--kind", "size", "--size", "mini=1e3", "--format", "svg", "-o", str(stem)]) == 0
    svg = (tmp_path / "size.svg").read_text()
    assert "esmc" in svg and "mini" not in svg and "vs ref" in svg
    (tmp_path / "size.svg").unlink()
    assert main(["plot", str(src), "--kind", "size", "--size", "esmc-600m=lots", "-o", str(stem)]) == 1
    assert not list(tmp_path.glob("size.*"))


# ---- layout: nothing clipped, nothing overlapping, at both journal widths -----------------------------

ESMFOLD2_LAYERS = ([f"esmc.{i}" for i in range(31)] + ["input_embedder.single", "input_embedder.pair", "language_model",
                   "lm_encoder.0", "lm_encoder.1"] + [f"folding_trunk.{i}" for i in range(48)]
                   + ["parcae", "distogram", "diffusion.single", "confidence.single"])
LM30_LAYERS = ["embeddings"] + [f"layer.{i}" for i in range(29)]


@pytest.fixture(scope="module")
def big_table():
    """ESMFold2's 88 stored layers against a 30-layer LM: real mutual kNN scores on related features."""
    from repalign.metrics import align_layers

    rng = np.random.default_rng(5)
    n = 60
    base = rng.standard_normal((n, 8))
    a = [base + (0.2 + 2 * abs(i / 88 - 0.5)) * rng.standard_normal((n, 8)) for i in range(len(ESMFOLD2_LAYERS))]
    b = [base + (0.2 + 2 * (j / 30)) * rng.standard_normal((n, 8)) for j in range(len(LM30_LAYERS))]
    frame = align_layers(a, b, metric="mknn", k=5, names_a=ESMFOLD2_LAYERS, names_b=LM30_LAYERS)
    return frame.to_frame(model_a="esmfold2", model_b="esm2-650m").assign(chance_level=5 / (n - 1))


def six_models():
    rng = np.random.default_rng(1)
    names = ["esmc-300m", "esmc-600m", "esm2_t33_650M_UR50D", "esm2-35m", "antiberty", "esmfold2-fast"]
    pairs = [(a, b, 0.4 + 0.5 * rng.random()) for i, a in enumerate(names) for b in names[i + 1:]]
    t = hand_table(pairs, layers=4)
    return t.assign(null_mean=0.3, p_value_adjusted=np.where(t["score"] > 0.5, 0.01, 0.3))


def text_problems(fig) -> list[str]:
    """Texts outside the canvas, texts under 7 pt, and overlapping tick labels or stage labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    problems = []

    def drawn_ticklabels(axis):
        # labels of ticks outside the view limits exist but are not drawn
        low, high = sorted(axis.get_view_interval())
        return [t for minor in (False, True)
                for loc, t in zip(axis.get_ticklocs(minor=minor), axis.get_ticklabels(minor=minor))
                if low - 1e-9 <= loc <= high + 1e-9]

    hidden = {id(t) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis) for minor in (False, True)
              for t in axis.get_ticklabels(minor=minor)}
    hidden -= {id(t) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis) for t in drawn_ticklabels(axis)}
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in hidden]
    assert texts
    for t in texts:
        box = t.get_window_extent(renderer)
        if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > width + 0.5 or box.y1 > height + 0.5:
            problems.append(f"clipped: {t.get_text()!r} {box.bounds} in {width}x{height}")
        if t.get_fontsize() < 7:
            problems.append(f"{t.get_fontsize()} pt: {t.get_text()!r}")

    def overlaps(items, what):
        # the text itself: an annotation's extent would include its leader line
        boxes = [(t.get_text(), Text.get_window_extent(t, renderer)) for t in items if t.get_visible() and t.get_text().strip()]
        for n, (ta, a) in enumerate(boxes):
            for tb, b in boxes[n + 1:]:
                if min(a.x1, b.x1) - max(a.x0, b.x0) > 0.5 and min(a.y1, b.y1) - max(a.y0, b.y0) > 0.5:
                    problems.append(f"{what} overlap: {ta!r} and {tb!r}")

    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            overlaps(drawn_ticklabels(axis), "tick labels")
        for which in ("x", "y"):
            overlaps([t for t in ax.texts if (t.get_gid() or "").startswith(f"stage-label-{which}")], "stage labels")
    return problems


FIGURES = {
    "layers": lambda t, big, w: plot.layer_heatmap(t, "cka", width=w),
    "layers-esmfold2": lambda t, big, w: plot.layer_heatmap(big, width=w),
    "layers-transposed": lambda t, big, w: plot.layer_heatmap(big, model_a="esm2-650m", model_b="esmfold2", width=w),
    "models": lambda t, big, w: plot.model_matrix(six_models(), width=w),
    "depth": lambda t, big, w: plot.depth_profile(six_models(), model_b="esmfold2-fast", width=w),
    "size": lambda t, big, w: plot.size_scaling(six_models(), model_b="esmfold2-fast", width=w),
}


@pytest.mark.parametrize("width", ["single", "double"])
@pytest.mark.parametrize("kind", sorted(FIGURES))
def test_every_figure_kind_fits_its_width_without_overlaps(table, big_table, kind, width):
    fig = FIGURES[kind](table, big_table, width)
    assert fig.get_figwidth() == plot.WIDTHS_IN[width]
    assert text_problems(fig) == []


def test_ninety_layers_get_thinned_ticks_and_one_bracket_per_stage(big_table):
    fig = plot.layer_heatmap(big_table)
    ax = fig.axes[0]
    groups = plot.layer_groups(ESMFOLD2_LAYERS)
    assert [g.label for g in groups] == ["ESMC", "input emb.", "LM", "LM encoder", "trunk", "parcae", "distogram",
                                         "diffusion", "confidence"]
    labels = sorted(t.get_gid() for t in ax.texts if (t.get_gid() or "").startswith("stage-label-y"))
    assert labels == sorted(f"stage-label-y-{g.start}" for g in groups)  # once per stage, on one side only
    assert not [t for t in ax.texts if (t.get_gid() or "").startswith("stage-label-x-")] or \
        {t.get_text() for t in ax.texts if (t.get_gid() or "").startswith("stage-label-x-")} == {"embeddings", "layer"}
    ticks = [int(v) for v in ax.get_yticks()]
    assert 5 < len(ticks) < len(ESMFOLD2_LAYERS)  # thinned, not dropped
    # within the trunk, ticks fall on every step-th block counted from block 0
    trunk = next(g for g in groups if g.label == "trunk")
    local = [i - trunk.start for i in ticks if trunk.start <= i < trunk.stop]
    step = local[1] - local[0]
    assert local[0] == 0 and step in plot.layers.TICK_STEPS and all(x % step == 0 for x in local)
    shown = {int(v): t.get_text() for v, t in zip(ax.get_yticks(), ax.get_yticklabels())}
    assert all(shown[i] == ESMFOLD2_LAYERS[i].split(".", 1)[1] for i in ticks if "." in ESMFOLD2_LAYERS[i])
    # the axis label sits outside the brackets and their labels
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    r = canvas.get_renderer()
    ylabel = ax.yaxis.label.get_window_extent(r)
    stage = [t.get_window_extent(r) for t in ax.texts if (t.get_gid() or "").startswith("stage-label-y")]
    assert ylabel.x1 <= min(b.x0 for b in stage)


def test_tick_positions_fit_the_axis():
    groups = plot.layer_groups([f"a.{i}" for i in range(10)] + [f"b.{i}" for i in range(30)])
    # 400 pt for 40 layers: 10 pt per layer, every layer fits
    assert plot.tick_positions(groups, 40, 400, 7) == list(range(40))
    # 100 pt: 2.5 pt per layer, labels 9.1 pt apart -> every 5th layer of each group
    got = plot.tick_positions(groups, 40, 100, 7)
    assert got == [0, 5, 10, 15, 20, 25, 30, 35]
    assert all(b - a >= 9.1 / 2.5 for a, b in zip(got, got[1:]))


def test_spread_keeps_labels_apart_and_in_bounds():
    from repalign.plot.layers import spread

    assert spread([10, 50, 90], [8, 8, 8], 0, 100) == [10, 50, 90]  # nothing to move
    got = spread([50, 51, 52, 53], [8, 8, 8, 8], 0, 100)
    assert all(b - a >= 9 - 1e-9 for a, b in zip(got, got[1:]))  # 8 pt labels, 1 pt gap
    assert np.mean(got) == pytest.approx(51.5)  # moved symmetrically around where they belong
    got = spread([1, 2, 3], [8, 8, 8], 0, 100)
    assert got[0] >= 4 - 1e-9 and all(b - a >= 9 - 1e-9 for a, b in zip(got, got[1:]))  # kept inside
    got = spread([96, 97, 98], [8, 8, 8], 0, 100)
    assert got[-1] <= 96 + 1e-9 and all(b - a >= 9 - 1e-9 for a, b in zip(got, got[1:]))


# ---- colour scales, significance, best pair ---------------------------------------------------------------


def test_colours_use_one_fixed_scale_with_the_chance_level_marked(big_table):
    low = big_table.assign(score=big_table["score"] * 0.3)
    figs = [plot.layer_heatmap(t) for t in (big_table, low)]
    assert [f.axes[0].images[0].get_clim() for f in figs] == [(0.0, 1.0), (0.0, 1.0)]
    for fig in figs:
        (line,) = [ln for ln in fig.axes[1].get_lines() if ln.get_gid() == "reference-chance"]
        assert np.allclose(line.get_ydata(), 5 / 59)
        assert "(chance 0.0847)" in fig.texts[0].get_text()
    data = plot.layer_heatmap(low, scale="data")
    scores = low["score"].to_numpy()
    assert data.axes[0].images[0].get_clim() == pytest.approx((scores.min(), scores.max()))
    assert "this panel's range" in data.texts[0].get_text().replace("\n", " ")


def test_null_means_are_a_band_on_the_colour_bar():
    t = six_models()
    t["null_mean"] = np.linspace(0.2, 0.3, len(t))
    fig = plot.model_matrix(t)
    bar = fig.axes[1]
    (band,) = [p for p in bar.patches if p.get_gid() == "reference-band"]
    assert band.get_y() == pytest.approx(0.2) and band.get_height() == pytest.approx(0.1)
    assert "null mean 0.2-0.3" in fig.texts[0].get_text()
    assert fig.axes[0].images[0].get_clim() == (0.0, 1.0)


def test_adjusted_p_values_decide_the_hatching_when_present(table):
    t = with_stats(table)
    t["p_value"] = 0.001  # every pair significant on its own
    rng = np.random.default_rng(8)
    t["p_value_adjusted"] = rng.choice([0.01, 0.2], size=len(t))
    fig = plot.layer_heatmap(t, "cka")
    p, _, _ = reference_matrix(t, "cka", "p_value_adjusted")
    assert plot.hatched_cells(fig) == sorted(map(tuple, np.argwhere(p >= 0.05).tolist()))
    assert "adjusted p" in fig.texts[0].get_text()


def test_best_column_marks_the_best_pair_not_the_argmax(table):
    t = table[table["metric"] == "cka"].copy()
    scores, la, lb = reference_matrix(t, "cka")
    worst = np.unravel_index(np.argmin(scores), scores.shape)
    t["best"] = (t["layer_a"] == la[worst[0]]) & (t["layer_b"] == lb[worst[1]])
    t["p_value_best"] = np.where(t["best"], 0.004, np.nan)
    fig = plot.layer_heatmap(t)
    (box,) = [p for p in fig.axes[0].patches if p.get_gid() == "best-pair"]
    assert box.get_xy() == (worst[1] - 0.5, worst[0] - 0.5)
    assert f"best {la[worst[0]]} ~ {lb[worst[1]]}" in fig.texts[0].get_text() and "p(best)\u00a0\u2264\u00a00.004" in fig.texts[0].get_text()
    # the CSV round trip gives text 'True'/'False'; the same cell is marked
    t2 = t.assign(best=t["best"].astype(str))
    (box2,) = [p for p in plot.layer_heatmap(t2).axes[0].patches if p.get_gid() == "best-pair"]
    assert box2.get_xy() == box.get_xy()
    # the model matrix shows the flagged row's score, not the maximum
    assert plot.model_scores(t).loc["fold", "lm"] == pytest.approx(scores[worst])


@pytest.mark.parametrize("width, inches", [("single", 3.3), ("double", 6.85), (246, 246 / 72), ("246pt", 246 / 72),
                                           ("85mm", 85 / 25.4), ("3.5in", 3.5), ("onehalf", 120 / 25.4),
                                           ("science-1", 5.7 / 2.54), ("science-2", 12.1 / 2.54),
                                           ("science-3", 18.4 / 2.54), ("5.7cm", 5.7 / 2.54)])
def test_width_presets_and_points(width, inches):
    assert plot.figure_width(width) == pytest.approx(inches)


@pytest.mark.parametrize("width", ["triple", 50, "30cm", True, "-3"])
def test_bad_widths_are_refused(width):
    with pytest.raises(RepalignError, match="width"):
        plot.figure_width(width)


# ---- unreadable tables: one line, no traceback, from a real process --------------------------------------


def _self_pair_nan(path):
    rows = [{"model_a": "m", "layer_a": f"l{i}", "model_b": "m", "layer_b": f"l{j}", "metric": "cka", "params": "",
             "score": 1.0 if i == j else np.nan, "n_samples": 10} for i in range(3) for j in range(3)]
    pd.DataFrame(rows).to_csv(path, index=False)


@pytest.mark.parametrize("name, make, message", [
    ("empty.csv", lambda p: p.write_bytes(b""), "is an empty file"),
    ("binary.csv", lambda p: p.write_bytes(bytes(range(256)) * 8), "is a binary file"),
    ("table.parquet", lambda p: p.write_text("model_a,layer_a\nx,y\n"), "is not a readable Parquet table"),
    ("garbage.tsv", lambda p: p.write_bytes("\u00e9\u00e8".encode("latin-1") * 100), "is not a readable TSV table"),
    ("self.csv", _self_pair_nan, "off the diagonal is missing (NaN)"),
])
def test_cli_plot_unreadable_tables_fail_in_one_line(tmp_path, name, make, message):
    src = tmp_path / name
    make(src)
    (tmp_path / "out").mkdir()
    res = run_main("plot", src, "-o", tmp_path / "out" / "fig", cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    assert res.stderr.startswith("repalign: error: ") and res.stderr.count("\n") == 1, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert list((tmp_path / "out").iterdir()) == []


# ---- statistics as drawn ----------------------------------------------------------------------------


def test_p_value_floor_is_read_off_the_permutation_p_values():
    # 199 permutations: every p-value is (1 + c) / 200
    rows = pd.DataFrame({"p_value": [1 / 200, 3 / 200, 17 / 200, 1.0], "p_value_best": [1 / 200, np.nan, np.nan, np.nan]})
    assert plot.p_floor(rows) == pytest.approx(1 / (199 + 1))
    # as a CSV writes them (6 significant digits): 1/201 = 0.00497512
    rounded = pd.DataFrame({"p_value": [0.00497512, 0.0149254, 0.502488, 1.0]})  # 1, 3, 101, 201 / 201
    assert plot.p_floor(rounded) == pytest.approx(1 / 201)
    # one p-value alone: the floor it could be (p <= 0.004 holds whatever T was)
    assert plot.p_floor(pd.DataFrame({"p_value_best": [0.004]})) == pytest.approx(0.004)
    assert plot.p_floor(pd.DataFrame({"p_value": [np.nan]})) is None
    # seed contrasts carry their floor
    assert plot.p_floor(pd.DataFrame({"p_value": [1 / 6], "min_p_value": [1 / 6]})) == pytest.approx(1 / 6)


@pytest.mark.parametrize("p, floor, text", [(1 / 200, 1 / 200, "p \u2264 0.005"), (1 / 201, 1 / 201, "p \u2264 0.005"),
                                            (1 / 6, 1 / 6, "p \u2264 0.17"), (0.02, 1 / 200, "p = 0.02"),
                                            (0.004, None, "p = 0.004")])
def test_p_value_at_its_floor_is_written_as_a_bound(p, floor, text):
    got = plot.p_text(p, floor).replace("\u00a0", " ")
    assert got == text
    if "\u2264" in got:  # the printed bound is never below the floor: 'p <= bound' stays true
        assert float(got.split()[-1]) >= floor


def test_heatmap_title_writes_a_floor_p_value_as_a_bound(table):
    t = table[table["metric"] == "cka"].copy()
    rng = np.random.default_rng(0)
    t["p_value_adjusted"] = rng.choice([1, 3, 40, 200], size=len(t)) / 200  # 199 permutations
    t["p_value_best"] = np.where(t["best"], 1 / 200, np.nan)
    fig = plot.layer_heatmap(t)
    title = fig.texts[0].get_text().replace("\u00a0", " ")
    assert "p(best) \u2264 0.005" in title
    assert "hatched: permutation p adjusted (max-T) over the layer pairs \u2265 0.05" in plot.caption(fig)


def test_caption_goes_into_the_files_metadata(table, tmp_path):
    import subprocess

    from PIL import Image

    fig = plot.layer_heatmap(table, "cka")
    text = plot.caption(fig)
    assert "cka: kernel=linear" in text and "boxed" in text
    png, pdf, svg = plot.save_figure(fig, tmp_path / "f", ("png", "pdf", "svg"))
    assert Image.open(png).text["Description"] == text
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    assert "Subject:" in info and "cka: kernel=linear" in info
    assert "cka: kernel=linear" in svg.read_text()


# ---- trained vs controls, flags from signatures, model matrices that say what is missing ---------------


def test_controls_figure_draws_trained_beside_the_control_means(tmp_path):
    from test_figure_layout import controls_table

    t = controls_table()
    fig = plot.controls_heatmap(t, width="double")
    trained, control = fig.axes[0], fig.axes[1]
    expected, la, lb = reference_matrix(t[t["level"] == "trained"], "mutual_knn")
    means, _, _ = reference_matrix(t[(t["level"] == "contrast") & ~t["best"]], "mutual_knn", "control_mean")
    np.testing.assert_allclose(np.asarray(trained.images[0].get_array()), expected)
    np.testing.assert_allclose(np.asarray(control.images[0].get_array()), means)
    # independently: the control mean of a cell is the mean of the seeds' scores at that pair
    seeds = t[(t["level"] == "random_init") & (t["layer_a"] == la[2]) & (t["layer_b"] == lb[3])]
    assert means[2, 3] == pytest.approx(seeds["score"].mean())
    # one colour scale for both panels
    assert trained.images[0].get_clim() == control.images[0].get_clim() == (0.0, 1.0)
    (box,) = [p for p in trained.patches if p.get_gid() == "best-pair"]
    best = t[(t["level"] == "trained") & t["best"]].iloc[0]
    assert box.get_xy() == (lb.index(best["layer_b"]) - 0.5, la.index(best["layer_a"]) - 0.5)
    title = fig.texts[0].get_text().replace("\u00a0", " ")
    head = t[(t["level"] == "contrast") & t["best"]].iloc[0]
    assert f"control mean {head['control_mean']:.3f} (5 seeds)" in title
    assert f"contrast {head['score'] - head['control_mean']:+.3f}" in title and "p \u2264 0.17" in title  # 1/6
    # the layer heatmap of the same table draws the trained rows and states the same headline
    layers = plot.layer_heatmap(t)
    np.testing.assert_allclose(np.asarray(layers.axes[0].images[0].get_array()), expected)
    assert "control mean" in layers.texts[0].get_text()
    with pytest.raises(RepalignError, match="compare_controls"):
        plot.controls_heatmap(t[t["level"] == "trained"].drop(columns=["control_mean"]))


def test_the_demo_heatmap_title_states_the_headline_with_its_controls(tmp_path):
    import subprocess

    from test_figure_layout import controls_table

    from repalign import demo
    from repalign.compare import headlines

    t = controls_table().copy()
    # as with two metrics: the headline's p adjusted over the metrics (Holm) is above its rank-test p
    t.loc[(t["level"] == "contrast") & t["best"], "p_value_adjusted"] = 1 / 3
    (head,) = [row for _, row in headlines(t).iterrows()]
    paths = demo._figures(tmp_path, demo.check_demo_output(tmp_path), t, "antibodies", "antiberty", "iglm", "mutual_knn")
    (pdf,) = [p for p in paths if p.suffix == ".pdf" and "controls" not in p.name]
    text = " ".join(subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True)
                    .stdout.replace("\u00a0", " ").split())
    assert f"{head['layer_a']} ~ {head['layer_b']}" in text and f"{head['score']:.3f}" in text
    assert f"control mean {head['control_mean']:.3f} (5 seeds)" in text
    assert f"contrast {head['score'] - head['control_mean']:+.3f}" in text
    assert "p \u2264 0.17" in text and "Holm p = 0.33" in text
    assert plot.pdf_layout_problems(pdf) == []


def test_cli_plot_controls_at_a_science_width(tmp_path):
    from test_figure_layout import controls_table

    src = tmp_path / "controls.csv"
    controls_table().to_csv(src, index=False)
    res = run_main("plot", src, "--kind", "controls", "--width", "science-2", "-o", tmp_path / "c", "--format", "pdf")
    assert res.returncode == 0, res.stderr
    assert plot.pdf_layout_problems(tmp_path / "c.pdf") == []
    wrong = run_main("plot", src, "--kind", "controls", "--layer-b", "x", "-o", tmp_path / "x")
    assert wrong.returncode == 1 and "--layer-b does not apply to --kind controls" in wrong.stderr


def test_plot_flags_are_read_off_the_figure_functions():
    import inspect

    for kind, function in plot.FIGURES.items():
        parameters = inspect.signature(function).parameters
        for flag, parameter in plot.figure_flags(kind).items():
            assert parameter in parameters and parameter in plot.FLAG_PARAMETERS[flag]
    assert plot.figure_flags("depth")["a"] == "models" and plot.figure_flags("layers")["a"] == "model_a"
    assert plot.figure_flags("profile")["metric"] == "measure"
    assert "sizes" not in plot.figure_flags("controls") and "order" in plot.figure_flags("models")


def test_model_matrix_tells_never_compared_pairs_from_the_diagonal():
    t = hand_table([("a", "b", 0.8), ("b", "c", 0.6)])  # a ~ c never compared
    fig = plot.model_matrix(t, order="table")
    ax = fig.axes[0]
    assert gids(ax, "self-") == ["self-0", "self-1", "self-2"]
    assert gids(ax, "not-compared-") == ["not-compared-0-2", "not-compared-2-0"]
    assert "crossed: never compared" in plot.caption(fig)


def test_model_matrix_refuses_models_never_linked_and_mixed_chance_levels():
    apart = hand_table([("a", "b", 0.8), ("c", "d", 0.6)])
    with pytest.raises(RepalignError, match="never compared with"):
        plot.model_matrix(apart)
    mixed = hand_table([("a", "b", 0.8), ("b", "c", 0.6)], metric="mutual_knn")
    mixed["params"] = "k=5"
    mixed.loc[mixed["model_a"] == "b", "n_samples"] = 200  # k/(N-1): 5/49 against 5/199
    with pytest.raises(RepalignError, match="differ in chance level"):
        plot.model_matrix(mixed)


def test_hollow_points_and_their_caption_only_where_permutations_ran():
    from test_figure_layout import six_models as with_p

    def hollow(fig):
        return sum(len(c.get_offsets()) for c in fig.axes[0].collections
                   if len(c.get_offsets()) and (np.asarray(c.get_facecolor())[:, :3] == 1).all())

    t = with_p()
    fig = plot.depth_profile(t, model_b="esmfold2-fast")
    # hollow: exactly the points whose chosen cell has adjusted p >= 0.05, by the rule written out
    data = plot.depth_scores(t, model_b="esmfold2-fast")
    assert hollow(fig) == int((data["p_value_adjusted"] >= 0.05).sum()) > 0
    assert "hollow: permutation p adjusted (max-T)" in plot.caption(fig)
    bare = plot.depth_profile(t.drop(columns=["p_value_adjusted"]), model_b="esmfold2-fast")
    assert hollow(bare) == 0 and "hollow" not in plot.caption(bare)
