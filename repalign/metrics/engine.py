"""The layer-state engine: one place where a layer becomes metric states and two states become a score.

Every path that scores layers — :func:`repalign.metrics.align_layers`, the statistics in
:mod:`repalign.stats`, ``repalign compare`` and its Dask workers — goes through
:func:`layer_state` and :func:`score`:

* :func:`layer_state` preprocesses a layer once and builds the state of every requested metric
  (metrics with equal state keys share one state: one neighbour search serves mknn, cycle_knn,
  lcs_knn, edit_distance_knn and cknna with the same k). Where the neighbour lists come from is
  an option of the state, the *neighbour backend*: ``knn="exact"`` (in memory), ``block_rows=R``
  (exact, the layer read in row blocks, out of core), or ``knn="faiss-hnsw"|"faiss-ivf"``
  (approximate, recall measured). Tie handling lives in the lists
  (:mod:`repalign.metrics.neighbors`), so every backend gives the same number where it is exact.
* every state knows its sample count and how to relabel itself under a permutation
  (``state.permuted(perm)``, exact: the relabelled state equals a fresh computation on permuted
  rows), which is what permutation tests use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from repalign.errors import RepalignError
from repalign.metrics._validate import as_features, check_permutation
from repalign.metrics.approx import approximate_knn, check_knn_options
from repalign.metrics.backends import BACKEND_KEY, ComputeBackend, get_backend
from repalign.metrics.outofcore import as_block_source, blocked_knn_state, count_rows, linear_cka_moments, streamed_linear_cka
from repalign.metrics.prepare import check_prepare_options, prepare_valid
from repalign.metrics.registry import Metric, get_metric


@dataclass(frozen=True)
class StreamedLinearCka:
    """Linear CKA of a layer read in row blocks: the layer's own statistics (column sums,
    ‖XcᵀXc‖_F², :class:`~repalign.metrics.outofcore.LayerCkaMoments`) are computed once, here; a
    pair streams only the two layers' cross product
    (:func:`repalign.metrics.outofcore.streamed_linear_cka`)."""

    source: Callable
    normalize: Any
    n_samples: int
    moments: Any

    def permuted(self, perm):
        raise RepalignError("linear CKA computed out of core (block_rows) has no permutation test; "
                            "compare in memory for permutations, or use a kNN metric")


@dataclass
class LayerState:
    """The states of one layer for a set of metrics.

    states: one state per requested (metric, params), in request order; n_samples: N;
    recall: the measured recall of approximate neighbour lists (None when exact).
    """

    name: str
    n_samples: int
    states: list
    recall: float | None = None
    _shared: dict = field(default_factory=dict, repr=False)

    def permuted(self, perm) -> "LayerState":
        """The states of this layer with its samples reordered (sample i of the result is old perm[i]).

        Shared states are relabelled once."""
        perm = check_permutation(perm, self.n_samples)
        done: dict[int, Any] = {}
        out = []
        for state in self.states:
            if id(state) not in done:
                done[id(state)] = state.permuted(perm)
            out.append(done[id(state)])
        return LayerState(self.name, self.n_samples, out, self.recall)


def resolve_metrics(metrics: Sequence[str] | str, n_samples: int, params: Mapping[str, Any]) -> list[tuple[Metric, dict]]:
    """(Metric, effective parameters) for each requested metric; ``params`` go to every metric that
    accepts them, and a parameter no requested metric accepts is an error."""
    if isinstance(metrics, str):
        metrics = [metrics]
    objs = [get_metric(m) for m in metrics]
    if not objs:
        raise RepalignError("no metric requested; pass e.g. metrics=['mknn']")
    accepted = set().union(*(m.params for m in objs))
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise RepalignError(
            f"parameter(s) {', '.join(unknown)} not accepted by metric(s) {', '.join(m.name for m in objs)}; "
            f"accepted: {', '.join(sorted(accepted)) or 'none'}"
        )
    return [(m, m.resolve(n_samples, **{k: v for k, v in params.items() if k in m.params})) for m in objs]


def check_backend(knn: str = "exact", block_rows: int | None = None, knn_options: Mapping | None = None) -> dict:
    """Validate the neighbour backend options at a boundary; returns the knn options."""
    options = check_knn_options(knn, **dict(knn_options or {}))
    if block_rows is not None:
        if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) or block_rows < 1:
            raise RepalignError(f"block_rows={block_rows!r} must be a positive whole number of rows, e.g. 65536")
        if knn != "exact":
            raise RepalignError("block_rows computes exact neighbours out of core; use knn='exact' with it, or drop block_rows")
    return options


def layer_state(
    layer,
    metrics: Sequence[tuple[Metric, dict]],
    *,
    normalize="l2",
    clip_quantile=None,
    knn: str = "exact",
    knn_options: Mapping | None = None,
    block_rows: int | None = None,
    n_samples: int | None = None,
    name: str = "layer",
    label: str | None = None,
    knn_search=None,
    backend: ComputeBackend | str | None = None,
) -> LayerState:
    """Build the state of every metric in ``metrics`` (from :func:`resolve_metrics`) for one layer.

    layer: an (N, D) array; with ``block_rows``, a block source instead (a callable returning a
    fresh iterator of row blocks, or a list of blocks; see :mod:`repalign.metrics.outofcore`), read
    in blocks of ``block_rows`` rows: kNN metrics and CKNNA use the exact blocked search, linear
    (biased) CKA is streamed per pair, other metrics are refused. ``knn`` selects approximate
    neighbour lists (faiss; ``knn_options`` such as ef_search). ``n_samples``: the expected N
    (checked). Errors start with ``label`` (default: the layer's name). ``knn_search`` (with
    ``block_rows``): the candidate search of the exact neighbour lists, e.g.
    :class:`repalign.distributed.DaskCandidateSearch`; the lists do not depend on it. ``backend``:
    where Gram blocks, candidates and kernel statistics are computed (a
    :class:`~repalign.metrics.backends.ComputeBackend`, or ``"numba"`` / ``"torch"``; default numba
    on the CPU); kNN lists are the same on every backend.
    """
    label = label or f"layer {name!r}"
    check_prepare_options(normalize, clip_quantile)
    backend = get_backend(backend or "numba")
    if block_rows is None:
        X = as_features(layer, label)
    try:
        if block_rows is not None:
            return _blocked_state(layer, metrics, normalize, clip_quantile, int(block_rows), n_samples, name,
                                  knn_search or backend.candidate_search())
        X = prepare_valid(X, normalize, clip_quantile)
        if n_samples is not None and X.shape[0] != n_samples:
            raise RepalignError(f"it has {X.shape[0]} samples but the other layers have {n_samples}; all layers must hold the same samples in the same order")
        cache: dict = {BACKEND_KEY: backend}
        recall = None
        if knn != "exact":
            # Pre-filled neighbour lists are picked up by every kNN metric's state (registry cache key).
            for metric, p in metrics:
                if metric.is_knn and ("knn", p["k"]) not in cache:
                    cache[("knn", p["k"])], r = approximate_knn(X, p["k"], knn, **dict(knn_options or {}))
                    recall = r if recall is None else min(recall, r)
        states = []
        for metric, p in metrics:
            key = metric.state_key(p)
            if key not in cache:
                cache[key] = metric.state(X, p, cache)
            states.append(cache[key])
        return LayerState(name, X.shape[0], states, recall)
    except RepalignError as exc:
        raise RepalignError(f"{label}: {exc}") from None


def _blocked_state(source, metrics, normalize, clip_quantile, block_rows, n_samples, name, knn_search=None) -> LayerState:
    source = row_blocks(source, block_rows)
    n = count_rows(source, name) if n_samples is None else int(n_samples)
    cache: dict = {}
    states = []
    for metric, p in metrics:
        if metric.name == "cka" and p.get("kernel") == "linear" and not p.get("unbiased"):
            if "cka_moments" not in cache:
                cache["cka_moments"] = linear_cka_moments(source, normalize)
            states.append(StreamedLinearCka(source, normalize, n, cache["cka_moments"]))
            continue
        if not metric.is_knn:
            raise RepalignError(f"metric {metric.name} cannot run out of core (block_rows); use mknn, cycle_knn, lcs_knn, "
                                f"edit_distance_knn, cknna or linear cka, or drop block_rows")
        if ("knn", p["k"]) not in cache:
            cache[("knn", p["k"])] = blocked_knn_state(as_block_source(source, name), p["k"], normalize, clip_quantile,
                                                       n_samples=n, name=name, search=knn_search)
        key = metric.state_key(p)
        if key not in cache:
            cache[key] = metric.state(None, p, cache)
        states.append(cache[key])
    return LayerState(name, n, states)


def row_blocks(layer, block_rows: int):
    """A block source for a layer: an array is cut into blocks; a callable or list is used as is."""
    if callable(layer) or isinstance(layer, (list, tuple)):
        return layer
    arr = np.asarray(layer)
    return lambda: (arr[s:s + block_rows] for s in range(0, arr.shape[0], block_rows))


def score(metric: Metric, params: Mapping[str, Any], state_a, state_b) -> float:
    """The score of one metric from the two layers' states (built with the same ``params``)."""
    if isinstance(state_a, StreamedLinearCka):
        return streamed_linear_cka(state_a.source, state_b.source, state_a.normalize, state_a.moments, state_b.moments)
    return metric.score(state_a, state_b, params)


def score_matrix(metric: Metric, params: Mapping[str, Any], m: int, states_a: Sequence[LayerState],
                 states_b: Sequence[LayerState]) -> np.ndarray:
    """Scores (La, Lb) of metric number ``m`` of the states; errors name the two layers."""
    out = np.empty((len(states_a), len(states_b)))
    for i, a in enumerate(states_a):
        for j, b in enumerate(states_b):
            try:
                out[i, j] = score(metric, params, a.states[m], b.states[m])
            except RepalignError as exc:  # X / Y in the message are these two layers
                raise RepalignError(f"{metric.name} of layer {a.name!r} (X) with layer {b.name!r} (Y): {exc}") from None
    return out
