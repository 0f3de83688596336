"""Study: do generative and structure-supervised antibody models align beyond sequence baselines?

AntiBERTy (masked language model of antibodies), IgLM (autoregressive generative model of
antibodies), UniRep (autoregressive model of general proteins) and IgFold's structure module
(supervised by structures; conditioned on AntiBERTy) on 1,000 paired heavy:light antibodies sampled
from OLGA's human B-cell V(D)J recombination models with somatic point mutations
(``repalign.datasets.antibodies.repertoire_records``), against the sequence baselines
``aa-composition``, ``kmer-composition``, ``blosum62`` and ``onehot``, with random-initialised
controls of 5 seeds (``NAME@random:SEED``). IgFold runs on the first ``IGFOLD_SUBSET`` antibodies
(its CPU cost); its comparisons use those antibodies for every partner. IgFold's ``antiberty``
stage is its input (AntiBERTy's last layer) and is left out of every headline.

    python -m analyses.antibody_models                  # full study (extraction resumes from .cache/)
    python -m analyses.antibody_models --extract-only   # extraction only, resumable
    python -m analyses.antibody_models --quick          # smoke version, for tests
"""

from __future__ import annotations

import time
from typing import Sequence

import pandas as pd

from analyses import datasets
from analyses.common import (
    CONTROL_SEEDS,
    base_parser,
    cache_root,
    extract_plans,
    first_seeds,
    model_plans,
    output_dir,
    run_main,
    score_pooled,
    study_pairs,
    write_csv,
)

STUDY = "antibody_models"
MODELS = ("antiberty", "iglm", "igfold", "unirep-1900")
BASELINES = {"aa-composition": {}, "kmer-composition": {}, "blosum62": {}, "onehot": {}}
#: IgFold's input stage is AntiBERTy's last layer: not a finding, excluded from headlines
IDENTITY_STAGES = {"igfold": ("antiberty",)}
METRICS = ("mknn", "cka")
FULL = dict(models=MODELS, seeds=CONTROL_SEEDS, igfold_subset=200, k=10, permutations=500, ci=0.95, n_subsamples=100)
QUICK = dict(models=("antiberty", "iglm", "igfold", "unirep-64"), seeds=(0, 1), igfold_subset=5, k=2, permutations=20, ci=0.95,
             n_subsamples=5)


def plans_for(cfg):
    return model_plans(cfg["models"], BASELINES, cfg["seeds"], subsets={"igfold": cfg["igfold_subset"]})


def trained_pairs(models):
    """Every pair of models, IgFold always on side a (its stages are the rows of its tables)."""
    import itertools

    others = [m for m in models if m != "igfold"]
    return [("igfold", m) for m in others if "igfold" in models] + list(itertools.combinations(others, 2))


def identity_rows(table: pd.DataFrame) -> list[bool]:
    """True where either side is an identity stage (IgFold's input, AntiBERTy's last layer)."""
    def flag(models, layers):
        return [layer in IDENTITY_STAGES.get(model.split("@")[0], ()) for model, layer in zip(models, layers)]

    return [a or b for a, b in zip(flag(table.model_a, table.layer_a), flag(table.model_b, table.layer_b))]


def main(argv: Sequence[str] | None = None) -> int:
    args = base_parser(STUDY, __doc__.splitlines()[0]).parse_args(argv)
    cfg = QUICK if args.quick else FULL
    sizes = datasets.SIZES["quick" if args.quick else "full"]
    out = output_dir(STUDY, args.out)
    root = cache_root(args, out)
    start = time.perf_counter()

    antibodies = datasets.build("antibodies", sizes["antibodies"], args.seed)
    plans = plans_for(cfg)
    cache = datasets.cache_path("antibodies", args.quick, root)
    print(f"extracting {len(antibodies)} antibodies into {cache}", flush=True)
    extract_plans(antibodies, first_seeds(plans, args.control_seeds), cache, out / "extraction_times.csv", dataset="antibodies")
    if args.extract_only:
        return 0

    table = score_pooled(cache, "antibodies", study_pairs(plans, trained_pairs(cfg["models"])), METRICS, k=cfg["k"], permutations=cfg["permutations"],
                         ci=cfg["ci"], n_subsamples=cfg["n_subsamples"], seed=args.seed)
    table["identity_stage"] = identity_rows(table)
    write_csv(table, out / "scores.csv")
    print(f"wrote {out / 'scores.csv'} ({len(table)} rows) in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
