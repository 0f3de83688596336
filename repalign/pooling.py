"""Pooling: one vector per sample from its per-token (per residue / per atom) rows.

- ``mean``: the mean of the rows (accumulated in float64), the default of most models;
- ``max``: the elementwise maximum of the rows;
- ``last``: the last row, the last residue of the last chain (for causal models, the one that has
  read the whole sequence);
- ``cls``: the model's own summary token (CLS/BOS) where it has one; not computable from the rows.

The rows never include special tokens or padding: adapters remove BOS/CLS, EOS/SEP and padding
before pooling (see each model's module docstring), so a sample's pooled vector does not depend on
its batch. Multi-chain inputs are pooled over the rows of all their chains, in input order.
:func:`repool` derives another pooling from token features stored in a cache, without running the
model again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from embeddings_cache import Cache, CacheWriter
from repalign.errors import RepalignError

POOLINGS = ("mean", "cls", "last", "max")
#: poolings computed from the token rows alone
ROW_POOLINGS = ("mean", "last", "max")


def check_pool(pool: str, allowed: Sequence[str] = POOLINGS) -> str:
    if pool not in allowed:
        raise RepalignError(f"unknown pooling {pool!r}; use one of {', '.join(allowed)}")
    return pool


def pool_rows(rows, pool: str, what: str = "sample") -> np.ndarray:
    """One float32 vector from an (L, D) array of token rows (``mean``, ``max`` or ``last``)."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise RepalignError(f"{what}: no token rows to pool (shape {rows.shape}); check the model's output")
    if pool == "mean":
        vec = rows.astype(np.float64).mean(axis=0)
    elif pool == "max":
        vec = rows.max(axis=0)
    elif pool == "last":
        vec = rows[-1]
    elif pool == "cls":
        raise RepalignError(f"{what}: cls pooling needs the model's CLS vector, which token rows do not hold; "
                            "use mean, max or last, or extract again with pool='cls'")
    else:
        check_pool(pool)
    return np.asarray(vec, dtype=np.float32)


@dataclass
class RepoolRun:
    """What :func:`repool` did."""

    model: str  # the new model
    source: str
    pool: str
    layers: list[str]
    stored: int = 0
    skipped_existing: int = 0


def repool(cache: str | os.PathLike, model: str, pool: str, *, name: str | None = None,
           layers: Sequence[str] | None = None, overwrite: bool = False, batch_size: int = 256) -> RepoolRun:
    """Pool the stored token features of ``model`` with ``pool`` into a new model of the same cache.

    name: the new model (default ``<model>.<pool>``); its pooled layers are the token layers of
    ``model`` (or ``layers``, a subset), rows in the same order with the same ids and content hashes.
    The source model is left as it is. The run is crash-safe and resumable like an extraction: a
    second call with the same source and pooling skips the samples already pooled; any other model
    of that name is replaced only with ``overwrite``.
    """
    check_pool(pool, ROW_POOLINGS + ("cls",))
    if pool == "cls":
        pool_rows(np.zeros((1, 1)), "cls", f"model {model}")  # the one-line explanation
    if not isinstance(batch_size, int) or batch_size < 1:
        raise RepalignError(f"batch_size must be a positive integer, got {batch_size!r}")
    target = name or f"{model}.{pool}"
    with Cache(cache) as c:
        if model not in c.models:
            raise RepalignError(f"model {model!r} is not in {cache}; it holds: {', '.join(c.models) or 'no models'}")
        token_layers = c.token_layers(model)
        if not token_layers:
            raise RepalignError(
                f"model {model!r} stores no token-level features, so it cannot be pooled again; "
                "extract it with tokens=[LAYER] (or pool='none') to keep them"
            )
        chosen = list(token_layers) if not layers else list(layers)
        missing = [l for l in chosen if l not in token_layers]
        if missing:
            raise RepalignError(f"model {model!r} stores no token features of {missing}; its token layers: {token_layers}")
        if target == model:
            raise RepalignError(f"the pooled model needs a name other than {model!r}; pass another name")
        same_run = target in c.models and c.provenance(target).get("repooled_from") == model \
            and (c.provenance(target).get("options") or {}).get("pool") == pool
        if target in c.models and not overwrite and not same_run:
            raise RepalignError(
                f"model {target!r} is already in {cache}; pass overwrite=True to replace it, or choose another name"
            )
        ids, hashes = c.ids(model), c.hashes(model)
        prov = c.provenance(model)
        dtype = c.storage_dtype(model)
    prov.pop("created", None)
    prov.pop("format_version", None)
    options = dict(prov.get("options") or {})
    options.update(pool=pool, token_layers=[], repooled_from=model)
    prov.update(options=options, repooled_from=model, pool=pool)
    run = RepoolRun(target, model, pool, chosen)
    with CacheWriter(cache, target, prov, layers=chosen, dtype=dtype, overwrite=overwrite) as writer, Cache(cache) as c:
        stored = writer.stored()
        todo = [k for k, i in enumerate(ids) if i not in stored]
        run.skipped_existing = len(ids) - len(todo)
        for start in range(0, len(todo), batch_size):
            rows = todo[start:start + batch_size]
            batch_ids = [ids[k] for k in rows]
            pooled = {}
            for layer in chosen:
                data, offsets = c.read_tokens(model, layer, ids=batch_ids)
                pooled[layer] = np.stack([
                    pool_rows(data[offsets[k]:offsets[k + 1]], pool, f"sample {batch_ids[k]!r} layer {layer}")
                    for k in range(len(batch_ids))
                ])
            writer.append(batch_ids, [hashes[k] for k in rows], pooled)
            run.stored += len(rows)
    return run
