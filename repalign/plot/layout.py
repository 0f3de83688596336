"""Layout checks of a drawn figure, from the extents its artists render to (and of a saved PDF, from
the word boxes poppler's ``pdftotext -bbox`` reads back): no two texts overlap, nothing lies outside
the canvas, no text under 7 pt, and the canvas is used (no blank margins or blank bands)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from repalign.errors import RepalignError
from repalign.plot.style import FONT_PT

#: the smallest share of the canvas a figure must use (see :func:`canvas_use`)
MIN_CANVAS_USE = 0.85
#: overlaps and overhangs smaller than this many points are not counted (anti-aliasing, rounding)
TOLERANCE_PT = 0.5


def _renderer(fig):
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def drawn_texts(fig) -> list[Text]:
    """Every visible, non-empty text the figure draws: tick labels outside the view limits exist but
    are not drawn, so they are left out."""
    hidden = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for minor in (False, True):
                for loc, label in zip(axis.get_ticklocs(minor=minor), axis.get_ticklabels(minor=minor)):
                    if not low - 1e-9 <= loc <= high + 1e-9:
                        hidden.add(id(label))
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in hidden
            and t.get_alpha() != 0 and t.figure is not None]


def _overlap(a: Bbox, b: Bbox, tol: float) -> bool:
    return min(a.x1, b.x1) - max(a.x0, b.x0) > tol and min(a.y1, b.y1) - max(a.y0, b.y0) > tol


def canvas_use(fig, renderer=None) -> float:
    """Share of the canvas used: the area of the bounding box of everything drawn, less the part of
    each fixed-aspect axes' layout slot that its aspect ratio leaves blank, over the canvas area.

    A blank margin and a square matrix centred in a wide slot both lower it; blank space that the
    content itself encloses (between tick labels, an empty triangle of a matrix) does not.
    """
    renderer = renderer or _renderer(fig)
    box = fig.get_tightbbox(renderer)  # inches
    fw, fh = fig.get_figwidth(), fig.get_figheight()
    x0, x1 = max(box.x0, 0.0), min(box.x1, fw)
    y0, y1 = max(box.y0, 0.0), min(box.y1, fh)
    used = max(x1 - x0, 0.0) * max(y1 - y0, 0.0)
    for ax in fig.axes:
        if ax.get_aspect() == "auto" or not ax.get_visible() or ax.get_label() == "<colorbar>":
            continue
        slot, active = ax.get_position(original=True), ax.get_position(original=False)
        used -= max(slot.width * slot.height - active.width * active.height, 0.0) * fw * fh
    return used / (fw * fh)


def layout_problems(fig, min_font_pt: float = FONT_PT, min_canvas_use: float = MIN_CANVAS_USE) -> list[str]:
    """What is wrong with the layout of ``fig``, one line each (empty: nothing), measured on the
    rendered extents: two texts overlapping, a text or axes outside the canvas, a text under
    ``min_font_pt``, and less than ``min_canvas_use`` of the canvas used (:func:`canvas_use`)."""
    renderer = _renderer(fig)
    width, height = fig.bbox.width, fig.bbox.height
    tol = TOLERANCE_PT * fig.dpi / 72
    problems = []
    texts = drawn_texts(fig)
    boxes = [(t, Text.get_window_extent(t, renderer)) for t in texts]  # the text alone, not a leader line
    for t, box in boxes:
        if box.x0 < -tol or box.y0 < -tol or box.x1 > width + tol or box.y1 > height + tol:
            problems.append(f"outside the canvas: {t.get_text()!r}")
        if float(t.get_fontsize()) < min_font_pt - 1e-6:
            problems.append(f"{t.get_fontsize():g} pt text (under {min_font_pt:g} pt): {t.get_text()!r}")
    for n, (ta, a) in enumerate(boxes):
        for tb, b in boxes[n + 1:]:
            if _overlap(a, b, tol):
                problems.append(f"texts overlap: {ta.get_text()!r} and {tb.get_text()!r}")
    for ax in fig.axes:
        box = ax.get_window_extent(renderer)
        if box.x0 < -tol or box.y0 < -tol or box.x1 > width + tol or box.y1 > height + tol:
            problems.append(f"axes {ax.get_label() or ''!r} outside the canvas")
    use = canvas_use(fig, renderer)
    if use < min_canvas_use:
        problems.append(f"only {use:.0%} of the canvas used (at least {min_canvas_use:.0%}): blank margins or bands")
    return problems


# ---- saved PDF files, read back by poppler ------------------------------------------------------------

_WORD = re.compile(r'<word xMin="([-\d.]+)" yMin="([-\d.]+)" xMax="([-\d.]+)" yMax="([-\d.]+)">(.*?)</word>')
_PAGE = re.compile(r'<page width="([\d.]+)" height="([\d.]+)">')


def pdf_words(path: str | os.PathLike) -> tuple[float, float, list[tuple[str, float, float, float, float]]]:
    """(page width, page height, [(word, x0, y0, x1, y1), ...]) in points, as ``pdftotext -bbox``
    (poppler) reads the first page of a PDF."""
    exe = shutil.which("pdftotext")
    if exe is None:
        raise RepalignError("pdftotext (poppler) is not installed; install poppler-utils to check PDF figures")
    out = subprocess.run([exe, "-bbox", "-l", "1", str(Path(path)), "-"], capture_output=True, text=True, check=False)
    page = _PAGE.search(out.stdout)
    if out.returncode != 0 or page is None:
        raise RepalignError(f"{path}: pdftotext could not read it ({out.stderr.strip() or 'no page'})")
    words = [(w, float(a), float(b), float(c), float(d)) for a, b, c, d, w in _WORD.findall(out.stdout)]
    return float(page.group(1)), float(page.group(2)), words


def pdf_layout_problems(path: str | os.PathLike, tolerance_pt: float = TOLERANCE_PT) -> list[str]:
    """Word boxes of a saved PDF (:func:`pdf_words`) that overlap one another or leave the page."""
    width, height, words = pdf_words(path)
    problems = []
    boxes = np.array([w[1:] for w in words], dtype=float).reshape(-1, 4)
    for n, (word, x0, y0, x1, y1) in enumerate(words):
        if x0 < -tolerance_pt or y0 < -tolerance_pt or x1 > width + tolerance_pt or y1 > height + tolerance_pt:
            problems.append(f"word outside the page: {word!r}")
        rest = boxes[n + 1:]
        dx = np.minimum(x1, rest[:, 2]) - np.maximum(x0, rest[:, 0])
        dy = np.minimum(y1, rest[:, 3]) - np.maximum(y0, rest[:, 1])
        for m in np.flatnonzero((dx > tolerance_pt) & (dy > tolerance_pt)):
            problems.append(f"words overlap: {word!r} and {words[n + 1 + m][0]!r}")
    return problems


def fit_height(fig, ax, aspect: float = 1.0, max_height_in: float = 6.0, min_height_in: float = 1.5,
               rounds: int = 4) -> None:
    """Change the figure's height until ``ax`` (drawn with ``aspect='auto'``, so it fills its layout
    slot and leaves no blank band) is ``aspect`` times as tall as wide: square cells for a matrix.
    The width stays the chosen one; the height stays in [min_height_in, max_height_in]."""
    for _ in range(rounds):
        fig.draw_without_rendering()
        box = ax.get_position()
        width_in, height_in = fig.get_figwidth(), fig.get_figheight()
        change = aspect * box.width * width_in - box.height * height_in
        new = min(max(height_in + change, min_height_in), max_height_in)
        if abs(new - height_in) < 0.01:
            return
        fig.set_figheight(new)
