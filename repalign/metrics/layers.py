"""Layer-by-layer alignment: every layer of model A against every layer of model B.

Each layer is preprocessed and turned into a metric "state" once (neighbour lists, centred
features, SVD basis, ...); every pair score is then computed from two states. A naive loop would
redo both sides for each of the La×Lb pairs. Several metrics requested together share states
(e.g. mutual_knn, cycle_knn and cknna with the same k share one neighbour search per layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from repalign.errors import RepalignError
from repalign.metrics._validate import as_features
from repalign.metrics.backends import get_backend
from repalign.metrics.engine import LayerState, check_backend, layer_state, resolve_metrics, row_blocks, score_matrix
from repalign.metrics.outofcore import count_rows
from repalign.metrics.prepare import check_prepare_options
from repalign.progress import progress


def format_params(params: dict) -> str:
    """Compact, stable text of parameters: sorted ``key=value`` joined by ',' (None values left out)."""
    parts = []
    for key in sorted(params):
        value = params[key]
        if value is None:
            continue
        if isinstance(value, bool):
            value = str(value).lower()
        parts.append(f"{key}={value}")
    return ",".join(parts)


@dataclass
class LayerAlignment:
    """Scores of every (layer_a, layer_b) pair for one metric.

    scores: float64 (La, Lb); names_a / names_b: layer names; metric: canonical metric name;
    params: every effective parameter, preprocessing included (normalize, clip_quantile, k, ...);
    n_samples: N. exclude: optional bool (La, Lb), pairs left out of the search for the best pair
    (e.g. a layer with itself when a model is compared with itself). ``best`` is (row, col, score)
    of the highest score among the other pairs (first in row-major order).
    """

    scores: np.ndarray
    names_a: list[str]
    names_b: list[str]
    metric: str
    params: dict[str, Any]
    n_samples: int
    recall: dict | None = None  # approximate neighbours: {("a"|"b", layer): measured recall}
    exclude: np.ndarray | None = None

    @property
    def best(self) -> tuple[int, int, float]:
        searched = self.scores if self.exclude is None else np.where(self.exclude, -np.inf, self.scores)
        row, col = divmod(int(np.argmax(searched)), self.scores.shape[1])
        return row, col, float(self.scores[row, col])

    def to_frame(self, model_a: str = "A", model_b: str = "B") -> pd.DataFrame:
        """Tidy table: one row per layer pair with columns
        model_a, layer_a, model_b, layer_b, metric, params, score, n_samples, best."""
        la, lb = self.scores.shape
        row, col, _ = self.best
        best = np.zeros(la * lb, dtype=bool)
        best[row * lb + col] = True
        return pd.DataFrame(
            {
                "model_a": [model_a] * (la * lb),
                "layer_a": np.repeat(np.asarray(self.names_a, dtype=object), lb),
                "model_b": [model_b] * (la * lb),
                "layer_b": np.tile(np.asarray(self.names_b, dtype=object), la),
                "metric": [self.metric] * (la * lb),
                "params": [format_params(self.params)] * (la * lb),
                "score": self.scores.ravel().astype(np.float64),
                "n_samples": np.full(la * lb, self.n_samples, dtype=np.int64),
                "best": best,
            }
        )


def layer_list(layers, side: str) -> tuple[list, list[str] | None]:
    """The per-layer items of ``layers_a`` / ``layers_b`` (``side`` 'a' or 'b'), and their names when
    given as a mapping name -> matrix; a one-line error for a single matrix or an empty sequence."""
    if isinstance(layers, np.ndarray) and layers.ndim == 2:
        raise RepalignError(f"layers_{side} is a single 2-D matrix; pass a sequence of per-layer matrices, e.g. [X]")
    names = None
    if isinstance(layers, Mapping):
        names = [str(n) for n in layers]
        layers = list(layers.values())
    try:
        items = list(layers)
    except TypeError:
        raise RepalignError(f"layers_{side} is not a sequence; pass a list of per-layer (N, D) matrices") from None
    if not items:
        raise RepalignError(f"layers_{side} is empty; pass at least one per-layer (N, D) matrix")
    return items, names


def layer_names(names, count: int, side: str, given: list[str] | None = None) -> list[str]:
    """``names`` as text, one per layer; by default the names ``given`` with the layers, else '0', '1', ..."""
    if names is None:
        return given if given is not None else [str(i) for i in range(count)]
    names = [str(n) for n in names]
    if len(names) != count:
        raise RepalignError(f"names_{side} has {len(names)} entries but layers_{side} has {count} layers; pass one name per layer")
    return names


def layer_alignments(scores: Sequence[np.ndarray], resolved: list, names_a: Sequence[str], names_b: Sequence[str],
                     n_samples: int, *, normalize="l2", clip_quantile=None, knn: str = "exact", recall: dict | None = None,
                     exclude: np.ndarray | None = None) -> list[LayerAlignment]:
    """One LayerAlignment per resolved (metric, params), from its (La, Lb) ``scores``; the params record
    the preprocessing and, for kNN metrics on approximate neighbours, ``knn`` (then ``recall`` is kept)."""
    out = []
    for m, (metric, p) in enumerate(resolved):
        approximate = knn != "exact" and metric.is_knn
        params_m = {**p, "normalize": normalize, "clip_quantile": clip_quantile, **({"knn": knn} if approximate else {})}
        out.append(LayerAlignment(np.asarray(scores[m]), list(names_a), list(names_b), metric.name, params_m, int(n_samples),
                                  recall=recall if approximate else None, exclude=exclude))
    return out


def align_layers_multi(
    layers_a: Sequence,
    layers_b: Sequence,
    metrics: Sequence[str] = ("mknn",),
    names_a=None,
    names_b=None,
    normalize="l2",
    clip_quantile=None,
    *,
    knn: str = "exact",
    knn_options: dict | None = None,
    block_rows: int | None = None,
    n_samples: int | None = None,
    backend=None,
    **params,
) -> list[LayerAlignment]:
    """Score every layer pair for several metrics, sharing per-layer work between them.

    layers_a, layers_b: sequences of (N, D_l) matrices (or mappings name -> matrix), row i the same
    sample everywhere (with
    ``block_rows``: block sources, see :func:`repalign.metrics.engine.layer_state`). Each layer is
    preprocessed once with :func:`repalign.metrics.prepare` (``normalize``, ``clip_quantile``) and
    turned into one state per metric by the layer-state engine (:mod:`repalign.metrics.engine`,
    which also takes the neighbour backend: ``knn``, ``knn_options``, ``block_rows``); side B's
    states are kept while side A is streamed, so memory holds Lb + 1 layers' states. ``params`` go
    to every metric that accepts them (e.g. ``k`` to the kNN metrics); a parameter no requested
    metric accepts is an error. Passing the same array object on both sides (e.g.
    ``layers_b=layers_a``) reuses its states, and the pairs of such a layer with itself are left
    out of the best-pair search. ``n_samples``: N of block sources (counted when None).
    ``backend``: where the per-layer work runs (``"numba"``, ``"torch"`` or a backend object,
    :mod:`repalign.metrics.backends`; default numba on the CPU).

    Returns one LayerAlignment per metric, in the order requested; with approximate neighbours
    each has ``recall`` {("a"|"b", layer name): recall}.
    """
    if isinstance(metrics, str):
        metrics = [metrics]
    items_a, given_a = layer_list(layers_a, "a")
    items_b, given_b = layer_list(layers_b, "b")
    names_a = layer_names(names_a, len(items_a), "a", given_a)
    names_b = layer_names(names_b, len(items_b), "b", given_b)
    knn_options = check_backend(knn, block_rows, knn_options)
    backend = get_backend(backend or "numba")
    check_prepare_options(normalize, clip_quantile)
    # Validate every layer before any metric work, so bad input never yields partial results.
    if block_rows is None:
        n_samples = validate_layers(items_a, items_b, names_a, names_b)
    elif n_samples is None:
        n_samples = count_rows(row_blocks(items_a[0], block_rows), names_a[0])
    resolved = resolve_metrics(metrics, n_samples, params)
    options = dict(normalize=normalize, clip_quantile=clip_quantile, knn=knn, knn_options=knn_options,
                   block_rows=block_rows, n_samples=n_samples, backend=backend)
    scored = score_layers(items_a, names_a, items_b, names_b, LocalStates(resolved, options))
    exclude = scored.exclude
    exclude_pairs = exclude if exclude.any() and not exclude.all() else None
    scores, recall = scored.scores, scored.recall
    return layer_alignments(scores, resolved, names_a, names_b, n_samples, normalize=normalize,
                            clip_quantile=clip_quantile, knn=knn, recall=recall, exclude=exclude_pairs)


class LocalStates:
    """Layer states built and scored in this process (the executor of :func:`score_layers`).

    resolved: the metrics (:func:`repalign.metrics.engine.resolve_metrics`); options: the keyword
    arguments of :func:`repalign.metrics.engine.layer_state`. An executor builds a layer's
    ``state``, scores one layer of A against every layer of B (``score_row``: (M, Lb)), gives a
    state's neighbour ``recall``, ``gather``s what it returned and ``release``s what it holds;
    :class:`repalign.distributed.comparison.WorkerStates` does the same on Dask workers.
    """

    def __init__(self, resolved: list, options: dict):
        self.resolved, self.options = resolved, options

    def state(self, item, name: str, label: str) -> LayerState:
        return layer_state(item, self.resolved, name=name, label=label, **self.options)

    def score_row(self, state_a: LayerState, states_b: list) -> np.ndarray:
        return score_row(state_a, states_b, self.resolved)

    def recall(self, state: LayerState):
        return state.recall

    def gather(self, values: list) -> list:
        return list(values)

    def release(self) -> None:
        """Nothing to free: the states are garbage once unreferenced."""


def score_row(state_a: LayerState, states_b: list, resolved: list) -> np.ndarray:
    """Scores of one layer of A against every layer of B, for every metric: array (M, Lb)."""
    return np.stack([score_matrix(metric, p, m, [state_a], states_b)[0] for m, (metric, p) in enumerate(resolved)])


@dataclass
class LayerScores:
    """What :func:`score_layers` returns: per metric the (La, Lb) ``scores``; ``recall``
    {("a"|"b", name): recall of the neighbour lists}; ``exclude`` (La, Lb): the pairs of an item
    passed on both sides with itself; ``states_a`` / ``states_b`` when kept (else empty)."""

    scores: list[np.ndarray]
    recall: dict
    exclude: np.ndarray
    states_a: list
    states_b: list


def score_layers(items_a: list, names_a: list[str], items_b: list, names_b: list[str], executor,
                 keep_states: bool = False) -> LayerScores:
    """THE scoring loop of every comparison: each layer's state is built once by ``executor``
    (:class:`LocalStates`, or Dask workers), an item passed on both sides (the same object) only
    once, and each layer of A is scored against every layer of B. Side B's states are kept while
    side A is streamed, unless ``keep_states`` (the permutation tests relabel them all)."""
    bar = progress(total=len({id(item) for item in items_b}) + len(items_a), desc="layers", unit="layer")
    try:
        by_id: dict[int, Any] = {}
        for item, name in zip(items_b, names_b):
            if id(item) not in by_id:
                by_id[id(item)] = executor.state(item, name, f"layer {name!r} of layers_b")
                bar.update(1)
        states_b = [by_id[id(item)] for item in items_b]
        rows, recall_a, states_a = [], [], []
        for item, name in zip(items_a, names_a):
            state_a = by_id.get(id(item)) or executor.state(item, name, f"layer {name!r} of layers_a")
            rows.append(executor.score_row(state_a, states_b))
            recall_a.append(executor.recall(state_a))
            if keep_states:
                states_a.append(state_a)
            bar.update(1)
        scores = np.stack(executor.gather(rows), axis=1)  # (M, La, Lb)
        recalls = executor.gather(recall_a + [executor.recall(s) for s in states_b])
    finally:
        bar.close()
        executor.release()
    recall = {**{("a", x): r for x, r in zip(names_a, recalls[:len(names_a)])},
              **{("b", x): r for x, r in zip(names_b, recalls[len(names_a):])}}
    exclude = np.array([[a is b for b in items_b] for a in items_a], dtype=bool)
    return LayerScores(list(scores), recall, exclude, states_a, states_b if keep_states else [])


def validate_layers(items_a: list, items_b: list, names_a: list[str], names_b: list[str]) -> int:
    """Check every layer is a valid (N, D) matrix with the same N; returns N."""
    n_samples = None
    for side, items, names in (("a", items_a, names_a), ("b", items_b, names_b)):
        for item, name in zip(items, names):
            X = as_features(item, f"layer {name!r} of layers_{side}")
            if n_samples is None:
                n_samples = X.shape[0]
            elif X.shape[0] != n_samples:
                raise RepalignError(
                    f"layer {name!r} of layers_{side} has {X.shape[0]} samples but the first layer has {n_samples}; "
                    "all layers must hold the same samples in the same order"
                )
    assert n_samples is not None  # layer_list refuses an empty side
    return int(n_samples)


def align_layers(
    layers_a: Sequence,
    layers_b: Sequence,
    metric="mknn",
    names_a=None,
    names_b=None,
    normalize="l2",
    clip_quantile=None,
    **params,
):
    """Score every (layer of A, layer of B) pair with one metric, or a list of metrics.

    Example: ``align_layers(layers_esm, layers_prott5, metric="mknn", k=10)`` returns a
    LayerAlignment whose ``scores[i, j]`` is mknn(prepare(A_i), prepare(B_j), k=10). With
    ``metric=["mknn", "cka"]`` it returns a list, one per metric (see :func:`align_layers_multi`).
    """
    if isinstance(metric, str):
        return align_layers_multi(layers_a, layers_b, [metric], names_a, names_b, normalize, clip_quantile, **params)[0]
    return align_layers_multi(layers_a, layers_b, list(metric), names_a, names_b, normalize, clip_quantile, **params)
