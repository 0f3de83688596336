"""Durable file I/O under HDF5: write-error containment, in-place appends with a redo log, the
readers' commit lock, and keeping a cache's permissions.

Why a Python file object between HDF5 and the disk (h5py's ``fileobj`` driver):

- HDF5 keeps data it failed to write (disk full, file-size limit) dirty in its caches and retries
  when the file is closed and again at interpreter exit, where it crashes the process. Here the
  first failed write is recorded and every later write is discarded, so the file closes cleanly;
  the caller then drops the file and reports one line.
- Appending in place: writes beyond the file's original end go to the disk at once (nothing
  references them yet), writes inside the original bytes (HDF5 metadata: B-tree nodes, object
  headers, the superblock) are held in memory. Committing writes them to a redo log first
  (fsynced, then renamed into place: the commit point), then into the file. A writer killed at any
  moment leaves either the old file (no redo log) or old file + complete redo log, which the next
  writer, or any reader, applies. Appending costs what is appended plus a few KB of metadata,
  whatever the size of the file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import os
import stat
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from embeddings_cache.atomic import atomic_files, fsync_path
from embeddings_cache.errors import CacheError

_REDO_MAGIC = b"repalign-redo-1\n"
_RECORD = struct.Struct("<QQ")  # offset, length
#: byte of the lock file that readers lock shared while reading, and a commit locks exclusive
_COMMIT_BYTE = 64
#: where the lock file holds the commit generation (8 bytes), bumped by every commit
_GENERATION_AT = 72


def _posix_module(name: str) -> ModuleType | None:
    """``fcntl`` or ``resource`` where the platform has them (not on Windows): readers then work
    without the shared lock; writers need them (docs/cache-format.md, "Platforms")."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


fcntl = _posix_module("fcntl")
resource = _posix_module("resource")
#: whether the warning that reads go without the shared lock was given (once per process)
_warned_unlocked = False


class NoLockWarning(UserWarning):
    """Caches are read without the shared lock: this platform has no POSIX byte locks (fcntl)."""


def read_at(fd: int, size: int, offset: int) -> bytes:
    """``os.pread`` where it exists (POSIX), else seek and read (the descriptor is this reader's own)."""
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, size)


def require_posix_locks(path: Path) -> ModuleType:
    """The fcntl module, or a one-line CacheError: writing a cache needs POSIX file locks."""
    if fcntl is None:
        raise CacheError(f"cannot write {path}: this platform has no POSIX file locks (fcntl), which writing a cache "
                         "needs; write it on Linux or macOS and copy the .h5 file here to read it")
    return fcntl


class GuardedFile:
    """A file object for h5py's ``fileobj`` driver over an open descriptor.

    base: None to write everything through; an int to hold writes below it in memory
    (:meth:`pending`) for a redo-log commit. The first failed write is kept in ``error``; later
    writes are discarded so HDF5 can close the file.
    """

    def __init__(self, fd: int, base: int | None = None):
        self.fd = fd
        self.base = base
        self.pos = 0
        self.error: OSError | None = None
        self.overlay: list[tuple[int, bytes]] = []
        self.final_size: int | None = None

    # the subset of io.RawIOBase h5py calls
    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self.pos = offset
        elif whence == 1:
            self.pos += offset
        else:
            self.pos = self._size() + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def _size(self) -> int:
        size = os.fstat(self.fd).st_size
        if self.final_size is not None:
            size = self.final_size
        if self.overlay:
            size = max(size, max(o + len(b) for o, b in self.overlay))
        return size

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        if hasattr(os, "preadv"):
            n = os.preadv(self.fd, [view], self.pos)
        else:  # not POSIX: a copy
            data = read_at(self.fd, len(view), self.pos)
            n = len(data)
            view[:n] = data
        if n < len(view):  # HDF5 reads past the end of a growing file: zeros
            view[n:] = bytes(len(view) - n)
        self._patch(view, self.pos)
        self.pos += len(view)
        return len(view)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self._size() - self.pos)
        buf = bytearray(size)
        self.readinto(buf)
        return bytes(buf)

    def _patch(self, view: memoryview, start: int) -> None:
        end = start + len(view)
        for offset, data in self.overlay:
            lo, hi = max(start, offset), min(end, offset + len(data))
            if lo < hi:
                view[lo - start : hi - start] = data[lo - offset : hi - offset]

    def write(self, data) -> int:
        data = bytes(data)
        n = len(data)
        start, self.pos = self.pos, self.pos + n
        if self.error is not None:
            return n
        if self.base is not None and start < self.base:
            cut = min(n, self.base - start)
            self.overlay.append((start, data[:cut]))
            data, start = data[cut:], self.base
        try:
            while data:
                written = os.pwrite(self.fd, data, start)
                data, start = data[written:], start + written
        except OSError as e:
            self.error = e
        return n

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.error is None:
            if self.base is not None and size < self.base:
                self.final_size = size  # applied at commit
            else:
                try:
                    os.ftruncate(self.fd, size)
                    self.final_size = None
                except OSError as e:
                    self.error = e
        return size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True


class OverlayReader(GuardedFile):
    """Read-only view of a file with a redo log applied in memory (the committed state)."""

    def __init__(self, fd: int, overlay: list[tuple[int, bytes]], final_size: int):
        super().__init__(fd)
        self.overlay = overlay
        self.final_size = final_size

    def write(self, data) -> int:
        raise OSError(errno.EROFS, "read-only view")


# ---- redo log -----------------------------------------------------------------------------------------


def redo_path(path: Path) -> Path:
    return path.with_name(path.name + ".redo")


def write_redo(path: Path, records: list[tuple[int, bytes]], final_size: int, mode_of: Path) -> None:
    """Write the redo log of ``path`` durably: temporary name, fsync, rename (the commit point)."""
    final = redo_path(path)
    tmp = final.with_name(final.name + ".tmp")
    body = bytearray(_REDO_MAGIC)
    body += struct.pack("<QQ", final_size, len(records))
    for offset, data in records:
        body += _RECORD.pack(offset, len(data)) + data
    body += hashlib.sha256(body).digest()
    with atomic_files([final], temps=[tmp], like=mode_of, durable=True):
        fd = os.open(tmp, os.O_WRONLY)
        try:
            write_all(fd, bytes(body))
            os.fsync(fd)
        finally:
            os.close(fd)


def read_redo(path: Path) -> tuple[list[tuple[int, bytes]], int] | None:
    """(records, final size) of a complete redo log of ``path``; None when there is none."""
    try:
        raw = redo_path(path).read_bytes()
    except FileNotFoundError:
        return None
    body, digest = raw[:-32], raw[-32:]
    if not raw.startswith(_REDO_MAGIC) or hashlib.sha256(body).digest() != digest:
        # renamed into place only once complete and fsynced: a mismatch is damage, not a crash
        raise OSError(errno.EIO, f"redo log {redo_path(path)} is damaged")
    at = len(_REDO_MAGIC)
    final_size, count = struct.unpack_from("<QQ", body, at)
    at += 16
    records = []
    for _ in range(count):
        offset, length = _RECORD.unpack_from(body, at)
        at += _RECORD.size
        records.append((offset, bytes(body[at : at + length])))
        at += length
    return records, final_size


def apply_redo(path: Path) -> bool:
    """Apply a pending redo log to ``path`` and delete it; True if there was one. Idempotent."""
    redo = read_redo(path)
    if redo is None:
        return False
    records, final_size = redo
    fd = os.open(path, os.O_RDWR)
    try:
        for offset, data in records:
            write_all(fd, data, offset)
        os.ftruncate(fd, final_size)
        os.fsync(fd)
    finally:
        os.close(fd)
    redo_path(path).unlink()
    fsync_path(path.parent)
    return True


# ---- the readers' commit lock and generation ---------------------------------------------------------


@contextlib.contextmanager
def commit_lock(lock_file: Path) -> Iterator[None]:
    """Held exclusive by a writer while it changes the main file in place (readers wait), then
    the commit generation is bumped so readers opened before reopen the file."""
    locks = require_posix_locks(lock_file)
    fd = os.open(lock_file, os.O_RDWR)
    try:
        locks.lockf(fd, locks.LOCK_EX, 1, _COMMIT_BYTE)
        yield
        old = os.pread(fd, 8, _GENERATION_AT)
        generation = struct.unpack("<Q", old)[0] + 1 if len(old) == 8 else 1
        os.pwrite(fd, struct.pack("<Q", generation), _GENERATION_AT)
    finally:
        os.close(fd)  # releases the byte lock


@contextlib.contextmanager
def read_lock(lock_file: Path) -> Iterator[int]:
    """Shared lock taken by readers around each read; yields the commit generation (0: no writer yet)."""
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        yield 0  # no writer ever ran here (or the folder is not ours): nothing changes in place
        return
    try:
        if fcntl is None:
            _warn_unlocked(lock_file)
        else:
            try:
                fcntl.lockf(fd, fcntl.LOCK_SH, 1, _COMMIT_BYTE)
            except OSError:
                pass  # a filesystem without byte locks: readers still see complete commits mostly
        raw = read_at(fd, 8, _GENERATION_AT)
        yield struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0
    finally:
        os.close(fd)


def _warn_unlocked(lock_file: Path) -> None:
    global _warned_unlocked
    if not _warned_unlocked:
        _warned_unlocked = True
        warnings.warn(f"this platform has no POSIX byte locks (fcntl): {lock_file.name[:-5]} and other caches are read "
                      "without the shared lock, so a read may see a commit half done; read when no writer runs",
                      NoLockWarning, stacklevel=4)


# ---- files, permissions, errors ----------------------------------------------------------------------


def write_all(fd: int, data: bytes, offset: int | None = None) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[n:]
        if offset is not None:
            offset += n


def folder_mode(file_mode: int) -> int:
    """Permission bits of a folder next to a file of ``file_mode``: readable ones also traversable."""
    mode = stat.S_IMODE(file_mode) & 0o777
    return mode | ((mode & 0o444) >> 2)


def is_read_only(st: os.stat_result) -> bool:
    """No write permission bit at all. Checked on the bits, not with access(): root may write any
    file, but a cache its owner made read-only (chmod a-w) must not be changed by anyone."""
    return stat.S_IMODE(st.st_mode) & 0o222 == 0


def file_size_limit() -> int | None:
    if resource is None:  # not POSIX: no per-process file size limit
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def describe_write_failure(error: OSError, path: Path, needed: int) -> str:
    """The one-line reason of a failed write, with the room needed and the fix."""
    mb = 1 << 20
    if error.errno == errno.EFBIG:
        limit = file_size_limit()
        shown = f"{limit / mb:.1f} MB" if limit is not None else "the filesystem's"
        return (f"writing {path} failed: the file would pass the file size limit ({shown}; about "
                f"{needed / mb:.1f} MB needed): raise it (ulimit -f) or write to another filesystem")
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(path.parent)
        return (f"writing {path} failed: no space left ({free / mb:.1f} MB free in {path.parent}, about "
                f"{needed / mb:.1f} MB needed): free some space or write to another disk")
    return f"writing {path} failed ({os.strerror(error.errno) if error.errno else error})"
