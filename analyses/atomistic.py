"""The configuration shared by the atomistic studies (``interatomic_potentials``, ``molecules`` and
``potential_quality``): the models, metrics, full and quick settings, model plans and the options
choosing which parts to score. Studies import this module, never each other.
"""

from __future__ import annotations

from ase.data import atomic_numbers

from analyses.common import CONTROL_SEEDS, Primary, model_plans

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
#: control seeds per model, from cost: 20 (a contrast can then reach p = 1/21 < 0.05) for the models whose
#: controls extract fast enough (ANI-1x on molecules, 0.027 s per molecule; the CHGNet releases on crystals),
#: the default 5 for the others; control pairs are scored for the seeds both models have
CRYSTAL_SEEDS = {"chgnet-0.3.0": 20, "chgnet-0.2.0": 20, "chgnet-r2scan": 20}
MOLECULE_SEEDS = {"ani-1x": 20}
FULL = dict(crystal_models=CRYSTAL_MODELS, molecule_models=MOLECULE_MODELS, crystal_seeds=CRYSTAL_SEEDS,
            molecule_seeds=MOLECULE_SEEDS, default_seeds=len(CONTROL_SEEDS), k=10, k_atoms=10,
            crystal_metrics=METRICS, molecule_metrics=METRICS, granularity=("structure", "relative"), anchors=100,
            permutations={"mknn": 49, "unbiased_cka": 0}, molecule_permutations={"mknn": 99, "unbiased_cka": 0},
            element_permutations={"mknn": 49, "unbiased_cka": 0},
            ci=0.95, n_subsamples=100, with_molecules=True,  # 100 covers at high CKA (docs/statistics.md)
            crystal_baselines=("elements", "soap"), molecule_baselines=("elements", "soap", "acsf", "morgan"))
# the quick run checks the crystal path; the molecule path is the molecules study's quick run
# the quick run gives one model a seed more than the others, so pairs are scored on the seeds both have
QUICK = dict(crystal_models=("chgnet-0.3.0", "diep"), molecule_models=("ani-1x", "chgnet-0.3.0"),
             crystal_seeds={"chgnet-0.3.0": 3}, molecule_seeds={"ani-1x": 3}, default_seeds=2, k=3,
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
    return model_plans(cfg["crystal_models"], {b: options[b] for b in cfg["crystal_baselines"]}, cfg["crystal_seeds"],
                       tokens=True, default_seeds=cfg["default_seeds"])


def molecule_plans(cfg, models=None):
    models = models or cfg["molecule_models"]
    seeds = {m: n for m, n in cfg["molecule_seeds"].items() if m in models}
    return model_plans(models, {b: {} for b in cfg["molecule_baselines"]}, seeds, tokens=True,
                       default_seeds=cfg["default_seeds"])


def crystal_primary(cfg, sizes) -> Primary:
    """The potentials study's question on crystals: do the potentials align with each other beyond
    their random-initialised controls, per structure?"""
    return Primary("do interatomic potentials align with each other beyond random-init controls on crystals?",
                   "crystals", "mutual_knn", "structure", "hidden", n_samples=sizes["crystals"], k=cfg["k"])


def molecule_primary(cfg, sizes) -> Primary:
    """The molecules study's question: do molecular models trained on different data align with each
    other beyond their random-initialised controls, per molecule?"""
    return Primary("do molecular models of different training data align with each other beyond random-init "
                   "controls on molecules?", "molecules", "mutual_knn", "structure", "hidden",
                   n_samples=sizes["molecules"], k=cfg["k"])


def granularity_option(parser) -> None:
    """``--granularity`` and ``--metrics``: which parts of a study to score (the rest of an existing
    ``scores.csv`` is kept, see :func:`analyses.common.with_earlier_parts`)."""
    parser.add_argument("--granularity", nargs="+", choices=("structure", "element", "relative"),
                        help="per structure (mean-pooled), per element of each structure, and/or per structure as "
                             "relative representations to anchor structures (crystals; default: structure and "
                             "relative; --quick: all three)")
    parser.add_argument("--metrics", nargs="+", choices=METRICS,
                        help=f"score only these metrics (default: {' and '.join(METRICS)})")
