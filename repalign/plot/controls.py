"""Trained versus random-initialised controls of one model pair: the trained layer x layer scores
beside the controls' mean at each layer pair, on one colour scale, with the headline contrast in the
title (a table of ``repalign compare --controls``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from repalign.errors import RepalignError
from repalign.plot.layers import (
    best_cell,
    best_contrast,
    best_text,
    check_alpha,
    contrast_text,
    finish_layout,
    layer_panel,
    significance_note,
    trained_rows,
)
from repalign.plot.style import (
    colour_bar,
    colour_scale,
    figure_width,
    metric_label,
    metric_settings,
    new_figure,
    reference_note,
    set_caption,
    set_title,
    style,
)
from repalign.table import best_flags, check_table, metric_rows, pair_matrix, select_pair, significance_column

SIDE_BY_SIDE_IN = 4.0  # from this width the two panels sit side by side, below it one above the other


def control_rows(table: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """The per-pair contrast rows (``level`` contrast, not the best row) of the pair and metric of
    the trained ``rows``, with their ``control_mean``; a one-line error when the table has none."""
    if "level" not in table.columns or "control_mean" not in table.columns:
        raise RepalignError("the table has no controls (level / control_mean columns); draw a table of "
                            "repalign.compare.compare_controls, or use kind='layers'")
    ma, mb, metric = rows["model_a"].iloc[0], rows["model_b"].iloc[0], rows["metric"].iloc[0]
    flags = best_flags(table)
    best = flags if flags is not None else np.zeros(len(table), dtype=bool)
    sub = table[(table["level"] == "contrast") & ~best & (table["metric"] == metric)]
    out = sub[(sub["model_a"] == ma) & (sub["model_b"] == mb)]
    if out.empty:
        raise RepalignError(f"the table has no contrast rows of {ma} vs {mb} ({metric}); compare the pair with repalign.compare.compare_controls")
    return out


def controls_heatmap(
    table: pd.DataFrame,
    metric: str | None = None,
    model_a: str | None = None,
    model_b: str | None = None,
    *,
    alpha: float = 0.05,
    width: str | float = "single",
    scale: str = "fixed",
):
    """The trained layer x layer scores of one model pair (left, or above at narrow widths) beside
    the mean of its random-initialised controls at each layer pair (``control_mean`` of the
    contrast rows), on one colour scale and one colour bar. The trained best pair of the layer
    family is boxed; the title states it with its score and the headline contrast (control mean
    of the seeds' best pairs, trained − control, rank-test p). Trained cells whose permutation
    p-value is >= ``alpha`` are hatched where permutations ran. Returns the Figure."""
    check_alpha(alpha)
    width_in = figure_width(width)
    table = check_table(table)
    rows = select_pair(trained_rows(table), metric, model_a, model_b)
    controls = control_rows(table, rows)
    scores, names_a, names_b = pair_matrix(rows, "score")
    means, ca, cb = pair_matrix(controls, "control_mean")
    if (ca, cb) != (names_a, names_b):
        raise RepalignError("the contrast rows do not hold the trained pair's layers; recompute the table with repalign.compare.compare_controls")
    i, j = best_cell(rows, scores, names_a, names_b)
    both = np.concatenate([scores.ravel(), means.ravel()])
    cscale = colour_scale(metric_rows(rows, None), "score", both, scale)
    ma, mb = rows["model_a"].iloc[0], rows["model_b"].iloc[0]
    contrast = best_contrast(table, str(rows["metric"].iloc[0]), ma, mb)
    beside = width_in >= SIDE_BY_SIDE_IN
    panel_h = min(max(2.0, 1.3 + 0.045 * len(names_a)), 4.5)
    with style():
        fig, _ = new_figure(width, panel_h + 0.9 if beside else 2 * panel_h + 1.0)
        fig.clear()
        axes = fig.subplots(1, 2, sharey=True) if beside else fig.subplots(2, 1, sharex=True)
        sig = significance_column(rows)
        image, brackets, hatched = layer_panel(axes[0], rows, scores, names_a, names_b, cscale, sig, alpha, (i, j))
        _, more, _ = layer_panel(axes[1], controls, means, names_a, names_b, cscale, None, alpha, None)
        # the shared axis is labelled once: B's layers under the lower panel, or A's left of the left one
        if beside:
            axes[1].set_ylabel("")
            axes[1].tick_params(labelleft=False)
            more = _keep_brackets(more, "x")
        else:
            axes[0].set_xlabel("")
            axes[0].tick_params(labelbottom=False)
            brackets = _keep_brackets(brackets, "y")
        n_seeds = _seeds(controls)
        axes[0].set_title("trained")
        axes[1].set_title(f"controls: mean of {n_seeds} seeds" if n_seeds else "controls: mean")
        colour_bar(fig, list(axes), image, metric_label(rows), rows, "score", cscale, both,
                   panel_h * 72 if beside else 0.8 * width_in * 72, shrink=0.8, location="right" if beside else "bottom")
        lines = [f"{ma} vs {mb}", best_text(rows, "score", f"{names_a[i]} ~ {names_b[j]}", scores[i, j])]
        if contrast is not None:
            lines.append(contrast_text(contrast))
        set_title(fig, axes[0], True, lines, cscale, width_in)
        set_caption(fig, _caption(rows, sig, alpha, hatched, cscale, n_seeds))
        finish_layout(fig, brackets + more, True)
    return fig


def _keep_brackets(brackets: list, which: str) -> list:
    """The brackets on axis ``which``; the others (and their stage labels) are hidden."""
    for b in brackets:
        if b.which != which:
            for artist in [*b.lines, *b.labels]:
                artist.set_visible(False)
    return [b for b in brackets if b.which == which]


def _seeds(controls: pd.DataFrame) -> int:
    values = pd.to_numeric(controls["n_seeds"], errors="coerce").dropna() if "n_seeds" in controls.columns else pd.Series([])
    return int(values.iloc[0]) if len(values) else 0


def _caption(rows, sig, alpha, hatched, cscale, n_seeds) -> list[str]:
    lines = [metric_settings(rows), "left (top): the trained networks; right (bottom): the mean score of "
             f"{n_seeds or 'the'} random-initialised networks of the same architectures (one per seed) at each layer pair, "
             "on the same colour scale", "boxed: the trained best pair of the layer family",
             "title: the trained best pair against each seed's best pair of the same family (control mean, "
             "trained minus control mean, rank-test p with its smallest attainable value 1/(seeds + 1); Holm p, when "
             "shown: p adjusted over the metrics compared together)",
             cscale.describe()]
    note = reference_note(rows, "score")
    if note:
        lines.append(f"line on the colour bar: {note}")
    if hatched:
        lines.append(significance_note(rows, sig, alpha, "hatched (trained)"))
    return lines
