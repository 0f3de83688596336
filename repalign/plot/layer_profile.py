"""A per-layer measure (e.g. intrinsic dimension) versus relative depth, from a table of ``repalign profile``."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from repalign.errors import RepalignError
from repalign.plot.style import CB_COLORS, figure_width, legend_below, line_height, new_figure, style, wrap

PROFILE_REQUIRED = ("model", "layer", "position", "measure", "params", "value")


def profile_rows(table: pd.DataFrame, measure: str | None = None, models: Sequence[str] | None = None) -> pd.DataFrame:
    """Rows of one measure and parameter setting (the table's first when not named), with ``depth`` =
    position / last position of each model (0 = first layer, 1 = last)."""
    if not isinstance(table, pd.DataFrame) or not set(PROFILE_REQUIRED) <= set(table.columns):
        have = ", ".join(map(str, getattr(table, "columns", []))) or "none"
        raise RepalignError(f"the table lacks the profile columns ({', '.join(PROFILE_REQUIRED)}; it has {have}); "
                            "give a table written by 'repalign profile -o'")
    if table.empty:
        raise RepalignError("the profile table has no rows; give a table written by 'repalign profile -o'")
    measure = measure or str(table["measure"].iloc[0])
    sub = table[table["measure"] == measure]
    if sub.empty:
        raise RepalignError(f"measure {measure!r} is not in the table; it holds: {', '.join(map(str, table['measure'].unique()))}")
    sub = sub[sub["params"] == sub["params"].iloc[0]]
    if models:
        missing = [m for m in models if m not in set(sub["model"])]
        if missing:
            raise RepalignError(f"model(s) {', '.join(missing)} not in the table; it holds: {', '.join(map(str, sub['model'].unique()))}")
        sub = sub[sub["model"].isin(models)]
    sub = sub.sort_values(["model", "position"], kind="stable").copy()
    last = sub.groupby("model")["position"].transform("max").astype(float)
    sub["depth"] = np.where(last > 0, sub["position"] / last.where(last > 0, 1.0), 0.0)
    sub["value"] = pd.to_numeric(sub["value"], errors="coerce")
    return sub


def layer_profile(
    table: pd.DataFrame,
    measure: str | None = None,
    *,
    models: Sequence[str] | None = None,
    width: str | float = "single",
    ax=None,
):
    """A per-layer measure versus relative depth, one line per model (:func:`profile_rows`); the
    value axis is the data's range, labelled with the measure and its parameters. Returns the Figure."""
    rows = profile_rows(table, measure, models)
    width_in, height = figure_width(width), line_height(width)
    label = f"{rows['measure'].iloc[0].replace('_', ' ')} ({rows['params'].iloc[0]})"
    with style():
        own = ax is None
        fig, ax = new_figure(width, height, ax)
        order = list(dict.fromkeys(rows["model"]))
        for n, model in enumerate(order):
            part = rows[rows["model"] == model]
            color = CB_COLORS[n % len(CB_COLORS)]
            ax.plot(part["depth"], part["value"], color=color, label=model, gid=f"profile-{model}")
            ax.scatter(part["depth"], part["value"], color=color, s=6, zorder=3)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("relative depth (layer / last layer)")
        ax.set_ylabel(wrap(label, 0.6 * height * 72))
        handles, labels = ax.get_legend_handles_labels()
        legend_below(fig, ax, own, handles, labels, width_in)
    return fig
