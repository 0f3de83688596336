"""The data sets of the studies and where their feature caches live.

Each study data set is one builder call of :mod:`repalign.datasets` (seed, size), so a study's
inputs are rebuilt identically from the code; the caches record the builder, seed, size and content
hash in their provenance. The molecule set is shared by two studies (``molecules`` and
``interatomic_potentials``) and extracted once, into the ``molecules`` study's cache.
"""

from __future__ import annotations

from pathlib import Path

from analyses.common import default_results, extract_part
from repalign.datasets.antibodies import repertoire_records
from repalign.datasets.crystals import aflow_crystals
from repalign.datasets.molecules import ccd_molecules

#: (study that owns the cache, builder) per data set; sizes are the studies' choice
SIZES = {"full": {"crystals": 1000, "molecules": 1000, "antibodies": 1000},
         "quick": {"crystals": 12, "molecules": 12, "antibodies": 8}}


def build(name: str, size: int, seed: int = 0):
    if name == "crystals":
        return aflow_crystals(size, seed=seed)
    if name == "molecules":
        return ccd_molecules(size, seed=seed)
    if name == "antibodies":
        return repertoire_records(size, seed=seed)
    raise ValueError(name)


def cache_path(name: str, quick: bool, cache_root: Path | None = None) -> Path:
    """The cache of data set ``name``: ``<cache_root>/<name>[-quick].h5``, by default in the owner
    study's results folder (:func:`analyses.common.default_results`), ``.cache/``."""
    owner = {"crystals": "interatomic_potentials", "molecules": "molecules", "antibodies": "antibody_models"}[name]
    folder = Path(cache_root) if cache_root else default_results(owner) / ".cache"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}{'-quick' if quick else ''}.h5"


def prepare(run, name: str, plans_of) -> tuple[list, list, Path]:
    """Build data set ``name`` at the run's size and seed, plan its models (``plans_of(records)``)
    and extract them into its cache (unless ``--score-only``): (records, plans, cache)."""
    records = build(name, run.sizes[name], run.args.seed)
    plans = plans_of(records)
    cache = cache_path(name, run.args.quick, run.root)
    extract_part(run, name, records, plans, cache)
    return records, plans, cache
