"""Per-layer profiles: a measure of each layer of one model on its own (not a pair), as a tidy table.

``profile_layers(cache, model, "intrinsic_dimension", method="twonn")`` reads the model's pooled
layers one at a time and returns one row per layer: model, layer, position (the layer's index in
the model's order), measure, params, value, n_samples. ``repalign profile`` is this call;
``repalign plot TABLE --kind profile`` draws the values against relative depth.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from embeddings_cache import Cache
from repalign.errors import RepalignError
from repalign.metrics import as_features
from repalign.metrics.intrinsic import intrinsic_dimension
from repalign.metrics.layers import format_params
from repalign.metrics.prepare import check_prepare_options, prepare_valid

#: columns of a profile table, in order
PROFILE_COLUMNS = ("model", "layer", "position", "measure", "params", "value", "n_samples")


@dataclass(frozen=True)
class Measure:
    """A per-layer measure: ``function(X, **params) -> float``, its parameters' defaults and, per
    value of ``method`` where it has one, the parameters that method uses (recorded in the table)."""

    name: str
    function: Callable[..., float]
    defaults: Mapping[str, Any]
    used: Mapping[str, tuple[str, ...]]

    def resolve(self, params: Mapping[str, Any]) -> dict:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise RepalignError(f"measure {self.name!r} does not take parameter(s) {', '.join(unknown)}; "
                                f"it accepts: {', '.join(self.defaults)}")
        given = {k: v for k, v in params.items() if v is not None}
        merged = {**self.defaults, **given}
        keep = self.used.get(str(merged.get("method")), tuple(merged))
        unused = sorted(set(given) - set(keep))
        if unused:
            raise RepalignError(f"{', '.join(unused)} do(es) not apply to method={merged.get('method')!r} of {self.name}; drop it")
        return {k: v for k, v in merged.items() if k in keep}


MEASURES: dict[str, Measure] = {
    "intrinsic_dimension": Measure("intrinsic_dimension", intrinsic_dimension, {"method": "twonn", "fraction": 0.9, "k": 20},
                                   {"twonn": ("method", "fraction"), "mle": ("method", "k")}),
}


def get_measure(name: str) -> Measure:
    key = str(name).strip().lower().replace("-", "_")
    if key not in MEASURES:
        raise RepalignError(f"unknown measure {name!r}; valid measures: {', '.join(MEASURES)}")
    return MEASURES[key]


def profile_layers(
    cache: str | os.PathLike,
    model: str,
    measure: str = "intrinsic_dimension",
    layers: Sequence[str] | None = None,
    normalize: str | None = None,
    **params,
) -> pd.DataFrame:
    """One row per layer of ``model`` in ``cache`` (all pooled layers, or ``layers`` in the model's
    order) with ``measure`` computed on that layer's samples.

    normalize: None (default: the features as stored, the geometry the measure describes), "l2"
    or "center" (:func:`repalign.metrics.prepare`). params: the measure's parameters (e.g.
    method="mle", k=20 for intrinsic_dimension), recorded in the table's params column.
    """
    spec = get_measure(measure)
    resolved = spec.resolve(params)
    check_prepare_options(normalize, None)
    recorded = format_params({**resolved, "normalize": normalize})
    rows = []
    with Cache(cache) as store:
        if model not in store.models:
            raise RepalignError(f"model {model!r} is not in {cache}; it holds: {', '.join(store.models) or 'no models'}")
        cached = store[model]
        order = list(cached.layers)
        chosen = order if not layers else [str(name) for name in layers]
        missing = [name for name in chosen if name not in order]
        if missing:
            raise RepalignError(f"layer(s) {', '.join(missing)} not in model {model!r}; its layers: {', '.join(order)}")
        for name in sorted(chosen, key=order.index):
            X = prepare_valid(as_features(cached[name], f"layer {name!r}"), normalize, None)
            try:
                value = spec.function(X, **resolved)
            except RepalignError as exc:
                raise RepalignError(f"model {model!r} layer {name!r}: {exc}") from None
            rows.append((model, name, order.index(name), spec.name, recorded, value, X.shape[0]))
    return pd.DataFrame(rows, columns=list(PROFILE_COLUMNS))
