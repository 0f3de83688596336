"""Cache: read-only access to a cache (main file plus completed journal parts), and align_ids."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from embeddings_cache import untrusted
from embeddings_cache.durable import OverlayReader, read_lock, read_redo, redo_path
from embeddings_cache.errors import CacheError
from embeddings_cache.format import (
    HASHES,
    ID_INDEX,
    ID_INDEX_CHUNK,
    ID_KEYS,
    ID_ROWS,
    IDS,
    INDEX_SPAN,
    INSTANCE,
    JOURNAL_VERSION,
    MODELS_GROUP,
    OUTPUTS,
    PART_ID_KEYS,
    POOLED,
    READ_BLOCK_BYTES,
    TOKEN_DATA,
    TOKEN_OFFSETS,
    TOKENS,
    UNKNOWN_HASH,
    check_format,
    check_id_keys,
    check_regular,
    consolidating_path,
    few,
    first_line,
    id_keys,
    keys_by_row,
    list_parts,
    lock_path,
    open_h5,
    packed_strings,
    parts_dir,
)
from embeddings_cache.journal import applied_uuids, checked_part_packed_ids, model_header, part_info, plan_parts
from embeddings_cache.model import CachedModel
from embeddings_cache.untrusted import check_dataset, check_links, checked_dataset, declared_bytes, size_text

log = logging.getLogger("embeddings_cache")

#: ids read from HDF5 at a time when checking scattered rows of the id index (bounds memory)
_ID_SPAN = 1 << 12


class _PartVanished(Exception):
    """A journal part was consolidated (and deleted) by a writer after this reader listed it."""


@dataclass
class _Segment:
    part: Path | None  # None: the main file's model group
    start: int  # first row, in the model's row numbering
    n: int


@dataclass
class _ModelView:
    """One model's rows over its segments.

    The main file's rows of a model with an id index that covers them (docs/cache-format.md, "The
    id index") are found on disk: no id of them is held in memory, only the first key of each
    index chunk (8 bytes per 1,024 samples). The rows of journal parts not yet consolidated, and
    all rows of a model stored without the index (a cache written before it existed), are held
    packed (numpy byte strings, UTF-8) and found through a sorted permutation: (id bytes + hash
    bytes + 8) bytes per sample. Methods reading the disk take the main file's model group.
    """

    header: dict[str, Any]
    instance: str | None = None  # the model group's instance uuid (None: written before it existed)
    label: str = ""  # "model 'm' in PATH", for messages
    segments: list[_Segment] = field(default_factory=list)
    indexed: int = 0  # leading rows (the main file's) looked up through the on-disk index
    _id_parts: list[np.ndarray] = field(default_factory=list)
    _hash_parts: list[np.ndarray] = field(default_factory=list)
    _packed: tuple[np.ndarray, np.ndarray] | None = None  # (ids, hashes) of the rows held in memory, joined on first use
    _order: np.ndarray | None = None  # in-memory rows sorted by id (stable: the first of equal ids first)
    _fences: np.ndarray | None = None  # first key of each chunk of the on-disk index
    n: int = 0

    def packed(self) -> tuple[np.ndarray, np.ndarray]:
        if self._packed is None:
            join = lambda parts: np.concatenate(parts) if parts else np.zeros(0, dtype="S1")  # noqa: E731
            self._packed = (join(self._id_parts), join(self._hash_parts))
            self._id_parts, self._hash_parts = [self._packed[0]], [self._packed[1]]
        return self._packed

    def id_list(self, group: h5py.Group | None, rows: np.ndarray) -> list[str]:
        """Ids of ``rows``, read from disk where the index serves them."""
        return self._strings(group, IDS, self.packed()[0], rows)

    def hash_list(self, group: h5py.Group | None, rows: np.ndarray) -> list[str]:
        """Content hashes of ``rows``."""
        return self._strings(group, HASHES, self.packed()[1], rows)

    def _strings(self, group: h5py.Group | None, name: str, memory: np.ndarray, rows: np.ndarray) -> list[str]:
        rows = np.asarray(rows, dtype=np.int64)
        disk = rows < self.indexed
        if not disk.any():
            return [x.decode() for x in memory[rows - self.indexed]]
        out = np.empty(len(rows), dtype=object)
        assert group is not None  # rows on disk: the main file's group holds them
        try:
            packed = _packed_rows(group[name], rows[disk])
        except OSError as e:
            raise CacheError(f"cannot read the {name} of {self.label} ({first_line(e)}); the file is damaged: "
                             "restore it from a copy, or extract the model again with overwrite=True") from None
        if name == IDS:  # every id read from disk is checked against its key in the (checksummed) index
            expected = keys_by_row(group[ID_INDEX], self.indexed, self.label)[rows[disk]]
            check_id_keys(packed, id_keys(packed), expected, rows[disk], self.label)
        out[disk] = [x.decode() for x in packed]
        out[~disk] = [x.decode() for x in memory[rows[~disk] - self.indexed]]
        return out.tolist()

    def lookup(self, group: h5py.Group | None, ids: Sequence[Any]) -> tuple[np.ndarray, list]:
        """Rows of ``ids`` (the first row of an id stored twice) and the ids not stored."""
        query = np.array([i.encode() if isinstance(i, str) else b"" for i in ids], dtype="S")
        if not len(query):
            return np.zeros(0, dtype=np.int64), []
        # HDF5 strings cannot hold NUL, and numpy byte strings drop trailing NULs: such ids are never stored
        valid = np.fromiter((isinstance(i, str) and "\x00" not in i for i in ids), dtype=bool, count=len(query))
        rows = np.full(len(query), -1, dtype=np.int64)
        if self.indexed:
            rows = self._lookup_on_disk(group, query)
        todo = rows < 0  # indexed rows come first: an id found there is the first of its rows
        packed = self.packed()[0]
        if todo.any() and len(packed):
            if self._order is None:
                self._order = np.argsort(packed, kind="stable")
            sorted_ids = packed[self._order]
            q = query[todo]
            pos = np.minimum(np.searchsorted(sorted_ids, q, "left"), len(packed) - 1)
            hit = sorted_ids[pos] == q
            rows[np.flatnonzero(todo)[hit]] = self._order[pos[hit]] + self.indexed
        found = (rows >= 0) & valid
        missing = [i for i, ok in zip(ids, found) if not ok]
        return np.maximum(rows, 0), missing

    def _lookup_on_disk(self, group: h5py.Group, query: np.ndarray) -> np.ndarray:
        """Rows of ``query`` (packed ids) among the indexed rows, -1 where absent: only the chunks
        of the index that the queried keys fall in are read (each once per call, runs of them in
        one read), and every candidate row's stored id is compared, so a collision of keys never
        gives a wrong row."""
        index = group[ID_INDEX]
        keys_ds, rows_ds = index[ID_KEYS], index[ID_ROWS]
        if self._fences is None:
            self._fences = np.concatenate([np.zeros(0, dtype=np.uint64)] + [
                keys_ds[s:s + INDEX_SPAN][::ID_INDEX_CHUNK] for s in range(0, self.indexed, INDEX_SPAN)])
        keys = id_keys(query)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        chunk_of = np.maximum(np.searchsorted(self._fences, sorted_keys, "left") - 1, 0)
        cand_query, cand_rows = [], []
        i = 0
        while i < len(sorted_keys):
            # one read for a run of consecutive chunks that hold queries (at most INDEX_SPAN entries)
            first_chunk = last_chunk = int(chunk_of[i])
            j = int(np.searchsorted(chunk_of, last_chunk, "right"))
            while (j < len(sorted_keys) and chunk_of[j] == last_chunk + 1
                   and (last_chunk + 2 - first_chunk) * ID_INDEX_CHUNK <= INDEX_SPAN):
                last_chunk += 1
                j = int(np.searchsorted(chunk_of, last_chunk, "right"))
            start, stop = first_chunk * ID_INDEX_CHUNK, min((last_chunk + 1) * ID_INDEX_CHUNK, self.indexed)
            # a key equal to the next chunks' first keys (a key at a chunk boundary, a repeated id,
            # a collision) has entries there too
            while stop < self.indexed and self._fences[stop // ID_INDEX_CHUNK] <= sorted_keys[j - 1]:
                stop = min(stop + ID_INDEX_CHUNK, self.indexed)
            window = keys_ds[start:stop]
            q = sorted_keys[i:j]
            lo = np.searchsorted(window, q, "left")
            count = np.searchsorted(window, q, "right") - lo
            if count.any():
                cand_query.append(np.repeat(order[i:j], count))
                cand_rows.append(rows_ds[start:stop][_ranges(lo, count)])
            i = j
        rows = np.full(len(query), -1, dtype=np.int64)
        if not cand_query:
            return rows
        cand_q, cand_r = np.concatenate(cand_query), np.concatenate(cand_rows).astype(np.int64)
        _check_index_rows(cand_r, self.indexed, rows_ds, self.label)
        stored = _packed_rows(group[IDS], cand_r)
        same = stored == query[cand_q]
        if not same.all():
            # the index key matched and the id did not: a collision of keys, or a damaged stored id
            # (whose own key then differs from the index key, the query's)
            other = ~same
            check_id_keys(stored[other], id_keys(stored[other]), id_keys(query[cand_q[other]]), cand_r[other],
                          self.label)
        cand_q, cand_r = cand_q[same], cand_r[same]
        if not len(cand_q):
            return rows
        # the first (smallest) matching row of each query
        pick = np.lexsort((cand_r, cand_q))
        cand_q, cand_r = cand_q[pick], cand_r[pick]
        first = np.r_[True, cand_q[1:] != cand_q[:-1]]
        rows[cand_q[first]] = cand_r[first]
        return rows

    def add_indexed(self, n: int) -> None:
        """The main file's rows, looked up through its on-disk index (before any other segment)."""
        assert not self.segments
        self.segments.append(_Segment(None, 0, n))
        self.indexed = self.n = n

    def add(self, segment_part: Path | None, ids: np.ndarray, hashes: np.ndarray, header: dict[str, Any]) -> None:
        if len(ids) and not self.n:
            self.header["outputs"] = header["outputs"]  # the first batch fixes the output names
        self.segments.append(_Segment(segment_part, self.n, len(ids)))
        self._id_parts.append(ids)
        self._hash_parts.append(hashes)
        self.n += len(ids)
        self._packed = self._order = None


def _check_index_rows(rows: np.ndarray, n: int, ds: h5py.Dataset, where: str) -> None:
    """CacheError unless every row the id index gives is one of the ``n`` indexed rows."""
    bad = (rows < 0) | (rows >= n)
    if bad.any():
        raise CacheError(f"{where}: dataset {ds.name!r} gives row {int(rows[bad][0])}, outside the {n} indexed rows "
                         "(0 to n-1); the cache is damaged or crafted: restore it from a copy, or extract the model "
                         "again with overwrite=True")


def _packed_rows(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Entries ``rows`` (any order, repeats allowed) of a string dataset, packed. Dense runs are read
    as slices of at most ``_ID_SPAN`` rows, scattered rows by point selection (one read per
    ``_ID_SPAN`` of them), so that neither reads the whole dataset at once."""
    rows = np.asarray(rows, dtype=np.int64)
    unique = np.unique(rows)
    pieces, sparse = [], []  # pieces: (positions in unique, values)
    i = 0
    while i < len(unique):
        lo = int(unique[i])
        j = int(np.searchsorted(unique, lo + _ID_SPAN, "left"))
        hi = int(unique[j - 1]) + 1
        if (j - i) * 16 >= hi - lo:  # dense: one slice
            pieces.append((np.arange(i, j), packed_strings(ds, slice(lo, hi))[unique[i:j] - lo]))
        else:
            sparse.append(np.arange(i, j))
        i = j
    if sparse:
        at = np.concatenate(sparse)
        for s in range(0, len(at), _ID_SPAN):
            pieces.append((at[s:s + _ID_SPAN], packed_strings(ds, unique[at[s:s + _ID_SPAN]])))
    width = max([1] + [v.dtype.itemsize for _, v in pieces])
    values = np.zeros(len(unique), dtype=f"S{width}")
    for positions, v in pieces:
        values[positions] = v
    return values[np.searchsorted(unique, rows)]


@dataclass(frozen=True)
class SampleRows:
    """Where samples lie in one model of a cache: looked up once (:meth:`Cache.sample_rows`) and read
    by row number any number of times (:meth:`Cache.read_layer_rows`), e.g. once per pass of a
    computation that reads a layer several times. Valid while the model is the same extraction
    (appends keep row numbers; an overwrite does not)."""

    model: str
    instance: str | None  # the model's instance uuid when the ids were looked up
    rows: np.ndarray  # int64 (n,), the row of each id, in the order of the ids

    def __len__(self) -> int:
        return int(self.rows.shape[0])


class Cache:
    """Read-only view of an embeddings cache: the main file plus completed journal parts.

    Opening reads only ids, hashes and attributes; layers are read on demand, one at a time.
    Readers can open a cache while a writer appends to it: they see every batch completed before
    they opened it (not the staged batches of an unfinished overwrite). Each read holds a shared
    lock that only a writer's commit (a few milliseconds) waits for; after a commit the reader
    reopens the file. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike, max_member_bytes: int | None = None):
        self.path = Path(path)
        #: the allocation bound of the file's datasets (embeddings_cache.untrusted): None, the default
        #: rule (no dataset declaring more than 1 GiB and 100x what it stores); a number, the largest size
        self.max_member_bytes = max_member_bytes
        if not self.path.exists():
            raise CacheError(f"no cache at {self.path}; check the path (a cache is made by 'repalign extract' or 'repalign cache import')")
        check_regular(self.path)
        self._file = Path(os.path.realpath(self.path))  # its journal lives next to the real file
        self._main: h5py.File | None = None
        self._main_fd: int | None = None
        self._snapshot_fd: int | None = None
        self._generation = 0
        self._load()

    # ---- loading ------------------------------------------------------------------------------
    def _load(self) -> None:
        with read_lock(lock_path(self._file)) as generation:
            self._load_locked(generation)

    def _load_locked(self, generation: int) -> None:
        for _ in range(20):
            if self._try_load():
                self._generation = generation
                return
        raise CacheError(f"{self.path} kept changing while being opened; open it again when the writer is idle")

    def _open_main(self) -> tuple[h5py.File, int | None]:
        """The main file as committed: with the redo log of a writer killed while committing
        applied in memory (the next writer applies it on disk)."""
        try:
            redo = read_redo(self._file)
        except OSError as e:
            raise CacheError(f"{self.path}: {first_line(e)}; delete that file and extract again")
        if redo is None:
            return open_h5(self._file), None
        fd = os.open(self._file, os.O_RDONLY)
        try:
            return h5py.File(OverlayReader(fd, *redo), "r", locking=False), fd
        except OSError as e:
            os.close(fd)
            raise CacheError(f"{self.path} is not a readable HDF5 file ({first_line(e)}); delete it and extract again")

    def _try_load(self) -> bool:
        """Snapshot main file + parts; False when a writer replaced the main file meanwhile."""
        before = _identity(self._file)
        main, fd = self._open_main()
        snapshot_fd = None
        try:
            # held to tell later whether this main file was changed in place since (see _retrying)
            snapshot_fd = os.open(self._file, os.O_RDONLY)
            self.format_version = check_format(main, self.path)
            check_links(main, self.path)  # from here on, names in the main file lead to its own objects
            parts = list_parts(self._file)
            # parts are deleted only after the main file holding them replaced the old one: an
            # unchanged main file guarantees the listed parts are exactly the pending ones
            if _identity(self._file) != before:
                _close(main, fd, snapshot_fd)
                return False
            views = self._views_of_main(main)
            try:
                infos = [part_info(*p) for p in parts]
            except FileNotFoundError:
                _close(main, fd, snapshot_fd)
                return False
            done = applied_uuids(main, self.path) if infos else set()
            pending, staged = plan_parts(infos, done)
            for info in pending:
                try:
                    self._add_part(views, info.path)
                except _PartVanished:
                    _close(main, fd, snapshot_fd)
                    return False
        except BaseException:
            _close(main, fd, snapshot_fd)
            raise
        self.close()
        self._main, self._main_fd = main, fd
        self._snapshot_fd, self._snapshot = snapshot_fd, before
        self._views = views
        self.n_pending_parts = len(pending)
        #: models with an overwrite (or a staged run adding them, CacheWriter(staged=True)) interrupted
        #: before it completed -> its staged batches (not read)
        self.unfinished_overwrites = {m: sum(p.model == m for p in staged) for m in sorted({p.model for p in staged})}
        return True

    def _views_of_main(self, main: h5py.File) -> dict[str, _ModelView]:
        views = {}
        try:
            for name, group in main.get(MODELS_GROUP, {}).items():
                header = model_header(group)
                view = _ModelView(dict(header), _text(group.attrs.get(INSTANCE)), f"model {name!r} in {self.path}")
                for ds in _row_datasets(group):  # the datasets read to find rows (the layers: when read)
                    check_dataset(ds, self.path, self.max_member_bytes, memory=False)
                n = group[IDS].shape[0]
                if _index_covers(group, n):
                    view.add_indexed(n)
                else:  # written before the index existed (or by such a version since): ids in memory
                    view.add(None, packed_strings(group[IDS]), packed_strings(group[HASHES]), header)
                views[name] = view
        except CacheError:
            raise
        except (OSError, KeyError, ValueError) as e:
            raise CacheError(f"{self.path} is damaged ({first_line(e)}); delete it and extract again")
        return views

    def _add_part(self, views: dict[str, _ModelView], part: Path) -> None:
        if not part.exists():
            raise _PartVanished
        try:
            with open_h5(part) as p:
                check_format(p, part, newest=JOURNAL_VERSION)
                # opening reads the part's ids, hashes and id keys only: its links and those datasets
                # are checked here, its layers when they are read (a part holds every layer of a batch)
                check_links(p, part)
                for name in (IDS, HASHES, PART_ID_KEYS):
                    if name != PART_ID_KEYS or PART_ID_KEYS in p:
                        checked_dataset(p, name, part, self.max_member_bytes)
                model = str(p.attrs["model"])
                header = model_header(p)
                ids, hashes = checked_part_packed_ids(p, part), packed_strings(p[HASHES])
                starts = bool(p.attrs["starts_model"])
                part_uuid = _text(p.attrs["part_uuid"])
        except CacheError:
            if not part.exists():
                raise _PartVanished
            raise
        except (OSError, KeyError, ValueError) as e:
            raise CacheError(
                f"journal part {part} of cache {self.path} is damaged ({first_line(e)}); delete that file "
                "(its batch will be extracted again on resume)"
            )
        if starts:
            views[model] = _ModelView(dict(header), part_uuid, f"model {model!r} in {self.path}")
        elif model not in views:
            raise CacheError(
                f"journal part {part} continues model {model!r}, which {self.path} does not hold; "
                f"delete the folder {part.parent} and extract that model again"
            )
        views[model].add(part, ids, hashes, header)

    # ---- context ------------------------------------------------------------------------------
    def close(self) -> None:
        if self._main is not None:
            _close(self._main, self._main_fd, self._snapshot_fd)
            self._main, self._main_fd, self._snapshot_fd = None, None, None

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Cache({str(self.path)!r}, models={self.models})"

    # ---- one model as an object ---------------------------------------------------------------
    def __getitem__(self, model: str) -> CachedModel:
        """``cache["antiberty"]``: one model (its ids, provenance, layers as arrays)."""
        self._view(model)  # a clear error for an unknown model
        return CachedModel(self, model)

    def __contains__(self, model: object) -> bool:
        return model in self._views

    def __iter__(self) -> Iterator[str]:
        return iter(self.models)

    # ---- metadata -----------------------------------------------------------------------------
    @property
    def models(self) -> list[str]:
        """Model names, sorted."""
        return sorted(self._views)

    def _view(self, model: str) -> _ModelView:
        if self._main is None:
            raise CacheError(f"cache {self.path} is closed; open it again with Cache(path)")
        if model not in self._views:
            raise CacheError(f"model {model!r} is not in cache {self.path}; it holds {self.models}")
        return self._views[model]

    def layers(self, model: str) -> list[str]:
        """Pooled layers of a model, in the order the writer gave them (model order)."""
        return list(self._view(model).header["layers"])

    def token_layers(self, model: str) -> list[str]:
        return list(self._view(model).header["token_layers"])

    def outputs(self, model: str) -> list[str]:
        """Names of the per-sample scalar outputs (energy, pLDDT, ...)."""
        return list(self._view(model).header["outputs"])

    def ids(self, model: str) -> list[str]:
        """Sample ids in stored order (the order they were appended)."""
        return self._retrying(model, None, lambda rows: self._view(model).id_list(self._group(model), rows))

    def hashes(self, model: str) -> list[str]:
        """Content hashes (sha256 hex) of the inputs, aligned with :meth:`ids`."""
        return self._retrying(model, None, lambda rows: self._view(model).hash_list(self._group(model), rows))

    def n_samples(self, model: str) -> int:
        return self._view(model).n

    def provenance(self, model: str) -> dict[str, Any]:
        return json.loads(json.dumps(self._view(model).header["provenance"]))  # a copy

    def compression(self, model: str) -> str:
        """The model's compression: ``gzip``, ``lzf`` or ``none``."""
        return str(self._view(model).header.get("compression") or "none")

    def storage_dtype(self, model: str) -> str:
        return str(self._view(model).header["dtype"])

    # ---- reading ------------------------------------------------------------------------------
    def read_layer(
        self, model: str, layer: str, ids: Sequence[str] | None = None, dtype: Any = np.float32
    ) -> np.ndarray:
        """Pooled features of one layer, (n, D), rows in stored order or in the order of ``ids``.

        Only this layer's rows are read from disk; stored float16 is widened to ``dtype``.
        """
        self._check_layer(model, layer, "layers", "pooled layers")
        out_dtype = _float_dtype(dtype)
        return self._retrying(model, ids, lambda rows: self._gather(model, rows, f"{POOLED}/{layer}", out_dtype))

    def read_output(self, model: str, name: str, ids: Sequence[str] | None = None) -> np.ndarray:
        """Per-sample scalar output, (n,) float64, NaN where not available."""
        self._check_layer(model, name, "outputs", "outputs")
        return self._retrying(model, ids, lambda rows: self._gather(model, rows, f"{OUTPUTS}/{name}", np.dtype(np.float64)))

    def read_tokens(
        self, model: str, layer: str, ids: Sequence[str] | None = None, dtype: Any = np.float32
    ) -> tuple[np.ndarray, np.ndarray]:
        """Token-level features of a layer as (data (T, D), offsets (n+1,)).

        Sample k's rows are ``data[offsets[k]:offsets[k+1]]``, samples in stored order or in the
        order of ``ids``.
        """
        self._check_layer(model, layer, "token_layers", "token layers")
        out_dtype = _float_dtype(dtype)
        return self._retrying(model, ids, lambda rows: self._gather_tokens(model, rows, layer, out_dtype))

    def read_token_counts(self, model: str, layer: str, ids: Sequence[str] | None = None) -> np.ndarray:
        """Number of token rows of each sample of a token layer, (n,) int64, without reading the rows."""
        self._check_layer(model, layer, "token_layers", "token layers")
        return self._retrying(model, ids, lambda rows: self._gather_counts(model, rows, layer))

    def sample_rows(self, model: str, ids: Sequence[str]) -> SampleRows:
        """The rows of ``ids`` in ``model``, for :meth:`read_layer_rows` (one id lookup for many reads)."""
        if isinstance(ids, str):
            raise CacheError(f"ids must be a list of ids, got the string {ids!r}; wrap it in a list")
        rows = self._retrying(model, list(ids), lambda found: found)
        return SampleRows(model, self._view(model).instance, np.asarray(rows, dtype=np.int64))

    def read_layer_rows(
        self, layer: str, rows: SampleRows, start: int = 0, stop: int | None = None, dtype: Any = np.float32
    ) -> np.ndarray:
        """Pooled features of samples ``start:stop`` of ``rows`` (from :meth:`sample_rows`), in that
        order: ``read_layer(model, layer, ids=ids[start:stop])`` without looking the ids up again."""
        model = rows.model
        self._check_layer(model, layer, "layers", "pooled layers")
        overwritten = CacheError(f"model {model!r} in {self.path} was overwritten since its rows were looked up; "
                                 "look them up again (sample_rows)")
        if self._view(model).instance != rows.instance:
            raise overwritten
        out_dtype = _float_dtype(dtype)
        name = f"{POOLED}/{layer}"
        block = self._retrying(model, None, lambda r: self._gather(model, r, name, out_dtype), rows=rows.rows[start:stop])
        if self._view(model).instance != rows.instance:  # replaced during the read: these are other samples
            raise overwritten
        return block

    def iter_row_blocks(
        self, model: str, layer: str, block_rows: int = 65536, dtype: Any = np.float32
    ) -> Iterator[np.ndarray]:
        """Pooled features of a layer in stored order, as blocks of at most ``block_rows`` rows.

        For computations that do not fit in memory; concatenated, the blocks equal read_layer(). Rows
        a writer appends meanwhile are not included; a model replaced by an overwrite meanwhile is a
        CacheError (the blocks would mix two extractions).
        """
        self._check_layer(model, layer, "layers", "pooled layers")
        if not isinstance(block_rows, (int, np.integer)) or block_rows < 1:
            raise CacheError(f"block_rows must be a positive integer, got {block_rows!r}")
        out_dtype = _float_dtype(dtype)
        view = self._view(model)
        n, instance = view.n, view.instance
        name = f"{POOLED}/{layer}"
        for start in range(0, n, int(block_rows)):
            rows = np.arange(start, min(start + int(block_rows), n), dtype=np.int64)
            block = self._retrying(model, None, lambda r: self._gather(model, r, name, out_dtype), rows=rows)
            if self._view(model).instance != instance:
                # replaced by an overwrite since the first block: the next rows are other samples
                raise CacheError(f"model {model!r} in {self.path} was overwritten while being read; open the cache again")
            yield block

    # ---- description --------------------------------------------------------------------------
    def summary(self):
        """A pandas DataFrame with one row per stored array (see :meth:`records` for the columns);
        ``dim`` is a nullable integer (missing for outputs and layers with no rows yet)."""
        import pandas as pd

        columns = ["model", "kind", "name", "position", "n_samples", "rows", "dim", "dtype", "provenance"]
        table = pd.DataFrame(self.records(), columns=columns)
        table["dim"] = table["dim"].astype("Int64")
        return table

    def records(self) -> list[dict[str, Any]]:
        """One record per stored array: model, kind ("pooled", "tokens", "output"), name, position,
        n_samples, rows, dim, dtype, provenance (JSON)."""
        records = []
        for model in self.models:
            view = self._view(model)
            prov = json.dumps(view.header["provenance"], sort_keys=True)
            kinds = (
                ("pooled", view.header["layers"], POOLED),
                ("tokens", view.header["token_layers"], TOKENS),
                ("output", view.header["outputs"], OUTPUTS),
            )
            for kind, names, prefix in kinds:
                for position, name in enumerate(names):
                    rows, dim = self._shape(model, kind, f"{prefix}/{name}")
                    dtype = "float64" if kind == "output" else view.header["dtype"]
                    records.append(
                        {
                            "model": model,
                            "kind": kind,
                            "name": name,
                            "position": position,
                            "n_samples": view.n,
                            "rows": rows,
                            "dim": dim,
                            "dtype": dtype,
                            "provenance": prov,
                        }
                    )
        return records

    def files_beside(self) -> list[dict[str, str]]:
        """The files next to the cache that belong to it (docs/cache-format.md): path and role of each
        one present. A copy of the cache needs the journal and redo log when they are there."""
        staged = sum(self.unfinished_overwrites.values())
        if self.n_pending_parts or staged:
            journal = (f"journal: {self.n_pending_parts + staged} batch(es) not in the main file yet; copy it with "
                       "the cache (the next write, e.g. 'repalign extract', folds completed batches in)")
        else:
            journal = "journal folder, empty: every batch is in the main file, so a copy of the .h5 file alone is whole"
        roles = (
            (lock_path(self._file), "lock file of the cache's writers and readers; part of the format: keep it, "
                                    "never delete it while a command writes the cache"),
            (parts_dir(self._file), journal),
            (redo_path(self._file), "redo log of an interrupted commit; copy it with the cache, the next write applies it"),
            (consolidating_path(self._file), "the next main file of an interrupted overwrite; the next write removes it"),
        )
        return [{"path": str(path), "role": role} for path, role in roles if os.path.lexists(path)]

    def info(self) -> dict[str, Any]:
        """What ``repalign cache info --json`` prints, with stable keys (docs/cache-format.md, "cache info"):
        path, format_version, pending_batches, unfinished_runs {model: batches}, files_beside [{path,
        role}], models [{name, n_samples, dtype, compression, pooled_layers, token_layers, outputs, provenance}],
        each array as {name, position, rows, dim, dtype}."""
        records = self.records()
        models = []
        for model in self.models:
            view = self._view(model)
            mine = [r for r in records if r["model"] == model]
            arrays = {kind: [{key: r[key] for key in ("name", "position", "rows", "dim", "dtype")}
                             for r in mine if r["kind"] == kind] for kind in ("pooled", "tokens", "output")}
            models.append({"name": model, "n_samples": int(view.n), "dtype": view.header["dtype"],
                           "compression": self.compression(model),
                           "pooled_layers": arrays["pooled"], "token_layers": arrays["tokens"],
                           "outputs": arrays["output"], "provenance": view.header["provenance"]})
        return {"path": str(self.path), "format_version": int(self.format_version),
                "pending_batches": int(self.n_pending_parts), "unfinished_runs": dict(self.unfinished_overwrites),
                "files_beside": self.files_beside(), "models": models}

    def describe(self) -> str:
        """Human-readable summary: models, layers in stored order, shapes, dtypes, counts, provenance."""
        records = self.records()
        lines = [
            f"cache {self.path} (format version {self.format_version}): {len(self.models)} model(s)"
            + (f", {self.n_pending_parts} batch(es) not yet consolidated" if self.n_pending_parts else "")
        ]
        for model, n in self.unfinished_overwrites.items():
            if model in self._views:
                lines.append(f"model {model!r}: an overwrite was interrupted after {n} batch(es); its old data is "
                             "shown until the same overwrite is run again to the end")
            else:  # a staged run of a new model (an import): nothing of it is shown
                lines.append(f"model {model!r}: a run that adds it (an import) was interrupted or failed after {n} "
                             "batch(es), which are kept aside and not shown; rerun the same command to complete it")
        for model in self.models:
            view = self._view(model)
            lines.append(f"model {model!r}: {view.n} samples, stored as {view.header['dtype']}, "
                         f"compression {self.compression(model)}")
            mine = [r for r in records if r["model"] == model]
            for kind, title in (("pooled", "pooled layers"), ("tokens", "token layers"), ("output", "outputs")):
                rows = [r for r in mine if r["kind"] == kind]
                if not rows:
                    continue
                lines.append(f"  {title}:")
                for r in rows:
                    dim = "?" if r["dim"] is None else r["dim"]  # no batch yet: width unknown
                    if kind == "pooled":
                        shape = f"({r['rows']}, {dim})"
                    elif kind == "tokens":
                        shape = f"({r['rows']} tokens, {dim}), ragged over {r['n_samples']} samples"
                    else:
                        shape = f"({r['rows']},)"
                    lines.append(f"    {r['position']:>3}  {r['name']}  {shape}  {r['dtype']}")
            prov = json.dumps(view.header["provenance"], sort_keys=True, indent=2).splitlines()
            lines.append("  provenance: " + prov[0])
            lines.extend("  " + line for line in prov[1:])
        lines.append("files beside the cache (part of it):")
        lines.extend(f"  {Path(f['path']).name}: {f['role']}" for f in self.files_beside())
        return "\n".join(lines)

    # ---- internals ----------------------------------------------------------------------------
    def _check_layer(self, model: str, name: str, key: str, what: str) -> None:
        names = self._view(model).header[key]
        if name not in names:
            raise CacheError(f"model {model!r} in {self.path} has no {what[:-1]} {name!r}; its {what}: {names}")

    def _group(self, model: str) -> h5py.Group | None:
        """The main file's group of a model (None when only journal parts hold it); call under the read lock."""
        assert self._main is not None
        models = self._main.get(MODELS_GROUP, {})
        return models[model] if model in models else None

    def _unchanged_since_load(self) -> bool:
        """Whether the main file this snapshot reads is byte for byte as it was when loaded (a
        rebuilt file replaced it) rather than appended to in place."""
        assert self._snapshot_fd is not None
        st = os.fstat(self._snapshot_fd)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == self._snapshot

    def _rows(self, model: str, ids: Sequence[str] | None) -> np.ndarray:
        """Rows of ``ids`` in the current snapshot; call under the read lock."""
        view = self._view(model)
        if ids is None:
            return np.arange(view.n, dtype=np.int64)
        if isinstance(ids, str):
            raise CacheError(f"ids must be a list of ids, got the string {ids!r}; wrap it in a list")
        try:
            rows, missing = view.lookup(self._group(model) if view.indexed else None, ids)
        except OSError as e:
            raise CacheError(
                f"cannot read the id index of model {model!r} in {self.path} ({first_line(e)}); "
                "the file is damaged: delete it and extract again"
            )
        if missing:
            raise CacheError(
                f"model {model!r} in {self.path} has no samples {few(missing)}; "
                "use cache.ids(model) or align_ids() to choose ids present in both models"
            )
        return rows

    def _retrying(self, model: str, ids: Sequence[str] | None, read: Any, rows: np.ndarray | None = None) -> Any:
        """``read(rows)`` under the read lock; after a writer's commit, the same samples again.

        Rows of a model keep their numbers across commits (appends only add rows) unless the model
        is replaced (its instance uuid changes): rows given without ids are read again by number
        from a model of the same instance, by id from one stored without the index.
        """
        if isinstance(ids, str):
            raise CacheError(f"ids must be a list of ids, got the string {ids!r}; wrap it in a list")
        view = self._view(model)
        if ids is None and rows is None:
            rows = np.arange(view.n, dtype=np.int64)  # the samples of this snapshot, even after a commit
        retry = False
        for _ in range(5):
            with read_lock(lock_path(self._file)) as generation:
                if generation == self._generation:
                    try:
                        if rows is None:
                            try:
                                rows = self._rows(model, ids)
                            except CacheError:
                                if not retry:
                                    raise
                                raise CacheError(f"model {model!r} in {self.path} was overwritten while being read; "
                                                 "open the cache again") from None
                        return read(rows)
                    except _PartVanished:
                        pass
                    except OSError as e:  # reads of datasets name them; this names the model at least
                        raise CacheError(f"cannot read model {model!r} from {self.path} ({first_line(e)}); the file "
                                         "is damaged: restore it from a copy, or extract the model again") from None
                # a writer committed since this snapshot: reopen, read the same samples
                if ids is None and (not view.indexed or self._unchanged_since_load()):
                    # their ids, from memory or from the old main file (replaced, not changed: intact)
                    assert rows is not None
                    ids = view.id_list(self._group(model), rows)
                    rows = None
                self._load_locked(generation)
                retry = True
                if ids is not None:
                    rows = None  # looked up again in the new snapshot
                else:
                    now = self._view(model)
                    assert rows is not None
                    if now.instance != view.instance or (len(rows) and int(rows.max()) >= now.n):
                        raise CacheError(
                            f"model {model!r} in {self.path} was overwritten while being read; open the cache again"
                        )
                view = self._view(model)
        raise CacheError(f"{self.path} kept changing while being read; read it again when the writer is idle")

    @contextlib.contextmanager
    def _segment(self, seg: _Segment, model: str) -> Iterator[h5py.Group]:
        if seg.part is None:
            assert self._main is not None
            yield self._main[MODELS_GROUP][model]
            return
        try:
            part = h5py.File(seg.part, "r", locking=False)
        except FileNotFoundError:
            raise _PartVanished
        except OSError as e:
            if not seg.part.exists():
                raise _PartVanished
            raise CacheError(f"journal part {seg.part} is damaged ({first_line(e)}); delete that file and resume")
        with part:
            yield part

    def _dataset(self, group: h5py.Group, name: str, model: str, seg: _Segment, sizes: bool = True) -> h5py.Dataset:
        # values are read in blocks into arrays of the requested rows (bounded by _check_allocation), so a
        # declared size is only held to an explicit max_member_bytes: no ratio rule, which refused the
        # tool's own highly compressible gzip layers
        sizes = sizes and self.max_member_bytes is not None
        try:
            return checked_dataset(group, name, seg.part or self.path, self.max_member_bytes, sizes=sizes)
        except KeyError:
            where = seg.part or self.path
            raise CacheError(f"{where} lacks {name} of model {model!r} for {seg.n} samples; the cache is damaged")

    def _check_allocation(self, shape: tuple[int, ...], dtype: np.dtype, ds: h5py.Dataset, model: str) -> None:
        """CacheError when the array a read allocates (``shape`` of ``dtype``) exceeds half the available
        memory; an explicit max_member_bytes (a trusted cache) replaces this bound."""
        if self.max_member_bytes is not None:
            return
        need, half = declared_bytes(shape, np.dtype(dtype).itemsize), untrusted.available_memory() // 2
        if need > half:
            raise CacheError(f"{self.path}: reading {ds.name!r} of model {model!r} needs {size_text(need)} for "
                             f"{shape} {np.dtype(dtype)}, more than half the available memory ({size_text(half)}); "
                             "read fewer samples or layers at a time, or free memory")

    def _read(self, ds: h5py.Dataset, selection: Any, model: str) -> np.ndarray:
        try:
            return ds[selection]
        except OSError as e:
            raise CacheError(
                f"cannot read {ds.name} of model {model!r} from {self.path} ({first_line(e)}); "
                "the file is damaged: delete it and extract again"
            )

    def _shape(self, model: str, kind: str, name: str) -> tuple[int, int | None]:
        """(rows, dim) of a stored array over all segments; dim None for outputs or no rows."""
        with read_lock(lock_path(self._file)) as generation:
            if generation != self._generation:
                self._load_locked(generation)
            view = self._view(model)
            rows, dim = 0, None
            for seg in view.segments:
                if seg.n == 0:
                    continue
                try:
                    with self._segment(seg, model) as group:
                        # shapes only: no values read, so no allocation bound
                        ds = self._dataset(group, name + (f"/{TOKEN_DATA}" if kind == "tokens" else ""), model, seg,
                                           sizes=False)
                        rows += ds.shape[0]
                        if ds.ndim == 2:
                            dim = ds.shape[1]
                except _PartVanished:
                    self._load_locked(generation)
                    break
            else:
                return rows, dim
        return self._shape(model, kind, name)

    def _split(self, model: str, rows: np.ndarray) -> Iterator[tuple[_Segment, np.ndarray, np.ndarray]]:
        """Per segment: the positions (in ``rows``) it serves and their local row numbers, sorted."""
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        for seg in self._view(model).segments:
            lo = np.searchsorted(sorted_rows, seg.start, "left")
            hi = np.searchsorted(sorted_rows, seg.start + seg.n, "left")
            if hi > lo:
                yield seg, order[lo:hi], sorted_rows[lo:hi] - seg.start

    def _gather(self, model: str, rows: np.ndarray, name: str, dtype: np.dtype) -> np.ndarray:
        pieces = []
        for seg, positions, local in self._split(model, rows):
            with self._segment(seg, model) as group:
                ds = self._dataset(group, name, model, seg)
                if not ds.shape or ds.shape[0] != seg.n:
                    raise CacheError(f"{seg.part or self.path}: dataset {ds.name!r} of model {model!r} has shape "
                                     f"{ds.shape} for {seg.n} samples; the cache is damaged or crafted: extract or "
                                     "import that model again")
                self._check_allocation((len(rows),) + ds.shape[1:], dtype, ds, model)
                pieces.append((positions, self._read_sorted(ds, local, dtype, model)))
        if not pieces:
            return np.zeros((0,) if name.startswith(OUTPUTS) else (0, 0), dtype=dtype)
        out = np.empty((len(rows),) + pieces[0][1].shape[1:], dtype=dtype)
        for positions, values in pieces:
            out[positions] = values
        return out

    def _gather_tokens(
        self, model: str, rows: np.ndarray, layer: str, dtype: np.dtype
    ) -> tuple[np.ndarray, np.ndarray]:
        lengths = np.zeros(len(rows), dtype=np.int64)
        pieces = []
        dim = total_rows = 0
        for seg, positions, local in self._split(model, rows):
            with self._segment(seg, model) as group:
                data_ds = self._dataset(group, f"{TOKENS}/{layer}/{TOKEN_DATA}", model, seg)
                offsets = self._token_offsets(group, layer, model, seg, data_ds.shape[0])
                starts, stops = offsets[local], offsets[local + 1]
                token_rows = _ranges(starts, stops - starts)
                total_rows += len(token_rows)
                self._check_allocation((total_rows,) + data_ds.shape[1:], dtype, data_ds, model)
                data = self._read_sorted(data_ds, token_rows, dtype, model)
                dim = data_ds.shape[1]
            lengths[positions] = stops - starts
            pieces.append((positions, stops - starts, data))
        out_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=out_offsets[1:])
        out = np.empty((int(out_offsets[-1]), dim), dtype=dtype)
        for positions, piece_lengths, data in pieces:
            # the piece holds its samples in sorted-row order; move each to its requested place
            out[_ranges(out_offsets[positions], piece_lengths)] = data
        return out, out_offsets

    def _gather_counts(self, model: str, rows: np.ndarray, layer: str) -> np.ndarray:
        counts = np.zeros(len(rows), dtype=np.int64)
        for seg, positions, local in self._split(model, rows):
            with self._segment(seg, model) as group:
                data_ds = self._dataset(group, f"{TOKENS}/{layer}/{TOKEN_DATA}", model, seg, sizes=False)
                offsets = self._token_offsets(group, layer, model, seg, data_ds.shape[0])
            counts[positions] = offsets[local + 1] - offsets[local]
        return counts

    def _token_offsets(self, group: h5py.Group, layer: str, model: str, seg: _Segment, data_rows: int) -> np.ndarray:
        """A segment's token offsets, checked before use: integers, one more than its samples, rising
        from 0 to the rows of its token data (else a CacheError naming the file and the dataset)."""
        ds = self._dataset(group, f"{TOKENS}/{layer}/{TOKEN_OFFSETS}", model, seg)
        problem = None
        if ds.dtype.kind not in "iu" or ds.ndim != 1:
            problem = f"has dtype {ds.dtype} and shape {ds.shape}; offsets are a 1-D array of integers"
        elif ds.shape[0] != seg.n + 1:
            problem = f"holds {ds.shape[0]} offsets for {seg.n} samples; it needs {seg.n + 1}"
        if problem is None:
            offsets = self._read(ds, (), model).astype(np.int64)
            if offsets[0] != 0 or offsets[-1] != data_rows:
                problem = f"runs from {offsets[0]} to {offsets[-1]}, not from 0 to the {data_rows} rows of its data"
            elif np.any(np.diff(offsets) < 0):
                problem = "decreases somewhere; offsets must not decrease"
            else:
                return offsets
        raise CacheError(f"{seg.part or self.path}: dataset {ds.name!r} of model {model!r} {problem}; the cache is "
                         "damaged or crafted: extract or import that model again")

    def _read_sorted(self, ds: h5py.Dataset, local: np.ndarray, dtype: np.dtype, model: str) -> np.ndarray:
        """Rows ``local`` (sorted, repeats allowed) of a dataset, reading spans of bounded size."""
        shape = ds.shape
        if len(local) == shape[0] and (len(local) == 0 or (local[0] == 0 and local[-1] == shape[0] - 1)):
            if len(local) < 2 or np.all(np.diff(local) == 1):
                return self._read(ds, (), model).astype(dtype, copy=False)
        row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * ds.dtype.itemsize)
        span = max(1, READ_BLOCK_BYTES // row_bytes)
        out = np.empty((len(local),) + shape[1:], dtype=dtype)
        i = 0
        while i < len(local):
            lo = int(local[i])
            j = int(np.searchsorted(local, lo + span, "left"))
            hi = int(local[j - 1]) + 1
            block = self._read(ds, slice(lo, hi), model)
            out[i:j] = block[local[i:j] - lo]
            i = j
        return out


def _row_datasets(group: h5py.Group) -> list[h5py.Dataset]:
    """The datasets of a model group that give its rows: ids, hashes and the id index."""
    index = group.get(ID_INDEX)
    found = [group.get(IDS), group.get(HASHES)] + ([index.get(ID_KEYS), index.get(ID_ROWS)] if index else [])
    return [ds for ds in found if isinstance(ds, h5py.Dataset)]


def _index_covers(group: h5py.Group, n: int) -> bool:
    """Whether a model group's id index covers its ``n`` rows (a version that did not maintain
    the index may have appended rows since: then the ids are read into memory, as before)."""
    index = group.get(ID_INDEX)
    if index is None:
        return False
    try:
        return int(index.attrs.get("covers", -1)) == n == index[ID_KEYS].shape[0] == index[ID_ROWS].shape[0]
    except KeyError:
        return False


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else (None if value is None else str(value))


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + l) for each (s, l), vectorized."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) - np.repeat(first, lengths) + np.repeat(starts, lengths)


def _close(main: h5py.File, *fds: int | None) -> None:
    if main.id.valid:
        main.close()
    for fd in fds:
        if fd is not None:
            os.close(fd)


def _identity(path: Path) -> tuple[int, int, int, int]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CacheError(f"no cache at {path}; check the path (a cache is made by 'repalign extract' or 'repalign cache import')")
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _float_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise CacheError(f"dtype {dtype!r} is not a numpy dtype; use np.float32 or np.float64")
    if dt.kind != "f":
        raise CacheError(f"features are read as floating point; dtype {dt} is not, use np.float32 or np.float64")
    return dt


# ---- aligning two models ----------------------------------------------------------------------


@contextlib.contextmanager
def _opened(cache: Cache | str | os.PathLike) -> Iterator[Cache]:
    if isinstance(cache, Cache):
        yield cache
    else:
        with Cache(cache) as c:
            yield c


def align_ids(
    cache_a: Cache | str | os.PathLike,
    model_a: str,
    cache_b: Cache | str | os.PathLike | None = None,
    model_b: str | None = None,
) -> list[str]:
    """Sample ids stored for both models, in model_a's stored order.

    cache_b defaults to cache_a and model_b to model_a (the same model in another cache). The same
    id must name the same input in both (equal content hashes); otherwise, or when an id repeats
    within a model or no id is shared, CacheError names the ids. Samples stored without a content
    hash (:data:`UNKNOWN_HASH`, features imported with ids only) are matched by id alone, with a
    logged warning saying so.
    """
    with _opened(cache_a) as a, _opened(cache_a if cache_b is None else cache_b) as b:
        model_b = model_a if model_b is None else model_b
        ids_a, ids_b = a.ids(model_a), b.ids(model_b)
        hashes_a = _unique_map(a, model_a, ids_a, a.hashes(model_a))
        hashes_b = _unique_map(b, model_b, ids_b, b.hashes(model_b))
        name_a, name_b = f"{model_a!r} ({a.path})", f"{model_b!r} ({b.path})"
        common = [i for i in ids_a if i in hashes_b]
        if not common:
            raise CacheError(
                f"models {name_a} and {name_b} share no sample ids (first ids: {ids_a[:3]} vs {ids_b[:3]}); "
                "extract both models from the same input files"
            )
        unknown = [i for i in common if UNKNOWN_HASH in (hashes_a[i], hashes_b[i])]
        if unknown:
            log.warning(
                "%d of %d shared samples of %s and %s have no content hash (features imported with ids only): "
                "they are matched by id alone, so the same id must name the same input in both",
                len(unknown), len(common), name_a, name_b,
            )
        changed = [i for i in common if hashes_a[i] != hashes_b[i] and UNKNOWN_HASH not in (hashes_a[i], hashes_b[i])]
        if changed:
            raise CacheError(
                f"ids {few(changed)} name different inputs in {name_a} and {name_b} (content hashes differ); "
                "the inputs changed between the two extractions: re-extract one model on the other's inputs"
            )
        return common


def _unique_map(cache: Cache, model: str, ids: list[str], hashes: list[str]) -> dict[str, str]:
    mapping = dict(zip(ids, hashes))
    if len(mapping) != len(ids):
        seen: set[str] = set()
        repeated: set[str] = set()
        for i in ids:
            (repeated if i in seen else seen).add(i)
        dups = sorted(repeated)
        raise CacheError(
            f"model {model!r} in {cache.path} holds duplicated ids {few(dups)}; the cache is damaged: "
            "extract that model again with overwrite=True"
        )
    return mapping
