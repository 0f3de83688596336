"""What this tool wrote, and only that, may be replaced: the manifests of exports and of the demo.

A folder receiving exports (or the demo's output) holds a manifest, a small JSON file
(``.repalign-exports``, ``.repalign-demo``) listing each name the tool wrote there with the SHA-256
of what it wrote (a folder's digest covers the names and digests of its files). A name is replaced
only when the manifest lists it and its content still has a listed digest: nothing the user made,
changed or put in its place is replaced or deleted. This is how :mod:`repalign.report` keeps its
folder.

Output is written in a hidden work folder beside its target (``.repalign-work-XXXXXXXX.tmp``),
locked (``flock``) while in use and removed at the end, on an error, on Ctrl-C and on SIGTERM
(:func:`embeddings_cache.atomic.sigterm_as_interrupt`); one a kill left behind is unlocked, and
the next run writing into that folder removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from embeddings_cache.atomic import atomic_files
from repalign.errors import RepalignError

WORK_PREFIX, WORK_SUFFIX = ".repalign-work-", ".tmp"


def digest(path: Path) -> str | None:
    """SHA-256 of a file, or of a folder's files (sorted names and their digests); None for a link,
    a special file, or a folder holding either or a subfolder (never something this tool wrote)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISREG(st.st_mode):
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    if not stat.S_ISDIR(st.st_mode):
        return None
    lines = []
    for name in sorted(os.listdir(path)):
        if not stat.S_ISREG(os.lstat(path / name).st_mode):
            return None
        lines.append(f"{name}\0{digest(path / name)}\n")
    return "folder:" + hashlib.sha256("".join(lines).encode()).hexdigest()


class Manifest:
    """The manifest ``name`` of ``folder``: the names ``writer`` wrote there and their digests."""

    def __init__(self, folder: Path, name: str, writer: str):
        self.folder, self.path, self.writer = folder, folder / name, writer

    def files(self) -> dict[str, list[str]]:
        """name -> digests ({} without a manifest); a file of that name not written by us is an error."""
        if not os.path.lexists(self.path):
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("written_by") != self.writer or not stat.S_ISREG(os.lstat(self.path).st_mode):
                raise ValueError("not ours")
            return {str(k): [str(d) for d in v] for k, v in data["files"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise RepalignError(f"{self.path} was not written by '{self.writer}' (it keeps the list of the files it "
                                "wrote there); move it away or choose another folder") from None

    def owns(self, target: Path) -> bool:
        """Whether ``target`` is a file or folder this manifest lists, unchanged since it was written."""
        digests = self.files().get(target.name, [])
        found = digest(target)
        return found is not None and found in digests

    def record(self, name: str, digests: list[str]) -> None:
        files = self.files()
        files[name] = digests
        with atomic_files([self.path]) as (tmp,):
            tmp.write_text(json.dumps({"written_by": self.writer, "files": files}, indent=1, sort_keys=True) + "\n",
                           encoding="utf-8")

    def replace(self, new: Path, target: Path, work: Path) -> None:
        """Move ``new`` (in the work folder ``work``) to ``target``, replacing an earlier output there
        (checked by the caller: :meth:`owns`). The manifest lists the old and the new digest while
        the names change, so an interrupted run leaves a target the next one still knows as its own."""
        new_digest = digest(new)
        assert new_digest is not None
        old = self.files().get(target.name, []) if os.path.lexists(target) else []
        self.record(target.name, sorted(set(old) | {new_digest}))
        if os.path.lexists(target) and (new.is_dir() or target.is_dir()):
            # a folder cannot be renamed over a full one: the old one goes aside, and is deleted with the
            # work folder only if it is still what the manifest lists (else it is put back untouched)
            aside = work / (".old-" + target.name)
            os.rename(target, aside)
            if digest(aside) not in old:
                os.rename(aside, target)
                self.record(target.name, old)
                raise RepalignError(f"{target} changed while it was being replaced (it is no longer the earlier "
                                    "export); it was left as it is: move it away or choose another name")
            os.rename(new, target)
        else:
            os.replace(new, target)  # a file: one atomic rename, the target is never missing
        self.record(target.name, [new_digest])


def _remove_stale_work_folders(parent: Path) -> None:
    """Delete work folders that killed runs left in ``parent`` (those no live run holds locked)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        path = parent / name
        if not (name.startswith(WORK_PREFIX) and name.endswith(WORK_SUFFIX)) or path.is_symlink() or not path.is_dir():
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # a run in progress holds it
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


@contextlib.contextmanager
def work_folder(parent: Path) -> Iterator[Path]:
    """A new hidden folder in ``parent``, locked while the block runs and removed after it, whatever
    happens; stale ones of killed runs are removed first."""
    _remove_stale_work_folders(parent)
    try:
        path = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, suffix=WORK_SUFFIX, dir=parent))
    except OSError as e:
        raise RepalignError(f"cannot write in {parent} ({e.strerror}); choose a writable folder") from None
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)
