"""Layer comparison on a Dask cluster: the metrics engine's per-layer states built on workers.

:func:`align_layers_distributed` maps the layer-state engine
(:func:`repalign.metrics.engine.layer_state`, with its neighbour backend) over the layers on
workers, once per layer, and scores every layer pair where the states are; the numbers are those
of :func:`repalign.metrics.align_layers_multi`. :class:`DaskCandidateSearch` spreads the exact
neighbour search of one layer over all workers instead.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from repalign.distributed.cluster import dask_distributed, gather_watched
from repalign.errors import RepalignError
from repalign.metrics import LayerAlignment
from repalign.metrics.engine import check_backend, layer_state, resolve_metrics, row_blocks
from repalign.metrics.layers import score_layers, score_row
from repalign.metrics.neighbors import block_pair_topk, merge_topk, rechunked_rows
from repalign.metrics.outofcore import blocked_knn_state
from repalign.metrics.prepare import check_prepare_options


# ----------------------------------------------------------------------------- comparison
def _layer_source(item, block_rows: int | None):
    """What the engine reads on a worker: the array, or with ``block_rows`` a block source."""
    if hasattr(item, "blocks"):  # a cache-layer reference (repalign.compare.sources), read on this worker
        return (lambda: item.blocks(block_rows)) if block_rows is not None else item.read()
    if callable(item) and block_rows is None:
        return item()
    return item


def _state_on_worker(item, resolved, name, label, options):
    """The engine's per-layer state, built where the layer is read (runs on a worker)."""
    return layer_state(_layer_source(item, options["block_rows"]), resolved, name=name, label=label, **options)


def _recall_of(state) -> float | None:
    return state.recall


def _n_rows(item) -> int:
    if hasattr(item, "n_rows"):  # a cache-layer reference
        return item.n_rows()
    if callable(item):
        raise RepalignError("a callable layer source needs n_samples=...; pass the number of rows")
    shape = np.shape(item)
    if len(shape) != 2:
        raise RepalignError(f"a layer has shape {shape}; pass (N, D) matrices, CacheLayer references or callables")
    return int(shape[0])


def align_layers_distributed(
    client,
    layers_a: Sequence,
    layers_b: Sequence,
    metrics: Sequence[str] | str = ("mknn",),
    names_a=None,
    names_b=None,
    *,
    normalize="l2",
    clip_quantile=None,
    knn: str = "exact",
    knn_options: dict | None = None,
    block_rows: int | None = None,
    n_samples: int | None = None,
    search_block: int | None = None,
    **params,
):
    """:func:`repalign.metrics.align_layers_multi` with the per-layer states built on Dask workers.

    client: a ``distributed.Client``. layers_a, layers_b: per-layer (N, D) arrays,
    cache-layer references (:class:`repalign.compare.sources.CacheLayer`, read on the worker), or callables returning the array.
    The engine's :func:`repalign.metrics.engine.layer_state` runs once per layer on a worker (with
    the neighbour backend ``knn`` / ``knn_options`` / ``block_rows``) and its states stay there;
    each layer of A is then scored against every layer of B on one worker. Same numbers as
    the single-process engine. Returns one LayerAlignment per metric (approximate neighbours:
    ``recall`` set, params include ``knn``).

    search_block: instead of one task per layer, spread each layer's exact neighbour search over
    all workers (:class:`DaskCandidateSearch` with blocks of ``search_block`` rows; for a few
    layers of very many samples). The layers are then read here in blocks of ``block_rows``
    (default ``search_block``) and the finished states are sent to the workers that score them.
    """
    dask_distributed()
    check_prepare_options(normalize, clip_quantile)
    knn_options = check_backend(knn, block_rows, knn_options)
    items_a, items_b = list(layers_a), list(layers_b)
    if not items_a or not items_b:
        raise RepalignError("layers_a and layers_b must each hold at least one layer")
    names_a, names_b = _layer_names(names_a, items_a), _layer_names(names_b, items_b)
    n_samples = _n_rows(items_a[0]) if n_samples is None else int(n_samples)
    resolved = resolve_metrics(metrics, n_samples, params)
    search = None
    if search_block is not None:
        if knn != "exact":
            raise RepalignError("search_block splits the exact neighbour search; use knn='exact' with it")
        search = DaskCandidateSearch(client, search_block)
        block_rows = block_rows or search.block
    options = dict(normalize=normalize, clip_quantile=clip_quantile, knn=knn, knn_options=knn_options,
                   block_rows=block_rows, n_samples=n_samples)
    scored = score_layers(items_a, names_a, items_b, names_b, WorkerStates(client, resolved, options, search))
    scores, recall = scored.scores, scored.recall
    out = []
    for m, (metric, p) in enumerate(resolved):
        params_m = {**p, "normalize": normalize, "clip_quantile": clip_quantile}
        approximate = knn != "exact" and metric.is_knn
        if approximate:
            params_m["knn"] = knn
        out.append(LayerAlignment(scores[m], list(names_a), list(names_b), metric.name, params_m, n_samples,
                                  recall=recall if approximate else None))
    return out


def _layer_names(names, items: list) -> list[str]:
    if names is None:
        return [str(i) for i in range(len(items))]
    names = [str(x) for x in names]
    if len(names) != len(items):
        raise RepalignError("pass one name per layer in names_a and names_b")
    return names


class WorkerStates:
    """The executor of :func:`repalign.metrics.layers.score_layers` on the workers of ``client``:
    each layer's state is built and kept on a worker, and scored there.

    resolved: the metrics (:func:`repalign.metrics.engine.resolve_metrics`); options: the keyword
    arguments of :func:`repalign.metrics.engine.layer_state`; search: a :class:`DaskCandidateSearch`
    to build each state here with its neighbour search spread over the workers (None: one task per layer).
    """

    def __init__(self, client, resolved: list, options: dict, search: DaskCandidateSearch | None = None):
        self.client, self.resolved, self.options, self.search = client, resolved, options, search
        self.futures: list = []  # cancelled by release()

    def _held(self, future):
        self.futures.append(future)
        return future

    def state(self, item, name: str, label: str):
        """A future of the layer's state."""
        if self.search is None:
            return self._held(self.client.submit(_state_on_worker, item, self.resolved, name, label, self.options, pure=False))
        source = _layer_source(item, self.options["block_rows"])
        state = layer_state(source, self.resolved, name=name, label=label, knn_search=self.search, **self.options)
        return self._held(self.client.scatter(state, hash=False))  # unique key: see DaskCandidateSearch

    def score_row(self, state_a, states_b: list):
        return self._held(self.client.submit(score_row, state_a, states_b, self.resolved, pure=False))

    def recall(self, state):
        """A future of the state's recall; None with exact neighbours (no task)."""
        if self.options["knn"] == "exact":
            return None
        return self._held(self.client.submit(_recall_of, state, pure=False))

    def gather(self, values: list) -> list:
        futures = [v for v in values if v is not None]
        done = iter(gather_watched(self.client, futures, desc="layer tasks (Dask)")) if futures else iter(())
        return [None if v is None else next(done) for v in values]

    def release(self) -> None:
        self.client.cancel(self.futures)
        self.futures = []


# ----------------------------------------------------------------------------- one layer across workers
class DaskCandidateSearch:
    """A candidate search (:data:`repalign.metrics.neighbors.CandidateSearch`) spread over Dask workers.

    The distinct rows are cut into B blocks of ``block`` rows and scattered to the workers once; each
    of the B(B+1)/2 row block × column block products above the diagonal is one task
    (:func:`repalign.metrics.neighbors.block_pair_topk`), and each row block's partial lists are
    merged by one more task (:func:`repalign.metrics.neighbors.merge_topk`). The lists it returns are
    only candidates: :func:`repalign.metrics.neighbors.build_knn_state` finishes them with float64
    index-order similarities, so the neighbour lists are those of the single-process search,
    whatever ``block`` and the number of workers.

    After a call: ``tasks`` (products run) and ``pids`` (worker processes that ran them).
    """

    def __init__(self, client, block: int = 2048):
        if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
            raise RepalignError(f"block={block!r} must be a positive whole number of rows, e.g. 8192")
        self.client = client
        self.block = int(block)
        self.tasks = 0
        self.pids: set[int] = set()

    def __call__(self, rows, ks: int) -> tuple[np.ndarray, np.ndarray]:
        client = self.client
        starts, blocks = [], []
        for r0, X in rechunked_rows(rows, self.block):
            starts.append(r0)
            # hash=False: a key of its own, so cancelling this call's blocks (below) cannot release the
            # same rows scattered by a later call under the same content-hash key ("lost dependencies")
            blocks.append(client.scatter(X, hash=False))
        pairs = {}
        for i, (r0, Xr) in enumerate(zip(starts, blocks)):
            for j in range(i, len(blocks)):
                pairs[i, j] = client.submit(_pair_task, Xr, blocks[j], r0, starts[j], ks, rows.n, pure=False)
        merged = []
        for b in range(len(blocks)):
            parts = [(pairs[b, j], 0) for j in range(b, len(blocks))] + [(pairs[i, b], 1) for i in range(b + 1)]
            merged.append(client.submit(_merge_task, parts, ks, pure=False))
        try:
            results = gather_watched(client, merged, desc="neighbour blocks (Dask)")
        finally:
            client.cancel(merged + list(pairs.values()) + blocks)
        self.tasks += len(pairs)
        self.pids.update(pid for r in results for pid in r[2])
        if not results:
            return np.empty((0, ks), dtype=np.int64), np.empty((0, ks))
        return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])


def _pair_task(Xr, Xc, r0, c0, ks, n):
    return os.getpid(), block_pair_topk(Xr, Xc, r0, c0, ks, n)


def _merge_task(parts, ks):
    idx, sim = merge_topk([result[1][side] for result, side in parts], ks)
    return idx, sim, {result[0] for result, _ in parts}


def distributed_knn_state(client, layer, k: int = 10, normalize="l2", clip_quantile=None, *, block: int = 2048,
                          name: str = "layer"):
    """Tie-aware neighbour lists of one layer with its search spread over the workers of ``client``.

    layer: an (N, D) array or a block source (a callable returning a fresh iterator of row blocks,
    e.g. ``CacheLayer.blocks``); the rows are read here, in blocks, and scattered once. The same
    :class:`repalign.metrics.neighbors.KnnState` as the in-memory and out-of-core searches
    (:func:`repalign.metrics.outofcore.blocked_knn_state` with a :class:`DaskCandidateSearch`).
    """
    search = DaskCandidateSearch(client, block)
    source = row_blocks(layer, search.block)
    return blocked_knn_state(source, k, normalize, clip_quantile, search.block, name=name, search=search)
