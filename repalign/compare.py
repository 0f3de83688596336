"""Compare two models stored in embeddings caches, layer by layer: the Python side of ``repalign compare``.

Samples are matched by id (the intersection of both models' ids, with content hashes checked),
never by position. Each layer is read once, prepared (``normalize``), and the per-layer state is
shared by every layer pair and every metric of a call.
"""

from __future__ import annotations

import fnmatch
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from repalign.errors import RepalignError

TABLE_SUFFIXES = (".csv", ".parquet", ".tsv")
# parameters the CLI always passes; each is dropped for calls whose metrics do not take it
_COMMON_CLI_PARAMS = {"k", "kernel", "sigma", "dim"}


@dataclass
class Comparison:
    """The result of :func:`compare_models`: the tidy table plus what the summary needs."""

    table: pd.DataFrame
    model_a: str
    model_b: str
    n_samples: int
    alignments: list = field(default_factory=list)  # one LayerAlignment per metric
    warnings: list = field(default_factory=list)  # reliability warnings (N small for k, degenerate layers)

    def summary(self) -> str:
        """A few readable lines per metric: best layer pair, its score and the chance level."""
        from repalign.metrics import get_metric

        lines = [f"{self.model_a} vs {self.model_b}: {self.n_samples} shared samples"]
        for al in self.alignments:
            i, j, score = al.best
            metric = get_metric(al.metric)
            settable = {k: v for k, v in al.params.items() if k in metric.params}
            chance = metric.chance_level(self.n_samples, **settable)
            chance_txt = f"  (chance {chance:.4f})" if chance is not None else ""
            params = ", ".join(f"{k}={v}" for k, v in sorted(al.params.items()) if v is not None)
            rows = self.table[self.table["metric"] == al.metric]
            p_txt = ""
            if "p_value_best" in rows and rows["p_value_best"].notna().any():
                p_txt = f", p(best, corrected for the layer search) = {rows['p_value_best'].iloc[0]:.3g}"
            lines.append(
                f"  {al.metric} [{params}]: best {al.names_a[i]} ~ {al.names_b[j]} = {score:.4f}{chance_txt}{p_txt}; "
                f"{len(al.names_a)}x{len(al.names_b)} layer pairs"
            )
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def select_layers(available: Sequence[str], requested: Sequence[str] | None, what: str) -> list[str]:
    """Resolve layer names or shell-style patterns (``esmc.*``) against the stored order."""
    if not requested:
        return list(available)
    chosen: list[str] = []
    for pat in requested:
        hits = [name for name in available if fnmatch.fnmatchcase(name, pat)]
        if not hits:
            shown = ", ".join(available[:8]) + (", ..." if len(available) > 8 else "")
            raise RepalignError(f"{what}: no layer matches {pat!r}; available layers: {shown}")
        chosen.extend(h for h in hits if h not in chosen)
    # keep model order whatever order the patterns came in
    return [name for name in available if name in chosen]


def compare_models(
    cache: str | os.PathLike,
    model_a: str,
    model_b: str,
    metrics: Sequence[str] = ("mknn",),
    *,
    cache_b: str | os.PathLike | None = None,
    layers_a: Sequence[str] | None = None,
    layers_b: Sequence[str] | None = None,
    normalize: str | None = "l2",
    permutations: int = 0,
    ci: float | None = None,
    n_subsamples: int = 100,
    seed: int = 0,
    cluster=None,
    knn: str = "exact",
    knn_options: dict | None = None,
    block_rows: int | None = None,
    **params,
) -> Comparison:
    """Score every layer of ``model_a`` against every layer of ``model_b`` with each metric.

    Parameters such as ``k``, ``sigma``, ``kernel`` or ``dim`` go to the metrics that accept them.
    ``permutations`` > 0 adds permutation p-values (per pair and for the best pair against the null
    of the maximum), null means and calibrated scores; ``ci`` adds subsampling intervals
    (:mod:`repalign.stats`). Reliability warnings (N small for k, degenerate layers) are in
    ``Comparison.warnings``. ``cluster`` (a Dask spec such as ``local:4`` or a Client), ``knn``
    (``exact``, ``faiss-hnsw``, ``faiss-ivf``) and ``block_rows`` (out-of-core row blocks) route the
    computation through :func:`repalign.distributed.align_layers_distributed`; approximate
    neighbour lists add a ``knn_recall`` column. Returns a :class:`Comparison` whose ``table`` is the tidy long table
    (model_a, layer_a, model_b, layer_b, metric, params, score, n_samples).
    """
    from embeddings_cache import Cache, align_ids
    from repalign import stats
    from repalign.metrics import align_layers_multi, get_metric

    if isinstance(metrics, str):
        metrics = [metrics]
    if not metrics:
        raise RepalignError("no metric given; pass --metric NAME (see 'repalign compare --help')")
    canonical = []
    for m in metrics:
        name = get_metric(m).name  # raises for unknown names before any reading
        if name not in canonical:
            canonical.append(name)

    ca = Cache(cache)
    cb = Cache(cache_b) if cache_b is not None else ca
    for c, m in ((ca, model_a), (cb, model_b)):
        if m not in c.models:
            raise RepalignError(f"model {m!r} is not in {c.path}; it holds: {', '.join(c.models) or 'no models'}")
    names_a = select_layers(ca.layers(model_a), layers_a, model_a)
    names_b = select_layers(cb.layers(model_b), layers_b, model_b)
    ids = align_ids(ca, model_a, cb, model_b)

    # a parameter left unset (None) takes each metric's default; one no metric accepts is an error
    params = {k: v for k, v in params.items() if v is not None}
    accepted = {p for name in canonical for p in get_metric(name).params}
    params = {k: v for k, v in params.items() if k in accepted or k not in _COMMON_CLI_PARAMS}

    if cluster is not None or knn != "exact" or block_rows is not None:
        if permutations or ci:
            raise RepalignError("--permutations/--ci run in one process on in-memory layers; "
                                "drop --cluster/--knn/--block-rows for them")
        return _compare_distributed(ca, cb, model_a, model_b, names_a, names_b, ids, canonical, normalize,
                                    cluster, knn, knn_options, block_rows, params)

    mats_a = [ca.read_layer(model_a, name, ids=ids) for name in names_a]
    mats_b = [cb.read_layer(model_b, name, ids=ids) for name in names_b]
    alignments = align_layers_multi(
        mats_a, mats_b, metrics=canonical, names_a=names_a, names_b=names_b, normalize=normalize, **params
    )
    frames, warnings = [], []
    for al in alignments:
        frame = al.to_frame(model_a=model_a, model_b=model_b)
        metric_args = {k: v for k, v in params.items() if k in get_metric(al.metric).params}
        warnings += stats.check_reliability(len(ids), al.metric, metric_args, layers=mats_a + mats_b,
                                            normalize=normalize, permutations=permutations or None)
        if permutations or ci:
            common = dict(metric=al.metric, normalize=normalize, seed=seed, **metric_args)
            result = stats.permutation_test(mats_a, mats_b, permutations=permutations, names_a=names_a,
                                            names_b=names_b, **common) if permutations else None
            interval = stats.subsample_interval(mats_a, mats_b, ci=ci, n_subsamples=n_subsamples,
                                                **common) if ci else None
            frame = pd.concat([frame, stats.stats_columns(result, interval)], axis=1)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    return Comparison(table=table, model_a=model_a, model_b=model_b, n_samples=len(ids), alignments=alignments,
                      warnings=list(dict.fromkeys(warnings)))


def _compare_distributed(ca, cb, model_a, model_b, names_a, names_b, ids, metrics, normalize, cluster, knn,
                         knn_options, block_rows, params) -> Comparison:
    """Per-layer work on Dask workers and/or out of core / with approximate neighbours."""
    import contextlib

    from repalign.distributed import CacheLayer, align_layers_distributed, open_client
    from repalign.metrics import get_metric

    src_a = [CacheLayer(str(ca.path), model_a, n, tuple(ids)) for n in names_a]
    src_b = [CacheLayer(str(cb.path), model_b, n, tuple(ids)) for n in names_b]
    with (open_client(cluster) if cluster is not None else contextlib.nullcontext(None)) as client:
        alignments, recall = align_layers_distributed(
            client, src_a, src_b, metrics, names_a, names_b, normalize, knn=knn, knn_options=knn_options,
            block_rows=block_rows, n_samples=len(ids), **params)
    frames = []
    for al in alignments:
        frame = al.to_frame(model_a=model_a, model_b=model_b)
        if recall and get_metric(al.metric).is_knn:
            frame["knn_recall"] = [min(recall[("a", la)], recall[("b", lb)])
                                   for la, lb in zip(frame["layer_a"], frame["layer_b"])]
        frames.append(frame)
    return Comparison(table=pd.concat(frames, ignore_index=True), model_a=model_a, model_b=model_b,
                      n_samples=len(ids), alignments=alignments)


def check_table_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise RepalignError(f"{path}: unknown table format {path.suffix!r}; use a .csv, .tsv or .parquet file name")
    if not path.parent.exists():
        raise RepalignError(f"{path.parent}: no such folder; create it or choose another output path")
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise RepalignError("writing .parquet needs pyarrow: pip install 'repalign[parquet]', or write .csv") from None
    return path


def write_table(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a tidy table atomically (a temporary file renamed into place), so no partial table is left."""
    path = check_table_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; a table is an ordinary file
    try:
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False, sep="\t" if suffix == ".tsv" else ",")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise RepalignError(f"{path}: no such table; give a .csv or .parquet written by 'repalign compare -o'")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in (".csv", ".tsv"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    raise RepalignError(f"{path}: unknown table format; use .csv, .tsv or .parquet")


def score_matrix(table: pd.DataFrame, metric: str | None = None) -> tuple[np.ndarray, list[str], list[str]]:
    """The La×Lb score matrix of one model pair and metric from a tidy table, rows and columns in stored order."""
    if metric is not None:
        table = table[table["metric"] == metric]
    if table.empty:
        raise RepalignError(f"no rows for metric {metric!r} in the table")
    rows = list(dict.fromkeys(table["layer_a"]))
    cols = list(dict.fromkeys(table["layer_b"]))
    pivot = table.pivot_table(index="layer_a", columns="layer_b", values="score", aggfunc="first")
    return pivot.loc[rows, cols].to_numpy(dtype=float), rows, cols
