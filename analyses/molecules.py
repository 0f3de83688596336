"""Study: do molecular models of different modalities align beyond fingerprints and composition?

ANI-1x (a potential of H, C, N, O molecules), CHGNet 0.3.0 and SevenNet-0 (universal potentials
trained on crystals) on 1,000 molecules of the PDB's Chemical Component Dictionary
(``repalign.datasets.molecules.ccd_molecules``: neutral single molecules of H, C, N, O with 8-64
atoms and ideal 3D coordinates), against the baselines ``morgan`` (Morgan count fingerprints),
``elements`` (composition), ``soap`` and ``acsf``, with random-initialised controls (20 seeds for ANI-1x,
5 for the others: :data:`analyses.atomistic.MOLECULE_SEEDS`).
Per molecule (mean-pooled) and, with ``--granularity element`` (and in ``--quick``), per element of
each molecule (the atoms of one element averaged, ``compare_tokens(tokens=TokenOptions(group_by="element"))``, block
permutations of whole molecules).

    python -m analyses.molecules                  # full study (extraction resumes from .cache/)
    python -m analyses.molecules --extract-only   # extraction only, resumable
    python -m analyses.molecules --score-only     # score what the cache holds
    python -m analyses.molecules --quick          # smoke version, for tests
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from analyses import datasets
from analyses.atomistic import FULL, QUICK, granularity_option, molecule_plans, molecule_primary
from analyses.common import Primary, finish, print_primaries, run_main, score_elements, score_pooled, study_pairs, study_setup

STUDY = "molecules"
#: (dataset, model_a, model_b) of the layer x layer heatmaps
HEATMAPS = [("molecules", "ani-1x", "chgnet-0.3.0")]


def primary_analyses(cfg: dict, sizes: dict) -> tuple[Primary, ...]:
    """The study's primary analysis, declared before scoring."""
    return (molecule_primary(cfg, sizes),)


def main(argv: Sequence[str] | None = None) -> int:
    run = study_setup(STUDY, __doc__, argv, FULL, QUICK, datasets.SIZES, options=granularity_option)
    cfg, args = run.cfg, run.args
    primaries = primary_analyses(cfg, run.sizes)
    print_primaries(primaries)
    molecules, plans, cache = datasets.prepare(run, "molecules", lambda _: molecule_plans(cfg))
    if args.extract_only:
        return 0

    pairs = study_pairs(plans)
    options = dict(permutations=cfg["molecule_permutations"], ci=cfg["ci"], n_subsamples=cfg["n_subsamples"], seed=args.seed)
    # relative representations only on request here (the potentials study runs them on crystals)
    metrics = args.metrics or cfg["molecule_metrics"]
    granularity = args.granularity or [g for g in cfg["granularity"] if g != "relative"]
    frames = [score_pooled(cache, "molecules", pairs, metrics, k=cfg["k"], **options)] if "structure" in granularity else []
    if "relative" in granularity:
        frames.append(score_pooled(cache, "molecules", pairs, metrics, k=cfg["k"], anchors=cfg["anchors"], **options))
    if "element" in granularity:
        frames.append(score_elements(cache, "molecules", list(molecules), pairs, metrics, k=cfg["k_atoms"],
                                     **{**options, "permutations": cfg["element_permutations"]}))
    table = pd.concat(frames, ignore_index=True)
    finish(run, table, primaries, heatmaps=HEATMAPS)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
