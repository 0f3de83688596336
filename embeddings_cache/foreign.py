"""Readers of HDF5 feature files written by other tools (this package is the only code using h5py).

bio_embeddings-style files hold one dataset per sample at the root of the file, named by the
sample id, or by a hash of the sequence with the id in the dataset attribute ``original_id``
(bio_embeddings' ``embeddings_file.h5`` and ``reduced_embeddings_file.h5``). A dataset is one
per-sample vector ``(D,)``, per-residue rows ``(L, D)``, or per-residue rows of several layers
``(K, L, D)`` (SeqVec); every dataset of a file has the same number of dimensions.

Such files come from elsewhere: every link and dataset is checked (:mod:`embeddings_cache.untrusted`:
no links, no external or virtual storage, plain dtypes, declared sizes within the allocation bound)
before any value is read.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from embeddings_cache.durable import GuardedFile
from embeddings_cache.errors import CacheError
from embeddings_cache.format import FORMAT_NAME, few, first_line, open_h5
from embeddings_cache.untrusted import (
    check_dataset,
    check_file,
    check_links,
    check_member_size,
    check_total_size,
    declared_bytes,
    member,
    read_dataset,
)

#: dataset attribute bio_embeddings uses for the id when datasets are named by sequence hash
ORIGINAL_ID = "original_id"


@dataclass(frozen=True)
class PerIdDataset:
    """One sample of a per-id HDF5 file: its id, the dataset's name in the file, shape and dtype."""

    id: str
    key: str
    shape: tuple[int, ...]
    dtype: str


def check_foreign_h5(path: str | os.PathLike, max_member_bytes: int | None = None) -> None:
    """CacheError (one line) unless every link and dataset of the HDF5 file at ``path`` may be read
    (:func:`embeddings_cache.untrusted.check_file`); for readers outside this package (anndata),
    called before they open the file."""
    with open_foreign_h5(path, max_member_bytes):
        pass


@contextlib.contextmanager
def open_foreign_h5(path: str | os.PathLike, max_member_bytes: int | None = None) -> Iterator[h5py.File]:
    """The HDF5 file at ``path``, open and checked as by :func:`check_foreign_h5`: a reader that reads
    from the yielded file (anndata's ``read_elem``) reads what was checked, through the same open file,
    even when the path is replaced meanwhile."""
    path = Path(path)
    with open_h5(path) as f:
        try:
            check_file(f, path, max_member_bytes)
            _check_loaded_whole(f, path, max_member_bytes)
        except OSError as e:
            raise CacheError(f"{path} is damaged ({first_line(e)}); write it again")
        yield f


_SPARSE = ("csr_matrix", "csc_matrix")


def _check_loaded_whole(f: h5py.File, path: Path, max_member_bytes: int | None) -> None:
    """What a reader that loads the whole file (anndata) allocates: an object with several names
    (hard links) is refused, as it is loaded once per name; a sparse matrix (anndata's csr/csc
    group) counts at its dense size, which the importer allocates (toarray), alone and together with
    every other dataset of the file, against the allocation bound."""
    found: list[tuple[str, int]] = []  # (name, link count): h5py reuses the info object, so it is read here
    h5py.h5o.visit(f.id, lambda name, info: found.append((name.decode(errors="replace"), info.rc)), info=True)
    total = 0
    for name, links in found:
        if links > 1:
            raise CacheError(f"{path}: member '/{name}' has {links} names (hard links); refused: a reader that "
                             "loads the whole file allocates it once per name; store each array under one name")
        obj = f[name]
        if isinstance(obj, h5py.Dataset):
            total += declared_bytes(obj.shape or (), obj.dtype.itemsize)
            continue
        encoding = obj.attrs.get("encoding-type")
        encoding = encoding.decode(errors="replace") if isinstance(encoding, bytes) else encoding
        data = obj.get("data")
        if encoding not in _SPARSE or not isinstance(data, h5py.Dataset):
            continue
        try:
            shape = tuple(int(d) for d in obj.attrs["shape"])
        except (KeyError, TypeError, ValueError):
            raise CacheError(f"{path}: sparse matrix '/{name}' has no valid shape attribute; write the file again") from None
        dense = declared_bytes(shape, data.dtype.itemsize)
        stored = sum(obj[k].id.get_storage_size() for k in ("data", "indices", "indptr") if isinstance(obj.get(k), h5py.Dataset))
        check_member_size(dense, stored, f"{path}: sparse matrix '/{name}' {shape} {data.dtype} (dense)", max_member_bytes)
        total += dense
    check_total_size(total, f"{path}: its datasets and the dense sizes of its sparse matrices together", max_member_bytes)


def index_per_id_h5(path: str | os.PathLike, max_member_bytes: int | None = None) -> list[PerIdDataset]:
    """The samples of a bio_embeddings-style file, in the file's order; nothing is read but metadata.

    CacheError (one line) when the file is not such a file: not HDF5, a repalign cache, a member
    that is a group or not numeric, datasets of different ranks, or an id given twice; or when it is
    not safe to read (links, external or virtual storage, declared sizes beyond the allocation
    bound: ``max_member_bytes``, see :mod:`embeddings_cache.untrusted`).
    """
    path = Path(path)
    out: list[PerIdDataset] = []
    with open_h5(path) as f:
        if f.attrs.get("format") in (FORMAT_NAME, FORMAT_NAME.encode()):
            raise CacheError(
                f"{path} is a repalign embeddings cache, not a feature file to import; "
                "compare it directly (repalign compare) or export a model from it (repalign cache export)"
            )
        try:
            check_links(f, path)
            for key in f.keys():
                out.append(_indexed(f[key], key, path, max_member_bytes))
        except OSError as e:
            raise CacheError(f"{path} is damaged ({first_line(e)}); write it again")
        # the reader holds every sample at once: their sum must fit too
        total = sum(declared_bytes(d.shape, np.dtype(d.dtype).itemsize) for d in out)
        check_total_size(total, f"{path}: its {len(out)} datasets together", max_member_bytes)
    if not out:
        raise CacheError(f"{path} holds no datasets; a per-id feature file holds one dataset per sample")
    ranks = sorted({len(d.shape) for d in out})
    if len(ranks) > 1 or ranks[0] not in (1, 2, 3):
        raise CacheError(
            f"{path}: datasets have {'/'.join(map(str, ranks))} dimensions; give (D,) vectors, (L, D) per-residue "
            "rows or (layers, L, D) for every sample alike"
        )
    dups = _repeated([d.id for d in out])
    if dups:
        raise CacheError(f"{path}: sample ids given twice: {few(dups)}; give each sample once")
    return out


def _repeated(items: list[str]) -> list[str]:
    """The items given more than once, sorted."""
    seen: set[str] = set()
    repeated: set[str] = set()
    for item in items:
        (repeated if item in seen else seen).add(item)
    return sorted(repeated)


def _indexed(item: h5py.Dataset | h5py.Group, key: str, path: Path, max_member_bytes: int | None) -> PerIdDataset:
    if not isinstance(item, h5py.Dataset):
        raise CacheError(
            f"{path}: member {key!r} is a group; a per-id feature file holds one dataset per sample at its root"
        )
    check_dataset(item, path, max_member_bytes)
    if item.dtype.kind not in "fiu":
        raise CacheError(f"{path}: dataset {key!r} has dtype {item.dtype}; features must be numbers")
    original = item.attrs.get(ORIGINAL_ID)
    if isinstance(original, bytes):
        original = original.decode(errors="replace")
    sample = str(original) if original is not None else key
    return PerIdDataset(sample, key, tuple(int(d) for d in item.shape), item.dtype.name)


def read_per_id_h5(path: str | os.PathLike, keys: Sequence[str], max_member_bytes: int | None = None) -> list[np.ndarray]:
    """The datasets named ``keys`` (see :func:`index_per_id_h5`), as numpy arrays, in that order.

    The file is checked again (it may have changed since it was indexed), and each dataset is read
    in blocks of rows, so a damaged chunk is reported with the dataset and its rows."""
    path = Path(path)
    with open_h5(path) as f:
        out = []
        for key in keys:
            try:
                item = member(f, key, path)
            except KeyError:
                item = None
            if not isinstance(item, h5py.Dataset):
                raise CacheError(f"cannot read dataset {key!r} of {path}: the file changed since it was indexed; "
                                 "import it again")
            check_dataset(item, path, max_member_bytes)
            out.append(read_dataset(item, path))
        return out


@contextlib.contextmanager
def new_h5_file(path: str | os.PathLike) -> Iterator[h5py.File]:
    """A new HDF5 file at ``path`` for another library to write into (anndata's ``write_elem``).

    HDF5 writing to a full disk or past the file size limit can crash the process when it closes
    the file; here its writes go through a file object that keeps the first failed write and
    discards the later ones, so the file closes cleanly, and that failure is raised as the OSError
    it was (errno ENOSPC, EFBIG, ...). The caller removes the file.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        guard = GuardedFile(fd)
        try:
            with h5py.File(guard, "w", locking=False) as f:
                yield f
        except Exception:
            if guard.error is None:
                raise
        if guard.error is not None:
            raise guard.error
    finally:
        os.close(fd)
