"""Progress bars of long steps, and the one rule deciding whether they show.

Library code wraps a long loop in :func:`progress` (``for batch in progress(batches, total=n,
desc="esm2-8m")``) or opens one with ``with progress(total=n, desc=...) as bar: bar.update(k)``;
this module alone decides whether the bar is drawn:

* by default (``None``) a bar shows only when standard error is a terminal: never in a pipe, a log
  file or a notebook (whose standard error is not a terminal);
* :func:`show_progress` (``True`` / ``False`` / ``None``) sets it for the process, and
  :func:`progress_setting` for a block; ``True`` draws bars wherever the output goes, as notebook
  widgets in a Jupyter kernel (``tqdm.auto``);
* the command line sets it from ``--progress`` / ``--no-progress`` and ``-q`` (quiet: never).

Bars are tqdm's (counts, rate, elapsed time and ETA) on standard error, so a table written to
standard output (``compare -o -``) is never mixed with them.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Any, Iterable, Iterator

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["bars_beside_logs", "progress", "progress_setting", "show_progress", "shows_bars"]

_setting: list[bool | None] = [None]  # None: on a terminal only


def show_progress(enabled: bool | None = True) -> None:
    """Draw progress bars always (``True``), never (``False``) or on a terminal only (``None``, the default)."""
    if enabled not in (True, False, None):
        raise TypeError(f"show_progress takes True, False or None, not {enabled!r}")
    _setting[0] = enabled


@contextlib.contextmanager
def progress_setting(enabled: bool | None) -> Iterator[None]:
    """:func:`show_progress` inside the block only; the earlier setting comes back after it."""
    before = _setting[0]
    show_progress(enabled)
    try:
        yield
    finally:
        _setting[0] = before


def shows_bars() -> bool:
    """Whether a bar started now would be drawn (the setting, else: is standard error a terminal)."""
    return _stderr_is_terminal() if _setting[0] is None else _setting[0]


def progress(iterable: Iterable | None = None, *, total: int | float | None = None, desc: str | None = None,
             unit: str = "it", leave: bool | None = None, quiet: bool = False, **options: Any) -> tqdm:
    """A tqdm bar over ``iterable`` (or one updated by hand), drawn on standard error when
    :func:`shows_bars` and not ``quiet``, otherwise a silent pass-through with the same methods.

    ``leave=None`` keeps a finished bar on screen unless it was nested in another open bar.
    """
    from tqdm import tqdm  # lazy: CLI start-up (about 0.1 s), paid only where a loop runs

    if quiet or not shows_bars():
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=True)
    bar_class: type[tqdm] = tqdm
    if _setting[0] is True and not _stderr_is_terminal():
        from tqdm import auto  # lazy: picks notebook widgets in a Jupyter kernel (imports IPython there)

        bar_class = auto.tqdm
    return bar_class(iterable, total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr, dynamic_ncols=True,
                     **options)


def _stderr_is_terminal() -> bool:
    try:  # a replaced or closed stream is no terminal
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def bars_beside_logs() -> Iterator[None]:
    """Log lines written to the terminal inside the block go above the open bars instead of through
    them (tqdm's logging_redirect_tqdm), when bars show; otherwise logging is left as it is."""
    if not shows_bars():
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm  # lazy: CLI start-up

    with logging_redirect_tqdm():
        yield
