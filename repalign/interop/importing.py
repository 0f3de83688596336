"""Binding features to samples and storing them: :func:`import_features` (``repalign cache import``)."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from embeddings_cache import UNKNOWN_HASH, Cache, CacheWriter
from embeddings_cache.format import CACHE_COMPRESSION, check_name
from repalign.errors import RepalignError
from repalign.extract_options import COMPRESSIONS
from repalign.interop.formats import CHECK_ROWS
from repalign.interop.readers import Features, read_features
from repalign.models import package_versions, sha256_of_file, sha256_of_files
from repalign.pooling import check_pool, pool_rows

#: samples appended to the cache per batch
IMPORT_BATCH = 1024


@dataclass
class ImportRun:
    """What :func:`import_features` stored."""

    model: str
    format: str
    n_samples: int
    layers: list[str]
    token_layers: list[str]
    ids_from: str  # "inputs", "ids" or "file"
    resumed: int = 0  # samples already stored by an interrupted run of the same import, not written again


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Ids, one per line (blank lines ignored; UTF-8, a byte-order mark is dropped; ``-``: stdin)."""
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
    repeated: set[str] = set()
    for i in ids:
        (repeated if i in seen else seen).add(i)
    dups = sorted(repeated)
    if dups:
        shown = ", ".join(repr(d) for d in dups[:5])
        raise RepalignError(f"{where}: sample ids given more than once: {shown}; give each sample once")
    return ids


def _bind(feats: Features, path: Path, inputs, ids) -> tuple[list[str], list[str], str]:
    """(ids, content hashes, where the ids came from) for the rows of ``feats``."""
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
                                    f"only in the file: {lacking}); drop ids= to use the file's ids")
        hashes = feats.hashes if feats.hashes is not None else [UNKNOWN_HASH] * len(row_ids)
        return row_ids, list(hashes), "file"
    if inputs is None and ids is None:
        raise RepalignError(f"{path} does not name its samples; give the inputs in row order (inputs=) or their "
                            "ids in row order (ids=)")
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
            chosen: list[str] = []
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
    max_member_bytes: int | None = None,
    compression: str | None = None,
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
    max_member_bytes: the largest member of the file to read, replacing the default allocation
        bound (:mod:`embeddings_cache.untrusted`), for trusted files with large members.
    compression: ``gzip``, ``lzf`` or ``none`` for the new model; None: gzip in a new cache, the
        compression of the cache's models in an existing one.
    Everything is read and checked before the cache is opened: bad input leaves it unchanged. An
    existing ``model`` is an error unless ``overwrite``. The import is a transaction: the model
    appears (or replaces the old one) only when every sample is stored; a failed or interrupted
    import leaves the cache's models as they were, its stored batches kept aside (``repalign cache
    info`` names them), and running the same import again completes it without redoing them,
    while an import of another file (or with other options) discards them.
    """
    path, cache = Path(path), Path(cache)
    check_name(model, "model")
    check_pool(pool)
    if store_dtype not in ("float32", "float16"):
        raise RepalignError(f"unknown storage dtype {store_dtype!r}; use float32 or float16")
    if compression is not None and compression not in COMPRESSIONS:
        raise RepalignError(f"unknown compression {compression!r}; use gzip, lzf or none")
    if cache.exists() and not overwrite:
        with Cache(cache) as c:
            if model in c.models:
                raise RepalignError(f"model {model!r} is already in {cache}; pass overwrite=True to replace it, "
                                    "or import under another name")
    feats = read_features(path, pool=pool, keep_tokens=keep_tokens, max_member_bytes=max_member_bytes)
    row_ids, hashes, source = _bind(feats, path, inputs, ids)
    _select_layers(feats, layers, path)
    _pool(feats, pool, path, row_ids)
    pooled_layers = [l for l in feats.order if l in feats.pooled]
    token_layers = [l for l in feats.order if l in feats.tokens] if keep_tokens else []
    if not pooled_layers and not token_layers:
        raise RepalignError(f"{path}: no layer left to import; check layers= and pool=")

    _check_storable(feats, pooled_layers, token_layers, store_dtype, path, row_ids)
    prov = _provenance(feats, path, model, source, pool, token_layers, store_dtype)
    # how rows are bound to samples is part of the run: a resumed import with other --ids/--inputs
    # (a corrected ids file) is another run, so its staged batches are discarded, not kept
    prov["options"]["binding_sha256"] = _binding_digest(row_ids, hashes)
    # staged: the model appears whole when the writer closes without an error, or not at all; an
    # interrupted or failed run is resumed by the same command (same file and options)
    with CacheWriter(cache, model, prov, layers=pooled_layers, token_layers=token_layers, dtype=store_dtype,
                     overwrite=overwrite, staged=True, compression=compression or CACHE_COMPRESSION) as writer:
        stored = writer.stored()
        todo = np.array([k for k, i in enumerate(row_ids) if i not in stored], dtype=np.int64)
        for start in range(0, len(todo), IMPORT_BATCH):
            rows = todo[start:start + IMPORT_BATCH]
            writer.append([row_ids[k] for k in rows], [hashes[k] for k in rows],
                          {l: _rows(feats.pooled[l], rows) for l in pooled_layers},
                          tokens={l: [feats.tokens[l][k] for k in rows] for l in token_layers})
    return ImportRun(model, feats.format, feats.n, pooled_layers, token_layers, source, resumed=feats.n - len(todo))


def _binding_digest(row_ids: list[str], hashes: list[str]) -> str:
    """SHA-256 of the (row id, content hash) pairs in row order."""
    total = hashlib.sha256()
    for i, h in zip(row_ids, hashes):
        total.update(f"{i}\t{h}\n".encode())
    return total.hexdigest()


def _rows(arr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of an array (a memory-mapped file's too): a slice when they are consecutive."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1:
        return arr[int(rows[0]):int(rows[-1]) + 1]
    return arr[rows]


def _check_storable(feats: Features, pooled_layers: list[str], token_layers: list[str], store_dtype: str, path: Path,
                    row_ids: list[str]) -> None:
    """Every value fits the storage dtype, checked before anything is written (a batch would
    otherwise fail in the middle of the import)."""
    limit = float(np.finfo(store_dtype).max)
    fix = ("import with store_dtype='float32'" if store_dtype == "float16"
           else "fix or drop that sample before importing")
    arrays: list[tuple[str, np.ndarray, int | None]] = [(layer, feats.pooled[layer], None) for layer in pooled_layers]
    arrays += [(layer, rows, k) for layer in token_layers for k, rows in enumerate(feats.tokens[layer])]
    for layer, arr, sample in arrays:
        for start in range(0, len(arr), CHECK_ROWS):
            block = np.asarray(arr[start:start + CHECK_ROWS])
            if not block.size:
                continue
            over = np.abs(block.reshape(len(block), -1)).max(axis=1) > limit
            if over.any():
                k = sample if sample is not None else start + int(np.argmax(over))
                raise RepalignError(f"{path}: layer {layer!r} of sample {row_ids[k]!r} holds values beyond the "
                                    f"{store_dtype} range (+-{limit:.6g}); {fix}")


def _pool(feats: Features, pool: str, path: Path, row_ids: list[str]) -> None:
    """Per-sample vectors of every layer: the file's CLS/BOS vectors (``pool='cls'``), else the
    file's pooled vectors, else the token rows pooled here."""
    if pool == "cls":
        if not feats.cls:
            raise RepalignError(f"{path} holds no CLS/BOS vectors; import with pool='mean' (or max, last)")
        feats.pooled = dict(feats.cls)
        return
    for layer, rows in feats.tokens.items():  # token rows without pooled vectors in the file
        if layer not in feats.pooled:
            feats.pooled[layer] = np.stack([pool_rows(r, pool, f"{path} sample {i!r} layer {layer}")
                                            for r, i in zip(rows, row_ids)])


def _provenance(feats: Features, path: Path, model: str, source: str, pool: str, token_layers: list[str],
                store_dtype: str) -> dict:
    """The imported model's provenance: the source file (path, format, SHA-256) and how it was stored."""
    digest = sha256_of_files(feats.files) if feats.files is not None else sha256_of_file(path)
    source_info = {"path": str(path.resolve()), "format": feats.format, "sha256": digest, "entry": feats.key,
                   "ids_from": source}
    return {
        "model": model, "family": "imported", "source": source_info,
        "packages": package_versions("numpy", "torch", "anndata", "repalign"),
        "options": {"pool": pool, "token_layers": token_layers, "store_dtype": store_dtype, "source_sha256": digest,
                    "format": feats.format},
    }
