"""Layer x layer heatmap of one model pair: stage brackets outside the tick labels, thinned ticks,
the best pair boxed, non-significant cells hatched, a fixed colour scale."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, cast

import numpy as np
import pandas as pd
from matplotlib.patches import PathPatch, Rectangle
from matplotlib.path import Path as MplPath
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, Locator
from matplotlib.transforms import ScaledTranslation, blended_transform_factory

from repalign.errors import RepalignError
from repalign.plot.style import (
    LINE_PT,
    MARKER_COLOR,
    NOT_SIGNIFICANT_COLOR,
    colour_bar,
    colour_scale,
    figure_renderer,
    figure_width,
    heatmap_image,
    metric_label,
    metric_settings,
    new_figure,
    p_floor,
    p_text,
    reference_note,
    set_caption,
    set_title,
    style,
    text_size,
    value_column,
)
from repalign.table import best_flags, family_flags, has_values, metric_rows, numbers, pair_matrix, select_pair, significance_column

#: rows of a controls table (``compare --controls``) that are not the trained comparison itself
CONTROL_LEVELS = ("random_init", "contrast")


def trained_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the trained comparisons: a controls table's ``random_init`` and ``contrast`` rows
    left out (any other table is returned as it is)."""
    if "level" not in table.columns:
        return table
    return table[~table["level"].isin(CONTROL_LEVELS)]


def comparison_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows that hold one comparison's cells: a controls table's ``contrast`` rows (the trained
    pair's cells again, with control statistics) left out; a control pair (A@random:s vs B@random:s)
    can still be drawn by naming it."""
    if "level" not in table.columns:
        return table
    return table[table["level"] != "contrast"]


def best_contrast(table: pd.DataFrame, metric: str, model_a: str, model_b: str) -> pd.Series | None:
    """The headline contrast row of a controls table (``level`` contrast, ``best`` True) of one
    metric and model pair, either way round; None when the table has none."""
    if "level" not in table.columns or "best" not in table.columns:
        return None
    rows = table[(table["level"] == "contrast") & (table["metric"] == metric)]
    rows = rows[((rows["model_a"] == model_a) & (rows["model_b"] == model_b))
                | ((rows["model_a"] == model_b) & (rows["model_b"] == model_a))]
    flags = best_flags(rows)
    if flags is None or not flags.any():
        return None
    return rows[flags].iloc[0]

#: readable names of ESMFold2 stages (the prefix of a layer name before its first '.')
STAGE_LABELS = {
    "esmc": "ESMC",
    "input_embedder": "input emb.",
    "language_model": "LM",
    "msa_encoder": "MSA enc.",
    "lm_encoder": "LM encoder",
    "folding_trunk": "trunk",
    "parcae": "parcae",
    "distogram": "distogram",
    "diffusion": "diffusion",
    "confidence": "confidence",
}
TICK_STEPS = (1, 2, 5, 10, 20, 25, 50, 100, 200, 500, 1000)
LABEL_SPACING = 1.3  # tick labels at least 1.3 line heights apart along an axis
GAP_PT = 2.0  # between neighbouring group labels


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


def tick_labels(names: Sequence[str], groups: Sequence[LayerGroup]) -> list[str]:
    """Tick text of each layer: with two or more stage groups the bracket names the stage, so a tick
    shows the rest of the name ('folding_trunk.12' -> '12'; a layer named only by its stage, such as
    'parcae', gets no tick text); with one group the full name."""
    if len(groups) < 2:
        return [str(n) for n in names]
    return [str(n).split(".", 1)[1] if "." in str(n) else "" for n in names]


def tick_positions(groups: Sequence[LayerGroup], n: int, length_pt: float, line_pt: float) -> list[int]:
    """Layers that get a tick on an axis ``length_pt`` long: every step-th layer of each stage group
    (step from 1, 2, 5, 10, 20, ...), counted from the group's first layer, and no two ticks closer
    than ``LABEL_SPACING`` text lines."""
    if n == 0:
        return []
    cell = length_pt / n
    spacing = LABEL_SPACING * line_pt / cell if cell > 0 else n  # in cells
    step = next((s for s in TICK_STEPS if s >= spacing), math.ceil(spacing))
    ticks: list[int] = []
    for g in groups or [LayerGroup("", "", 0, n)]:
        for i in range(g.start, g.stop, step):
            if not ticks or i - ticks[-1] >= spacing:
                ticks.append(i)
    return ticks


class LayerLocator(Locator):
    """Tick positions chosen at draw time from the axis' real length (:func:`tick_positions`)."""

    def __init__(self, groups: Sequence[LayerGroup], n: int, which: str):
        self.groups, self.n, self.which = list(groups), n, which

    def __call__(self):
        ax = self.axis.axes
        box = ax.get_window_extent()
        length_pt = (box.height if self.which == "y" else box.width) * 72 / ax.figure.dpi
        # a PDF reader boxes each label a full line high (LINE_PT), across the axis on x (upright labels) and y
        return tick_positions(self.groups, self.n, length_pt, LINE_PT / LABEL_SPACING * 1.05)


def spread(centres: Sequence[float], sizes: Sequence[float], low: float, high: float, gap: float = GAP_PT) -> list[float]:
    """Positions as close as possible (least squares) to ``centres`` such that intervals of ``sizes``
    around them do not overlap (``gap`` apart) and stay in [low, high] where they fit.

    Pool-adjacent-violators on blocks of touching labels; ``centres`` must be increasing.
    """
    blocks: list[list] = []  # [first index, last index, start of block]
    offsets = []  # centre of label i relative to its block's start
    for i, (c, s) in enumerate(zip(centres, sizes)):
        offsets.append(s / 2)
        blocks.append([i, i, c - s / 2])
        while len(blocks) > 1:
            a, b = blocks[-2], blocks[-1]
            a_end = a[2] + sum(sizes[a[0]:a[1] + 1]) + gap * (a[1] - a[0])
            if a_end + gap <= b[2] + 1e-9:
                break
            first, last = a[0], b[1]
            pos = 0.0
            for k in range(first, last + 1):  # offsets within the merged block
                offsets[k] = pos + sizes[k] / 2
                pos += sizes[k] + gap
            start = float(np.mean([centres[k] - offsets[k] for k in range(first, last + 1)]))
            blocks[-2:] = [[first, last, start]]
    out = [0.0] * len(centres)
    for first, last, start in blocks:
        length = sum(sizes[first:last + 1]) + gap * (last - first)
        start = min(max(start, low), max(low, high - length))
        for k in range(first, last + 1):
            out[k] = start + offsets[k]
    # blocks moved by the clamp may now overlap their neighbour: one more pass from each end
    for k in range(1, len(out)):
        out[k] = max(out[k], out[k - 1] + (sizes[k - 1] + sizes[k]) / 2 + gap)
    for k in range(len(out) - 2, -1, -1):
        if out[k + 1] > high:
            break
        out[k] = min(out[k], out[k + 1] - (sizes[k] + sizes[k + 1]) / 2 - gap)
    return out


class _Brackets:
    """Stage brackets and their labels on one axis, outside the tick labels; labels are spread
    along the axis once the layout is known (:meth:`place`)."""

    def __init__(self, ax, groups: list[LayerGroup], which: str, offset_pt: float):
        self.ax, self.groups, self.which = ax, groups, which
        fig = ax.figure
        if which == "y":
            base = blended_transform_factory(ax.transAxes, ax.transData)
            shift = ScaledTranslation(-offset_pt / 72, 0, fig.dpi_scale_trans)
        else:
            base = blended_transform_factory(ax.transData, ax.transAxes)
            shift = ScaledTranslation(0, -offset_pt / 72, fig.dpi_scale_trans)
        self.transform = base + shift
        self.offset_pt = offset_pt
        self.lines, self.labels = [], []
        self.rotated = False
        for g in groups:
            centre = (g.start + g.stop - 1) / 2
            if which == "y":
                (line,) = ax.plot([0, 0], [g.start - 0.5, g.stop - 0.5], transform=self.transform, clip_on=False,
                                  color="black", linewidth=0.6, solid_capstyle="butt", gid=f"stage-bracket-y-{g.start}")
                label = ax.annotate(g.label, xy=(0, centre), xycoords=self.transform, xytext=(-2, 0),
                                    textcoords="offset points", ha="right", va="center", annotation_clip=False,
                                    gid=f"stage-label-y-{g.start}",
                                    arrowprops=dict(arrowstyle="-", linewidth=0.4, shrinkA=0, shrinkB=0))
            else:
                (line,) = ax.plot([g.start - 0.5, g.stop - 0.5], [0, 0], transform=self.transform, clip_on=False,
                                  color="black", linewidth=0.6, solid_capstyle="butt", gid=f"stage-bracket-x-{g.start}")
                label = ax.annotate(g.label, xy=(centre, 0), xycoords=self.transform, xytext=(0, -2),
                                    textcoords="offset points", ha="center", va="top", annotation_clip=False,
                                    gid=f"stage-label-x-{g.start}",
                                    arrowprops=dict(arrowstyle="-", linewidth=0.4, shrinkA=0, shrinkB=0))
            self.lines.append(line)
            self.labels.append(label)

    def _length_pt(self) -> float:
        box = self.ax.get_window_extent()
        return (box.height if self.which == "y" else box.width) * 72 / self.ax.figure.dpi

    def needs_rotation(self) -> bool:
        """x labels side by side do not fit the axis: turn them upright (needs a new layout)."""
        if self.which != "x" or self.rotated:
            return False
        widths = [text_size(g.label)[0] for g in self.groups]
        if sum(widths) + GAP_PT * len(widths) <= self._length_pt():
            return False
        for label in self.labels:
            label.set_rotation(90)
            label.set_horizontalalignment("center")
        self.rotated = True
        return True

    def make_room(self) -> None:
        """Move the axis label outside the brackets and their labels (labelpad counts from the tick labels)."""
        widths = [text_size(g.label)[0] for g in self.groups]
        if self.which == "y" or self.rotated:
            across = max(widths)
        else:
            across = text_size("Ag")[1]
        # from the tick labels: the gap to the bracket, the label's offset (6 pt when moved), the label, a gap
        (self.ax.yaxis if self.which == "y" else self.ax.xaxis).labelpad = 2 + 6 + across + 2

    def place(self) -> None:
        """Spread the labels along the axis (no overlap), draw leader lines to moved ones, and leave
        a small gap between neighbouring brackets."""
        n = self.groups[-1].stop
        length = self._length_pt()
        cell = length / n
        fig = self.ax.figure
        renderer = figure_renderer(fig)
        to_pt = 72 / fig.dpi
        # the drawn extents along the axis, padding and descent included
        boxes = [Text.get_window_extent(label, renderer) for label in self.labels]  # without the leader line
        sizes = [(b.height if self.which == "y" else b.width) * to_pt for b in boxes]
        line_h = max(sizes) if self.which == "y" or self.rotated else text_size("Ag")[1]
        # positions measured from the first layer's edge along the axis, in points
        centres = [((g.start + g.stop) / 2) * cell for g in self.groups]
        margin = 0.5 * line_h
        spots = spread(centres, sizes, -margin, length + margin)
        gap = min(0.2, 0.8 / cell) if cell > 0 else 0.2  # in cells: about 0.8 pt between brackets
        for g, line, label, centre, spot in zip(self.groups, self.lines, self.labels, centres, spots):
            lo, hi = g.start - 0.5 + gap / 2, g.stop - 0.5 - gap / 2
            moved = spot - centre
            if self.which == "y":
                line.set_ydata([lo, hi])
                # rows grow downwards on screen: a label moved to larger rows goes down
                label.set_position((-6 if abs(moved) > 0.5 else -2, -moved))
            else:
                line.set_xdata([lo, hi])
                label.set_position((moved, -6 if abs(moved) > 0.5 else -2))
            label.arrow_patch.set_visible(abs(moved) > 0.5)


def _draw_axis(ax, names: Sequence[str], which: str) -> _Brackets | None:
    groups = layer_groups(names)
    texts = tick_labels(names, groups)
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_major_locator(LayerLocator(groups, len(names), which))
    axis.set_major_formatter(FuncFormatter(lambda v, pos: texts[int(round(v))] if 0 <= round(v) < len(texts) else ""))
    if which == "x":
        ax.tick_params(axis="x", labelrotation=90)
    if len(groups) < 2:
        return None
    for g in groups[1:]:
        if which == "x":
            ax.axvline(g.start - 0.5, color="white", linewidth=0.8, zorder=2, gid=f"stage-separator-x-{g.start}")
        else:
            ax.axhline(g.start - 0.5, color="white", linewidth=0.8, zorder=2, gid=f"stage-separator-y-{g.start}")
    # outside the tick labels: tick length, label pad, the widest label (x labels are upright), a gap
    widest = max((text_size(t)[0] for t in texts), default=0.0)
    return _Brackets(ax, groups, which, 2 + 1.5 + widest + 2)


def finish_layout(fig, brackets: Sequence[_Brackets], own_figure: bool) -> None:
    """Run the layout, spread bracket labels where the axes ended up, and keep that layout."""
    if not brackets:
        return
    engine = fig.get_layout_engine()
    if engine is not None and own_figure:
        # a label moved along the axis by place() may end a pixel past the extent the layout reserved
        engine.set(w_pad=0.06, h_pad=0.06)
    for b in brackets:
        b.make_room()
    fig.draw_without_rendering()
    if any([b.needs_rotation() for b in brackets]):
        for b in brackets:
            b.make_room()
        fig.draw_without_rendering()
    for b in brackets:
        b.place()
    if own_figure:
        # labels moved past the axis ends can change the layout once more: place them again for the
        # final axes, then keep that layout
        fig.draw_without_rendering()
        for b in brackets:
            b.place()
        fig.set_layout_engine("none")


def _cells_path(cells: np.ndarray):
    """One Path made of the unit squares centred on the (row, column) cells of an image."""
    square = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5]])
    vertices = (cells[:, None, ::-1].astype(float) + square[None]).reshape(-1, 2)
    codes = np.tile([MplPath.MOVETO, MplPath.LINETO, MplPath.LINETO, MplPath.LINETO, MplPath.CLOSEPOLY], len(cells))
    return MplPath(vertices, codes)


def hatched_cells(fig) -> list[tuple[int, int]]:
    """(row, column) of the cells a :func:`layer_heatmap` figure hatches as not significant."""
    ax = fig.axes[0]
    out: list[tuple[int, int]] = []
    for patch in ax.patches:
        if patch.get_gid() == "not-significant":
            corners = patch.get_path().vertices[::5]
            out.extend((int(round(y + 0.5)), int(round(x + 0.5))) for x, y in corners)
    return sorted(out)


def best_cell(rows: pd.DataFrame, values: np.ndarray, names_a: list[str], names_b: list[str]) -> tuple[int, int]:
    """The best layer pair: the row flagged in the ``best`` column when the table has one, else the
    argmax of ``values`` (for a model against itself, off the diagonal: a layer with itself is 1)."""
    flags = best_flags(rows)
    if flags is not None:
        row = rows[flags].iloc[0]
        return names_a.index(row["layer_a"]), names_b.index(row["layer_b"])
    search = values.astype(float)
    model_a, model_b = rows["model_a"].iloc[0], rows["model_b"].iloc[0]
    if model_a == model_b:
        same = np.equal.outer(np.asarray(names_a, dtype=object), np.asarray(names_b, dtype=object))
        if not same.all():
            search[same] = np.nan
        if np.isnan(search).all():
            raise RepalignError(f"every score of {model_a} against itself off the diagonal is missing (NaN); "
                                "nothing to draw: recompute the table or check the stored layers")
    return cast("tuple[int, int]", np.unravel_index(np.nanargmax(search), search.shape))  # numpy integers, used as indices


def layer_heatmap(
    table: pd.DataFrame,
    metric: str | None = None,
    model_a: str | None = None,
    model_b: str | None = None,
    *,
    value: str = "score",
    alpha: float = 0.05,
    width: str | float = "single",
    scale: str = "fixed",
    ax=None,
):
    """Layer x layer heatmap of one model pair: model A's layers on rows, B's on columns.

    ``value`` is 'score' or 'calibrated' (needs the calibrated column). Colours use a fixed
    0-1 scale (:func:`repalign.plot.style.colour_scale`; ``scale='data'`` for this panel's range)
    with the chance level or the null means marked on the colour bar. The best pair (the ``best``
    column, else the argmax) is boxed; cells with ``p_value_adjusted`` (else ``p_value``) >= ``alpha``
    are hatched grey (not significant). Stage groups are bracketed once per axis, outside the
    tick labels; tick labels are thinned to what the axis length holds at 7 pt. ``width``:
    'single', 'double' or points. Returns the matplotlib Figure.
    """
    check_alpha(alpha)
    width_in = figure_width(width)
    rows = select_pair(comparison_rows(table), metric, model_a, model_b)
    column = value_column(rows, value)
    scores, names_a, names_b = pair_matrix(rows, column)
    if np.isnan(scores).all():
        raise RepalignError("every score of this pair is missing (NaN); nothing to draw")
    ma, mb = rows["model_a"].iloc[0], rows["model_b"].iloc[0]
    i, j = best_cell(rows, scores, names_a, names_b)
    cscale = colour_scale(metric_rows(rows, None), column, scores, scale)

    with style():
        height = min(max(2.6, 1.9 + 0.045 * len(names_a)), 6.0)
        own = ax is None
        fig, ax = new_figure(width, height, ax)
        sig = significance_column(rows)
        image, brackets, hatched = layer_panel(ax, rows, scores, names_a, names_b, cscale, sig, alpha, (i, j))
        colour_bar(fig, ax, image, metric_label(rows, column), rows, column, cscale, scores, height * 72)
        contrast = best_contrast(table, str(rows["metric"].iloc[0]), ma, mb) if column == "score" else None
        lines = [f"{ma} vs {mb}", best_text(rows, column, f"{names_a[i]} ~ {names_b[j]}", scores[i, j])]
        if contrast is not None:
            lines.append(contrast_text(contrast))
        if hatched:
            lines.append(f"hatched: {'adjusted ' if sig == 'p_value_adjusted' else ''}p \u2265 {alpha:g}")
        set_title(fig, ax, own, lines, cscale, width_in)
        set_caption(fig, _heatmap_caption(rows, column, sig, alpha, hatched, cscale, contrast))
        finish_layout(fig, brackets, own)
    return fig


def layer_panel(ax, rows: pd.DataFrame, scores: np.ndarray, names_a: list[str], names_b: list[str], cscale,
                sig: str | None, alpha: float, box: tuple[int, int] | None):
    """One layer x layer panel on ``ax``: the image, axis labels, stage brackets, cells whose ``sig``
    p-value is >= alpha hatched, the ``box`` cell framed. Returns (image, brackets, hatched count)."""
    image = heatmap_image(ax, scores, cscale, aspect="auto")
    ax.set_ylabel(f"{rows['model_a'].iloc[0]} layer")
    ax.set_xlabel(f"{rows['model_b'].iloc[0]} layer")
    brackets = [b for b in (_draw_axis(ax, names_a, "y"), _draw_axis(ax, names_b, "x")) if b is not None]
    hatched = _hatch_not_significant(ax, rows, sig, alpha)
    _dot_outside_family(ax, rows)
    if box is not None:
        ax.add_patch(Rectangle((box[1] - 0.5, box[0] - 0.5), 1, 1, fill=False, edgecolor=MARKER_COLOR, linewidth=1.2,
                               zorder=3, gid="best-pair"))
    return image, brackets, hatched


def check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise RepalignError(f"alpha must be in (0, 1), got {alpha!r}")
    return float(alpha)


def significance_note(rows: pd.DataFrame, sig: str | None, alpha: float, marks: str) -> str:
    """'hatched: permutation p adjusted (max-T) over the layer pairs ≥ 0.05': what the marks mean and which test."""
    if sig is None:
        return ""
    test = "permutation p adjusted (max-T) over the layer pairs" if sig == "p_value_adjusted" else "permutation p"
    return f"{marks}: {test} \u2265 {alpha:g}"


def _heatmap_caption(rows, column, sig, alpha, hatched, cscale, contrast) -> list[str]:
    lines = [metric_settings(rows), "boxed: the best layer pair" + (" of the layer family (hidden layers unless "
             "compared with --layer-family all)" if best_flags(rows) is not None else " (largest score)")]
    note = reference_note(rows, column)
    if note:
        lines.append(f"line on the colour bar: {note}")
    lines.append(cscale.describe())
    if hatched:
        lines.append(significance_note(rows, sig, alpha, "hatched"))
    if outside_family(rows).any():
        lines.append("dotted: outside the layer family (an input layer, or a layer with itself): not searched for the "
                     "best pair, no adjusted p")
    if contrast is not None:
        lines.append("control: random-initialised networks of the same architectures, one per seed; p: rank of the "
                     "trained best-pair score among the seeds' best-pair scores; Holm p (when shown): p adjusted "
                     "over the metrics compared together")
    return lines


def contrast_text(row: pd.Series) -> str:
    """'control mean 0.410 (5 seeds), contrast +0.400, p ≤ 0.17' from a best contrast row, then
    ', Holm p = 0.33' when the headline's p adjusted over the metrics compared together is larger."""
    def value(name):
        v = pd.to_numeric(pd.Series([row.get(name)]), errors="coerce").iloc[0]
        return float(v) if pd.notna(v) else float("nan")

    n = value("n_seeds")
    text = f"control mean {value('control_mean'):.3f}"
    if np.isfinite(n):
        text += f" ({int(n)} seeds)"
    text += f", contrast {value('difference'):+.3f}"
    p, floor = value("p_value"), value("min_p_value")
    if np.isfinite(p):
        text += ", " + p_text(p, floor if np.isfinite(floor) else None)
    adjusted = value("p_value_adjusted")
    if np.isfinite(adjusted) and np.isfinite(p) and adjusted > p * (1 + 1e-9):
        text += ", " + p_text(adjusted, None, "Holm p")
    return text


def _hatch_not_significant(ax, rows: pd.DataFrame, sig: str | None, alpha: float) -> int:
    """Hatch the cells whose p-value (column ``sig``) is >= ``alpha``; returns how many."""
    if sig is None:
        return 0
    p, _, _ = pair_matrix(rows, sig)
    cells = np.argwhere(p >= alpha)
    if len(cells):
        # one compound path for all cells: thousands of separate hatched patches take minutes to draw
        ax.add_patch(PathPatch(_cells_path(cells), facecolor=NOT_SIGNIFICANT_COLOR, alpha=0.6, hatch="////",
                               edgecolor="white", linewidth=0, zorder=1.5, gid="not-significant"))
    return len(cells)


def outside_family(rows: pd.DataFrame) -> np.ndarray:
    """(La, Lb) mask of the cells outside the table's layer family (``in_family`` False: an input
    layer, a layer with itself); all False for a table without the column."""
    flags = family_flags(rows)
    if flags is None:
        return np.zeros(pair_matrix(rows)[0].shape, dtype=bool)
    inside, known = flags
    outside, _, _ = pair_matrix(rows.assign(_outside=(known & ~inside).astype(float)), "_outside")
    return outside == 1


def _dot_outside_family(ax, rows: pd.DataFrame) -> int:
    """Dot the cells outside the layer family: they were neither searched for the best pair nor
    adjusted, so no hatching can mark them not significant. Returns how many."""
    cells = np.argwhere(outside_family(rows))
    if len(cells):
        ax.add_patch(PathPatch(_cells_path(cells), facecolor="none", hatch="..", edgecolor=NOT_SIGNIFICANT_COLOR,
                               linewidth=0, zorder=1.6, gid="outside-family"))
    return len(cells)


def best_text(rows: pd.DataFrame, column: str, pair: str, score: float) -> str:
    """'best A ~ B = 0.812 (chance 0.1), p(best) ≤ 0.005' for the title: p(best) adjusted for the
    layer search, written 'p ≤ 1/(T + 1)' at the smallest value T permutations can give."""
    best = f"best {pair} = {score:.3f}"
    note = reference_note(rows, column)
    if note:
        best += f" ({note})"
    if has_values(rows, "p_value_best"):
        p_best = numbers(rows, "p_value_best")
        best += ", " + p_text(float(p_best[np.isfinite(p_best)][0]), p_floor(rows), "p(best)")  # kept on one line
    return best
