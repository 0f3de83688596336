"""Publication figures drawn from tidy score tables alone (never from caches).

Every figure is a function of the table written by ``repalign compare -o`` (columns model_a,
layer_a, model_b, layer_b, metric, params, score, n_samples; optionally chance_level, null_mean,
p_value, p_value_adjusted, calibrated, ci_low, ci_high, best, in_family, p_value_best), so a figure can be
restyled without recomputing:

* :func:`layer_heatmap`: layer x layer scores of one model pair, stages bracketed, best pair boxed,
  non-significant cells hatched.
* :func:`model_matrix`: model x model matrix of the best layer pair (or chosen layers), ordered by
  hierarchical clustering.
* :func:`depth_profile`: score versus relative depth for several models against one reference.
* :func:`size_scaling`: score versus model size within model families.
* :func:`controls_heatmap`: trained layer x layer scores beside their random-init controls' mean
  (tables of ``compare --controls``), the headline contrast in the title.
* :func:`n_curve`: score versus the number of samples, one line per k (tables of ``compare --n-samples``).

Widths: journal presets (:data:`WIDTHS_IN`: single, onehalf, double, science-1/-2/-3) or a number of
points; every kind passes :func:`layout_problems` at every preset (no overlapping text, nothing off
the canvas, no text under 7 pt, the canvas used; :mod:`repalign.plot.layout`). Colours: one fixed 0-1 scale per metric, the same in every panel,
with the chance level or null mean marked (``scale='data'`` opts out). :func:`save_figure` writes
PNG (300 dpi), PDF (TrueType fonts embedded) and SVG (text kept as editable ``<text>``).
Modules: ``style`` (widths, fonts, colour scales), ``layers``, ``models``, ``profiles``, ``curves``, ``files``
(saving, and :data:`FIGURES`: figure kind -> function, for :func:`draw`). Tables are read and queried
through :mod:`repalign.table`; the ``repalign plot`` flags are mapped in :mod:`repalign.cli`.
Conventions and formulas: docs/figures.md.
"""

from repalign.plot.controls import controls_heatmap
from repalign.plot.curves import curve_scores, n_curve
from repalign.plot.files import (
    FIGURES,
    FLAG_PARAMETERS,
    FORMATS,
    KINDS,
    check_formats,
    check_stem,
    draw,
    figure_flags,
    figure_options,
    plot_table,
    save_figure,
    save_layer_heatmap,
)
from repalign.plot.layers import STAGE_LABELS, LayerGroup, best_cell, hatched_cells, layer_groups, layer_heatmap, tick_labels, tick_positions
from repalign.plot.layout import MIN_CANVAS_USE, canvas_use, layout_problems, pdf_layout_problems, pdf_words
from repalign.plot.models import best_rows, cluster_order, model_matrix, model_scores
from repalign.plot.profiles import depth_profile, depth_scores, parse_model_size, size_scaling, size_scores
from repalign.plot.style import (
    CB_COLORS,
    FONT_PT,
    PNG_DPI,
    SCALES,
    SEQUENTIAL_CMAP,
    WIDTHS_IN,
    ColourScale,
    caption,
    colour_scale,
    figure_width,
    p_floor,
    p_text,
    style,
    text_size,
    wrap,
)

__all__ = [
    "CB_COLORS", "FIGURES", "FONT_PT", "FORMATS", "SEQUENTIAL_CMAP", "KINDS", "PNG_DPI", "SCALES", "STAGE_LABELS", "WIDTHS_IN", "ColourScale", "LayerGroup",
    "best_cell", "best_rows", "check_formats", "check_stem", "cluster_order", "colour_scale",
    "depth_profile", "depth_scores", "draw", "figure_width", "hatched_cells", "layer_groups",
    "layer_heatmap", "model_matrix", "model_scores", "n_curve", "curve_scores", "parse_model_size", "plot_table",
    "save_figure", "save_layer_heatmap", "size_scaling", "size_scores", "style",
    "text_size", "tick_labels", "tick_positions", "wrap",
    "FLAG_PARAMETERS", "controls_heatmap", "figure_flags", "figure_options",
    "MIN_CANVAS_USE", "canvas_use", "caption", "layout_problems", "p_floor", "p_text", "pdf_layout_problems", "pdf_words",
]
