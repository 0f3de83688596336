"""Token layers compared row by row (residues, atoms): the Python side of ``repalign compare --tokens``.

Which rows (every token, a subsample, or one pooled row per group) is :class:`TokenOptions`;
statistics move and resample whole samples. The scoring is that of pooled layers
(:func:`repalign.compare.run.compare_items`).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from embeddings_cache import UNKNOWN_HASH, Cache
from repalign.compare.options import GROUP_COLUMNS, EngineOptions, StatsOptions, TokenOptions
from repalign.compare.run import Comparison, ComparisonRun, compare_items, metric_params, resolve_comparison, search_family
from repalign.compare.sources import TokenLayer, TokenRows
from repalign.errors import RepalignError
from repalign.inputs import read_inputs
from repalign.stats import BlockPermutation, block_permutation, min_draws, seeded_rng


def _token_counts(cache, model: str, names: list[str], ids: list[str]) -> np.ndarray:
    """Rows per sample of a model's chosen token layers (equal across them, or a one-line error)."""
    counts = cache.read_token_counts(model, names[0], ids=ids)
    for name in names[1:]:
        other = cache.read_token_counts(model, name, ids=ids)
        if not np.array_equal(counts, other):
            i = int(np.flatnonzero(counts != other)[0])
            raise RepalignError(f"{model}: token layers {names[0]} and {name} store {counts[i]} and {other[i]} rows for sample "
                                f"{ids[i]!r}; the cache is inconsistent: extract {model} again")
    return counts


def _check_inputs(records, ids, counts, hashes, model):
    """The stored rows of every shared sample are its residues / atoms: same input, one row each."""
    for i, sample in enumerate(ids):
        rec = records.get(sample)
        if rec is None:
            raise RepalignError(f"sample {sample!r} of {model} is not in inputs; give the input files {model} was extracted from")
        if hashes[i] != UNKNOWN_HASH and hashes[i] != rec.content_hash:
            raise RepalignError(f"sample {sample!r} in inputs differs from the input {model} was extracted from (content hashes differ); "
                                "give the same input files")
        if counts[i] != rec.size:
            unit = "residues" if rec.kind == "sequence" else "atoms"
            raise RepalignError(f"{model} stores {counts[i]} token rows for sample {sample!r}, which has {rec.size} {unit}; "
                                f"its rows are not one per {unit[:-1]} (special tokens or padding kept?): extract it again")


def _group_codes(records, ids, column: str) -> np.ndarray:
    """Per token row of every sample (in order), its group's index within the sample (groups in order of first row)."""
    codes = []
    for sample in ids:
        rec = records[sample]
        if rec.kind == "sequence":
            labels = (np.repeat(np.arange(len(rec.chains)), [len(c) for c in rec.chains]) if column == "chain"
                      else np.array(list("".join(rec.chains))))
        else:
            labels = np.asarray(rec.payload.get_chemical_symbols())
        _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        codes.append(rank[inverse.ravel()])
    return np.concatenate(codes)


def compare_tokens(
    cache: str | os.PathLike | tuple,
    model_a: str,
    model_b: str,
    metrics: Sequence[str] = ("mknn",),
    *,
    layers_a: Sequence[str] | None = None,
    layers_b: Sequence[str] | None = None,
    tokens: TokenOptions | None = None,
    engine: EngineOptions | None = None,
    stats: StatsOptions | None = None,
    **params,
) -> Comparison:
    """Score every token layer of ``model_a`` against every token layer of ``model_b``, row by row.

    The Python side of ``repalign compare --tokens``. A row is one token (residue, atom) of a shared
    sample, the same token in both models: both must store the same number of rows for every
    shared sample (checked first; the error names the first sample that differs). With
    ``tokens.inputs`` (input files or records, as for ``extract``), every sample must also be the
    same input as stored (content hash) with exactly one row per residue / atom.

    What a row is (``tokens``, :class:`TokenOptions`): every token (default); at most
    ``max_tokens`` rows drawn with the stats ``seed``, by whole samples (``subsample="samples"``:
    samples in a seeded random order, as many as fit) or uniformly over rows (``"uniform"``); or,
    with ``group_by`` (``chain`` or ``residue`` for sequences, ``element`` for structures; needs
    ``inputs``), the mean of the tokens of each group within each sample. These choices are
    recorded in the table's ``params``.

    Statistics respect the samples: ``permutations`` move whole samples
    (:func:`repalign.stats.block_permutation`: all rows of a sample onto another sample with the
    same row count), ``ci`` resamples whole samples (:func:`repalign.stats.subsample_intervals`
    with ``offsets``). ``engine.block_rows`` reads the layers in row blocks (out of core; kNN
    metrics and linear CKA). The table has ``granularity = "token"`` and ``n_units`` (samples) beside
    ``n_samples`` (rows). Other parameters, and the option fields taken as keywords, are those of
    :func:`repalign.compare.compare_models`.
    """
    setup = resolve_comparison(cache, model_a, model_b, metrics, layers_a, layers_b, params, engine=engine, stats=stats,
                               tokens=tokens, token_layers=True)
    engine, stats, tokens = setup.engine, setup.stats, setup.tokens
    assert tokens is not None  # resolved with token_layers
    if engine.anchors is not None or engine.cluster is not None:
        raise RepalignError("token rows are compared in this process without anchors; drop anchors and cluster")
    records = _token_records(tokens.inputs, tokens.group_by)
    ca, cb, canonical, names_a, names_b, ids = setup.ca, setup.cb, setup.canonical, setup.names_a, setup.names_b, setup.ids
    counts = _shared_token_counts(ca, cb, model_a, model_b, names_a, names_b, ids)
    if records is not None:
        for c, m in ((ca, model_a), (cb, model_b)):
            stored = dict(zip(c.ids(m), c.hashes(m)))
            _check_inputs(records, ids, counts, [stored[i] for i in ids], m)
    token_rows, extra = _token_rows(ids, counts, records, tokens, stats.seed)
    n = int(token_rows.offsets[-1])
    exclude = search_family(ca, cb, model_a, model_b, names_a, names_b, stats.layer_family)
    params = metric_params(canonical, n, setup.params)
    draw, warnings = _block_draw(token_rows.offsets, stats.alpha) if stats.permutations else (None, [])
    items_a: list[Any] = [TokenLayer(str(ca.path), model_a, x, token_rows) for x in names_a]
    items_b: list[Any] = [TokenLayer(str(cb.path), model_b, x, token_rows) for x in names_b]
    if engine.block_rows is None:
        items_a = [x.read() for x in items_a]  # TokenLayers, or their arrays when read whole
        items_b = [x.read() for x in items_b]
    run = ComparisonRun(model_a=model_a, model_b=model_b, names_a=names_a, names_b=names_b, canonical=canonical,
                        params=params, n=n, exclude=exclude, engine=engine, stats=stats, draw=draw,
                        offsets=token_rows.offsets, extra=extra, granularity="token", n_units=len(token_rows.ids),
                        warnings=warnings)
    return compare_items(run, items_a, items_b)


def _token_records(inputs, group_by) -> dict | None:
    """The input records by id (None without inputs), checked to label tokens by ``group_by``."""
    records = None
    if inputs is not None:
        given = isinstance(inputs, (list, tuple)) and inputs and hasattr(inputs[0], "kind")
        records = {r.id: r for r in (inputs if given else read_inputs(inputs))}
    if group_by is None:
        return records
    known = sorted({c for columns in GROUP_COLUMNS.values() for c in columns})
    if group_by not in known:
        raise RepalignError(f"unknown grouping column {group_by!r}; available: {', '.join(known)}")
    if records is None:
        raise RepalignError(f"group_by={group_by} labels tokens from the inputs; add inputs with the files the models were extracted from")
    kinds = {r.kind for r in records.values()}
    available = sorted({c for k in kinds for c in GROUP_COLUMNS[k]})
    if any(group_by not in GROUP_COLUMNS[k] for k in kinds):
        raise RepalignError(f"unknown grouping column {group_by!r} for these inputs; available: {', '.join(available)}")
    return records


def _shared_token_counts(ca: Cache, cb: Cache, model_a: str, model_b: str, names_a: list, names_b: list,
                         ids: list) -> np.ndarray:
    """Rows per shared sample, the same in both models' chosen token layers (or a one-line error)."""
    counts = _token_counts(ca, model_a, names_a, ids)
    counts_b = _token_counts(cb, model_b, names_b, ids)
    if not np.array_equal(counts, counts_b):
        i = int(np.flatnonzero(counts != counts_b)[0])
        raise RepalignError(f"{model_a} and {model_b} tokenise sample {ids[i]!r} differently ({counts[i]} vs {counts_b[i]} rows; "
                            "special tokens or padding kept by one?); per-token alignment needs the same tokens in both")
    return counts


def _token_rows(ids: list, counts: np.ndarray, records, tokens: TokenOptions, seed) -> tuple[TokenRows, dict]:
    """What a row is (every token, a subsample, or one row per group of each sample), and the
    parameters that record it in the table."""
    rng = np.random.default_rng(seeded_rng(seed)[1])  # the seed is checked whatever is drawn
    group_by, max_tokens, subsample = tokens.group_by, tokens.max_tokens, tokens.subsample
    extra: dict = {"granularity": "token"}
    keep = groups = None
    rows_per_sample = counts
    if group_by is not None:
        groups = _group_codes(records, ids, group_by)
        stored = np.concatenate([[0], np.cumsum(counts)])
        rows_per_sample = np.array([groups[stored[i]:stored[i + 1]].max() + 1 for i in range(len(ids))], dtype=np.int64)
        extra["group_by"] = group_by
    elif max_tokens is not None:
        extra.update(max_tokens=int(max_tokens), subsample=subsample, seed=seed)
        if counts.sum() > max_tokens:
            if subsample == "samples":
                ids, counts = _whole_samples(ids, counts, max_tokens, rng)
                rows_per_sample = counts
            else:
                ids, counts, keep, rows_per_sample = _uniform_rows(ids, counts, max_tokens, rng)
    offsets = np.concatenate([[0], np.cumsum(rows_per_sample)]).astype(np.int64)
    return TokenRows(tuple(ids), counts, keep, groups, offsets), extra


def _whole_samples(ids: list, counts: np.ndarray, max_tokens: int, rng) -> tuple[list, np.ndarray]:
    """Samples in a seeded random order, as many as fit in ``max_tokens`` rows (kept in stored order)."""
    order = rng.permutation(len(ids))
    fits = np.cumsum(counts[order]) <= max_tokens
    chosen = np.sort(order[:int(np.argmin(fits)) if not fits.all() else len(order)])
    if len(chosen) == 0:
        raise RepalignError(f"max_tokens={max_tokens} is smaller than the first drawn sample ({counts[order[0]]} rows); "
                            "raise max_tokens or use subsample='uniform'")
    return [ids[i] for i in chosen], counts[chosen]


def _uniform_rows(ids: list, counts: np.ndarray, max_tokens: int, rng) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """``max_tokens`` stored rows drawn uniformly: (ids, counts, kept rows, rows per sample); samples
    left without a row drop out."""
    keep = np.sort(rng.choice(int(counts.sum()), size=int(max_tokens), replace=False))
    stored = np.concatenate([[0], np.cumsum(counts)])
    rows_per_sample = np.diff(np.searchsorted(keep, stored))
    if np.any(rows_per_sample == 0):
        kept_samples = np.flatnonzero(rows_per_sample > 0)
        starts = stored[kept_samples]
        new_stored = np.concatenate([[0], np.cumsum(counts[kept_samples])])
        sample_of = np.searchsorted(stored, keep, side="right") - 1
        position = np.searchsorted(kept_samples, sample_of)
        keep = keep - starts[position] + new_stored[position]
        ids = [ids[i] for i in kept_samples]
        counts, rows_per_sample = counts[kept_samples], rows_per_sample[kept_samples]
    return ids, counts, keep, rows_per_sample


def _block_draw(offsets: np.ndarray, alpha: float) -> tuple[BlockPermutation, list[str]]:
    """The block permutations that move whole samples, and warnings about their number."""
    n_samples = len(offsets) - 1
    draw = block_permutation(offsets)
    warnings = []
    if draw.movable == 0:
        raise RepalignError(f"no two of the {n_samples} samples have the same number of rows, so no block permutation moves a sample; "
                            "use group_by, or compare pooled layers (compare_models) for p-values")
    if draw.count - 1 < min_draws(alpha):  # the identity and count - 1 others: the smallest p is 1 / count
        warnings.append(f"only {draw.count:.0f} distinct block permutations exist (samples move only onto samples with the "
                        f"same number of rows): no p-value can reach alpha={alpha}")
    elif draw.movable < n_samples:
        warnings.append(f"{n_samples - draw.movable} of {n_samples} samples have a row count no other sample has and stay in "
                        "place under block permutations (the test stays exact, with less power)")
    return draw, warnings
