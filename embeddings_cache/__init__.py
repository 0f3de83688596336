"""embeddings_cache: the HDF5 store of layer activations (the only code in the project using h5py).

- :class:`CacheWriter` appends one model's features batch by batch, crash-safely, one writer at a time.
- :class:`Cache` reads a cache (layers one at a time, rows by id) without taking any lock;
  ``Cache(path)["model"]`` is a :class:`CachedModel` (ids, provenance, layers as arrays, AnnData and
  xarray conversion).
- :func:`align_ids` gives the samples two models share, checking the inputs are the same.
- :func:`index_per_id_h5` / :func:`read_per_id_h5` read bio_embeddings-style HDF5 feature files.
- :func:`check_can_append` makes a writer's checks without opening one (before loading a model).
- :class:`Error` is the root of every error raised on purpose (``repalign.errors.RepalignError`` is
  the same class); :class:`CacheError` derives from it.

The file layout, versioning rule and crash-safety design are in docs/cache-format.md.
"""

from embeddings_cache.errors import CacheError, Error
from embeddings_cache.foreign import PerIdDataset, index_per_id_h5, read_per_id_h5
from embeddings_cache.format import FORMAT_VERSION, UNKNOWN_HASH
from embeddings_cache.model import CachedModel
from embeddings_cache.reader import Cache, align_ids
from embeddings_cache.writer import CacheWriter, check_can_append

__all__ = [
    "Cache", "CachedModel", "CacheWriter", "CacheError", "Error", "align_ids", "check_can_append", "FORMAT_VERSION", "UNKNOWN_HASH",
    "PerIdDataset", "index_per_id_h5", "read_per_id_h5",
]
