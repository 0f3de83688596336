"""Score versus relative depth and versus model size: line plots against one reference model."""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from repalign.errors import RepalignError
from repalign.plot.layers import significance_note
from repalign.plot.style import (
    CB_COLORS,
    NOT_SIGNIFICANT_COLOR,
    colour_scale,
    figure_width,
    legend_below,
    line_height,
    metric_label,
    metric_settings,
    new_figure,
    set_caption,
    style,
    wrap,
)
from repalign.table import check_table, family_flags, metric_rows, models_of, reference_level, swap_sides


def _reference_model(sub: pd.DataFrame, model_b: str | None, layer_b: str | None = None) -> str:
    models = models_of(sub)
    if model_b is not None:
        if model_b not in models:
            raise RepalignError(f"model {model_b!r} is not in the table; it holds: {', '.join(models)}")
        return model_b
    if layer_b is not None:
        # the reference is the model that owns the given layer
        owners = list(dict.fromkeys(list(sub.loc[sub["layer_a"] == layer_b, "model_a"])
                                    + list(sub.loc[sub["layer_b"] == layer_b, "model_b"])))
        if len(owners) == 1:
            return owners[0]
        if not owners:
            raise RepalignError(f"no model in the table has a layer {layer_b!r}; choose a stored layer")
        models = owners
    counts = pd.concat([sub["model_a"], sub["model_b"]]).drop_duplicates().tolist()
    partners = {m: set(sub.loc[sub["model_b"] == m, "model_a"]) | set(sub.loc[sub["model_a"] == m, "model_b"]) for m in counts}
    # the model compared with the most others; ties go to the first in table order
    return max(models, key=lambda m: (len(partners[m] - {m}), -models.index(m)))


def _against(sub: pd.DataFrame, model_b: str, layer_b: str | None) -> pd.DataFrame:
    """Rows comparing every other model (as model_a) with ``model_b`` (as model_b)."""
    rows = pd.concat([sub[sub["model_b"] == model_b], swap_sides(sub[sub["model_a"] == model_b])], ignore_index=True)
    rows = rows[rows["model_a"] != model_b]
    if layer_b is not None:
        if layer_b not in set(rows["layer_b"]):
            raise RepalignError(f"layer {layer_b!r} of {model_b!r} is not in the table; choose a stored layer")
        rows = rows[rows["layer_b"] == layer_b]
    if rows.empty:
        raise RepalignError(f"the table compares no other model with {model_b!r}")
    return rows


def depth_scores(
    table: pd.DataFrame,
    metric: str | None = None,
    model_b: str | None = None,
    layer_b: str | None = None,
    models: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per-layer scores of every model against the reference model B, with relative depth.

    For layer i of a model with L layers (stored order), depth = i / (L - 1) (0 = first stored
    layer, 1 = last; 0 when L = 1), and score = max over B's layers of score(i, j), or
    score(i, layer_b) when ``layer_b`` is given. B's layers are those of the layer family the table
    was compared with (its ``in_family`` column: under the default ``hidden`` family B's input
    layer is never the reference), so the profile follows the table's ``best`` pair; a table
    without that column (older, imported) ranges over all of B's layers. A layer of the model that
    is in no pair of the family (its input layer) is kept, with ``input_layer`` True. B defaults to
    the model compared with the most others. Returns columns model, layer, depth, score, layer_b,
    input_layer and, when the table has them, ci_low, ci_high, p_value, p_value_adjusted of the
    chosen cell; ``attrs['hidden_b']`` is True when some of B's layers were left out.
    """
    table = check_table(table)
    sub = metric_rows(table, metric)
    model_b = _reference_model(sub, model_b, layer_b)
    rows = _against(sub, model_b, layer_b)
    if models is not None:
        missing = [m for m in models if m not in set(rows["model_a"])]
        if missing:
            raise RepalignError(f"models {missing} are not compared with {model_b!r} in the table")
        rows = rows[rows["model_a"].isin(models)]
    out = []
    hidden_b = False
    for model, part in rows.groupby("model_a", sort=False):
        part = part.assign(score=pd.to_numeric(part["score"], errors="coerce"))
        names = list(dict.fromkeys(part["layer_a"]))
        inputs: set = set()
        flags = family_flags(part)
        if flags is not None:
            inside = part[flags[0]]
            inputs = set(names) - set(inside["layer_a"])
            if layer_b is None:
                family_b = set(inside["layer_b"])
                hidden_b |= bool(set(part["layer_b"]) - family_b)
                part = part[part["layer_b"].isin(family_b)]
        for i, name in enumerate(names):
            cells = part[part["layer_a"] == name]
            best = cells.loc[cells["score"].idxmax()] if cells["score"].notna().any() else cells.iloc[0]
            rec = {"model": model, "layer": name, "depth": i / (len(names) - 1) if len(names) > 1 else 0.0,
                   "score": float(best["score"]), "layer_b": best["layer_b"], "input_layer": name in inputs}
            for extra in ("ci_low", "ci_high", "p_value", "p_value_adjusted"):
                if extra in cells.columns:
                    rec[extra] = float(pd.to_numeric(pd.Series([best[extra]]), errors="coerce").iloc[0])
            out.append(rec)
    result = pd.DataFrame(out)
    result.attrs["model_b"] = model_b
    result.attrs["hidden_b"] = hidden_b
    return result


#: the marker of a model's input layer on a depth profile (the other layers are dots)
INPUT_MARKER, INPUT_MARKER_NAME = "s", "square"


def _coloured_groups(data: pd.DataFrame, column: str):
    """(value, rows, colour) for each value of ``column`` in table order, colours from the CB-safe palette."""
    for n, (value, part) in enumerate(data.groupby(column, sort=False)):
        yield value, part, CB_COLORS[n % len(CB_COLORS)]


def _finish_lines(fig, ax, own: bool, rows: pd.DataFrame, ylabel: str, width_in: float, height_in: float,
                  scale: str) -> None:
    """Shared by the line plots: the fixed 0-1 value axis (``scale='data'``: matplotlib's), the
    chance level (dashed) or null means (band), the wrapped value label and the legend under the axes."""
    values = np.concatenate([line.get_ydata() for line in ax.get_lines()]).astype(float)
    vscale = colour_scale(rows, "score", values, scale)
    if vscale.kind != "data":
        ax.set_ylim(vscale.vmin - 0.02 * (vscale.vmax - vscale.vmin), vscale.vmax + 0.02 * (vscale.vmax - vscale.vmin))
    ref = reference_level(rows)
    if ref is not None:
        what, low, high = ref
        if np.isclose(low, high, atol=5e-4):
            ax.axhline(low, color=NOT_SIGNIFICANT_COLOR, linestyle="--", linewidth=0.6, label=what,
                       gid=f"{what.replace(' ', '-')}-level")
        else:
            ax.axhspan(low, high, color=NOT_SIGNIFICANT_COLOR, alpha=0.25, linewidth=0, label=f"{what} (range)",
                       gid=f"{what.replace(' ', '-')}-band")
    ax.set_ylabel(wrap(ylabel, 0.6 * height_in * 72))
    handles, labels = ax.get_legend_handles_labels()
    legend_below(fig, ax, own, handles, labels, width_in)


def depth_profile(
    table: pd.DataFrame,
    metric: str | None = None,
    model_b: str | None = None,
    *,
    layer_b: str | None = None,
    models: Sequence[str] | None = None,
    alpha: float = 0.05,
    width: str | float = "single",
    scale: str = "fixed",
    ax=None,
):
    """Score versus relative depth (:func:`depth_scores`) of several models in one plot.

    Each layer is scored against B's best layer of the table's layer family; a model's input layer
    (outside the family) is drawn as a square, named in the legend. The value axis is the metric's fixed 0-1 range (``scale='data'``: fitted to the data).
    Intervals (ci_low, ci_high) are drawn as bands when present; points with ``p_value_adjusted``
    (else ``p_value``) >= alpha are drawn hollow; the chance level is a dashed line (its largest
    value, when pairs differ in N), or the range of null means a grey band. Returns the Figure.
    """
    rows = metric_rows(check_table(table), metric)
    data = depth_scores(table, metric, model_b, layer_b, models)
    ref = data.attrs["model_b"]
    width_in, height = figure_width(width), line_height(width)
    sig_col = next((c for c in ("p_value_adjusted", "p_value") if c in data and data[c].notna().any()), None)
    hollow = bool(sig_col) and bool((data[sig_col] >= alpha).any())
    bands = "ci_low" in data and bool(data["ci_low"].notna().any())
    with style():
        own = ax is None
        fig, ax = new_figure(width, height, ax)
        for model, part, color in _coloured_groups(data, "model"):
            ax.plot(part["depth"], part["score"], color=color, label=model, gid=f"depth-{model}")
            if "ci_low" in part and part["ci_low"].notna().any():
                ax.fill_between(part["depth"], part["ci_low"], part["ci_high"], color=color, alpha=0.2, linewidth=0)
            sig = ~(part[sig_col] >= alpha) if sig_col else pd.Series(True, index=part.index)
            for marker, size, kept in (("o", 6, ~part["input_layer"]), (INPUT_MARKER, 14, part["input_layer"])):
                ax.scatter(part["depth"][sig & kept], part["score"][sig & kept], color=color, s=size, marker=marker, zorder=3)
                ax.scatter(part["depth"][~sig & kept], part["score"][~sig & kept], facecolor="white", edgecolor=color,
                           s=size, marker=marker, linewidth=0.6, zorder=3)
        inputs = bool(data["input_layer"].any())
        if inputs:  # one legend entry for the marker, in no model's colour
            ax.scatter([], [], color="black", s=14, marker=INPUT_MARKER, label="input layer", gid="input-layer")
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("relative depth (layer / last layer)")
        against = f"{ref} {layer_b}" if layer_b else f"best {'hidden ' if data.attrs['hidden_b'] else ''}layer of {ref}"
        _finish_lines(fig, ax, own, rows, f"{metric_label(rows)} vs {against}", width_in, height, scale)
        set_caption(fig, [metric_settings(rows), f"each layer of a model at its relative depth, scored against {against}",
                          f"{INPUT_MARKER_NAME}: a model's input layer, outside the layer family of the table's best pair"
                          if inputs else "",
                          "band: subsampling interval" if bands else "",
                          significance_note(data.assign(metric=rows["metric"].iloc[0]), sig_col, alpha, "hollow") if hollow else ""])
    return fig


_SIZE_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
_SIZE_WITH_UNIT = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)([kmbgt])(?![a-z])", re.IGNORECASE)
_SIZE_TRAILING = re.compile(r"[-_](\d+(?:\.\d+)?)$")


def parse_model_size(name: str) -> tuple[str, float] | None:
    """(family, size) from a model name: 'esmc-300m' -> ('esmc', 3e8), 'unirep-1900' -> ('unirep', 1900).

    A number with a k/m/b/t suffix is scaled (esm2_t33_650M -> 6.5e8, family 'esm2_t33'); a bare
    trailing number after '-' or '_' is taken as is. The family is the name without the size
    token. None when the name holds no size.
    """
    m: re.Match[str] | None
    hits = list(_SIZE_WITH_UNIT.finditer(name))
    if hits:
        m = hits[-1]
        size = float(m.group(1)) * _SIZE_SUFFIX[m.group(2).lower()]
    else:
        m = _SIZE_TRAILING.search(name)
        if not m:
            return None
        size = float(m.group(1))
    family = (name[: m.start()] + name[m.end():]).strip("-_ ") or name
    family = re.sub(r"([-_])[-_]+", r"\1", family)  # the separators around the size token become one
    return family, size


def size_scores(
    table: pd.DataFrame,
    metric: str | None = None,
    model_b: str | None = None,
    *,
    layer_b: str | None = None,
    sizes: Mapping[str, float] | None = None,
    families: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Best score of every model against reference B (max over both models' layers of the table's
    layer family, as :func:`depth_scores`, or over the model's layers at B's ``layer_b``; the
    model's input layers left out), with family and size (``sizes`` mapping, else parsed by
    :func:`parse_model_size`). Columns model, family, size, score. Models without a size, and
    families with a single size, are left out.
    """
    data = depth_scores(table, metric, model_b, layer_b)
    sizes, families = dict(sizes or {}), dict(families or {})
    out = []
    for model, part in data.groupby("model", sort=False):
        parsed = parse_model_size(model)
        size = sizes.get(model, parsed[1] if parsed else None)
        family = families.get(model, parsed[0] if parsed else model)
        if size is None:
            continue
        try:
            size = float(size)
        except (TypeError, ValueError):
            raise RepalignError(f"size of {model!r} is {size!r}, not a number; give sizes as MODEL=NUMBER") from None
        if not size > 0:
            raise RepalignError(f"size of {model!r} is {size}; sizes must be positive")
        part = part[~part["input_layer"]] if not part["input_layer"].all() else part
        best = part.loc[part["score"].idxmax()]
        out.append({"model": model, "family": family, "size": size, "score": float(best["score"])})
    result = pd.DataFrame(out, columns=["model", "family", "size", "score"])
    # a family with one size says nothing about scaling
    several = result.groupby("family")["size"].transform("nunique") >= 2
    result = result[several]
    if result.empty:
        raise RepalignError(
            "no model family with several sizes in the table; name models like esmc-300m / esmc-600m "
            "or give sizes={'MODEL': NUMBER}"
        )
    result.attrs["model_b"] = data.attrs["model_b"]
    return result.sort_values(["family", "size"], kind="stable").reset_index(drop=True)


def _size_text(value: float) -> str:
    for factor, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:g}{suffix}"
    return f"{value:g}"


def size_scaling(
    table: pd.DataFrame,
    metric: str | None = None,
    model_b: str | None = None,
    *,
    layer_b: str | None = None,
    sizes: Mapping[str, float] | None = None,
    families: Mapping[str, str] | None = None,
    width: str | float = "single",
    scale: str = "fixed",
    ax=None,
):
    """Best score versus model size (log axis), one line per family (:func:`size_scores`); the value
    axis is the metric's fixed 0-1 range unless ``scale='data'``."""
    rows = metric_rows(check_table(table), metric)
    data = size_scores(table, metric, model_b, layer_b=layer_b, sizes=sizes, families=families)
    width_in, height = figure_width(width), line_height(width)
    with style():
        own = ax is None
        fig, ax = new_figure(width, height, ax)
        for family, part, color in _coloured_groups(data, "family"):
            ax.plot(part["size"], part["score"], marker="o", color=color, label=family, gid=f"size-{family}")
        ax.set_xscale("log")
        # whole decades, labelled 10M, 100M, 1B: minor ticks unlabelled so no two labels collide
        low, high = np.floor(np.log10(data["size"].min())), np.ceil(np.log10(data["size"].max()))
        ax.set_xlim(10 ** (low - 0.05), 10 ** (high + 0.05))
        ax.xaxis.set_major_locator(LogLocator(base=10, numticks=12))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, pos: _size_text(v)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("model size (parameters)")
        _finish_lines(fig, ax, own, rows, f"{metric_label(rows)} vs {data.attrs['model_b']}", width_in, height, scale)
    return fig
