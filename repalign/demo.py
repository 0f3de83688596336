"""``repalign demo``: a small real study end to end, offline, from data and weights that installed packages ship.

Antibody sequences go through two antibody language models, crystals through two interatomic
potentials, and each pair's random-initialised controls (the same architectures with fresh
weights, ``NAME@random:0``) go through the same steps. Each pair is compared layer by layer with
mutual kNN and unbiased CKA, with permutation p-values adjusted for the layer search. The headline
of each modality is the pair of hidden layers whose alignment exceeds its controls' the most among
the significant ones, never an input-embedding layer (random networks match the inputs too).
The score table (``level`` = trained / random_init) and heatmaps are written to the output folder.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from embeddings_cache import Cache
from embeddings_cache.atomic import sigterm_as_interrupt
from repalign.compare import StatsOptions, compare_models
from repalign.errors import RepalignError
from repalign.extract import extract
from repalign.interop.owned import Manifest, work_folder
from repalign.models.controls import control_name
from repalign.plot import save_layer_heatmap
from repalign.table import write_table

# (modality, records factory, model pair)
STUDIES = (
    ("antibody", "repalign.datasets.antibodies:antibody_records", ("antiberty", "iglm")),
    ("crystal", "repalign.datasets.structures:crystal_records", ("chgnet-0.3.0", "sevennet-0")),
)
METRICS = ("mknn", "unbiased_cka")
K = 4  # N >= 10k for the 40 crystals and 48 antibodies: no small-N warning
PERMUTATIONS = 99
CONTROL_SEED = 0
ALPHA = 0.05


def _records(target: str):
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)()


def headline(trained: pd.DataFrame, control: pd.DataFrame, skip_a: str, skip_b: str, metric: str = "mutual_knn") -> dict | None:
    """The hidden-layer pair (input layers ``skip_a``/``skip_b`` left out) with the largest
    trained − control score among pairs significant after the layer-search adjustment; None if none is."""
    t = trained[(trained.metric == metric) & (trained.layer_a != skip_a) & (trained.layer_b != skip_b)]
    c = control[control.metric == metric].set_index(["layer_a", "layer_b"])["score"]
    t = t.assign(control=[c.get((a, b)) for a, b in zip(t.layer_a, t.layer_b)])
    t = t[t.p_value_adjusted <= ALPHA].assign(gain=lambda x: x.score - x.control)
    if t.empty:
        return None
    row = t.loc[t.gain.idxmax()]
    return {k: row[k] for k in ("layer_a", "layer_b", "score", "control", "gain", "p_value_adjusted", "chance_level")}


#: the manifest of the output folder: the files the demo wrote there and their digests
DEMO_MANIFEST = ".repalign-demo"
CACHE_FILE, SCORES_FILE = "demo-cache.h5", "scores.csv"
_CACHE_MARK = "cache"  # the cache changes as models are added: the manifest lists it without a digest


def _figure_stem(modality: str, model_a: str, model_b: str, metric: str) -> str:
    return f"{modality}-{model_a}-vs-{model_b}-{metric}"


def demo_outputs() -> list[str]:
    """The names the demo writes in its folder (every other file there is left alone)."""
    figures = [f"{_figure_stem(modality, a, b, metric)}.{fmt}" for modality, _, (a, b) in STUDIES
               for metric in ("mutual_knn", "unbiased_cka") for fmt in ("png", "pdf")]
    return [CACHE_FILE, SCORES_FILE, *figures]


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
    tables, figures, lines = [], [], []
    for modality, factory, (model_a, model_b) in STUDIES:
        control_a, control_b = control_name(model_a, CONTROL_SEED), control_name(model_b, CONTROL_SEED)
        extract(_records(factory), [model_a, model_b, control_a, control_b], cache, layers=["all"], quiet=quiet)
        common: dict[str, Any] = dict(k=K, stats=StatsOptions(permutations=PERMUTATIONS, seed=CONTROL_SEED))
        trained = compare_models(cache, model_a, model_b, METRICS, **common)
        control = compare_models(cache, control_a, control_b, METRICS, **common)
        if not quiet:
            print(trained.summary())
            print(control.summary())
        tables += [trained.table.assign(level="trained"), control.table.assign(level="random_init")]
        with Cache(cache) as c:
            inputs = c.layers(model_a)[0], c.layers(model_b)[0]
        best = headline(trained.table, control.table, *inputs)
        if best is None:
            lines.append(f"{modality}: no hidden-layer pair of {model_a} and {model_b} aligns significantly (adjusted p > {ALPHA})")
        elif best["gain"] <= 0:
            lines.append(
                f"{modality}: no hidden-layer pair of {model_a} and {model_b} aligns beyond its random-init controls "
                f"(closest: {best['layer_a']} ~ {best['layer_b']}, mutual kNN {best['score']:.3f} against "
                f"{best['control']:.3f} for the controls; the alignment comes from the architectures and inputs)")
        else:
            lines.append(
                f"{modality}: {model_a} {best['layer_a']} ~ {model_b} {best['layer_b']}: mutual kNN {best['score']:.3f} "
                f"(chance {best['chance_level']:.3f}, adjusted p {best['p_value_adjusted']:.3g}); random-init controls "
                f"{best['control']:.3f} at the same layers, {best['gain']:+.3f} from training "
                f"(input layers {inputs[0]}, {inputs[1]} left out)")
        for metric in ("mutual_knn", "unbiased_cka"):
            stem = _figure_stem(modality, model_a, model_b, metric)
            figures += publish(out, manifest, lambda work: save_layer_heatmap(trained.table, work / stem,
                                                                              metric=metric))
    scores = pd.concat(tables, ignore_index=True)
    table_path = publish(out, manifest, lambda work: [write_table(scores, work / SCORES_FILE)])[0]
    print("headline (hidden layers, beyond random-init controls):")
    for line in lines:
        print(f"  {line}")
    print(f"score table: {table_path}")
    for f in figures:
        print(f"figure: {f}")
    print(f"cache: {cache} (inspect with: repalign cache info {cache})")
    return {"table": [table_path], "figures": figures, "cache": [cache]}
