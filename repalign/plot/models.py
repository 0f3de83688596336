"""Model x model matrix of the best (or chosen) layer pair, ordered by hierarchical clustering."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.spatial.distance import squareform

from repalign.errors import RepalignError
from repalign.plot.layers import check_alpha, significance_note, trained_rows
from repalign.plot.layout import fit_height
from repalign.plot.style import (
    FONT_PT,
    NOT_SIGNIFICANT_COLOR,
    colour_bar,
    colour_scale,
    figure_width,
    heatmap_image,
    metric_label,
    metric_settings,
    new_figure,
    reference_note,
    set_caption,
    set_title,
    style,
    text_size,
    value_column,
)
from repalign.table import best_flags, chance_levels, check_table, is_symmetric, metric_rows, models_of, numbers, significance_column, swap_sides

SELF_COLOR = "#d9d9d9"  # a model with itself (the diagonal), when the table does not compare it


def best_rows(
    table: pd.DataFrame,
    metric: str | None = None,
    layers: Mapping[str, str] | None = None,
    value: str = "score",
) -> pd.DataFrame:
    """One row per stored model pair (model_a, model_b as stored): the row the matrix shows.

    That is the row flagged in the ``best`` column when the table has one and no layer is fixed,
    else the row of the largest ``value`` over all layer pairs; for models named in ``layers``
    (model -> layer) only rows at that layer take part.
    """
    table = check_table(table)
    sub = metric_rows(table, metric)
    column = value_column(sub, value)
    layers = dict(layers or {})
    models = models_of(sub)
    both = pd.concat([sub, swap_sides(sub)], ignore_index=True)
    for model, layer in layers.items():
        if model not in models:
            raise RepalignError(f"model {model!r} is not in the table; it holds: {', '.join(models)}")
        if layer not in set(both.loc[both["model_a"] == model, "layer_a"]):
            raise RepalignError(f"layer {layer!r} of {model!r} is not in the table; choose a stored layer")
    keep = np.ones(len(sub), dtype=bool)
    for model, layer in layers.items():
        keep &= ~((sub["model_a"] == model) & (sub["layer_a"] != layer)).to_numpy()
        keep &= ~((sub["model_b"] == model) & (sub["layer_b"] != layer)).to_numpy()
    chosen = sub[keep].assign(_value=numbers(sub[keep], column))
    out = []
    for _, part in chosen.groupby(["model_a", "model_b"], sort=False):
        flags = best_flags(part) if value == "score" and not layers else None
        if flags is not None:
            out.append(part[flags].iloc[0])
        elif part["_value"].notna().any():
            out.append(part.loc[part["_value"].idxmax()])
    if not out:
        return chosen.iloc[:0].drop(columns="_value")
    return pd.DataFrame(out).drop(columns="_value").reset_index(drop=True)


def _square(rows: pd.DataFrame, models: list[str], column: str, symmetric: bool = True) -> pd.DataFrame:
    out = pd.DataFrame(np.nan, index=models, columns=models)
    for a, b, v in zip(rows["model_a"], rows["model_b"], numbers(rows, column)):
        out.loc[a, b] = v
        if symmetric and a != b and np.isnan(out.loc[b, a]):
            out.loc[b, a] = v  # (B, A) scores the same; an asymmetric metric's (B, A) is another metric's row
    return out


def model_scores(
    table: pd.DataFrame,
    metric: str | None = None,
    layers: Mapping[str, str] | None = None,
    value: str = "score",
) -> pd.DataFrame:
    """Symmetric model x model matrix (DataFrame) of one metric, from :func:`best_rows`.

    Entry (a, b) is the best layer pair of a and b (the ``best`` row, else the maximum), or, for
    models named in ``layers`` (model -> layer), the best at that layer. Pairs never compared are
    NaN; the diagonal is NaN unless the table compares a model with itself.
    """
    sub = metric_rows(check_table(table), metric)
    return _square(best_rows(table, metric, layers, value), models_of(sub), value_column(sub, value),
                   symmetric=is_symmetric(str(sub["metric"].iloc[0])))


def cluster_order(matrix: pd.DataFrame, method: str = "average") -> list[str]:
    """Models ordered by hierarchical clustering of the distance 1 - score (scipy linkage).

    Missing pairs count as the largest distance (1 - min score, at least 1); the leaf order is
    scipy's ``leaves_list`` with ``optimal_ordering=True`` (Bar-Joseph et al., 2001), so adjacent
    models are as similar as the tree allows.
    """
    names = list(matrix.index)
    if len(names) < 3:
        return names
    s = matrix.to_numpy(dtype=float)
    s = np.fmax(s, s.T)  # either direction of a pair, whichever was stored
    dist = 1.0 - s
    worst = max(1.0, float(np.nanmax(dist))) if np.isfinite(dist).any() else 1.0
    dist = np.where(np.isnan(dist), worst, dist)
    dist = np.clip(dist, 0.0, None)
    np.fill_diagonal(dist, 0.0)
    tree = linkage(squareform(dist, checks=False), method=method, optimal_ordering=True)
    return [names[i] for i in leaves_list(tree)]


def model_matrix(
    table: pd.DataFrame,
    metric: str | None = None,
    *,
    layers: Mapping[str, str] | None = None,
    models: Sequence[str] | None = None,
    order: str | Sequence[str] = "cluster",
    value: str = "score",
    alpha: float = 0.05,
    width: str | float = "single",
    scale: str = "fixed",
    ax=None,
):
    """Model x model matrix of :func:`model_scores`, values written in the cells where they fit.

    ``order`` is 'cluster' (:func:`cluster_order`), 'table' (first appearance) or an explicit list
    of every model. Colours use the fixed 0-1 scale (``scale='data'``: this figure's range) with
    the chance level or null means marked on the colour bar; a pair whose best cell is not
    significant (``p_value_best``, else the adjusted or plain p-value of that cell, >= ``alpha``)
    is hatched. ``models``: draw the pairs among these models only (``repalign plot --a m1,m2,m3``;
    default: every model of the table). Returns the Figure; the order used is ``fig.repalign_order``.
    """
    check_alpha(alpha)
    width_in = figure_width(width)
    table = _among(trained_rows(check_table(table)), models)
    rows = metric_rows(table, metric)
    column = value_column(rows, value)
    chosen = best_rows(table, metric, layers, value)
    check_one_population(rows, chosen)
    scores = _square(chosen, models_of(rows), column)
    names = _model_order(scores, order)
    s = scores.loc[names, names].to_numpy(dtype=float)
    if np.isnan(s).all():
        raise RepalignError("every best score of this metric is missing (NaN); nothing to draw")
    p = _best_p_values(chosen, list(scores.index), names)
    cscale = colour_scale(rows, column, s, scale)

    with style():
        own = ax is None
        fig, ax = new_figure(width, max(2.6, 0.9 * width_in), ax)
        image = heatmap_image(ax, s, cscale, aspect="auto")  # square cells come from the height (fit_height)
        ax.set_xticks(range(len(names)), names, rotation=90)
        ax.set_yticks(range(len(names)), names)
        missing = _mark_missing(ax, s)
        hatched = 0
        if p is not None:
            for i, j in np.argwhere(p >= alpha):
                hatched += 1
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="none", edgecolor=NOT_SIGNIFICANT_COLOR,
                                       hatch="////", linewidth=0, zorder=1.5, gid=f"not-significant-{i}-{j}"))
        what = "chosen layers" if layers else "best layer pair"
        narrow = width_in < 3.0  # a bar below leaves the matrix the full width
        colour_bar(fig, ax, image, metric_label(rows, value), rows, column, cscale, s, 0.9 * width_in * 72,
                   shrink=0.7, location="bottom" if narrow else "right")
        lines = [f"{metric_label(rows, value)}: {what}"]
        note = reference_note(rows, column)
        if note:
            lines.append(f"line on the colour bar: {note}")
        if hatched:
            lines.append(f"hatched: p \u2265 {alpha:g} for the best pair")
        set_title(fig, ax, own, lines, cscale, width_in)
        caption = [metric_settings(rows), f"entry: the {what} of the two models", cscale.describe()]
        if missing:
            caption.append("crossed: never compared; grey diagonal: a model with itself, not compared")
        if hatched:
            caption.append(significance_note(chosen, "p_value_best" if "p_value_best" in chosen.columns else
                                             significance_column(chosen), alpha, "hatched") + " at the best pair")
        set_caption(fig, caption)
        if own:
            fit_height(fig, ax, max_height_in=9.0)
        _write_values(fig, ax, s, cscale)
    fig.repalign_order = names
    return fig


def model_groups(table: pd.DataFrame) -> list[list[str]]:
    """The groups of models linked by the table's comparisons (connected through shared samples: a
    modality, or a data set), in the table's order; a matrix, and the report's figures and
    headlines, never mix groups."""
    groups: list[set] = []
    for a, b in dict.fromkeys(zip(table["model_a"], table["model_b"])):
        linked = [g for g in groups if a in g or b in g]
        merged = set().union({a, b}, *linked)
        groups = [g for g in groups if g not in linked] + [merged]
    order = list(dict.fromkeys([*table["model_a"], *table["model_b"]]))
    return sorted((sorted(g, key=order.index) for g in groups), key=lambda g: order.index(g[0]))


def _among(table: pd.DataFrame, models: Sequence[str] | None) -> pd.DataFrame:
    """The rows of pairs between two of ``models`` (None: every row); a one-line error for a model
    the table does not hold."""
    if models is None:
        return table
    chosen = [str(m) for m in models]
    unknown = [m for m in chosen if m not in set(models_of(table))]
    if unknown:
        raise RepalignError(f"models: {', '.join(unknown)} not in the table; it holds: {', '.join(models_of(table))}")
    return table[table["model_a"].isin(chosen) & table["model_b"].isin(chosen)]


def check_one_population(rows: pd.DataFrame, chosen: pd.DataFrame) -> None:
    """One matrix holds one population: models compared on the same samples, with one chance level.
    Models never linked by a comparison (other modalities: they share no sample) or pairs whose
    chance levels differ (another N or k) are refused with the fix."""
    models = models_of(rows)
    linked = next((set(g) for g in model_groups(chosen) if models[0] in g), {models[0]})
    apart = [m for m in models if m not in linked]
    if apart:
        raise RepalignError(f"models {', '.join(apart)} are never compared with {', '.join(sorted(linked))} (another "
                            "modality or sample set); draw each group from its own rows of the table")
    for name in ("dataset", "granularity"):
        if name in rows.columns and rows[name].nunique() > 1:
            raise RepalignError(f"the table holds several {name} values ({', '.join(map(str, rows[name].unique()))}); "
                                f"draw one {name} at a time (filter the table)")
    chance = chance_levels(chosen)
    chance = chance[np.isfinite(chance)]
    if chance.size and not np.allclose(chance, chance[0], atol=5e-4):
        raise RepalignError(f"the pairs of this matrix differ in chance level ({chance.min():.3g} to {chance.max():.3g}: "
                            "another N or k); draw the pairs of one N and k together (filter the table)")


def _mark_missing(ax, s: np.ndarray) -> int:
    """Grey the diagonal of models not compared with themselves and cross pairs never compared, so
    that neither looks like the other (nor like a low score); returns how many pairs are crossed."""
    crossed = 0
    for i, j in np.argwhere(np.isnan(s)):
        if i == j:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=SELF_COLOR, edgecolor="none", zorder=1.2,
                                   gid=f"self-{i}"))
        else:
            crossed += 1
            ax.plot([j - 0.4, j + 0.4], [i - 0.4, i + 0.4], color=NOT_SIGNIFICANT_COLOR, linewidth=0.6, gid=f"not-compared-{i}-{j}")
            ax.plot([j - 0.4, j + 0.4], [i + 0.4, i - 0.4], color=NOT_SIGNIFICANT_COLOR, linewidth=0.6)
    return crossed


def _model_order(scores: pd.DataFrame, order: str | Sequence[str]) -> list[str]:
    """The models' order: 'cluster' (:func:`cluster_order`), 'table' (first appearance) or every model listed."""
    names = list(scores.index)
    if len(names) < 2:
        raise RepalignError("a model x model matrix needs at least two models in the table")
    if isinstance(order, str):
        if order == "cluster":
            return cluster_order(scores)
        if order != "table":
            raise RepalignError(f"order {order!r} is not 'cluster', 'table' or a list of models")
        return names
    order = [str(m) for m in order]
    if sorted(order) != sorted(names):
        raise RepalignError(f"order must list every model once: {', '.join(names)}")
    return order


def _best_p_values(chosen: pd.DataFrame, models: list[str], names: list[str]) -> np.ndarray | None:
    """The p-value of each pair's best cell in the order ``names``: ``p_value_best`` where the table
    has it, else the adjusted or plain p-value of that cell; None without p-values."""
    column = "p_value_best" if "p_value_best" in chosen.columns and np.isfinite(numbers(chosen, "p_value_best")).any() \
        else significance_column(chosen)
    if column is None:
        return None
    return _square(chosen, models, column).loc[names, names].to_numpy(dtype=float)


def _write_values(fig, ax, s: np.ndarray, cscale) -> None:
    """Each cell's value in 7 pt text, only where such numbers fit in a cell."""
    fig.draw_without_rendering()
    box = ax.get_window_extent()
    cell_pt = min(box.width, box.height) * 72 / fig.dpi / len(s)
    if text_size("0.00")[0] + 2 > cell_pt:
        return
    mid = (cscale.vmin + cscale.vmax) / 2
    for i, j in np.argwhere(~np.isnan(s)):
        # cividis is dark below its middle: white text there, black above
        color = "white" if s[i, j] < mid else "black"
        ax.text(j, i, f"{s[i, j]:.2f}", ha="center", va="center", fontsize=FONT_PT, color=color, gid=f"cell-{i}-{j}")
