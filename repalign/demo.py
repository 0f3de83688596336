"""``repalign demo``: a small real study end to end, offline, from data and weights that installed packages ship.

Antibody sequences go through two antibody language models, crystals through two interatomic
potentials, and random-initialised controls of each (the same architectures with fresh weights,
``NAME@random:SEED``, seeds 0-4) go through the same steps. The cache is then compared by
:func:`repalign.compare.compare_cache` (the comparison ``repalign report CACHE`` runs): each trained
pair layer by layer with mutual kNN and unbiased CKA, k chosen for N, permutation p-values adjusted
for the search over hidden layer pairs, and against its controls seed by seed. The headline of each
modality comes from :func:`repalign.compare.headlines`: the best hidden layer pair (never an input
layer: random networks match the inputs too) against its controls' best pairs. The score table
(``level`` = trained / random_init / contrast), its settings and the figures are written to the
output folder.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable

import pandas as pd

from embeddings_cache.atomic import sigterm_as_interrupt
from repalign.compare import StatsOptions, compare_cache, headlines
from repalign.errors import RepalignError
from repalign.extract import extract
from repalign.interop.owned import Manifest, work_folder
from repalign.models.controls import control_name
from repalign.plot import plot_table, save_layer_heatmap
from repalign.report import CONTROLS_KIND, headline_text
from repalign.table import settings_path, write_settings, write_table

# (modality, records factory, model pair)
STUDIES = (
    ("antibody", "repalign.datasets.antibodies:antibody_records", ("antiberty", "iglm")),
    ("crystal", "repalign.datasets.structures:crystal_records", ("chgnet-0.3.0", "sevennet-0")),
)
METRICS = ("mknn", "unbiased_cka")
PERMUTATIONS = 99
#: random-init control seeds of every model: the rank test against them reaches p = 1/6 at best
CONTROL_SEEDS = (0, 1, 2, 3, 4)
SEED = 0
FIGURE_METRICS = ("mutual_knn", "unbiased_cka")


def _records(target: str):
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)()


#: the manifest of the output folder: the files the demo wrote there and their digests
DEMO_MANIFEST = ".repalign-demo"
CACHE_FILE, SCORES_FILE = "demo-cache.h5", "scores.csv"
_CACHE_MARK = "cache"  # the cache changes as models are added: the manifest lists it without a digest


#: the figure kinds the demo draws for each pair and metric
FIGURE_KINDS = ("layers", CONTROLS_KIND)


def _figure_stem(modality: str, model_a: str, model_b: str, metric: str, kind: str = "layers") -> str:
    return f"{modality}-{model_a}-vs-{model_b}-{metric}" + ("" if kind == "layers" else f"-{kind}")


def demo_outputs() -> list[str]:
    """The names the demo writes in its folder (every other file there is left alone)."""
    figures = [f"{_figure_stem(modality, a, b, metric, kind)}.{fmt}" for modality, _, (a, b) in STUDIES
               for metric in FIGURE_METRICS for kind in FIGURE_KINDS for fmt in ("png", "pdf")]
    return [CACHE_FILE, SCORES_FILE, settings_path(SCORES_FILE).name, *figures]


def check_demo_output(out: Path) -> Manifest:
    """RepalignError unless every demo output already in ``out`` is one an earlier demo wrote there
    (listed in its manifest, unchanged since): the user's files are never replaced."""
    if out.exists() and not out.is_dir():
        raise RepalignError(f"{out} is a file; give a folder for the demo's output")
    manifest = Manifest(out, DEMO_MANIFEST, "repalign demo")
    listed = manifest.files() if out.is_dir() else {}
    for name in demo_outputs():
        target = out / name
        if not os.path.lexists(target):
            continue
        ours = (listed.get(name) == [_CACHE_MARK] and target.is_file() and not target.is_symlink()) \
            if name == CACHE_FILE else manifest.owns(target)
        if not ours:
            raise RepalignError(f"{target} was not written by 'repalign demo' (or was changed since); move it away "
                                "or choose another output folder")
    return manifest


def publish(out: Path, manifest: Manifest, write: Callable[[Path], list[Path]]) -> list[Path]:
    """Files that ``write(work)`` makes in a hidden work folder of ``out``, moved into ``out``: each is
    recorded in the manifest before it is renamed into place (:meth:`Manifest.replace`), so a kill
    never leaves a demo file the manifest does not know, and the work folder (with any half-written
    file) is removed on errors, or by the next run after a kill. The folder is checked first: it may
    have changed during the run."""
    check_demo_output(out)
    with work_folder(out) as work:
        made = write(work)
        for path in made:
            manifest.replace(path, out / path.name, work)
    return [out / path.name for path in made]


def run_demo(output: str | Path = "demo-output", quiet: bool = False) -> dict[str, list[Path]]:
    """Run the demo; returns the written files by kind ("table", "figures", "cache").

    The demo writes only its own files (:func:`demo_outputs`) into ``output`` and replaces only
    those an earlier demo wrote there (its manifest ``.repalign-demo``); that is checked before
    any work. SIGTERM removes temporary files as Ctrl-C does.
    """
    out = Path(output)
    check_demo_output(out)
    out.mkdir(parents=True, exist_ok=True)
    with sigterm_as_interrupt():
        return _run_demo(out, quiet)


def _run_demo(out: Path, quiet: bool) -> dict[str, list[Path]]:
    manifest = check_demo_output(out)
    cache = out / CACHE_FILE
    if not cache.exists():
        manifest.record(CACHE_FILE, [_CACHE_MARK])  # before extract creates it
    for _, factory, pair in STUDIES:
        controls = [control_name(model, seed) for seed in CONTROL_SEEDS for model in pair]
        extract(_records(factory), [*pair, *controls], cache, layers=["all"], quiet=quiet)
    result = compare_cache(cache, METRICS, stats=StatsOptions(permutations=PERMUTATIONS, seed=SEED), quiet=quiet)
    settings = {**result.settings, "made_by": f"{result.settings['made_by']} (repalign demo)"}

    def write_scores(work: Path) -> list[Path]:
        path = write_table(result.table, work / SCORES_FILE)
        return [path, write_settings(path, settings)]

    table_path = publish(out, manifest, write_scores)[0]
    figures = []
    for modality, _, (model_a, model_b) in STUDIES:
        for metric in FIGURE_METRICS:
            figures += _figures(out, manifest, result.table, modality, model_a, model_b, metric)
    found = headlines(result.table)
    print("headline (best hidden layer pair of each trained pair, against its random-init controls):")
    for modality, _, (model_a, model_b) in STUDIES:
        rows = found[(found["model_a"] == model_a) & (found["model_b"] == model_b)]
        for _, row in rows.iterrows():
            print(f"  {modality}: {headline_text(row)}")
    print(f"score table: {table_path}")
    for f in figures:
        print(f"figure: {f}")
    print(f"cache: {cache} (inspect with: repalign cache info {cache}; a report: repalign report {table_path} -o report)")
    return {"table": [table_path], "figures": figures, "cache": [cache]}


def _figures(out: Path, manifest: Manifest, table: pd.DataFrame, modality: str, model_a: str, model_b: str,
             metric: str) -> list[Path]:
    """The layer heatmap of the trained pair, and the pair against its controls."""
    stem = _figure_stem(modality, model_a, model_b, metric)
    # the whole table: the heatmap draws the trained cells and states the pair's headline contrast in its title
    figures = publish(out, manifest, lambda work: save_layer_heatmap(table, work / stem, metric=metric,
                                                                    model_a=model_a, model_b=model_b))
    stem = _figure_stem(modality, model_a, model_b, metric, CONTROLS_KIND)
    figures += publish(out, manifest, lambda work: plot_table(table, work / stem, CONTROLS_KIND, ("png", "pdf"),
                                                              metric=metric, model_a=model_a, model_b=model_b))
    return figures
