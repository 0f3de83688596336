"""The journal: each completed batch is a small HDF5 "part" file next to the cache; consolidation
copies the main file, appends the parts to the copy and atomically replaces the main file.

Why: HDF5 keeps metadata in memory and writes it back later, so a process killed while appending
in place can leave a file that no longer opens. Here the main file is only ever replaced whole by a
complete, fsynced file (``os.replace`` is atomic), and a part becomes visible only once complete
(written under a temporary name, fsynced, renamed). The main file records the uuid of every part it
contains, so a kill between the replace and the deletion of the parts never counts a batch twice.
The guarantees are spelled out in docs/cache-format.md.
"""

from __future__ import annotations

import os
import shutil
import uuid as uuidlib
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from embeddings_cache.format import (
    APPLIED_PARTS,
    HASH_DTYPE,
    HASHES,
    ID_DTYPE,
    IDS,
    JOURNAL_GROUP,
    MODELS_GROUP,
    OUTPUTS,
    POOLED,
    TMP_PREFIX,
    TOKEN_DATA,
    TOKEN_OFFSETS,
    TOKENS,
    UUID_DTYPE,
    CacheError,
    check_format,
    chunk_rows,
    consolidating_path,
    filter_options,
    from_json,
    fsync_path,
    list_parts,
    open_h5,
    parts_dir,
    read_strings,
    write_root_attrs,
)

_CHUNK_CACHE_BYTES = 4 << 20  # per open dataset: a few ~1 MB chunks
_CHUNK_CACHE_SLOTS = 100_003  # a prime, as HDF5 recommends for the hash table of cached chunks

#: attributes describing a model; stored on the model group and on every part
HEADER_ATTRS = ("provenance", "layers", "token_layers", "outputs", "dtype", "compression")


def write_part(
    path: Path,
    seq: int,
    model: str,
    header: dict[str, str],
    starts_model: bool,
    ids: list[str],
    hashes: list[str],
    pooled: dict[str, np.ndarray],
    tokens: dict[str, tuple[np.ndarray, np.ndarray]],
    outputs: dict[str, np.ndarray],
) -> str:
    """Write one batch as a part file; durable (fsynced and renamed) when this returns its uuid.

    starts_model: applying this part (re)creates the model group from ``header``, dropping what
    was stored before (a new model, or a model being overwritten).
    """
    folder = parts_dir(path)
    if not folder.is_dir():
        folder.mkdir()
        fsync_path(folder.parent)  # the new folder's entry must survive a power loss too
    part_uuid = uuidlib.uuid4().hex
    tmp = folder / f"{TMP_PREFIX}{part_uuid}.h5"
    final = folder / f"{seq:08d}-{part_uuid}.h5"
    try:
        with h5py.File(tmp, "w", locking=False) as f:
            write_root_attrs(f)
            f.attrs["part_uuid"] = part_uuid
            f.attrs["model"] = model
            f.attrs["starts_model"] = bool(starts_model)
            for key in HEADER_ATTRS:
                f.attrs[key] = header[key]
            f.create_dataset(IDS, data=np.array(ids, dtype=object), dtype=ID_DTYPE)
            f.create_dataset(HASHES, data=np.array(hashes, dtype=HASH_DTYPE))
            for layer, arr in pooled.items():
                f.create_dataset(f"{POOLED}/{layer}", data=arr)
            for layer, (data, offsets) in tokens.items():
                f.create_dataset(f"{TOKENS}/{layer}/{TOKEN_DATA}", data=data)
                f.create_dataset(f"{TOKENS}/{layer}/{TOKEN_OFFSETS}", data=offsets)
            for name, arr in outputs.items():
                f.create_dataset(f"{OUTPUTS}/{name}", data=arr)
        fsync_path(tmp)
        os.replace(tmp, final)
        fsync_path(folder)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    return part_uuid


def applied_uuids(f: h5py.File) -> set[str]:
    """Uuids of the parts already consolidated into a main file."""
    if JOURNAL_GROUP in f and APPLIED_PARTS in f[JOURNAL_GROUP]:
        return set(read_strings(f[JOURNAL_GROUP][APPLIED_PARTS]))
    return set()


class _Appender:
    """Appends rows to resizable chunked datasets, creating them on first use.

    Datasets stay open between batches: HDF5 compresses a chunk when it leaves the chunk cache or
    its dataset is closed, so the partly filled last chunk is compressed once per consolidation
    rather than once per batch.
    """

    def __init__(self) -> None:
        self._open: dict[str, h5py.Dataset] = {}

    def dataset(self, group: h5py.Group, name: str) -> h5py.Dataset:
        key = f"{group.name}/{name}"
        if key not in self._open:
            self._open[key] = group[name]
        return self._open[key]

    def append(self, group: h5py.Group, name: str, arr: np.ndarray, compression: str | None) -> None:
        if name not in group:
            if arr.ndim == 1:
                rows = 65536 if arr.dtype.kind != "O" else 4096
            else:
                rows = chunk_rows(int(np.prod(arr.shape[1:])), arr.dtype.itemsize)
            group.create_dataset(
                name,
                shape=(0,) + arr.shape[1:],
                maxshape=(None,) + arr.shape[1:],
                dtype=ID_DTYPE if arr.dtype.kind == "O" else arr.dtype,
                chunks=(rows,) + arr.shape[1:],
                **filter_options(compression, checksum=arr.dtype.kind != "O"),  # HDF5 cannot checksum strings
            )
        ds = self.dataset(group, name)
        start = ds.shape[0]
        ds.resize(start + arr.shape[0], axis=0)
        if arr.shape[0]:
            ds[start:] = arr

    def forget(self, group_name: str) -> None:
        """Drop the open datasets under a group about to be deleted."""
        for key in [k for k in self._open if k.startswith(group_name + "/")]:
            del self._open[key]

    def close(self) -> None:
        self._open.clear()


def _new_model_group(models: h5py.Group, model: str, header: Any, out: _Appender) -> h5py.Group:
    g = models.create_group(model)
    for key in HEADER_ATTRS:
        g.attrs[key] = header[key]
    compression = _compression(header)
    out.append(g, IDS, np.array([], dtype=object), compression)
    out.append(g, HASHES, np.array([], dtype=HASH_DTYPE), compression)
    return g


def _compression(header: Any) -> str | None:
    value = header["compression"]
    if isinstance(value, bytes):
        value = value.decode()
    return None if value == "none" else value


def _apply_part(f: h5py.File, part: Path, out: _Appender) -> str:
    """Append one part's batch to an open main file; return the part's uuid."""
    with open_h5(part) as p:
        check_format(p, part)
        model = str(p.attrs["model"])
        models = f.require_group(MODELS_GROUP)
        if bool(p.attrs["starts_model"]):
            if model in models:
                out.forget(models[model].name)
                del models[model]
            g = _new_model_group(models, model, p.attrs, out)
        elif model in models:
            g = models[model]
        else:
            raise CacheError(
                f"journal part {part} continues model {model!r}, which the cache does not hold; "
                f"the journal is damaged: delete the folder {part.parent} (its batches are lost) and resume"
            )
        compression = _compression(g.attrs)
        n = p[IDS].shape[0]
        if n:
            if out.dataset(g, IDS).shape[0] == 0:
                # the first batch fixes the output names of this model
                g.attrs["outputs"] = p.attrs["outputs"]
            out.append(g, IDS, np.array(read_strings(p[IDS]), dtype=object), compression)
            out.append(g, HASHES, p[HASHES][()], compression)
            for layer in p.get(POOLED, {}):
                out.append(g.require_group(POOLED), layer, p[POOLED][layer][()], compression)
            for layer in p.get(TOKENS, {}):
                tg = g.require_group(TOKENS).require_group(layer)
                data = p[TOKENS][layer][TOKEN_DATA][()]
                offsets = p[TOKENS][layer][TOKEN_OFFSETS][()]
                if TOKEN_OFFSETS not in tg:
                    out.append(tg, TOKEN_OFFSETS, np.zeros(1, dtype=np.int64), compression)
                base = int(out.dataset(tg, TOKEN_OFFSETS)[-1])
                out.append(tg, TOKEN_DATA, data, compression)
                out.append(tg, TOKEN_OFFSETS, offsets[1:] + base, compression)
            for name in p.get(OUTPUTS, {}):
                out.append(g.require_group(OUTPUTS), name, p[OUTPUTS][name][()], compression)
        return str(p.attrs["part_uuid"])


def _parts_replacing_stored_models(main: Path, pending: list[tuple[int, str, Path]]) -> set[str]:
    """Models with stored rows that a pending part re-creates (overwrite): their old data is dropped."""
    starts = set()
    for _, _, part in pending:
        with open_h5(part) as p:
            if bool(p.attrs["starts_model"]):
                starts.add(str(p.attrs["model"]))
    if not starts or not main.exists():
        return set()
    with open_h5(main) as f:
        models = f.get(MODELS_GROUP, {})
        return {m for m in starts if m in models and models[m][IDS].shape[0] > 0}


def create_empty(path: Path) -> None:
    """Create an empty cache file atomically (so a kill never leaves a half-made main file)."""
    tmp = consolidating_path(path)
    with h5py.File(tmp, "w", locking=False) as f:
        write_root_attrs(f)
        f.create_group(MODELS_GROUP)
        _Appender().append(f.create_group(JOURNAL_GROUP), APPLIED_PARTS, np.array([], dtype=UUID_DTYPE), None)
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def remove_stale_temporaries(path: Path) -> None:
    """Delete leftovers of a killed writer: parts never completed and an unfinished consolidation.

    Only a writer holding the lock may call this.
    """
    consolidating_path(path).unlink(missing_ok=True)
    folder = parts_dir(path)
    if folder.is_dir():
        for name in os.listdir(folder):
            if name.startswith(TMP_PREFIX):
                (folder / name).unlink(missing_ok=True)


def consolidate(path: Path) -> int:
    """Move every completed part into the main file; return how many batches were moved.

    Only a writer holding the lock may call this. At any kill point the cache on disk is either the
    old main file plus the parts, or the new main file (plus parts it already records as applied).
    """
    parts = list_parts(path)
    if not parts:
        return 0
    with open_h5(path) as f:
        check_format(f, path)
        done = applied_uuids(f)
    pending = [p for p in parts if p[1] not in done]
    if pending:
        tmp = consolidating_path(path)
        replaced = _parts_replacing_stored_models(path, pending)
        if replaced:
            _rebuild_without(path, tmp, replaced)  # reclaims the space of the overwritten models
        else:
            shutil.copyfile(path, tmp)
        # a chunk cache larger than a chunk lets the batches fill the last chunk in memory and
        # compress it once, instead of re-reading and re-compressing it for every batch
        with h5py.File(tmp, "r+", locking=False, rdcc_nbytes=_CHUNK_CACHE_BYTES, rdcc_nslots=_CHUNK_CACHE_SLOTS) as f:
            out = _Appender()
            uuids = [_apply_part(f, part, out) for _, _, part in pending]
            out.append(f.require_group(JOURNAL_GROUP), APPLIED_PARTS, np.array(uuids, dtype=UUID_DTYPE), None)
            out.close()
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    for _, _, part in parts:
        part.unlink(missing_ok=True)
    fsync_path(parts_dir(path))
    return len(pending)


def _rebuild_without(src_path: Path, dst_path: Path, drop: set[str]) -> None:
    with open_h5(src_path) as src, h5py.File(dst_path, "w", locking=False) as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        dst_models = dst.create_group(MODELS_GROUP)
        for name, group in src[MODELS_GROUP].items():
            if name not in drop:
                src.copy(group, dst_models, name=name)
        src.copy(src[JOURNAL_GROUP], dst, name=JOURNAL_GROUP)


def model_header(group: Any) -> dict[str, Any]:
    """Decoded header attributes of a model group or part."""
    attrs = group.attrs

    def text(key: str) -> str:
        value = attrs[key]
        return value.decode() if isinstance(value, bytes) else str(value)

    return {
        "provenance": from_json(text("provenance")),
        "layers": from_json(text("layers")),
        "token_layers": from_json(text("token_layers")),
        "outputs": from_json(text("outputs")),
        "dtype": text("dtype"),
        "compression": text("compression"),
    }
