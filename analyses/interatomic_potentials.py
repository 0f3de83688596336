"""Study: do interatomic potentials trained on energies and forces align with each other?

CHGNet (0.3.0, 0.2.0, r2SCAN), SevenNet (0, l3i5, MF-0) and DIEP on 40 bulk crystals, and ANI-1x
with CHGNet 0.3.0 on 30 small molecules; every layer of each model, compared per structure (features
mean-pooled over atoms) and per atom (token features: same structures, same atom order, rows paired
atom by atom), with permutation p-values, subsampling intervals and random-initialised controls.

    python -m analyses.interatomic_potentials            # full study
    python -m analyses.interatomic_potentials --quick    # smoke version, for tests
"""

from __future__ import annotations

import itertools
import time
from typing import Sequence

import numpy as np
import pandas as pd

from analyses.common import (
    RANDOM_SUFFIX,
    base_parser,
    best_pairs,
    cache_dir,
    check_same_tokens,
    extract_models,
    markdown_table,
    output_dir,
    pair_heatmaps,
    pooled_layers,
    run_main,
    save_figure,
    scored_pair,
    token_layers,
    write_csv,
)

STUDY = "interatomic_potentials"
CRYSTAL_MODELS = ("chgnet-0.3.0", "chgnet-0.2.0", "chgnet-r2scan", "sevennet-0", "sevennet-l3i5", "sevennet-mf-0", "diep")
MOLECULE_MODELS = ("ani-1x", "chgnet-0.3.0")
FULL = dict(crystals=40, molecules=30, k=5, k_atoms=10, permutations=200, n_subsamples=50,
            crystal_models=CRYSTAL_MODELS)
QUICK = dict(crystals=10, molecules=8, k=3, k_atoms=5, permutations=20, n_subsamples=5,
             crystal_models=("chgnet-0.3.0", "diep"))
METRICS = ("mknn", "cka")


def _pairs(models: Sequence[str]) -> list[tuple[str, str]]:
    return list(itertools.combinations(models, 2))


def score_set(cache_path, records, models, dataset, cfg, seed) -> list[pd.DataFrame]:
    """Every model pair (trained, and controls against controls), per structure and per atom."""
    from embeddings_cache import Cache

    ids = [r.id for r in records]
    frames = []
    with Cache(cache_path) as c:
        for level, suffix in (("trained", ""), ("random_init", RANDOM_SUFFIX)):
            for a, b in _pairs(models):
                ma, mb = a + suffix, b + suffix
                na, pa = pooled_layers(c, ma, ids)
                nb, pb = pooled_layers(c, mb, ids)
                ta_names, ta, off_a = token_layers(c, ma, ids)
                tb_names, tb, off_b = token_layers(c, mb, ids)
                check_same_tokens(off_a, off_b, ma, mb)
                for granularity, mats_a, mats_b, names_a, names_b, k in (
                    ("structure", pa, pb, na, nb, cfg["k"]),
                    ("atom", ta, tb, ta_names, tb_names, cfg["k_atoms"]),
                ):
                    for metric in METRICS:
                        params = {"k": k} if metric == "mknn" else {}
                        frame = scored_pair(mats_a, mats_b, names_a, names_b, ma, mb, metric,
                                            permutations=cfg["permutations"], n_subsamples=cfg["n_subsamples"],
                                            seed=seed, **params)
                        frame.insert(0, "granularity", granularity)
                        frame.insert(0, "level", level)
                        frame.insert(0, "dataset", dataset)
                        frames.append(frame)
                print(f"  scored {dataset}: {ma} vs {mb}", flush=True)
    return frames


def main(argv: Sequence[str] | None = None) -> int:
    args = base_parser(STUDY, __doc__.splitlines()[0]).parse_args(argv)
    cfg = QUICK if args.quick else FULL
    out = output_dir(STUDY, args.out)
    cdir = cache_dir(out, args.cache)
    tag = "-quick" if args.quick else ""
    start = time.perf_counter()

    from repalign.datasets.structures import crystal_records, molecule_records

    crystals = crystal_records(cfg["crystals"])
    molecules = molecule_records(cfg["molecules"])
    sets = (("crystals", crystals, cfg["crystal_models"], cdir / f"crystals{tag}.h5"),
            ("molecules", molecules, MOLECULE_MODELS, cdir / f"molecules{tag}.h5"))
    seconds, frames, atoms = {}, [], {}
    for dataset, records, models, path in sets:
        atoms[dataset] = sum(r.size for r in records)
        print(f"extracting {len(records)} {dataset} ({atoms[dataset]} atoms) into {path}", flush=True)
        names = [m for name in models for m in (name, name + RANDOM_SUFFIX)]
        seconds.update({f"{m} ({dataset})": s for m, s in
                        extract_models(records, names, path, args.seed, tokens=["all"]).items()})
        frames += score_set(path, records, models, dataset, cfg, args.seed)
    table = pd.concat(frames, ignore_index=True)
    write_csv(table, out / "scores.csv")
    best = best_pairs(table, by=("dataset", "granularity", "level", "metric", "model_a", "model_b"))
    write_csv(best, out / "best_pairs.csv")

    figures = [matrix_figure(best, "crystals", g, out) for g in ("structure", "atom")]
    a, b = cfg["crystal_models"][0], (cfg["crystal_models"][-1] if args.quick else "sevennet-0")
    for dataset, (ma, mb) in (("crystals", (a, b)), ("molecules", MOLECULE_MODELS)):
        for g in ("structure", "atom"):
            sub = table[(table.dataset == dataset) & (table.granularity == g)]
            figures.append(pair_heatmaps(sub, [(ma, mb), (ma + RANDOM_SUFFIX, mb + RANDOM_SUFFIX)], "mutual_knn",
                                         out, f"heatmap_{dataset}_{g}_{ma}_{mb}"))
    elapsed = time.perf_counter() - start
    elemental = sum(len(set(r.payload.get_chemical_symbols())) == 1 for r in crystals)
    write_readme(out, table, best, cfg, args, seconds, elapsed, figures, atoms, len(crystals), len(molecules), elemental)
    print(f"wrote {out} in {elapsed:.0f} s")
    return 0


def matrix_figure(best: pd.DataFrame, dataset: str, granularity: str, out):
    """Two model x model matrices of best-pair mutual kNN: trained (left) and random-init controls (right)."""
    from matplotlib.figure import Figure
    from repalign.plot import SEQUENTIAL_CMAP, style

    sub = best[(best.dataset == dataset) & (best.granularity == granularity) & (best.metric == "mutual_knn")]
    with style():
        fig = Figure(figsize=(7.2, 3.4), layout="constrained")
        axes = fig.subplots(1, 2)
        for ax, level in zip(axes, ("trained", "random_init")):
            rows = sub[sub.level == level]
            models = list(dict.fromkeys([m.removesuffix(RANDOM_SUFFIX) for m in (*rows.model_a, *rows.model_b)]))
            mat = np.full((len(models), len(models)), np.nan)
            np.fill_diagonal(mat, 1.0)
            for r in rows.itertuples():
                i, j = models.index(r.model_a.removesuffix(RANDOM_SUFFIX)), models.index(r.model_b.removesuffix(RANDOM_SUFFIX))
                mat[i, j] = mat[j, i] = r.score
            image = ax.imshow(mat, vmin=0, vmax=1, cmap=SEQUENTIAL_CMAP)
            for i in range(len(models)):
                for j in range(len(models)):
                    if i != j and np.isfinite(mat[i, j]):
                        ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=5,
                                color="white" if mat[i, j] < 0.6 else "black")
            ax.set_xticks(range(len(models)), models, rotation=60, ha="right", fontsize=6)
            ax.set_yticks(range(len(models)), models, fontsize=6)
            ax.set_title(f"{'trained' if level == 'trained' else 'random-init controls'}", fontsize=7)
        fig.colorbar(image, ax=axes, shrink=0.7, label="mutual kNN, best layer pair")
        fig.suptitle(f"{dataset}, per {granularity}", fontsize=7)
    return save_figure(fig, out, f"matrix_{dataset}_{granularity}")[0]


def write_readme(out, table, best, cfg, args, seconds, elapsed, figures, atoms, n_crystals, n_molecules,
                 elemental) -> None:
    command = "python -m analyses.interatomic_potentials" + (" --quick" if args.quick else "")
    mk = best[best.metric == "mutual_knn"]
    show = mk[["dataset", "granularity", "level", "model_a", "model_b", "layer_a", "layer_b", "score", "ci_low",
               "ci_high", "chance_level", "p_value_best"]]
    summary = (mk.groupby(["dataset", "granularity", "level"])["score"].agg(["mean", "min", "max"])
               .round(3).reset_index())
    summary.columns = ["dataset", "granularity", "level", "mean best score", "min", "max"]
    cka = best[best.metric == "cka"].groupby(["dataset", "granularity", "level"])["score"].mean().round(3)
    summary["mean best CKA"] = [cka.get((d, g, lv), np.nan) for d, g, lv in
                                zip(summary.dataset, summary.granularity, summary.level)]
    text = f"""# Interatomic potentials: CHGNet, SevenNet, DIEP and ANI-1x, per structure and per atom

**Question.** Do machine-learned interatomic potentials trained on energies and forces (different
architectures, training sets and functionals) learn aligned representations of the same structures
and the same atoms? How does their alignment compare with random-initialised controls of the same
architectures?

**Command** (offline, CPU; {elapsed / 60:.1f} min for this run, which skipped the extraction of models already in `.cache/`: see the extraction times below; a run from scratch adds them):

    {command}

**Setup.** Crystals: {n_crystals} bulk crystals ({atoms['crystals']} atoms;
`repalign.datasets.structures.crystal_records`) with {', '.join(cfg['crystal_models'])}.
Molecules: {n_molecules} closed-shell G2 molecules ({atoms['molecules']} atoms;
`molecule_records`) with {', '.join(MOLECULE_MODELS)}. Every layer of each model. Per structure:
atom features mean-pooled; per atom: the token features of the same atoms in the same order, rows
paired atom by atom (checked: identical atom counts per structure). Metrics: mutual kNN (k={cfg['k']}
per structure, k={cfg['k_atoms']} per atom) and linear CKA, on l2-normalised rows; {cfg['permutations']}
permutations (p per layer pair; `p_value_best` max-T corrected for the search over layer pairs) and
{cfg['n_subsamples']} subsamples of 80 % for 95 % intervals. Controls (`<model>@random`): weights
re-initialised with seed {args.seed} (`analyses.common.randomized`), compared with each other.
Extraction time (s; 0 = cached): {', '.join(f'{m} {s}' for m, s in seconds.items())}.

**Outputs.** `scores.csv` (every layer pair, with dataset, granularity, level, p_value, null_mean,
calibrated, ci_low, ci_high, p_value_best), `best_pairs.csv`, figures
{', '.join(f'`{p.name}`' for p in figures)} (matrices: best-pair mutual kNN on one 0-1 scale;
heatmaps: trained left, control right, grey hatching = p >= 0.05, each panel with its own colour
scale, so compare the numbers, not the colours).

## Summary of best-pair mutual kNN over model pairs

{markdown_table(summary)}

## Best layer pair per model pair (mutual kNN)

{markdown_table(show)}

## Reading

{interpretation(table, best, cfg, elemental, n_crystals)}
"""
    (out / "README.md").write_text(text)


def interpretation(table, best, cfg, elemental, n_crystals) -> str:
    mk = best[best.metric == "mutual_knn"]
    parts = []
    crystal = mk[(mk.dataset == "crystals") & (mk.level == "trained") & (mk.granularity == "structure")]
    controls = mk[(mk.dataset == "crystals") & (mk.level == "random_init") & (mk.granularity == "structure")].score
    if len(crystal) and len(controls):
        at_embedding = int(((crystal.layer_a == "embedding") & (crystal.layer_b == "embedding")).sum())
        parts.append(
            f"- Crystals: for {at_embedding} of {len(crystal)} trained model pairs the best-aligned layers are both "
            f"models' `embedding` layers (per-element embeddings, before any message passing), and "
            f"{elemental} of the {n_crystals} crystals contain a single element. The cross-model alignment on "
            "this set is therefore mostly agreement on which elements are chemically alike, learnt from "
            "energies and forces; deeper layers (which add the local environment) align less. The controls "
            f"(independent random networks) score {controls.min():.2f}-{controls.max():.2f}, above the chance "
            f"level k/(N-1) = {cfg['k'] / (n_crystals - 1):.3f} because the structures' compositions and "
            "geometries already cluster them.")
    for dataset in mk.dataset.unique():
        for g in ("structure", "atom"):
            t = mk[(mk.dataset == dataset) & (mk.granularity == g) & (mk.level == "trained")].score
            r = mk[(mk.dataset == dataset) & (mk.granularity == g) & (mk.level == "random_init")].score
            if t.empty or r.empty:
                continue
            if r.mean() > t.mean() + 0.05:
                verdict = "the random-init controls align MORE than the trained models"
            elif r.mean() >= t.mean() - 0.05:
                verdict = "the random-init controls align about as much as the trained models"
            else:
                verdict = "the trained models align more than their random-init controls"
            parts.append(f"- {dataset}, per {g}: mean best-pair mutual kNN {t.mean():.3f} trained vs "
                         f"{r.mean():.3f} for controls: {verdict}.")
    parts.append(
        "- Random networks on the same inputs align strongly through the input statistics: the first "
        "layer of every potential is an embedding of the element (and neighbour distances), so two "
        "untrained networks already group atoms by element and coordination, and structures by "
        "composition. Only the part of the alignment above the controls says something about what "
        "training on energies and forces taught the models."
    )
    parts.append(
        "- Per-atom rows are not independent samples: atoms of one structure (and symmetry-equivalent "
        "atoms, which have identical features in a perfect crystal) share neighbourhoods, so per-atom "
        "p-values from atom permutations are optimistic; per-structure results are the safer reading."
    )
    parts.append(
        "- Caveats: small and simple data sets (bulk primitive cells of 1-5 atoms, G2 molecules); "
        "one seed per control; mean pooling over atoms."
    )
    return "\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
