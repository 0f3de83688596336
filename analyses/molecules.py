"""Study: do molecular models of different modalities align beyond fingerprints and composition?

ANI-1x (a potential of H, C, N, O molecules), CHGNet 0.3.0 and SevenNet-0 (universal potentials
trained on crystals) on 1,000 molecules of the PDB's Chemical Component Dictionary
(``repalign.datasets.molecules.ccd_molecules``: neutral single molecules of H, C, N, O with 8-64
atoms and ideal 3D coordinates), against the baselines ``morgan`` (Morgan count fingerprints),
``elements`` (composition), ``soap`` and ``acsf``, with random-initialised controls of 5 seeds.
Per molecule (mean-pooled) and per atom.

    python -m analyses.molecules                  # full study (extraction resumes from .cache/)
    python -m analyses.molecules --extract-only   # extraction only, resumable
    python -m analyses.molecules --quick          # smoke version, for tests
"""

from __future__ import annotations

import time
from typing import Sequence

import pandas as pd

from analyses import datasets
from analyses.common import base_parser, cache_root, extract_plans, first_seeds, output_dir, run_main, score_pooled, score_tokens, study_pairs, write_csv
from analyses.interatomic_potentials import FULL, METRICS, QUICK, molecule_plans

STUDY = "molecules"


def main(argv: Sequence[str] | None = None) -> int:
    args = base_parser(STUDY, __doc__.splitlines()[0]).parse_args(argv)
    cfg = QUICK if args.quick else FULL
    sizes = datasets.SIZES["quick" if args.quick else "full"]
    out = output_dir(STUDY, args.out)
    root = cache_root(args, out)
    start = time.perf_counter()

    molecules = datasets.build("molecules", sizes["molecules"], args.seed)
    plans = molecule_plans(cfg)
    cache = datasets.cache_path("molecules", args.quick, root)
    print(f"extracting {len(molecules)} molecules ({sum(r.size for r in molecules)} atoms) into {cache}", flush=True)
    extract_plans(molecules, first_seeds(plans, args.control_seeds), cache, out / "extraction_times.csv", dataset="molecules")
    if args.extract_only:
        return 0

    pairs = study_pairs(plans)
    table = pd.concat([
        score_pooled(cache, "molecules", pairs, METRICS, k=cfg["k"], permutations=cfg["permutations"], ci=cfg["ci"],
                     n_subsamples=cfg["n_subsamples"], seed=args.seed),
        score_tokens(cache, "molecules", pairs, METRICS, k=cfg["k_atoms"], permutations=cfg["permutations"],
                     n_subsamples=cfg["n_subsamples"], seed=args.seed),
    ], ignore_index=True)
    write_csv(table, out / "scores.csv")
    print(f"wrote {out / 'scores.csv'} ({len(table)} rows) in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
