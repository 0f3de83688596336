"""Score versus the number of samples N, one line per k: the figure of a table written by
``repalign compare --k 5,10,25 --n-samples 250,500,1000`` (:func:`repalign.compare.compare_curves`)."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, NullFormatter

from repalign.errors import RepalignError
from repalign.plot.style import (
    CB_COLORS,
    NOT_SIGNIFICANT_COLOR,
    colour_scale,
    figure_width,
    legend_below,
    line_height,
    new_figure,
    set_title,
    style,
    text_size,
    value_column,
    wrap,
)
from repalign.table import best_flags, chance_levels, check_table, has_values, numbers, resolve_metric, select_pair, swap_sides

#: the columns a table needs for an n-curve: those :func:`repalign.compare.compare_curves` adds
CURVE_TABLE_COLUMNS = ("n_samples", "k", "subset")


def pair_rows(table: pd.DataFrame, metric: str | None = None, model_a: str | None = None,
              model_b: str | None = None) -> pd.DataFrame:
    """Every row of one metric (all k, sizes and subsets) comparing one model pair, model A's side
    first (defaults: the table's first metric and pair, as :func:`repalign.table.select_pair`)."""
    table = check_table(table)
    missing = [c for c in CURVE_TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise RepalignError(f"the table has no {', '.join(missing)} column(s); an n-curve draws a table of "
                            "repalign.compare.compare_curves")
    metric = resolve_metric(table, metric)
    first = select_pair(table, metric, model_a, model_b)
    model_a, model_b = first["model_a"].iloc[0], first["model_b"].iloc[0]
    sub = table[table["metric"] == metric]
    rows = sub[(sub["model_a"] == model_a) & (sub["model_b"] == model_b)]
    if rows.empty:
        rows = swap_sides(sub[(sub["model_a"] == model_b) & (sub["model_b"] == model_a)])
    return rows


def chosen_pair(rows: pd.DataFrame, layers: Mapping[str, str] | None, value: str) -> tuple[str, str]:
    """(layer of A, layer of B): the layers named in ``layers`` (model -> layer); the other (or both)
    from the full-size rows: the pair marked best for the most k, ties to the highest mean ``value``."""
    model_a, model_b = rows["model_a"].iloc[0], rows["model_b"].iloc[0]
    layers = dict(layers or {})
    strangers = [m for m in layers if m not in (model_a, model_b)]
    if strangers:
        raise RepalignError(f"layers names model {strangers[0]!r}, which is not in the pair {model_a} ~ {model_b}")
    full = rows[numbers(rows, "n_samples") == np.nanmax(numbers(rows, "n_samples"))]
    for model, column in ((model_a, "layer_a"), (model_b, "layer_b")):
        if model in layers:
            if layers[model] not in set(full[column]):
                raise RepalignError(f"layer {layers[model]!r} of {model!r} is not in the table; choose a stored layer")
            full = full[full[column] == layers[model]]
    flags = best_flags(full)
    ranked = pd.DataFrame({"layer_a": full["layer_a"].to_numpy(), "layer_b": full["layer_b"].to_numpy(),
                           "votes": flags.astype(int) if flags is not None else 0, "value": numbers(full, value)})
    summed = ranked.groupby(["layer_a", "layer_b"], sort=False).agg(votes=("votes", "sum"), value=("value", "mean"))
    layer_a, layer_b = summed.sort_values(["votes", "value"], ascending=False, kind="stable").index[0]
    return str(layer_a), str(layer_b)


def curve_scores(table: pd.DataFrame, metric: str | None = None, model_a: str | None = None,
                 model_b: str | None = None, *, layers: Mapping[str, str] | None = None,
                 value: str = "score") -> pd.DataFrame:
    """One row per (line, n_samples) of one layer pair: ``mean``, ``low`` and ``high`` (min and max)
    of ``value`` over the subsets, their count (``subsets``), the ``chance_level`` at that N and k,
    and, when the table has null means, ``null_mean`` (over the subsets) with ``null_low`` /
    ``null_high``. A line is one k (``label`` 'k=K'; the metric's name for a metric without k), in
    increasing k. The pair is :func:`chosen_pair`'s; ``attrs`` holds model_a, layer_a, model_b, layer_b.
    """
    return _curve_of_pair(pair_rows(table, metric, model_a, model_b), layers, value)


def _curve_of_pair(rows: pd.DataFrame, layers: Mapping[str, str] | None, value: str) -> pd.DataFrame:
    """:func:`curve_scores` of the rows of one pair (:func:`pair_rows`)."""
    value = value_column(rows, value)
    layer_a, layer_b = chosen_pair(rows, layers, value)
    rows = rows[(rows["layer_a"] == layer_a) & (rows["layer_b"] == layer_b)]
    data = pd.DataFrame({"params": rows["params"].to_numpy(), "k": numbers(rows, "k"), "n_samples": numbers(rows, "n_samples"),
                         "value": numbers(rows, value), "chance_level": chance_levels(rows),
                         "null_mean": numbers(rows, "null_mean") if has_values(rows, "null_mean") else np.nan})
    out = data.groupby(["params", "n_samples"], sort=False).agg(
        k=("k", "first"), mean=("value", "mean"), low=("value", "min"), high=("value", "max"), subsets=("value", "size"),
        chance_level=("chance_level", "mean"), null_mean=("null_mean", "mean"), null_low=("null_mean", "min"),
        null_high=("null_mean", "max")).reset_index()
    name = str(rows["metric"].iloc[0])
    out.insert(0, "label", [f"k={int(k)}" if np.isfinite(k) else name for k in out["k"]])
    out = out.sort_values(["k", "params", "n_samples"], na_position="last", kind="stable").reset_index(drop=True)
    out["n_samples"] = out["n_samples"].astype(np.int64)
    out.attrs.update(model_a=rows["model_a"].iloc[0], layer_a=layer_a, model_b=rows["model_b"].iloc[0], layer_b=layer_b)
    return out


def _size_ticks(ax, sizes: np.ndarray, width_pt: float) -> None:
    """Major ticks at the scored sizes on the log axis; a label is dropped where it would touch its
    neighbour (kept from the largest size down), minor ticks unlabelled."""
    low, high = np.log10(sizes.min()), np.log10(sizes.max())
    span = max(high - low, 1e-9) * 1.1
    kept: list[float] = []
    for n in sorted(sizes, reverse=True):
        x = (np.log10(n) - low) / span * width_pt
        w = text_size(str(int(n)))[0]
        if not kept or all(abs(x - (np.log10(m) - low) / span * width_pt) > (w + text_size(str(int(m)))[0]) / 2 + 4
                           for m in kept):
            kept.append(n)
    ax.xaxis.set_major_locator(FixedLocator(sorted(sizes)))
    ax.set_xticklabels([str(int(n)) if n in kept else "" for n in sorted(sizes)])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(10 ** (low - 0.05 * span), 10 ** (high + 0.05 * span))


def _draw_lines(ax, data: pd.DataFrame, value: str) -> list:
    """Each line with its subset band, chance level (dashed) and null mean (dotted, band over the
    subsets); returns the legend proxies of the reference lines drawn."""
    references = set()
    for n, (label, part) in enumerate(data.groupby("label", sort=False)):
        color = CB_COLORS[n % len(CB_COLORS)]
        x = part["n_samples"].to_numpy(dtype=float)
        ax.fill_between(x, part["low"], part["high"], color=color, alpha=0.2, linewidth=0, gid=f"n-curve-band-{label}")
        ax.plot(x, part["mean"], marker="o", color=color, label=label, gid=f"n-curve-{label}")
        if value == "score" and np.isfinite(part["chance_level"]).any():
            ax.plot(x, part["chance_level"], color=color, linestyle="--", linewidth=0.6, gid=f"chance-{label}")
            references.add("chance level")
        if value == "score" and np.isfinite(part["null_mean"]).any():
            ax.fill_between(x, part["null_low"], part["null_high"], color=color, alpha=0.12, linewidth=0,
                            gid=f"null-band-{label}")
            ax.plot(x, part["null_mean"], color=color, linestyle=":", linewidth=0.8, gid=f"null-mean-{label}")
            references.add("null mean")
    proxies = []
    if "chance level" in references:
        proxies.append(Line2D([], [], color=NOT_SIGNIFICANT_COLOR, linestyle="--", linewidth=0.8, label="chance level"))
    if "null mean" in references:
        proxies.append(Line2D([], [], color=NOT_SIGNIFICANT_COLOR, linestyle=":", linewidth=0.8, label="null mean"))
    return proxies


def n_curve(
    table: pd.DataFrame,
    metric: str | None = None,
    model_a: str | None = None,
    model_b: str | None = None,
    *,
    layers: Mapping[str, str] | None = None,
    value: str = "score",
    width: str | float = "single",
    scale: str = "fixed",
    ax=None,
):
    """Score (or calibrated score, ``value='calibrated'``) versus the number of samples N (log axis)
    of one layer pair, one line per k (:func:`curve_scores`): the mean over the subsets of each size
    with their range as a band, each k's chance level k/(N − 1) dashed and, with permutations, its
    null mean dotted (band: its range over the subsets). The value axis is the metric's fixed 0-1
    range unless ``scale='data'``. Returns the Figure."""
    rows = pair_rows(table, metric, model_a, model_b)
    data = _curve_of_pair(rows, layers, value)
    width_in, height = figure_width(width), line_height(width)
    with style():
        own = ax is None
        fig, ax = new_figure(width, height, ax)
        ax.set_xscale("log")
        proxies = _draw_lines(ax, data, value)
        _size_ticks(ax, np.unique(data["n_samples"].to_numpy()), 0.8 * width_in * 72)  # each size once, whatever the lines
        drawn = np.concatenate([data[c].to_numpy(dtype=float) for c in ("low", "high")])
        vscale = colour_scale(rows, value, drawn, scale)
        if vscale.kind != "data":
            pad = 0.02 * (vscale.vmax - vscale.vmin)
            ax.set_ylim(vscale.vmin - pad, vscale.vmax + pad)
        ax.set_xlabel("samples N (log scale)")
        name = str(rows["metric"].iloc[0])
        ax.set_ylabel(wrap(f"{'calibrated ' if value == 'calibrated' else ''}{name}", 0.6 * height * 72))
        a, b = data.attrs["model_a"], data.attrs["model_b"]
        set_title(fig, ax, own, [f"{a} {data.attrs['layer_a']} ~ {b} {data.attrs['layer_b']}"], vscale, width_in)
        handles, labels = ax.get_legend_handles_labels()
        handles, labels = handles + proxies, labels + [p.get_label() for p in proxies]
        legend_below(fig, ax, own, handles, labels, width_in, handlelength=1.8)
    return fig
