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

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import tempfile
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from repalign.errors import RepalignError
from repalign.pooling import POOLINGS, check_pool, pool_rows

log = logging.getLogger("repalign.interop")

IMPORT_FORMATS = ("npy", "npz", "pt", "esm-pt-folder", "h5", "h5ad")
EXPORT_FORMATS = {".h5ad": "h5ad", ".npz": "npz", ".parquet": "parquet"}
#: npz keys that are not layers
NPZ_IDS, NPZ_HASHES, NPZ_TOKENS, NPZ_OFFSETS = "ids", "hashes", "tokens/", "offsets/"
#: keys of ESM extract.py per-sequence files (and of the .pt files export writes)
ESM_LABEL, ESM_TOKENS, ESM_MEAN, ESM_BOS, ESM_HASH = (
    "label", "representations", "mean_representations", "bos_representations", "content_hash")
#: file of an exported .pt folder: model, layers, provenance, ids in stored order
FOLDER_INFO = "provenance.json"
#: samples appended to the cache per batch
IMPORT_BATCH = 1024
#: rows checked for NaN/Inf at a time (bounds the memory of the check on memory-mapped files)
CHECK_ROWS = 8192


@dataclass
class Features:
    """Features read from a file, before they are bound to samples.

    pooled: layer -> (n, D) per-sample vectors; tokens: layer -> n arrays (L_i, D); cls: layer ->
    (n, D) CLS/BOS vectors. ``named`` says whether the layer names come from the file (else they
    are ``layer.0`` ... and ``layers`` may rename them).
    """

    format: str
    n: int
    order: list[str]
    pooled: dict[str, np.ndarray] = field(default_factory=dict)
    tokens: dict[str, list[np.ndarray]] = field(default_factory=dict)
    cls: dict[str, np.ndarray] = field(default_factory=dict)
    ids: list[str] | None = None
    hashes: list[str] | None = None
    named: bool = True
    key: str | None = None  # the entry of the file the features came from (e.g. "feats")


@dataclass
class ImportRun:
    """What :func:`import_features` stored."""

    model: str
    format: str
    n_samples: int
    layers: list[str]
    token_layers: list[str]
    ids_from: str  # "inputs", "ids" or "file"


# ---- reading ------------------------------------------------------------------------------------


def detect_format(path: str | os.PathLike) -> str:
    path = Path(path)
    if path.is_dir():
        return "esm-pt-folder"
    suffix = path.suffix.lower()
    formats = {".npy": "npy", ".npz": "npz", ".pt": "pt", ".pth": "pt", ".h5": "h5", ".hdf5": "h5", ".h5ad": "h5ad"}
    if suffix not in formats:
        raise RepalignError(
            f"{path}: unknown feature file type {suffix or '(no suffix)'!r}; give .npy, .npz, .pt, a folder of ESM .pt "
            "files, a bio_embeddings .h5 or an AnnData .h5ad"
        )
    return formats[suffix]


def read_features(path: str | os.PathLike, pool: str = "mean", keep_tokens: bool = True) -> Features:
    """Read a feature file (see the module docstring) into memory, validated: numbers, finite,
    consistent shapes. ``keep_tokens=False`` pools per-token rows while reading and keeps only
    the pooled vectors (less memory for large per-residue files)."""
    path = Path(path)
    if not path.exists():
        raise RepalignError(f"{path}: no such file or folder; check the path")
    fmt = detect_format(path)
    reader = {"npy": _read_npy, "npz": _read_npz, "pt": _read_pt, "esm-pt-folder": _read_esm_folder,
              "h5": _read_h5, "h5ad": _read_h5ad}[fmt]
    feats = reader(path, pool=pool, keep_tokens=keep_tokens)
    _check_features(feats, path)
    return feats


def _array(value: Any, path: Path, what: str) -> np.ndarray:
    """A float array from a numpy array or a torch tensor (any device, detached, bfloat16 widened)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise RepalignError(f"{path}: {what} has dtype {arr.dtype}; features must be numbers")
    return arr


def _strings(value: Any, path: Path, what: str) -> list[str]:
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.dtype.kind not in "US":
        raise RepalignError(f"{path}: {what} must be a 1-D array of strings, got {arr.dtype} with shape {arr.shape}")
    return [x.decode() if isinstance(x, bytes) else str(x) for x in arr.tolist()]


def _layers_from_array(arr: np.ndarray, path: Path, fmt: str, key: str | None = None) -> Features:
    """(N, D) -> one layer, (N, L, D) -> L layers named layer.0 ... (renamable)."""
    what = f"array {key!r}" if key else "the array"
    if arr.ndim == 2:
        mats = [arr]
    elif arr.ndim == 3:
        mats = [arr[:, i, :] for i in range(arr.shape[1])]
    else:
        raise RepalignError(
            f"{path}: {what} has shape {arr.shape}; give (samples, D) for one layer or (samples, layers, D)"
            + ("; a 1-D array holds one value per sample, not features" if arr.ndim == 1 else "")
        )
    names = [f"layer.{i}" for i in range(len(mats))]
    return Features(fmt, arr.shape[0], names, pooled=dict(zip(names, mats)), named=False, key=key)


def _read_npy(path: Path, **_: Any) -> Features:
    try:
        # memory-mapped: rows are read when checked and when written, a batch at a time
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise RepalignError(f"{path}: refused, it holds Python objects that only pickle can load (which could run "
                            f"code); save a numeric array ({_first(e)})") from None
    except (OSError, EOFError) as e:
        raise RepalignError(f"{path}: not a readable .npy file ({_first(e)}); write it with numpy.save") from None
    return _layers_from_array(_array(arr, path, "the array"), path, "npy")


def _read_npz(path: Path, **_: Any) -> Features:
    try:
        with np.load(path, allow_pickle=False) as z:
            entries = {}
            for key in z.files:
                try:
                    entries[key] = z[key]
                except ValueError as e:
                    raise RepalignError(
                        f"{path}: refused, entry {key!r} holds Python objects that only pickle can load (which could "
                        f"run code); save numeric arrays ({_first(e)})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise RepalignError(f"{path}: not a readable .npz file ({_first(e)}); write it with numpy.savez") from None
    ids = _strings(entries.pop(NPZ_IDS), path, "'ids'") if NPZ_IDS in entries else None
    hashes = _strings(entries.pop(NPZ_HASHES), path, "'hashes'") if NPZ_HASHES in entries else None
    tokens: dict[str, list[np.ndarray]] = {}
    for key in [k for k in entries if k.startswith(NPZ_TOKENS)]:
        layer = key[len(NPZ_TOKENS):]
        data = _array(entries.pop(key), path, f"entry {key!r}")
        if NPZ_OFFSETS + layer not in entries:
            raise RepalignError(f"{path}: {key!r} has no {NPZ_OFFSETS + layer!r}; give the (N+1,) row offsets too")
        offsets = np.asarray(entries.pop(NPZ_OFFSETS + layer))
        if (offsets.ndim != 1 or offsets.dtype.kind not in "iu" or len(offsets) < 1 or offsets[0] != 0
                or np.any(np.diff(offsets) < 0) or offsets[-1] != len(data) or data.ndim != 2):
            raise RepalignError(f"{path}: offsets of {layer!r} do not describe the rows of {key!r}; "
                                "offsets must rise from 0 to the row count")
        tokens[layer] = [data[offsets[k]:offsets[k + 1]] for k in range(len(offsets) - 1)]
    stray = [k for k in entries if k.startswith(NPZ_OFFSETS)]
    if stray:
        raise RepalignError(f"{path}: {stray} have no matching 'tokens/<layer>' entries")
    if not entries and not tokens:
        raise RepalignError(f"{path}: the .npz holds no feature arrays; save one (samples, D) array per layer")
    pooled = {}
    for key, value in entries.items():
        arr = _array(value, path, f"entry {key!r}")
        if arr.ndim != 2:
            raise RepalignError(f"{path}: entry {key!r} has shape {arr.shape}; each layer must be a (samples, D) array"
                                + ("; a 1-D array is not features" if arr.ndim == 1 else ""))
        pooled[key] = arr
    n = _common_n(path, {k: len(v) for k, v in pooled.items()} | {k: len(v) for k, v in tokens.items()})
    return Features("npz", n, list(pooled) + [t for t in tokens if t not in pooled], pooled=pooled, tokens=tokens,
                    ids=ids, hashes=hashes)


def _torch_load(path: Path) -> Any:
    try:
        import torch
    except ImportError:
        raise RepalignError(f"{path}: reading .pt files needs torch; pip install 'repalign[models]'") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RepalignError(
            f"{path}: refused, it holds Python objects beyond tensors and plain containers, which only full pickle "
            f"can load and which could run code ({_first(e)}); save tensors or dicts/lists of tensors") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise RepalignError(f"{path}: not a readable torch file ({_first(e)}); write it with torch.save") from None


def _read_pt(path: Path, pool: str = "mean", keep_tokens: bool = True, **_: Any) -> Features:
    obj = _torch_load(path)
    if isinstance(obj, dict) and ESM_LABEL in obj:
        return _esm_features([obj], [path], pool, keep_tokens)
    if isinstance(obj, dict) and "feats" in obj:  # platonic-rep: {"feats": (N, L, D), "num_params": ..., ...}
        return _layers_from_array(_array(obj["feats"], path, "'feats'"), path, "pt", key="feats")
    if isinstance(obj, dict):
        obj = dict(obj)
        ids = None
        if NPZ_IDS in obj:
            ids = obj.pop(NPZ_IDS)
            if not isinstance(ids, (list, tuple)) or not all(isinstance(i, str) for i in ids):
                raise RepalignError(f"{path}: 'ids' must be a list of strings")
            ids = list(ids)
        if not obj:
            raise RepalignError(f"{path}: the dict holds no feature tensors; give one (samples, D) tensor per layer")
        pooled = {}
        for key, value in obj.items():
            arr = _array(value, path, f"entry {key!r}")
            if arr.ndim != 2:
                raise RepalignError(f"{path}: entry {key!r} has shape {arr.shape}; each layer must be (samples, D)")
            pooled[str(key)] = arr
        n = _common_n(path, {k: len(v) for k, v in pooled.items()})
        return Features("pt", n, list(pooled), pooled=pooled, ids=ids)
    if hasattr(obj, "shape"):
        return _layers_from_array(_array(obj, path, "the tensor"), path, "pt")
    raise RepalignError(f"{path}: holds a {type(obj).__name__}; give a tensor, a dict of tensors, platonic-rep's "
                        "{'feats': ...} or an ESM extract.py file")


def _read_esm_folder(path: Path, pool: str = "mean", keep_tokens: bool = True, **_: Any) -> Features:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".pt" and not p.name.startswith("."))
    if not files:
        raise RepalignError(f"{path}: no .pt files in the folder; give the output folder of ESM's extract.py")
    feats = _esm_features([_torch_load(f) for f in files], files, pool, keep_tokens)
    return _in_exported_order(feats, path)


def _in_exported_order(feats: Features, folder: Path) -> Features:
    """Samples in the order an export wrote them (``provenance.json``), else in file-name order."""
    try:
        order = json.loads((folder / FOLDER_INFO).read_text()).get("ids")
    except (OSError, ValueError, AttributeError):
        return feats
    if not isinstance(order, list) or sorted(map(str, order)) != sorted(feats.ids):
        return feats
    at = {i: k for k, i in enumerate(feats.ids)}
    rows = [at[str(i)] for i in order]
    feats.ids = [feats.ids[k] for k in rows]
    if feats.hashes is not None:
        feats.hashes = [feats.hashes[k] for k in rows]
    for kind in ("pooled", "cls"):
        setattr(feats, kind, {l: a[rows] for l, a in getattr(feats, kind).items()})
    feats.tokens = {l: [r[k] for k in rows] for l, r in feats.tokens.items()}
    return feats


def _esm_layer_name(key: Any) -> str:
    """ESM's repr layer i is hidden state i: 0 -> embeddings, i -> layer.{i-1} (as hf: models name them)."""
    if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
        i = int(key)
        return "embeddings" if i == 0 else f"layer.{i - 1}"
    return str(key)


def _esm_features(objs: list, files: list[Path], pool: str, keep_tokens: bool) -> Features:
    """Features of ESM extract.py files, one per sample. Pooled vectors: ``mean_representations``
    for ``pool="mean"`` where the file has them, else ``pool`` over the per-token rows; ``cls``:
    ``bos_representations``."""
    ids, hashes = [], []
    tokens: dict[str, list] = {}
    pooled: dict[str, list] = {}
    cls: dict[str, list] = {}
    first_keys = None
    for obj, f in zip(objs, files):
        if not isinstance(obj, dict) or ESM_LABEL not in obj:
            raise RepalignError(f"{f}: not an ESM extract.py file (no 'label'); keep only those in the folder")
        label = str(obj[ESM_LABEL])
        if ESM_HASH in obj:  # written by export: the label is the id
            hashes.append(str(obj[ESM_HASH]))
        elif label.split():  # ESM's label is the whole FASTA header; the id is its first word
            label = label.split()[0]
        ids.append(label)
        kinds = {k: {_esm_layer_name(layer): v for layer, v in obj[k].items()}
                 for k in (ESM_TOKENS, ESM_MEAN, ESM_BOS) if isinstance(obj.get(k), dict)}
        keys = {k: list(v) for k, v in kinds.items()}
        if first_keys is None:
            first_keys = keys
            if not any(keys.get(k) for k in (ESM_TOKENS, ESM_MEAN)):
                raise RepalignError(f"{f}: no representations; run ESM's extract.py with --include mean or per_tok")
        elif keys != first_keys:
            raise RepalignError(f"{f}: holds other layers or kinds ({keys}) than {files[0].name} ({first_keys}); "
                                "give files of one extract.py run")
        rows_of = {layer: _array(v, f, f"representations[{layer}]") for layer, v in kinds.get(ESM_TOKENS, {}).items()}
        means = {layer: _array(v, f, f"mean_representations[{layer}]") for layer, v in kinds.get(ESM_MEAN, {}).items()}
        for layer, rows in rows_of.items():
            if rows.ndim != 2:
                raise RepalignError(f"{f}: representations of {layer} have shape {rows.shape}; expected (L, D)")
            if keep_tokens:
                tokens.setdefault(layer, []).append(rows)
        for layer in dict.fromkeys(list(rows_of) + list(means)):
            if pool == "mean" and layer in means:
                pooled.setdefault(layer, []).append(means[layer])
            elif pool in ("mean", "max", "last") and layer in rows_of:
                pooled.setdefault(layer, []).append(pool_rows(rows_of[layer], pool, f"{f} layer {layer}"))
            elif pool in ("max", "last"):
                raise RepalignError(f"{f}: layer {layer} has mean vectors only; {pool} pooling needs the per-token "
                                    "representations (extract.py --include per_tok), or import with --pool mean")
        for layer, value in kinds.get(ESM_BOS, {}).items():
            cls.setdefault(layer, []).append(_array(value, f, f"bos_representations[{layer}]"))
    if hashes and len(hashes) != len(ids):
        raise RepalignError(f"{files[0].parent}: some files carry a content_hash and some do not")
    order = list(dict.fromkeys([l for k in first_keys.values() for l in k]))
    feats = Features("esm-pt" if len(files) == 1 else "esm-pt-folder", len(ids), order,
                     tokens=tokens, ids=ids, hashes=hashes or None)
    for name, values in (("pooled", pooled), ("cls", cls)):
        for layer, vecs in values.items():
            if len({np.shape(v) for v in vecs}) != 1 or np.ndim(vecs[0]) != 1:
                raise RepalignError(f"{files[0].parent}: {name} vectors of {layer} differ in shape between files")
            getattr(feats, name)[layer] = np.stack(vecs)
    return feats


def _read_h5(path: Path, pool: str = "mean", keep_tokens: bool = True, **_: Any) -> Features:
    from embeddings_cache import index_per_id_h5, read_per_id_h5

    index = index_per_id_h5(path)
    arrays = read_per_id_h5(path, [d.key for d in index])
    ids = [d.id for d in index]
    rank = len(index[0].shape)
    if rank == 1:
        return Features("h5", len(ids), ["layer.0"], pooled={"layer.0": np.stack(_same_width(arrays, path))},
                        ids=ids, named=False)
    if rank == 3 and len({a.shape[0] for a in arrays}) != 1:
        raise RepalignError(f"{path}: datasets hold different numbers of layers; give (layers, L, D) alike")
    per_layer = [arrays] if rank == 2 else [[a[k] for a in arrays] for k in range(index[0].shape[0])]
    names = [f"layer.{k}" for k in range(len(per_layer))]
    feats = Features("h5", len(ids), names, ids=ids, named=False)
    for name, rows in zip(names, per_layer):
        _same_width(rows, path)
        if keep_tokens:
            feats.tokens[name] = rows
        if pool != "cls":
            feats.pooled[name] = np.stack([pool_rows(r, pool, f"{path} sample {i!r}") for r, i in zip(rows, ids)])
    return feats


def _read_h5ad(path: Path, **_: Any) -> Features:
    try:
        import anndata
    except ImportError:
        raise RepalignError(f"{path}: reading .h5ad needs anndata; pip install 'repalign[anndata]'") from None
    try:
        adata = anndata.read_h5ad(path)
    except Exception as e:  # anndata wraps HDF5 and format errors in many types
        raise RepalignError(f"{path}: not a readable AnnData file ({_first(e)}); write it with AnnData.write_h5ad") from None
    ids = [str(i) for i in adata.obs_names]
    hashes = [str(h) for h in adata.obs["content_hash"]] if "content_hash" in adata.obs else None
    pooled: dict[str, np.ndarray] = {}

    def add(name: str, value: Any, where: str) -> None:
        if hasattr(value, "toarray"):
            value = value.toarray()
        elif hasattr(value, "to_numpy"):
            value = value.to_numpy()
        arr = _array(value, path, where)
        if arr.ndim != 2:
            raise RepalignError(f"{path}: {where} has shape {arr.shape}; layers must be (samples, D)")
        if name in pooled:
            raise RepalignError(f"{path}: two matrices are named {name!r} (obsm, layers, X); rename one")
        pooled[name] = arr

    for key in adata.obsm.keys():
        add(key, adata.obsm[key], f"obsm[{key!r}]")
    if adata.n_vars:
        for key in adata.layers.keys():
            add(key, adata.layers[key], f"layers[{key!r}]")
        if adata.X is not None:
            add("X", adata.X, "X")
    if not pooled:
        raise RepalignError(f"{path}: the AnnData object holds no matrices (obsm, layers or X) to import")
    order = list(pooled)
    stored_order = adata.uns.get("layers") if hasattr(adata, "uns") else None
    if stored_order is not None and sorted(map(str, stored_order)) == sorted(order):
        order = [str(x) for x in stored_order]  # the layer order export wrote
    return Features("h5ad", adata.n_obs, order, pooled=pooled, ids=ids, hashes=hashes)


def _same_width(arrays: list[np.ndarray], path: Path) -> list[np.ndarray]:
    widths = {a.shape[-1] for a in arrays}
    if len(widths) != 1:
        raise RepalignError(f"{path}: samples have features of different widths {sorted(widths)}; give one width")
    return arrays


def _common_n(path: Path, lengths: dict[str, int]) -> int:
    if len(set(lengths.values())) != 1:
        raise RepalignError(f"{path}: layers have different sample counts {lengths}; give one row per sample in each")
    return next(iter(lengths.values()))


def _check_features(feats: Features, path: Path) -> None:
    if feats.n == 0:
        raise RepalignError(f"{path}: holds no samples")
    for kind in ("pooled", "cls"):
        for layer, arr in getattr(feats, kind).items():
            if arr.shape[0] != feats.n:
                raise RepalignError(f"{path}: layer {layer!r} has {arr.shape[0]} rows for {feats.n} samples")
            if arr.shape[1] == 0:
                raise RepalignError(f"{path}: layer {layer!r} has width 0")
            bad = sum(int((~np.isfinite(arr[i:i + CHECK_ROWS])).any(axis=1).sum())
                      for i in range(0, feats.n, CHECK_ROWS))
            if bad:
                raise RepalignError(f"{path}: layer {layer!r} holds NaN or infinite values in {bad} samples; "
                                    "fix or drop those samples before importing")
    for layer, rows in feats.tokens.items():
        if len(rows) != feats.n:
            raise RepalignError(f"{path}: token layer {layer!r} has {len(rows)} samples, expected {feats.n}")
        if any(r.ndim != 2 for r in rows) or len({r.shape[1] for r in rows}) != 1:
            raise RepalignError(f"{path}: token rows of {layer!r} must be (L_i, D) with one D")
        if not all(np.isfinite(r).all() for r in rows):
            raise RepalignError(f"{path}: token layer {layer!r} holds NaN or infinite values; fix them before importing")


# ---- binding to samples ------------------------------------------------------------------------


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Ids, one per line (blank lines ignored; UTF-8, a byte-order mark is dropped; ``-``: stdin)."""
    import sys

    if str(path) == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(path).read_bytes().decode("utf-8-sig")
        except FileNotFoundError:
            raise RepalignError(f"{path}: no such ids file; check the path") from None
        except UnicodeDecodeError:
            raise RepalignError(f"{path}: not UTF-8 text; give one id per line") from None
    ids = [line.strip() for line in text.splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise RepalignError(f"{path}: no ids; give one id per line")
    return ids


def check_ids(ids: Sequence[str], where: str) -> list[str]:
    """Ids must be non-empty strings without NUL or line breaks, each given once."""
    ids = list(ids)
    for i in ids:
        if not isinstance(i, str) or not i.strip():
            raise RepalignError(f"{where}: sample id {i!r} is empty; give every sample an id")
        if any(c in i for c in "\x00\n\r"):
            raise RepalignError(f"{where}: sample id {i!r} holds a NUL or line break; give ids on one line")
    seen: set[str] = set()
    dups = sorted({i for i in ids if i in seen or seen.add(i)})
    if dups:
        shown = ", ".join(repr(d) for d in dups[:5])
        raise RepalignError(f"{where}: sample ids given more than once: {shown}; give each sample once")
    return ids


def _bind(feats: Features, path: Path, inputs, ids) -> tuple[list[str], list[str], str]:
    """(ids, content hashes, where the ids came from) for the rows of ``feats``."""
    from embeddings_cache import UNKNOWN_HASH

    if inputs is not None and ids is not None:
        raise RepalignError("give either inputs (ids and content hashes) or ids, not both")
    if feats.ids is not None:
        row_ids = check_ids(feats.ids, str(path))
        if inputs is not None:
            by_id = {r.id: r.content_hash for r in inputs}
            missing = [i for i in row_ids if i not in by_id]
            if missing:
                raise RepalignError(
                    f"{path}: {len(missing)} sample id(s) of the file are not in the inputs (first: {missing[:3]}); "
                    "give the inputs the features were computed from")
            hashes = [by_id[i] for i in row_ids]
            if feats.hashes is not None:
                changed = [i for i, h, g in zip(row_ids, hashes, feats.hashes) if h != g and g != UNKNOWN_HASH]
                if changed:
                    raise RepalignError(f"{path}: samples {changed[:3]} carry other content hashes than the inputs; "
                                        "the inputs changed since the features were computed")
            return row_ids, hashes, "inputs"
        if ids is not None:
            given = check_ids(ids, "ids")
            if sorted(given) != sorted(row_ids):
                extra = sorted(set(given) - set(row_ids))[:3]
                lacking = sorted(set(row_ids) - set(given))[:3]
                raise RepalignError(f"{path} names its samples, and the ids given differ (only in ids: {extra}, "
                                    f"only in the file: {lacking}); drop --ids to use the file's ids")
        hashes = feats.hashes if feats.hashes is not None else [UNKNOWN_HASH] * len(row_ids)
        return row_ids, list(hashes), "file"
    if inputs is None and ids is None:
        raise RepalignError(f"{path} does not name its samples; give the inputs in row order (--inputs) or their "
                            "ids (--ids FILE, one per line)")
    if inputs is not None:
        inputs = list(inputs)
        row_ids = check_ids([r.id for r in inputs], "inputs")
        hashes, source = [r.content_hash for r in inputs], "inputs"
    else:
        row_ids = check_ids(ids, "ids")
        hashes, source = [UNKNOWN_HASH] * len(row_ids), "ids"
    if len(row_ids) != feats.n:
        raise RepalignError(f"{path}: {feats.n} rows of features but {len(row_ids)} {source}; give one "
                            f"{'input' if source == 'inputs' else 'id'} per row, in row order")
    return row_ids, hashes, source


def _select_layers(feats: Features, layers: Sequence[str] | None, path: Path) -> None:
    """Rename unnamed layers (``layers`` = new names) or keep the named ones ``layers`` selects."""
    import fnmatch

    from embeddings_cache.format import check_name

    if layers:
        layers = list(layers)
        if not feats.named:
            if len(layers) != len(feats.order):
                raise RepalignError(f"{path} holds {len(feats.order)} unnamed layer(s); give that many names, "
                                    f"got {len(layers)}: {layers}")
            rename = dict(zip(feats.order, layers))
            for kind in ("pooled", "tokens", "cls"):
                setattr(feats, kind, {rename[k]: v for k, v in getattr(feats, kind).items()})
            feats.order = layers
        else:
            chosen = []
            for pat in layers:
                hits = [n for n in feats.order if fnmatch.fnmatchcase(n, pat)]
                if not hits:
                    raise RepalignError(f"{path}: no layer matches {pat!r}; its layers: {', '.join(feats.order[:10])}")
                chosen.extend(h for h in hits if h not in chosen)
            feats.order = [n for n in feats.order if n in chosen]
            for kind in ("pooled", "tokens", "cls"):
                setattr(feats, kind, {k: v for k, v in getattr(feats, kind).items() if k in chosen})
    try:
        for name in feats.order:
            check_name(name, "layer")
    except RepalignError as e:
        raise RepalignError(f"{path}: {e}") from None


def import_features(
    path: str | os.PathLike,
    cache: str | os.PathLike,
    model: str,
    *,
    inputs=None,
    ids: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
    pool: str = "mean",
    keep_tokens: bool = True,
    store_dtype: str = "float32",
    overwrite: bool = False,
) -> ImportRun:
    """Store the features of a file (see the module docstring) as ``model`` in ``cache``.

    inputs: records (:func:`repalign.inputs.read_inputs`) naming the rows: ids and content hashes,
        so the model compares with extracted ones exactly as those compare with each other;
    ids: sample ids only (no content hashes: compare matches by id alone and says so); neither is
        needed when the file names its samples (then inputs only add the hashes).
    layers: names for the layers of an unnamed array (``.npy``, tensors, bio_embeddings), or the
        layers (names or patterns) to keep of a file that names them.
    pool: how per-token rows become per-sample vectors (mean, max, last; cls from ESM's
        ``bos_representations``); keep_tokens: store the per-token rows too (token layers).
    Everything is read and checked before the cache is opened: bad input leaves it unchanged. An
    existing ``model`` is an error unless ``overwrite``.
    """
    from embeddings_cache import Cache, CacheWriter
    from embeddings_cache.format import check_name

    from repalign.models._common import package_versions, sha256_of_file, sha256_of_files

    path, cache = Path(path), Path(cache)
    check_name(model, "model")
    check_pool(pool)
    if store_dtype not in ("float32", "float16"):
        raise RepalignError(f"unknown storage dtype {store_dtype!r}; use float32 or float16")
    if cache.exists() and not overwrite:
        with Cache(cache) as c:
            if model in c.models:
                raise RepalignError(f"model {model!r} is already in {cache}; pass --overwrite to replace it, "
                                    "or import under another name")
    feats = read_features(path, pool=pool, keep_tokens=keep_tokens)
    row_ids, hashes, source = _bind(feats, path, inputs, ids)
    _select_layers(feats, layers, path)
    if pool == "cls":
        if not feats.cls:
            raise RepalignError(f"{path} holds no CLS/BOS vectors; import with --pool mean, max or last")
        feats.pooled = dict(feats.cls)
    else:
        for layer, rows in feats.tokens.items():  # token rows without pooled vectors in the file
            if layer not in feats.pooled:
                feats.pooled[layer] = np.stack([pool_rows(r, pool, f"{path} sample {i!r} layer {layer}")
                                                for r, i in zip(rows, row_ids)])
    pooled_layers = [l for l in feats.order if l in feats.pooled]
    token_layers = [l for l in feats.order if l in feats.tokens] if keep_tokens else []
    if not pooled_layers and not token_layers:
        raise RepalignError(f"{path}: no layer left to import; check --layers and --pool")

    digest = sha256_of_files(sorted(p for p in path.iterdir() if p.suffix == ".pt")) if path.is_dir() \
        else sha256_of_file(path)
    source_info = {"path": str(path.resolve()), "format": feats.format, "sha256": digest, "entry": feats.key,
                   "ids_from": source}
    prov = {
        "model": model, "family": "imported", "source": source_info,
        "packages": package_versions("numpy", "torch", "anndata", "repalign"),
        "options": {"pool": pool, "token_layers": token_layers, "store_dtype": store_dtype, "source_sha256": digest,
                    "format": feats.format},
    }
    with CacheWriter(cache, model, prov, layers=pooled_layers, token_layers=token_layers, dtype=store_dtype,
                     overwrite=overwrite) as writer:
        for start in range(0, feats.n, IMPORT_BATCH):
            stop = min(start + IMPORT_BATCH, feats.n)
            writer.append(row_ids[start:stop], hashes[start:stop],
                          {l: feats.pooled[l][start:stop] for l in pooled_layers},
                          tokens={l: feats.tokens[l][start:stop] for l in token_layers})
    return ImportRun(model, feats.format, feats.n, pooled_layers, token_layers, source)


# ---- export -------------------------------------------------------------------------------------


def export_format(out: str | os.PathLike) -> str:
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix in EXPORT_FORMATS:
        return EXPORT_FORMATS[suffix]
    if not suffix or out.is_dir() or str(out).endswith(os.sep):
        return "pt-folder"
    raise RepalignError(f"{out}: cannot export to {suffix!r}; give .h5ad, .npz, .parquet, or a folder name "
                        "(one .pt file per sample, like ESM's extract.py)")


def export_features(cache: str | os.PathLike, model: str, out: str | os.PathLike, *,
                    layers: Sequence[str] | None = None, overwrite: bool = False) -> Path:
    """Write one model of a cache to ``out`` (format from its suffix, see the module docstring).

    layers: pooled and token layers to write (names or patterns; default all). The file appears
    whole or not at all (written under a temporary name, then renamed); an existing ``out`` is
    replaced only with ``overwrite``.
    """
    import fnmatch

    from embeddings_cache import Cache

    out = Path(out)
    fmt = export_format(out)
    if out.exists() and not overwrite:
        raise RepalignError(f"{out} already exists; pass --overwrite to replace it, or choose another name")
    if not out.parent.is_dir():
        raise RepalignError(f"folder {out.parent} does not exist; create it first")
    with Cache(cache) as c:
        if model not in c.models:
            raise RepalignError(f"model {model!r} is not in {cache}; it holds: {', '.join(c.models) or 'no models'}")
        m = c[model]
        pooled, tokens = m.layers, m.token_layers
        if layers:
            chosen = set()
            for pat in layers:
                hits = [n for n in pooled + tokens if fnmatch.fnmatchcase(n, pat)]
                if not hits:
                    raise RepalignError(f"model {model!r} has no layer matching {pat!r}; "
                                        f"its layers: {', '.join((pooled + tokens)[:10])}")
                chosen.update(hits)
            pooled = [l for l in pooled if l in chosen]
            tokens = [l for l in tokens if l in chosen]
        if fmt in ("h5ad", "parquet") and tokens:
            log.warning("model %s: token layers %s are not written to %s (per-sample rows only); export them to "
                        ".npz or a folder of .pt files", model, tokens, fmt)
        if fmt in ("h5ad", "parquet") and not pooled:
            raise RepalignError(f"model {model!r} has no pooled layers to write to {fmt}; export token layers to "
                                ".npz or a folder, or pool them first (repalign cache repool)")
        tmp = _temporary(out)
        try:
            {"h5ad": _write_h5ad, "npz": _write_npz, "parquet": _write_parquet, "pt-folder": _write_pt_folder}[fmt](
                m, pooled, tokens, tmp)
            if out.exists():
                if out.is_dir() and not out.is_symlink():
                    shutil.rmtree(out)
                else:
                    out.unlink()
            os.replace(tmp, out)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.exists():
                tmp.unlink()
    return out


def _temporary(out: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    os.unlink(name)
    return Path(name)


def _write_h5ad(m, pooled: list[str], tokens: list[str], tmp: Path) -> None:
    try:
        import anndata
    except ImportError:
        raise RepalignError("exporting to .h5ad needs anndata; pip install 'repalign[anndata]'") from None
    adata = m.to_anndata(layers=pooled)
    settings = getattr(anndata, "settings", None)
    if settings is not None and hasattr(settings, "allow_write_nullable_strings"):
        # pandas >= 3 stores strings as arrow arrays; anndata writes them only when allowed
        with settings.override(allow_write_nullable_strings=True):
            adata.write_h5ad(tmp)
    else:
        adata.write_h5ad(tmp)


def _write_npz(m, pooled: list[str], tokens: list[str], tmp: Path) -> None:
    arrays: dict[str, np.ndarray] = {NPZ_IDS: np.asarray(m.ids, dtype=str), NPZ_HASHES: np.asarray(m.hashes, dtype=str)}
    for layer in pooled:
        if layer in (NPZ_IDS, NPZ_HASHES):
            raise RepalignError(f"layer {layer!r} would clash with the npz entry of the same name; export to .h5ad")
        arrays[layer] = m[layer]
    for layer in tokens:
        data, offsets = m.cache.read_tokens(m.name, layer)
        arrays[NPZ_TOKENS + layer], arrays[NPZ_OFFSETS + layer] = data, offsets
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _write_parquet(m, pooled: list[str], tokens: list[str], tmp: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise RepalignError("exporting to .parquet needs pyarrow; pip install 'repalign[parquet]'") from None
    columns = {"id": pa.array(m.ids, pa.string()), "content_hash": pa.array(m.hashes, pa.string())}
    for layer in pooled:
        if layer in columns:
            raise RepalignError(f"layer {layer!r} would clash with the column of the same name; export to .h5ad")
        x = np.ascontiguousarray(m[layer])
        columns[layer] = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    for name in m.outputs:
        columns.setdefault(name, pa.array(m.output(name)))
    meta = {"repalign.model": m.name, "repalign.layers": json.dumps(pooled),
            "repalign.provenance": json.dumps(m.provenance, sort_keys=True)}
    table = pa.table(columns).replace_schema_metadata(meta)
    pq.write_table(table, tmp)


def _write_pt_folder(m, pooled: list[str], tokens: list[str], tmp: Path) -> None:
    try:
        import torch
    except ImportError:
        raise RepalignError("exporting .pt files needs torch; pip install 'repalign[models]'") from None
    tmp.mkdir()
    ids, hashes = m.ids, m.hashes
    token_rows = {layer: m.tokens(layer) for layer in tokens}
    means = {layer: m[layer] for layer in pooled}
    names = set()
    for k, (sample, digest) in enumerate(zip(ids, hashes)):
        obj: dict[str, Any] = {ESM_LABEL: sample, ESM_HASH: digest,
                               ESM_MEAN: {l: torch.from_numpy(np.array(means[l][k])) for l in pooled}}
        if tokens:
            obj[ESM_TOKENS] = {l: torch.from_numpy(np.array(token_rows[l][k])) for l in tokens}
        name = sample_file_name(sample, k)
        if name in names:
            name = f"{k:08d}.pt"
        names.add(name)
        torch.save(obj, tmp / name)
    info = {"model": m.name, "pooled_layers": pooled, "token_layers": tokens, "provenance": m.provenance, "ids": ids}
    (tmp / FOLDER_INFO).write_text(json.dumps(info, indent=2, sort_keys=True))


def sample_file_name(sample: str, index: int) -> str:
    """A file name for a sample's .pt file: the id, percent-encoded where a file name cannot hold it."""
    name = urllib.parse.quote(sample, safe="-_.@+=,") + ".pt"
    if name.startswith(".") or len(name.encode()) > 200:
        name = f"{index:08d}.pt"
    return name


def _first(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


__all__ = ["Features", "ImportRun", "IMPORT_FORMATS", "POOLINGS", "export_features", "import_features",
           "read_features", "read_id_list"]
