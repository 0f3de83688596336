"""The data sets of the studies and where their feature caches live.

Each study data set is one builder call of :mod:`repalign.datasets` (size, seed), so a study's
inputs are rebuilt identically from the code; the caches record the builder, seed, size and content
hash in their provenance. Adding a data set is one entry of :data:`DATASETS`. The molecule set is
shared by two studies (``molecules`` and ``interatomic_potentials``) and extracted once, into the
``molecules`` study's cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from analyses.common import default_results, extract_part
from repalign.datasets.antibodies import repertoire_records
from repalign.datasets.crystals import aflow_crystals
from repalign.datasets.molecules import ccd_molecules


@dataclass(frozen=True)
class StudyDataset:
    """builder(size, seed=...) -> records; owner: the study whose results folder holds the cache;
    full / quick: the sizes of full and quick runs."""

    builder: Callable
    owner: str
    full: int
    quick: int


DATASETS = {
    "crystals": StudyDataset(aflow_crystals, "interatomic_potentials", full=1000, quick=12),
    "molecules": StudyDataset(ccd_molecules, "molecules", full=1000, quick=12),
    "antibodies": StudyDataset(repertoire_records, "antibody_models", full=1000, quick=8),
}
#: data set sizes of full and quick runs, as :func:`analyses.common.study_setup` takes them
SIZES = {run: {name: getattr(d, run) for name, d in DATASETS.items()} for run in ("full", "quick")}


def build(name: str, size: int, seed: int = 0):
    return DATASETS[name].builder(size, seed=seed)


def cache_path(name: str, quick: bool, cache_root: Path | None = None) -> Path:
    """The cache of data set ``name``: ``<cache_root>/<name>[-quick].h5``, by default in the owner
    study's results folder (:func:`analyses.common.default_results`), ``.cache/``."""
    folder = Path(cache_root) if cache_root else default_results(DATASETS[name].owner) / ".cache"
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
