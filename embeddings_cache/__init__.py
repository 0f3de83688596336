"""embeddings_cache: the HDF5 store of layer activations (the only code in the project using h5py).

- :class:`CacheWriter` appends one model's features batch by batch, crash-safely, one writer at a time.
- :class:`Cache` reads a cache (layers one at a time, rows by id) without taking any lock;
  ``Cache(path)["model"]`` is a :class:`CachedModel` (ids, provenance, layers as arrays, AnnData and
  xarray conversion).
- :func:`align_ids` gives the samples two models share, checking the inputs are the same.
- :func:`index_per_id_h5` / :func:`read_per_id_h5` read bio_embeddings-style HDF5 feature files.
- :func:`check_can_append` makes a writer's checks without opening one (before loading a model).
- :func:`atomic_files` writes files whole or not at all (temporary names renamed into place).
- :func:`merge_shards` appends shard caches to a cache in order; :func:`remove_cache` deletes a
  cache with its journal files.
- :class:`Error` is the root of every error raised on purpose (``repalign.errors.RepalignError`` is
  the same class); :class:`CacheError` derives from it.

The file layout, versioning rule and crash-safety design are in docs/cache-format.md.
"""

import importlib

from embeddings_cache.errors import CacheError, Error

# The store's classes load on first use (PEP 562), so importing the errors alone, as every module of
# repalign does through repalign.errors, does not load h5py and the file code.
_EXPORTS = {
    "Cache": "embeddings_cache.reader",
    "align_ids": "embeddings_cache.reader",
    "CachedModel": "embeddings_cache.model",
    "CacheWriter": "embeddings_cache.writer",
    "check_can_append": "embeddings_cache.writer",
    "FORMAT_VERSION": "embeddings_cache.format",
    "UNKNOWN_HASH": "embeddings_cache.format",
    "PerIdDataset": "embeddings_cache.foreign",
    "index_per_id_h5": "embeddings_cache.foreign",
    "read_per_id_h5": "embeddings_cache.foreign",
    "check_foreign_h5": "embeddings_cache.foreign",
    "new_h5_file": "embeddings_cache.foreign",
    "atomic_files": "embeddings_cache.atomic",
    "merge_shards": "embeddings_cache.shards",
    "remove_cache": "embeddings_cache.shards",
}

__all__ = ["CacheError", "Error", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'embeddings_cache' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
