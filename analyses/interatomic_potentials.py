"""Study: do interatomic potentials align with each other, beyond composition and SOAP, per structure and per element?

CHGNet (0.3.0, 0.2.0, r2SCAN), SevenNet (0, l3i5, MF-0) and DIEP on 1,000 crystals (AFLOW
prototypes with chemically likely substitutions and ASE bulk crystals,
``repalign.datasets.crystals.aflow_crystals``), and ANI-1x, CHGNet 0.3.0 and SevenNet-0 on 1,000
molecules of the PDB's Chemical Component Dictionary (``repalign.datasets.molecules.ccd_molecules``,
shared with the ``molecules`` study); every layer of each model, random-initialised controls
(``NAME@random:SEED``; 20 seeds for the CHGNet releases on crystals and ANI-1x on molecules, 5 for the
others: :data:`analyses.atomistic.CRYSTAL_SEEDS`) and the baselines ``elements`` (composition) and ``soap`` (and ``acsf``
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

from analyses import datasets
from analyses.atomistic import (
    ALIGNMENT_STUDY,
    FULL,
    QUICK,
    crystal_plans,
    crystal_primary,
    granularity_option,
    molecule_plans,
)
from analyses.common import Primary, finish, print_primaries, run_main, score_elements, score_pooled, study_pairs, study_setup

STUDY = ALIGNMENT_STUDY
#: (dataset, model_a, model_b) of the layer x layer heatmaps
HEATMAPS = [("crystals", "chgnet-0.3.0", "sevennet-0"), ("molecules", "ani-1x", "chgnet-0.3.0")]


def add_options(parser) -> None:
    parser.add_argument("--datasets", nargs="+", choices=("crystals", "molecules"), default=("crystals", "molecules"),
                        help="the data sets to run (default: both)")
    granularity_option(parser)


def primary_analyses(cfg: dict, sizes: dict) -> tuple[Primary, ...]:
    """The study's primary analysis, declared before scoring (the molecule rows are the molecules
    study's question, secondary here)."""
    return (crystal_primary(cfg, sizes),)


def main(argv: Sequence[str] | None = None) -> int:
    run = study_setup(STUDY, __doc__, argv, FULL, QUICK, datasets.SIZES, options=add_options)
    cfg, args = run.cfg, run.args
    primaries = primary_analyses(cfg, run.sizes)
    print_primaries(primaries)
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
    finish(run, pd.concat(frames, ignore_index=True), primaries, heatmaps=HEATMAPS)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
