"""What every comparison shares: the layer choice, the checks before any reading, the scoring of
the layer items (arrays or cache references) with statistics, and the tidy table.

:func:`compare_items` is the one path from layer items to a :class:`Comparison`, used by
pooled (:func:`repalign.compare.compare_models`) and token-level
(:func:`repalign.compare.compare_tokens`) comparisons alike.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence
from warnings import warn

import numpy as np
import pandas as pd

from embeddings_cache import Cache, align_ids
from repalign import stats
from repalign.compare.options import EngineOptions, StatsOptions, TokenOptions, check_combination, from_keywords
from repalign.compare.sources import engine_source
from repalign.errors import RepalignError, RepalignWarning
from repalign.metrics import LayerAlignment, align_layers_multi, get_metric
from repalign.metrics.engine import resolve_metrics
from repalign.metrics.layers import LocalStates, layer_alignments, score_layers

# parameters the CLI always passes; each is dropped for calls whose metrics do not take it
_COMMON_CLI_PARAMS = {"k", "kernel", "sigma", "dim", "variance", "whitening", "rdm", "compare"}


@dataclass
class Comparison:
    """The result of :func:`compare_models`: the tidy table plus what the summary needs."""

    table: pd.DataFrame
    model_a: str
    model_b: str
    n_samples: int
    alignments: list = field(default_factory=list)  # one LayerAlignment per metric
    warnings: list = field(default_factory=list)  # reliability warnings (N small for k, degenerate layers)
    granularity: str | None = None  # "token" for token rows (compare_tokens); None for pooled layers
    n_units: int | None = None  # token rows: the samples the rows belong to

    def summary(self, with_warnings: bool = True) -> str:
        """A few readable lines per metric: best layer pair, its score, and beside it the chance
        level, or for a biased metric without one the permutation null mean; then the warnings
        (``with_warnings``; the command line shows them on standard error instead)."""
        lines = [f"{self.model_a} vs {self.model_b}: {self.n_samples} shared samples" if self.granularity is None else
                 f"{self.model_a} vs {self.model_b}: {self.n_samples} token rows of {self.n_units} shared samples"]
        for al in self.alignments:
            i, j, score = al.best
            params = ", ".join(f"{k}={v}" for k, v in sorted(al.params.items()) if v is not None)
            rows = self.table[(self.table["metric"] == al.metric) & (self.table["layer_a"] == al.names_a[i])
                              & (self.table["layer_b"] == al.names_b[j])]
            lines.append(f"  {al.metric} [{params}]: best {al.names_a[i]} ~ {al.names_b[j]} = {score:.4f}"
                         f"{_reference_text(al, rows)}; {len(al.names_a)}x{len(al.names_b)} layer pairs")
        lines += [f"  warning: {w}" for w in self.warnings] if with_warnings else []
        return "\n".join(lines)


def _reference_text(al, best_row: pd.DataFrame) -> str:
    """What the best score is to be read against: chance level, null mean, adjusted p-value."""
    metric = get_metric(al.metric)
    row = best_row.iloc[0] if len(best_row) else {}
    parts = []
    chance = metric.chance_level(al.n_samples, **{k: v for k, v in al.params.items() if k in metric.params})
    if chance is not None:
        parts.append(f"chance {chance:.4f}")
    if "null_mean" in best_row and pd.notna(row["null_mean"]):
        parts.append(f"null mean {row['null_mean']:.4f}")
    elif chance is None and metric.is_biased(al.params):
        parts.append("biased, no chance level: permutations give its null mean")
    if "p_value_best" in best_row and pd.notna(row["p_value_best"]):
        parts.append(f"p adjusted for the layer search = {row['p_value_best']:.3g}")
    return f"  ({'; '.join(parts)})" if parts else ""


def select_layers(available: Sequence[str], requested: Sequence[str] | None, what: str) -> list[str]:
    """Resolve layer names or shell-style patterns (``esmc.*``) against the stored order."""
    if not requested:
        return list(available)
    chosen: list[str] = []
    for pat in requested:
        hits = [name for name in available if fnmatch.fnmatchcase(name, pat)]
        if not hits:
            shown = ", ".join(available[:8]) + (", ..." if len(available) > 8 else "")
            raise RepalignError(f"{what}: no layer matches {pat!r}; available layers: {shown}")
        chosen.extend(h for h in hits if h not in chosen)
    # keep model order whatever order the patterns came in
    return [name for name in available if name in chosen]


def check_metrics(metrics) -> list[str]:
    """The canonical metric names of a comparison: argument errors before any reading."""
    if isinstance(metrics, str):
        metrics = [metrics]
    if not metrics:
        raise RepalignError("no metric given; pass metrics=[NAME, ...] (see repalign.metrics.metric_names())")
    return list(dict.fromkeys(get_metric(m).name for m in metrics))  # unknown names fail before any reading


def cache_pair(cache, cache_b=None) -> tuple:
    """(cache of A, cache of B or None): ``cache`` is one cache or the pair; ``cache_b`` the older keyword."""
    if isinstance(cache, (tuple, list)):
        if len(cache) != 2 or cache_b is not None:
            raise RepalignError("cache is one cache, or the pair (cache of model_a, cache of model_b)")
        return cache[0], cache[1]
    return cache, cache_b


def open_models(cache, cache_b, model_a: str, model_b: str, tokens: bool = False) -> tuple[Cache, Cache]:
    """The caches holding model A and model B (the same object when ``cache_b`` is None); with
    ``tokens``, both models must store token layers."""
    ca = Cache(cache)
    cb = Cache(cache_b) if cache_b is not None else ca
    for c, m in ((ca, model_a), (cb, model_b)):
        if m not in c.models:
            raise RepalignError(f"model {m!r} is not in {c.path}; it holds: {', '.join(c.models) or 'no models'}")
        if tokens and not c.token_layers(m):
            raise RepalignError(f"model {m!r} in {c.path} stores no token layers; extract it with --tokens LAYERS "
                                "(or compare pooled layers without --tokens)")
    return ca, cb


@dataclass(frozen=True)
class ComparisonSetup:
    """A comparison resolved before any layer is read (:func:`resolve_comparison`): the caches
    opened, the option objects validated, the metrics' canonical names, the chosen layers and the
    shared sample ids. ``params``: the metric parameters left once the option keywords are taken."""

    ca: Cache
    cb: Cache
    model_a: str
    model_b: str
    canonical: list
    names_a: list
    names_b: list
    ids: list
    engine: EngineOptions
    stats: StatsOptions
    params: dict
    tokens: TokenOptions | None = None


def resolve_comparison(cache, model_a: str, model_b: str, metrics, layers_a: Sequence[str] | None,
                       layers_b: Sequence[str] | None, params: dict, *, engine: EngineOptions | None = None,
                       stats: StatsOptions | None = None, tokens: TokenOptions | None = None,
                       token_layers: bool = False) -> ComparisonSetup:
    """What every comparison entry point does before scoring, in this order: the cache pair, the
    option objects (loose keywords taken from ``params``), the metrics, the options' combination,
    the models, their layers (``token_layers``: the token layers) and the shared sample ids. No
    layer is read."""
    params = dict(params)
    cache, cache_b = cache_pair(cache, params.pop("cache_b", None))
    given = {"engine": engine, "stats": stats} | ({"tokens": tokens} if token_layers else {})
    options = from_keywords(params, **given)
    canonical = check_metrics(metrics)
    check_combination(options["engine"], options["stats"])
    ca, cb = open_models(cache, cache_b, model_a, model_b, tokens=token_layers)
    if token_layers:
        names_a = select_layers(ca.token_layers(model_a), layers_a, f"{model_a} (token layers)")
        names_b = select_layers(cb.token_layers(model_b), layers_b, f"{model_b} (token layers)")
    else:
        names_a = select_layers(ca.layers(model_a), layers_a, model_a)
        names_b = select_layers(cb.layers(model_b), layers_b, model_b)
    return ComparisonSetup(ca=ca, cb=cb, model_a=model_a, model_b=model_b, canonical=canonical, names_a=names_a,
                           names_b=names_b, ids=align_ids(ca, model_a, cb, model_b), engine=options["engine"],
                           stats=options["stats"], params=params, tokens=options.get("tokens"))


def input_layers(cache: Cache, model: str) -> set[str]:
    """The input layers of ``model`` as its adapter declared them at extraction (provenance
    ``input_layers``, :meth:`repalign.models.base.ModelAdapter.input_layers`); none when the cache
    does not say (imported features, older caches)."""
    declared = cache.provenance(model).get("input_layers")
    return {str(x) for x in declared} if isinstance(declared, (list, tuple)) else set()


def search_family(ca: Cache, cb: Cache, model_a: str, model_b: str, names_a: list, names_b: list,
                  family: str = "hidden") -> np.ndarray:
    """(La, Lb) mask of the layer pairs left out of the best-pair search and of the max-T
    adjustment: a layer with itself (a model compared with itself) and, for the ``hidden`` family,
    every pair with a model's input layer (:func:`input_layers`). When the hidden family leaves no
    pair (only input layers chosen), only the pairs of a layer with itself are left out; an error
    when nothing else is left."""
    self_pair = model_a == model_b and Path(ca.path).resolve() == Path(cb.path).resolve()
    exclude = np.array([[self_pair and x == y for y in names_b] for x in names_a], dtype=bool)
    if exclude.all():
        raise RepalignError(f"comparing {model_a} with itself on the same single layer is trivial; choose other layers with layers_a / layers_b")
    if family == "hidden":
        skip_a, skip_b = input_layers(ca, model_a), input_layers(cb, model_b)
        hidden = exclude | np.array([[x in skip_a or y in skip_b for y in names_b] for x in names_a], dtype=bool)
        if not hidden.all():
            return hidden
    return exclude


def metric_params(canonical: list[str], n: int, params: dict) -> dict:
    """The parameters the metrics take; parameter errors before any reading."""
    # a parameter left unset (None) takes each metric's default; one no metric accepts is an error
    params = {k: v for k, v in params.items() if v is not None}
    accepted = {p for name in canonical for p in get_metric(name).params}
    params = {k: v for k, v in params.items() if k in accepted or k not in _COMMON_CLI_PARAMS}
    resolve_metrics(canonical, n, params)
    return params


@dataclass
class ComparisonRun:
    """What one comparison computes, shared by pooled (:func:`compare_models`) and token-level
    (:func:`compare_tokens`) comparisons. ``n``: rows of every layer; ``draw``: the permutation of
    rows (None: uniform); ``offsets``: the samples' rows when rows are tokens (intervals resample
    samples); ``extra``: parameters recorded in the table's params; ``granularity``: the table's granularity column (None: pooled)."""

    model_a: str
    model_b: str
    names_a: list
    names_b: list
    canonical: list
    params: dict
    n: int
    exclude: np.ndarray
    engine: EngineOptions
    stats: StatsOptions
    draw: object = None
    offsets: np.ndarray | None = None
    extra: dict = field(default_factory=dict)
    granularity: str | None = None
    n_units: int | None = None
    warnings: list = field(default_factory=list)


def compare_items(run: ComparisonRun, items_a: list, items_b: list) -> Comparison:
    """Score the layers (arrays, or cache references read in blocks) and build the table and statistics."""
    resolved = resolve_metrics(run.canonical, run.n, run.params)
    results: list = [None] * len(resolved)
    intervals: list = [None] * len(resolved)
    if run.engine.cluster is not None:
        from repalign.distributed import align_layers_distributed, open_client  # lazy: optional extra (Dask), only with a cluster

        with open_client(run.engine.cluster) as client:
            alignments = align_layers_distributed(client, items_a, items_b, run.canonical, run.names_a, run.names_b,
                                                  n_samples=run.n, search_block=run.engine.search_block,
                                                  **run.engine.state_options, **run.params)
    elif run.stats.permutations:
        alignments, results = _permutation_alignments(run, resolved, items_a, items_b)
    else:
        sources_a = [engine_source(x, run.engine.block_rows) for x in items_a]
        sources_b = [engine_source(x, run.engine.block_rows) for x in items_b]
        alignments = align_layers_multi(sources_a, sources_b, metrics=run.canonical, names_a=run.names_a,
                                        names_b=run.names_b, n_samples=run.n if run.engine.block_rows else None,
                                        **run.engine.state_options, **run.params)
    if run.stats.ci:
        intervals = stats.subsample_intervals(items_a, items_b, resolved, ci=run.stats.ci, n_subsamples=run.stats.n_subsamples,
                                              fraction=run.stats.fraction, seed=run.stats.seed, normalize=run.engine.normalize,
                                              full=[al.scores for al in alignments], offsets=run.offsets)
    layers = {**{f"{run.model_a}:{x}": a for x, a in zip(run.names_a, items_a)},
              **{f"{run.model_b}:{x}": b for x, b in zip(run.names_b, items_b)}} if run.engine.in_memory else None
    frames, warnings = [], []
    for al, (metric, p), result, interval in zip(alignments, resolved, results, intervals):
        frame = _frame(run, al, result, interval)
        found, frame["warnings"] = row_warnings(run, metric.name, {k: v for k, v in p.items() if k in metric.params},
                                                layers, frame)
        warnings += found
        frames.append(frame)
    comparison = Comparison(table=pd.concat(frames, ignore_index=True), model_a=run.model_a, model_b=run.model_b,
                            n_samples=run.n, alignments=alignments, warnings=list(dict.fromkeys(run.warnings + warnings)),
                            granularity=run.granularity, n_units=run.n_units)
    for text in comparison.warnings:  # also kept in Comparison.warnings
        warn(text, RepalignWarning, stacklevel=3)
    return comparison


#: separates the reliability warnings of one row in a table's ``warnings`` column
WARNING_SEPARATOR = " | "


def row_warnings(run: ComparisonRun, metric: str, params: dict, layers: dict | None, frame: pd.DataFrame) -> tuple[list, list]:
    """The reliability warnings of one metric (:func:`repalign.stats.check_reliability`) and, per row
    of ``frame``, those that apply to it, joined by :data:`WARNING_SEPARATOR` ("" when none): the
    comparison's own (``run.warnings``), N small for k and too few permutations on every row; a
    degenerate layer (participation ratio) on the rows of that layer."""
    general = stats.check_reliability(run.n, metric, params, normalize=run.engine.normalize,
                                      permutations=run.stats.permutations or None, alpha=run.stats.alpha)
    per_layer = {key: [w for w in stats.check_reliability(run.n, metric, params, layers={key: x}, normalize=run.engine.normalize)
                       if w not in general] for key, x in (layers or {}).items()}
    found = general + [w for texts in per_layer.values() for w in texts]
    column = []
    for x, y in zip(frame["layer_a"], frame["layer_b"]):
        texts = [*run.warnings, *general, *per_layer.get(f"{run.model_a}:{x}", []), *per_layer.get(f"{run.model_b}:{y}", [])]
        column.append(WARNING_SEPARATOR.join(dict.fromkeys(texts)))
    return found, column


def _permutation_alignments(run: ComparisonRun, resolved: list, items_a: list, items_b: list) -> tuple[list, list]:
    """Observed scores and permutation results; every layer's state is kept for the permutation loop
    (without permutations side A is streamed)."""
    options = dict(run.engine.state_options, n_samples=run.n)
    sources_a = [engine_source(x, run.engine.block_rows) for x in items_a]
    sources_b = [engine_source(x, run.engine.block_rows) for x in items_b]
    scored = score_layers(sources_a, run.names_a, sources_b, run.names_b, LocalStates(resolved, options), keep_states=True)
    results = stats.permutation_tests(scored.states_a, scored.states_b, resolved, run.stats.permutations, run.stats.seed,
                                      run.stats.alpha, run.exclude, scored.scores, draw=run.draw)
    alignments = layer_alignments(scored.scores, resolved, run.names_a, run.names_b, run.n, normalize=run.engine.normalize,
                                  knn=run.engine.knn, recall=scored.recall)
    return alignments, results


def _frame(run: ComparisonRun, al: LayerAlignment, result, interval) -> pd.DataFrame:
    """The tidy rows of one metric: scores, the granularity and n_units columns of token rows, recall and statistics."""
    al.exclude = run.exclude
    al.params.update(run.extra)
    frame = al.to_frame(model_a=run.model_a, model_b=run.model_b)
    # the pairs the best pair was searched among, so figures drawn from the table alone follow the same family
    frame.insert(frame.columns.get_loc("best") + 1, "in_family", ~run.exclude.ravel())
    if run.granularity is not None:
        frame.insert(frame.columns.get_loc("n_samples") + 1, "n_units", run.n_units)
        frame.insert(frame.columns.get_loc("metric"), "granularity", run.granularity)
    if al.recall:
        frame["knn_recall"] = [min(al.recall[("a", x)], al.recall[("b", y)]) for x, y in zip(frame["layer_a"], frame["layer_b"])]
    if result is not None or interval is not None:
        frame = pd.concat([frame, stats.stats_columns(result, interval, shape=al.scores.shape)], axis=1)
    return frame
