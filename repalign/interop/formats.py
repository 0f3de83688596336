"""Shared names of the interop package: file formats and the keys used inside them."""

IMPORT_FORMATS = ("npy", "npz", "pt", "esm-pt-folder", "h5", "h5ad", "parquet")
EXPORT_FORMATS = {".h5ad": "h5ad", ".npz": "npz", ".parquet": "parquet"}
#: npz keys that are not layers
NPZ_IDS, NPZ_HASHES, NPZ_TOKENS, NPZ_OFFSETS = "ids", "hashes", "tokens/", "offsets/"
#: keys of ESM extract.py per-sequence files (and of the .pt files export writes)
ESM_LABEL, ESM_TOKENS, ESM_MEAN, ESM_BOS, ESM_HASH = (
    "label", "representations", "mean_representations", "bos_representations", "content_hash")
#: file of an exported .pt folder: model, layers, provenance, ids in stored order
FOLDER_INFO = "provenance.json"
#: rows checked for NaN/Inf at a time (bounds the memory of the check on memory-mapped files)
CHECK_ROWS = 8192


def first_line(e: BaseException) -> str:
    """An exception's message, cut to its first line, for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
