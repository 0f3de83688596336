"""A self-contained HTML report drawn from a score table: the Python side of ``repalign report``.

The page reads like a results section: the headline of each group of compared models first (the
best hidden layer pair of each trained comparison, with its random-initialised controls as
context: control mean, difference, rank-test p-value and its floor; :func:`repalign.compare.headline.headlines`),
then the figures (drawn through :data:`repalign.plot.FIGURES`; a matrix never mixes groups or
chance levels), then the details: every pair in a sortable table, the pairs left out, every score,
provenance and the commands that reproduce each part. A report is rendered from a table alone:
a table file (``.csv``/``.tsv``/``.parquet``, ``-`` for CSV on standard input) is rendered with the
settings written beside it (``<table>.settings.json``); a cache is first compared with the demo's
settings (:func:`repalign.compare.compare_cache`) and the page is rendered from that table.

The report folder holds ``index.html`` (figures embedded as SVG data URIs and a small inline
script that sorts tables: no external files, opens from disk with no network), ``scores.csv``
(the table every figure is drawn from), ``scores.csv.settings.json`` (its settings) and
``.repalign-report`` (the manifest: the files this report wrote and their SHA-256). A report only
ever replaces files its manifest lists, unchanged since; it refuses a folder holding anything
else unless ``force`` (then it writes beside those files and still never replaces one of them).
Files are written under temporary names and renamed, so a failed run leaves the old report.
Layout: docs/figures.md.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import numbers
import os
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from repalign import __version__, plot
from repalign.compare import StatsOptions, compare_cache
from repalign.compare.every_pair import DEFAULT_METRICS, DEFAULT_PERMUTATIONS
from repalign.compare.headline import headlines, row_levels
from repalign.errors import RepalignError
from repalign.metrics import get_metric
from repalign.models.controls import ALL_SCOPE, base_model, control_scope
from repalign.plot.models import model_groups
from repalign.table import (
    POOLED,
    STDIO,
    TABLE_SUFFIXES,
    atomic_files,
    best_flags,
    chance_levels,
    check_table,
    granularity_rows,
    read_settings,
    read_table,
    settings_path,
)

SCORES_FILE = "scores.csv"
SETTINGS_FILE = settings_path(SCORES_FILE).name
INDEX_FILE = "index.html"
MANIFEST_FILE = ".repalign-report"
REPORT_FILES = (SCORES_FILE, SETTINGS_FILE, INDEX_FILE)
ALPHA = 0.05
#: the figure kind of a trained pair against its random-init controls (drawn where repalign.plot has it)
CONTROLS_KIND = "controls"
#: the columns that tell a comparison's rows apart in a table (those the table has)
PAIR_KEYS = ("granularity", "level", "control_seed", "metric", "model_a", "model_b")


@dataclass
class ReportSource:
    """What a report is rendered from: the table, the settings it was made with, and its name."""

    table: pd.DataFrame
    settings: dict = field(default_factory=dict)
    name: str = "table"
    argv: list = field(default_factory=list)  # the report command's source and options
def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise RepalignError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(folder: Path) -> dict[str, list[str]]:
    """file name -> SHA-256 digests this report wrote under that name ({} without a readable manifest)."""
    try:
        data = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        files = data["files"]
        return {str(k): [str(d) for d in (v if isinstance(v, list) else [v])] for k, v in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def own_files(folder: str | os.PathLike) -> list[str]:
    """Names in ``folder`` that an earlier report wrote and nobody changed since (manifest digests match)."""
    folder = Path(folder)
    listed = _manifest(folder)
    return sorted(name for name, digests in listed.items()
                  if name in REPORT_FILES and (folder / name).is_file() and _sha256(folder / name) in digests)


def _check_output(output: str | os.PathLike, force: bool = False) -> Path:
    output = Path(os.path.abspath(output))  # '.' or 'a/..' get a real name
    parent = output.parent
    if not parent.is_dir():
        raise RepalignError(f"{parent}: no such folder; create it or choose another report folder")
    if output.exists() and not output.is_dir():
        raise RepalignError(f"{output} is a file; give a folder for the report")
    if not output.exists():
        if not os.access(parent, os.W_OK):
            raise RepalignError(f"{parent}: folder is not writable; choose another report folder")
        return output
    if not os.access(output, os.W_OK):
        raise RepalignError(f"{output}: folder is not writable; choose another report folder")
    ours = set(own_files(output))
    for name in REPORT_FILES:
        if (output / name).exists() and name not in ours:
            # never replaced, even with --force: it is someone else's file or was edited
            raise RepalignError(f"{output / name} was not written by 'repalign report' or was changed since; "
                                "move it away or choose another report folder")
    others = sorted(set(os.listdir(output)) - ours - {MANIFEST_FILE})
    if others and not force:
        shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
        raise RepalignError(f"{output} holds files the report did not write ({shown}); choose a new or empty "
                            "folder, or pass --force to write the report beside them")
    return output






# ---- the source: a table, or a cache compared first ---------------------------------------------------


def is_table_path(source) -> bool:
    """Whether ``source`` names a table (``-``, or a .csv/.tsv/.parquet path) rather than a cache."""
    return str(source) == STDIO or Path(str(source)).suffix.lower() in TABLE_SUFFIXES


def load_source(source, metrics: Sequence[str] | None = None, k: int | None = None, permutations: int | None = None,
                seed: int = 0, quiet: bool = True) -> ReportSource:
    """The table and settings a report is rendered from.

    ``source``: a DataFrame, a table path (``-``: CSV on standard input) rendered with the
    settings written beside it, or a cache, compared first by :func:`repalign.compare.compare_cache`
    (``metrics``, ``k``, ``permutations`` and ``seed`` apply to a cache only; None: the demo's).
    """
    given = [name for name, v in (("metrics", metrics), ("k", k), ("permutations", permutations)) if v is not None]
    if isinstance(source, pd.DataFrame) or is_table_path(source):
        if given:
            raise RepalignError(f"{', '.join(given)} apply to a cache; a table is rendered with the settings it was "
                                "made with (drop them, or give the cache)")
        if isinstance(source, pd.DataFrame):
            return ReportSource(source, {}, "table")
        name = "standard input" if str(source) == STDIO else Path(source).name
        return ReportSource(read_table(source), read_settings(source), name, [str(source)])
    metrics = _check_metrics(DEFAULT_METRICS if metrics is None else metrics)
    if k is not None:
        k = _check_int(k, "k", 1)
    permutations = _check_int(DEFAULT_PERMUTATIONS if permutations is None else permutations, "permutations", 0)
    stats = StatsOptions(permutations=permutations, seed=_check_int(seed, "seed", 0))
    result = compare_cache(source, metrics, k=k, stats=stats, quiet=quiet)
    argv = [str(source), *(["--metric", *metrics] if "metrics" in given else []),
            *(["--k", str(k)] if k is not None else []),
            *(["--permutations", str(permutations)] if "permutations" in given else []),
            *(["--seed", str(seed)] if seed else [])]
    return ReportSource(result.table, result.settings, Path(source).name, argv)


def _check_metrics(metrics) -> list[str]:
    if isinstance(metrics, str):
        metrics = [metrics]
    out = list(dict.fromkeys(get_metric(m).name for m in metrics))  # unknown names raise here
    if not out:
        raise RepalignError("no metric given; pass metrics, e.g. ['mknn', 'unbiased_cka']")
    return out


# ---- what the page shows, from the table ---------------------------------------------------------------


def trained_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of trained comparisons (no random-init control rows, no contrast rows)."""
    return table[row_levels(table) == "trained"]


def pair_rows(table: pd.DataFrame) -> list[pd.Series]:
    """One row per comparison of the table and metric (trained and random-init; contrast rows are
    the headlines'): the row marked best, else the highest score."""
    rows = table[row_levels(table) != "contrast"]
    keys = [c for c in PAIR_KEYS if c in rows.columns]
    out = []
    for _, part in rows.groupby(keys, sort=False, dropna=False):
        flags = best_flags(part)
        out.append(part[flags].iloc[0] if flags is not None else part.loc[part["score"].idxmax()])
    return out


def _value(row, column: str) -> float:
    value = row.get(column, np.nan) if hasattr(row, "get") else np.nan
    return float(pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0])


def _reference(rows: pd.DataFrame) -> tuple[str, float]:
    """(kind, value) of what unrelated data would score for one row: chance level, else null mean."""
    chance = float(chance_levels(rows)[0])
    if np.isfinite(chance):
        return "chance", chance
    null = _value(rows.iloc[0], "null_mean")
    return ("null mean", null) if np.isfinite(null) else ("", np.nan)


# ---- figures -----------------------------------------------------------------------------------------


def _svg_data_uri(fig) -> str:
    buffer = io.BytesIO()
    with plot.style():
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def figure_specs(table: pd.DataFrame) -> list[dict]:
    """The figures of the page, each a spec of ``repalign plot`` options (kind, metric, a, b,
    granularity, order) plus the group it belongs to and the rows it is drawn from."""
    trained = trained_rows(table)
    specs = []
    for group_index, group in enumerate(model_groups(trained)):
        rows = trained[trained["model_a"].isin(group)]
        levels = _granularities(rows)
        for level in levels:
            level_rows = granularity_rows(rows, level) if "granularity" in rows.columns else rows
            for metric in dict.fromkeys(level_rows["metric"]):
                specs += _metric_specs(level_rows[level_rows["metric"] == metric], metric, group_index, level,
                                       len(levels) > 1)
                specs += _control_specs(table, level_rows[level_rows["metric"] == metric], metric, group_index)
    return specs


def _control_specs(table: pd.DataFrame, trained: pd.DataFrame, metric: str, group: int) -> list[dict]:
    """A trained-vs-control figure per trained pair with controls."""
    if "level" not in table.columns:
        return []
    base_a, base_b = (table[c].astype(str).map(base_model) for c in ("model_a", "model_b"))
    # the figure's controls are the default scope (NAME@random:SEED); NAME@random-all:SEED is a second control
    other_scope = pd.Series([control_scope(str(a), str(b)) == ALL_SCOPE for a, b in zip(table["model_a"], table["model_b"])],
                            index=table.index)
    specs = []
    for a, b in dict.fromkeys(zip(trained["model_a"], trained["model_b"])):
        rows = table[(base_a == a) & (base_b == b) & (table["metric"] == metric) & ~other_scope]
        if (row_levels(rows) == "random_init").any():
            specs.append({"metric": metric, "group": group, "granularity": None, "kind": CONTROLS_KIND, "a": a, "b": b,
                          "rows": rows})
    return specs


def _granularities(rows: pd.DataFrame) -> list[str]:
    if "granularity" not in rows.columns:
        return [POOLED]
    return list(dict.fromkeys(POOLED if pd.isna(v) or v == "" else str(v) for v in rows["granularity"]))


def _metric_specs(rows: pd.DataFrame, metric: str, group: int, level: str, several_levels: bool) -> list[dict]:
    """A model matrix per chance level shared by at least 3 models, then a layer heatmap per pair.
    ``rows_level``: the level the command selects (pooled too, where the table holds several)."""
    base = {"metric": metric, "group": group, "granularity": None if level == POOLED else level,
            "rows_level": level if several_levels or level != POOLED else None}
    specs = []
    pairs = list(dict.fromkeys(zip(rows["model_a"], rows["model_b"])))
    by_level: dict[float, list] = {}
    for a, b in pairs:
        part = rows[(rows["model_a"] == a) & (rows["model_b"] == b)]
        by_level.setdefault(round(_reference(part)[1], 6), []).append((a, b))
    for chance_pairs in by_level.values():
        models = list(dict.fromkeys(m for pair in chance_pairs for m in pair))
        if len(models) >= 3:
            keep = pd.Series(list(zip(rows["model_a"], rows["model_b"])), index=rows.index).isin(chance_pairs)
            # --a: the matrix's models, so that the command draws them from the whole table; --n-samples
            # when those models also have pairs at another N (another chance level), which plot refuses to mix
            sizes = set(rows.loc[rows["model_a"].isin(models) & rows["model_b"].isin(models), "n_samples"])
            matrix_n = set(rows.loc[keep, "n_samples"])
            n = int(next(iter(matrix_n))) if len(sizes) > 1 and len(matrix_n) == 1 else None
            specs.append({**base, "kind": "models", "a": ",".join(models), "n_samples": n, "rows": rows[keep]})
    for a, b in pairs:
        specs.append({**base, "kind": "layers", "a": a, "b": b,
                      "rows": rows[(rows["model_a"] == a) & (rows["model_b"] == b)]})
    return specs


def _plot_flags(spec: dict) -> dict:
    """The spec's ``repalign plot`` options, by option name (those it sets)."""
    return {name: spec[name] for name in ("metric", "a", "b", "order") if spec.get(name) is not None}


def plot_command(spec: dict) -> list[str]:
    """The ``repalign plot`` command drawing the figure of ``spec`` from the report's table."""
    flags = _plot_flags(spec)
    stem = "-".join(str(v) for v in (spec["kind"], *flags.values(), spec.get("granularity")) if v).replace(",", "-")
    command = ["repalign", "plot", SCORES_FILE]
    level = spec.get("rows_level") or spec.get("granularity")
    if level:
        command += ["--granularity", level]
    if spec.get("n_samples") is not None:
        command += ["--n-samples", str(spec["n_samples"])]
    command += ["--kind", spec["kind"]]
    for name, value in flags.items():
        command += [f"--{name}", str(value)]
    return [*command, "-o", stem]


def draw_figure(spec: dict) -> dict:
    """The figure of ``spec``, drawn by its ``repalign plot`` options: title, caption, data URI, command."""
    options = plot.figure_options(spec["kind"], **_plot_flags(spec))
    fig = plot.draw(spec["rows"], spec["kind"], **options)
    level = "" if not spec.get("granularity") else f" ({spec['granularity']} level)"
    if spec["kind"] == "models":
        title = f"{spec['metric']}: model x model, best layer pair{level}"
    elif spec["kind"] == CONTROLS_KIND:
        title = f"{spec['metric']}: {spec['a']} vs {spec['b']} against random-init controls"
    else:
        title = f"{spec['metric']}: layer x layer, {spec['a']} vs {spec['b']}{level}"
    return {"group": spec["group"], "title": title, "caption": f"{title}. {plot.caption(fig)}".strip(),
            "uri": _svg_data_uri(fig), "command": plot_command(spec)}


# ---- HTML ------------------------------------------------------------------------------------------------

_CSS = """
*, *::before, *::after { box-sizing: border-box; }
body { font-family: system-ui, sans-serif; font-size: 15px; line-height: 1.45; margin: 1em auto; padding: 0 1em;
       max-width: 72em; color: #222; overflow-wrap: anywhere; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin-bottom: 0.3em; }
p.lead { color: #444; margin-top: 0; }
ul.headlines { padding-left: 1.2em; } ul.headlines li { margin-bottom: 0.5em; }
.scroll { max-width: 100%; overflow: auto; } .tall { max-height: 32em; }
table { border-collapse: collapse; font-size: 12px; } th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: left; }
th { background: #f3f3f3; overflow-wrap: normal; white-space: nowrap; position: sticky; top: 0; }
table.sortable th { cursor: pointer; } th[data-sort="asc"]::after { content: " \\u25b2"; } th[data-sort="desc"]::after { content: " \\u25bc"; }
td { overflow-wrap: normal; white-space: nowrap; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f6f6; padding: 0.6em; font-size: 12px; white-space: pre-wrap; overflow-wrap: anywhere; max-width: 100%; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; max-width: 100%; }
figure img { width: 30em; max-width: 100%; height: auto; } figcaption { font-size: 12px; color: #555; max-width: 32em; }
details { margin: 0.6em 0; } summary { cursor: pointer; }
ul.not-compared, ul.warnings { font-size: 12px; color: #555; padding-left: 1.2em; }
"""

#: sorts a table.sortable by the clicked column: numbers by data-value (empty and NaN last), text as text
_SORT_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, column) {
    th.addEventListener('click', function () {
      var dir = th.getAttribute('data-sort') === 'asc' ? 'desc' : 'asc';
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('data-sort'); });
      th.setAttribute('data-sort', dir);
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var key = function (row) {
        var cell = row.cells[column], v = cell.getAttribute('data-value');
        return v === null ? cell.textContent : (v === 'nan' || v === '' ? NaN : parseFloat(v));
      };
      rows.sort(function (r, s) {
        var a = key(r), b = key(s);
        if (typeof a === 'number' && typeof b === 'number') {
          if (isNaN(a) || isNaN(b)) { return isNaN(a) - isNaN(b); }
          return dir === 'asc' ? a - b : b - a;
        }
        var c = String(a).localeCompare(String(b), undefined, {numeric: true});
        return dir === 'asc' ? c : -c;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return '<td class="num" data-value="nan"></td>'
        # data-value keeps every digit of the CSV; the text is rounded for reading
        return f'<td class="num" data-value="{float(value)!r}">{float(value):.4f}</td>'
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool):
        return f'<td class="num" data-value="{int(value)}">{int(value)}</td>'
    return f"<td>{_esc(value)}</td>"


def table_html(table: pd.DataFrame, table_id: str) -> str:
    """The tidy table as a sortable HTML table, one <tr> per row, columns as in the CSV."""
    head = "".join(f"<th>{_esc(c)}</th>" for c in table.columns)
    body = "\n".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in table.itertuples(index=False))
    return f'<table id="{_esc(table_id)}" class="sortable"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


def _command(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


def _number(value, digits: int = 3) -> str:
    if value is None or not np.isfinite(value):
        return ""
    return f"{value:.{digits}g}" if 0 < abs(value) < 1e-3 else f"{value:.{digits}f}"


def headline_text(row: pd.Series) -> str:
    """One sentence per headline: the best pair and its score against chance, then its controls."""
    p_search, chance, null = _value(row, "p_value_best"), _value(row, "chance_level"), _value(row, "null_mean")
    if not np.isfinite(chance):
        chance = float(chance_levels(pd.DataFrame([row]))[0]) if "n_samples" in row else np.nan
    reference = [f"chance {_number(chance)}"] if np.isfinite(chance) else []
    reference += [f"null mean {_number(null)}"] if np.isfinite(null) and not np.isfinite(chance) else []
    reference += [f"p adjusted for the layer search {_number(p_search, 2)}"] if np.isfinite(p_search) else []
    text = (f"{row['model_a']} {row['layer_a']} ~ {row['model_b']} {row['layer_b']}: {row['metric']} "
            f"{_number(_value(row, 'score'))}" + (f" ({'; '.join(reference)})" if reference else ""))
    n_seeds = _value(row, "n_seeds")
    if not np.isfinite(n_seeds):
        return text + "; no random-init controls in the table."
    sd = _value(row, "control_sd")
    interval = (f" [{_number(_value(row, 'ci_low'))}, {_number(_value(row, 'ci_high'))}]"
                if np.isfinite(_value(row, "ci_low")) else "")
    p, floor = _value(row, "p_value"), _value(row, "min_p_value")
    rank = (f", rank-test p {_number(p, 2)} (smallest attainable {_number(floor, 2)})" if np.isfinite(p) else "")
    return (text + f"; random-init controls (best pair of each, {int(n_seeds)} seed{'s' if n_seeds != 1 else ''}) "
            f"{_number(_value(row, 'control_mean'))}" + (f" \u00b1 {_number(sd)}" if np.isfinite(sd) else "")
            + f", difference {_value(row, 'difference'):+.3f}{interval}{rank}.")


def _headline_items(found: pd.DataFrame) -> list[str]:
    """<li> per headline, its numbers kept in data attributes (every digit of the table)."""
    items = []
    for _, row in found.iterrows():
        data = " ".join(f'data-{c.replace("_", "-")}="{_esc(repr(float(row[c])) if isinstance(row[c], float) else row[c])}"'
                        for c in ("metric", "model_a", "model_b", "layer_a", "layer_b", "score", "control_mean",
                                  "difference", "p_value") if c in row.index)
        items.append(f'<li class="headline" {data}>{_esc(headline_text(row))}</li>')
    return items


def _findings_html(table: pd.DataFrame, groups: list[list[str]], settings: dict) -> list[str]:
    """The headline of each group of compared models, then the pairs not compared (one collapsed line)."""
    parts = ['<h2 id="findings">Findings</h2>']
    found = headlines(table) if len(table) else pd.DataFrame()
    if "granularity" in found.columns:
        found = found.sort_values("granularity", key=lambda g: g.fillna(POOLED) != POOLED, kind="stable")
    for group in groups:
        mine = found[found["model_a"].isin(group)] if len(found) else found
        if mine.empty:
            continue
        parts.append(f"<h3>{_esc(', '.join(group))}</h3>")
        parts.append('<ul class="headlines">' + "".join(_headline_items(mine)) + "</ul>")
    if not groups:
        why = "no model pair shares samples" if settings.get("skipped") else "the table holds no comparison"
        if len(settings.get("models", [])) == 1:
            why = "the cache holds a single model"
        parts.append(f"<p>Nothing was compared: {why}.</p>")
    parts += _skipped_html(settings.get("skipped", []))
    return parts


def _short_reason(reason: str) -> str:
    if "share no sample ids" in reason:
        return "no shared samples"
    if "different inputs" in reason:
        return "same ids, different inputs (content hashes differ)"
    return reason if len(reason) <= 90 else reason[:87] + "..."


def _skipped_html(skipped: list) -> list[str]:
    """The pairs not compared, in one collapsed line that opens to one line per pair."""
    if not skipped:
        return []
    reasons = sorted({_short_reason(str(r)) for _, _, r in skipped})
    summary = f"{len(skipped)} model pair(s) not compared: {'; '.join(reasons)}"
    items = "".join(f'<li class="not-compared" title="{_esc(reason)}">{_esc(a)} / {_esc(b)}: '
                    f"{_esc(_short_reason(str(reason)))}</li>" for a, b, reason in skipped)
    return [f'<details id="not-compared"><summary>{_esc(summary)}</summary><ul class="not-compared">{items}</ul></details>']


def _figures_html(figures: list[dict], groups: list[list[str]]) -> list[str]:
    if not figures:
        return []
    parts = ['<h2 id="figures">Figures</h2>']
    for index, group in enumerate(groups):
        mine = [f for f in figures if f["group"] == index]
        if mine:
            parts.append(f"<h3>{_esc(', '.join(group))}</h3>")
            parts += [f'<figure><img src="{f["uri"]}" alt="{_esc(f["title"])}">'
                      f"<figcaption>{_esc(f['caption'])}</figcaption></figure>" for f in mine]
    return parts


def pairs_table(table: pd.DataFrame) -> pd.DataFrame:
    """Every comparison of the table (trained and random-init) with its best layer pair, one row per metric."""
    out = []
    for row in pair_rows(table):
        kind, reference = _reference(pd.DataFrame([row]))
        level = str(row.get("level", "trained")) if pd.notna(row.get("level", np.nan)) else "trained"
        out.append({"model_a": row["model_a"], "model_b": row["model_b"], "level": level,
                    "granularity": str(row.get("granularity", POOLED)) if pd.notna(row.get("granularity", np.nan)) else POOLED,
                    "metric": row["metric"], "params": row.get("params", ""), "samples": int(_value(row, "n_samples"))
                    if np.isfinite(_value(row, "n_samples")) else np.nan,
                    "best layer pair": f"{row['layer_a']} ~ {row['layer_b']}", "score": _value(row, "score"),
                    "chance or null mean": reference, "reference": kind, "calibrated": _value(row, "calibrated"),
                    "p, layer search": _value(row, "p_value_best")})
    frame = pd.DataFrame(out)
    empty = [c for c in ("calibrated", "p, layer search", "chance or null mean") if c in frame and frame[c].isna().all()]
    if "granularity" in frame and (frame["granularity"] == POOLED).all():
        empty.append("granularity")
    return frame.drop(columns=empty + (["reference"] if "chance or null mean" in empty else []))


def _settings_text(settings: dict) -> str:
    """The settings line of the page: how the table was made, as far as its settings say."""
    if not settings:
        return "Settings: those in the table's params column (no settings file beside the table)."
    parts = [f"{name.replace('_', ' ')} {settings[name]}" for name in ("metrics", "k", "permutations", "seed",
                                                                        "layer_family", "ci")
             if settings.get(name) not in (None, "", [])]
    if isinstance(settings.get("metrics"), list):
        parts[0] = "metrics " + ", ".join(settings["metrics"])
    return "Settings: " + "; ".join(parts) + "."


def _details_html(table: pd.DataFrame, settings: dict) -> list[str]:
    """All pairs (sortable), the warnings, and every score (sortable)."""
    parts = ['<h2 id="details">Details</h2>', '<h3 id="pairs">All pairs</h3>']
    if table.empty:
        return parts + ["<p>No scores.</p>"]
    pairs = pairs_table(table)
    parts.append(f"<p>{len(pairs)} comparison(s), each with its best layer pair; click a column to sort.</p>")
    parts.append('<div class="scroll tall">' + table_html(pairs, "pairs-table") + "</div>")
    if settings.get("warnings"):
        parts.append('<details><summary>reliability warnings</summary><ul class="warnings">'
                     + "".join(f"<li>{_esc(w)}</li>" for w in settings["warnings"]) + "</ul></details>")
    parts.append('<h3 id="scores">All scores</h3>')
    parts.append(f"<p>{len(table)} rows, identical to <a href=\"{SCORES_FILE}\">{SCORES_FILE}</a>; "
                 "click a column to sort.</p>")
    parts.append('<div class="scroll tall">' + table_html(table, "scores-table") + "</div>")
    return parts


def _models_html(models: list[dict]) -> list[str]:
    """The models table and each model's provenance (from the settings of a cache's comparison)."""
    if not models:
        return []
    parts = ['<h3 id="models">Models</h3>',
             '<div class="scroll"><table id="models-table" class="sortable"><thead><tr><th>model</th><th>samples</th>'
             "<th>pooled layers</th><th>storage</th></tr></thead><tbody>"]
    for m in models:
        parts.append(f"<tr><td>{_esc(m['model'])}</td>{_cell(m['n_samples'])}{_cell(m['n_layers'])}"
                     f"<td>{_esc(m['dtype'])}</td></tr>")
    parts.append("</tbody></table></div>")
    for m in models:
        parts.append(f"<details><summary>provenance of {_esc(m['model'])}</summary>"
                     f"<pre class=\"provenance\" data-model=\"{_esc(m['model'])}\">"
                     f"{_esc(json.dumps(m['provenance'], indent=2, sort_keys=True))}</pre></details>")
    return parts


def _reproduce_html(source: ReportSource, output: Path, figures: list[dict]) -> list[str]:
    """The commands that reproduce the report, each pair's table and each figure."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    settings = source.settings
    parts = ['<h3 id="reproduce">Reproduce</h3>',
             f"<p>Generated {now} by repalign {_esc(__version__)} from {_esc(source.name)}"
             + (f" ({_esc(settings['made_by'])})" if settings.get("made_by") else "") + ". The whole report:</p>",
             f"<pre>{_esc(_command(['repalign', 'report', *source.argv, '-o', str(output)]))}</pre>"]
    commands = settings.get("commands") or ([settings["command"]] if settings.get("command") else [])
    if commands:
        parts.append("<p>Each pair's table:</p>")
        parts.append("<pre>" + "\n".join(_esc(_command(c)) for c in commands) + "</pre>")
    if figures:
        parts.append(f"<p>Each figure from {SCORES_FILE} (add <code>--format png,pdf,svg --width single|double</code> "
                     "to restyle):</p>")
        parts.append("<pre>" + "\n".join(_esc(_command(f["command"])) for f in figures) + "</pre>")
    return parts


def render_page(source: ReportSource, output: Path) -> str:
    """The report page of ``source``'s table: findings, figures, details."""
    table = source.table
    checked = check_table(table) if len(table) else table
    groups = model_groups(trained_rows(checked)) if len(checked) else []
    figures = [draw_figure(spec) for spec in figure_specs(checked)] if len(checked) else []
    trained = trained_rows(checked) if len(checked) else checked
    n_pairs = len(dict.fromkeys(zip(trained["model_a"], trained["model_b"]))) if len(checked) else 0
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>repalign report: {_esc(source.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>repalign report: {_esc(source.name)}</h1>",
        f'<p class="lead">{n_pairs} compared pair(s) of trained models in {len(groups)} group(s) of models that share samples. '
        f"{_esc(_settings_text(source.settings))} "
        '<a href="#figures">Figures</a> \u00b7 <a href="#pairs">All pairs</a> \u00b7 <a href="#scores">All scores</a>'
        ' \u00b7 <a href="#reproduce">Reproduce</a></p>',
        *_findings_html(checked, groups, source.settings),
        *_figures_html(figures, groups),
        *_details_html(checked, source.settings),
        *_models_html(source.settings.get("models", [])),
        *_reproduce_html(source, output, figures),
        f"<script>{_SORT_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# ---- entry point -------------------------------------------------------------------------------------------


def build_report(
    source,
    output: str | os.PathLike,
    metrics: Sequence[str] | None = None,
    k: int | None = None,
    permutations: int | None = None,
    *,
    seed: int = 0,
    force: bool = False,
    quiet: bool = True,
) -> Path:
    """Write the report of ``source`` into the folder ``output``; returns the path of index.html.

    ``source``: a score table (a DataFrame, a .csv/.tsv/.parquet path, or ``-`` for CSV on standard
    input), rendered with the settings written beside it; or a cache, compared first with the
    demo's settings by :func:`repalign.compare.compare_cache` (``metrics``, ``k``,
    ``permutations``, ``seed`` override them; a table refuses them). ``output`` may be new, empty,
    or an earlier report: only files that an earlier report wrote (listed in its manifest,
    unchanged since) are replaced. A folder holding anything else is refused unless ``force``;
    even then no file the report did not write is replaced or removed. The folder is checked
    before any comparison.
    """
    output = _check_output(output, force)
    loaded = load_source(source, metrics, k, permutations, seed, quiet)
    table = loaded.table
    page = render_page(loaded, output)
    if table.empty:
        table = pd.DataFrame(columns=["model_a", "layer_a", "model_b", "layer_b", "metric", "params", "score", "n_samples"])
    created = not output.exists()
    if created:
        output.mkdir()
    _check_output(output, force)  # the folder may have changed while comparing
    try:
        old = _manifest(output)
        with atomic_files([output / name for name in REPORT_FILES]) as (tmp_scores, tmp_settings, tmp_index):
            table.to_csv(tmp_scores, index=False)  # the format of repalign.table.write_table for .csv
            tmp_settings.write_text(json.dumps(loaded.settings, indent=1, sort_keys=True, default=str) + "\n",
                                    encoding="utf-8")
            tmp_index.write_text(page, encoding="utf-8")
            new = {name: _sha256(tmp) for name, tmp in zip(REPORT_FILES, (tmp_scores, tmp_settings, tmp_index))}
            # the manifest lists old and new digests while the files are renamed, so an interrupted
            # run leaves a folder the next run still recognises as its own
            _write_manifest(output, {name: sorted(set(old.get(name, [])) | {new[name]}) for name in REPORT_FILES})
        _write_manifest(output, {name: [new[name]] for name in REPORT_FILES})
    except BaseException:
        if created and not any(output.iterdir()):
            output.rmdir()
        raise
    return output / INDEX_FILE


def _write_manifest(folder: Path, files: dict[str, list[str]]) -> None:
    with atomic_files([folder / MANIFEST_FILE]) as (tmp,):
        tmp.write_text(json.dumps({"written_by": "repalign report", "files": files}, indent=1, sort_keys=True) + "\n",
                       encoding="utf-8")
