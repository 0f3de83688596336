"""The configuration shared by the atomistic studies (``interatomic_potentials``, ``molecules`` and
``potential_quality``): the models, metrics, full and quick settings, model plans and the options
choosing which parts to score. Studies import this module, never each other.
"""

from __future__ import annotations

from ase.data import atomic_numbers

from analyses.common import CONTROL_SEEDS, model_plans

#: the study whose results hold the crystal and molecule alignment tables
ALIGNMENT_STUDY = "interatomic_potentials"
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
