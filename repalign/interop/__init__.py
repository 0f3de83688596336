"""Features in and out of a cache: :func:`import_features` and :func:`export_features`.

Import reads features other tools wrote and stores them as a model of a cache, so they compare
with extracted models by sample id (``repalign cache import``):

========================  ==========================================================================
file                      read as
========================  ==========================================================================
``.npy``                  (N, D): one layer; (N, L, D): L layers
``.npz``                  one (N, D) array per layer; optional ``ids`` / ``hashes`` (strings) and
                          ``tokens/<layer>`` (T, D) + ``offsets/<layer>`` (N+1,) token rows
``.pt``                   a tensor as for ``.npy``; platonic-rep's ``{"feats": (N, L, D), ...}``; a
                          dict of (N, D) tensors (optional ``ids``); one ESM ``extract.py`` file
folder of ``.pt``         ESM ``extract.py`` output, one file per sequence (``label``: the FASTA header,
                          whose first word is the id; ``representations``, ``mean_representations``,
                          ``bos_representations``)
``.h5`` / ``.hdf5``       bio_embeddings style: one dataset per sample id, (D,), (L, D) or (K, L, D)
``.h5ad``                 AnnData: ``obsm`` entries, ``layers`` and ``X``, ids = ``obs_names``
========================  ==========================================================================

A feature file is data, never code: ``.pt`` files are read with ``torch.load(weights_only=True)``
and ``.npy``/``.npz`` with ``allow_pickle=False``; a file that needs pickle is refused.

Rows are bound to samples by the ids the file carries (h5, h5ad, ESM folders, npz ``ids``), else
by position against ``inputs`` (records from FASTA/CSV/structures: ids and content hashes, exactly
as an extraction stores them) or ``ids`` (ids only: compare then matches those samples by id
alone). Per-token features are stored as token layers and pooled (``pool``) into pooled layers.
ESM's integer layer keys are named like the ``hf:`` and ``esm2-*`` models: 0 -> ``embeddings``,
i -> ``layer.{i-1}``.

The cache stores float32 (or float16 with ``store_dtype``): float64 features are rounded to float32
on import.

Export writes one model to ``.h5ad`` (obs names = ids, one ``obsm`` entry per layer, provenance in
``uns``), ``.npz`` (ids, hashes, one array per layer, token rows), ``.parquet`` (one row per
sample: id, content hash, one list column per layer) or a folder of per-sample ``.pt`` files laid
out like ESM's. Import then export gives the same arrays and ids.
"""

from repalign.interop.exporting import export_features, export_format, sample_file_name
from repalign.interop.formats import IMPORT_FORMATS
from repalign.interop.importing import ImportRun, check_ids, import_features, read_id_list
from repalign.interop.readers import Features, detect_format, read_features

__all__ = [
    "Features", "ImportRun", "IMPORT_FORMATS", "check_ids", "detect_format", "export_features", "export_format",
    "import_features", "read_features", "read_id_list", "sample_file_name",
]
