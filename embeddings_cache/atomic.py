"""Files written whole or not at all: each under a temporary name next to its target, renamed into place.

A reader, or a run after a crash, sees the old file or the new one, never a half-written one.
The cache writes its part files, redo logs and rebuilt main files this way (``durable=True``:
flushed to the disk before and after the rename), and :mod:`repalign.table` re-exports
:func:`atomic_files` for tables, figures, reports and exported features. This module imports
nothing of the project, so the store and the toolkit share it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path


def file_mode() -> int:
    """The mode a new ordinary file gets here (0o666 minus the umask); temporary files are private."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def copy_permissions(fd: int, like: str | os.PathLike | None) -> None:
    """Give the open file ``fd`` the permission bits and group of ``like`` when it exists, else the
    usual mode (:func:`file_mode`): a private (0600) cache keeps its journal private, a
    group-writable one stays so."""
    try:
        st = os.stat(like) if like is not None else None
    except FileNotFoundError:
        st = None
    if st is None:
        os.fchmod(fd, file_mode())
        return
    with contextlib.suppress(OSError):  # a group the user is not a member of cannot be given
        if os.fstat(fd).st_gid != st.st_gid:
            os.fchown(fd, -1, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file (or a folder's entries, after a rename) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reserve(target: Path, temp: Path | None, create: bool, like) -> Path:
    """The temporary file of ``target`` (``temp``, or a fresh hidden name beside it), created with the
    final permissions; with ``create=False`` only the name, for the writer to make a file or a folder."""
    if temp is not None and not create:
        return temp
    if temp is None:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        temp = Path(name)
    else:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if create:
            copy_permissions(fd, like)
    except BaseException:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    os.close(fd)
    if not create:
        temp.unlink()
    return temp


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_files(
    targets: Sequence[str | os.PathLike],
    *,
    temps: Sequence[str | os.PathLike] | None = None,
    like: str | os.PathLike | None = None,
    durable: bool = False,
    create: bool = True,
    lock: contextlib.AbstractContextManager | None = None,
) -> Iterator[list[Path]]:
    """Temporary paths next to each target; on success all are renamed into place, on failure removed.

    ``with atomic_files([a, b]) as (tmp_a, tmp_b): write(tmp_a); write(tmp_b)``: a reader sees
    the old files or the new ones, never a half-written one.

    temps: the temporary names (default: fresh hidden names ``.NAME.*.tmp`` beside each target);
    like: a file whose permission bits and group the new files get (default: the usual mode,
    :func:`file_mode`, not the private mode of temporary files); durable: flush every file before
    its rename and each folder after (the renames survive a power loss); create: False leaves the
    temporary names free for the writer to create a file or a folder there (removed with its
    contents on failure); lock: a context manager held around the renames only.
    """
    paths = [Path(t) for t in targets]
    wanted: list[Path | None] = [None] * len(paths) if temps is None else [Path(t) for t in temps]
    made: list[Path] = []
    try:
        for target, temp in zip(paths, wanted):
            made.append(_reserve(target, temp, create, like))
        yield made
        if durable:
            for temp in made:
                fsync_path(temp)
        with lock if lock is not None else contextlib.nullcontext():
            for temp, target in zip(made, paths):
                os.replace(temp, target)
            if durable:
                for folder in dict.fromkeys(t.parent for t in paths):
                    fsync_path(folder)
    finally:
        for temp in made:
            if os.path.lexists(temp):
                _remove(temp)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an interrupt inside :func:`sigterm_as_interrupt`."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) while the block runs, so ``finally``
    clauses remove temporary files as on Ctrl-C instead of the process dying with them on disk.
    Only in the main thread and when SIGTERM has its default action (a caller's handler is kept)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
