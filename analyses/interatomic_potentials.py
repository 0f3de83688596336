"""Study: do interatomic potentials align with each other, beyond composition and SOAP, per structure and per element?

CHGNet (0.3.0, 0.2.0, r2SCAN), SevenNet (0, l3i5, MF-0) and DIEP on 1,000 crystals (AFLOW
prototypes with chemically likely substitutions and ASE bulk crystals,
``repalign.datasets.crystals.aflow_crystals``), and ANI-1x, CHGNet 0.3.0 and SevenNet-0 on 1,000
molecules of the PDB's Chemical Component Dictionary (``repalign.datasets.molecules.ccd_molecules``,
shared with the ``molecules`` study); every layer of each model, random-initialised controls of 5
seeds (``NAME@random:SEED``) and the baselines ``elements`` (composition) and ``soap`` (and ``acsf``
and ``morgan`` for molecules). Compared per structure (mean-pooled) and, with ``--granularity
element`` (and in ``--quick``), per element of each structure (the atoms of one element averaged,
``compare_tokens(tokens=TokenOptions(group_by="element"))``, block permutations of whole structures); and, for crystals,
as relative representations (``granularity = relative``: each structure's cosine similarities to
100 anchor structures drawn from the set, Moschella et al. 2023, as the ICL convergence study put
seven potentials in one space; :mod:`repalign.metrics.anchors`).

    python -m analyses.interatomic_potentials                  # full study (extraction resumes from .cache/)
    python -m analyses.interatomic_potentials --extract-only   # extraction only, resumable
    python -m analyses.interatomic_potentials --score-only     # score what the cache holds
    python -m analyses.interatomic_potentials --quick          # smoke version, for tests
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
from ase.data import atomic_numbers

from analyses import datasets
from analyses.common import (
    CONTROL_SEEDS,
    finish,
    model_plans,
    run_main,
    score_elements,
    score_pooled,
    study_pairs,
    study_setup,
)

STUDY = "interatomic_potentials"
CRYSTAL_MODELS = ("chgnet-0.3.0", "chgnet-0.2.0", "chgnet-r2scan", "sevennet-0", "sevennet-l3i5", "sevennet-mf-0", "diep")
MOLECULE_MODELS = ("ani-1x", "chgnet-0.3.0", "sevennet-0")
#: mutual kNN with a permutation test; unbiased CKA with a subsampling interval (its permutations cost
#: ~6x those of mutual kNN, so it has no permutation test here: 0)
METRICS = ("mknn", "unbiased_cka")
#: full runs: mutual kNN with permutations (crystals: 49 permutations per pair; molecules: 99) and
#: unbiased CKA with subsampling intervals (no permutations: their cost), per structure; per element
#: of each structure (``--granularity element``, 2-4 times the rows) the same with 49 block
#: permutations. About 2 s per pair and metric per structure at N = 1,000 on two cores.
FULL = dict(crystal_models=CRYSTAL_MODELS, molecule_models=MOLECULE_MODELS, seeds=CONTROL_SEEDS, k=10, k_atoms=10,
            crystal_metrics=METRICS, molecule_metrics=METRICS, granularity=("structure", "relative"), anchors=100,
            permutations={"mknn": 49, "unbiased_cka": 0}, molecule_permutations={"mknn": 99, "unbiased_cka": 0},
            element_permutations={"mknn": 49, "unbiased_cka": 0},
            ci=0.95, n_subsamples=30, with_molecules=True,
            crystal_baselines=("elements", "soap"), molecule_baselines=("elements", "soap", "acsf", "morgan"))
# the quick run checks the crystal path; the molecule path is the molecules study's quick run
QUICK = dict(crystal_models=("chgnet-0.3.0", "diep"), molecule_models=("ani-1x", "chgnet-0.3.0"), seeds=(0, 1), k=3,
             crystal_metrics=METRICS, molecule_metrics=METRICS, granularity=("structure", "element", "relative"), anchors=4,
             k_atoms=3, permutations={"mknn": 20, "unbiased_cka": 20}, molecule_permutations={"mknn": 20, "unbiased_cka": 20},
             element_permutations={"mknn": 20, "unbiased_cka": 20},
             ci=0.95, n_subsamples=5, with_molecules=False,
             crystal_baselines=("elements",), molecule_baselines=("elements", "morgan"))

#: (dataset, model_a, model_b) of the layer x layer heatmaps
HEATMAPS = [("crystals", "chgnet-0.3.0", "sevennet-0"), ("molecules", "ani-1x", "chgnet-0.3.0")]


def crystal_plans(dataset, cfg):
    """Baselines (element one-hot; SOAP over the set's elements, compressed so its size grows
    linearly with them), the potentials and their controls, token rows stored for per-atom scores."""
    species = sorted({s for r in dataset for s in r.payload.get_chemical_symbols()}, key=atomic_numbers.get)
    options = {"elements": {}, "soap": {"species": ",".join(species), "compression": "mu1nu1", "n_max": 3, "l_max": 3,
                                        "r_cut": 5.0}}
    return model_plans(cfg["crystal_models"], {b: options[b] for b in cfg["crystal_baselines"]}, cfg["seeds"], tokens=True)


def molecule_plans(cfg, models=None):
    return model_plans(models or cfg["molecule_models"], {b: {} for b in cfg["molecule_baselines"]}, cfg["seeds"],
                       tokens=True)


def granularity_option(parser) -> None:
    """``--granularity`` and ``--metrics``: which parts of a study to score (the rest of an existing
    ``scores.csv`` is kept, see :func:`analyses.common.with_earlier_parts`)."""
    parser.add_argument("--granularity", nargs="+", choices=("structure", "element", "relative"),
                        help="per structure (mean-pooled), per element of each structure, and/or per structure as "
                             "relative representations to anchor structures (crystals; default: structure and "
                             "relative; --quick: all three)")
    parser.add_argument("--metrics", nargs="+", choices=METRICS,
                        help=f"score only these metrics (default: {' and '.join(METRICS)})")


def add_options(parser) -> None:
    parser.add_argument("--datasets", nargs="+", choices=("crystals", "molecules"), default=("crystals", "molecules"),
                        help="the data sets to run (default: both)")
    granularity_option(parser)


def main(argv: Sequence[str] | None = None) -> int:
    run = study_setup(STUDY, __doc__, argv, FULL, QUICK, datasets.SIZES, options=add_options)
    cfg, args = run.cfg, run.args
    granularity = args.granularity or cfg["granularity"]
    parts = []
    if "crystals" in args.datasets:
        parts.append(("crystals", *datasets.prepare(run, "crystals", lambda records: crystal_plans(records, cfg))))
    if cfg["with_molecules"] and "molecules" in args.datasets:
        parts.append(("molecules", *datasets.prepare(run, "molecules", lambda _: molecule_plans(cfg))))
    if args.extract_only:
        return 0

    frames = []
    for name, data, plans, cache in parts:
        pairs = study_pairs(plans)
        perms = cfg["permutations"] if name == "crystals" else cfg["molecule_permutations"]
        metrics = args.metrics or (cfg["crystal_metrics"] if name == "crystals" else cfg["molecule_metrics"])
        if "structure" in granularity:
            frames.append(score_pooled(cache, name, pairs, metrics, k=cfg["k"], permutations=perms, ci=cfg["ci"],
                                       n_subsamples=cfg["n_subsamples"], seed=args.seed))
        if name == "crystals" and "relative" in granularity:
            # models only: anchors put the models in one space; a composition vector's similarities to
            # anchors are mostly zeros (no shared element), degenerate on small sets
            models_only = [p for p in pairs if p.level != "baseline"]
            frames.append(score_pooled(cache, name, models_only, metrics, k=cfg["k"], permutations=perms, ci=cfg["ci"],
                                       n_subsamples=cfg["n_subsamples"], seed=args.seed, anchors=cfg["anchors"]))
        if name == "crystals" and "element" in granularity:
            frames.append(score_elements(cache, name, list(data), pairs, metrics, k=cfg["k_atoms"],
                                         permutations=cfg["element_permutations"],
                                         ci=cfg["ci"], n_subsamples=cfg["n_subsamples"], seed=args.seed))
    finish(run, pd.concat(frames, ignore_index=True), heatmaps=HEATMAPS)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
