"""Every figure kind at every width preset passes the layout check (repalign.plot.layout_problems),
and its saved PDF, read back by poppler's pdftotext, has no overlapping word and none off the page."""

import functools
import shutil

import numpy as np
import pandas as pd
import pytest

from repalign import plot
from repalign.metrics import align_layers
from repalign.plot.layout import canvas_use, layout_problems, pdf_layout_problems, pdf_words

ESMFOLD2_LAYERS = ([f"esmc.{i}" for i in range(31)] + ["input_embedder.single", "input_embedder.pair", "language_model",
                   "lm_encoder.0", "lm_encoder.1"] + [f"folding_trunk.{i}" for i in range(48)]
                   + ["parcae", "distogram", "diffusion.single", "confidence.single"])
LM30_LAYERS = ["embeddings"] + [f"layer.{i}" for i in range(29)]
MODELS = ["esmc-300m", "esmc-600m", "esm2_t33_650M_UR50D", "esm2-35m", "antiberty", "esmfold2-fast"]


@functools.lru_cache(maxsize=1)  # one table for every width; no figure function changes its table
def esmfold2_table():
    """ESMFold2's 88 stored layers against a 30-layer LM: real mutual kNN scores on related features,
    with permutation-like p-values (199 permutations: multiples of 1/200) and a flagged best pair."""
    rng = np.random.default_rng(5)
    n = 60
    base = rng.standard_normal((n, 8))
    a = [base + (0.2 + 2 * abs(i / 88 - 0.5)) * rng.standard_normal((n, 8)) for i in range(len(ESMFOLD2_LAYERS))]
    b = [base + (0.2 + 2 * (j / 30)) * rng.standard_normal((n, 8)) for j in range(len(LM30_LAYERS))]
    frame = align_layers(a, b, metric="mknn", k=5, names_a=ESMFOLD2_LAYERS, names_b=LM30_LAYERS)
    t = frame.to_frame(model_a="esmfold2", model_b="esm2-650m").assign(chance_level=5 / (n - 1))
    # a tenth of the cells not significant: hatching takes long to render and does not move any text
    t["p_value_adjusted"] = np.where(t["score"] > t["score"].quantile(0.1), 1 / 200, 41 / 200)
    t["p_value_best"] = np.where(t["best"], 1 / 200, np.nan)
    return t


@functools.lru_cache(maxsize=1)  # one table for every width; no figure function changes its table
def six_models():
    rng = np.random.default_rng(1)
    rows = []
    for i, a in enumerate(MODELS):
        for b in MODELS[i + 1:]:
            best = 0.4 + 0.5 * rng.random()
            for la in range(4):
                for lb in range(4):
                    rows.append({"model_a": a, "layer_a": f"l{la}", "model_b": b, "layer_b": f"l{lb}", "metric": "cka",
                                 "params": "kernel=linear,normalize=l2", "n_samples": 50,
                                 "score": best if (la, lb) == (3, 0) else best / 2})
    t = pd.DataFrame(rows)
    return t.assign(null_mean=0.3, p_value_adjusted=np.where(t["score"] > 0.5, 0.01, 0.3))


@functools.lru_cache(maxsize=1)  # one table for every width; no figure function changes its table
def curve_table():
    """A table shaped like ``compare --n-samples``: two layers each, k 5 and 10, three sizes, three subsets."""
    rng = np.random.default_rng(2)
    rows = []
    for k in (5, 10):
        for n in (50, 100, 200):
            for subset in range(3 if n < 200 else 1):
                for la in range(2):
                    for lb in range(2):
                        rows.append({"model_a": "esm2-35m", "layer_a": f"layer.{la}", "model_b": "esmc-300m",
                                     "layer_b": f"layer.{lb}", "metric": "mutual_knn", "params": f"k={k},normalize=l2",
                                     "score": 0.3 + 0.1 * la + 0.05 * rng.random(), "n_samples": n, "k": k,
                                     "subset": subset, "chance_level": k / (n - 1), "best": (la, lb) == (1, 0)})
    return pd.DataFrame(rows)


@functools.lru_cache(maxsize=1)  # one table for every width; no figure function changes its table
def controls_table():
    """A table with the controls schema (compare --controls 0-4): trained, random_init per seed, and
    contrast rows (one per layer pair and a best one)."""
    rng = np.random.default_rng(4)
    layers_a, layers_b = ["embeddings"] + [f"layer.{i}" for i in range(8)], ["embeddings"] + [f"layer.{i}" for i in range(12)]
    base = dict(model_a="antiberty", model_b="iglm", metric="mutual_knn", params="k=10,normalize=l2", n_samples=200,
                chance_level=10 / 199)
    trained = pd.DataFrame([dict(base, layer_a=a, layer_b=b, score=0.2 + 0.5 * rng.random(), level="trained")
                            for a in layers_a for b in layers_b])
    hidden = (trained["layer_a"] != "embeddings") & (trained["layer_b"] != "embeddings")
    trained["best"] = False
    trained.loc[trained["score"].where(hidden).idxmax(), "best"] = True
    seeds = []
    for s in range(5):
        seed = trained.assign(score=0.1 + 0.2 * rng.random(len(trained)), level="random_init", control_seed=s,
                              model_a=f"antiberty@random:{s}", model_b=f"iglm@random:{s}")
        seed["best"] = False
        seed.loc[seed["score"].where(hidden).idxmax(), "best"] = True
        seeds.append(seed)
    controls = pd.concat(seeds)
    stacked = controls["score"].to_numpy().reshape(5, -1)
    contrast = trained.assign(level="contrast", control_mean=stacked.mean(0), control_sd=stacked.std(0, ddof=1),
                              n_seeds=5, min_p_value=1 / 6, p_value=np.where(trained["score"] > stacked.max(0), 1 / 6, 0.5))
    contrast["difference"] = contrast["score"] - contrast["control_mean"]
    contrast["best"] = False
    head = contrast[trained["best"].to_numpy()].copy()
    best_seed = np.array([part.loc[part["best"], "score"].iloc[0] for part in seeds])
    head = head.assign(best=True, control_mean=best_seed.mean(), control_sd=best_seed.std(ddof=1), p_value=1 / 6,
                       p_value_adjusted=1 / 6)
    head["difference"] = head["score"] - head["control_mean"]
    return pd.concat([trained, controls, contrast, head], ignore_index=True)


@functools.lru_cache(maxsize=1)  # one table for every width; no figure function changes its table
def profile_table():
    """A table shaped like ``repalign profile``'s: a measure per layer of three models of different depths."""
    rows = [{"model": m, "layer": f"layer.{i}", "position": i, "measure": "intrinsic_dimension", "params": "estimator=twonn",
             "value": 5 + 10 * np.sin(np.pi * i / (depth - 1)), "n_samples": 200}
            for m, depth in (("esm2-35m", 12), ("esmc-300m", 30), ("antiberty", 8)) for i in range(depth)]
    return pd.DataFrame(rows)


#: figure kind -> (table factory, options): every kind in repalign.plot.FIGURES needs one
FIXTURES = {
    "layers": (esmfold2_table, {}),
    "models": (six_models, {}),
    "depth": (six_models, {"model_b": "esmfold2-fast"}),
    "size": (six_models, {"model_b": "esmfold2-fast"}),
    "n-curve": (curve_table, {}),
    "controls": (controls_table, {}),
    "profile": (profile_table, {}),
}


def test_every_figure_kind_has_a_layout_fixture():
    missing = sorted(set(plot.FIGURES) - set(FIXTURES))
    assert not missing, (f"figure kind(s) {missing} in repalign.plot.FIGURES have no table fixture in "
                         "tests/test_figure_layout.py FIXTURES; add one so their layout is checked at every width")


@pytest.mark.parametrize("width", sorted(plot.WIDTHS_IN))
@pytest.mark.parametrize("kind", sorted(plot.FIGURES))
def test_every_kind_at_every_width_passes_the_layout_check(kind, width, tmp_path):
    if kind not in FIXTURES:
        pytest.fail(f"figure kind {kind!r} has no table fixture in tests/test_figure_layout.py FIXTURES")
    make, options = FIXTURES[kind]
    fig = plot.draw(make(), kind, width=width, **options)
    assert fig.get_figwidth() == pytest.approx(plot.WIDTHS_IN[width])
    assert layout_problems(fig) == []
    (pdf,) = plot.save_figure(fig, tmp_path / kind, ("pdf",))
    assert pdf_layout_problems(pdf) == []
    page_width, _, words = pdf_words(pdf)
    assert page_width == pytest.approx(plot.WIDTHS_IN[width] * 72, abs=0.01) and words


# ---- the check finds what it is meant to find ----------------------------------------------------------


def _bare(width_in=3.3, height_in=2.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def test_overlapping_small_and_outside_texts_are_found(tmp_path):
    fig, ax = _bare()
    ax.plot([0, 1], [0, 1])
    ax.set_title("a title")
    fig.text(0.5, 0.95, "over the title", fontsize=7, ha="center", va="top")
    fig.text(0.5, 0.3, "tiny", fontsize=5)
    fig.text(0.98, 0.5, "off the right edge", fontsize=7)
    problems = layout_problems(fig)
    assert any(p.startswith("texts overlap:") and "'over the title'" in p for p in problems), problems
    assert any(p.startswith("5 pt text") and "'tiny'" in p for p in problems), problems
    assert any(p.startswith("outside the canvas:") and "off the right edge" in p for p in problems), problems
    fig.savefig(tmp_path / "bad.pdf")
    pdf = pdf_layout_problems(tmp_path / "bad.pdf")
    assert any("outside the page" in p for p in pdf), pdf
    assert any(p.startswith("words overlap:") for p in pdf), pdf


def test_blank_canvas_is_found():
    # a square image in a wide slot leaves blank bands beside it: measured against an independent area sum
    fig, ax = _bare(6.85, 2.0)
    ax.imshow(np.zeros((4, 4)))
    fig.draw_without_rendering()
    slot, active = ax.get_position(original=True), ax.get_position(original=False)
    blank = (slot.width * slot.height - active.width * active.height)
    assert blank > 0.3 and canvas_use(fig) <= 1 - blank + 1e-9
    assert any(p.startswith("only ") for p in layout_problems(fig))
    # the same image stretched over its slot leaves none
    fig, ax = _bare(6.85, 2.0)
    ax.imshow(np.zeros((4, 4)), aspect="auto")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    assert canvas_use(fig) > 0.9 and layout_problems(fig) == []


def test_pdftotext_is_installed():
    # the PDF half of the check needs poppler (CI installs poppler-utils)
    assert shutil.which("pdftotext")


# ---- the committed study figures, redrawn from the committed tables ---------------------------------------


def test_study_figures_redraw_from_their_committed_tables(tmp_path):
    from pathlib import Path

    from analyses import antibody_models, common, interatomic_potentials, molecules

    results = Path(__file__).resolve().parents[1] / "analyses" / "results"
    drawn = {}
    for study, heatmaps in (("antibody_models", antibody_models.HEATMAPS), ("molecules", molecules.HEATMAPS),
                            ("interatomic_potentials", interatomic_potentials.HEATMAPS)):
        (tmp_path / study).mkdir()
        # common.save_figure refuses a figure with layout problems, so every file written passed the check
        drawn[study] = {p.name for p in common.study_figures(pd.read_csv(results / study / "scores.csv"), tmp_path / study, heatmaps)}
    # IgFold's pairs (N = 200) and the others (N = 1,000) differ in chance level: two matrices, never one
    assert {"matrix_antibodies_structure_n200.png", "matrix_antibodies_structure_n1000.png"} <= drawn["antibody_models"]
    assert "matrix_antibodies_structure.png" not in drawn["antibody_models"]
    assert {"matrix_crystals_structure.png", "heatmap_crystals_element_chgnet-0.3.0_sevennet-0.png"} <= drawn["interatomic_potentials"]
    esm = pd.read_csv(results / "esmfold2_stages" / "scores.csv")
    path = common.depth_figure(esm, "esmfold2", ["esmc-300m"], "unbiased_cka", tmp_path, "depth")
    assert path.name == "depth.png"
    # each committed PNG is the one the committed table gives (same pixels size: same width and layout)
    from PIL import Image

    for study, names in drawn.items():
        for name in names:
            assert Image.open(results / study / name).size == Image.open(tmp_path / study / name).size, (study, name)
