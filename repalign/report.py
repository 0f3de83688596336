"""A self-contained HTML report of every model pair in a cache: the Python side of ``repalign report``.

The report folder holds ``index.html`` (a summary table of every pair first, then figures embedded
as SVG data URIs, provenance and the commands that reproduce it: no scripts, no external files,
opens from disk with no network), ``scores.csv`` (the tidy table every figure is drawn from) and
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
import logging
import numbers
import os
import shlex
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from embeddings_cache import Cache, align_ids
from repalign import __version__, plot
from repalign.compare import StatsOptions, compare_models, compare_tokens
from repalign.errors import RepalignError
from repalign.metrics import get_metric
from repalign.plot.style import reference_note
from repalign.table import (
    POOLED,
    atomic_files,
    chance_levels,
    check_table,
    granularities,
    granularity_rows,
    metric_rows,
    select_pair,
    significance_column,
)

SCORES_FILE = "scores.csv"
INDEX_FILE = "index.html"
MANIFEST_FILE = ".repalign-report"
REPORT_FILES = (SCORES_FILE, INDEX_FILE)
DEFAULT_METRICS = ("mknn", "cka")
log = logging.getLogger(__name__)
ALPHA = 0.05


@dataclass
class PairResult:
    model_a: str
    model_b: str
    n_samples: int = 0
    summary: str = ""
    reason: str = ""  # why the pair is not comparable; empty when it was compared
    warnings: list = field(default_factory=list)  # reliability warnings of repalign.stats

    @property
    def compared(self) -> bool:
        return not self.reason


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


def compare_all(cache_path: str | os.PathLike, metrics: Sequence[str] = DEFAULT_METRICS, k: int = 10,
                permutations: int = 0, seed: int = 0, quiet: bool = True) -> tuple[pd.DataFrame, list[PairResult]]:
    """Compare every pair of models of a cache that share samples (repalign.compare.compare_models).

    Returns the concatenated tidy table and one :class:`PairResult` per pair; pairs that share no
    samples, or whose shared ids name different inputs, or models without pooled layers, are
    listed with the reason instead of compared.
    """
    tables, pairs = [], []
    stats = StatsOptions(permutations=permutations, seed=seed)
    with Cache(cache_path) as cache:
        models = cache.models
        for i, model_a in enumerate(models):
            for model_b in models[i + 1:]:
                pair = PairResult(model_a, model_b)
                pairs.append(pair)
                empty = [m for m in (model_a, model_b) if not cache.layers(m)]
                if empty:
                    pair.reason = f"{', '.join(empty)} stored no pooled layers"
                    continue
                try:
                    align_ids(cache, model_a, cache, model_b)
                except RepalignError as exc:
                    pair.reason = str(exc).splitlines()[0]
                    continue
                if not quiet:
                    print(f"comparing {model_a} vs {model_b}", file=sys.stderr, flush=True)
                result = compare_models(cache_path, model_a, model_b, metrics, stats=stats, k=k)
                pair.n_samples, pair.summary = result.n_samples, result.summary()
                pair.warnings = list(getattr(result, "warnings", []))
                tables.append(result.table)
                tokens = _token_comparison(cache, cache_path, model_a, model_b, metrics, k, stats)
                if tokens is not None:
                    pair.summary += "\n" + tokens.summary()
                    pair.warnings += tokens.warnings
                    tables.append(tokens.table)
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return table, pairs


def _token_comparison(cache, cache_path, model_a, model_b, metrics, k, stats: StatsOptions):
    """The token-level comparison of a pair whose models both store token layers with the same
    tokens (repalign.compare.compare_tokens), or None. Metrics that cannot run on the token rows
    and pairs whose tokens differ are left out: the pooled comparison stands for them."""
    if not (cache.token_layers(model_a) and cache.token_layers(model_b)):
        return None
    try:
        return compare_tokens(cache_path, model_a, model_b, metrics, stats=stats, k=k)
    except RepalignError as exc:
        log.info("%s vs %s: no token-level comparison (%s)", model_a, model_b, str(exc).splitlines()[0])
        return None


# ---- figures -----------------------------------------------------------------------------------------


def _svg_data_uri(fig) -> str:
    buffer = io.BytesIO()
    with plot.style():
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _caption(rows: pd.DataFrame, what: str) -> str:
    """What a reader needs to read a figure: the colour scale, the reference level, the hatching."""
    parts = [what, "Colours: one fixed 0-1 scale per metric, the same in every figure of this report."]
    note = reference_note(rows)
    if note:
        parts.append(f"Line on the colour bar: {note} (what unrelated data would score).")
    sig = significance_column(rows)
    if sig is not None:
        parts.append(f"Hatched: {'adjusted ' if sig == 'p_value_adjusted' else ''}p \u2265 {ALPHA:g} (not significant).")
    return " ".join(parts)


def _figures(table: pd.DataFrame, pairs: list[PairResult], metrics: list[str]) -> list[dict]:
    """(section, title, caption, data URI, command) of each figure of the report."""
    if table.empty:
        return []
    checked = check_table(table)
    figures = []
    for level in granularities(checked):
        figures += _level_figures(granularity_rows(checked, level), pairs, level)
    return figures


def _level_figures(table: pd.DataFrame, pairs: list[PairResult], level: str) -> list[dict]:
    """The figures of one level of rows (pooled layers, or token rows beside them)."""
    figures = []
    checked = table
    suffix = "" if level == POOLED else f" ({level} level)"
    option = [] if level == POOLED else ["--granularity", level]
    for metric in dict.fromkeys(checked["metric"]):
        rows = metric_rows(checked, metric)
        models = set(rows["model_a"]) | set(rows["model_b"])
        if len(models) >= 3:
            fig = plot.model_matrix(table, metric, alpha=ALPHA)
            figures.append({"section": "overview", "title": f"{metric}: model x model, best layer pair{suffix}",
                            "caption": _caption(rows, f"{metric}: model x model, best layer pair of each model pair."),
                            "uri": _svg_data_uri(fig),
                            "command": ["repalign", "plot", SCORES_FILE, *option, "--kind", "models", "--metric", metric,
                                        "-o", f"models-{metric}{suffix and '-' + level}"]})
            fig = plot.depth_profile(table, metric, alpha=ALPHA)
            reference = plot.depth_scores(table, metric).attrs["model_b"]
            figures.append({"section": "overview", "title": f"{metric}: score versus relative depth, against {reference}{suffix}",
                            "caption": f"{metric}: each layer's best score against {reference}, by relative depth; "
                                       "value axis fixed at 0-1; hollow points: not significant.",
                            "uri": _svg_data_uri(fig),
                            "command": ["repalign", "plot", SCORES_FILE, *option, "--kind", "depth", "--metric", metric,
                                        "--b", reference, "-o", f"depth-{metric}{suffix and '-' + level}"]})
        for pair in pairs:
            if not pair.compared or not _has_pair(rows, pair):
                continue
            fig = plot.layer_heatmap(table, metric, pair.model_a, pair.model_b, alpha=ALPHA)
            title = f"{metric}: layer x layer, {pair.model_a} vs {pair.model_b}{suffix}"
            figures.append({
                "section": f"{pair.model_a} vs {pair.model_b}",
                "title": title,
                "caption": _caption(select_pair(table, metric, pair.model_a, pair.model_b),
                                    f"{title}; boxed: the best layer pair."),
                "uri": _svg_data_uri(fig),
                "command": ["repalign", "plot", SCORES_FILE, *option, "--kind", "layers", "--metric", metric, "--a",
                            pair.model_a, "--b", pair.model_b, "-o", f"layers-{pair.model_a}-{pair.model_b}-{metric}{suffix and '-' + level}"],
            })
    return figures


def _has_pair(rows: pd.DataFrame, pair: PairResult) -> bool:
    return bool((((rows["model_a"] == pair.model_a) & (rows["model_b"] == pair.model_b))
                 | ((rows["model_a"] == pair.model_b) & (rows["model_b"] == pair.model_a))).any())


def summary_rows(table: pd.DataFrame, pairs: list[PairResult]) -> list[dict]:
    """One row per compared model pair and metric: best layer pair, score, chance level (or null
    mean), calibrated score, p-value adjusted for the layer search, interval."""
    if table.empty:
        return []
    checked = check_table(table)
    out = []
    for pair in pairs:
        if not pair.compared:
            continue
        for level, metric in ((lv, m) for lv in granularities(checked) for m in dict.fromkeys(checked["metric"])):
            try:
                rows = metric_rows(checked, metric, level)
            except RepalignError:  # a metric not computed at this level
                continue
            rows = rows[((rows["model_a"] == pair.model_a) & (rows["model_b"] == pair.model_b))
                        | ((rows["model_a"] == pair.model_b) & (rows["model_b"] == pair.model_a))]
            best = plot.best_rows(rows, metric)
            if not best.empty:
                out.append(_summary_row(best, metric, level, pair))
    return out


def _summary_row(best: pd.DataFrame, metric: str, level: str, pair: PairResult) -> dict:
    """The summary of one pair and metric from its best row."""
    row = best.iloc[0]

    def value(column):
        return float(pd.to_numeric(pd.Series([row.get(column, np.nan)]), errors="coerce").iloc[0])

    p = value("p_value_best")
    if np.isnan(p):
        p = value("p_value_adjusted")
    reference, what = float(chance_levels(best)[0]), "chance"
    if np.isnan(reference):
        reference, what = value("null_mean"), "null mean"
    params = row["params"]
    return {
        "pair": f"{row['model_a']} vs {row['model_b']}" + ("" if level == POOLED else f" ({level} level)"),
        "metric": f"{metric} ({params.replace(',', ', ')})" if params else metric,
        "samples": pair.n_samples if level == POOLED else int(value("n_samples")),
        "best": f"{row['layer_a']} ~ {row['layer_b']}", "score": value("score"),
        "reference": reference, "reference_kind": what if not np.isnan(reference) else "",
        "calibrated": value("calibrated"), "p": p, "ci_low": value("ci_low"), "ci_high": value("ci_high"),
    }


def _short_reason(reason: str, cache_path: Path) -> str:
    """A few words for the summary; the full message stays in the line's tooltip."""
    if "share no sample ids" in reason:
        return "no shared samples"
    if "different inputs" in reason:
        return "same ids, different inputs (content hashes differ)"
    if "no pooled layers" in reason:
        return reason
    short = reason.replace(str(cache_path), cache_path.name)
    return short if len(short) <= 90 else short[:87] + "..."


# ---- HTML ------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; font-size: 14px; line-height: 1.4; margin: 1.5em auto; padding: 0 1em;
       max-width: 72em; color: #222; overflow-wrap: anywhere; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; font-size: 12px; } th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: left; }
th { background: #f3f3f3; overflow-wrap: normal; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
p.lead { color: #444; margin-top: 0; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 12px; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; max-width: 100%; }
figure img { width: 30em; max-width: 100%; height: auto; } figcaption { font-size: 12px; color: #555; max-width: 32em; }
.scroll { max-width: 100%; overflow: auto; } .tall { max-height: 30em; }
ul.not-comparable { font-size: 12px; color: #555; padding-left: 1.2em; }
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
    """The tidy table as an HTML table, one <tr> per row, columns as in the CSV."""
    head = "".join(f"<th>{_esc(c)}</th>" for c in table.columns)
    body = "\n".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in table.itertuples(index=False))
    return f'<table id="{_esc(table_id)}"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


def _command(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


def _number(value, digits: int = 3) -> str:
    return "" if value is None or np.isnan(value) else f"{value:.{digits}g}" if abs(value) < 1e-3 else f"{value:.{digits}f}"


def summary_html(rows: list[dict]) -> str:
    """The summary table; statistics columns that no row has (no permutations, no intervals) are left out."""
    columns = [("model pair", lambda r: f"<td>{_esc(r['pair'])}</td>"),
               ("metric", lambda r: f"<td>{_esc(r['metric'])}</td>"),
               ("samples", lambda r: _cell(r["samples"])),
               ("best layer pair", lambda r: f"<td>{_esc(r['best'])}</td>"),
               ("score", lambda r: _cell(r["score"]))]
    if any(r["reference_kind"] for r in rows):
        columns.append(("chance / null mean", lambda r: f'<td class="num">{_number(r["reference"])} ({r["reference_kind"]})</td>'
                        if r["reference_kind"] else '<td class="num"></td>'))
    if any(not np.isnan(r["calibrated"]) for r in rows):
        columns.append(("calibrated", lambda r: _cell(r["calibrated"])))
    if any(not np.isnan(r["p"]) for r in rows):
        columns.append(("p, adjusted for the layer search", lambda r: f'<td class="num">{_number(r["p"], 2)}</td>'))
    if any(not (np.isnan(r["ci_low"]) or np.isnan(r["ci_high"])) for r in rows):
        columns.append(("interval", lambda r: f'<td class="num">{_number(r["ci_low"])} to {_number(r["ci_high"])}</td>'
                        if not (np.isnan(r["ci_low"]) or np.isnan(r["ci_high"])) else '<td class="num"></td>'))
    head = "<tr>" + "".join(f"<th>{_esc(name)}</th>" for name, _ in columns) + "</tr>"
    body = "\n".join("<tr>" + "".join(cell(r) for _, cell in columns) + "</tr>" for r in rows)
    return f'<div class="scroll"><table id="summary-table"><thead>{head}</thead><tbody>\n{body}\n</tbody></table></div>'


def _html(cache_path: Path, output: Path, table: pd.DataFrame, pairs: list[PairResult], figures: list[dict],
          provenance: list[dict], metrics: list[str], k: int, permutations: int) -> str:
    compared = [p for p in pairs if p.compared]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>repalign report: {_esc(cache_path.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>repalign report: {_esc(cache_path.name)}</h1>",
        f'<p class="lead">{len(provenance)} model(s); {len(compared)} of {len(pairs)} pair(s) compared with '
        f"{_esc(', '.join(metrics))} (k = {k}; {permutations} permutations). "
        f"Scores: <a href=\"{SCORES_FILE}\">{SCORES_FILE}</a>. "
        '<a href="#reproduce">Reproduce</a> \u00b7 <a href="#models">Models</a> \u00b7 <a href="#scores">All scores</a></p>',
        *_summary_html(cache_path, table, pairs, permutations),
        *_figure_sections(compared, figures),
        *_models_html(provenance),
        *_reproduce_html(cache_path, output, compared, figures, metrics, k, permutations),
        '<h2 id="scores">All scores</h2>',
    ]
    if not table.empty:
        parts.append(f"<p>{len(table)} rows, identical to {SCORES_FILE}.</p>")
        parts.append('<div class="scroll tall">' + table_html(table, "scores-table") + "</div>")
    else:
        parts.append("<p>No scores.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _summary_html(cache_path: Path, table: pd.DataFrame, pairs: list[PairResult], permutations: int) -> list[str]:
    """The summary section: one row per compared pair and metric, then the pairs not comparable."""
    parts = ['<h2 id="summary">Summary</h2>']
    rows = summary_rows(table, pairs)
    if rows:
        parts.append(summary_html(rows))
        if not permutations:
            parts.append("<p>No permutations were run: no p-values or calibrated scores. Add "
                         "<code>--permutations 1000</code> for them.</p>")
    else:
        why = "the cache holds a single model" if not pairs else "no model pair shares samples"
        parts.append(f"<p>Nothing was compared: {why}.</p>")
    skipped = [p for p in pairs if not p.compared]
    if skipped:
        parts.append(f'<p>Not comparable ({len(skipped)}):</p><ul class="not-comparable">')
        for p in skipped:
            parts.append(f'<li class="not-comparable" title="{_esc(p.reason)}">{_esc(p.model_a)} / {_esc(p.model_b)}: '
                         f"{_esc(_short_reason(p.reason, cache_path))}</li>")
        parts.append("</ul>")
    return parts


def _figure_sections(compared: list[PairResult], figures: list[dict]) -> list[str]:
    """The overview figures, then one section per compared pair: its summary, warnings and figures."""
    parts = []
    overview = [f for f in figures if f["section"] == "overview"]
    if overview:
        parts.append('<h2 id="overview">Overview</h2>')
        parts.extend(_figure_html(f) for f in overview)
    for p in compared:
        section = f"{p.model_a} vs {p.model_b}"
        parts.append(f"<h2>{_esc(section)}</h2>")
        parts.append(f"<pre>{_esc(p.summary)}</pre>")
        if p.warnings:
            parts.append('<ul class="warnings">' + "".join(f"<li>{_esc(w)}</li>" for w in p.warnings) + "</ul>")
        parts.extend(_figure_html(f) for f in figures if f["section"] == section)
    return parts


def _models_html(provenance: list[dict]) -> list[str]:
    """The models table and each model's provenance."""
    parts = ['<h2 id="models">Models</h2>',
             "<table id=\"models-table\"><thead><tr><th>model</th><th>samples</th><th>pooled layers</th>"
             "<th>storage</th></tr></thead><tbody>"]
    for m in provenance:
        parts.append(f"<tr><td>{_esc(m['model'])}</td>{_cell(m['n_samples'])}{_cell(m['n_layers'])}"
                     f"<td>{_esc(m['dtype'])}</td></tr>")
    parts.append("</tbody></table>")
    for m in provenance:
        parts.append(f"<details><summary>provenance of {_esc(m['model'])}</summary>"
                     f"<pre class=\"provenance\" data-model=\"{_esc(m['model'])}\">"
                     f"{_esc(json.dumps(m['provenance'], indent=2, sort_keys=True))}</pre></details>")
    return parts


def _reproduce_html(cache_path: Path, output: Path, compared: list[PairResult], figures: list[dict],
                    metrics: list[str], k: int, permutations: int) -> list[str]:
    """The commands that reproduce the report, each pair's table and each figure."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report_cmd = ["repalign", "report", str(cache_path), "-o", str(output), "--metric", *metrics, "--k", str(k),
                  "--permutations", str(permutations)]
    compare_cmds = [
        ["repalign", "compare", str(cache_path), "--a", p.model_a, "--b", p.model_b, "--metric", *metrics,
         "--k", str(k), *(["--permutations", str(permutations)] if permutations else []),
         "-o", f"{p.model_a}-{p.model_b}.csv"]
        for p in compared
    ]
    parts = [
        '<h2 id="reproduce">Reproduce</h2>',
        f"<p>Cache <code>{_esc(cache_path)}</code>; generated {now} by repalign {_esc(__version__)}. The whole report:</p>",
        f"<pre>{_esc(_command(report_cmd))}</pre>",
    ]
    if compare_cmds:
        parts.append("<p>Each pair's table:</p>")
        parts.append("<pre>" + "\n".join(_esc(_command(c)) for c in compare_cmds) + "</pre>")
    if figures:
        parts.append(f"<p>Each figure from {SCORES_FILE} (add <code>--format png,pdf,svg --width single|double</code> "
                     "to restyle):</p>")
        parts.append("<pre>" + "\n".join(_esc(_command(f["command"])) for f in figures) + "</pre>")
    return parts


def _figure_html(fig: dict) -> str:
    return (f'<figure><img src="{fig["uri"]}" alt="{_esc(fig["title"])}">'
            f"<figcaption>{_esc(fig['caption'])}</figcaption></figure>")


# ---- entry point -------------------------------------------------------------------------------------------


def build_report(
    cache: str | os.PathLike,
    output: str | os.PathLike,
    metrics: Sequence[str] = DEFAULT_METRICS,
    k: int = 10,
    permutations: int = 0,
    *,
    seed: int = 0,
    force: bool = False,
    quiet: bool = True,
) -> Path:
    """Compare every model pair of ``cache`` and write ``output/index.html`` and ``output/scores.csv``.

    Pairs are compared with :func:`repalign.compare.compare_models` (every layer pair, each metric,
    ``k`` for the kNN metrics); with ``permutations`` > 0 it adds permutation p-values, null means
    and calibrated scores (:func:`repalign.stats.permutation_test`, seeded by ``seed``).
    ``output`` may be new, empty, or an earlier report: only files that an earlier report wrote
    (listed in its manifest, unchanged since) are replaced. A folder holding anything else is
    refused unless ``force``; even then no file the report did not write is replaced or removed.
    Every check runs before any comparison. Returns the path of index.html.
    """
    if isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(dict.fromkeys(get_metric(m).name for m in metrics))  # unknown names raise here
    if not metrics:
        raise RepalignError("no metric given; pass --metric NAME, e.g. --metric mknn cka")
    k = _check_int(k, "k", 1)
    permutations = _check_int(permutations, "permutations", 0)
    output = _check_output(output, force)
    cache_path = Path(cache)

    with Cache(cache_path) as c:
        if not c.models:
            raise RepalignError(f"{cache_path} holds no models; extract some with 'repalign extract' first")
        provenance = [{"model": m, "n_samples": c.n_samples(m), "n_layers": len(c.layers(m)),
                       "dtype": c.storage_dtype(m), "provenance": c.provenance(m)} for m in c.models]
    table, pairs = compare_all(cache_path, metrics, k, permutations, seed, quiet)
    figures = _figures(table, pairs, metrics)
    page = _html(cache_path, output, table, pairs, figures, provenance, metrics, k, permutations)
    if table.empty:
        table = pd.DataFrame(columns=["model_a", "layer_a", "model_b", "layer_b", "metric", "params", "score", "n_samples"])

    created = not output.exists()
    if created:
        output.mkdir()
    _check_output(output, force)  # the folder may have changed while comparing
    try:
        old = _manifest(output)
        with atomic_files([output / SCORES_FILE, output / INDEX_FILE]) as (tmp_scores, tmp_index):
            table.to_csv(tmp_scores, index=False)  # the format of repalign.table.write_table for .csv
            tmp_index.write_text(page, encoding="utf-8")
            new = {SCORES_FILE: _sha256(tmp_scores), INDEX_FILE: _sha256(tmp_index)}
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
