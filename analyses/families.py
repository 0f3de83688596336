"""The hidden layer family of a study table, re-derived from its rows: which pairs ``compare``
would search for the best pair (:func:`repalign.compare.run.search_family`), for tables scored
before ``compare`` marked it (their ``best`` is the maximum over all layer pairs) and for earlier
rows a study run keeps beside the rows it scores again (:func:`analyses.common.with_earlier_parts`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from repalign.errors import RepalignError
from repalign.models import get_adapter
from repalign.models.controls import base_model

#: the note on a re-derived best row
ALL_PAIRS_NOTE = "best of the hidden layer family, re-derived; p-values adjusted over all layer pairs (conservative for it)"
#: the columns that identify one comparison (one compare call) in a study table
COMPARISON = ("dataset", "granularity", "level", "seed", "metric", "model_a", "model_b", "n_samples")


def declared_input_layers(models: Sequence[str]) -> dict[str, set[str]]:
    """Each model's input layers as its adapter declares them (a control: its model's); no weights are loaded."""
    layers = {}
    for model in models:
        try:
            layers[model] = set(get_adapter(base_model(model)).input_layers())
        except RepalignError as exc:
            raise RepalignError(f"{model}: cannot find its declared input layers ({exc}); "
                                f"re-derive where the model's adapter is installed") from None
    return layers


def hidden_best(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The ``best`` flags of the hidden layer family, per comparison, and the family itself (the
    rows searched): the first row (in the table's row-major layer order, as ``compare``'s argmax)
    of the highest score among the layer pairs without a declared input layer and without a layer
    against itself; where that leaves nothing (only input layers), every pair but a layer with itself."""
    inputs = declared_input_layers(sorted(set(table.model_a) | set(table.model_b)))
    input_a = np.array([layer in inputs[m] for m, layer in zip(table.model_a, table.layer_a)], dtype=bool)
    input_b = np.array([layer in inputs[m] for m, layer in zip(table.model_b, table.layer_b)], dtype=bool)
    itself = ((table.model_a == table.model_b) & (table.layer_a == table.layer_b)).to_numpy()
    scores = table.score.to_numpy(dtype=np.float64)
    flags = np.zeros(len(table), dtype=bool)
    family = np.zeros(len(table), dtype=bool)
    keys = [c for c in COMPARISON if c in table.columns]
    for positions in table.groupby(keys, sort=False, dropna=False).indices.values():
        excluded = input_a[positions] | input_b[positions] | itself[positions]
        if excluded.all():
            excluded = itself[positions]
        if excluded.all():
            continue
        family[positions] = ~excluded
        flags[positions[int(np.argmax(np.where(excluded, -np.inf, scores[positions])))]] = True
    return flags, family


def rederived(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ``best`` (and ``in_family``) re-derived for the hidden family in every comparison
    that does not carry its family (no ``in_family`` value: scored before ``compare`` wrote it), its
    ``p_value_best`` the best row's own ``p_value_adjusted`` (over all layer pairs) and ``best_note``
    saying so. Comparisons ``compare`` scored with the family keep their flags and p-values."""
    keys = [c for c in COMPARISON if c in table.columns]
    if "in_family" in table.columns:
        known = table["in_family"].notna().groupby([table[c] for c in keys], sort=False, dropna=False).transform("all")
        stale = ~known.to_numpy(dtype=bool)
    else:
        stale = np.ones(len(table), dtype=bool)
    out = table.copy()
    if not stale.any():
        return out
    part = table[stale]
    flags, family = hidden_best(part)
    out["best"] = out["best"].astype(object) if "best" in out.columns else False
    out["in_family"] = out["in_family"].astype(object) if "in_family" in out.columns else None
    out.loc[stale, "best"] = flags
    out.loc[stale, "in_family"] = family  # as compare writes it: the pairs the best pair was searched among
    adjusted = part["p_value_adjusted"] if "p_value_adjusted" in part.columns else pd.Series(np.nan, index=part.index)
    if "p_value_best" not in out.columns:
        out["p_value_best"] = np.nan
    out.loc[stale, "p_value_best"] = np.where(flags, adjusted, np.nan)
    if "best_note" not in out.columns:
        out["best_note"] = ""
    out.loc[stale, "best_note"] = np.where(flags & adjusted.notna().to_numpy(), ALL_PAIRS_NOTE, "")
    return out
