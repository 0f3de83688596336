"""Compare two models stored in embeddings caches, layer by layer: the Python side of ``repalign compare``.

Samples are matched by id (the intersection of both models' ids, with content hashes checked),
never by position. Each layer is read once, prepared (``normalize``), and the per-layer state is
shared by every layer pair and every metric of a call.
"""

from __future__ import annotations

import fnmatch
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, cast

import numpy as np
import pandas as pd

from embeddings_cache import UNKNOWN_HASH, Cache, align_ids
from repalign import stats
from repalign.distributed import CacheLayer, align_layers_distributed, open_client
from repalign.errors import RepalignError
from repalign.inputs import read_inputs
from repalign.metrics import LayerAlignment, align_layers_multi, get_metric
from repalign.metrics.anchors import draw_anchors, relative_representation
from repalign.metrics.engine import check_backend, layer_state, resolve_metrics, score_matrix
from repalign.metrics.layers import layer_alignments

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


def _check_request(metrics, *, ci, permutations, knn, knn_options, block_rows) -> tuple[list[str], dict]:
    """The canonical metric names and neighbour options of a comparison: argument errors before any reading."""
    if isinstance(metrics, str):
        metrics = [metrics]
    if not metrics:
        raise RepalignError("no metric given; pass --metric NAME (see 'repalign compare --help')")
    canonical = list(dict.fromkeys(get_metric(m).name for m in metrics))  # unknown names fail before any reading
    if ci is not None:
        stats.check_fraction(ci, "ci", "0.95")
    if permutations:
        stats.check_count(permutations, "permutations", 1)
    knn_options = check_backend(knn, block_rows, knn_options)
    if ci and block_rows is not None:
        raise RepalignError("--ci rebuilds every layer on subsamples and needs the layers in memory; drop --block-rows for it")
    return canonical, knn_options


def _open_models(cache, cache_b, model_a: str, model_b: str, tokens: bool = False) -> tuple[Cache, Cache]:
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


def _trivial_pairs(ca: Cache, cb: Cache, model_a: str, model_b: str, names_a: list, names_b: list) -> np.ndarray:
    """(La, Lb) mask of the pairs of a layer with itself (a model compared with itself), left out of
    the best-pair search; an error when nothing else is left."""
    self_pair = model_a == model_b and Path(ca.path).resolve() == Path(cb.path).resolve()
    exclude = np.array([[self_pair and x == y for y in names_b] for x in names_a], dtype=bool)
    if exclude.all():
        raise RepalignError(f"comparing {model_a} with itself on the same single layer is trivial; choose other layers with --layers-a/--layers-b")
    return exclude


def _metric_params(canonical: list[str], n: int, params: dict) -> dict:
    """The parameters the metrics take; parameter errors before any reading."""
    # a parameter left unset (None) takes each metric's default; one no metric accepts is an error
    params = {k: v for k, v in params.items() if v is not None}
    accepted = {p for name in canonical for p in get_metric(name).params}
    params = {k: v for k, v in params.items() if k in accepted or k not in _COMMON_CLI_PARAMS}
    resolve_metrics(canonical, n, params)
    return params


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
    fraction: float = 0.8,
    seed: int = 0,
    alpha: float = 0.05,
    cluster=None,
    knn: str = "exact",
    knn_options: dict | None = None,
    block_rows: int | None = None,
    search_block: int | None = None,
    anchors: int | Sequence[str] | None = None,
    **params,
) -> Comparison:
    """Score every layer of ``model_a`` against every layer of ``model_b`` with each metric.

    Parameters such as ``k``, ``sigma``, ``kernel``, ``variance`` or ``dim`` go to the metrics that
    accept them. ``permutations`` > 0 adds permutation p-values, p-values adjusted for the search
    over all layer pairs (max-T), null means and calibrated scores; ``ci`` adds subsampling
    intervals where the metric has a valid one (NaN and a ``note`` otherwise; ``n_subsamples``
    subsets of ``fraction`` of the samples) (:mod:`repalign.stats`).
    The ``best`` column marks the best layer pair; when a model is compared with itself, the
    trivial pairs of a layer with itself are left out of that search and of the max-T null.
    Reliability warnings (N small for k, degenerate layers) are in ``Comparison.warnings``.

    Where the neighbour lists come from is an option of the layer states
    (:mod:`repalign.metrics.engine`): ``knn`` (``exact``, ``faiss-hnsw``, ``faiss-ivf``; approximate
    lists add a ``knn_recall`` column) and ``block_rows`` (layers read in row blocks, out of core).
    ``cluster`` (a Dask spec such as ``local:4`` or a Client) builds the layer states on workers
    (:func:`repalign.distributed.align_layers_distributed`); with ``search_block`` (rows) each
    layer's exact neighbour search is itself split into block tasks over all workers, for a few
    layers of very many samples. ``anchors`` (a count, drawn with ``seed``, or sample ids) compares
    relative representations (:mod:`repalign.metrics.anchors`): each layer's rows become their
    cosine similarities to the anchor samples' rows of the same layer, and the anchors themselves
    are left out of the compared samples (``n_samples`` counts the rest; ``params`` records
    ``anchors=M``). Returns a :class:`Comparison` whose
    ``table`` is the tidy long table (model_a, layer_a, model_b, layer_b, metric, params, score,
    n_samples, best, and the statistics columns when requested).
    """
    canonical, knn_options = _check_request(metrics, ci=ci, permutations=permutations, knn=knn,
                                            knn_options=knn_options, block_rows=block_rows)
    if (permutations or ci) and cluster is not None:
        raise RepalignError("--permutations/--ci run in this process; drop --cluster for them")
    if search_block is not None:
        if cluster is None:
            raise RepalignError("--search-block spreads each layer's neighbour search over a cluster's workers; add --cluster "
                                "(or drop --search-block)")
        search_block = stats.check_count(search_block, "search_block", 1)
    ca, cb = _open_models(cache, cache_b, model_a, model_b)
    names_a = select_layers(ca.layers(model_a), layers_a, model_a)
    names_b = select_layers(cb.layers(model_b), layers_b, model_b)
    ids = align_ids(ca, model_a, cb, model_b)
    exclude = _trivial_pairs(ca, cb, model_a, model_b, names_a, names_b)
    anchor_ids = None
    if anchors is not None:
        if block_rows is not None or cluster is not None:
            raise RepalignError("--anchors needs the layers in memory; drop --block-rows and --cluster")
        anchor_ids, ids = _split_anchors(ids, anchors, seed)
    params = _metric_params(canonical, len(ids), params)
    in_memory = block_rows is None and cluster is None
    items_a = _layer_items(ca, model_a, names_a, ids, in_memory, anchor_ids)
    items_b = _layer_items(cb, model_b, names_b, ids, in_memory, anchor_ids)
    run = _Run(model_a=model_a, model_b=model_b, names_a=names_a, names_b=names_b, canonical=canonical, params=params,
               n=len(ids), exclude=exclude, normalize=normalize, permutations=permutations, ci=ci,
               n_subsamples=n_subsamples, fraction=fraction, seed=seed, alpha=alpha, cluster=cluster, knn=knn,
               knn_options=knn_options, block_rows=block_rows, search_block=search_block,
               extra={"anchors": len(anchor_ids)} if anchor_ids is not None else {})
    return _compare_items(run, items_a, items_b)


def _layer_items(cache: Cache, model: str, names: list, ids: list, in_memory: bool, anchor_ids: list | None) -> list:
    """What the engine scores for each layer: its rows (in memory), their relative representation
    to the anchor rows (``anchor_ids``), or a cache reference read in blocks."""
    if anchor_ids is not None:  # one read per layer: the compared rows, then the anchors' rows
        rows = [cache.read_layer(model, x, ids=[*ids, *anchor_ids]) for x in names]
        return [relative_representation(r[:len(ids)], r[len(ids):]) for r in rows]
    if not in_memory:
        return [CacheLayer(str(cache.path), model, x, tuple(ids)) for x in names]
    return [cache.read_layer(model, x, ids=ids) for x in names]


def _split_anchors(ids: Sequence[str], anchors, seed: int) -> tuple[list, list]:
    """(anchor ids, the other ids in order): ``anchors`` is a count drawn with ``seed``, or ids."""
    if isinstance(anchors, str):
        raise RepalignError(f"anchors must be a number or a list of sample ids, got the string {anchors!r}")
    if isinstance(anchors, numbers.Number):  # a count; draw_anchors refuses non-integers
        anchor_ids = [ids[i] for i in draw_anchors(len(ids), cast(int, anchors), seed)]
    else:
        anchor_ids = list(dict.fromkeys(anchors))
        shared = set(ids)
        missing = [a for a in anchor_ids if a not in shared]
        if missing:
            raise RepalignError(f"{len(missing)} anchor id(s) are not samples of both models (first: {missing[0]!r}); "
                                "choose anchors among the shared samples")
        if len(anchor_ids) >= len(ids):
            raise RepalignError(f"{len(anchor_ids)} anchors leave no sample to compare out of {len(ids)}; use fewer anchors")
    chosen = set(anchor_ids)
    return anchor_ids, [i for i in ids if i not in chosen]


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
    knn: str
    knn_options: dict
    block_rows: int | None
    cluster: object = None
    search_block: int | None = None
    fraction: float = 0.8
    draw: object = None
    offsets: np.ndarray | None = None
    extra: dict = field(default_factory=dict)
    level: str | None = None
    n_units: int | None = None
    warnings: list = field(default_factory=list)

    @property
    def engine_options(self) -> dict:
        """Preprocessing and neighbour backend, as :func:`repalign.metrics.engine.layer_state` takes them."""
        return dict(normalize=self.normalize, knn=self.knn, knn_options=self.knn_options, block_rows=self.block_rows)


def _compare_items(run: _Run, items_a: list, items_b: list) -> Comparison:
    """Score the layers (arrays, or cache references read in blocks) and build the table and statistics."""
    resolved = resolve_metrics(run.canonical, run.n, run.params)
    results: list = [None] * len(resolved)
    intervals: list = [None] * len(resolved)
    if run.cluster is not None:
        with open_client(run.cluster) as client:
            alignments = align_layers_distributed(client, items_a, items_b, run.canonical, run.names_a, run.names_b,
                                                  n_samples=run.n, search_block=run.search_block, **run.engine_options,
                                                  **run.params)
    elif run.permutations:
        alignments, results = _permutation_alignments(run, resolved, items_a, items_b)
    else:
        sources_a = [_source(x, run.block_rows) for x in items_a]
        sources_b = [_source(x, run.block_rows) for x in items_b]
        alignments = align_layers_multi(sources_a, sources_b, metrics=run.canonical, names_a=run.names_a,
                                        names_b=run.names_b, n_samples=run.n if run.block_rows else None,
                                        **run.engine_options, **run.params)
    if run.ci:
        intervals = stats.subsample_intervals(items_a, items_b, resolved, ci=run.ci, n_subsamples=run.n_subsamples,
                                              fraction=run.fraction, seed=run.seed, normalize=run.normalize,
                                              full=[al.scores for al in alignments], offsets=run.offsets)
    in_memory = run.block_rows is None and run.cluster is None
    layers = {**{f"{run.model_a}:{x}": a for x, a in zip(run.names_a, items_a)},
              **{f"{run.model_b}:{x}": b for x, b in zip(run.names_b, items_b)}} if in_memory else None
    frames, warnings = [], []
    for al, (metric, p), result, interval in zip(alignments, resolved, results, intervals):
        settable = {k: v for k, v in p.items() if k in metric.params}
        warnings += stats.check_reliability(run.n, metric.name, settable, layers=layers, normalize=run.normalize,
                                            permutations=run.permutations or None, alpha=run.alpha)
        frames.append(_frame(run, al, result, interval))
    return Comparison(table=pd.concat(frames, ignore_index=True), model_a=run.model_a, model_b=run.model_b,
                      n_samples=run.n, alignments=alignments, warnings=list(dict.fromkeys(run.warnings + warnings)),
                      level=run.level, n_units=run.n_units)


def _permutation_alignments(run: _Run, resolved: list, items_a: list, items_b: list) -> tuple[list, list]:
    """Observed scores and permutation results; every layer's state is kept for the permutation loop
    (without permutations side A is streamed)."""
    options = run.engine_options
    states_a = [layer_state(_source(x, run.block_rows), resolved, name=nm, n_samples=run.n, **options)
                for x, nm in zip(items_a, run.names_a)]
    states_b = [layer_state(_source(x, run.block_rows), resolved, name=nm, n_samples=run.n, **options)
                for x, nm in zip(items_b, run.names_b)]
    observed = [score_matrix(metric, p, m, states_a, states_b) for m, (metric, p) in enumerate(resolved)]
    results = stats.permutation_tests(states_a, states_b, resolved, run.permutations, run.seed, run.alpha,
                                      run.exclude, observed, draw=run.draw)
    recall = {**{("a", s.name): s.recall for s in states_a}, **{("b", s.name): s.recall for s in states_b}}
    alignments = layer_alignments(observed, resolved, run.names_a, run.names_b, run.n, normalize=run.normalize,
                                  knn=run.knn, recall=recall)
    return alignments, results


def _frame(run: _Run, al: LayerAlignment, result, interval) -> pd.DataFrame:
    """The tidy rows of one metric: scores, the level columns of token rows, recall and statistics."""
    al.exclude = run.exclude
    al.params.update(run.extra)
    frame = al.to_frame(model_a=run.model_a, model_b=run.model_b)
    if run.level is not None:
        frame.insert(frame.columns.get_loc("n_samples") + 1, "n_units", run.n_units)
        frame.insert(frame.columns.get_loc("metric"), "granularity", run.level)
    if al.recall:
        frame["knn_recall"] = [min(al.recall[("a", x)], al.recall[("b", y)]) for x, y in zip(frame["layer_a"], frame["layer_b"])]
    if result is not None or interval is not None:
        frame = pd.concat([frame, stats.stats_columns(result, interval, shape=al.scores.shape)], axis=1)
    return frame


def _source(item, block_rows):
    """What the engine reads: an array, or a CacheLayer's row blocks when computing out of core."""
    if block_rows is None or not hasattr(item, "blocks"):
        return item
    return lambda: item.blocks(block_rows)


# ----------------------------------------------------------------------------- token rows
#: grouping columns per input kind: what one token row is labelled with
GROUP_COLUMNS = {"sequence": ("chain", "residue"), "structure": ("element",)}
TOKEN_SUBSAMPLES = ("samples", "uniform")


@dataclass(frozen=True)
class TokenRows:
    """Which rows of the shared samples' stored token layers a comparison uses, and how.

    ids: the samples, in order; counts: stored token rows of each sample; keep: sorted indices of
    the stored rows kept (a uniform subsample; None = all); groups: per stored row, the index of its
    group within its sample (rows of a group are mean-pooled into one row; None = no pooling);
    offsets (n+1,): the rows of each sample after selection and pooling.
    """

    ids: tuple
    counts: np.ndarray
    keep: np.ndarray | None = None
    groups: np.ndarray | None = None
    offsets: np.ndarray = None  # type: ignore[assignment]  # always given (_token_rows); the default only follows field order
    stored: np.ndarray = field(init=False, repr=False)  # (n+1,) first stored row of each sample

    def __post_init__(self):
        object.__setattr__(self, "stored", np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64))

    def transform(self, start: int, stop: int, data: np.ndarray) -> np.ndarray:
        """The rows used from samples start:stop, whose stored rows are ``data``."""
        lo, hi = self.stored[start], self.stored[stop]
        if self.keep is not None:
            a, b = np.searchsorted(self.keep, [lo, hi])
            data = data[self.keep[a:b] - lo]
        if self.groups is not None:
            sample = np.repeat(np.arange(stop - start), self.counts[start:stop])
            first = self.offsets[start:stop] - self.offsets[start]  # first output row of each sample
            target = first[sample] + self.groups[lo:hi]
            sums = np.zeros((int(self.offsets[stop] - self.offsets[start]), data.shape[1]), dtype=np.float64)
            np.add.at(sums, target, data)
            data = (sums / np.bincount(target, minlength=len(sums))[:, None]).astype(np.float32)
        return data


@dataclass(frozen=True)
class TokenLayer:
    """A reference to one token layer of a cache restricted to :class:`TokenRows`, read whole or in blocks."""

    path: str
    model: str
    layer: str
    rows: TokenRows

    def read(self) -> np.ndarray:
        return np.concatenate(list(self.blocks(None)), axis=0)

    def blocks(self, block_rows: int | None = 65536):
        """Row blocks of at most ``block_rows`` rows; samples are read a few at a time, so memory is
        bounded by ``block_rows`` rows plus the longest sample."""
        ids, counts = list(self.rows.ids), self.rows.counts
        with Cache(self.path) as c:
            start = 0
            while start < len(ids):
                stop, total = start + 1, counts[start]
                while block_rows is not None and stop < len(ids) and total + counts[stop] <= block_rows:
                    total += counts[stop]
                    stop += 1
                if block_rows is None:
                    stop = len(ids)
                data, _ = c.read_tokens(self.model, self.layer, ids=ids[start:stop])
                data = self.rows.transform(start, stop, data)
                step = block_rows or max(len(data), 1)
                for s in range(0, len(data), step):
                    yield data[s:s + step]
                start = stop


def _token_counts(cache, model: str, names: list[str], ids: list[str]) -> np.ndarray:
    """Rows per sample of a model's chosen token layers (equal across them, or a one-line error)."""
    counts = cache.read_token_counts(model, names[0], ids=ids)
    for name in names[1:]:
        other = cache.read_token_counts(model, name, ids=ids)
        if not np.array_equal(counts, other):
            i = int(np.flatnonzero(counts != other)[0])
            raise RepalignError(f"{model}: token layers {names[0]} and {name} store {counts[i]} and {other[i]} rows for sample "
                                f"{ids[i]!r}; the cache is inconsistent: extract {model} again")
    return counts


def _check_inputs(records, ids, counts, hashes, model):
    """The stored rows of every shared sample are its residues / atoms: same input, one row each."""
    for i, sample in enumerate(ids):
        rec = records.get(sample)
        if rec is None:
            raise RepalignError(f"sample {sample!r} of {model} is not in --inputs; give the input files {model} was extracted from")
        if hashes[i] != UNKNOWN_HASH and hashes[i] != rec.content_hash:
            raise RepalignError(f"sample {sample!r} in --inputs differs from the input {model} was extracted from (content hashes differ); "
                                "give the same input files")
        if counts[i] != rec.size:
            unit = "residues" if rec.kind == "sequence" else "atoms"
            raise RepalignError(f"{model} stores {counts[i]} token rows for sample {sample!r}, which has {rec.size} {unit}; "
                                f"its rows are not one per {unit[:-1]} (special tokens or padding kept?): extract it again")


def _group_codes(records, ids, column: str) -> np.ndarray:
    """Per token row of every sample (in order), its group's index within the sample (groups in order of first row)."""
    codes = []
    for sample in ids:
        rec = records[sample]
        if rec.kind == "sequence":
            labels = (np.repeat(np.arange(len(rec.chains)), [len(c) for c in rec.chains]) if column == "chain"
                      else np.array(list("".join(rec.chains))))
        else:
            labels = np.asarray(rec.payload.get_chemical_symbols())
        _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        codes.append(rank[inverse.ravel()])
    return np.concatenate(codes)


def compare_tokens(
    cache: str | os.PathLike,
    model_a: str,
    model_b: str,
    metrics: Sequence[str] = ("mknn",),
    *,
    cache_b: str | os.PathLike | None = None,
    layers_a: Sequence[str] | None = None,
    layers_b: Sequence[str] | None = None,
    max_tokens: int | None = None,
    subsample: str = "samples",
    group_by: str | None = None,
    inputs=None,
    normalize: str | None = "l2",
    permutations: int = 0,
    ci: float | None = None,
    n_subsamples: int = 100,
    fraction: float = 0.8,
    seed: int = 0,
    alpha: float = 0.05,
    knn: str = "exact",
    knn_options: dict | None = None,
    block_rows: int | None = None,
    **params,
) -> Comparison:
    """Score every token layer of ``model_a`` against every token layer of ``model_b``, row by row.

    The Python side of ``repalign compare --tokens``. A row is one token (residue, atom) of a shared
    sample, the same token in both models: both must store the same number of rows for every
    shared sample (checked first; the error names the first sample that differs). With ``inputs``
    (input files or records, as for ``extract``), every sample must also be the same input as
    stored (content hash) with exactly one row per residue / atom.

    What a row is: every token (default); at most ``max_tokens`` rows drawn with ``seed``, by whole
    samples (``subsample="samples"``: samples in a seeded random order, as many as fit) or
    uniformly over rows (``"uniform"``); or, with ``group_by`` (``chain`` or ``residue`` for
    sequences, ``element`` for structures; needs ``inputs``), the mean of the tokens of each group
    within each sample. These choices are recorded in the table's ``params``.

    Statistics respect the samples: ``permutations`` move whole samples
    (:func:`repalign.stats.block_permutation`: all rows of a sample onto another sample with the
    same row count), ``ci`` resamples whole samples (:func:`repalign.stats.subsample_intervals`
    with ``offsets``). ``block_rows`` reads the layers in row blocks (out of core; kNN metrics and
    linear CKA). The table has ``level = "token"`` and ``n_units`` (samples) beside ``n_samples``
    (rows). Other parameters are those of :func:`compare_models`.
    """
    canonical, knn_options = _check_request(metrics, ci=ci, permutations=permutations, knn=knn,
                                            knn_options=knn_options, block_rows=block_rows)
    _check_token_options(max_tokens, subsample, group_by)
    records = _token_records(inputs, group_by)
    ca, cb = _open_models(cache, cache_b, model_a, model_b, tokens=True)
    names_a = select_layers(ca.token_layers(model_a), layers_a, f"{model_a} (token layers)")
    names_b = select_layers(cb.token_layers(model_b), layers_b, f"{model_b} (token layers)")
    ids = align_ids(ca, model_a, cb, model_b)
    counts = _shared_token_counts(ca, cb, model_a, model_b, names_a, names_b, ids)
    if records is not None:
        for c, m in ((ca, model_a), (cb, model_b)):
            stored = dict(zip(c.ids(m), c.hashes(m)))
            _check_inputs(records, ids, counts, [stored[i] for i in ids], m)
    token_rows, extra = _token_rows(ids, counts, records, group_by, max_tokens, subsample, seed)
    n = int(token_rows.offsets[-1])
    exclude = _trivial_pairs(ca, cb, model_a, model_b, names_a, names_b)
    params = _metric_params(canonical, n, params)
    draw, warnings = _block_draw(token_rows.offsets, alpha) if permutations else (None, [])
    items_a: list[Any] = [TokenLayer(str(ca.path), model_a, x, token_rows) for x in names_a]
    items_b: list[Any] = [TokenLayer(str(cb.path), model_b, x, token_rows) for x in names_b]
    if block_rows is None:
        items_a = [x.read() for x in items_a]  # TokenLayers, or their arrays when read whole
        items_b = [x.read() for x in items_b]
    run = _Run(model_a=model_a, model_b=model_b, names_a=names_a, names_b=names_b, canonical=canonical, params=params,
               n=n, exclude=exclude, normalize=normalize, permutations=permutations, ci=ci, n_subsamples=n_subsamples,
               fraction=fraction, seed=seed, alpha=alpha, knn=knn, knn_options=knn_options, block_rows=block_rows,
               draw=draw, offsets=token_rows.offsets, extra=extra, level="token", n_units=len(token_rows.ids),
               warnings=warnings)
    return _compare_items(run, items_a, items_b)


def _check_token_options(max_tokens, subsample: str, group_by) -> None:
    if max_tokens is not None:
        stats.check_count(max_tokens, "max_tokens", 1)
    if subsample not in TOKEN_SUBSAMPLES:
        raise RepalignError(f"subsample={subsample!r} is not one of {', '.join(TOKEN_SUBSAMPLES)}")
    if group_by is not None and max_tokens is not None:
        raise RepalignError("--group-by pools tokens into few rows per sample; drop --max-tokens with it")


def _token_records(inputs, group_by) -> dict | None:
    """The input records by id (None without inputs), checked to label tokens by ``group_by``."""
    records = None
    if inputs is not None:
        given = isinstance(inputs, (list, tuple)) and inputs and hasattr(inputs[0], "kind")
        records = {r.id: r for r in (inputs if given else read_inputs(inputs))}
    if group_by is None:
        return records
    known = sorted({c for columns in GROUP_COLUMNS.values() for c in columns})
    if group_by not in known:
        raise RepalignError(f"unknown grouping column {group_by!r}; available: {', '.join(known)}")
    if records is None:
        raise RepalignError(f"--group-by {group_by} labels tokens from the inputs; add --inputs with the files the models were extracted from")
    kinds = {r.kind for r in records.values()}
    available = sorted({c for k in kinds for c in GROUP_COLUMNS[k]})
    if any(group_by not in GROUP_COLUMNS[k] for k in kinds):
        raise RepalignError(f"unknown grouping column {group_by!r} for these inputs; available: {', '.join(available)}")
    return records


def _shared_token_counts(ca: Cache, cb: Cache, model_a: str, model_b: str, names_a: list, names_b: list,
                         ids: list) -> np.ndarray:
    """Rows per shared sample, the same in both models' chosen token layers (or a one-line error)."""
    counts = _token_counts(ca, model_a, names_a, ids)
    counts_b = _token_counts(cb, model_b, names_b, ids)
    if not np.array_equal(counts, counts_b):
        i = int(np.flatnonzero(counts != counts_b)[0])
        raise RepalignError(f"{model_a} and {model_b} tokenise sample {ids[i]!r} differently ({counts[i]} vs {counts_b[i]} rows; "
                            "special tokens or padding kept by one?); per-token alignment needs the same tokens in both")
    return counts


def _token_rows(ids: list, counts: np.ndarray, records, group_by, max_tokens, subsample: str,
                seed) -> tuple[TokenRows, dict]:
    """What a row is (every token, a subsample, or one row per group of each sample), and the
    parameters that record it in the table."""
    rng = np.random.default_rng(stats.seeded_rng(seed)[1])  # the seed is checked whatever is drawn
    extra: dict = {"granularity": "token"}
    keep = groups = None
    rows_per_sample = counts
    if group_by is not None:
        groups = _group_codes(records, ids, group_by)
        stored = np.concatenate([[0], np.cumsum(counts)])
        rows_per_sample = np.array([groups[stored[i]:stored[i + 1]].max() + 1 for i in range(len(ids))], dtype=np.int64)
        extra["group_by"] = group_by
    elif max_tokens is not None:
        extra.update(max_tokens=int(max_tokens), subsample=subsample, seed=seed)
        if counts.sum() > max_tokens:
            if subsample == "samples":
                ids, counts = _whole_samples(ids, counts, max_tokens, rng)
                rows_per_sample = counts
            else:
                ids, counts, keep, rows_per_sample = _uniform_rows(ids, counts, max_tokens, rng)
    offsets = np.concatenate([[0], np.cumsum(rows_per_sample)]).astype(np.int64)
    return TokenRows(tuple(ids), counts, keep, groups, offsets), extra


def _whole_samples(ids: list, counts: np.ndarray, max_tokens: int, rng) -> tuple[list, np.ndarray]:
    """Samples in a seeded random order, as many as fit in ``max_tokens`` rows (kept in stored order)."""
    order = rng.permutation(len(ids))
    fits = np.cumsum(counts[order]) <= max_tokens
    chosen = np.sort(order[:int(np.argmin(fits)) if not fits.all() else len(order)])
    if len(chosen) == 0:
        raise RepalignError(f"max_tokens={max_tokens} is smaller than the first drawn sample ({counts[order[0]]} rows); "
                            "raise --max-tokens or use --subsample uniform")
    return [ids[i] for i in chosen], counts[chosen]


def _uniform_rows(ids: list, counts: np.ndarray, max_tokens: int, rng) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """``max_tokens`` stored rows drawn uniformly: (ids, counts, kept rows, rows per sample); samples
    left without a row drop out."""
    keep = np.sort(rng.choice(int(counts.sum()), size=int(max_tokens), replace=False))
    stored = np.concatenate([[0], np.cumsum(counts)])
    rows_per_sample = np.diff(np.searchsorted(keep, stored))
    if np.any(rows_per_sample == 0):
        kept_samples = np.flatnonzero(rows_per_sample > 0)
        starts = stored[kept_samples]
        new_stored = np.concatenate([[0], np.cumsum(counts[kept_samples])])
        sample_of = np.searchsorted(stored, keep, side="right") - 1
        position = np.searchsorted(kept_samples, sample_of)
        keep = keep - starts[position] + new_stored[position]
        ids = [ids[i] for i in kept_samples]
        counts, rows_per_sample = counts[kept_samples], rows_per_sample[kept_samples]
    return ids, counts, keep, rows_per_sample


def _block_draw(offsets: np.ndarray, alpha: float) -> tuple[stats.BlockPermutation, list[str]]:
    """The block permutations that move whole samples, and warnings about their number."""
    n_samples = len(offsets) - 1
    draw = stats.block_permutation(offsets)
    warnings = []
    if draw.movable == 0:
        raise RepalignError(f"no two of the {n_samples} samples have the same number of rows, so no block permutation moves a sample; "
                            "use --group-by, or compare pooled layers (without --tokens) for p-values")
    if draw.count < 1.0 / alpha:
        warnings.append(f"only {draw.count:.0f} distinct block permutations exist (samples move only onto samples with the "
                        f"same number of rows): no p-value can reach alpha={alpha}")
    elif draw.movable < n_samples:
        warnings.append(f"{n_samples - draw.movable} of {n_samples} samples have a row count no other sample has and stay in "
                        "place under block permutations (the test stays exact, with less power)")
    return draw, warnings
