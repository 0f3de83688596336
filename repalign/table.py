"""Tidy score tables: reading them safely, selecting rows, pair matrices, and writing files atomically.

A score table has one row per (model_a, layer_a, model_b, layer_b, metric, params) with a
``score`` and, after ``--permutations``/``--ci``, statistics columns (chance_level, null_mean,
p_value, p_value_adjusted, calibrated, ci_low, ci_high, best, p_value_best, note). Figures and
reports read tables through this module only, so a table from disk, from ``compare_models`` or
built by hand behaves the same.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from embeddings_cache.atomic import atomic_files  # re-exported: tables, figures and reports write through it
from repalign.errors import RepalignError

REQUIRED_COLUMNS = ("model_a", "layer_a", "model_b", "layer_b", "metric", "score")
#: the ``granularity`` column: what a row of the compared layers is; tables without it hold pooled layers
POOLED = "pooled"
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
#: the table path meaning standard input (read_table) or standard output (write_table), always CSV
STDIO = "-"


# ---- files --------------------------------------------------------------------------------------


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a .csv, .tsv or .parquet score table, or a CSV table from standard input when ``path`` is
    ``-``; anything unreadable is one RepalignError naming the file."""
    if str(path) == STDIO:
        return read_stdin_table()
    path = Path(path)
    if path.is_dir():
        raise RepalignError(f"{path} is a folder; give a .csv, .tsv or .parquet table written by 'repalign compare -o'")
    if not path.is_file():
        raise RepalignError(f"{path}: no such table; give a .csv, .tsv or .parquet written by 'repalign compare -o'")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise RepalignError(f"{path}: unknown table format {path.suffix!r}; use a .csv, .tsv or .parquet file")
    if path.stat().st_size == 0:
        raise RepalignError(f"{path} is an empty file; give a table written by 'repalign compare -o'")
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        with open(path, "rb") as fh:
            head = fh.read(4096)
        if b"\0" in head:
            raise RepalignError(f"{path} is a binary file, not a {suffix[1:].upper()} table; give the table "
                                "written by 'repalign compare -o'")
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", float_precision="round_trip")
    except RepalignError:
        raise
    except ImportError:
        raise RepalignError("reading .parquet needs pyarrow: pip install 'repalign[parquet]', or use a .csv table") from None
    except (ValueError, OSError, UnicodeError, pd.errors.ParserError) as exc:
        # pyarrow's and pandas' errors differ by version; the first line of either names the fault
        kind = "Parquet" if suffix == ".parquet" else suffix[1:].upper()
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RepalignError(f"{path} is not a readable {kind} table ({detail}); give the table written by "
                            "'repalign compare -o'") from None


def read_stdin_table(stream=None) -> pd.DataFrame:
    """A CSV table from standard input (``repalign compare ... -o - | repalign plot - ...``)."""
    stream = sys.stdin if stream is None else stream
    if stream is None or stream.isatty():
        raise RepalignError("table '-' reads standard input, which is a terminal; pipe a table in, e.g. "
                            "'repalign compare CACHE --a A --b B -o - | repalign plot - -o heatmap'")
    data = stream.buffer.read() if hasattr(stream, "buffer") else stream.read()
    text = data.decode("utf-8-sig", errors="replace") if isinstance(data, bytes) else data
    if not text.strip():
        raise RepalignError("standard input is empty; pipe a CSV table into '-', e.g. from 'repalign compare ... -o -'")
    if "\0" in text[:4096]:
        raise RepalignError("standard input is binary, not a CSV table; pipe the CSV written by 'repalign compare -o -'")
    try:
        return pd.read_csv(io.StringIO(text), float_precision="round_trip")
    except (ValueError, pd.errors.ParserError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RepalignError(f"standard input is not a readable CSV table ({detail}); pipe the table written by "
                            "'repalign compare -o -'") from None


def check_table_path(path: str | os.PathLike) -> Path:
    """An output table path that can be written: known suffix, existing folder, not a folder itself
    (checked before any computation); ``-`` is standard output (CSV)."""
    if str(path) == STDIO:
        return Path(STDIO)
    path = Path(path)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise RepalignError(f"{path}: unknown table format {path.suffix!r}; use a .csv, .tsv or .parquet file name")
    if path.is_dir():
        raise RepalignError(f"{path} is a folder; give a file name for the table, e.g. {path / 'scores.csv'}")
    if not path.parent.is_dir():
        raise RepalignError(f"{path.parent}: no such folder; create it or choose another output path")
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise RepalignError("writing .parquet needs pyarrow: pip install 'repalign[parquet]', or write .csv") from None
    return path


def write_table(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a tidy table atomically (a temporary file renamed into place), so no partial table is left;
    ``-`` writes CSV to standard output."""
    path = check_table_path(path)
    if str(path) == STDIO:
        table.to_csv(sys.stdout, index=False)
        sys.stdout.flush()
        return path
    with atomic_files([path]) as (tmp,):
        if path.suffix.lower() == ".parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    return path


#: the settings a table was made with, written beside it as ``<table>.settings.json`` (``compare -o``,
#: the demo, ``report``): ``repalign report TABLE`` renders the table with them
SETTINGS_SUFFIX = ".settings.json"


def settings_path(path: str | os.PathLike) -> Path:
    """Where the settings of the table at ``path`` are kept: ``scores.csv`` -> ``scores.csv.settings.json``."""
    path = Path(path)
    return path.with_name(path.name + SETTINGS_SUFFIX)


def write_settings(path: str | os.PathLike, settings: dict) -> Path:
    """Write ``settings`` (JSON-able) beside the table at ``path``, atomically; returns the settings file."""
    target = settings_path(path)
    text = json.dumps(settings, indent=1, sort_keys=True, default=str) + "\n"
    with atomic_files([target]) as (tmp,):
        tmp.write_text(text, encoding="utf-8")
    return target


def read_settings(path: str | os.PathLike) -> dict:
    """The settings written beside the table at ``path``; {} when there are none (a table from elsewhere)."""
    if str(path) == STDIO:
        return {}
    target = settings_path(path)
    if not target.is_file():
        return {}
    try:
        settings = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RepalignError(f"{target} is not readable JSON ({str(exc).splitlines()[0]}); move it away to render "
                            "the table without its settings") from None
    if not isinstance(settings, dict):
        raise RepalignError(f"{target} does not hold a JSON object; move it away to render the table without its settings")
    return settings


# ---- validation and selection ---------------------------------------------------------------------


def check_table(table: pd.DataFrame) -> pd.DataFrame:
    """A validated copy: required columns present, at least one row, numeric scores, text names."""
    if not isinstance(table, pd.DataFrame):
        raise RepalignError(f"expected a pandas DataFrame score table, got {type(table).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise RepalignError(f"the score table lacks columns {missing}; give a table written by 'repalign compare -o'")
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
    if "granularity" in out.columns:  # token-level rows (compare --tokens) beside pooled ones
        out["granularity"] = [POOLED if pd.isna(v) or v == "" else str(v) for v in out["granularity"]]
    if "params" in out.columns:
        # a CSV with no parameters reads back as a float column of NaN
        out["params"] = ["" if pd.isna(v) else str(v) for v in out["params"]]
    else:
        out["params"] = ""
    return out


def has_values(rows: pd.DataFrame, column: str) -> bool:
    """Whether ``column`` exists and holds at least one number."""
    return column in rows.columns and pd.to_numeric(rows[column], errors="coerce").notna().any()


def numbers(rows: pd.DataFrame, column: str) -> np.ndarray:
    """``column`` as float64 (non-numbers become NaN)."""
    return pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=float)


def resolve_metric(table: pd.DataFrame, metric: str | None = None) -> str:
    """The table's metric named ``metric`` (an alias such as 'mknn' is accepted); default: the first."""
    stored = list(dict.fromkeys(table["metric"]))
    if metric is None:
        return stored[0]
    if metric in stored:
        return metric
    from repalign.metrics import get_metric  # lazy: numba and the metrics load only for a chance level

    try:
        canonical = get_metric(metric).name
    except RepalignError:
        canonical = None
    if canonical is not None and canonical in stored:
        return canonical
    raise RepalignError(f"metric {metric!r} is not in the table; it holds: {', '.join(stored)}; pass one as metric=NAME")


def granularities(table: pd.DataFrame) -> list[str]:
    """The table's levels in order of first appearance: ``pooled`` (rows are samples), ``token``
    (rows are residues or atoms, from ``repalign compare --tokens``)."""
    if "granularity" not in table.columns:
        return [POOLED]
    return list(dict.fromkeys(POOLED if pd.isna(v) or v == "" else str(v) for v in table["granularity"]))


def granularity_rows(table: pd.DataFrame, level: str | None = None) -> pd.DataFrame:
    """Rows of one level (``pooled`` or ``token``); None: all rows."""
    if level is None:
        return table
    if level not in granularities(table):
        raise RepalignError(f"the table has no {level} rows; it holds: {', '.join(granularities(table))}")
    if "granularity" not in table.columns:
        return table
    values = table["granularity"].map(lambda v: POOLED if pd.isna(v) or v == "" else str(v))
    return table[values == level]


def n_samples_rows(table: pd.DataFrame, n_samples: int | None = None) -> pd.DataFrame:
    """Rows scored on ``n_samples`` samples (a table may hold pairs at several N, so several chance
    levels); None: all rows."""
    if n_samples is None:
        return table
    held = sorted({int(n) for n in pd.to_numeric(table.get("n_samples", pd.Series(dtype=float)), errors="coerce").dropna()})
    if n_samples not in held:
        raise RepalignError(f"the table has no rows at n_samples={n_samples}; it holds "
                            + (", ".join(map(str, held)) if held else "no n_samples column"))
    return table[pd.to_numeric(table["n_samples"], errors="coerce") == n_samples]


def metric_rows(table: pd.DataFrame, metric: str | None = None, level: str | None = None) -> pd.DataFrame:
    """Rows of one metric and one parameter setting (the first stored, when several), of one level
    when ``level`` is given (a token-level setting differs from a pooled one in params anyway)."""
    table = granularity_rows(table, level)
    metric = resolve_metric(table, metric)
    sub = table[table["metric"] == metric]
    return sub[sub["params"] == sub["params"].iloc[0]]


def swap_sides(rows: pd.DataFrame) -> pd.DataFrame:
    """The same rows seen from the other side: A and B exchanged. A metric that is not symmetric in
    A and B (``Metric.swapped``, e.g. imbalance_similarity_a_to_b) is relabelled as its counterpart,
    so every row stays true."""
    out = rows.rename(columns={"model_a": "model_b", "model_b": "model_a", "layer_a": "layer_b", "layer_b": "layer_a"})
    if "metric" in out.columns and len(out):
        out = out.assign(metric=out["metric"].map(_swapped_names(out["metric"].unique())))
    return out


def is_symmetric(metric: str) -> bool:
    """Whether ``metric``'s score of (A, B) is its score of (B, A) (False for the imbalance pair)."""
    return _swapped_names([metric])[metric] == metric


def _swapped_names(names) -> dict:
    """name -> the metric whose score for (B, A) is this one's for (A, B); itself when symmetric or unknown."""
    from repalign.metrics import get_metric  # lazy: numba and the metrics load only when sides are exchanged
    out = {}
    for name in names:
        try:
            out[name] = get_metric(name).swapped or name
        except RepalignError:
            out[name] = name
    return out


def models_of(rows: pd.DataFrame) -> list[str]:
    """Model names in order of first appearance (as A or B)."""
    return list(dict.fromkeys(list(rows["model_a"]) + list(rows["model_b"])))


def select_pair(table: pd.DataFrame, metric=None, model_a=None, model_b=None) -> pd.DataFrame:
    """Rows of one model pair and metric (one parameter setting), model A's layers first.

    Defaults: the table's first metric and first pair. A pair stored as (B, A) is returned
    exchanged, so model A is always the rows of :func:`pair_matrix`.
    """
    table = check_table(table)
    # every parameter setting of the metric: pairs may differ in them (k chosen for each pair's N);
    # the pair's own first setting is taken below
    metric_name = resolve_metric(table, metric)
    sub = table[table["metric"] == metric_name]
    models = models_of(sub)
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
    if rows.empty:  # stored as (B, A): under the metric whose (B, A) score is this one's (A, B) score
        mirror = table[table["metric"] == _swapped_names([metric_name])[metric_name]]
        rows = swap_sides(mirror[(mirror["model_a"] == model_b) & (mirror["model_b"] == model_a)])
    if rows.empty:
        raise RepalignError(f"the table has no rows comparing {model_a!r} with {model_b!r}; compare them first")
    return rows[rows["params"] == rows["params"].iloc[0]]


def pair_matrix(rows: pd.DataFrame, column: str = "score") -> tuple[np.ndarray, list[str], list[str]]:
    """The La x Lb matrix of ``column`` for one pair's rows, layers in stored (first-seen) order."""
    la = list(dict.fromkeys(rows["layer_a"]))
    lb = list(dict.fromkeys(rows["layer_b"]))
    ia = {n: i for i, n in enumerate(la)}
    ib = {n: j for j, n in enumerate(lb)}
    out = np.full((len(la), len(lb)), np.nan)
    for a, b, v in zip(rows["layer_a"], rows["layer_b"], numbers(rows, column)):
        out[ia[a], ib[b]] = v
    return out, la, lb


def significance_column(rows: pd.DataFrame) -> str | None:
    """The p-value column that decides significance: ``p_value_adjusted`` (max-T over the layer
    pairs) when it holds values, else the per-pair ``p_value``, else None."""
    for column in ("p_value_adjusted", "p_value"):
        if has_values(rows, column):
            return column
    return None


def best_flags(rows: pd.DataFrame) -> np.ndarray | None:
    """The ``best`` column as booleans (CSV gives text 'True'/'False'), or None when absent or all false."""
    if "best" not in rows.columns:
        return None
    values = rows["best"]
    if values.dtype != bool:
        values = values.map(lambda v: str(v).strip().lower() in ("true", "1", "1.0", "yes"))
    flags = values.to_numpy(dtype=bool)
    return flags if flags.any() else None


def family_flags(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """(in family, known) per row from the ``in_family`` column (CSV gives text; rows without a
    value, e.g. contrast rows, are unknown); None when the table does not carry it."""
    if "in_family" not in rows.columns:
        return None
    text = rows["in_family"].astype(str).str.strip().str.lower()
    inside = text.isin(("true", "1", "1.0")).to_numpy()
    known = inside | text.isin(("false", "0", "0.0")).to_numpy()
    return (inside, known) if known.any() else None


def _param_value(text: str):
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def chance_levels(rows: pd.DataFrame) -> np.ndarray:
    """Each row's chance level: the ``chance_level`` column where it holds a value, else the metric's
    closed form (:meth:`repalign.metrics.Metric.chance_level`) from the row's metric, params and
    n_samples; NaN where neither exists (e.g. biased CKA, which has no closed form)."""
    from repalign.metrics import get_metric  # lazy: numba and the metrics load only for a chance level

    given = numbers(rows, "chance_level") if "chance_level" in rows.columns else np.full(len(rows), np.nan)
    if np.isfinite(given).all() or "n_samples" not in rows.columns:
        return given
    out = given.copy()
    memo: dict = {}
    params = rows["params"] if "params" in rows.columns else pd.Series("", index=rows.index)
    for i, (name, text, n) in enumerate(zip(rows["metric"], params, numbers(rows, "n_samples"))):
        if np.isfinite(out[i]) or not np.isfinite(n):
            continue
        key = (name, text, n)
        if key not in memo:
            memo[key] = np.nan
            try:
                metric = get_metric(name)
                pairs = [p.split("=", 1) for p in ("" if pd.isna(text) else str(text)).split(",") if "=" in p]
                settable = {k: _param_value(v) for k, v in pairs if k in metric.params}
                level = metric.chance_level(int(n), **settable)
                memo[key] = np.nan if level is None else float(level)
            except (RepalignError, TypeError, ValueError):
                pass  # an unregistered metric or foreign parameters: no closed form here
        out[i] = memo[key]
    return out


def reference_level(rows: pd.DataFrame) -> tuple[str, float, float] | None:
    """What unrelated data would score, for reading a biased score: ('chance', level, level) from
    :func:`chance_levels` (the largest, when pairs differ in N), else ('null mean', low, high) over
    the ``null_mean`` column (permutation null), else None."""
    chance = chance_levels(rows)
    if np.isfinite(chance).any():
        level = float(np.nanmax(chance))
        return "chance", level, level
    if has_values(rows, "null_mean"):
        values = numbers(rows, "null_mean")
        return "null mean", float(np.nanmin(values)), float(np.nanmax(values))
    return None
