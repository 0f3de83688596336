"""Study: does IgFold's structure module align with the language model it is conditioned on?

IgFold predicts antibody structures from AntiBERTy embeddings (an LM-conditioned structure
predictor, the same design as ESMFold2). We compare, per antibody (mean-pooled over residues),
every IgFold stage (its AntiBERTy input, node projection, graph transformers, template and
structure IPA blocks) with every layer of AntiBERTy (the LM it is conditioned on) and of IgLM (an
antibody LM it never saw), with 200-permutation p-values (best pair max-T corrected), subsampling
intervals, and random-initialised controls of all three models (same architecture, weights
re-initialised with a fixed seed).

    python -m analyses.antibody_models            # full study (N=48 antibodies)
    python -m analyses.antibody_models --quick    # smoke version (N=5), for tests
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import pandas as pd

from analyses.common import (
    RANDOM_SUFFIX,
    base_parser,
    best_pairs,
    cache_dir,
    depth_figure,
    extract_models,
    markdown_table,
    output_dir,
    pair_heatmaps,
    pooled_layers,
    run_main,
    scored_pair,
    write_csv,
)
from repalign.errors import RepalignError

STUDY = "antibody_models"
MODELS = ("antiberty", "iglm", "igfold")
PAIRS = (("igfold", "antiberty"), ("igfold", "iglm"), ("antiberty", "iglm"))
FULL = dict(n=48, k=5, permutations=200, n_subsamples=100)
QUICK = dict(n=5, k=2, permutations=20, n_subsamples=10)
METRICS = ("mknn", "cka")


def main(argv: Sequence[str] | None = None) -> int:
    args = base_parser(STUDY, __doc__.splitlines()[0]).parse_args(argv)
    cfg = QUICK if args.quick else FULL
    out = output_dir(STUDY, args.out)
    cache = cache_dir(out, args.cache) / ("features-quick.h5" if args.quick else "features.h5")
    start = time.perf_counter()

    from embeddings_cache import Cache, align_ids
    from repalign.datasets.antibodies import antibody_records

    records = antibody_records(cfg["n"])
    models = [m for name in MODELS for m in (name, name + RANDOM_SUFFIX)]
    print(f"extracting {len(records)} antibodies with {', '.join(models)} into {cache}", flush=True)
    seconds = extract_models(records, models, cache, args.seed)

    ids = [r.id for r in records]
    tables = []
    with Cache(cache) as c:
        for level, suffix in (("trained", ""), ("random_init", RANDOM_SUFFIX)):
            for a, b in PAIRS:
                ma, mb = a + suffix, b + suffix
                shared = align_ids(c, ma, c, mb)
                if sorted(shared) != sorted(ids):
                    raise RepalignError(f"{ma} and {mb} in {cache} do not share all {len(ids)} antibodies; delete the cache folder and rerun")
                names_a, mats_a = pooled_layers(c, ma, ids)
                names_b, mats_b = pooled_layers(c, mb, ids)
                for metric in METRICS:
                    params = {"k": cfg["k"]} if metric == "mknn" else {}
                    frame = scored_pair(mats_a, mats_b, names_a, names_b, ma, mb, metric,
                                        permutations=cfg["permutations"], n_subsamples=cfg["n_subsamples"],
                                        seed=args.seed, **params)
                    frame.insert(0, "level", level)
                    tables.append(frame)
                print(f"  scored {ma} vs {mb}", flush=True)
    table = pd.concat(tables, ignore_index=True)
    write_csv(table, out / "scores.csv")
    best = best_pairs(table)
    write_csv(best, out / "best_pairs.csv")

    figures = [
        pair_heatmaps(table, [("igfold", "antiberty"), ("igfold" + RANDOM_SUFFIX, "antiberty" + RANDOM_SUFFIX)],
                      "mutual_knn", out, "heatmap_igfold_antiberty"),
        pair_heatmaps(table, [("igfold", "iglm"), ("igfold" + RANDOM_SUFFIX, "iglm" + RANDOM_SUFFIX)],
                      "mutual_knn", out, "heatmap_igfold_iglm"),
        depth_figure(table, "igfold", ["antiberty", "iglm"], "mutual_knn", out, "igfold_depth_mknn"),
        depth_figure(table, "igfold", ["antiberty", "iglm"], "cka", out, "igfold_depth_cka"),
    ]
    elapsed = time.perf_counter() - start
    write_readme(out, table, best, cfg, args, seconds, elapsed, figures)
    print(f"wrote {out} in {elapsed:.0f} s")
    return 0


def _row(table: pd.DataFrame, level: str, metric: str, a: str, b: str, layer_a: str, layer_b: str) -> pd.Series:
    suffix = RANDOM_SUFFIX if level == "random_init" else ""
    sel = table[(table.level == level) & (table.metric == metric) & (table.model_a == a + suffix)
                & (table.model_b == b + suffix) & (table.layer_a == layer_a) & (table.layer_b == layer_b)]
    return sel.iloc[0]


def write_readme(out, table, best, cfg, args, seconds, elapsed, figures) -> None:
    command = "python -m analyses.antibody_models" + (" --quick" if args.quick else "")
    show = best[["level", "metric", "model_a", "model_b", "layer_a", "layer_b", "score", "ci_low", "ci_high",
                 "chance_level", "null_mean", "p_value_best"]]

    def fmt(level, metric, a, b, la, lb):
        r = _row(table, level, metric, a, b, la, lb)
        return f"{r.score:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}], p = {r.p_value:.3g}"

    last_ipa = [n for n in table.layer_a.unique() if n.startswith("structure_ipa.")][-1]
    last_lm = "layer.7"
    iglm_last = "layer.3"
    lines_reading = []
    for metric, label in (("mutual_knn", f"mutual kNN (k={cfg['k']})"), ("cka", "linear CKA")):
        lines_reading.append(
            f"- {label}: IgFold's last structure block ({last_ipa}) vs AntiBERTy's last layer: trained "
            f"{fmt('trained', metric, 'igfold', 'antiberty', last_ipa, last_lm)}; random-init control "
            f"{fmt('random_init', metric, 'igfold', 'antiberty', last_ipa, last_lm)}. "
            f"Vs IgLM's last layer: trained {fmt('trained', metric, 'igfold', 'iglm', last_ipa, iglm_last)}; "
            f"control {fmt('random_init', metric, 'igfold', 'iglm', last_ipa, iglm_last)}."
        )
    trained = best[(best.level == "trained")].set_index(["metric", "model_a", "model_b"]).score
    control = best[(best.level == "random_init")].copy()
    control["model_a"] = control.model_a.str.removesuffix(RANDOM_SUFFIX)
    control["model_b"] = control.model_b.str.removesuffix(RANDOM_SUFFIX)
    control = control.set_index(["metric", "model_a", "model_b"]).score
    gap = (trained - control).rename("trained minus control").reset_index()
    text = f"""# Antibody models: AntiBERTy vs IgLM vs IgFold's structure-module stages

**Question.** IgFold predicts antibody structures from AntiBERTy embeddings. Does the
representation of its structure module (graph transformers, template and structure IPA blocks)
still align with the language model it is conditioned on (AntiBERTy), and with an antibody language
model it never saw (IgLM)? How much of that alignment would random-initialised networks of the same
architectures show on the same antibodies?

**Command** (offline, CPU; {elapsed / 60:.1f} min for this run, which skipped the extraction of models already in `.cache/`: see the extraction times below; a run from scratch adds them):

    {command}

**Setup.** {cfg['n']} antibodies (`repalign.datasets.antibodies.antibody_records({cfg['n']})`: the 5
sequences the antibody packages ship, then germline heavy:light Fv pairs), every layer of each model,
mean-pooled over residues (heavy then light chain). Metrics: mutual k-nearest neighbours
(`mutual_knn`, k={cfg['k']}, chance level k/(N-1)) and linear CKA, on l2-normalised rows.
Statistics from `repalign.stats`: {cfg['permutations']} permutations of the antibodies (p-value per
layer pair; `p_value_best` tests the best pair against the per-permutation maximum over all pairs),
and {cfg['n_subsamples']} subsamples of 80 % of the antibodies for 95 % intervals. Controls
(`<model>@random`): the same adapters with every weight re-initialised with seed {args.seed}
(`analyses.common.randomized`; PyTorch default initialisation, tokenisation and buffers kept);
IgFold's control re-initialises its AntiBERTy too. Extraction time (s, this run; 0 = cached):
{', '.join(f'{m} {s}' for m, s in seconds.items())}.

**Outputs.** `scores.csv` (every layer pair, metric and level, with p_value, null_mean, calibrated,
ci_low, ci_high, p_value_best), `best_pairs.csv`, and the figures
{', '.join(f'`{p.name}`' for p in figures)} (heatmaps: trained left, control right, grey hatching
= p >= 0.05, each panel with its own colour scale, so compare the numbers, not the colours; depth plots: IgFold layer vs its best-matching layer of each LM, shaded = interval).

## Best layer pair per model pair

{markdown_table(show)}

## Trained minus control (best-pair score)

{markdown_table(gap)}

## Per IgFold layer: best match in each language model (mutual kNN, k={cfg['k']})

Each cell is the best score of that IgFold layer over all layers of the LM, with its interval.
`antiberty` is IgFold's input (the AntiBERTy embedding), `node_proj` its linear projection; the
structure module proper is `graph.*`, `template_ipa` and `structure_ipa.*`.

{markdown_table(per_layer(table, "mutual_knn"))}

## Reading

{chr(10).join(lines_reading)}

{interpretation(table, best, gap, cfg)}
"""
    (out / "README.md").write_text(text)


def per_layer(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """IgFold layer x (LM, trained/control): best score over the LM's layers, 'score [low, high]'."""
    columns = {}
    layers = None
    for ref in ("antiberty", "iglm"):
        for level, suffix in (("trained", ""), ("random_init", RANDOM_SUFFIX)):
            rows = table[(table.metric == metric) & (table.model_a == "igfold" + suffix) & (table.model_b == ref + suffix)]
            best = rows.loc[rows.groupby("layer_a", sort=False)["score"].idxmax()]
            layers = list(best.layer_a)
            label = f"vs {ref}" + (" (control)" if suffix else "")
            columns[label] = [f"{r.score:.3f} [{r.ci_low:.2f}, {r.ci_high:.2f}] ({r.layer_b})" for r in best.itertuples()]
    return pd.DataFrame({"igfold layer": layers, **columns})


def interpretation(table, best, gap, cfg) -> str:
    """Sentences drawn from the numbers of this run (so a rerun with other data stays honest)."""
    parts = []
    t = table[(table.level == "trained") & (table.metric == "mutual_knn")]
    r = table[(table.level == "random_init") & (table.metric == "mutual_knn")]
    sig_t = (t.p_value < 0.05).mean()
    sig_r = (r.p_value < 0.05).mean()
    parts.append(
        f"- Significance: {100 * sig_t:.0f} % of trained layer pairs and {100 * sig_r:.0f} % of control layer "
        f"pairs have mutual-kNN p < 0.05 (uncorrected; N = {cfg['n']}, smallest attainable p = "
        f"{1 / (cfg['permutations'] + 1):.3g})."
    )
    g = gap[gap.metric == "mutual_knn"].set_index(["model_a", "model_b"])["trained minus control"]
    lower = [f"{a} vs {b}" for (a, b), v in g.items() if v <= 0.02]
    if lower:
        parts.append(
            f"- The random-init controls align as much as (or more than) the trained models for {', '.join(lower)} "
            "(best-pair mutual kNN, within 0.02 or above). Random networks on the same inputs align strongly "
            "through the input statistics: the mean-pooled features of an untrained embedding layer already "
            "encode amino-acid composition and length, which every model then sees. Such alignment is not "
            "evidence of shared learnt structure."
        )
    higher = [f"{a} vs {b} (+{v:.3f})" for (a, b), v in g.items() if v > 0.02]
    if higher:
        parts.append(f"- Trained models align above their controls for {', '.join(higher)} (best-pair mutual kNN).")
    structure = [n for n in table.layer_a.unique() if n.startswith(("graph.", "template_ipa", "structure_ipa."))]
    for ref in ("antiberty", "iglm"):
        tr = t[(t.model_a == "igfold") & (t.model_b == ref) & t.layer_a.isin(structure)]
        co = r[(r.model_a == "igfold" + RANDOM_SUFFIX) & (r.model_b == ref + RANDOM_SUFFIX) & r.layer_a.isin(structure)]
        if len(tr) and len(co):
            bt, bc = tr.loc[tr.score.idxmax()], co.loc[co.score.idxmax()]
            parts.append(
                f"- Structure module only (graph, template and structure IPA blocks) vs {ref}: best trained pair "
                f"{bt.layer_a} ~ {bt.layer_b} = {bt.score:.3f} [{bt.ci_low:.3f}, {bt.ci_high:.3f}], best control pair "
                f"{bc.layer_a} ~ {bc.layer_b} = {bc.score:.3f} [{bc.ci_low:.3f}, {bc.ci_high:.3f}] "
                f"(chance {bt.chance_level:.3f}).")
    ig = table[(table.model_a == "igfold") & (table.metric == "mutual_knn")]
    same_as_proj = [n for n in ("graph.0", "graph.1", "graph.2", "graph.3")
                    if np.array_equal(ig[ig.layer_a == n].score.to_numpy(), ig[ig.layer_a == "node_proj"].score.to_numpy())]
    if same_as_proj:
        parts.append(
            f"- IgFold's {', '.join(same_as_proj)} score exactly like `node_proj`: in this checkpoint those graph-transformer "
            "blocks return their input node features unchanged (checked by hooking the blocks directly: the "
            "output equals the input to the bit), so only the last graph block, the template IPA and the structure "
            "IPA transform the node features.")
    parts.append(
        "- IgFold's `antiberty` stage is the AntiBERTy embedding IgFold consumes (from the antiberty 1.x "
        "package with the 0.1.3 weights), so its alignment with AntiBERTy's last layer is a sanity check, "
        "not a finding; the question is how much of it survives through the graph and IPA blocks."
    )
    parts.append(
        f"- Caveats: N = {cfg['n']} antibodies, all germline-like, so the spread of the data is narrow and "
        "intervals are wide; mean pooling hides per-residue structure; one seed per control."
    )
    return "\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
