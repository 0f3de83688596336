"""Shard caches: merging caches of one model into another, and removing a cache with its journal files.

A distributed extraction writes each shard into a cache of its own (an ordinary cache, crash-safe
and resumable), then appends the shards to the target in shard order with :func:`merge_shards`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from embeddings_cache.format import CACHE_COMPRESSION, consolidating_path, lock_path, parts_dir
from embeddings_cache.reader import Cache
from embeddings_cache.writer import CacheWriter


def merge_shards(shard_paths: Sequence[str | os.PathLike], cache: str | os.PathLike, model: str,
                 overwrite: bool = False, rows_per_append: int = 256, compression: str | None = CACHE_COMPRESSION) -> int:
    """Append the samples of ``model`` in the shard caches to ``cache`` in the given order; returns
    the samples added.

    Goes through the public cache API only (``Cache`` reads, ``CacheWriter.append``), so the
    target keeps its journal, compression and checksums; samples already in the target are skipped,
    which makes a merge interrupted by a crash safe to run again. The provenance, layers, token
    layers and storage dtype are those of the first shard holding the model. Shards may overlap
    (e.g. two workers that extracted some of the same samples): a sample is taken from the first
    shard holding it. ``compression``: that of the model in the target, as for
    :class:`embeddings_cache.CacheWriter` (default: gzip in a new cache, the cache's own in an existing one).
    """
    shards = [Cache(p) for p in shard_paths]
    try:
        first = next((c for c in shards if model in c.models), None)
        if first is None:
            return 0
        prov = first.provenance(model)
        prov.pop("created", None)
        prov.pop("format_version", None)
        added = 0
        with CacheWriter(cache, model, provenance=prov, layers=first.layers(model),
                         token_layers=first.token_layers(model), dtype=first.storage_dtype(model),
                         overwrite=overwrite, compression=compression) as writer:
            for shard in shards:
                if model in shard.models:  # stored() includes the earlier shards' rows: shards may overlap
                    added += _append_shard(shard, model, writer, writer.stored(), rows_per_append)
        return added
    finally:
        for c in shards:
            c.close()


def _append_shard(shard: Cache, model: str, writer: CacheWriter, stored: dict[str, str], rows_per_append: int) -> int:
    """Append the rows of one shard not in ``stored``, ``rows_per_append`` at a time, read in the
    writer's layers and storage dtype; returns how many."""
    ids, hashes = shard.ids(model), shard.hashes(model)
    dtype = writer.dtype.name
    keep = [i for i, sid in enumerate(ids) if sid not in stored]
    for s in range(0, len(keep), rows_per_append):
        rows = [ids[i] for i in keep[s:s + rows_per_append]]
        pooled = {layer: shard.read_layer(model, layer, ids=rows, dtype=dtype) for layer in writer.layers}
        tokens = {}
        for layer in writer.token_layers:
            data, offsets = shard.read_tokens(model, layer, ids=rows, dtype=dtype)
            tokens[layer] = [data[offsets[j]:offsets[j + 1]] for j in range(len(rows))]
        outputs = {name: shard.read_output(model, name, ids=rows) for name in shard.outputs(model)}
        writer.append(rows, [hashes[i] for i in keep[s:s + rows_per_append]], pooled, tokens=tokens, outputs=outputs)
    return len(keep)


def remove_cache(path: str | os.PathLike) -> None:
    """Delete the cache file at ``path`` with its journal files (lock, consolidation copy, parts).

    For caches nobody writes any more (a merged shard, a shard of an abandoned plan); missing files are fine.
    """
    path = Path(path)
    for extra in (path, lock_path(path), consolidating_path(path)):
        with contextlib.suppress(FileNotFoundError):
            extra.unlink()
    shutil.rmtree(parts_dir(path), ignore_errors=True)
