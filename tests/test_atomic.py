"""embeddings_cache.atomic_files: the one way files are replaced, by the cache and by tables, figures and reports."""

import contextlib
import os
import stat

import pytest

from embeddings_cache import atomic_files
from repalign import table


def test_new_files_appear_together_with_the_usual_mode(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.html"
    a.write_text("old a")
    with atomic_files([a, b]) as (ta, tb):
        ta.write_text("new a")
        tb.write_text("new b")
        assert a.read_text() == "old a" and not b.exists()  # nothing visible before the end
    assert a.read_text() == "new a" and b.read_text() == "new b"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(b.stat().st_mode) == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.html"]


def test_a_failure_keeps_the_old_files_and_leaves_no_temporary(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_files([a, tmp_path / "b.csv"]) as (ta, tb):
            ta.write_text("half")
            raise RuntimeError("killed while writing")
    assert a.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.csv"]


def test_permissions_follow_a_given_file_and_named_temporaries_are_used(tmp_path):
    like = tmp_path / "cache.h5"
    like.write_bytes(b"x")
    like.chmod(0o640)
    target, temp = tmp_path / "part.h5", tmp_path / ".tmp-part.h5"
    temp.write_text("stale leftover of a killed writer")
    with atomic_files([target], temps=[temp], like=like, durable=True) as (got,):
        assert got == temp and temp.read_bytes() == b""  # truncated
        assert stat.S_IMODE(temp.stat().st_mode) == 0o640
        temp.write_text("part")
    assert target.read_text() == "part" and not temp.exists()
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_a_writer_may_make_a_folder_which_is_removed_on_failure(tmp_path):
    out = tmp_path / "export"
    with pytest.raises(RuntimeError):
        with atomic_files([out], create=False) as (tmp,):
            assert not tmp.exists()
            tmp.mkdir()
            (tmp / "1.pt").write_bytes(b"x")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    with atomic_files([out], create=False) as (tmp,):
        tmp.mkdir()
        (tmp / "1.pt").write_bytes(b"x")
    assert (out / "1.pt").read_bytes() == b"x"


def test_the_lock_is_held_around_the_renames_only(tmp_path):
    target = tmp_path / "main.h5"
    target.write_text("old")
    seen = []

    @contextlib.contextmanager
    def lock():
        seen.append(("locked", target.read_text()))
        yield
        seen.append(("released", target.read_text()))

    with atomic_files([target], lock=lock()) as (tmp,):
        tmp.write_text("new")
        assert seen == []
    assert seen == [("locked", "old"), ("released", "new")]
    seen.clear()
    with pytest.raises(RuntimeError):
        with atomic_files([target], lock=lock()) as (tmp,):
            raise RuntimeError
    assert seen == [] and target.read_text() == "new"


def test_repalign_table_reexports_the_helper():
    assert table.atomic_files is atomic_files
