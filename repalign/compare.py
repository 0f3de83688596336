"""Compare two models stored in embeddings caches, layer by layer: the Python side of ``repalign compare``.

Samples are matched by id (the intersection of both models' ids, with content hashes checked),
never by position. Each layer is read once, prepared (``normalize``), and the per-layer state is
shared by every layer pair and every metric of a call.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from repalign.errors import RepalignError

# parameters the CLI always passes; each is dropped for calls whose metrics do not take it
_COMMON_CLI_PARAMS = {"k", "kernel", "sigma", "dim", "variance"}


@dataclass
class Comparison:
    """The result of :func:`compare_models`: the tidy table plus what the summary needs."""

    table: pd.DataFrame
    model_a: str
    model_b: str
    n_samples: int
    alignments: list = field(default_factory=list)  # one LayerAlignment per metric
    warnings: list = field(default_factory=list)  # reliability warnings (N small for k, degenerate layers)
    level: str | None = None  # "token" for token rows (compare_tokens); None for pooled layers
    n_units: int | None = None  # token rows: the samples the rows belong to

    def summary(self) -> str:
        """A few readable lines per metric: best layer pair, its score, and beside it the chance
        level, or for a biased metric without one the permutation null mean."""
        lines = [f"{self.model_a} vs {self.model_b}: {self.n_samples} shared samples" if self.level is None else
                 f"{self.model_a} vs {self.model_b}: {self.n_samples} token rows of {self.n_units} shared samples"]
        for al in self.alignments:
            i, j, score = al.best
            params = ", ".join(f"{k}={v}" for k, v in sorted(al.params.items()) if v is not None)
            rows = self.table[(self.table["metric"] == al.metric) & (self.table["layer_a"] == al.names_a[i])
                              & (self.table["layer_b"] == al.names_b[j])]
            lines.append(f"  {al.metric} [{params}]: best {al.names_a[i]} ~ {al.names_b[j]} = {score:.4f}"
                         f"{_reference_text(al, rows)}; {len(al.names_a)}x{len(al.names_b)} layer pairs")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _reference_text(al, best_row: pd.DataFrame) -> str:
    """What the best score is to be read against: chance level, null mean, adjusted p-value."""
    from repalign.metrics import get_metric

    metric = get_metric(al.metric)
    row = best_row.iloc[0] if len(best_row) else {}
    parts = []
    chance = metric.chance_level(al.n_samples, **{k: v for k, v in al.params.items() if k in metric.params})
    if chance is not None:
        parts.append(f"chance {chance:.4f}")
    if "null_mean" in best_row and pd.notna(row["null_mean"]):
        parts.append(f"null mean {row['null_mean']:.4f}")
    elif chance is None and metric.is_biased(al.params):
        parts.append("biased, no chance level: add --permutations for its null mean")
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


def compare_models(
    cache: str | os.PathLike,
    model_a: str,
    model_b: str,
    metrics: Sequence[str] = ("mknn",),
    *,
    cache_b: str | os.PathLike | None = None,
    layers_a: Sequence[str] | None = None,
    layers_b: Sequence[str] | None = None,
    normalize: str | None = "l2",
    permutations: int = 0,
    ci: float | None = None,
    n_subsamples: int = 100,
    seed: int = 0,
    alpha: float = 0.05,
    cluster=None,
    knn: str = "exact",
    knn_options: dict | None = None,
    block_rows: int | None = None,
    **params,
) -> Comparison:
    """Score every layer of ``model_a`` against every layer of ``model_b`` with each metric.

    Parameters such as ``k``, ``sigma``, ``kernel``, ``variance`` or ``dim`` go to the metrics that
    accept them. ``permutations`` > 0 adds permutation p-values, p-values adjusted for the search
    over all layer pairs (max-T), null means and calibrated scores; ``ci`` adds subsampling
    intervals where the metric has a valid one (NaN and a ``note`` otherwise) (:mod:`repalign.stats`).
    The ``best`` column marks the best layer pair; when a model is compared with itself, the
    trivial pairs of a layer with itself are left out of that search and of the max-T null.
    Reliability warnings (N small for k, degenerate layers) are in ``Comparison.warnings``.

    Where the neighbour lists come from is an option of the layer states
    (:mod:`repalign.metrics.engine`): ``knn`` (``exact``, ``faiss-hnsw``, ``faiss-ivf``; approximate
    lists add a ``knn_recall`` column) and ``block_rows`` (layers read in row blocks, out of core).
    ``cluster`` (a Dask spec such as ``local:4`` or a Client) builds the layer states on workers
    (:func:`repalign.distributed.align_layers_distributed`). Returns a :class:`Comparison` whose
    ``table`` is the tidy long table (model_a, layer_a, model_b, layer_b, metric, params, score,
    n_samples, best, and the statistics columns when requested).
    """
    from embeddings_cache import Cache, align_ids
    from repalign import stats
    from repalign.metrics import align_layers_multi, get_metric
    from repalign.metrics.engine import check_backend, layer_state, resolve_metrics, score_matrix
    from repalign.metrics.layers import LayerAlignment

    if isinstance(metrics, str):
        metrics = [metrics]
    if not metrics:
        raise RepalignError("no metric given; pass --metric NAME (see 'repalign compare --help')")
    canonical = list(dict.fromkeys(get_metric(m).name for m in metrics))  # unknown names fail before any reading
    if ci is not None:
        stats._check_fraction(ci, "ci", "0.95")
    if permutations:
        stats._check_count(permutations, "permutations", 1)
    knn_options = check_backend(knn, block_rows, knn_options)
    if (permutations or ci) and cluster is not None:
        raise RepalignError("--permutations/--ci run in this process; drop --cluster for them")
    if ci and block_rows is not None:
        raise RepalignError("--ci rebuilds every layer on subsamples and needs the layers in memory; drop --block-rows for it")

    ca = Cache(cache)
    cb = Cache(cache_b) if cache_b is not None else ca
    for c, m in ((ca, model_a), (cb, model_b)):
        if m not in c.models:
            raise RepalignError(f"model {m!r} is not in {c.path}; it holds: {', '.join(c.models) or 'no models'}")
    names_a = select_layers(ca.layers(model_a), layers_a, model_a)
    names_b = select_layers(cb.layers(model_b), layers_b, model_b)
    ids = align_ids(ca, model_a, cb, model_b)
    n = len(ids)
    self_pair = model_a == model_b and Path(ca.path).resolve() == Path(cb.path).resolve()
    exclude = np.array([[self_pair and x == y for y in names_b] for x in names_a], dtype=bool)
    if exclude.all():
        raise RepalignError(f"comparing {model_a} with itself on the same single layer is trivial; choose other layers with --layers-a/--layers-b")

    # a parameter left unset (None) takes each metric's default; one no metric accepts is an error
    params = {k: v for k, v in params.items() if v is not None}
    accepted = {p for name in canonical for p in get_metric(name).params}
    params = {k: v for k, v in params.items() if k in accepted or k not in _COMMON_CLI_PARAMS}
    if block_rows is not None or cluster is not None:
        from repalign.distributed import CacheLayer

        items_a = [CacheLayer(str(ca.path), model_a, x, tuple(ids)) for x in names_a]
        items_b = [CacheLayer(str(cb.path), model_b, x, tuple(ids)) for x in names_b]
    else:
        items_a = [ca.read_layer(model_a, x, ids=ids) for x in names_a]
        items_b = [cb.read_layer(model_b, x, ids=ids) for x in names_b]
    return _compare_items(_Run(model_a, model_b, names_a, names_b, canonical, params, n, exclude, normalize, permutations,
                               ci, n_subsamples, seed, alpha, cluster, knn, knn_options, block_rows), items_a, items_b)


@dataclass
class _Run:
    """What one comparison computes, shared by pooled (:func:`compare_models`) and token-level
    (:func:`compare_tokens`) comparisons. ``n``: rows of every layer; ``draw``: the permutation of
    rows (None: uniform); ``offsets``: the samples' rows when rows are tokens (intervals resample
    samples); ``extra``: parameters recorded in the table's params; ``level``: the table's level column."""

    model_a: str
    model_b: str
    names_a: list
    names_b: list
    canonical: list
    params: dict
    n: int
    exclude: np.ndarray
    normalize: str | None
    permutations: int
    ci: float | None
    n_subsamples: int
    seed: int
    alpha: float
    cluster: object
    knn: str
    knn_options: dict
    block_rows: int | None
    draw: object = None
    offsets: np.ndarray | None = None
    extra: dict = field(default_factory=dict)
    level: str | None = None
    n_units: int | None = None
    warnings: list = field(default_factory=list)


def _compare_items(run: _Run, items_a: list, items_b: list) -> Comparison:
    """Score the layers (arrays, or cache references read in blocks) and build the table and statistics."""
    from repalign import stats
    from repalign.metrics import align_layers_multi, get_metric
    from repalign.metrics.engine import layer_state, resolve_metrics, score_matrix
    from repalign.metrics.layers import LayerAlignment

    (model_a, model_b, names_a, names_b, canonical, params, n, exclude, normalize, permutations, ci, n_subsamples,
     seed, alpha, cluster, knn, knn_options, block_rows) = (
        run.model_a, run.model_b, run.names_a, run.names_b, run.canonical, run.params, run.n, run.exclude, run.normalize,
        run.permutations, run.ci, run.n_subsamples, run.seed, run.alpha, run.cluster, run.knn, run.knn_options,
        run.block_rows)
    resolved = resolve_metrics(canonical, n, params)
    options = dict(normalize=normalize, knn=knn, knn_options=knn_options, block_rows=block_rows)
    results: list = [None] * len(resolved)
    intervals: list = [None] * len(resolved)
    if cluster is not None:
        from repalign.distributed import align_layers_distributed, open_client

        with open_client(cluster) as client:
            alignments = align_layers_distributed(client, items_a, items_b, canonical, names_a, names_b,
                                                  n_samples=n, **options, **params)
    elif permutations:
        # all states are kept for the permutation loop (without it side A is streamed)
        sources_a = [_source(x, block_rows) for x in items_a]
        sources_b = [_source(x, block_rows) for x in items_b]
        states_a = [layer_state(x, resolved, name=nm, n_samples=n, **options) for x, nm in zip(sources_a, names_a)]
        states_b = [layer_state(x, resolved, name=nm, n_samples=n, **options) for x, nm in zip(sources_b, names_b)]
        observed = [score_matrix(metric, p, m, states_a, states_b) for m, (metric, p) in enumerate(resolved)]
        results = stats.permutation_tests(states_a, states_b, resolved, permutations, seed, alpha, exclude, observed,
                                           draw=run.draw)
        alignments = [LayerAlignment(observed[m], names_a, names_b, metric.name,
                                     {**p, "normalize": normalize, "clip_quantile": None}, n)
                      for m, (metric, p) in enumerate(resolved)]
        recall = {**{("a", s.name): s.recall for s in states_a}, **{("b", s.name): s.recall for s in states_b}}
        for al, (metric, _) in zip(alignments, resolved):
            if knn != "exact" and metric.is_knn:
                al.params["knn"] = knn
                al.recall = recall
    else:
        sources_a = [_source(x, block_rows) for x in items_a]
        sources_b = [_source(x, block_rows) for x in items_b]
        alignments = align_layers_multi(sources_a, sources_b, metrics=canonical, names_a=names_a, names_b=names_b,
                                        n_samples=n if block_rows else None, **options, **params)
    if ci:
        intervals = stats.subsample_intervals(items_a, items_b, resolved, ci=ci, n_subsamples=n_subsamples, seed=seed,
                                              normalize=normalize, full=[al.scores for al in alignments],
                                              offsets=run.offsets)

    frames, warnings = [], []
    in_memory = block_rows is None and cluster is None
    layers = {**{f"{model_a}:{x}": a for x, a in zip(names_a, items_a)},
              **{f"{model_b}:{x}": b for x, b in zip(names_b, items_b)}} if in_memory else None
    for al, (metric, p), result, interval in zip(alignments, resolved, results, intervals):
        al.exclude = exclude
        al.params.update(run.extra)
        frame = al.to_frame(model_a=model_a, model_b=model_b)
        if run.level is not None:
            frame.insert(frame.columns.get_loc("n_samples") + 1, "n_units", run.n_units)
            frame.insert(frame.columns.get_loc("metric"), "level", run.level)
        settable = {k: v for k, v in p.items() if k in metric.params}
        warnings += stats.check_reliability(n, metric.name, settable, layers=layers, normalize=normalize,
                                            permutations=permutations or None, alpha=alpha)
        if al.recall:
            frame["knn_recall"] = [min(al.recall[("a", x)], al.recall[("b", y)]) for x, y in zip(frame["layer_a"], frame["layer_b"])]
        if result is not None or interval is not None:
            frame = pd.concat([frame, stats.stats_columns(result, interval, shape=al.scores.shape)], axis=1)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    return Comparison(table=table, model_a=model_a, model_b=model_b, n_samples=n, alignments=alignments,
                      warnings=list(dict.fromkeys(run.warnings + warnings)), level=run.level, n_units=run.n_units)


def _source(item, block_rows):
    """What the engine reads: an array, or a CacheLayer's row blocks when computing out of core."""
    if block_rows is None or not hasattr(item, "blocks"):
        return item
    return lambda: item.blocks(block_rows)
