"""The on-disk layout of an embeddings cache (see docs/cache-format.md) and the helpers shared by
the writer and the reader: names, validation, opening files, the journal of part files.

This package is the only code in the project that imports h5py.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from embeddings_cache.errors import CacheError

#: value of the root attribute ``format``: tells a cache from any other HDF5 file
FORMAT_NAME = "repalign-embeddings-cache"
#: version of the layout written here; readers accept this version and older ones
FORMAT_VERSION = 1
#: version of the journal parts of an overwrite run (staged until committed): versions that do
#: not know staging refuse them instead of applying them at once
JOURNAL_VERSION = 2

MODELS_GROUP = "models"
JOURNAL_GROUP = "journal"
APPLIED_PARTS = "applied_parts"  # dataset in JOURNAL_GROUP: uuids of parts already in the main file

IDS = "ids"
HASHES = "hashes"
POOLED = "pooled"
TOKENS = "tokens"
OUTPUTS = "outputs"
TOKEN_DATA = "data"
TOKEN_OFFSETS = "offsets"
#: group of a model holding its id index: ``keys`` (uint64, sorted) and ``rows`` (int64), one entry
#: per stored row, sorted by (key, row); attribute ``rows`` = how many leading rows it covers
ID_INDEX = "id_index"
ID_KEYS = "keys"
ID_ROWS = "rows"
#: dataset of a journal part: the 64-bit FNV-1a key of each id (:func:`id_keys`), row-aligned and
#: checksummed, as the id index is for the main file (the ids dataset itself cannot be checksummed)
PART_ID_KEYS = "id_keys"
#: attribute of a model group: the uuid of the journal part that created it (tells a reader whether
#: the model was replaced since it looked)
INSTANCE = "instance"
#: entries per chunk of the id index (8 KiB of keys): a lookup of one id reads one chunk, and
#: a small cache stays small (HDF5 allocates whole chunks)
ID_INDEX_CHUNK = 1024

#: storage dtypes the writer accepts for features
STORAGE_DTYPES = ("float32", "float16")
COMPRESSIONS = ("gzip", "lzf", None)
#: compression of a new cache's models: gzip, which every HDF5 tool reads (lzf needs h5py or a plugin)
DEFAULT_COMPRESSION = "gzip"
#: the writer's default: DEFAULT_COMPRESSION in a new cache, the existing models' compression in another
CACHE_COMPRESSION = "default"
GZIP_LEVEL = 1  # higher levels cost twice the time for ~1% on float features
#: target size of one chunk; HDF5 reads whole chunks, so ~1 MB keeps single-row reads cheap
CHUNK_BYTES = 1 << 20
#: chunk size of 1-D datasets (ids, hashes, offsets, outputs): small, so a small cache stays small
CHUNK_BYTES_1D = 1 << 16

ID_DTYPE = h5py.string_dtype("utf-8")
HASH_DTYPE = np.dtype("S64")
#: content hash of samples whose input is not known (features imported with ids only): such
#: samples are matched to other models by id alone
UNKNOWN_HASH = "0" * 64
UUID_DTYPE = np.dtype("S32")

PART_NAME = re.compile(r"^(\d{8})-([0-9a-f]{32})\.h5$")
TMP_PREFIX = ".tmp-"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# ---- paths ------------------------------------------------------------------------------------------


def parts_dir(path: Path) -> Path:
    """Journal folder of completed batches not yet consolidated into the main file."""
    return path.with_name(path.name + ".parts")


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def consolidating_path(path: Path) -> Path:
    """Temporary copy of the main file being consolidated; replaces the main file when complete."""
    return path.with_name(path.name + ".consolidating")


def list_parts(path: Path) -> list[tuple[int, str, Path]]:
    """Completed parts as (sequence number, uuid, path), in the order they were written.

    Files still being written carry a temporary name and are not listed.
    """
    folder = parts_dir(path)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise CacheError(f"{folder} is not a folder; it is the journal of cache {path}: move that file away")
    parts = []
    for name in names:
        m = PART_NAME.match(name)
        if m:
            parts.append((int(m.group(1)), m.group(2), folder / name))
    parts.sort()
    return parts


# ---- names and values -------------------------------------------------------------------------------


def check_name(name: Any, what: str) -> str:
    """Model, layer and output names become HDF5 link names: dots are fine, '/' is not."""
    if not isinstance(name, str) or not name or name in (".", ".."):
        raise CacheError(f"{what} name {name!r} is not usable; give a non-empty string")
    if "/" in name:
        raise CacheError(f"{what} name {name!r} contains '/'; replace it (e.g. by '.'): '/' separates HDF5 groups")
    if "\x00" in name:
        raise CacheError(f"{what} name {name!r} contains a NUL character; remove it")
    return name


def check_names(names: Any, what: str) -> list[str]:
    if isinstance(names, str):
        raise CacheError(f"{what}s must be a list of names, got the string {names!r}; wrap it in a list")
    out = [check_name(n, what) for n in names]
    dups = sorted({n for n in out if out.count(n) > 1})
    if dups:
        raise CacheError(f"{what} names repeated: {dups}; list each once")
    return out


def check_hash(h: Any, sample_id: str) -> str:
    if not isinstance(h, str) or not _HEX64.match(h):
        raise CacheError(
            f"content hash of sample {sample_id!r} is {h!r}; give the sha256 hex digest (64 lowercase hex characters)"
        )
    return h


def first_line(e: BaseException) -> str:
    """An exception's message, cut to its first line (HDF5 errors span several)."""
    text = str(e)
    return text.splitlines()[0] if text else type(e).__name__


def few(items: list, k: int = 5) -> str:
    """The first k items and the count, for error messages."""
    shown = ", ".join(repr(x) for x in items[:k])
    more = f", ... ({len(items)} in all)" if len(items) > k else f" ({len(items)} in all)"
    return shown + more


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serializable")


def to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise CacheError(
            f"{what} cannot be stored ({first_line(e)}); use plain JSON values (str, numbers, lists, dicts)"
        )


def from_json(text: Any) -> Any:
    if isinstance(text, bytes):
        text = text.decode()
    return json.loads(text)


def chunk_rows(dim: int, itemsize: int) -> int:
    return max(1, CHUNK_BYTES // max(1, dim * itemsize))


def chunk_rows_1d(itemsize: int) -> int:
    return max(1, CHUNK_BYTES_1D // max(1, itemsize))


def filter_options(compression: str | None, checksum: bool = True) -> dict[str, Any]:
    """HDF5 filters of every dataset: a checksum per chunk (a damaged chunk is an error on read,
    not silently wrong numbers), shuffle (groups the bytes of floats by significance, which is
    what makes them compress) and the compressor."""
    options: dict[str, Any] = {"fletcher32": True} if checksum else {}
    if compression == "gzip":
        options.update(compression="gzip", compression_opts=GZIP_LEVEL, shuffle=True)
    elif compression == "lzf":
        options.update(compression="lzf", shuffle=True)
    return options


# ---- files ------------------------------------------------------------------------------------------


def open_h5(path: Path, mode: str = "r") -> h5py.File:
    """Open an HDF5 file; any failure becomes a one-line CacheError.

    The file is opened through a Python file object: HDF5 shares one open file (and its cached
    metadata) among all handles of a process on the same path, which would show a reader opened
    before a writer's in-place commit the old metadata forever. HDF5's own file locking is off:
    this package locks with ``<cache>.lock``, and HDF5 locks fail on some network filesystems.
    """
    check_regular(path)
    try:
        fobj = open(path, "rb" if mode == "r" else "r+b", buffering=0)
    except OSError as e:
        raise CacheError(f"cannot open {path} ({e.strerror}); check its permissions")
    try:
        return _FileOnObject(fobj, mode)
    except OSError as e:
        fobj.close()
        raise CacheError(
            f"{path} is not a readable HDF5 file ({first_line(e)}); it is truncated, corrupt or not a cache: "
            "check the path, or delete it and extract again"
        )


class _FileOnObject(h5py.File):
    """An h5py.File on a Python file object that it closes with itself (h5py leaves it open: every
    closed cache then left an unclosed file behind, a ResourceWarning in notebooks)."""

    def __init__(self, fobj, mode: str):
        super().__init__(fobj, mode, locking=False)
        self._fobj = fobj

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._fobj.close()


def check_regular(path: Path) -> None:
    """CacheError unless ``path`` is a regular file (opening a FIFO would wait forever)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CacheError(f"{path} does not exist; check the path")
    except OSError as e:
        raise CacheError(f"cannot read {path} ({e.strerror}); check the path and its permissions")
    if stat.S_ISDIR(st.st_mode):
        raise CacheError(f"{path} is a folder, not a cache file; give the path of the .h5 file")
    if not stat.S_ISREG(st.st_mode):
        raise CacheError(f"{path} is not a regular file (a pipe or device); give the path of a cache file")


def check_format(f: h5py.File, path: Path, newest: int = FORMAT_VERSION) -> int:
    """Return the file's format version; CacheError if it is not a cache or is newer than ``newest``."""
    try:
        name = f.attrs.get("format")
        version = f.attrs.get("format_version")
    except OSError as e:
        raise CacheError(f"{path} is corrupt ({first_line(e)}); delete it and extract again")
    if isinstance(name, bytes):
        name = name.decode()
    if name != FORMAT_NAME or version is None:
        raise CacheError(f"{path} is an HDF5 file but not an embeddings cache; check the path")
    version = int(version)
    if version > newest:
        raise CacheError(
            f"{path} has cache format version {version}, this version of repalign reads up to {newest}; "
            "upgrade repalign (pip install -U repalign)"
        )
    return version


def write_root_attrs(f: h5py.File) -> None:
    f.attrs["format"] = FORMAT_NAME
    f.attrs["format_version"] = FORMAT_VERSION


def packed_strings(ds: h5py.Dataset, selection: Any = ()) -> np.ndarray:
    """A string dataset (or a slice of it) as a numpy array of UTF-8 byte strings (no Python object
    per entry kept)."""
    if ds.shape[0] == 0:
        return np.zeros(0, dtype="S1")
    raw = ds[selection]
    if raw.dtype.kind == "S":
        return raw
    if not len(raw):
        return np.zeros(0, dtype="S1")
    try:
        return raw.astype("S")  # variable-length strings arrive as bytes objects
    except (UnicodeEncodeError, TypeError, ValueError):
        return np.array([x.encode() if isinstance(x, str) else bytes(x) for x in raw], dtype="S")


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def id_keys(packed: np.ndarray) -> np.ndarray:
    """64-bit FNV-1a hash of each id's UTF-8 bytes (numpy byte strings, as :func:`packed_strings`
    gives): the sort key of the id index.

    FNV-1a: h = 0xcbf29ce484222325; for each byte b: h = (h XOR b) * 0x100000001b3 mod 2**64
    (Fowler, Noll, Vo). Ids hold no NUL byte (the writer refuses them), so numpy's NUL padding of
    shorter strings is told apart by the length of each id. Equal keys do not prove equal ids: the
    reader compares the stored id of every candidate row.
    """
    packed = np.asarray(packed)
    if packed.dtype.kind != "S":
        raise TypeError("id_keys takes numpy byte strings (dtype S)")
    h = np.full(len(packed), _FNV_OFFSET, dtype=np.uint64)
    width = packed.dtype.itemsize
    if not len(packed) or width == 0:
        return h
    raw = np.ascontiguousarray(packed).view(np.uint8).reshape(len(packed), width)
    lengths = np.char.str_len(packed)
    for j in range(int(lengths.max(initial=0))):
        h = np.where(lengths > j, (h ^ raw[:, j].astype(np.uint64)) * _FNV_PRIME, h)
    return h


def read_strings(ds: h5py.Dataset) -> list[str]:
    if ds.shape[0] == 0:
        return []
    if h5py.check_string_dtype(ds.dtype) is not None and ds.dtype.kind == "O":
        return list(ds.asstr()[()])
    return [x.decode() if isinstance(x, bytes) else str(x) for x in ds[()]]


#: entries of the id index read at a time (keys and rows: 1 MiB)
INDEX_SPAN = 1 << 16
#: bytes of a dataset read at a time: bounds memory (and a damaged chunk is reported with its rows)
READ_BLOCK_BYTES = 64 << 20


def keys_by_row(index: h5py.Group, n: int, where: str) -> np.ndarray:
    """The id index's key of each of the first ``n`` rows, in row order: the checksum of each
    stored id (the index is written from the ids and carries a Fletcher-32 checksum per chunk)."""
    out = np.zeros(n, dtype=np.uint64)
    keys_ds, rows_ds = index[ID_KEYS], index[ID_ROWS]
    for start in range(0, n, INDEX_SPAN):
        rows = rows_ds[start:start + INDEX_SPAN]
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= n):
            raise CacheError(f"{where}: its id index points outside its {n} rows; the file is damaged: restore it "
                             "from a copy, or extract the model again with overwrite=True")
        out[rows] = keys_ds[start:start + INDEX_SPAN]
    return out


def check_id_keys(packed: np.ndarray, keys: np.ndarray, expected: np.ndarray, rows: np.ndarray, where: str) -> None:
    """CacheError naming the first stored id (``packed``, with their :func:`id_keys` ``keys``) whose
    key differs from its checksum ``expected``: a damaged id (one flipped byte) would otherwise drop
    its sample silently."""
    bad = np.flatnonzero(keys != expected)
    if len(bad):
        k = int(bad[0])
        stored = bytes(packed[k]).decode("utf-8", errors="replace")
        raise CacheError(
            f"{where}: the stored id of row {int(rows[k])} ({stored!r}) does not match its checksum "
            f"({len(bad)} such row(s)); the file is damaged: restore it from a copy, or extract the model again "
            "with overwrite=True"
        )
