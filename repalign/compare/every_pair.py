"""Every comparable model pair of a cache, with the demo's settings: the comparison behind
``repalign report CACHE`` and ``repalign demo``.

Trained models (every model whose name is not ``NAME@random:SEED``) are compared pair by pair
through the normal compare path; a pair whose two models both have random-initialised controls
in the cache is compared together with them (:func:`repalign.compare.compare_controls`, the
controls as context of the trained pair, never as pairs of their own). The defaults are the
demo's: mutual kNN and unbiased CKA, ``k`` chosen for the shared samples N (:func:`k_for_samples`),
99 permutations (p-values adjusted for the layer search), the hidden layer family. Pairs that
cannot be compared (no shared samples, different inputs under the same ids, no pooled layers)
are listed with the reason instead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from embeddings_cache import Cache, align_ids
from repalign import __version__
from repalign.compare.controls import compare_controls, is_baseline
from repalign.compare.options import EngineOptions, StatsOptions
from repalign.compare.pooled import compare_models
from repalign.compare.run import Comparison
from repalign.compare.tokens import compare_tokens
from repalign.errors import RepalignError
from repalign.models.controls import control_name, is_control, parse_control
from repalign.progress import progress

DEFAULT_METRICS = ("mknn", "unbiased_cka")
DEFAULT_PERMUTATIONS = 99
#: k is at most this, and at most N / 10, so that N >= 10 k (repalign.stats.check_reliability)
MAX_K = 10
#: control seeds a contrast needs (a rank test: its smallest p-value is 1 / (seeds + 1))
MIN_CONTROL_SEEDS = 2
log = logging.getLogger(__name__)


def k_for_samples(n_samples: int) -> int:
    """The neighbours of the kNN metrics for ``n_samples`` shared samples: min(10, N // 10), at
    least 1, so that N >= 10 k wherever N >= 10 (no small-N warning): 4 for 40 to 49 samples."""
    return max(1, min(MAX_K, int(n_samples) // 10))


@dataclass
class CacheComparison:
    """The result of :func:`compare_cache`: the tidy table of every compared pair, the pairs left
    out with their reason, the reliability warnings, and the settings the table was made with
    (what ``repalign report`` shows and writes beside the table)."""

    table: pd.DataFrame
    settings: dict
    skipped: list = field(default_factory=list)  # [model_a, model_b, reason] of each pair not compared
    warnings: list = field(default_factory=list)


def compare_cache(
    cache: str | os.PathLike,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    k: int | None = None,
    stats: StatsOptions | None = None,
    engine: EngineOptions | None = None,
    quiet: bool = True,
) -> CacheComparison:
    """Compare every pair of trained models of ``cache`` that share samples, each with its
    random-initialised controls where the cache holds them for both models.

    ``k``: neighbours of the kNN metrics (default: :func:`k_for_samples` of each pair's shared
    samples). ``stats``: default ``StatsOptions(permutations=99)``. ``engine``: as in
    :func:`repalign.compare.compare_models`. Pairs whose models both store token layers with the
    same tokens are also compared row by row (:func:`repalign.compare.compare_tokens`, without
    controls). Returns a :class:`CacheComparison`.
    """
    stats = StatsOptions(permutations=DEFAULT_PERMUTATIONS) if stats is None else stats
    path = Path(cache)
    with Cache(path) as c:
        models = c.models
        if not models:
            raise RepalignError(f"{path} holds no models; extract some with 'repalign extract' first")
        trained = [m for m in models if not is_control(m)]
        pairs = [(a, b) for i, a in enumerate(trained) for b in trained[i + 1:]]
        plans, skipped = _plans(c, pairs)
        provenance = [{"model": m, "n_samples": c.n_samples(m), "n_layers": len(c.layers(m)),
                       "dtype": c.storage_dtype(m), "provenance": c.provenance(m)} for m in models]
    tables, warnings, commands = [], [], []
    for model_a, model_b, n, seeds, tokens in progress(plans, desc="model pairs", unit="pair", quiet=quiet):
        pair_k = k_for_samples(n) if k is None else k
        result = _compare_pair(path, model_a, model_b, metrics, seeds, pair_k, stats, engine)
        tables.append(result.table)
        warnings += [f"{model_a} vs {model_b}: {w}" for w in result.warnings]
        commands.append(_compare_command(path, model_a, model_b, result.table, pair_k, stats, seeds))
        if tokens:
            tables += _token_tables(path, model_a, model_b, metrics, pair_k, stats, warnings)
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    settings = {
        "made_by": f"repalign {__version__}", "source": "cache", "cache": str(path),
        "metrics": sorted(set(table["metric"])) if len(table) else list(metrics),
        "k": k if k is not None else f"min({MAX_K}, N // 10) for the N shared samples of each pair",
        "permutations": stats.permutations, "seed": stats.seed, "layer_family": stats.layer_family,
        "ci": stats.ci, "skipped": skipped, "warnings": warnings, "commands": commands, "models": provenance,
    }
    return CacheComparison(table=table, settings=settings, skipped=skipped, warnings=warnings)


def _plans(cache: Cache, pairs: list) -> tuple[list, list]:
    """(model_a, model_b, shared samples, control seeds, token layers on both sides) of each pair
    that can be compared, and [model_a, model_b, reason] of the others."""
    plans, skipped = [], []
    for model_a, model_b in pairs:
        empty = [m for m in (model_a, model_b) if not cache.layers(m)]
        if empty:
            skipped.append([model_a, model_b, f"{', '.join(empty)} stored no pooled layers"])
            continue
        try:
            n = len(align_ids(cache, model_a, cache, model_b))
        except RepalignError as exc:
            skipped.append([model_a, model_b, str(exc).splitlines()[0]])
            continue
        plans.append((model_a, model_b, n, _control_seeds(cache, model_a, model_b),
                      bool(cache.token_layers(model_a) and cache.token_layers(model_b))))
    return plans, skipped


def _control_seeds(cache: Cache, model_a: str, model_b: str) -> list[int]:
    """The seeds s for which the cache holds ``model_a@random:s`` and ``model_b@random:s`` (or
    ``model_b`` is a baseline, which has no control: the controls of A are compared with B itself)."""
    seeds = []
    baseline = is_baseline(cache, model_b)
    for name in cache.models:
        parsed = parse_control(name)
        # model_a's @random controls only: an @random-all control is compared by name
        if parsed and name == control_name(model_a, parsed.seed) and (baseline or control_name(model_b, parsed.seed) in cache.models):
            seeds.append(parsed[1])
    return sorted(seeds) if len(seeds) >= MIN_CONTROL_SEEDS or not baseline else []


def _compare_pair(path: Path, model_a: str, model_b: str, metrics, seeds: list, k: int, stats: StatsOptions,
                  engine: EngineOptions | None) -> Comparison:
    """One trained pair through the normal compare path: with its controls when it has some."""
    if len(seeds) >= MIN_CONTROL_SEEDS:
        return compare_controls(path, model_a, model_b, metrics, seeds, engine=engine, stats=stats, k=k)
    result = compare_models(path, model_a, model_b, metrics, engine=engine, stats=stats, k=k)
    tables = [result.table.assign(level="trained")]
    for seed in seeds:  # one seed: its rows beside the trained ones, no contrast (a rank test needs 2)
        result.warnings.append(f"one control seed ({seed}): no contrast against the controls, which needs "
                               f"{MIN_CONTROL_SEEDS} seeds or more (extract {control_name(model_a, seed + 1)} and "
                               f"{control_name(model_b, seed + 1)}, ...)")
        control = compare_models(path, control_name(model_a, seed), control_name(model_b, seed), metrics,
                                         engine=engine, stats=stats, k=k)
        tables.append(control.table.assign(level="random_init", control_seed=seed))
    result.table = pd.concat(tables, ignore_index=True)
    return result


def _token_tables(path: Path, model_a: str, model_b: str, metrics, k: int, stats: StatsOptions,
                  warnings: list) -> list[pd.DataFrame]:
    """The token-level comparison of a pair whose models store token layers with the same tokens;
    none when the tokens differ or no metric runs on token rows (the pooled comparison stands)."""

    try:
        result = compare_tokens(path, model_a, model_b, metrics, stats=stats, k=k)
    except RepalignError as exc:
        log.info("%s vs %s: no token-level comparison (%s)", model_a, model_b, str(exc).splitlines()[0])
        return []
    warnings += [f"{model_a} vs {model_b} (token rows): {w}" for w in result.warnings]
    return [result.table.assign(level="trained")]


def _compare_command(path: Path, model_a: str, model_b: str, table: pd.DataFrame, k: int, stats: StatsOptions,
                     seeds: list) -> list[str]:
    """The ``repalign compare`` command that gives this pair's rows on its own."""
    metrics = list(dict.fromkeys(table["metric"]))
    command = ["repalign", "compare", str(path), "--a", model_a, "--b", model_b, "--metric", *metrics, "--k", str(k)]
    if stats.permutations:
        command += ["--permutations", str(stats.permutations), "--seed", str(stats.seed)]
    if stats.layer_family != "hidden":
        command += ["--layer-family", stats.layer_family]
    if stats.ci is not None:
        command += ["--ci", str(stats.ci)]
    if seeds:
        command += ["--controls", ",".join(str(s) for s in seeds)]
    return [*command, "-o", f"{model_a}-vs-{model_b}.csv"]
