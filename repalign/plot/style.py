"""Publication style: journal widths, fonts of at least 7 pt, text measuring and wrapping, colour scales."""

from __future__ import annotations

import contextlib
import functools
import re
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Rectangle

from repalign.errors import RepalignError
from repalign.metrics import get_metric
from repalign.table import has_values, numbers, reference_level

#: Journal column widths in inches. single fits Nature (89 mm), Cell (85 mm), PNAS (8.7 cm) columns;
#: onehalf is 120 mm (Nature's 1.5 column, 120-136 mm; Cell's is 114 mm, Elsevier's 140 mm); double
#: fits Cell (174 mm), Nature (183 mm), PNAS (17.8 cm); science-1/-2/-3 are Science's 1, 2 and 3
#: column widths (5.7, 12.1, 18.4 cm).
WIDTHS_IN = {"single": 3.3, "onehalf": 120 / 25.4, "double": 6.85,
             "science-1": 5.7 / 2.54, "science-2": 12.1 / 2.54, "science-3": 18.4 / 2.54}
MIN_WIDTH_IN, MAX_WIDTH_IN = 2.2, 10.0
FONT_PT = 7  # the smallest text of every figure: journals ask for 5-7 pt at print size
#: the height of a line of FONT_PT text as PDF readers box a word (DejaVu Sans ascent + descent: 1.164 em)
LINE_PT = 1.17 * FONT_PT
PNG_DPI = 300

# Okabe & Ito (2008) colour-blind-safe palette, for lines and markers
CB_COLORS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
SEQUENTIAL_CMAP = "cividis"
MARKER_COLOR = "#D55E00"  # vermillion: visible on every cividis shade
NOT_SIGNIFICANT_COLOR = "#9a9a9a"

STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": FONT_PT,
    "axes.titlesize": FONT_PT,
    "axes.labelsize": FONT_PT,
    "xtick.labelsize": FONT_PT,
    "ytick.labelsize": FONT_PT,
    "legend.fontsize": FONT_PT,
    "figure.titlesize": FONT_PT,
    "axes.linewidth": 0.5,
    "lines.linewidth": 1.0,
    "lines.markersize": 3,
    "xtick.major.width": 0.5,
    "ytick.major.width": 0.5,
    "xtick.major.size": 2,
    "ytick.major.size": 2,
    "xtick.major.pad": 1.5,
    "ytick.major.pad": 1.5,
    "axes.titlepad": 4,
    "axes.labelpad": 2,
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
    "savefig.bbox": None,  # exactly the chosen width; the layout keeps every label inside
    "figure.constrained_layout.h_pad": 0.03,
    "figure.constrained_layout.w_pad": 0.03,
}


@contextlib.contextmanager
def style():
    """The publication style as a matplotlib rc context (fonts embeddable, CB-safe colours)."""
    with matplotlib.rc_context(STYLE):
        yield


_UNITS_IN = {"in": 1.0, "pt": 1 / 72, "mm": 1 / 25.4, "cm": 1 / 2.54}
_WIDTH = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(in|pt|mm|cm)?\s*$", re.IGNORECASE)


def figure_width(width: str | float | int = "single") -> float:
    """Width in inches of a preset (:data:`WIDTHS_IN`: 'single' 3.3 in, 'onehalf' 120 mm, 'double'
    6.85 in, 'science-1' / 'science-2' / 'science-3' 5.7 / 12.1 / 18.4 cm) or of a number of points
    (``246`` or ``'246pt'``; ``'85mm'``, ``'8.5cm'`` and ``'3.3in'`` work too)."""
    if isinstance(width, str) and width.strip().lower() in WIDTHS_IN:
        return WIDTHS_IN[width.strip().lower()]
    if isinstance(width, bool):
        value = None
    elif isinstance(width, (int, float)):
        value = float(width) / 72
    else:
        m = _WIDTH.match(str(width))
        value = float(m.group(1)) * _UNITS_IN[(m.group(2) or "pt").lower()] if m else None
    if value is None:
        raise RepalignError(f"width {width!r} is not a preset ({', '.join(WIDTHS_IN)}) or a number of points "
                            "such as 246 (or 85mm)")
    if not MIN_WIDTH_IN <= value <= MAX_WIDTH_IN:
        raise RepalignError(f"width {width!r} is {value:.2f} in; give {MIN_WIDTH_IN:g} to {MAX_WIDTH_IN:g} in "
                            f"({MIN_WIDTH_IN * 72:.0f} to {MAX_WIDTH_IN * 72:.0f} pt) so that {FONT_PT} pt text fits")
    return value


def new_figure(width, height_in: float, ax=None):
    """A bare Figure (no pyplot state, no GUI backend) of the given width and height, constrained layout."""
    width_in = figure_width(width)
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)  # a renderer for measuring text during the layout
    return fig, fig.subplots()


def figure_renderer(fig):
    """The renderer that draws ``fig`` (for measuring its texts)."""
    canvas = fig.canvas
    return canvas.get_renderer() if hasattr(canvas, "get_renderer") else fig._get_renderer()


# ---- text -----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _renderer():
    return RendererAgg(10, 10, 72)  # 72 dpi: one pixel is one point


@functools.lru_cache(maxsize=4096)
def text_size(text: str, size: float = FONT_PT) -> tuple[float, float]:
    """(width, height) in points of one line of ``text`` in the figure font at ``size`` pt."""
    if not text:
        return 0.0, 0.0
    prop = FontProperties(family=STYLE["font.family"], size=size)
    w, h, _ = _renderer().get_text_width_height_descent(text, prop, ismath=False)
    return float(w), float(h)


def wrap(text: str, width_pt: float, size: float = FONT_PT) -> str:
    """Greedy line breaks at spaces so that every line of ``text`` is at most ``width_pt`` wide
    (a single word longer than that stays whole); existing line breaks are kept."""
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}" if line else word
            if line and text_size(trial, size)[0] > width_pt:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return "\n".join(lines)


def metric_label(rows, value: str = "score") -> str:
    """The metric and its k, for axis and colour-bar labels: 'mutual_knn (k=4)', 'unbiased_cka';
    prefixed 'calibrated' for calibrated scores. The other settings go in the caption
    (:func:`metric_settings`)."""
    metric, params = rows["metric"].iloc[0], rows["params"].iloc[0] if "params" in rows.columns else ""
    k = [p for p in str(params or "").split(",") if p.strip().startswith("k=")] if isinstance(params, str) else []
    label = f"{metric} ({k[0].strip()})" if k else str(metric)
    return f"calibrated {label}" if value == "calibrated" else label


def metric_settings(rows) -> str:
    """'mutual_knn: k=4, normalize=l2': the metric with every stored setting, for captions and metadata."""
    metric = rows["metric"].iloc[0]
    params = rows["params"].iloc[0] if "params" in rows.columns else ""
    params = params if isinstance(params, str) else ""
    return f"{metric}: {params.replace(',', ', ')}" if params else str(metric)


def set_caption(fig, lines) -> str:
    """Store the figure's caption (what its marks mean, the metric's settings, the test behind them):
    :func:`caption` reads it, and :func:`repalign.plot.save_figure` writes it into the files' metadata."""
    text = " ".join(line.strip().rstrip(".") + "." for line in lines if line and line.strip())
    setattr(fig, "repalign_caption", text)
    return text


def caption(fig) -> str:
    """The caption a figure function stored (:func:`set_caption`); '' when none."""
    return str(getattr(fig, "repalign_caption", ""))


def value_column(rows, value: str) -> str:
    if value not in ("score", "calibrated"):
        raise RepalignError(f"value {value!r} is not 'score' or 'calibrated'")
    if value == "calibrated" and not has_values(rows, "calibrated"):
        raise RepalignError("the table has no calibrated scores; compare with permutations=N, or draw value='score'")
    return value


# ---- colour scales ------------------------------------------------------------------------------------

SCALES = ("fixed", "data")


@dataclass(frozen=True)
class ColourScale:
    """vmin/vmax of the colours; ``kind``: 'fixed' (the metric's range, the same in every figure),
    'table' (an unregistered metric: the range of all its rows in the table) or 'data' (this panel)."""

    vmin: float
    vmax: float
    kind: str

    def extend(self, values: np.ndarray) -> str:
        """Colour bar ends for values outside the scale (drawn with the end colours)."""
        low = bool(np.nanmin(values) < self.vmin - 1e-12) if np.isfinite(values).any() else False
        high = bool(np.nanmax(values) > self.vmax + 1e-12) if np.isfinite(values).any() else False
        return {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[(low, high)]

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"colour scale fixed at {self.vmin:g}-{self.vmax:g}"
        if self.kind == "table":
            return f"colour scale {self.vmin:.3g}-{self.vmax:.3g}: every score of this metric in the table"
        return f"colour scale: this panel's range {self.vmin:.3g}-{self.vmax:.3g}, not comparable across panels"


def colour_scale(metric_rows, column: str, panel: np.ndarray, scale: str = "fixed") -> ColourScale:
    """The colour scale of one panel.

    'fixed' (default): 0-1 for every registered metric and for calibrated scores, so a colour
    means the same number in every panel and every figure (all registered metrics have maximum 1;
    unbiased estimators can fall below 0 by chance, drawn with the lowest colour); an
    unregistered metric gets the range of all its rows in ``metric_rows``. 'data': this panel's
    own range.
    """
    if scale not in SCALES:
        raise RepalignError(f"scale {scale!r} is not 'fixed' or 'data'")
    finite = panel[np.isfinite(panel)]
    if scale == "data":
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        return ColourScale(lo, hi if hi > lo else lo + 1e-9, "data")
    if column == "calibrated":
        return ColourScale(0.0, 1.0, "fixed")
    try:
        get_metric(str(metric_rows["metric"].iloc[0]))
        return ColourScale(0.0, 1.0, "fixed")
    except RepalignError:
        values = numbers(metric_rows, column)
        values = values[np.isfinite(values)]
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        return ColourScale(lo, hi if hi > lo else lo + 1e-9, "table")


def reference_note(rows, column: str = "score") -> str:
    """'chance 0.133' or 'null mean 0.41-0.47' for the caption of biased scores; '' for calibrated."""
    if column == "calibrated":
        return ""
    ref = reference_level(rows)
    if ref is None:
        return ""
    what, low, high = ref
    return f"{what} {low:.3g}" if np.isclose(low, high, atol=5e-4) else f"{what} {low:.3g}-{high:.3g}"


def colour_bar(fig, ax, image, label: str, rows, column: str, scale: ColourScale, values: np.ndarray,
               length_pt: float, shrink: float = 0.85, location: str = "right"):
    """A colour bar right of ``ax`` (or below it: ``location='bottom'``, for narrow figures) with
    the label wrapped to the bar's length, and the chance level (a line) or the range of null means
    (a band and a line at its middle) marked on it."""
    bar = fig.colorbar(image, ax=ax, shrink=shrink, pad=0.02, aspect=25, extend=scale.extend(values), location=location)
    bar.outline.set_linewidth(0.5)
    bar.ax.tick_params(labelsize=FONT_PT)
    bar.set_label(wrap(label, 0.95 * shrink * length_pt))
    if scale.kind == "fixed" and location == "right":
        bar.set_ticks([0, 0.25, 0.5, 0.75, 1.0], labels=["0", "0.25", "0.5", "0.75", "1"])
    elif scale.kind == "fixed":
        bar.set_ticks([0, 0.5, 1.0], labels=["0", "0.5", "1"])
    ref = reference_level(rows) if column != "calibrated" else None
    if ref is not None:
        what, low, high = ref
        lo, hi = max(low, scale.vmin), min(high, scale.vmax)
        across = bar.ax.axhline if location == "right" else bar.ax.axvline
        if lo <= hi:
            if hi - lo > 0.002 * (scale.vmax - scale.vmin):
                band = ((0, lo), 1, hi - lo) if location == "right" else ((lo, 0), hi - lo, 1)
                bar.ax.add_patch(Rectangle(*band, transform=bar.ax.get_yaxis_transform() if location == "right"
                                           else bar.ax.get_xaxis_transform(),
                                           facecolor="white", alpha=0.5, edgecolor="none", gid="reference-band"))
            across((lo + hi) / 2, color="white", linewidth=1.6, gid="reference-halo")
            across((lo + hi) / 2, color="black", linewidth=0.8, gid=f"reference-{what.replace(' ', '-')}")
    return bar


# ---- shared by the figures ------------------------------------------------------------------------------


def heatmap_image(ax, values: np.ndarray, scale: ColourScale, aspect: str = "equal"):
    """``values`` as an image of square or stretched (``aspect='auto'``) cells in the sequential
    colours of ``scale``, framed on all four sides."""
    image = ax.imshow(values, cmap=SEQUENTIAL_CMAP, aspect=aspect, interpolation="nearest",
                      vmin=scale.vmin, vmax=scale.vmax)
    for side in ("top", "right"):
        ax.spines[side].set_visible(True)
    return image


def set_title(fig, ax, own: bool, lines: list[str], scale: ColourScale, width_in: float) -> None:
    """The title lines, plus the colour scale's description when it is not the fixed one, wrapped to
    the figure's width: above the figure when it is the figure's own axes, else above ``ax``."""
    if scale.kind != "fixed":
        lines = [*lines, scale.describe()]
    title = wrap("\n".join(lines), 0.92 * width_in * 72)  # text_size rounds to whole points: a margin
    if own:
        fig.suptitle(title)
    else:
        ax.set_title(title)


# ---- p-values as drawn --------------------------------------------------------------------------------

P_COLUMNS = ("p_value", "p_value_adjusted", "p_value_best")


def p_floor(rows, columns=P_COLUMNS) -> float | None:
    """The smallest p-value the test behind ``rows`` can give: the ``min_p_value`` column where the
    table has one (seed contrasts: 1/(n_seeds + 1)), else 1/(T + 1) for T permutations, read off
    the p-values themselves: every permutation p-value is a multiple of 1/(T + 1), and the smallest
    M = round(c / p_min) (c = 1, 2, ...) of which every p-value of ``columns`` is a multiple (to
    1e-4, the rounding of a CSV) gives T + 1 = M. None without p-values or when no M fits. With few
    distinct p-values M may be too small (all p = 2/200 gives M = 100), but the bound written from
    it is never below the p-value, so 'p ≤ bound' stays true.
    A p-value reported as 'p ≤ floor' is true whichever M is found, as every p is at least its floor."""
    if "min_p_value" in rows.columns and has_values(rows, "min_p_value"):
        return float(np.nanmin(numbers(rows, "min_p_value")))
    values = np.concatenate([numbers(rows, c) for c in columns if c in rows.columns] or [np.array([])])
    values = np.unique(values[np.isfinite(values) & (values > 0)])
    if not values.size:
        return None
    for c in range(1, 21):
        m = round(c / values[0])
        if m < 2:
            continue
        scaled = values * m
        if np.all(np.abs(scaled - np.round(scaled)) <= 1e-4 * scaled + 1e-9):
            return 1.0 / m
    return None


def _round_up(x: float) -> str:
    """``x`` with two significant digits, rounded up (so that 'p ≤ text' stays true)."""
    text = f"{x:.2g}"
    if float(text) < x:
        exponent = int(np.floor(np.log10(x))) - 1
        text = f"{np.ceil(x / 10.0 ** exponent) * 10.0 ** exponent:.2g}"
    return text


def p_text(p: float, floor: float | None, name: str = "p") -> str:
    """'p = 0.032', or 'p ≤ 0.005' for a p-value at the smallest its test can give (``floor``)."""
    if floor is not None and p <= floor * (1 + 1e-4):
        return f"{name}\u00a0\u2264\u00a0{_round_up(floor)}"
    return f"{name}\u00a0=\u00a0{p:.2g}"


def line_height(width) -> float:
    """Height in inches of a line plot: 2.6 at single-column widths, 3.0 wider."""
    return 2.6 if figure_width(width) < 5 else 3.0


def legend_below(fig, ax, own: bool, handles, labels, width_in: float, handlelength: float = 1.5) -> None:
    """The legend in as many columns as fit the width: under the axes of a figure of its own, inside
    the axes drawn into."""
    widest = max(text_size(t)[0] for t in labels) + 30  # handle, padding and column gap, points
    ncols = max(1, min(len(labels), int(0.95 * width_in * 72 // widest)))
    if own:
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols, handlelength=handlelength, columnspacing=1.0)
    else:
        ax.legend(handles, labels, ncols=ncols, handlelength=handlelength, columnspacing=1.0)
