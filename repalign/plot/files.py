"""Saving figures (PNG 300 dpi, PDF with TrueType fonts, SVG with text as text) and the dispatch
from a figure kind to its function (``repalign plot``)."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from repalign.errors import RepalignError
from repalign.plot.controls import controls_heatmap
from repalign.plot.curves import n_curve
from repalign.plot.layer_profile import layer_profile
from repalign.plot.layers import layer_heatmap
from repalign.plot.models import model_matrix
from repalign.plot.profiles import depth_profile, size_scaling
from repalign.plot.style import PNG_DPI, SCALES, caption, figure_width, style
from repalign.table import atomic_files

FORMATS = ("png", "pdf", "svg")
#: figure kind -> the function drawing it from a table: a new kind is one function and one entry here
FIGURES: dict[str, Callable[..., Any]] = {"layers": layer_heatmap, "models": model_matrix, "depth": depth_profile, "size": size_scaling,
                                          "n-curve": n_curve, "profile": layer_profile, "controls": controls_heatmap}
KINDS = tuple(FIGURES)

#: ``repalign plot`` flag (as :func:`figure_options` names it) -> the figure-function
#: parameters it may set, first match wins: a kind takes the flags whose parameter its function has
FLAG_PARAMETERS = {"metric": ("metric", "measure"), "a": ("model_a", "models"), "b": ("model_b",), "layer_b": ("layer_b",),
                   "calibrated": ("value",), "alpha": ("alpha",), "order": ("order",), "layers": ("layers",),
                   "sizes": ("sizes",), "width": ("width",), "scale": ("scale",)}


def figure_flags(kind: str) -> dict[str, str]:
    """The ``repalign plot`` flags that figure ``kind`` takes, each mapped to the parameter of its
    function (:data:`FIGURES`) it sets, read off the function's signature: a new kind needs no
    entry anywhere else. The report builds its commands from the same mapping."""
    if kind not in FIGURES:
        raise RepalignError(f"figure kind {kind!r} is unknown; use one of {', '.join(FIGURES)}")
    parameters = inspect.signature(FIGURES[kind]).parameters
    out = {}
    for flag, names in FLAG_PARAMETERS.items():
        name = next((n for n in names if n in parameters), None)
        if name is not None:
            out[flag] = name
    return out


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
        raise RepalignError("no figure format given; use formats='png,pdf,svg'")
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
    (text as editable <text>). All checks come first and every file is written under a temporary
    name and renamed (:func:`repalign.table.atomic_files`): a failure leaves no partial figure."""
    formats = check_formats(formats)
    stem = check_stem(stem)
    finals = [stem.parent / f"{stem.name}.{fmt}" for fmt in formats]
    with atomic_files(finals) as temps, style(), _quiet_font_subsetting():
        for fmt, tmp in zip(formats, temps):
            fig.savefig(tmp, format=fmt, dpi=PNG_DPI, metadata=_metadata(fmt, caption(fig)))
    return finals


@contextlib.contextmanager
def _quiet_font_subsetting():
    """fontTools logs every subsetting step at INFO while the PDF embeds fonts; keep the CLI output readable."""
    logger = logging.getLogger("fontTools")
    previous = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _metadata(fmt: str, text: str = "") -> dict:
    """The files' metadata: no creation date (the same table gives byte-identical PDF/SVG files), and
    the figure's caption (:func:`repalign.plot.style.caption`) as the PDF Subject / PNG and SVG Description."""
    if fmt == "pdf":
        meta: dict = {"Creator": "repalign", "CreationDate": None}
        key = "Subject"
    elif fmt == "svg":
        meta, key = {"Creator": "repalign", "Date": None}, "Description"
    else:
        meta, key = {"Software": "repalign"}, "Description"
    if text:
        meta[key] = text
    return meta


def draw(table: pd.DataFrame, kind: str = "layers", **options):
    """Dispatch to the figure function of ``kind`` ('layers', 'models', 'depth', 'size', 'n-curve', 'profile')."""
    if kind not in FIGURES:
        raise RepalignError(f"figure kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    return FIGURES[kind](table, **options)


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


def save_layer_heatmap(table, stem, metric=None, model_a=None, model_b=None, formats=("png", "pdf"),
                       **options) -> list[Path]:
    """Layer heatmap of one pair saved as STEM.png and STEM.pdf (see :func:`layer_heatmap`)."""
    return plot_table(table, stem, "layers", formats, metric=metric, model_a=model_a, model_b=model_b, **options)


def figure_options(
    kind: str,
    *,
    metric: str | None = None,
    a: str | None = None,
    b: str | None = None,
    layer_b: str | None = None,
    width: str | float = "single",
    scale: str = "fixed",
    calibrated: bool = False,
    alpha: float = 0.05,
    order: str | None = None,
    layers: Mapping[str, str] | None = None,
    sizes: Mapping[str, str] | None = None,
) -> dict:
    """Keyword arguments of the figure function of ``kind`` (:data:`repalign.plot.FIGURES`) from the
    ``repalign plot`` options.

    An option that the kind does not use is an error rather than silently ignored.
    """
    if kind not in FIGURES:
        raise RepalignError(f"figure kind {kind!r} is unknown; use one of {', '.join(FIGURES)}")
    figure_width(width)
    if scale not in SCALES:
        raise RepalignError(f"scale {scale!r} is not 'fixed' or 'data'")
    flags = figure_flags(kind)  # flag -> the figure function's parameter, from its signature
    given = {"a": a, "b": b, "layer_b": layer_b, "calibrated": calibrated or None, "order": order,
             "layers": layers or None, "sizes": sizes or None, "scale": None if scale == "fixed" else scale}
    unused = [f"--{name.replace('_', '-')}" for name, v in given.items() if v is not None and name not in flags]
    if unused:
        verb = "does" if len(unused) == 1 else "do"
        raise RepalignError(f"{', '.join(unused)} {verb} not apply to --kind {kind}; see 'repalign plot --help'")
    values = {"metric": metric, "width": width, "scale": scale, "alpha": alpha, "b": b, "layer_b": layer_b,
              "layers": layers, "sizes": sizes, "calibrated": "calibrated" if calibrated else "score",
              "a": [m.strip() for m in a.split(",") if m.strip()] if a and flags.get("a") == "models" else a,
              "order": order or "cluster" if order in (None, "cluster", "table")
              else [m.strip() for m in str(order).split(",") if m.strip()]}
    return {parameter: values[flag] for flag, parameter in flags.items()}
