"""Publication figures drawn from tidy score tables alone (never from caches).

Every figure is a function of the table written by ``repalign compare -o`` (columns model_a,
layer_a, model_b, layer_b, metric, params, score, n_samples; optionally p_value, null_mean,
calibrated, ci_low, ci_high, p_value_best), so a figure can be restyled without recomputing:

* :func:`layer_heatmap`: layer x layer scores of one model pair, stages grouped, best pair boxed,
  non-significant cells hatched.
* :func:`model_matrix`: model x model matrix of the best layer pair (or chosen layers), ordered by
  hierarchical clustering.
* :func:`depth_profile`: score versus relative depth for several models against one reference.
* :func:`size_scaling`: score versus model size within model families.

:func:`save_figure` writes PNG (300 dpi), PDF (TrueType fonts embedded) and SVG (text kept as
editable ``<text>``). Conventions and formulas: docs/figures.md.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from repalign.errors import RepalignError

#: one journal column (3.5 in) and two columns (7.2 in)
COLUMN_WIDTH_IN = {1: 3.5, 2: 7.2}
FORMATS = ("png", "pdf", "svg")
PNG_DPI = 300
KINDS = ("layers", "models", "depth", "size")
REQUIRED_COLUMNS = ("model_a", "layer_a", "model_b", "layer_b", "metric", "score")

#: readable names of ESMFold2 stages (the prefix of a layer name before its first '.')
STAGE_LABELS = {
    "esmc": "ESMC",
    "language_model": "LM",
    "lm_encoder": "LM encoder",
    "folding_trunk": "trunk",
    "parcae": "parcae",
    "diffusion": "diffusion",
    "confidence": "confidence",
}

# Okabe & Ito (2008) colour-blind-safe palette, for lines and markers
CB_COLORS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
SEQUENTIAL_CMAP = "cividis"
MARKER_COLOR = "#D55E00"  # vermillion: visible on every cividis shade
NOT_SIGNIFICANT_COLOR = "#9a9a9a"
MAX_TICK_LABELS = 40

# A sober style: small fonts, thin lines, no frames or grids; fonts that can be embedded.
STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 7,
    "axes.titlesize": 7,
    "axes.labelsize": 7,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "legend.fontsize": 6,
    "axes.linewidth": 0.5,
    "lines.linewidth": 1.0,
    "lines.markersize": 3,
    "xtick.major.width": 0.5,
    "ytick.major.width": 0.5,
    "xtick.major.size": 2,
    "ytick.major.size": 2,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "hatch.linewidth": 0.4,
    "image.cmap": SEQUENTIAL_CMAP,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.fonttype": "none",
    "svg.hashsalt": "repalign",  # deterministic element ids: the same table gives the same SVG bytes
    "savefig.dpi": PNG_DPI,
    "savefig.bbox": None,  # exactly the journal width; constrained layout keeps every label inside
    "savefig.pad_inches": 0.02,
}


@contextlib.contextmanager
def style():
    """The publication style as a matplotlib rc context (fonts embeddable, CB-safe colours)."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        yield


# ---- table access -------------------------------------------------------------------------------


def check_table(table: pd.DataFrame) -> pd.DataFrame:
    """Validate a tidy score table: required columns present, at least one row, numeric scores."""
    if not isinstance(table, pd.DataFrame):
        raise RepalignError(f"expected a pandas DataFrame score table, got {type(table).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise RepalignError(
            f"the score table lacks columns {missing}; give a table written by 'repalign compare -o'"
        )
    if table.empty:
        raise RepalignError("the score table is empty; run 'repalign compare ... -o TABLE' first")
    try:
        scores = pd.to_numeric(table["score"])
    except (TypeError, ValueError):
        raise RepalignError("the score column holds non-numbers; give a table written by 'repalign compare -o'") from None
    out = table.copy()
    out["score"] = scores.astype(float)
    for col in ("model_a", "layer_a", "model_b", "layer_b", "metric"):
        out[col] = out[col].astype(str)
    if "params" in out.columns:
        # a CSV with no parameters reads back as a float column of NaN
        out["params"] = ["" if pd.isna(v) else str(v) for v in out["params"]]
    else:
        out["params"] = ""
    return out


def resolve_metric(table: pd.DataFrame, metric: str | None = None) -> str:
    """The table's metric named ``metric`` (an alias such as 'mknn' is accepted); default: the first."""
    stored = list(dict.fromkeys(table["metric"]))
    if metric is None:
        return stored[0]
    if metric in stored:
        return metric
    from repalign.metrics import get_metric

    try:
        canonical = get_metric(metric).name
    except RepalignError:
        canonical = None
    if canonical in stored:
        return canonical
    raise RepalignError(f"metric {metric!r} is not in the table; it holds: {', '.join(stored)}; pass one with --metric")


def _metric_rows(table: pd.DataFrame, metric: str | None) -> pd.DataFrame:
    """Rows of one metric and one parameter setting (the first stored, when several)."""
    metric = resolve_metric(table, metric)
    sub = table[table["metric"] == metric]
    return sub[sub["params"] == sub["params"].iloc[0]]


def _swap(sub: pd.DataFrame) -> pd.DataFrame:
    """The same rows seen from the other side: A and B exchanged (every metric is symmetric in A, B)."""
    return sub.rename(columns={"model_a": "model_b", "model_b": "model_a", "layer_a": "layer_b", "layer_b": "layer_a"})


def select_pair(table: pd.DataFrame, metric=None, model_a=None, model_b=None) -> pd.DataFrame:
    """Rows of one model pair and metric (one parameter setting), model A's layers first.

    Defaults: the table's first metric and first pair. A pair stored as (B, A) is returned
    exchanged, so model A is always the rows of :func:`pair_matrix`.
    """
    table = check_table(table)
    sub = _metric_rows(table, metric)
    models = list(dict.fromkeys(list(sub["model_a"]) + list(sub["model_b"])))
    for name in (model_a, model_b):
        if name is not None and name not in models:
            raise RepalignError(f"model {name!r} is not in the table for this metric; it holds: {', '.join(models)}")
    if model_a is None and model_b is None:
        model_a, model_b = sub["model_a"].iloc[0], sub["model_b"].iloc[0]
    elif model_b is None:
        partners = sub.loc[sub["model_a"] == model_a, "model_b"].tolist() or sub.loc[sub["model_b"] == model_a, "model_a"].tolist()
        model_b = partners[0]
    elif model_a is None:
        partners = sub.loc[sub["model_b"] == model_b, "model_a"].tolist() or sub.loc[sub["model_a"] == model_b, "model_b"].tolist()
        model_a = partners[0]
    rows = sub[(sub["model_a"] == model_a) & (sub["model_b"] == model_b)]
    if rows.empty:
        rows = _swap(sub[(sub["model_a"] == model_b) & (sub["model_b"] == model_a)])
    if rows.empty:
        raise RepalignError(f"the table has no rows comparing {model_a!r} with {model_b!r}; compare them first")
    return rows


def pair_matrix(rows: pd.DataFrame, column: str = "score") -> tuple[np.ndarray, list[str], list[str]]:
    """The La x Lb matrix of ``column`` for one pair's rows, layers in stored (first-seen) order."""
    la = list(dict.fromkeys(rows["layer_a"]))
    lb = list(dict.fromkeys(rows["layer_b"]))
    ia = {n: i for i, n in enumerate(la)}
    ib = {n: j for j, n in enumerate(lb)}
    out = np.full((len(la), len(lb)), np.nan)
    values = pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=float)
    for a, b, v in zip(rows["layer_a"], rows["layer_b"], values):
        out[ia[a], ib[b]] = v
    return out, la, lb


def _has(rows: pd.DataFrame, column: str) -> bool:
    return column in rows.columns and pd.to_numeric(rows[column], errors="coerce").notna().any()


def _metric_label(rows: pd.DataFrame, value: str = "score") -> str:
    metric, params = rows["metric"].iloc[0], rows["params"].iloc[0]
    label = metric if not params else f"{metric} ({params.replace(',', ', ')})"
    return f"calibrated {label}" if value == "calibrated" else label


def _value_column(rows: pd.DataFrame, value: str) -> str:
    if value not in ("score", "calibrated"):
        raise RepalignError(f"value {value!r} is not 'score' or 'calibrated'")
    if value == "calibrated" and not _has(rows, "calibrated"):
        raise RepalignError("the table has no calibrated scores; compare with --permutations N, or draw raw scores")
    return value


# ---- layer groups ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerGroup:
    """A contiguous run of layers sharing a stage prefix: layers[start:stop]."""

    prefix: str
    label: str
    start: int
    stop: int


def layer_groups(names: Sequence[str]) -> list[LayerGroup]:
    """Contiguous runs of layers with the same stage: the name's prefix before its first '.'.

    ESMFold2 prefixes get readable labels (``esmc`` -> ESMC, ``lm_encoder`` -> LM encoder,
    ``folding_trunk`` -> trunk, ...); other prefixes are their own label. A stage that comes back
    after another stage starts a new group.
    """
    groups: list[LayerGroup] = []
    for i, name in enumerate(names):
        prefix = str(name).split(".", 1)[0]
        if groups and groups[-1].prefix == prefix:
            last = groups[-1]
            groups[-1] = LayerGroup(prefix, last.label, last.start, i + 1)
        else:
            groups.append(LayerGroup(prefix, STAGE_LABELS.get(prefix, prefix), i, i + 1))
    return groups


def _tick_positions(n: int, room_in: float = 9.0) -> list[int]:
    """Every k-th layer, so that labels of 6 pt text (about 7.5 pt apart) fit in ``room_in`` inches."""
    fit = max(2, min(MAX_TICK_LABELS, int(room_in * 72 / 7.5)))
    step = max(1, math.ceil(n / fit))
    return list(range(0, n, step))


def _draw_groups(ax, groups: list[LayerGroup], axis: str) -> None:
    """Separator lines between stage groups and the group labels outside the axes."""
    if len(groups) < 2:
        return
    for g in groups[1:]:
        pos = g.start - 0.5
        if axis == "x":
            ax.axvline(pos, color="white", linewidth=0.8, zorder=2, gid=f"stage-separator-x-{g.start}")
        else:
            ax.axhline(pos, color="white", linewidth=0.8, zorder=2, gid=f"stage-separator-y-{g.start}")
    for g in groups:
        centre = (g.start + g.stop - 1) / 2
        if axis == "x":
            ax.annotate(g.label, xy=(centre, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 2),
                        textcoords="offset points", ha="left", va="bottom", fontsize=5, rotation=45,
                        gid=f"stage-label-x-{g.start}")
        else:
            ax.annotate(g.label, xy=(1.0, centre), xycoords=("axes fraction", "data"), xytext=(2, 0),
                        textcoords="offset points", ha="left", va="center", fontsize=5,
                        gid=f"stage-label-y-{g.start}")


def _figure(columns: int, height: float, ax=None):
    # a bare Figure, not pyplot: no global figure registry, no GUI backend needed
    from matplotlib.figure import Figure

    _check_columns(columns)
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=(COLUMN_WIDTH_IN[columns], height), layout="constrained")
    return fig, fig.subplots()


def _check_columns(columns) -> int:
    if columns not in COLUMN_WIDTH_IN:
        raise RepalignError(f"columns must be 1 (3.5 in) or 2 (7.2 in), got {columns!r}")
    return columns


# ---- layer x layer heatmap ----------------------------------------------------------------------------


def layer_heatmap(
    table: pd.DataFrame,
    metric: str | None = None,
    model_a: str | None = None,
    model_b: str | None = None,
    *,
    value: str = "score",
    alpha: float = 0.05,
    columns: int = 1,
    ax=None,
):
    """Layer x layer heatmap of one model pair: model A's layers on rows, B's on columns.

    ``value`` is 'score' or 'calibrated' (needs the calibrated column). The best pair (argmax of
    the drawn value) is boxed; when the table has a ``p_value`` column, cells with
    p_value >= ``alpha`` are hatched grey (not significant). Stage groups (name prefix before the
    first '.') are separated by white lines and labelled above and right of the map.
    Returns the matplotlib Figure.
    """
    from matplotlib.patches import PathPatch, Rectangle

    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise RepalignError(f"alpha must be in (0, 1), got {alpha!r}")
    rows = select_pair(table, metric, model_a, model_b)
    column = _value_column(rows, value)
    scores, names_a, names_b = pair_matrix(rows, column)
    if np.isnan(scores).all():
        raise RepalignError("every score of this pair is missing (NaN); nothing to draw")
    ma, mb = rows["model_a"].iloc[0], rows["model_b"].iloc[0]

    with style():
        height = min(max(2.4, 0.11 * len(names_a) + 1.5), 9.0)
        fig, ax = _figure(columns, height, ax)
        vmax = 1.0 if column == "calibrated" else None
        im = ax.imshow(scores, cmap=SEQUENTIAL_CMAP, aspect="auto", interpolation="nearest",
                       vmin=0.0 if column == "calibrated" else None, vmax=vmax)
        for side in ("top", "right"):
            ax.spines[side].set_visible(True)
        width = fig.get_figwidth()
        # the map gets roughly half the figure width once row labels and colour bar are placed
        yt, xt = _tick_positions(len(names_a), 0.8 * fig.get_figheight()), _tick_positions(len(names_b), 0.45 * width)
        ax.set_yticks(yt, [names_a[i] for i in yt])
        ax.set_xticks(xt, [names_b[j] for j in xt], rotation=90)
        ax.set_ylabel(f"{ma} layer")
        ax.set_xlabel(f"{mb} layer")
        _draw_groups(ax, layer_groups(names_a), "y")
        _draw_groups(ax, layer_groups(names_b), "x")

        if _has(rows, "p_value"):
            p, _, _ = pair_matrix(rows, "p_value")
            cells = np.argwhere(p >= alpha)
            if len(cells):
                # one compound path for all cells: thousands of separate hatched patches take minutes to draw
                ax.add_patch(PathPatch(_cells_path(cells), facecolor=NOT_SIGNIFICANT_COLOR, alpha=0.6, hatch="////",
                                       edgecolor="white", linewidth=0, zorder=1.5, gid="not-significant"))

        search = scores.astype(float)
        if ma == mb:  # a model against itself: a layer with itself is trivially 1, not a finding
            same = np.equal.outer(np.asarray(names_a, dtype=object), np.asarray(names_b, dtype=object))
            if not same.all():
                search[same] = np.nan
        i, j = np.unravel_index(np.nanargmax(search), search.shape)
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=MARKER_COLOR, linewidth=1.2,
                               zorder=3, gid="best-pair"))
        bar = fig.colorbar(im, ax=ax, shrink=0.85, pad=0.02)
        bar.set_label(_metric_label(rows, column))
        bar.outline.set_linewidth(0.5)
        note = ""
        if _has(rows, "p_value_best"):
            note = f", p(best) = {float(pd.to_numeric(rows['p_value_best']).dropna().iloc[0]):.3g}"
        title = f"{ma} vs {mb}\nbest {names_a[i]} ~ {names_b[j]} = {scores[i, j]:.3f}{note}"
        ax.set_title(title, pad=26 if len(layer_groups(names_b)) > 1 else 4)
    return fig


def _cells_path(cells: np.ndarray):
    """One Path made of the unit squares centred on the (row, column) cells of an image."""
    from matplotlib.path import Path as MplPath

    square = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5]])
    vertices = (cells[:, None, ::-1].astype(float) + square[None]).reshape(-1, 2)
    codes = np.tile([MplPath.MOVETO, MplPath.LINETO, MplPath.LINETO, MplPath.LINETO, MplPath.CLOSEPOLY], len(cells))
    return MplPath(vertices, codes)


def hatched_cells(fig) -> list[tuple[int, int]]:
    """(row, column) of the cells a :func:`layer_heatmap` figure hatches as not significant."""
    ax = fig.axes[0]
    out = []
    for patch in ax.patches:
        if patch.get_gid() == "not-significant":
            corners = patch.get_path().vertices[::5]
            out.extend((int(round(y + 0.5)), int(round(x + 0.5))) for x, y in corners)
    return sorted(out)


# ---- model x model matrix -----------------------------------------------------------------------------


def model_scores(
    table: pd.DataFrame,
    metric: str | None = None,
    layers: Mapping[str, str] | None = None,
    value: str = "score",
) -> pd.DataFrame:
    """Symmetric model x model matrix (DataFrame) of one metric.

    Entry (a, b) is the maximum over all layer pairs of a and b, or, for models named in
    ``layers`` (model -> layer), the score at that layer (max over the other model's layers when
    only one side is fixed). Pairs never compared are NaN; the diagonal is NaN unless the table
    compares a model with itself.
    """
    table = check_table(table)
    sub = _metric_rows(table, metric)
    column = _value_column(sub, value)
    both = pd.concat([sub, _swap(sub)], ignore_index=True)
    layers = dict(layers or {})
    models = list(dict.fromkeys(list(sub["model_a"]) + list(sub["model_b"])))
    for model, layer in layers.items():
        if model not in models:
            raise RepalignError(f"model {model!r} is not in the table; it holds: {', '.join(models)}")
        if layer not in set(both.loc[both["model_a"] == model, "layer_a"]):
            raise RepalignError(f"layer {layer!r} of {model!r} is not in the table; choose a stored layer")
    keep = np.ones(len(both), dtype=bool)
    for model, layer in layers.items():
        keep &= ~((both["model_a"] == model) & (both["layer_a"] != layer))
        keep &= ~((both["model_b"] == model) & (both["layer_b"] != layer))
    values = pd.to_numeric(both.loc[keep, column], errors="coerce")
    best = values.groupby([both.loc[keep, "model_a"], both.loc[keep, "model_b"]]).max()
    out = pd.DataFrame(np.nan, index=models, columns=models)
    for (a, b), v in best.items():
        out.loc[a, b] = v
    return out


def cluster_order(matrix: pd.DataFrame, method: str = "average") -> list[str]:
    """Models ordered by hierarchical clustering of the distance 1 - score (scipy linkage).

    Missing pairs count as the largest distance (1 - min score, at least 1); the leaf order is
    scipy's ``leaves_list`` with ``optimal_ordering=True`` (Bar-Joseph et al., 2001), so adjacent
    models are as similar as the tree allows.
    """
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

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
    order: str | Sequence[str] = "cluster",
    value: str = "score",
    columns: int = 1,
    ax=None,
):
    """Model x model matrix of :func:`model_scores`, values written in the cells.

    ``order`` is 'cluster' (:func:`cluster_order`), 'table' (first appearance) or an explicit
    list of every model. Returns the Figure; the order used is ``fig.repalign_order``.
    """
    rows = _metric_rows(check_table(table), metric)
    scores = model_scores(table, metric, layers, value)
    names = list(scores.index)
    if len(names) < 2:
        raise RepalignError("a model x model matrix needs at least two models in the table")
    if isinstance(order, str):
        if order == "cluster":
            names = cluster_order(scores)
        elif order != "table":
            raise RepalignError(f"order {order!r} is not 'cluster', 'table' or a list of models")
    else:
        order = [str(m) for m in order]
        if sorted(order) != sorted(names):
            raise RepalignError(f"order must list every model once: {', '.join(names)}")
        names = order
    s = scores.loc[names, names].to_numpy(dtype=float)
    s = np.where(np.isnan(s), s.T, s)

    with style():
        size = min(max(2.2, 0.35 * len(names) + 1.2), 7.0)
        fig, ax = _figure(columns, size if columns == 1 else min(size, 6.0), ax)
        vmin, vmax = (0.0, 1.0) if value == "calibrated" else (np.nanmin(s), np.nanmax(s))
        im = ax.imshow(s, cmap=SEQUENTIAL_CMAP, vmin=vmin, vmax=vmax, interpolation="nearest")
        for side in ("top", "right"):
            ax.spines[side].set_visible(True)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        mid = (vmin + vmax) / 2
        fontsize = 6 if len(names) <= 8 else 4.5
        for i in range(len(names)):
            for j in range(len(names)):
                if np.isnan(s[i, j]):
                    continue
                # cividis is dark below its middle: white text there, black above
                color = "white" if s[i, j] < mid else "black"
                ax.text(j, i, f"{s[i, j]:.2f}", ha="center", va="center", fontsize=fontsize, color=color,
                        gid=f"cell-{i}-{j}")
        bar = fig.colorbar(im, ax=ax, shrink=0.7, aspect=30)
        what = "chosen layers" if layers else "best layer pair"
        bar.set_label(f"{_metric_label(rows, value)}, {what}")
        bar.outline.set_linewidth(0.5)
    fig.repalign_order = names
    return fig


# ---- score versus depth and size -------------------------------------------------------------------------


def _reference_model(sub: pd.DataFrame, model_b: str | None, layer_b: str | None = None) -> str:
    models = list(dict.fromkeys(list(sub["model_a"]) + list(sub["model_b"])))
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
    rows = pd.concat([sub[sub["model_b"] == model_b], _swap(sub[sub["model_a"] == model_b])], ignore_index=True)
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
    score(i, layer_b) when ``layer_b`` is given. B defaults to the model compared with the most
    others. Returns columns model, layer, depth, score, layer_b and, when the table has them,
    ci_low, ci_high, p_value of the chosen cell.
    """
    table = check_table(table)
    sub = _metric_rows(table, metric)
    model_b = _reference_model(sub, model_b, layer_b)
    rows = _against(sub, model_b, layer_b)
    if models is not None:
        missing = [m for m in models if m not in set(rows["model_a"])]
        if missing:
            raise RepalignError(f"models {missing} are not compared with {model_b!r} in the table")
        rows = rows[rows["model_a"].isin(models)]
    out = []
    for model, part in rows.groupby("model_a", sort=False):
        part = part.assign(score=pd.to_numeric(part["score"], errors="coerce"))
        names = list(dict.fromkeys(part["layer_a"]))
        for i, name in enumerate(names):
            cells = part[part["layer_a"] == name]
            best = cells.loc[cells["score"].idxmax()] if cells["score"].notna().any() else cells.iloc[0]
            rec = {"model": model, "layer": name, "depth": i / (len(names) - 1) if len(names) > 1 else 0.0,
                   "score": float(best["score"]), "layer_b": best["layer_b"]}
            for extra in ("ci_low", "ci_high", "p_value"):
                if extra in cells.columns:
                    rec[extra] = float(pd.to_numeric(pd.Series([best[extra]]), errors="coerce").iloc[0])
            out.append(rec)
    result = pd.DataFrame(out)
    result.attrs["model_b"] = model_b
    return result


def depth_profile(
    table: pd.DataFrame,
    metric: str | None = None,
    model_b: str | None = None,
    *,
    layer_b: str | None = None,
    models: Sequence[str] | None = None,
    alpha: float = 0.05,
    columns: int = 1,
    ax=None,
):
    """Score versus relative depth (:func:`depth_scores`) of several models in one plot.

    Intervals (ci_low, ci_high) are drawn as bands when present; points with p_value >= alpha
    are drawn hollow; a ``chance_level`` column is drawn as a dashed line (its largest value, when
    pairs differ in N). Returns the Figure.
    """
    rows = _metric_rows(check_table(table), metric)
    data = depth_scores(table, metric, model_b, layer_b, models)
    ref = data.attrs["model_b"]
    with style():
        fig, ax = _figure(columns, 2.4 if columns == 1 else 3.0, ax)
        for n, (model, part) in enumerate(data.groupby("model", sort=False)):
            color = CB_COLORS[n % len(CB_COLORS)]
            ax.plot(part["depth"], part["score"], color=color, label=model, gid=f"depth-{model}")
            if "ci_low" in part and part["ci_low"].notna().any():
                ax.fill_between(part["depth"], part["ci_low"], part["ci_high"], color=color, alpha=0.2, linewidth=0)
            sig = ~(part["p_value"] >= alpha) if "p_value" in part else pd.Series(True, index=part.index)
            ax.scatter(part["depth"][sig], part["score"][sig], color=color, s=6, zorder=3)
            ax.scatter(part["depth"][~sig], part["score"][~sig], facecolor="white", edgecolor=color, s=6,
                       linewidth=0.6, zorder=3)
        if _has(rows, "chance_level"):
            chance = float(pd.to_numeric(rows["chance_level"], errors="coerce").max())
            ax.axhline(chance, color=NOT_SIGNIFICANT_COLOR, linestyle="--", linewidth=0.6, label="chance",
                       gid="chance-level")
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("relative depth (layer / last layer)")
        against = f"{ref} {layer_b}" if layer_b else f"best layer of {ref}"
        ax.set_ylabel(f"{_metric_label(rows)}\nvs {against}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
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
    """Best score of every model against reference B (max over both models' layers, or over the
    model's layers at B's ``layer_b``), with family and size (``sizes`` mapping, else parsed by
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
        best = part.loc[part["score"].idxmax()]
        out.append({"model": model, "family": family, "size": size, "score": float(best["score"])})
    result = pd.DataFrame(out, columns=["model", "family", "size", "score"])
    # a family with one size says nothing about scaling
    several = result.groupby("family")["size"].transform("nunique") >= 2
    result = result[several]
    if result.empty:
        raise RepalignError(
            "no model family with several sizes in the table; name models like esmc-300m / esmc-600m "
            "or give sizes with --size MODEL=NUMBER"
        )
    result.attrs["model_b"] = data.attrs["model_b"]
    return result.sort_values(["family", "size"], kind="stable").reset_index(drop=True)


def size_scaling(
    table: pd.DataFrame,
    metric: str | None = None,
    model_b: str | None = None,
    *,
    layer_b: str | None = None,
    sizes: Mapping[str, float] | None = None,
    families: Mapping[str, str] | None = None,
    columns: int = 1,
    ax=None,
):
    """Best score versus model size (log axis), one line per family (:func:`size_scores`)."""
    rows = _metric_rows(check_table(table), metric)
    data = size_scores(table, metric, model_b, layer_b=layer_b, sizes=sizes, families=families)
    with style():
        fig, ax = _figure(columns, 2.4 if columns == 1 else 3.0, ax)
        for n, (family, part) in enumerate(data.groupby("family", sort=False)):
            color = CB_COLORS[n % len(CB_COLORS)]
            ax.plot(part["size"], part["score"], marker="o", color=color, label=family, gid=f"size-{family}")
        ax.set_xscale("log")
        ax.set_xlabel("model size")
        ax.set_ylabel(f"{_metric_label(rows)}\nvs {data.attrs['model_b']}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


# ---- saving -------------------------------------------------------------------------------------------------


def check_formats(formats: str | Sequence[str]) -> list[str]:
    if isinstance(formats, str):
        formats = [f for f in formats.split(",") if f]
    out = []
    for f in formats:
        f = str(f).strip().lower().lstrip(".")
        if f not in FORMATS:
            raise RepalignError(f"figure format {f!r} is not supported; use png, pdf or svg (comma separated)")
        if f not in out:
            out.append(f)
    if not out:
        raise RepalignError("no figure format given; use --format png,pdf,svg")
    return out


def check_stem(stem: str | os.PathLike) -> Path:
    stem = Path(stem)
    if stem.suffix.lower() in {".png", ".pdf", ".svg"}:
        stem = stem.with_suffix("")  # only a figure suffix is dropped: dots in names (chgnet-0.3.0) stay
    if not stem.name:
        raise RepalignError(f"{stem}: give an output file stem such as figures/heatmap")
    parent = stem.parent
    if not parent.is_dir():
        raise RepalignError(f"{parent}: no such folder; create it or choose another output path")
    if not os.access(parent, os.W_OK):
        raise RepalignError(f"{parent}: folder is not writable; choose another output path")
    if stem.is_dir():
        raise RepalignError(f"{stem} is a folder; give a file stem inside it, e.g. {stem / 'figure'}")
    return stem


def save_figure(fig, stem: str | os.PathLike, formats: str | Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write ``fig`` as STEM.png (300 dpi), STEM.pdf (TrueType fonts embedded) and/or STEM.svg
    (text as editable <text>). Each file is written to a temporary name and renamed, all
    checks come first: a failure leaves no partial figure."""
    formats = check_formats(formats)
    stem = check_stem(stem)
    done: list[tuple[str, Path]] = []
    try:
        with style(), _quiet_font_subsetting():
            for fmt in formats:
                fd, tmp = tempfile.mkstemp(prefix=f".{stem.name}.", suffix=f".{fmt}", dir=stem.parent)
                os.close(fd)
                done.append((tmp, stem.parent / f"{stem.name}.{fmt}"))
                fig.savefig(tmp, format=fmt, dpi=PNG_DPI, metadata=_metadata(fmt))
        mode = 0o666 & ~_umask()  # mkstemp files are private; a figure gets the usual permissions
        for tmp, final in done:
            os.chmod(tmp, mode)
            os.replace(tmp, final)
    finally:
        for tmp, _ in done:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return [final for _, final in done]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _quiet_font_subsetting():
    """fontTools logs every subsetting step at INFO while the PDF embeds fonts; keep the CLI output readable."""
    import logging

    logger = logging.getLogger("fontTools")
    previous = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _metadata(fmt: str) -> dict:
    # no creation date: the same table gives byte-identical PDF/SVG files
    if fmt == "pdf":
        return {"Creator": "repalign", "CreationDate": None}
    if fmt == "svg":
        return {"Creator": "repalign", "Date": None}
    return {"Software": "repalign"}


def draw(table: pd.DataFrame, kind: str = "layers", **options):
    """Dispatch to the figure function of ``kind`` ('layers', 'models', 'depth', 'size')."""
    functions = {"layers": layer_heatmap, "models": model_matrix, "depth": depth_profile, "size": size_scaling}
    if kind not in functions:
        raise RepalignError(f"figure kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    return functions[kind](table, **options)


def plot_table(
    table: pd.DataFrame,
    stem: str | os.PathLike,
    kind: str = "layers",
    formats: str | Sequence[str] = ("png", "pdf"),
    **options,
) -> list[Path]:
    """Draw one figure of ``kind`` from the table and save it (:func:`save_figure`); returns the paths.

    Output checks run before drawing, so bad input writes nothing.
    """
    formats = check_formats(formats)
    check_stem(stem)
    fig = draw(table, kind, **options)
    return save_figure(fig, stem, formats)


def save_layer_heatmap(table, stem, metric=None, model_a=None, model_b=None, formats=("png", "pdf")) -> list[Path]:
    """Layer heatmap of one pair saved as STEM.png and STEM.pdf (see :func:`layer_heatmap`)."""
    return plot_table(table, stem, "layers", formats, metric=metric, model_a=model_a, model_b=model_b)


def figure_options(
    kind: str,
    *,
    metric: str | None = None,
    a: str | None = None,
    b: str | None = None,
    layer_b: str | None = None,
    columns: int = 1,
    calibrated: bool = False,
    alpha: float = 0.05,
    order: str | None = None,
    layers: Mapping[str, str] | None = None,
    sizes: Mapping[str, str] | None = None,
) -> dict:
    """Keyword arguments of the figure function of ``kind`` from the ``repalign plot`` options.

    An option that the kind does not use is an error rather than silently ignored.
    """
    if kind not in KINDS:
        raise RepalignError(f"figure kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    _check_columns(columns)
    uses = {
        "layers": {"a", "b", "calibrated", "alpha"},
        "models": {"calibrated", "order", "layers"},
        "depth": {"a", "b", "layer_b", "alpha"},
        "size": {"b", "layer_b", "sizes"},
    }[kind]
    given = {"a": a, "b": b, "layer_b": layer_b, "calibrated": calibrated or None, "order": order,
             "layers": layers or None, "sizes": sizes or None}
    unused = [f"--{name.replace('_', '-')}" for name, v in given.items() if v is not None and name not in uses]
    if unused:
        verb = "does" if len(unused) == 1 else "do"
        raise RepalignError(f"{', '.join(unused)} {verb} not apply to --kind {kind}; see 'repalign plot --help'")
    opts: dict = {"metric": metric, "columns": columns}
    value = "calibrated" if calibrated else "score"
    if kind == "layers":
        opts.update(model_a=a, model_b=b, value=value, alpha=alpha)
    elif kind == "models":
        if order is None or order in ("cluster", "table"):
            opts["order"] = order or "cluster"
        else:
            opts["order"] = [m.strip() for m in order.split(",") if m.strip()]
        opts.update(layers=layers, value=value)
    elif kind == "depth":
        opts.update(model_b=b, layer_b=layer_b, alpha=alpha,
                    models=[m.strip() for m in a.split(",") if m.strip()] if a else None)
    else:
        opts.update(model_b=b, layer_b=layer_b, sizes=sizes)
    return opts
