"""Draw the example figures of docs/figures.md: one PNG of each kind, at single-column width.

    python docs/make_figures.py            # writes docs/figures/{layers,controls,models,depth,size}.png

The features are synthetic (a shared signal plus noise whose level changes with depth), named like
real models so the figures show real layer counts and stage names: ESMFold2's 88 stored layers
against a 30-layer protein language model. The scores, p-values and chance levels are computed by
repalign itself (align_layers, permutation_test, seed_contrast), so the figures are what a user
gets. Each figure is saved only when repalign.plot.layout_problems finds nothing wrong with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from repalign import plot
from repalign.metrics import align_layers
from repalign.stats import permutation_test, seed_contrast, stats_columns

OUT = Path(__file__).resolve().parent / "figures"
N = 80  # samples
K = 5

ESMFOLD2 = ([f"esmc.{i}" for i in range(31)] + ["input_embedder.single", "input_embedder.pair", "language_model",
            "lm_encoder.0", "lm_encoder.1"] + [f"folding_trunk.{i}" for i in range(48)]
            + ["parcae", "distogram", "diffusion.single", "confidence.single"])
LM = ["embeddings"] + [f"layer.{i}" for i in range(29)]


def layers(rng, base, names, noise):
    """One (N, 16) matrix per layer: the shared signal ``base`` plus noise of the given level."""
    return [base + level * rng.standard_normal(base.shape) for level in noise(len(names))]


def pair_table(a, b, names_a, names_b, model_a, model_b, permutations=0, seed=0):
    frame = align_layers(a, b, metric="mknn", k=K, names_a=names_a, names_b=names_b).to_frame(model_a, model_b)
    if permutations:
        result = permutation_test(a, b, "mknn", permutations=permutations, seed=seed, k=K)
        frame = pd.concat([frame, stats_columns(result)], axis=1)
    return frame


def save(fig, name: str) -> None:
    problems = plot.layout_problems(fig)
    if problems:
        raise SystemExit(f"{name}: {problems[0]}")
    plot.save_figure(fig, OUT / name, "png")


def hidden_best(frame: pd.DataFrame) -> pd.DataFrame:
    """``best`` over the hidden layers, as compare's default layer family sets it for networks that
    declare 'embeddings' as their input layer."""
    hidden = (frame["layer_a"] != "embeddings") & (frame["layer_b"] != "embeddings")
    return frame.assign(best=frame.index == frame["score"].where(hidden).idxmax())


def controls_table(rng, base, seeds=5):
    """A trained pair (two networks sharing the signal) and ``seeds`` controls (the same layer counts,
    the signal drowned by their random weights), with contrast rows as compare --controls writes them."""
    names_a, names_b = LM[:9], LM[:13]
    trained = pair_table(layers(rng, base, names_a, lambda n: 0.3 + np.linspace(0, 1.5, n)),
                         layers(rng, base, names_b, lambda n: 0.3 + np.linspace(0, 1.5, n)),
                         names_a, names_b, "antiberty", "iglm").assign(level="trained").pipe(hidden_best)
    controls = [pair_table(layers(rng, base, names_a, lambda n: np.full(n, 3.0)), layers(rng, base, names_b, lambda n: np.full(n, 3.0)),
                           names_a, names_b, f"antiberty@random:{s}", f"iglm@random:{s}")
                .assign(level="random_init", control_seed=s).pipe(hidden_best)
                for s in range(seeds)]
    scores = np.stack([c["score"].to_numpy() for c in controls])
    rows = []
    for i, x in enumerate(trained["score"]):
        c = seed_contrast(float(x), scores[:, i])
        rows.append(dict(control_mean=c.control_mean, control_sd=c.control_sd, n_seeds=seeds, difference=c.difference,
                         p_value=c.p_value, min_p_value=c.min_p_value))
    contrast = pd.concat([trained.assign(level="contrast", best=False), pd.DataFrame(rows)], axis=1)
    best = trained["best"].to_numpy()
    head = seed_contrast(float(trained["score"][best].iloc[0]), np.array([c["score"][c["best"]].iloc[0] for c in controls]))
    headline = contrast[best].assign(best=True, control_mean=head.control_mean, control_sd=head.control_sd,
                                     difference=head.difference, p_value=head.p_value)
    return pd.concat([trained, *controls, contrast, headline], ignore_index=True)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((N, 16))
    # ESMFold2 closest to the signal in the middle of the trunk, the LM in its middle layers
    fold = layers(rng, base, ESMFOLD2, lambda n: 0.25 + 2.5 * np.abs(np.linspace(0, 1, n) - 0.6))
    lm = layers(rng, base, LM, lambda n: 0.25 + 2.5 * np.abs(np.linspace(0, 1, n) - 0.5))
    heat = pair_table(fold, lm, ESMFOLD2, LM, "esmfold2", "esm2-650m", permutations=99)
    save(plot.layer_heatmap(heat), "layers")
    save(plot.controls_heatmap(controls_table(rng, base), width="double"), "controls")

    # a reference model and two families at several sizes: larger models hold more of the signal
    reference = layers(rng, base, LM, lambda n: np.full(n, 0.3))
    models = {"esm2-8m": 1.0, "esm2-35m": 0.75, "esm2-150m": 0.55, "esmc-300m": 0.45, "esmc-600m": 0.3}
    tables = []
    feats = {name: layers(rng, base, LM[:12], lambda n, s=scale: s + 0.6 * np.abs(np.linspace(-1, 1, n)))
             for name, scale in models.items()}
    names = LM[:12]
    feats["esmfold2"] = layers(rng, base, names, lambda n: np.full(n, 0.4))
    all_models = list(feats)
    for i, a in enumerate(all_models):
        for b in all_models[i + 1:]:
            tables.append(pair_table(feats[a], feats[b], names, names, a, b))
    tables.append(pair_table(reference, feats["esmfold2"], LM, names, "reference-lm", "esmfold2"))
    table = pd.concat(tables, ignore_index=True)
    save(plot.model_matrix(table), "models")
    save(plot.depth_profile(table, model_b="esmfold2", models=list(models)), "depth")
    save(plot.size_scaling(table, model_b="esmfold2"), "size")
    for path in sorted(OUT.glob("*.png")):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
