"""Saving figures (PNG 300 dpi, PDF with TrueType fonts, SVG with text as text) and the dispatch
behind ``repalign plot``."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from repalign.errors import RepalignError
from repalign.plot.layers import layer_heatmap
from repalign.plot.models import model_matrix
from repalign.plot.profiles import depth_profile, size_scaling
from repalign.plot.style import PNG_DPI, SCALES, figure_width, style
from repalign.table import atomic_files

FORMATS = ("png", "pdf", "svg")
KINDS = ("layers", "models", "depth", "size")


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
    (text as editable <text>). All checks come first and every file is written under a temporary
    name and renamed (:func:`repalign.table.atomic_files`): a failure leaves no partial figure."""
    formats = check_formats(formats)
    stem = check_stem(stem)
    finals = [stem.parent / f"{stem.name}.{fmt}" for fmt in formats]
    with atomic_files(finals) as temps, style(), _quiet_font_subsetting():
        for fmt, tmp in zip(formats, temps):
            fig.savefig(tmp, format=fmt, dpi=PNG_DPI, metadata=_metadata(fmt))
    return finals


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
    """Keyword arguments of the figure function of ``kind`` from the ``repalign plot`` options.

    An option that the kind does not use is an error rather than silently ignored.
    """
    if kind not in KINDS:
        raise RepalignError(f"figure kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    figure_width(width)
    if scale not in SCALES:
        raise RepalignError(f"scale {scale!r} is not 'fixed' or 'data'")
    uses = {
        "layers": {"a", "b", "calibrated", "alpha"},
        "models": {"calibrated", "order", "layers", "alpha"},
        "depth": {"a", "b", "layer_b", "alpha"},
        "size": {"b", "layer_b", "sizes"},
    }[kind]
    given = {"a": a, "b": b, "layer_b": layer_b, "calibrated": calibrated or None, "order": order,
             "layers": layers or None, "sizes": sizes or None}
    unused = [f"--{name.replace('_', '-')}" for name, v in given.items() if v is not None and name not in uses]
    if unused:
        verb = "does" if len(unused) == 1 else "do"
        raise RepalignError(f"{', '.join(unused)} {verb} not apply to --kind {kind}; see 'repalign plot --help'")
    opts: dict = {"metric": metric, "width": width, "scale": scale}
    value = "calibrated" if calibrated else "score"
    if kind == "layers":
        opts.update(model_a=a, model_b=b, value=value, alpha=alpha)
    elif kind == "models":
        if order is None or order in ("cluster", "table"):
            opts["order"] = order or "cluster"
        else:
            opts["order"] = [m.strip() for m in order.split(",") if m.strip()]
        opts.update(layers=layers, value=value, alpha=alpha)
    elif kind == "depth":
        opts.update(model_b=b, layer_b=layer_b, alpha=alpha,
                    models=[m.strip() for m in a.split(",") if m.strip()] if a else None)
    else:
        opts.update(model_b=b, layer_b=layer_b, sizes=sizes)
    return opts
