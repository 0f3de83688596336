"""Pooled comparisons: :func:`compare_models` scores every layer of one model against every layer of
another from their cache(s), samples matched by id (re-exported by :mod:`repalign.compare`)."""

from __future__ import annotations

import dataclasses
import numbers
import os
from typing import Sequence, cast

from embeddings_cache import Cache
from repalign.compare.options import EngineOptions, StatsOptions
from repalign.compare.run import (
    Comparison,
    ComparisonRun,
    ComparisonSetup,
    compare_items,
    metric_params,
    resolve_comparison,
    search_family,
)
from repalign.compare.sources import CacheLayer
from repalign.errors import RepalignError
from repalign.metrics.anchors import draw_anchors, relative_representation


def compare_models(
    cache: str | os.PathLike | tuple,
    model_a: str,
    model_b: str,
    metrics: Sequence[str] = ("mknn",),
    *,
    layers_a: Sequence[str] | None = None,
    layers_b: Sequence[str] | None = None,
    engine: EngineOptions | None = None,
    stats: StatsOptions | None = None,
    samples: Sequence[str] | None = None,
    **params,
) -> Comparison:
    """Score every layer of ``model_a`` against every layer of ``model_b`` with each metric.

    ``cache``: the cache holding both models, or the pair (cache of A, cache of B). ``layers_a`` /
    ``layers_b``: layer names or shell-style patterns (default: all). Parameters such as ``k``,
    ``sigma``, ``kernel``, ``variance`` or ``dim`` go to the metrics that accept them.
    ``engine`` (:class:`EngineOptions`): preprocessing, relative representations (``anchors``),
    neighbour backend, out of core (``block_rows``) or on a Dask cluster (``cluster``,
    ``search_block``). ``stats`` (:class:`StatsOptions`): ``permutations`` > 0 adds permutation
    p-values, p-values adjusted for the search over all layer pairs (max-T), null means and
    calibrated scores; ``ci`` adds subsampling intervals where the metric has a valid one (NaN and
    a ``note`` otherwise) (:mod:`repalign.stats`). Their fields are also taken as keywords
    (``normalize=None``, ``permutations=99``, ...), as is ``cache_b``.

    The ``best`` column marks the best layer pair; when a model is compared with itself, the
    trivial pairs of a layer with itself are left out of that search and of the max-T null.
    Reliability warnings (N small for k, degenerate layers) are in ``Comparison.warnings``. With
    ``anchors`` (a count, drawn with the stats ``seed``, or sample ids) each layer's rows become
    their cosine similarities to the anchor samples' rows of the same layer, and the anchors are
    left out of the compared samples (``n_samples`` counts the rest; ``params`` records
    ``anchors=M``). Returns a :class:`Comparison` whose ``table`` is the tidy long table (model_a,
    layer_a, model_b, layer_b, metric, params, score, n_samples, best, and the statistics columns
    when requested). ``samples``: the sample ids to compare, in this order (default: every id both
    models hold, in model_a's order); each must be a sample of both models.
    """
    setup = resolve_comparison(cache, model_a, model_b, metrics, layers_a, layers_b, params, engine=engine, stats=stats)
    if samples is not None:
        setup = dataclasses.replace(setup, ids=_chosen_samples(setup.ids, samples, model_a, model_b))
    return score_setup(setup)


def score_setup(setup: ComparisonSetup) -> Comparison:
    """Score a resolved pooled comparison (:func:`repalign.compare.run.resolve_comparison`): every
    layer of ``setup.names_a`` against every layer of ``setup.names_b`` on ``setup.ids``."""
    ca, cb, engine, stats = setup.ca, setup.cb, setup.engine, setup.stats
    ids = setup.ids
    exclude = search_family(ca, cb, setup.model_a, setup.model_b, setup.names_a, setup.names_b, stats.layer_family)
    anchor_ids = None
    if engine.anchors is not None:
        anchor_ids, ids = _split_anchors(ids, engine.anchors, stats.seed)
    params = metric_params(setup.canonical, len(ids), setup.params)
    items_a = layer_items(ca, setup.model_a, setup.names_a, ids, engine.in_memory, anchor_ids)
    items_b = layer_items(cb, setup.model_b, setup.names_b, ids, engine.in_memory, anchor_ids)
    run = ComparisonRun(model_a=setup.model_a, model_b=setup.model_b, names_a=setup.names_a, names_b=setup.names_b,
                        canonical=setup.canonical, params=params, n=len(ids), exclude=exclude, engine=engine, stats=stats,
                        extra={"anchors": len(anchor_ids)} if anchor_ids is not None else {})
    return compare_items(run, items_a, items_b)


def layer_items(cache: Cache, model: str, names: list, ids: list, in_memory: bool, anchor_ids: list | None = None) -> list:
    """What the engine scores for each layer: its rows (in memory), their relative representation
    to the anchor rows (``anchor_ids``), or a cache reference read in blocks."""
    if anchor_ids is not None:  # one read per layer: the compared rows, then the anchors' rows
        rows = [cache.read_layer(model, x, ids=[*ids, *anchor_ids]) for x in names]
        return [relative_representation(r[:len(ids)], r[len(ids):]) for r in rows]
    if not in_memory:
        return [CacheLayer(str(cache.path), model, x, tuple(ids)) for x in names]
    return [cache.read_layer(model, x, ids=ids) for x in names]


def _chosen_samples(shared: list, samples: Sequence[str], model_a: str, model_b: str) -> list:
    """``samples`` in their order, each a sample of both models; a one-line error naming the others."""
    chosen = list(dict.fromkeys(str(s) for s in samples))
    known = set(shared)
    missing = [s for s in chosen if s not in known]
    if missing:
        raise RepalignError(f"samples: {len(missing)} of {len(chosen)} ids are not samples of both {model_a} and {model_b} "
                            f"(first: {missing[0]!r}); extract both models on them or choose others")
    if len(chosen) < 2:
        raise RepalignError(f"samples: {len(chosen)} id(s) given; a comparison needs at least 2 samples")
    return chosen


def _split_anchors(ids: Sequence[str], anchors, seed: int) -> tuple[list, list]:
    """(anchor ids, the other ids in order): ``anchors`` is a count drawn with ``seed``, or ids."""
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
            raise RepalignError(f"{len(anchor_ids)} anchor samples leave no sample to compare out of {len(ids)}; use fewer")
    chosen = set(anchor_ids)
    return anchor_ids, [i for i in ids if i not in chosen]
