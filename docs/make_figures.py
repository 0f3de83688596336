"""Draw the example figures of docs/figures.md: one PNG of each kind, at single-column width.

    python docs/make_figures.py            # writes docs/figures/{layers,models,depth,size}.png

The features are synthetic (a shared signal plus noise whose level changes with depth), named like
real models so the figures show real layer counts and stage names: ESMFold2's 88 stored layers
against a 30-layer protein language model. The scores, p-values and chance levels are computed by
repalign itself (align_layers, permutation_test), so the figures are what a user gets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from repalign import plot
from repalign.metrics import align_layers
from repalign.stats import permutation_test, stats_columns

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


def main() -> None:
    OUT.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((N, 16))
    # ESMFold2 closest to the signal in the middle of the trunk, the LM in its middle layers
    fold = layers(rng, base, ESMFOLD2, lambda n: 0.25 + 2.5 * np.abs(np.linspace(0, 1, n) - 0.6))
    lm = layers(rng, base, LM, lambda n: 0.25 + 2.5 * np.abs(np.linspace(0, 1, n) - 0.5))
    heat = pair_table(fold, lm, ESMFOLD2, LM, "esmfold2", "esm2-650m", permutations=99)
    plot.save_figure(plot.layer_heatmap(heat), OUT / "layers", "png")

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
    plot.save_figure(plot.model_matrix(table), OUT / "models", "png")
    plot.save_figure(plot.depth_profile(table, model_b="esmfold2", models=list(models)), OUT / "depth", "png")
    plot.save_figure(plot.size_scaling(table, model_b="esmfold2"), OUT / "size", "png")
    for path in sorted(OUT.glob("*.png")):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
