"""Layer-by-layer alignment: every layer of model A against every layer of model B.

Each layer is preprocessed and turned into a metric "state" once (neighbour lists, centred
features, SVD basis, ...); every pair score is then computed from two states. A naive loop would
redo both sides for each of the La×Lb pairs. Several metrics requested together share states
(e.g. mutual_knn, cycle_knn and cknna with the same k share one neighbour search per layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from repalign.errors import RepalignError
from repalign.metrics._validate import as_features, storage_array
from repalign.metrics.prepare import check_prepare_options, prepare_valid
from repalign.metrics.registry import Metric, get_metric


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
    n_samples: N. ``best`` is (row, col, score) of the highest score (first in row-major order).
    """

    scores: np.ndarray
    names_a: list[str]
    names_b: list[str]
    metric: str
    params: dict[str, Any]
    n_samples: int
    best: tuple[int, int, float] = field(init=False)

    def __post_init__(self):
        flat = int(np.argmax(self.scores))
        row, col = divmod(flat, self.scores.shape[1])
        self.best = (row, col, float(self.scores[row, col]))

    def to_frame(self, model_a: str = "A", model_b: str = "B") -> pd.DataFrame:
        """Tidy table: one row per layer pair with columns
        model_a, layer_a, model_b, layer_b, metric, params, score, n_samples."""
        la, lb = self.scores.shape
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
            }
        )


def _layer_list(layers, side: str) -> list:
    if isinstance(layers, np.ndarray) and layers.ndim == 2:
        raise RepalignError(f"layers_{side} is a single 2-D matrix; pass a sequence of per-layer matrices, e.g. [X]")
    try:
        items = list(layers)
    except TypeError:
        raise RepalignError(f"layers_{side} is not a sequence; pass a list of per-layer (N, D) matrices") from None
    if not items:
        raise RepalignError(f"layers_{side} is empty; pass at least one per-layer (N, D) matrix")
    return items


def _names(names, count: int, side: str) -> list[str]:
    if names is None:
        return [str(i) for i in range(count)]
    names = [str(n) for n in names]
    if len(names) != count:
        raise RepalignError(f"names_{side} has {len(names)} entries but layers_{side} has {count} layers; pass one name per layer")
    return names


def align_layers_multi(
    layers_a: Sequence,
    layers_b: Sequence,
    metrics: Sequence[str] = ("mknn",),
    names_a=None,
    names_b=None,
    normalize="l2",
    clip_quantile=None,
    **params,
) -> list[LayerAlignment]:
    """Score every layer pair for several metrics, sharing per-layer work between them.

    layers_a, layers_b: sequences of (N, D_l) matrices, row i the same sample everywhere.
    Each layer is preprocessed once with :func:`repalign.metrics.prepare` (``normalize``,
    ``clip_quantile``) and turned into one state per metric; side B's states are kept while side
    A is streamed, so memory holds Lb + 1 layers' states. ``params`` go to every metric that
    accepts them (e.g. ``k`` to the kNN metrics); a parameter no requested metric accepts is an
    error. Passing the same array object
    on both sides (e.g. ``layers_b=layers_a``) reuses its states.

    Returns one LayerAlignment per metric, in the order requested.
    """
    if isinstance(metrics, str):
        metrics = [metrics]
    metric_objs: list[Metric] = [get_metric(m) for m in metrics]
    if not metric_objs:
        raise RepalignError("no metric requested; pass e.g. metrics=['mknn']")
    accepted = set().union(*(m.params for m in metric_objs))
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise RepalignError(
            f"parameter(s) {', '.join(unknown)} not accepted by metric(s) {', '.join(m.name for m in metric_objs)}; accepted: {', '.join(sorted(accepted)) or 'none'}"
        )

    items_a = _layer_list(layers_a, "a")
    items_b = _layer_list(layers_b, "b")
    names_a = _names(names_a, len(items_a), "a")
    names_b = _names(names_b, len(items_b), "b")

    # Validate every layer before any metric work, so bad input never yields partial results.
    check_prepare_options(normalize, clip_quantile)
    n_samples = None
    for side, items, names in (("a", items_a, names_a), ("b", items_b, names_b)):
        for item, name in zip(items, names):
            X = as_features(item, f"layer {name!r} of layers_{side}")
            if n_samples is None:
                n_samples = X.shape[0]
            elif X.shape[0] != n_samples:
                raise RepalignError(
                    f"layer {name!r} of layers_{side} has {X.shape[0]} samples but the first layer has {n_samples}; all layers must hold the same samples in the same order"
                )
    resolved = [m.resolve(n_samples, **{k: v for k, v in params.items() if k in m.params}) for m in metric_objs]

    def layer_states(item, label: str) -> list:
        """Preprocess one layer once and build the states of every requested metric from it.

        Metrics with equal state keys get the same object (one neighbour search for mknn,
        cycle_knn, cknna ... with the same k)."""
        try:
            X = prepare_valid(storage_array(item), normalize, clip_quantile)
            cache: dict = {}
            out = []
            for metric, p in zip(metric_objs, resolved):
                key = metric.state_key(p)
                if key not in cache:
                    cache[key] = metric.state(X, p, cache)
                out.append(cache[key])
            return out
        except RepalignError as exc:
            raise RepalignError(f"{label}: {exc}") from None

    # Side B's states are kept; side A is streamed one layer at a time, so memory holds Lb + 1
    # layers' states (N×N states such as distance matrices stay affordable). An array passed on
    # both sides reuses its B states.
    states_b: dict[int, list] = {}
    for item, name in zip(items_b, names_b):
        if id(item) not in states_b:
            states_b[id(item)] = layer_states(item, f"layer {name!r} of layers_b")
    scores = [np.empty((len(items_a), len(items_b))) for _ in metric_objs]
    for i, (item, name_a) in enumerate(zip(items_a, names_a)):
        states_a = states_b.get(id(item)) or layer_states(item, f"layer {name_a!r} of layers_a")
        for m, (metric, p) in enumerate(zip(metric_objs, resolved)):
            for j, (item_b, name_b) in enumerate(zip(items_b, names_b)):
                try:
                    scores[m][i, j] = metric.score(states_a[m], states_b[id(item_b)][m], p)
                except RepalignError as exc:  # X / Y in the message are these two layers
                    raise RepalignError(f"{metric.name} of layer {name_a!r} (X) with layer {name_b!r} (Y): {exc}") from None

    preprocessing = {"normalize": normalize, "clip_quantile": clip_quantile}
    return [
        LayerAlignment(scores[m], list(names_a), list(names_b), metric.name, {**p, **preprocessing}, int(n_samples))
        for m, (metric, p) in enumerate(zip(metric_objs, resolved))
    ]


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
