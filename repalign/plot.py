"""Figures drawn from tidy score tables alone (never from caches), so they can be restyled without recomputing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from repalign.errors import RepalignError

#: one journal column (3.5 in) and two columns (7.2 in)
COLUMN_WIDTH_IN = {1: 3.5, 2: 7.2}


def _pick(table: pd.DataFrame, column: str, value: str | None) -> str:
    values = list(dict.fromkeys(table[column]))
    if value is None:
        return values[0]
    if value not in values:
        raise RepalignError(f"{column} {value!r} is not in the table; it has: {', '.join(map(str, values))}")
    return value


def select_pair(table: pd.DataFrame, metric=None, model_a=None, model_b=None) -> pd.DataFrame:
    """Rows of one (model_a, model_b, metric, params) from a tidy table."""
    needed = {"model_a", "layer_a", "model_b", "layer_b", "metric", "score"}
    missing = needed - set(table.columns)
    if missing:
        raise RepalignError(f"table lacks columns {sorted(missing)}; give a table written by 'repalign compare -o'")
    if table.empty:
        raise RepalignError("the score table is empty")
    metric = _pick(table, "metric", metric)
    sub = table[table["metric"] == metric]
    model_a = _pick(sub, "model_a", model_a)
    sub = sub[sub["model_a"] == model_a]
    model_b = _pick(sub, "model_b", model_b)
    sub = sub[sub["model_b"] == model_b]
    if "params" in sub.columns:
        sub = sub[sub["params"] == sub["params"].iloc[0]]
    return sub


def layer_heatmap(table: pd.DataFrame, metric=None, model_a=None, model_b=None, columns: int = 1, ax=None):
    """Layer x layer heatmap of one model pair: model A's layers on rows, B's on columns, best pair boxed."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from repalign.compare import score_matrix

    sub = select_pair(table, metric, model_a, model_b)
    scores, rows, cols = score_matrix(sub)
    if ax is None:
        width = COLUMN_WIDTH_IN[columns]
        height = min(max(2.2, 0.16 * len(rows) + 1.4), 9.0)
        fig, ax = plt.subplots(figsize=(width, height), constrained_layout=True)
    else:
        fig = ax.figure
    im = ax.imshow(scores, cmap="cividis", aspect="auto", interpolation="nearest")
    ma, mb, met = sub["model_a"].iloc[0], sub["model_b"].iloc[0], sub["metric"].iloc[0]
    params = sub["params"].iloc[0] if "params" in sub.columns else ""
    params = "" if (isinstance(params, float) and np.isnan(params)) or params == "" else f" ({params})"
    ax.set_yticks(range(len(rows)), rows, fontsize=6)
    ax.set_xticks(range(len(cols)), cols, fontsize=6, rotation=90)
    ax.set_ylabel(f"{ma} layer", fontsize=8)
    ax.set_xlabel(f"{mb} layer", fontsize=8)
    i, j = np.unravel_index(np.nanargmax(scores), scores.shape)
    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#d62728", linewidth=1.5))
    bar = fig.colorbar(im, ax=ax, shrink=0.9)
    bar.set_label(f"{met}{params}", fontsize=8)
    bar.ax.tick_params(labelsize=6)
    ax.set_title(f"{ma} vs {mb}: best {rows[i]} ~ {cols[j]} = {scores[i, j]:.3f}", fontsize=8)
    return fig


def save_figure(fig, stem: str | os.PathLike, formats=("png", "pdf")) -> list[Path]:
    """Save PNG at 300 dpi and vector formats with embedded, editable fonts."""
    import matplotlib

    stem = Path(stem)
    if stem.suffix.lower() in {".png", ".pdf", ".svg"}:
        stem = stem.with_suffix("")
    if not stem.parent.exists():
        raise RepalignError(f"{stem.parent}: no such folder; create it or choose another output path")
    paths = []
    with matplotlib.rc_context({"pdf.fonttype": 42, "svg.fonttype": "none"}):
        for fmt in formats:
            path = stem.with_suffix(f".{fmt}")
            fig.savefig(path, dpi=300 if fmt == "png" else None)
            paths.append(path)
    return paths


def save_layer_heatmap(table, stem, metric=None, model_a=None, model_b=None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = layer_heatmap(table, metric=metric, model_a=model_a, model_b=model_b)
    try:
        return save_figure(fig, stem)
    finally:
        plt.close(fig)
