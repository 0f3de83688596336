"""The finding of a comparison: one row per trained comparison, its best layer pair, read against
its chance level, its permutation null and (when the table has them) its random-initialised controls.

:func:`headlines` is the one definition of "the finding" that compare's printed summary, the
report, the demo, the studies and the figure titles use. It re-derives nothing: the pair is the
trained rows' ``best`` pair (the best pair of the declared layer family, :func:`repalign.compare.run.search_family`)
and the contrast is the table's ``best`` contrast row (:func:`repalign.compare.controls.compare_controls`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from repalign.errors import RepalignError
from repalign.stats import min_draws
from repalign.table import best_flags

#: a comparison's identity in a table: metric and model pair, and these when the table has them
KEY_COLUMNS = ("metric", "model_a", "model_b")
OPTIONAL_KEYS = ("dataset", "granularity", "subset", "k")
#: the trained best row's columns a headline carries when the table has them
TRAINED_COLUMNS = ("params", "n_samples", "n_units", "chance_level", "null_mean", "p_value_best", "calibrated", "warnings")
#: the columns a contrast row adds to a compare table; a headline carries its best contrast row's
#: (NaN when the table has no controls)
CONTRAST_COLUMNS = ("control_mean", "control_sd", "n_seeds", "difference", "ci_low", "ci_high", "p_value", "min_p_value",
                    "p_value_adjusted")


def row_levels(table: pd.DataFrame) -> pd.Series:
    """Each row's level; rows of a table without ``level`` (or with it empty) are trained."""
    if "level" not in table.columns:
        return pd.Series("trained", index=table.index)
    return table["level"].astype(object).where(table["level"].notna() & (table["level"].astype(str) != ""), "trained")


def headlines(table: pd.DataFrame) -> pd.DataFrame:
    """One row per trained comparison of ``table`` (a compare table, with or without controls).

    Keys: ``dataset``, ``granularity``, ``subset`` and ``k`` when the table has them (each subset
    and k of a :func:`repalign.compare.compare_curves` table, with its ``n_samples``, is a comparison
    of its own),
    ``metric``, ``model_a``, ``model_b``. Columns: the trained ``best`` pair (``layer_a``, ``layer_b``, ``score``) with its
    ``params``, ``n_samples``, ``n_units``, ``chance_level``, ``null_mean``, ``p_value_best``,
    ``calibrated`` and ``warnings`` where the table has them; then ``control_mean``,
    ``control_sd``, ``n_seeds``, ``difference``, ``ci_low``, ``ci_high``, ``p_value``,
    ``min_p_value`` and ``p_value_adjusted`` (Holm over the metrics of a call) from the comparison's
    best contrast row: NaN when the table has no controls. ``p_value``, ``ci_low`` and ``ci_high``
    are therefore the rank test against the controls and its bounds, never the per-pair
    permutation p-value or subsampling interval of the trained row. Rows follow the table's order.

    A trained comparison without a ``best`` row (a table written without that column) is an error:
    the best pair is the comparison's, not re-derived here.
    """
    missing = [c for c in (*KEY_COLUMNS, "layer_a", "layer_b", "score") if c not in table.columns]
    if missing:
        raise RepalignError(f"headlines: the table lacks the column(s) {', '.join(missing)}; pass a compare table")
    keys = [c for c in OPTIONAL_KEYS if c in table.columns] + list(KEY_COLUMNS)
    if "subset" in table.columns:  # a curves table: subset numbers repeat for each size
        keys.insert(keys.index("subset"), "n_samples")
    levels = row_levels(table)
    flags = best_flags(table)
    best = pd.Series(flags if flags is not None else np.zeros(len(table), dtype=bool), index=table.index)
    trained = table[(levels == "trained") & best]
    comparisons = table[levels == "trained"].drop_duplicates(keys)
    lacking = comparisons.merge(trained[keys], on=keys, how="left", indicator=True)
    lacking = lacking[lacking["_merge"] == "left_only"]
    if len(lacking):
        row = lacking.iloc[0]
        raise RepalignError(f"headlines: {row.model_a} vs {row.model_b} ({row.metric}) has no row marked best; "
                            "pass the table compare wrote, with its best column")
    columns = [*keys, "layer_a", "layer_b", "score", *(c for c in TRAINED_COLUMNS if c in table.columns and c not in keys)]
    out = trained.drop_duplicates(keys)[columns].reset_index(drop=True)
    contrast = table[(levels == "contrast") & best]
    if contrast.empty:
        for column in CONTRAST_COLUMNS:
            out[column] = np.nan
        return out
    taken = [c for c in CONTRAST_COLUMNS if c in contrast.columns]
    merged = out.merge(contrast.drop_duplicates(keys)[[*keys, *taken]], on=keys, how="left")
    for column in CONTRAST_COLUMNS:
        if column not in merged.columns:
            merged[column] = np.nan
    return merged


def describe(row, ci: float = 0.95) -> str:
    """One line for a :func:`headlines` row: the best pair and score, then (with controls) the
    controls' mean and SD, the difference with its one-sided lower bound at level ``ci`` and the
    rank-test p-value with its floor 1/(n_seeds + 1)."""
    text = f"{row['metric']}: {row['layer_a']} ~ {row['layer_b']} = {row['score']:.4f}"
    n = row.get("n_seeds")
    if n is None or pd.isna(n):
        return text
    n = int(n)
    bound = (f"{ci:.0%} lower bound {row['ci_low']:+.4f}" if np.isfinite(row["ci_low"]) else
             f"no {ci:.0%} bound with {n} seeds (it needs {min_draws(1.0 - ci)})")
    text += (f"; random-init controls {row['control_mean']:.4f} ± {row['control_sd']:.4f} ({n} seeds, each its own best pair)"
             f"; difference {row['difference']:+.4f}, {bound}; p = {row['p_value']:.3g} (smallest possible 1/{n + 1} = "
             f"{row['min_p_value']:.3g})")
    if pd.notna(row.get("p_value_adjusted")):
        text += f", Holm over the metrics {row['p_value_adjusted']:.3g}"
    return text
