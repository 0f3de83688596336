"""Study: do interatomic potentials align with each other, beyond composition and SOAP, per structure and per atom?

CHGNet (0.3.0, 0.2.0, r2SCAN), SevenNet (0, l3i5, MF-0) and DIEP on 1,000 crystals (AFLOW
prototypes with chemically likely substitutions and ASE bulk crystals,
``repalign.datasets.crystals.aflow_crystals``), and ANI-1x, CHGNet 0.3.0 and SevenNet-0 on 1,000
molecules of the PDB's Chemical Component Dictionary (``repalign.datasets.molecules.ccd_molecules``,
shared with the ``molecules`` study); every layer of each model, random-initialised controls of 5
seeds (``NAME@random:SEED``) and the baselines ``elements`` (composition) and ``soap`` (and ``acsf``
for molecules), compared per structure (mean-pooled) and per atom.

    python -m analyses.interatomic_potentials                  # full study (extraction resumes from .cache/)
    python -m analyses.interatomic_potentials --extract-only   # extraction only, resumable
    python -m analyses.interatomic_potentials --quick          # smoke version, for tests
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
    score_tokens,
    study_pairs,
    write_csv,
)

STUDY = "interatomic_potentials"
CRYSTAL_MODELS = ("chgnet-0.3.0", "chgnet-0.2.0", "chgnet-r2scan", "sevennet-0", "sevennet-l3i5", "sevennet-mf-0", "diep")
MOLECULE_MODELS = ("ani-1x", "chgnet-0.3.0", "sevennet-0")
METRICS = ("mknn", "cka")
FULL = dict(crystal_models=CRYSTAL_MODELS, molecule_models=MOLECULE_MODELS, seeds=CONTROL_SEEDS, k=10, k_atoms=10,
            permutations=500, ci=0.95, n_subsamples=100, with_molecules=True,
            crystal_baselines=("elements", "soap"), molecule_baselines=("elements", "soap", "acsf", "morgan"))
# the quick run checks the crystal path; the molecule path is the molecules study's quick run
QUICK = dict(crystal_models=("chgnet-0.3.0", "diep"), molecule_models=("ani-1x", "chgnet-0.3.0"), seeds=(0, 1), k=3,
             k_atoms=5, permutations=20, ci=0.95, n_subsamples=5, with_molecules=False,
             crystal_baselines=("elements",), molecule_baselines=("elements", "morgan"))


def crystal_plans(dataset, cfg):
    """Baselines (element one-hot; SOAP over the set's elements, compressed so its size grows
    linearly with them), the potentials and their controls, token rows stored for per-atom scores."""
    species = sorted({s for r in dataset for s in r.payload.get_chemical_symbols()},
                     key=lambda s: __import__("ase.data").data.atomic_numbers[s])
    options = {"elements": {}, "soap": {"species": ",".join(species), "compression": "mu1nu1", "n_max": 3, "l_max": 3,
                                        "r_cut": 5.0}}
    return model_plans(cfg["crystal_models"], {b: options[b] for b in cfg["crystal_baselines"]}, cfg["seeds"], tokens=True)


def molecule_plans(cfg, models=None):
    return model_plans(models or cfg["molecule_models"], {b: {} for b in cfg["molecule_baselines"]}, cfg["seeds"],
                       tokens=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = base_parser(STUDY, __doc__.splitlines()[0]).parse_args(argv)
    cfg = QUICK if args.quick else FULL
    sizes = datasets.SIZES["quick" if args.quick else "full"]
    out = output_dir(STUDY, args.out)
    root = cache_root(args, out)
    start = time.perf_counter()

    parts = []
    crystals = datasets.build("crystals", sizes["crystals"], args.seed)
    parts.append(("crystals", crystals, crystal_plans(crystals, cfg), datasets.cache_path("crystals", args.quick, root)))
    if cfg["with_molecules"]:
        molecules = datasets.build("molecules", sizes["molecules"], args.seed)
        parts.append(("molecules", molecules, molecule_plans(cfg), datasets.cache_path("molecules", args.quick, root)))
    for name, data, plans, cache in parts:
        print(f"extracting {len(data)} {name} ({sum(r.size for r in data)} atoms) into {cache}", flush=True)
        extract_plans(data, first_seeds(plans, args.control_seeds), cache, out / "extraction_times.csv", dataset=name)
    if args.extract_only:
        return 0

    frames = []
    for name, data, plans, cache in parts:
        pairs = study_pairs(plans)
        frames.append(score_pooled(cache, name, pairs, METRICS, k=cfg["k"], permutations=cfg["permutations"],
                                   ci=cfg["ci"], n_subsamples=cfg["n_subsamples"], seed=args.seed))
        frames.append(score_tokens(cache, name, pairs, METRICS, k=cfg["k_atoms"], permutations=cfg["permutations"],
                                   n_subsamples=cfg["n_subsamples"], seed=args.seed))
    table = pd.concat(frames, ignore_index=True)
    write_csv(table, out / "scores.csv")
    print(f"wrote {out / 'scores.csv'} ({len(table)} rows) in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
