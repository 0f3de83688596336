"""A self-contained HTML report of every model pair in a cache: the Python side of ``repalign report``.

The report folder holds ``index.html`` (figures embedded as SVG data URIs, tables, provenance and the
commands that reproduce it: no scripts, no external files, opens from disk with no network) and
``scores.csv`` (the tidy table every figure is drawn from). It is built in a temporary folder next
to the output and renamed into place, so a failed run leaves no half report. Layout: docs/figures.md.
"""

from __future__ import annotations

import base64
import html
import io
import json
import numbers
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from repalign.errors import RepalignError

SCORES_FILE = "scores.csv"
INDEX_FILE = "index.html"
DEFAULT_METRICS = ("mknn", "cka")


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


def _check_output(output: str | os.PathLike) -> Path:
    output = Path(os.path.abspath(output))  # '.' or 'a/..' get a real name to rename
    parent = output.parent
    if not parent.is_dir():
        raise RepalignError(f"{parent}: no such folder; create it or choose another report folder")
    if not os.access(parent, os.W_OK):
        raise RepalignError(f"{parent}: folder is not writable; choose another report folder")
    if output.exists() and not output.is_dir():
        raise RepalignError(f"{output} is a file; give a folder for the report")
    if output.is_dir() and any(output.iterdir()) and not (output / INDEX_FILE).is_file():
        # only an earlier report is replaced, never an unrelated folder
        raise RepalignError(f"{output} is a non-empty folder that holds no report; choose a new or empty folder")
    return output


def compare_all(cache_path: str | os.PathLike, metrics: Sequence[str] = DEFAULT_METRICS, k: int = 10,
                permutations: int = 0, seed: int = 0, quiet: bool = True) -> tuple[pd.DataFrame, list[PairResult]]:
    """Compare every pair of models of a cache that share samples (repalign.compare.compare_models).

    Returns the concatenated tidy table and one :class:`PairResult` per pair; pairs that share no
    samples, or whose shared ids name different inputs, or models without pooled layers, are
    listed with the reason instead of compared.
    """
    from embeddings_cache import Cache, align_ids
    from repalign.compare import compare_models

    tables, pairs = [], []
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
                result = compare_models(cache_path, model_a, model_b, metrics, k=k, permutations=permutations,
                                        seed=seed)
                pair.n_samples, pair.summary = result.n_samples, result.summary()
                pair.warnings = list(getattr(result, "warnings", []))
                tables.append(result.table)
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return table, pairs


# ---- figures -----------------------------------------------------------------------------------------


def _svg_data_uri(fig) -> str:
    from repalign.plot import style

    buffer = io.BytesIO()
    with style():
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figures(table: pd.DataFrame, pairs: list[PairResult], metrics: list[str]) -> list[dict]:
    """(section, title, data URI, command) of each figure of the report."""
    from repalign import plot

    if table.empty:
        return []
    figures = []
    has_p = "p_value" in table.columns and table["p_value"].notna().any()
    stored = list(dict.fromkeys(table["metric"]))
    for metric in stored:
        for pair in pairs:
            if not pair.compared:
                continue
            fig = plot.layer_heatmap(table, metric, pair.model_a, pair.model_b)
            figures.append({
                "section": f"{pair.model_a} vs {pair.model_b}",
                "title": f"{metric}: layer x layer, {pair.model_a} vs {pair.model_b}"
                         + ("; hatched: p >= 0.05" if has_p else ""),
                "uri": _svg_data_uri(fig),
                "command": ["repalign", "plot", SCORES_FILE, "--kind", "layers", "--metric", metric,
                            "--a", pair.model_a, "--b", pair.model_b, "-o", f"layers-{pair.model_a}-{pair.model_b}-{metric}"],
            })
        models = set(table.loc[table["metric"] == metric, "model_a"]) | set(table.loc[table["metric"] == metric, "model_b"])
        if len(models) >= 3:
            fig = plot.model_matrix(table, metric)
            figures.append({"section": "overview", "title": f"{metric}: model x model, best layer pair",
                            "uri": _svg_data_uri(fig),
                            "command": ["repalign", "plot", SCORES_FILE, "--kind", "models", "--metric", metric,
                                        "-o", f"models-{metric}"]})
            fig = plot.depth_profile(table, metric)
            reference = plot.depth_scores(table, metric).attrs["model_b"]
            figures.append({"section": "overview", "title": f"{metric}: score versus relative depth, against {reference}",
                            "uri": _svg_data_uri(fig),
                            "command": ["repalign", "plot", SCORES_FILE, "--kind", "depth", "--metric", metric,
                                        "--b", reference, "-o", f"depth-{metric}"]})
    return figures


# ---- HTML ------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; font-size: 14px; line-height: 1.4; margin: 2em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 2em; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; font-size: 12px; } th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 12px; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; }
figure img { max-width: 100%; } figcaption { font-size: 12px; color: #555; max-width: 40em; }
.scroll { max-height: 30em; overflow: auto; }
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


def _html(cache_path: Path, output: Path, table: pd.DataFrame, pairs: list[PairResult], figures: list[dict],
          provenance: list[dict], metrics: list[str], k: int, permutations: int) -> str:
    from repalign import __version__

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report_cmd = ["repalign", "report", str(cache_path), "-o", str(output), "--metric", *metrics, "--k", str(k),
                  "--permutations", str(permutations)]
    compare_cmds = [
        ["repalign", "compare", str(cache_path), "--a", p.model_a, "--b", p.model_b, "--metric", *metrics,
         "--k", str(k), *(["--permutations", str(permutations)] if permutations else []),
         "-o", f"{p.model_a}-{p.model_b}.csv"]
        for p in pairs if p.compared
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>repalign report: {_esc(cache_path.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>repalign report: {_esc(cache_path.name)}</h1>",
        f"<p>Cache <code>{_esc(cache_path)}</code>; {len(provenance)} model(s), "
        f"{sum(p.compared for p in pairs)} of {len(pairs)} pair(s) compared with metrics "
        f"{_esc(', '.join(metrics))} (k = {k}; {permutations} permutations). "
        f"Generated {now} by repalign {_esc(__version__)}. Scores: <a href=\"{SCORES_FILE}\">{SCORES_FILE}</a>.</p>",
        '<h2 id="reproduce">Reproduce</h2>',
        "<p>The whole report:</p>",
        f"<pre>{_esc(_command(report_cmd))}</pre>",
    ]
    if compare_cmds:
        parts.append("<p>Each pair's table:</p>")
        parts.append("<pre>" + "\n".join(_esc(_command(c)) for c in compare_cmds) + "</pre>")
    if figures:
        parts.append(f"<p>Each figure from {SCORES_FILE} (add <code>--format png,pdf,svg --columns 1|2</code> to restyle):</p>")
        parts.append("<pre>" + "\n".join(_esc(_command(f["command"])) for f in figures) + "</pre>")

    parts.append('<h2 id="models">Models</h2>')
    parts.append("<table id=\"models-table\"><thead><tr><th>model</th><th>samples</th><th>pooled layers</th>"
                 "<th>storage</th></tr></thead><tbody>")
    for m in provenance:
        parts.append(f"<tr><td>{_esc(m['model'])}</td>{_cell(m['n_samples'])}{_cell(m['n_layers'])}"
                     f"<td>{_esc(m['dtype'])}</td></tr>")
    parts.append("</tbody></table>")
    for m in provenance:
        parts.append(f"<details><summary>provenance of {_esc(m['model'])}</summary>"
                     f"<pre class=\"provenance\" data-model=\"{_esc(m['model'])}\">"
                     f"{_esc(json.dumps(m['provenance'], indent=2, sort_keys=True))}</pre></details>")

    skipped = [p for p in pairs if not p.compared]
    if skipped:
        parts.append('<h2 id="not-comparable">Not comparable</h2><ul>')
        for p in skipped:
            parts.append(f'<li class="not-comparable">{_esc(p.model_a)} / {_esc(p.model_b)}: {_esc(p.reason)}</li>')
        parts.append("</ul>")

    overview = [f for f in figures if f["section"] == "overview"]
    if overview:
        parts.append('<h2 id="overview">Overview</h2>')
        parts.extend(_figure_html(f) for f in overview)
    for p in pairs:
        if not p.compared:
            continue
        section = f"{p.model_a} vs {p.model_b}"
        parts.append(f"<h2>{_esc(section)}</h2>")
        parts.append(f"<pre>{_esc(p.summary)}</pre>")
        if p.warnings:
            parts.append('<ul class="warnings">' + "".join(f"<li>{_esc(w)}</li>" for w in p.warnings) + "</ul>")
        parts.extend(_figure_html(f) for f in figures if f["section"] == section)

    parts.append('<h2 id="scores">Scores</h2>')
    if table.empty:
        why = "the cache holds a single model" if not pairs else "no model pair shares samples"
        parts.append(f"<p>Nothing was compared: {why}.</p>")
    else:
        parts.append(f"<p>{len(table)} rows, identical to {SCORES_FILE}.</p>")
        parts.append('<div class="scroll">' + table_html(table, "scores-table") + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _figure_html(fig: dict) -> str:
    return (f'<figure><img src="{fig["uri"]}" alt="{_esc(fig["title"])}">'
            f"<figcaption>{_esc(fig['title'])}</figcaption></figure>")


# ---- entry point -------------------------------------------------------------------------------------------


def build_report(
    cache: str | os.PathLike,
    output: str | os.PathLike,
    metrics: Sequence[str] = DEFAULT_METRICS,
    k: int = 10,
    permutations: int = 0,
    *,
    seed: int = 0,
    quiet: bool = True,
) -> Path:
    """Compare every model pair of ``cache`` and write ``output/index.html`` and ``output/scores.csv``.

    Pairs are compared with :func:`repalign.compare.compare_models` (every layer pair, each metric,
    ``k`` for the kNN metrics); with ``permutations`` > 0 it adds permutation p-values, null means
    and calibrated scores (:func:`repalign.stats.permutation_test`, seeded by ``seed``). An existing report at
    ``output`` is replaced atomically; any other non-empty folder is refused. Returns the path of
    index.html.
    """
    from embeddings_cache import Cache
    from repalign.compare import write_table
    from repalign.metrics import get_metric

    if isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(dict.fromkeys(get_metric(m).name for m in metrics))  # unknown names raise here
    if not metrics:
        raise RepalignError("no metric given; pass --metric NAME, e.g. --metric mknn cka")
    k = _check_int(k, "k", 1)
    permutations = _check_int(permutations, "permutations", 0)
    output = _check_output(output)
    cache_path = Path(cache)

    with Cache(cache_path) as c:
        if not c.models:
            raise RepalignError(f"{cache_path} holds no models; extract some with 'repalign extract' first")
        provenance = [{"model": m, "n_samples": c.n_samples(m), "n_layers": len(c.layers(m)),
                       "dtype": c.storage_dtype(m), "provenance": c.provenance(m)} for m in c.models]
    table, pairs = compare_all(cache_path, metrics, k, permutations, seed, quiet)
    figures = _figures(table, pairs, metrics)
    page = _html(cache_path, output, table, pairs, figures, provenance, metrics, k, permutations)

    parent = output.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=parent))
    try:
        if table.empty:
            table = pd.DataFrame(columns=["model_a", "layer_a", "model_b", "layer_b", "metric", "params", "score", "n_samples"])
        write_table(table, tmp / SCORES_FILE)
        (tmp / INDEX_FILE).write_text(page, encoding="utf-8")
        # temporary files and folders are private; a report is meant to be shared
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)
        os.chmod(tmp / SCORES_FILE, 0o666 & ~mask)
        if output.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old.", dir=parent))
            os.replace(output, old / "report")
            os.replace(tmp, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return output / INDEX_FILE
