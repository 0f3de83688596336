"""The journal: each completed batch is a small HDF5 "part" file next to the cache; consolidation
appends the parts to the main file in place, behind a redo log (embeddings_cache.durable), and
deletes them.

Why: HDF5 keeps metadata in memory and writes it back later, so a process killed while appending
in place can leave a file that no longer opens. Here a part becomes visible only once complete
(written under a temporary name, fsynced, renamed), and the main file's own bytes change only
through a complete, fsynced redo log: a kill leaves the old file plus the parts, or the new file.
The main file records the uuid of every part it contains, so a kill between the commit and the
deletion of the parts never counts a batch twice. An overwrite stages its parts under a run id
and replaces the model only when its commit part is written, at the end of a successful run.
The guarantees are spelled out in docs/cache-format.md.
"""

from __future__ import annotations

import contextlib
import os
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from embeddings_cache.atomic import atomic_files, fsync_path
from embeddings_cache.durable import (
    GuardedFile,
    apply_redo,
    commit_lock,
    describe_write_failure,
    folder_mode,
    redo_path,
    write_redo,
)
from embeddings_cache.errors import CacheError
from embeddings_cache.format import (
    APPLIED_PARTS,
    HASH_DTYPE,
    HASHES,
    ID_DTYPE,
    ID_INDEX,
    ID_INDEX_CHUNK,
    ID_KEYS,
    ID_ROWS,
    IDS,
    INSTANCE,
    JOURNAL_GROUP,
    JOURNAL_VERSION,
    MODELS_GROUP,
    OUTPUTS,
    PART_ID_KEYS,
    POOLED,
    TMP_PREFIX,
    TOKEN_DATA,
    TOKEN_OFFSETS,
    TOKENS,
    UUID_DTYPE,
    check_format,
    check_id_keys,
    chunk_rows,
    chunk_rows_1d,
    consolidating_path,
    filter_options,
    first_line,
    from_json,
    id_keys,
    list_parts,
    lock_path,
    open_h5,
    packed_strings,
    parts_dir,
    read_strings,
    write_root_attrs,
)
from embeddings_cache.untrusted import check_dataset, check_file, check_row_datasets

_CHUNK_CACHE_BYTES = 4 << 20  # per open dataset: a few ~1 MB chunks
_CHUNK_CACHE_SLOTS = 100_003  # a prime, as HDF5 recommends for the hash table of cached chunks

#: attributes describing a model; stored on the model group and on every part
HEADER_ATTRS = ("provenance", "layers", "token_layers", "outputs", "dtype", "compression")


@dataclass(frozen=True)
class PartInfo:
    """What a journal part is, from its name and attributes."""

    seq: int
    uuid: str
    path: Path
    model: str
    starts_model: bool
    run: str  # "" for a plain batch; the run id of an overwrite (staged until committed)
    commit: bool  # the commit record of run ``run``: its staged parts replace the model


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
    run: str = "",
    commit: bool = False,
) -> str:
    """Write one batch as a part file; durable (fsynced and renamed) when this returns its uuid.

    starts_model: applying this part (re)creates the model group from ``header``, dropping what
    was stored before (a new model, or a model being overwritten).
    run: parts of an overwrite carry its run id and stay aside until the run's commit part
    (``commit=True``) is written: the old data stays readable until the new run is complete.
    The part gets the permission bits and group of the cache file.
    """
    folder = parts_dir(path)
    if not folder.is_dir():
        folder.mkdir()
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            os.chmod(folder, folder_mode(st.st_mode))
            with contextlib.suppress(OSError):  # the cache's group, as the docs promise (if we may give it)
                os.chown(folder, -1, st.st_gid)
        fsync_path(folder.parent)  # the new folder's entry must survive a power loss too
    part_uuid = uuidlib.uuid4().hex
    tmp = folder / f"{TMP_PREFIX}{part_uuid}.h5"
    final = folder / f"{seq:08d}-{part_uuid}.h5"
    needed = sum(a.nbytes for a in pooled.values()) + sum(d.nbytes + o.nbytes for d, o in tokens.values())
    with atomic_files([final], temps=[tmp], like=path, durable=True):
        fd = os.open(tmp, os.O_RDWR)
        try:
            guard = GuardedFile(fd)
            with _guarded(guard), h5py.File(guard, "w", locking=False) as f:
                write_root_attrs(f)
                if run:
                    f.attrs["format_version"] = JOURNAL_VERSION  # older versions would apply it at once
                    f.attrs["run"] = run
                    f.attrs["commit"] = bool(commit)
                f.attrs["part_uuid"] = part_uuid
                f.attrs["model"] = model
                f.attrs["starts_model"] = bool(starts_model)
                for key in HEADER_ATTRS:
                    f.attrs[key] = header[key]
                f.create_dataset(IDS, data=np.array(ids, dtype=object), dtype=ID_DTYPE)
                packed = np.array([i.encode() for i in ids], dtype="S") if ids else np.zeros(0, dtype="S1")
                f.create_dataset(PART_ID_KEYS, data=id_keys(packed), **filter_options(None))
                f.create_dataset(HASHES, data=np.array(hashes, dtype=HASH_DTYPE))
                for layer, arr in pooled.items():
                    f.create_dataset(f"{POOLED}/{layer}", data=arr)
                for layer, (data, offsets) in tokens.items():
                    f.create_dataset(f"{TOKENS}/{layer}/{TOKEN_DATA}", data=data)
                    f.create_dataset(f"{TOKENS}/{layer}/{TOKEN_OFFSETS}", data=offsets)
                for name, arr in outputs.items():
                    f.create_dataset(f"{OUTPUTS}/{name}", data=arr)
            if guard.error is not None:
                raise _write_error(guard.error, tmp, needed + (1 << 16))
            try:
                os.fsync(fd)
            except OSError as e:
                raise _write_error(e, tmp, needed + (1 << 16))
        finally:
            os.close(fd)
    return part_uuid


@contextlib.contextmanager
def _guarded(guard: GuardedFile):
    """After a failed write, later writes were discarded and HDF5 may fail on what it reads back:
    the write error (checked by the caller) is the one to report."""
    try:
        yield
    except Exception:
        if guard.error is None:
            raise


def _write_error(error: OSError, path: Path, needed: int) -> CacheError:
    return CacheError(describe_write_failure(error, path, needed) + "; completed batches are kept, rerun to resume")


def applied_uuids(f: h5py.File, path: Path) -> set[str]:
    """Uuids of the parts already consolidated into a main file."""
    try:
        if JOURNAL_GROUP in f and APPLIED_PARTS in f[JOURNAL_GROUP]:
            ds = f[JOURNAL_GROUP][APPLIED_PARTS]
            check_dataset(ds, path, memory=False)
            return set(read_strings(ds))
    except CacheError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise CacheError(
            f"{path}: its list of applied journal parts (/{JOURNAL_GROUP}/{APPLIED_PARTS}) is damaged "
            f"({first_line(e)}), so the batches in {parts_dir(path)} cannot be matched; delete the cache and "
            "its journal and extract again"
        )
    return set()


def part_info(seq: int, part_uuid: str, part: Path) -> PartInfo:
    """Read a part's attributes (CacheError if it is damaged, FileNotFoundError if it vanished)."""
    if not part.exists():
        raise FileNotFoundError(part)
    with open_h5(part) as p:
        check_format(p, part, newest=JOURNAL_VERSION)
        try:
            attrs = p.attrs
            return PartInfo(
                seq, part_uuid, part, str(attrs["model"]), bool(attrs["starts_model"]),
                str(attrs.get("run", "")), bool(attrs.get("commit", False)),
            )
        except (OSError, KeyError, ValueError) as e:
            raise CacheError(
                f"journal part {part} is damaged ({first_line(e)}); delete that file "
                "(its batch will be extracted again on resume)"
            )


def plan_parts(parts: list[PartInfo], done: set[str]) -> tuple[list[PartInfo], list[PartInfo]]:
    """(parts to apply, in order; staged parts of overwrites not committed yet).

    A plain part applies at its place in the sequence; the parts of an overwrite run apply, in
    order, where its commit part stands; those of a run without commit part are left aside.
    """
    todo: list[PartInfo] = []
    staged: dict[str, list[PartInfo]] = {}
    for p in parts:
        if p.uuid in done:
            continue
        if not p.run:
            todo.append(p)
        elif p.commit:
            todo.extend(staged.pop(p.run, []))
            todo.append(p)
        else:
            staged.setdefault(p.run, []).append(p)
    return todo, [p for run in staged.values() for p in run]


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
            ds = group[name]
            # never append into a crafted dataset (external storage would write into another file)
            check_dataset(ds, group.file.filename, memory=False)
            self._open[key] = ds
        return self._open[key]

    def append(self, group: h5py.Group, name: str, arr: np.ndarray, compression: str | None) -> None:
        if name not in group:
            if arr.ndim == 1:
                rows = chunk_rows_1d(16 if arr.dtype.kind == "O" else arr.dtype.itemsize)
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
    g.attrs[INSTANCE] = header["part_uuid"]
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
        check_format(p, part, newest=JOURNAL_VERSION)
        check_file(p, part, memory=False)  # a crafted part must not bring another file's bytes in
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
            out.append(g, IDS, np.array(checked_part_ids(p, part), dtype=object), compression)
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


def checked_part_packed_ids(p: h5py.File, part: Path) -> np.ndarray:
    """A journal part's ids as stored (bytes), checked against their checksums (parts written
    before ids had checksums have none: their ids are taken as they are)."""
    packed = packed_strings(p[IDS])
    if PART_ID_KEYS in p:
        check_id_keys(packed, id_keys(packed), p[PART_ID_KEYS][()], np.arange(len(packed)), f"journal part {part}")
    return packed


def checked_part_ids(p: h5py.File, part: Path) -> list[str]:
    """A journal part's ids, checked against their checksums (:func:`checked_part_packed_ids`)."""
    return [x.decode() for x in checked_part_packed_ids(p, part)]


def _apply_parts(f: h5py.File, todo: list[PartInfo]) -> None:
    # a chunk cache larger than a chunk (set where f is opened) lets the batches fill the last
    # chunk in memory and compress it once, instead of once per batch
    out = _Appender()
    try:
        uuids = [_apply_part(f, p.path, out) for p in todo]
        out.append(f.require_group(JOURNAL_GROUP), APPLIED_PARTS, np.array(uuids, dtype=UUID_DTYPE), None)
        for group in f.require_group(MODELS_GROUP).values():
            update_id_index(group)  # in the same commit as the rows it indexes
    finally:
        out.close()


#: ids hashed at a time while (re)building an id index: bounds the writer's memory, not the result
_INDEX_BUILD_ROWS = 1 << 18


def update_id_index(group: h5py.Group) -> None:
    """Bring a model's id index (docs/cache-format.md, "The id index") up to its stored rows.

    The rows appended since the index was last written are hashed (:func:`id_keys`) and merged
    into the sorted (key, row) arrays, which are rewritten from the first changed entry on. A
    model without an index (a cache written before it existed) or with a stale one (rows appended
    by a version that did not maintain it) gets it built from all its ids. Called inside a commit,
    so the index and the rows it indexes become durable together.
    """
    check_row_datasets(group, group.file.filename)  # ids and the index, before any is read
    ids = group[IDS]
    n = int(ids.shape[0])
    if INSTANCE not in group.attrs:
        group.attrs[INSTANCE] = uuidlib.uuid4().hex  # a model created before the attribute existed
    index = group.get(ID_INDEX)
    if index is None:
        index = group.create_group(ID_INDEX)
        for name, dtype in ((ID_KEYS, np.uint64), (ID_ROWS, np.int64)):
            index.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(ID_INDEX_CHUNK,),
                                 **filter_options(None))
        covers = 0
    else:
        covers = int(index.attrs.get("covers", -1))
        if not 0 <= covers <= n or index[ID_KEYS].shape[0] != covers or index[ID_ROWS].shape[0] != covers:
            covers = 0  # stale: rebuilt in place (the datasets are rewritten, not deleted: no space lost)
    if covers == n and index.attrs.get("covers", -1) == n:
        return
    keys = np.concatenate([np.zeros(0, dtype=np.uint64)] + [
        id_keys(packed_strings(ids, slice(s, min(s + _INDEX_BUILD_ROWS, n)))) for s in range(covers, n, _INDEX_BUILD_ROWS)
    ])
    rows = np.arange(covers, n, dtype=np.int64)
    order = np.argsort(keys, kind="stable")  # equal keys keep row order
    keys, rows = keys[order], rows[order]
    key_ds, row_ds = index[ID_KEYS], index[ID_ROWS]
    first = 0
    if covers:
        old_keys, old_rows = key_ds[()], row_ds[()]
        # new rows come after every stored row: among equal keys they go last
        at = np.searchsorted(old_keys, keys, "right")
        first = int(at.min()) if len(at) else covers
        keys, rows = np.insert(old_keys, at, keys), np.insert(old_rows, at, rows)
    for ds, values in ((key_ds, keys), (row_ds, rows)):
        ds.resize((n,))
        if n > first:
            ds[first:] = values[first:]
    index.attrs["covers"] = n


def _models_with_rows(path: Path, todo: list[PartInfo]) -> set[str]:
    """Models with stored rows that a pending part re-creates (overwrite): their old data is dropped."""
    starts = {p.model for p in todo if p.starts_model}
    if not starts:
        return set()
    with open_h5(path) as f:
        models = f.get(MODELS_GROUP, {})
        return {m for m in starts if m in models and models[m][IDS].shape[0] > 0}


def create_empty(path: Path) -> None:
    """Create an empty cache file atomically (so a kill never leaves a half-made main file)."""
    tmp = consolidating_path(path)
    with atomic_files([path], temps=[tmp], durable=True):
        fd = os.open(tmp, os.O_RDWR)
        try:
            guard = GuardedFile(fd)
            with _guarded(guard), h5py.File(guard, "w", locking=False) as f:
                write_root_attrs(f)
                f.create_group(MODELS_GROUP)
                _Appender().append(f.create_group(JOURNAL_GROUP), APPLIED_PARTS, np.array([], dtype=UUID_DTYPE), None)
            if guard.error is not None:
                raise _write_error(guard.error, path, 1 << 16)
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temporaries(path: Path) -> None:
    """Delete leftovers of a killed writer: parts never completed and an unfinished consolidation
    or redo log. Only a writer holding the lock may call this."""
    consolidating_path(path).unlink(missing_ok=True)
    redo = redo_path(path)
    redo.with_name(redo.name + ".tmp").unlink(missing_ok=True)
    folder = parts_dir(path)
    if folder.is_dir():
        for name in os.listdir(folder):
            if name.startswith(TMP_PREFIX):
                (folder / name).unlink(missing_ok=True)


def list_part_infos(path: Path) -> list[PartInfo]:
    return [part_info(*p) for p in list_parts(path)]


def consolidate(path: Path) -> int:
    """Move every completed part (and committed overwrite) into the main file; return how many
    parts were moved. Parts of an overwrite not committed yet stay in the journal.

    Only a writer holding the lock may call this. The main file is appended to in place, with a
    redo log as commit record (embeddings_cache.durable), or rebuilt under a temporary name when an
    overwrite drops a model's data. At any kill point the cache on disk is the old main file plus
    the parts, or the new main file (plus parts it already records as applied).
    """
    recover(path)
    parts = list_part_infos(path)
    if not parts:
        return 0
    with open_h5(path) as f:
        check_format(f, path)
        done = applied_uuids(f, path)
    todo, staged = plan_parts(parts, done)
    if todo:
        needed = sum(p.path.stat().st_size for p in todo) + (1 << 20)
        replaced = _models_with_rows(path, todo)
        if replaced:
            _rebuild(path, replaced, todo, needed + path.stat().st_size)
        else:
            _append_in_place(path, todo, needed)
    keep = {p.uuid for p in staged}
    for p in parts:
        if p.uuid not in keep:
            p.path.unlink(missing_ok=True)
    fsync_path(parts_dir(path))
    return len(todo)


def recover(path: Path) -> None:
    """Finish a commit whose writer was killed after its redo log became durable."""
    try:
        apply_redo(path)
    except OSError as e:
        raise CacheError(f"cannot finish the interrupted commit of {path} ({first_line(e)}); check the disk and rerun")


def _append_in_place(path: Path, todo: list[PartInfo], needed: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        base = os.fstat(fd).st_size
        guard = GuardedFile(fd, base)
        try:
            with _guarded(guard), h5py.File(
                guard, "r+", locking=False, rdcc_nbytes=_CHUNK_CACHE_BYTES, rdcc_nslots=_CHUNK_CACHE_SLOTS
            ) as f:
                _apply_parts(f, todo)
            if guard.error is not None:
                raise _write_error(guard.error, path, needed)
            try:
                os.fsync(fd)  # the appended bytes, before the metadata that points to them
                final_size = guard.final_size if guard.final_size is not None else os.fstat(fd).st_size
                write_redo(path, guard.overlay, final_size, mode_of=path)
            except OSError as e:
                raise _write_error(e, path, needed)
        except BaseException:
            # nothing below the old end was written: dropping the appended bytes restores the file,
            # unless the redo log was renamed into place (the commit point passed: recover() finishes it)
            if not redo_path(path).exists():
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, base)
            raise
    finally:
        os.close(fd)
    # the commit point has passed (the redo log is durable): from here a kill is finished by recover()
    with commit_lock(lock_path(path)):
        recover(path)


def _rebuild(path: Path, drop: set[str], todo: list[PartInfo], needed: int) -> None:
    """Write a new main file without the models in ``drop`` (HDF5 does not reclaim the space of
    deleted datasets), apply the parts, and replace the main file with it atomically."""
    tmp = consolidating_path(path)
    with atomic_files([path], temps=[tmp], like=path, durable=True, lock=commit_lock(lock_path(path))):
        fd = os.open(tmp, os.O_RDWR)
        try:
            guard = GuardedFile(fd)
            with _guarded(guard), open_h5(path) as src, h5py.File(
                guard, "w", locking=False, rdcc_nbytes=_CHUNK_CACHE_BYTES, rdcc_nslots=_CHUNK_CACHE_SLOTS
            ) as dst:
                check_file(src, path, memory=False)  # what is copied must be the file's own data
                for key, value in src.attrs.items():
                    dst.attrs[key] = value
                dst_models = dst.create_group(MODELS_GROUP)
                for name, group in src[MODELS_GROUP].items():
                    if name not in drop:
                        src.copy(group, dst_models, name=name)
                src.copy(src[JOURNAL_GROUP], dst, name=JOURNAL_GROUP)
                if guard.error is None:
                    _apply_parts(dst, todo)
            if guard.error is not None:
                raise _write_error(guard.error, path, needed)
            try:
                os.fsync(fd)
            except OSError as e:
                raise _write_error(e, path, needed)
        finally:
            os.close(fd)


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
