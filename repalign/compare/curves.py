"""Alignment across sample counts N and neighbour counts k: every layer pair scored at every k on
seeded random subsets of each size, in one tidy table (``repalign compare --k 5,10,25 --n-samples
250,500,1000 --repeats 5``).

Mutual-kNN scores fall as N grows at fixed k, and their chance level k/(N − 1) moves with N, so a
score is read against its own N and k (docs/statistics.md, "Alignment across N and k"). Each subset
is scored by :func:`repalign.compare.run.compare_items`, the path of every comparison, so the rows at
the full size (all shared samples) are those of :func:`repalign.compare.compare_models` at that k.

Subsets are nested: repeat r draws one order of the shared samples (from the stats seed), and its
subset of size n is the first n samples of that order, kept in stored order. A larger size then holds
every smaller subset of the same repeat, and adding sizes or repeats leaves the other subsets as
they were.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from repalign.compare.options import EngineOptions, StatsOptions
from repalign.compare.pooled import layer_items
from repalign.compare.run import (
    Comparison,
    ComparisonRun,
    ComparisonSetup,
    compare_items,
    metric_params,
    resolve_comparison,
    search_family,
)
from repalign.errors import RepalignError
from repalign.metrics import get_metric
from repalign.stats import check_count
from repalign.table import chance_levels

#: mixed into the stats seed for the subset draws, so they are a stream apart from the permutations'
SUBSET_STREAM = 20260
#: the columns a curve table adds to a comparison's (after ``n_samples``)
CURVE_COLUMNS = ("k", "subset")


@dataclass(frozen=True)
class Subset:
    """One scored subset: ``size`` samples, repeat ``index`` (0 for the full size), ``rows``: their
    positions among the shared samples, in stored order."""

    size: int
    index: int
    rows: np.ndarray


@dataclass
class CurveComparison(Comparison):
    """The result of :func:`compare_curves`: ``table`` holds every subset's rows; ``alignments`` and
    :meth:`summary` are those of the full size (all shared samples), with one line on the subsets.
    ``full``: the comparisons at the full size, one per k (and one for the metrics without k)."""

    full: list = field(default_factory=list)

    def summary(self, with_warnings: bool = True) -> str:
        head = Comparison(table=self.table.iloc[:0], model_a=self.model_a, model_b=self.model_b,
                          n_samples=self.n_samples).summary(with_warnings=False)
        lines = [head, describe_curves(self.table)]
        for part in self.full:  # each summarised from its own rows: the best pair's null mean is that k's
            lines += part.summary(with_warnings=False).split("\n")[1:]
        return "\n".join(lines + ([f"  warning: {w}" for w in self.warnings] if with_warnings else []))


def check_counts(values, name: str, low: int) -> list[int]:
    """``values`` (one whole number or a sequence of them) as sorted distinct ints >= ``low``;
    a one-line error naming ``name`` otherwise."""
    if values is None or isinstance(values, (str, bytes)):
        raise RepalignError(f"{name}={values!r} is invalid; pass whole numbers, e.g. {name}=[250, 500]")
    items = [values] if np.ndim(values) == 0 else list(values)
    if not items:
        raise RepalignError(f"{name} is empty; pass at least one whole number")
    return sorted({check_count(v.item() if isinstance(v, np.generic) else v, name, low) for v in items})


def draw_subsets(n_total: int, sizes: Sequence[int], repeats: int, seed: int) -> list[Subset]:
    """The subsets to score: ``repeats`` nested subsets of every size below ``n_total`` (repeat r
    takes the first n samples of one seeded order of all of them), then all samples once."""
    rng = np.random.default_rng([SUBSET_STREAM, seed])
    orders = [rng.permutation(n_total) for _ in range(repeats)]
    out = [Subset(n, r, np.sort(orders[r][:n])) for n in sizes if n < n_total for r in range(repeats)]
    return out + [Subset(n_total, 0, np.arange(n_total))]


def metric_groups(canonical: list[str], ks: list[int]) -> list[tuple[int | None, list[str]]]:
    """(k, metrics) scored together: the metrics that take ``k`` once per k, the others once (k None)."""
    with_k = [m for m in canonical if "k" in get_metric(m).params]
    without = [m for m in canonical if m not in with_k]
    return [(k, with_k) for k in ks if with_k] + ([(None, without)] if without else [])


def group_params(checked: dict, metrics: list[str], k: int | None) -> dict:
    """The parameters of one group: those its metrics accept, and ``k``."""
    accepted = {p for m in metrics for p in get_metric(m).params}
    params = {p: v for p, v in checked.items() if p in accepted and p != "k"}
    return params if k is None else {**params, "k": k}


def check_curve_settings(canonical: list[str], ks, sizes, repeats, n_total: int, params: dict,
                         models: tuple[str, str]) -> tuple[list[int], list[int], int, dict]:
    """ks, sizes and repeats checked against the shared sample count, and the metric parameters
    checked at the smallest size, before any layer is read."""
    ks = check_counts(ks, "ks", 1)
    sizes = [] if sizes is None else check_counts(sizes, "sizes", 2)
    repeats = check_count(repeats, "repeats", 1)
    if "k" in params:
        raise RepalignError("pass the neighbour counts as ks=[...] (one or several), not k")
    too_large = [n for n in sizes if n > n_total]
    if too_large:
        raise RepalignError(f"sizes: {too_large[0]} is more than the {n_total} samples shared by {models[0]} and "
                            f"{models[1]}; choose sizes up to {n_total}")
    smallest = min(sizes + [n_total])
    uses_k = any("k" in get_metric(m).params for m in canonical)
    if uses_k and ks[-1] >= smallest:
        raise RepalignError(f"ks: k={ks[-1]} needs more than {ks[-1]} samples but the smallest size scored is {smallest}; "
                            f"choose each k below {smallest} or larger sizes")
    checked = metric_params(canonical, smallest, {**params, **({"k": ks[-1]} if uses_k else {})})
    return ks, sizes, repeats, checked


def compare_curves(
    cache: str | os.PathLike | tuple,
    model_a: str,
    model_b: str,
    metrics: Sequence[str] = ("mknn",),
    *,
    ks: int | Sequence[int] = (10,),
    sizes: int | Sequence[int] | None = None,
    repeats: int = 5,
    layers_a: Sequence[str] | None = None,
    layers_b: Sequence[str] | None = None,
    engine: EngineOptions | None = None,
    stats: StatsOptions | None = None,
    **params,
) -> Comparison:
    """Score every layer pair at every k in ``ks`` on ``repeats`` seeded subsets of every size in
    ``sizes`` and once on all shared samples, in one tidy table.

    Arguments as in :func:`repalign.compare.compare_models` (``params``: metric parameters other than
    k). The subsets are drawn with the stats ``seed`` (:func:`draw_subsets`). Metrics that take no k
    (CKA, SVCCA, ...) are scored once per subset. The table has the columns of ``compare_models``
    plus ``k`` (empty for metrics without k), ``subset`` (0 .. repeats − 1; 0 at the full size) and
    ``chance_level`` (the closed form at the row's N and k, where the metric has one); with
    ``stats.permutations`` every row has its null mean, p-values and calibrated score. The full-size
    rows equal those of ``compare_models`` at the same k. ``alignments`` and ``summary()`` are those
    of the full size. Relative representations (``engine.anchors``) are not drawn per subset.
    """
    setup = resolve_comparison(cache, model_a, model_b, metrics, layers_a, layers_b, params, engine=engine, stats=stats)
    if setup.engine.anchors is not None:
        raise RepalignError("anchors and sizes do not go together: the anchors would be drawn again per subset; drop one")
    canonical, names_a, names_b, ids, stats = setup.canonical, setup.names_a, setup.names_b, setup.ids, setup.stats
    ks, sizes, repeats, checked = check_curve_settings(canonical, ks, sizes, repeats, len(ids), setup.params,
                                                       (model_a, model_b))
    exclude = search_family(setup.ca, setup.cb, model_a, model_b, names_a, names_b, stats.layer_family)
    layers_of = _layer_reader(setup)
    frames, full, warnings = [], [], []
    for subset in draw_subsets(len(ids), sizes, repeats, stats.seed):
        items_a, items_b = layers_of(subset.rows)
        for k, group in metric_groups(canonical, ks):
            run = ComparisonRun(model_a=model_a, model_b=model_b, names_a=names_a, names_b=names_b, canonical=group,
                                params=group_params(checked, group, k), n=subset.size, exclude=exclude,
                                engine=setup.engine, stats=stats)
            result = compare_items(run, items_a, items_b)
            frames.append(_tagged(result.table, k, subset.index))
            warnings += result.warnings
            if subset.size == len(ids):
                full.append(result)
    table = pd.concat(frames, ignore_index=True)
    table["chance_level"] = chance_levels(table)
    return CurveComparison(table=table, model_a=model_a, model_b=model_b, n_samples=len(ids),
                           alignments=[al for part in full for al in part.alignments],
                           warnings=list(dict.fromkeys(warnings)), full=full)


def _layer_reader(setup: ComparisonSetup):
    """rows -> (items of A, items of B) restricted to those rows of the shared samples: slices of
    layers read once (in memory), else cache references to those samples (read in blocks or on workers)."""
    ids = setup.ids

    def items(rows: np.ndarray | None) -> tuple[list, list]:
        chosen = ids if rows is None else [ids[i] for i in rows]
        return (layer_items(setup.ca, setup.model_a, setup.names_a, chosen, setup.engine.in_memory),
                layer_items(setup.cb, setup.model_b, setup.names_b, chosen, setup.engine.in_memory))
    if not setup.engine.in_memory:
        return items
    full_a, full_b = items(None)

    def arrays(rows: np.ndarray) -> tuple[list, list]:
        if len(rows) == len(ids):  # all samples: the layers as read, as compare_models scores them
            return full_a, full_b
        return [x[rows] for x in full_a], [x[rows] for x in full_b]
    return arrays


def _tagged(table: pd.DataFrame, k: int | None, subset: int) -> pd.DataFrame:
    """``table`` with the ``k`` (nullable integer) and ``subset`` columns after ``n_samples``."""
    at = table.columns.get_loc("n_samples") + 1
    table.insert(at, "k", pd.array([k] * len(table), dtype="Int64"))
    table.insert(at + 1, "subset", np.full(len(table), subset, dtype=np.int64))
    return table


def describe_curves(table: pd.DataFrame) -> str:
    """One line: the sizes, subsets per size and ks of a curve table."""
    sizes = sorted(int(n) for n in pd.unique(table["n_samples"]))
    repeats = int(table.groupby("n_samples")["subset"].nunique().max())
    ks = sorted(int(k) for k in pd.unique(table["k"].dropna()))
    where = (f"on {repeats} subset(s) of each of n_samples {', '.join(map(str, sizes[:-1]))} and on all {sizes[-1]}"
             if len(sizes) > 1 else f"on all {sizes[0]} samples")
    return f"  scored {where}" + (f", at k {', '.join(map(str, ks))}" if ks else "")


__all__ = ["CURVE_COLUMNS", "CurveComparison", "Subset", "compare_curves", "describe_curves", "draw_subsets"]
