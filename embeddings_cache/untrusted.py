"""Checks that make an HDF5 file from elsewhere safe to read, made before any array of it is read.

Feature files to import come from strangers, and so may a cache (a crafted cache is a foreign file
too): the readers of foreign files (:mod:`embeddings_cache.foreign`), :class:`~embeddings_cache.Cache`
and :class:`~embeddings_cache.CacheWriter` all go through this module. Refused, each with a one-line
CacheError naming the file, the member, what was found and the fix:

- external links (objects of another file) and soft links (a name elsewhere in the file or nowhere):
  following them opens files the user never named;
- datasets with external raw storage (their bytes are read from any file of this machine, such as
  /etc/shadow) and virtual datasets (mapped from other files; h5py crashes on some, others read
  back as zeros);
- dtypes that are neither numbers nor strings: compound, opaque, array, references, variable-length
  sequences (the readers turn strings into Python objects, nothing else);
- declared sizes beyond the allocation bound (decompression bombs): a member whose declared size
  exceeds both :data:`MEMBER_BYTES` and :data:`COMPRESSION_RATIO` times what it stores on disk, or
  half the available memory. ``max_member_bytes`` replaces that rule by a plain size limit, for
  trusted files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from embeddings_cache.errors import CacheError
from embeddings_cache.format import HASHES, ID_INDEX, ID_KEYS, ID_ROWS, IDS, READ_BLOCK_BYTES, first_line

#: declared size of one member above which its ratio to what it stores on disk is checked
MEMBER_BYTES = 1 << 30
#: declared size / stored size beyond which a large member is taken for a decompression bomb
COMPRESSION_RATIO = 100

_LINK_KINDS = {h5py.h5l.TYPE_SOFT: "soft", h5py.h5l.TYPE_EXTERNAL: "external"}
_WHY_LINKS = "links in a file from elsewhere can open other files or names the user never gave"


def available_memory() -> int:
    """Bytes of memory available to a new allocation without swapping (Linux MemAvailable, else free pages)."""
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 1 << 62  # unknown: no memory bound (the ratio bound still applies)


def size_text(nbytes: float) -> str:
    """``93.1 GiB``: a byte count for messages."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"


def declared_bytes(shape: tuple[int, ...], itemsize: int) -> int:
    """Bytes an array of ``shape`` takes in memory (Python ints: no overflow)."""
    total = int(itemsize)
    for d in shape:
        total *= int(d)
    return total


def check_member_size(declared: int, stored: int, where: str, max_member_bytes: int | None = None,
                      memory: bool = True) -> None:
    """CacheError unless a member declaring ``declared`` bytes (``stored`` on disk) may be read.

    where: the file and member, e.g. ``"x.h5: dataset 's0' (100000, 250000) float32"``.
    max_member_bytes: None applies the default bound (see the module docstring; ``memory=False``
    drops its memory part, for readers that read in blocks); a number is the largest size allowed.
    """
    if max_member_bytes is not None:
        if declared > max_member_bytes:
            raise CacheError(f"{where} declares {size_text(declared)}, more than max_member_bytes="
                             f"{max_member_bytes}; pass max_member_bytes={declared} if you trust the file")
        return
    if declared > MEMBER_BYTES and declared > COMPRESSION_RATIO * stored:
        raise CacheError(
            f"{where} declares {size_text(declared)} but stores {size_text(stored)} on disk; refused as a possible "
            f"decompression bomb (more than {COMPRESSION_RATIO}x and {size_text(MEMBER_BYTES)}): pass "
            f"max_member_bytes={declared} if you trust the file")
    if memory:
        half = available_memory() // 2
        if declared > half:
            raise CacheError(
                f"{where} declares {size_text(declared)}, more than half the available memory ({size_text(half)}); "
                f"free memory or pass max_member_bytes={declared} if you trust the file")


def check_total_size(total: int, where: str, max_member_bytes: int | None = None) -> None:
    """CacheError when members read together (``total`` bytes) exceed half the available memory;
    a caller's explicit ``max_member_bytes`` (a trusted file) skips this."""
    if max_member_bytes is None:
        check_member_size(total, total, where, None, memory=True)


def check_dtype(dtype: np.dtype, where: str, strings: bool = True) -> None:
    """CacheError unless ``dtype`` is a plain number (or, with ``strings``, an HDF5 string)."""
    kind = _dtype_kind(dtype, strings)
    if kind is not None:
        raise CacheError(f"{where} has {kind} dtype {dtype}; refused: only numbers"
                         + (" and strings" if strings else "") + " are read from files; save plain numeric arrays")


def _dtype_kind(dtype: np.dtype, strings: bool) -> str | None:
    """What is wrong with ``dtype`` (None if nothing)."""
    if dtype.names is not None:
        return "a compound"
    if dtype.subdtype is not None:
        return "an array"
    if h5py.check_ref_dtype(dtype) is not None:
        return "a reference"
    if h5py.check_string_dtype(dtype) is not None:
        return None if strings else "a string"
    if h5py.check_vlen_dtype(dtype) is not None:
        return "a variable-length"
    if dtype.kind in "fiub":
        return None
    return {"V": "an opaque", "O": "an object", "c": "a complex"}.get(dtype.kind, f"a {dtype.kind!r}")


def check_dataset(ds: h5py.Dataset, path: Path | str, max_member_bytes: int | None = None, memory: bool = True,
                  strings: bool = True, sizes: bool = True) -> None:
    """CacheError unless a dataset may be read: no external storage, not virtual, a plain dtype,
    within the allocation bound (see :func:`check_member_size`; ``sizes=False`` leaves it out, for
    a caller that reads no values)."""
    where = f"{path}: dataset {ds.name!r}"
    dcpl = ds.id.get_create_plist()
    if dcpl.get_layout() == h5py.h5d.VIRTUAL:
        sources = sorted({dcpl.get_virtual_filename(i) for i in range(dcpl.get_virtual_count())})
        raise CacheError(f"{where} is a virtual dataset mapped from {', '.join(sources) or 'other files'}; refused: "
                         "its values would be read from other files; store the values in the file itself")
    if dcpl.get_external_count() > 0:
        name = dcpl.get_external(0)[0]
        name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        raise CacheError(f"{where} keeps its values in another file ({name}, HDF5 external storage); refused: it "
                         "could read any file of this machine; store the values in the file itself")
    check_dtype(ds.dtype, where, strings)
    if not sizes:
        return
    shape = ds.shape or ()
    declared = declared_bytes(shape, ds.dtype.itemsize)
    stored = ds.id.get_storage_size()
    check_member_size(declared, stored, f"{where} {shape} {ds.dtype}", max_member_bytes, memory)


def check_row_datasets(group: h5py.Group, path: Path | str, max_member_bytes: int | None = None) -> None:
    """:func:`check_dataset` (ratio rule only: read in blocks) on the datasets of a model group that
    give its rows, ids, hashes and the id index's keys and rows, before any of them is read: the
    reader and the writer (resuming a model, updating its index) run the same checks. The links on
    the way are refused as in :func:`member`."""
    names = [IDS, HASHES, f"{ID_INDEX}/{ID_KEYS}", f"{ID_INDEX}/{ID_ROWS}"]
    for name in names:
        try:
            ds = member(group, name, path)
        except KeyError:
            continue
        if isinstance(ds, h5py.Dataset):
            check_dataset(ds, path, max_member_bytes, memory=False)


def check_links(group: h5py.Group, path: Path | str) -> None:
    """CacheError at the first soft or external link under ``group`` (recursively): links are
    listed without being followed."""
    found: list[tuple[str, int]] = []

    def visit(name: bytes, info: Any) -> int | None:
        if info.type != h5py.h5l.TYPE_HARD:
            found.append((name.decode(errors="replace"), info.type))
            return 1  # stop: the first is reported
        return None

    group.id.links.visit(visit, info=True)
    if found:
        name, kind = found[0]
        full = f"{group.name.rstrip('/')}/{name}"
        raise CacheError(f"{path}: member {full!r} is {_link_text(group, name, kind)}; refused: {_WHY_LINKS}; "
                         "store the data itself in the file")


def _link_text(group: h5py.Group, name: str, kind: int) -> str:
    link = group.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        return f"an external link to {link.filename}:{link.path}"
    if isinstance(link, h5py.SoftLink):
        return f"a soft link to {link.path!r}"
    return f"a {_LINK_KINDS.get(kind, 'user-defined')} link"


def member(group: h5py.Group, name: str, path: Path | str) -> Any:
    """``group[name]`` (``name`` may hold '/'), refusing a soft or external link on the way: the
    link is looked at before it is followed. KeyError when absent, as ``group[name]``."""
    obj = group
    for part in [p for p in name.split("/") if p]:
        link = obj.get(part, getlink=True)
        if link is None:
            raise KeyError(name)
        if not isinstance(link, h5py.HardLink):
            full = f"{obj.name.rstrip('/')}/{part}"
            kind = h5py.h5l.TYPE_EXTERNAL if isinstance(link, h5py.ExternalLink) else h5py.h5l.TYPE_SOFT
            raise CacheError(f"{path}: member {full!r} is {_link_text(obj, part, kind)}; refused: {_WHY_LINKS}; "
                             "store the data itself in the file")
        obj = obj[part]
    return obj


def checked_dataset(group: h5py.Group, name: str, path: Path | str, max_member_bytes: int | None = None,
                    memory: bool = False, sizes: bool = True) -> h5py.Dataset:
    """The dataset ``group[name]`` after :func:`member` and :func:`check_dataset` (the cache's reads:
    in blocks, so no memory bound by default). KeyError when absent; CacheError when not a dataset."""
    ds = member(group, name, path)
    if not isinstance(ds, h5py.Dataset):
        raise CacheError(f"{path}: member {ds.name!r} is a group where a dataset was expected; the file is damaged")
    check_dataset(ds, path, max_member_bytes, memory, sizes=sizes)
    return ds


def check_file(f: h5py.File, path: Path | str, max_member_bytes: int | None = None, memory: bool = True) -> None:
    """Every link and dataset of an open file (see the module docstring), and the sum of the
    datasets' declared sizes against half the available memory (a reader that loads the whole
    file, like anndata, allocates them all)."""
    check_links(f, path)
    datasets: list[str] = []

    def visit(name: bytes, info: Any) -> None:
        if info.type == h5py.h5o.TYPE_DATASET:
            datasets.append(name.decode(errors="replace"))

    h5py.h5o.visit(f.id, visit, info=True)
    total = 0
    for name in datasets:
        ds = f[name]
        check_dataset(ds, path, max_member_bytes, memory)
        total += declared_bytes(ds.shape or (), ds.dtype.itemsize)
    if memory:
        check_total_size(total, f"{path}: its {len(datasets)} datasets together", max_member_bytes)


def read_dataset(ds: h5py.Dataset, path: Path | str) -> np.ndarray:
    """A checked dataset's values, read in blocks of rows: a damaged chunk is reported with the file,
    the dataset and its rows."""
    shape = ds.shape or ()
    if ds.dtype.kind == "O" or not shape or not shape[0]:
        return _read_all(ds, path)
    out = np.empty(shape, dtype=ds.dtype)
    step = max(1, READ_BLOCK_BYTES // max(1, declared_bytes(shape[1:], ds.dtype.itemsize)))
    for start in range(0, shape[0], step):
        stop = min(start + step, shape[0])
        try:
            ds.read_direct(out, np.s_[start:stop], np.s_[start:stop])
        except OSError as e:
            raise CacheError(f"cannot read rows {start}-{stop - 1} of dataset {ds.name!r} of {path} "
                             f"({first_line(e)}); the file is damaged: write it again") from None
    return out


def _read_all(ds: h5py.Dataset, path: Path | str) -> np.ndarray:
    try:
        return np.asarray(ds[()])
    except OSError as e:
        raise CacheError(f"cannot read dataset {ds.name!r} of {path} ({first_line(e)}); the file is damaged: "
                         "write it again") from None

