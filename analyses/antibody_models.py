"""Study: do generative and structure-supervised antibody models align beyond sequence baselines?

AntiBERTy (masked language model of antibodies), IgLM (autoregressive generative model of
antibodies), UniRep (autoregressive model of general proteins) and IgFold's structure module
(supervised by structures; conditioned on AntiBERTy) on 1,000 paired heavy:light antibodies sampled
from OLGA's human B-cell V(D)J recombination models with somatic point mutations
(``repalign.datasets.antibodies.repertoire_records``), against the sequence baselines
``aa-composition``, ``kmer-composition``, ``blosum62`` and ``onehot``, with random-initialised
controls (``NAME@random:SEED``): 20 seeds for the sequence models, the first 5 on all antibodies and
the rest on IgFold's, and 5 for IgFold. IgFold runs on the first ``igfold_subset`` antibodies (its CPU
cost). Every pair of models planned on all antibodies is scored on all of them, and every pair again
on IgFold's subset (the primary analysis compares every pair at one N). IgFold's ``antiberty``
stage is its input (AntiBERTy's last layer) and is left out of every headline.

    python -m analyses.antibody_models                  # full study (extraction resumes from .cache/)
    python -m analyses.antibody_models --extract-only   # extraction only, resumable
    python -m analyses.antibody_models --quick          # smoke version, for tests
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Sequence

import pandas as pd

from analyses import datasets
from analyses.common import (
    CONTROL_SEEDS,
    Primary,
    finish,
    model_plans,
    print_primaries,
    run_main,
    score_pooled,
    study_pairs,
    study_setup,
)

STUDY = "antibody_models"
MODELS = ("antiberty", "iglm", "igfold", "unirep-1900")
BASELINES: dict[str, dict] = {"aa-composition": {}, "kmer-composition": {}, "blosum62": {}, "onehot": {}}
#: IgFold's stages before its structure module, not findings (excluded from headlines and contrasts): its input
#: ``antiberty`` (AntiBERTy's last layer), ``node_proj`` (a linear projection of it) and ``graph.0``-``graph.2``, which
#: return node_proj's features unchanged in the trained checkpoint (their gated residuals pass the input through)
INPUT_STAGES = {"igfold": ("antiberty", "node_proj", "graph.0", "graph.1", "graph.2")}
#: mutual kNN with a permutation test; unbiased CKA with a subsampling interval (no permutation test: its cost)
METRICS = ("mknn", "unbiased_cka")
#: control seeds per model: 20 for the sequence models, so their contrasts can reach p = 1/21 < 0.05, and 5
#: for IgFold (about 20 minutes per seed on its 200 antibodies). The sequence models' seeds beyond the first
#: 5 are extracted on IgFold's antibodies only, the primary analysis's N (a fifth of the cost of all 1,000)
SEEDS = {"antiberty": 20, "iglm": 20, "unirep-1900": 20, "igfold": len(CONTROL_SEEDS)}
FULL = dict(models=MODELS, seeds=SEEDS, igfold_subset=200, k=10, permutations={"mknn": 199, "unbiased_cka": 0},
            ci=0.95, n_subsamples=100)  # 100: the toolkit's default, whose CKA intervals cover (docs/statistics.md)
QUICK = dict(models=("antiberty", "iglm", "igfold", "unirep-64"), seeds=(0, 1), igfold_subset=5, k=2,
             permutations={"mknn": 20, "unbiased_cka": 20}, ci=0.95,
             n_subsamples=5)

#: (dataset, model_a, model_b) of the layer x layer heatmaps
HEATMAPS = [("antibodies", "igfold", "antiberty")]


def plans_for(cfg):
    """The study's plans: IgFold and its controls on its subset, and the controls of seeds beyond the
    first ``len(CONTROL_SEEDS)`` on that subset too (:data:`SEEDS`)."""
    plans = model_plans(cfg["models"], BASELINES, cfg["seeds"], subsets={"igfold": cfg["igfold_subset"]})
    return [replace(p, subset=cfg["igfold_subset"]) if p.level == "random_init" and p.seed >= len(CONTROL_SEEDS)
            else p for p in plans]


def trained_pairs(models):
    """Every pair of models, IgFold always on side a (its stages are the rows of its tables)."""
    others = [m for m in models if m != "igfold"]
    return [("igfold", m) for m in others if "igfold" in models] + list(itertools.combinations(others, 2))


def input_stage_rows(table: pd.DataFrame) -> list[bool]:
    """True where either side is one of IgFold's input stages (:data:`INPUT_STAGES`)."""
    def flag(models, layers):
        return [layer in INPUT_STAGES.get(model.split("@")[0], ()) for model, layer in zip(models, layers)]

    return [a or b for a, b in zip(flag(table.model_a, table.layer_a), flag(table.model_b, table.layer_b))]


def without_input_stages(table: pd.DataFrame) -> pd.DataFrame:
    """The rows headlines may come from: with its input stages, IgFold's best pair with AntiBERTy
    would be its own input (score 1) or a linear map of it."""
    return table[~table.input_stage.astype(bool)]


def primary_analyses(cfg: dict, sizes: dict) -> tuple[Primary, ...]:
    """The study's primary analysis, declared before scoring: every model pair on the antibodies IgFold
    has (its subset), so all pairs are compared at one N."""
    return (Primary("do antibody models trained differently align with each other beyond random-init controls?",
                    "antibodies", "mutual_knn", "structure", "hidden", n_samples=cfg["igfold_subset"], k=cfg["k"]),)


def main(argv: Sequence[str] | None = None) -> int:
    run = study_setup(STUDY, __doc__, argv, FULL, QUICK, datasets.SIZES)
    cfg, args = run.cfg, run.args
    primaries = primary_analyses(cfg, run.sizes)
    print_primaries(primaries)
    records, plans, cache = datasets.prepare(run, "antibodies", lambda _: plans_for(cfg))
    if args.extract_only:
        return 0

    pairs = study_pairs(plans, trained_pairs(cfg["models"]))
    options = dict(k=cfg["k"], permutations=cfg["permutations"], ci=cfg["ci"], n_subsamples=cfg["n_subsamples"], seed=args.seed)
    # the pairs of models planned on all antibodies on all of them, and every pair on IgFold's subset,
    # so the primary analysis compares every pair at one N
    on_subset = {p.model for p in plans if p.subset is not None}
    everywhere = [p for p in pairs if not {p.model_a, p.model_b} & on_subset]
    table = score_pooled(cache, "antibodies", everywhere, METRICS, **options)
    subset = [r.id for r in list(records)[: cfg["igfold_subset"]]]
    print(f"  every pair on IgFold's {len(subset)} antibodies", flush=True)
    table = pd.concat([table, score_pooled(cache, "antibodies", pairs, METRICS, samples=subset, **options)],
                      ignore_index=True)
    table["input_stage"] = input_stage_rows(table)
    finish(run, table, primaries, heatmaps=HEATMAPS, headline=without_input_stages)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
