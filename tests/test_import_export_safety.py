"""Import and export with the user's files at stake: a failed or killed import leaves the cache as it
was (or resumable), export and demo replace only what they wrote, and a full disk, a signal or a
kill leaves one line of error and no temporary file. Real files, real subprocesses and signals where
the process boundary is the point."""

from __future__ import annotations

import hashlib
import logging
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from embeddings_cache import Cache, CacheWriter
from repalign.cli import main
from repalign.errors import RepalignError

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture
def run_main(capsys):
    """`repalign ARGS` in this process (main is the whole CLI): exit code, stdout, stderr."""

    def run(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
        capsys.readouterr()
        root = logging.getLogger()
        saved = root.handlers[:]
        root.handlers = []  # main's logging.basicConfig then writes to this call's captured stderr
        here = os.getcwd()
        try:
            if cwd is not None:
                os.chdir(cwd)
            code = main([str(a) for a in args])
        finally:
            os.chdir(here)
            root.handlers = saved
        out = capsys.readouterr()
        return subprocess.CompletedProcess(["repalign", *args], code, out.out, out.err)

    return run


def _hashes(ids: list[str]) -> list[str]:
    return [hashlib.sha256(i.encode()).hexdigest() for i in ids]


def _cache(path: Path, n: int = 40, dim: int = 8, tokens: bool = False) -> Path:
    ids = [f"s{i}" for i in range(n)]
    rng = np.random.default_rng(0)
    with CacheWriter(path, "m", {"options": {}}, ["l"], token_layers=["l"] if tokens else ()) as w:
        w.append(ids, _hashes(ids), {"l": rng.normal(size=(n, dim)).astype(np.float32)},
                 tokens={"l": [rng.normal(size=(3, dim)).astype(np.float32) for _ in ids]} if tokens else None)
    return path


def _one_line_error(res, *fragments: str) -> None:
    assert res.returncode == 1, res
    assert res.stderr.startswith("repalign: error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr
    for fragment in fragments:
        assert fragment in res.stderr, res.stderr


def _default_signals_and_file_size_limit(nbytes: int | None = None):
    def apply() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)  # also when the tests run as a background job
        if nbytes is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


# ---- a full disk while exporting ------------------------------------------------------------------------


def test_a_full_disk_while_exporting_is_one_line_and_leaves_nothing(tmp_path):
    cache = _cache(tmp_path / "c.h5", n=300, dim=256, tokens=True)
    outs = ["o.h5ad", "o.npz", "o.parquet", "folder"]
    script = textwrap.dedent("""
        import sys
        from repalign.cli import main
        for out in sys.argv[2:]:
            code = main(["cache", "export", sys.argv[1], "-m", "m", "-o", out])
            print(out, code, flush=True)
            print("--", file=sys.stderr, flush=True)
    """)
    res = subprocess.run([sys.executable, "-c", script, str(cache), *outs], cwd=tmp_path, env=ENV, text=True,
                         capture_output=True, timeout=120, preexec_fn=_default_signals_and_file_size_limit(3_000))
    assert res.returncode == 0, res.stderr  # no crash: HDF5 writing the .h5ad crashed (SIGSEGV) or left a traceback
    assert res.stdout.split() == [w for out in outs for w in (out, "1")]
    errors = res.stderr.split("--\n")[:-1]
    for out, err in zip(outs, errors):
        assert err.count("\n") == 1 and err.startswith(f"repalign: error: writing {tmp_path / out} failed: the file "
                                                       "would pass the file size limit"), err
        assert "Traceback" not in err and "nothing was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5", "c.h5.lock", "c.h5.parts"]


# ---- import is a transaction ---------------------------------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _FileSizeLimit:
    """RLIMIT_FSIZE in this process (writes past it fail with EFBIG), restored on exit."""

    def __init__(self, nbytes: int):
        self.nbytes = nbytes

    def __enter__(self):
        self.saved = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.nbytes, self.saved[0][1]))

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_FSIZE, self.saved[0])
        signal.signal(signal.SIGXFSZ, self.saved[1])


def test_a_failed_import_leaves_the_models_as_they_were_and_a_rerun_completes_it(tmp_path, run_main):
    cache = _cache(tmp_path / "c.h5")
    x = np.random.default_rng(1).normal(size=(3000, 64)).astype(np.float32)
    np.save(tmp_path / "f.npy", x)
    (tmp_path / "ids.txt").write_text("\n".join(f"r{i}" for i in range(3000)))
    args = ("cache", "import", tmp_path / "f.npy", "-m", "imp", "--ids", tmp_path / "ids.txt", "-o", cache)
    before = _digest(cache)
    with _FileSizeLimit(100_000):  # less than one batch: the first batch fails (it left an empty model)
        res = run_main(*args)
    _one_line_error(res, "the file would pass the file size limit")
    assert _digest(cache) == before
    with Cache(cache) as c:
        assert c.models == ["m"] and c.unfinished_overwrites == {}
    res = run_main(*args)  # no --overwrite needed
    assert res.returncode == 0 and "stored 3000 samples x 1 layers" in res.stdout, res.stderr
    with Cache(cache) as c:
        assert c.models == ["imp", "m"]
        np.testing.assert_array_equal(c.read_layer("imp", "layer.0"), x)


def _import_until_batches(source: Path, cache: Path, batches: int, sig: int) -> subprocess.Popen:
    """A real `repalign cache import` process, sent ``sig`` once ``batches`` of its batches are staged."""
    proc = subprocess.Popen([sys.executable, "-m", "repalign", "cache", "import", str(source), "-m", "imp", "-o",
                             str(cache)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_signals_and_file_size_limit())
    parts = cache.with_name(cache.name + ".parts")
    while proc.poll() is None and len(list(parts.glob("0*.h5"))) < batches:
        time.sleep(0.002)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    proc.stdout.close()  # a failing assertion must not leave the pipe for the garbage collector (a ResourceWarning in a later test)
    return proc


def _features_file(path: Path, n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 64)).astype(np.float32)
    np.savez(path, ids=np.array([f"r{i}" for i in range(n)]), emb=x)
    return x


def test_ctrl_c_during_an_import_keeps_the_cache_and_a_corrected_file_needs_no_overwrite(tmp_path, run_main):
    cache = _cache(tmp_path / "c.h5")
    _features_file(tmp_path / "f.npz", 20_000, seed=1)
    before = _digest(cache)
    proc = _import_until_batches(tmp_path / "f.npz", cache, 3, signal.SIGINT)
    with proc.stderr:
        err = proc.stderr.read()
    assert proc.returncode == 130 and err.count("\n") == 1 and "interrupted" in err and "rerun the same command" in err, err
    assert _digest(cache) == before
    with Cache(cache) as c:
        assert c.models == ["m"] and c.unfinished_overwrites["imp"] >= 2
    x = _features_file(tmp_path / "f.npz", 20_000, seed=2)  # another file: its kept batches are dropped
    res = run_main("cache", "import", tmp_path / "f.npz", "-m", "imp", "-o", cache)
    assert res.returncode == 0 and "interrupted run" not in res.stdout, res.stderr  # it said "pass --overwrite"
    with Cache(cache) as c:
        np.testing.assert_array_equal(c.read_layer("imp", "emb"), x)
        assert c.unfinished_overwrites == {}
    assert [p.name for p in (tmp_path / "c.h5.parts").iterdir()] == []


def test_an_import_killed_midway_leaves_the_cache_as_it_was_and_resumes(tmp_path, run_main):
    cache = _cache(tmp_path / "c.h5")
    x = _features_file(tmp_path / "f.npz", 20_000, seed=3)
    before = _digest(cache)
    proc = _import_until_batches(tmp_path / "f.npz", cache, 3, signal.SIGKILL)
    with proc.stderr:
        err = proc.stderr.read()
    assert proc.returncode == -signal.SIGKILL, err
    assert _digest(cache) == before
    with Cache(cache) as c:
        assert c.models == ["m"] and c.unfinished_overwrites["imp"] >= 2  # nothing of it shown
    info = run_main("cache", "info", cache).stdout  # it showed model 'imp' with part of its samples, unflagged
    assert "model 'imp': a run that adds it (an import) was interrupted or failed after" in info
    assert "rerun the same command to complete it" in info and "model 'imp':" not in info.split("\n", 2)[-1]
    res = run_main("cache", "import", tmp_path / "f.npz", "-m", "imp", "-o", cache)
    assert res.returncode == 0, res.stderr
    assert "stored 20000 samples" in res.stdout and "of them stored by the interrupted run" in res.stdout
    with Cache(cache) as c:
        np.testing.assert_array_equal(c.read_layer("imp", "emb"), x)
        assert c.ids("imp") == [f"r{i}" for i in range(20_000)]


# ---- export and demo write only what they own ----------------------------------------------------------


def test_export_overwrite_replaces_only_an_earlier_export_never_the_users_files_or_the_cache(tmp_path, run_main):
    project = tmp_path / "project"
    project.mkdir()
    cache = _cache(project / "c.h5")
    (project / "notes.txt").write_text("my notes")
    (tmp_path / "userdir").mkdir()
    (tmp_path / "userdir" / "thesis.txt").write_text("thesis")
    (tmp_path / "dir.npz").mkdir()
    (tmp_path / "dir.npz" / "notes.txt").write_text("notes")
    (tmp_path / "dangling.npz").symlink_to(tmp_path / "nowhere.npz")
    before = _digest(cache)
    refused = {  # each emptied or replaced the user's data, or deleted the cache and exited 0
        ".": ("is the cache c.h5, a file of it or a folder holding it", project),
        str(tmp_path / "userdir"): ("is a folder that 'repalign cache export' did not write", None),
        str(tmp_path / "dir.npz"): ("is a folder that 'repalign cache export' did not write", None),
        str(project): ("a folder holding it", None),
    }
    for out, (fragment, cwd) in refused.items():
        _one_line_error(run_main("cache", "export", "c.h5" if cwd else cache, "-m", "m", "-o", out, "--overwrite",
                                 cwd=cwd), fragment)
    _one_line_error(run_main("cache", "export", cache, "-m", "m", "-o", tmp_path / "dangling.npz"),
                    "is a symbolic link; export never replaces a link")
    assert (project / "notes.txt").read_text() == "my notes" and _digest(cache) == before
    assert (tmp_path / "userdir" / "thesis.txt").read_text() == "thesis"
    assert (tmp_path / "dir.npz" / "notes.txt").read_text() == "notes"
    assert os.readlink(tmp_path / "dangling.npz") == str(tmp_path / "nowhere.npz")
    assert not (tmp_path / "nowhere.npz").exists()
    # an earlier export is replaced, file or folder; one the user changed since is not
    for out in ("out.npz", "folder"):
        assert run_main("cache", "export", cache, "-m", "m", "-o", tmp_path / out).returncode == 0
        _one_line_error(run_main("cache", "export", cache, "-m", "m", "-o", tmp_path / out), "already exists")
        res = run_main("cache", "export", cache, "-m", "m", "-o", tmp_path / out, "--overwrite")
        assert res.returncode == 0, res.stderr
    (tmp_path / "folder" / "mine.txt").write_text("added by the user")
    _one_line_error(run_main("cache", "export", cache, "-m", "m", "-o", tmp_path / "folder", "--overwrite"),
                    "did not write (or that was changed since)")
    assert (tmp_path / "folder" / "mine.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".repalign-exports"]


def _export_until_written(cache: Path, out: Path, sig: int) -> subprocess.Popen:
    """A real `repalign cache export` process, sent ``sig`` once it is writing its work folder."""
    proc = subprocess.Popen([sys.executable, "-m", "repalign", "cache", "export", str(cache), "-m", "m", "-o",
                             str(out)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_signals_and_file_size_limit())
    while proc.poll() is None and not any(len(list(w.glob("*/*.pt"))) > 20 for w in out.parent.glob(".repalign-work-*")):
        time.sleep(0.002)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    proc.stdout.close()  # a failing assertion must not leave the pipe for the garbage collector (a ResourceWarning in a later test)
    return proc


def test_export_removes_its_temporary_files_on_sigint_and_sigterm_and_after_sigkill(tmp_path, run_main):
    cache = _cache(tmp_path / "c.h5", n=3000, dim=4)
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = _export_until_written(cache, tmp_path / "out", sig)
        err = proc.stderr.read()
        assert proc.returncode == 130 and err == "repalign: interrupted\n", (sig, proc.returncode, err)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5", "c.h5.lock", "c.h5.parts"], sig
    proc = _export_until_written(cache, tmp_path / "out", signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in tmp_path.glob(".repalign-work-*")]  # a kill leaves it: nothing runs after SIGKILL
    assert run_main("cache", "export", cache, "-m", "m", "-o", tmp_path / "out.npz").returncode == 0
    assert list(tmp_path.glob(".repalign-work-*")) == []  # the next export there removed it


def test_the_demo_refuses_to_replace_the_users_files_before_any_work(tmp_path, run_main):
    from repalign.demo import DEMO_MANIFEST, check_demo_output
    from repalign.interop.owned import Manifest, digest

    out = tmp_path / "study"
    out.mkdir()
    (out / "scores.csv").write_text("the user's own table\n")
    _one_line_error(run_main("demo", "-o", out, "--quiet"), f"{out / 'scores.csv'} was not written by 'repalign demo'")
    assert (out / "scores.csv").read_text() == "the user's own table\n"
    assert sorted(p.name for p in out.iterdir()) == ["scores.csv"]  # no cache, nothing extracted
    # files an earlier demo wrote (listed in its manifest, unchanged) are the demo's to replace
    Manifest(out, DEMO_MANIFEST, "repalign demo").record("scores.csv", [str(digest(out / "scores.csv"))])
    check_demo_output(out)
    (out / "scores.csv").write_text("edited since\n")
    with pytest.raises(RepalignError, match="was not written by 'repalign demo' \\(or was changed since\\)"):
        check_demo_output(out)


def test_a_resumed_import_with_other_ids_discards_the_rows_bound_by_the_wrong_ones(tmp_path, monkeypatch):
    import repalign.interop.importing as importing
    from repalign.interop import import_features

    np.save(tmp_path / "x.npy", np.arange(8, dtype=np.float32).reshape(4, 2))  # row k holds 2k, 2k+1
    monkeypatch.setattr(importing, "IMPORT_BATCH", 2)
    append = CacheWriter.append
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return append(self, *args, **kwargs)

    monkeypatch.setattr(CacheWriter, "append", interrupted)
    with pytest.raises(KeyboardInterrupt):  # a wrong ids file: rows 0 and 1 bound to s1 and s0
        import_features(tmp_path / "x.npy", tmp_path / "c.h5", "m", ids=["s1", "s0", "s3", "s2"])
    monkeypatch.setattr(CacheWriter, "append", append)
    right = ["s0", "s1", "s2", "s3"]
    run = import_features(tmp_path / "x.npy", tmp_path / "c.h5", "m", ids=right)
    assert run.resumed == 0  # another binding is another run: nothing of the first one is kept
    with Cache(tmp_path / "c.h5") as c:
        np.testing.assert_array_equal(c.read_layer("m", "layer.0", ids=right), np.arange(8).reshape(4, 2))


def test_an_esm_folder_with_a_symlink_or_fifo_named_pt_is_refused_in_one_line(tmp_path, run_main):
    torch = pytest.importorskip("torch")
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        for k in range(2):
            torch.save({"label": f"s{k}", "mean_representations": {1: torch.ones(4) * k}}, folder / f"p{k}.pt")
    (tmp_path / "a" / "zzz.pt").symlink_to("/dev/zero")  # hashing it for the provenance never ended
    os.mkfifo(tmp_path / "b" / "zzz.pt")
    for name, fragment in (("a", "a symbolic link in the ESM folder"), ("b", "not a regular file (a FIFO")):
        res = run_main("cache", "import", tmp_path / name, "-m", "m", "-o", tmp_path / "c.h5")
        assert res.returncode == 1 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
        assert f"{tmp_path / name / 'zzz.pt'}: refused, {fragment}" in res.stderr, res.stderr
    (tmp_path / "a" / "zzz.pt").unlink()
    res = run_main("cache", "import", tmp_path / "a", "-m", "m", "-o", tmp_path / "c.h5")
    assert res.returncode == 0, res.stderr
    with Cache(tmp_path / "c.h5") as c:
        assert c.ids("m") == ["s0", "s1"]


def test_export_refuses_layers_that_together_exceed_half_the_memory_before_reading(tmp_path, run_main, monkeypatch):
    import embeddings_cache.untrusted as untrusted

    ids = [f"s{i}" for i in range(1000)]
    with CacheWriter(tmp_path / "c.h5", "m", {"options": {}}, ["a", "b", "c"]) as w:
        w.append(ids, _hashes(ids), {l: np.ones((1000, 100), np.float32) for l in "abc"})  # 400 KB each
    monkeypatch.setattr(untrusted, "available_memory", lambda: 2_000_000)  # half: 1 MB, below 1.2 MB
    res = run_main("cache", "export", tmp_path / "c.h5", "-m", "m", "-o", tmp_path / "out.npz")
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    assert ("model 'm': the 3 layers to export take 1.1 MiB in memory together, more than half the available "
            "memory (976.6 KiB); export fewer layers at a time (--layers NAME ...)") in res.stderr, res.stderr
    assert not (tmp_path / "out.npz").exists()
    res = run_main("cache", "export", tmp_path / "c.h5", "-m", "m", "--layers", "a", "b", "-o", tmp_path / "out.npz")
    assert res.returncode == 0, res.stderr
    assert sorted(np.load(tmp_path / "out.npz")) == ["a", "b", "hashes", "ids"]


def test_overwrite_never_deletes_a_folder_changed_after_it_was_checked(tmp_path, run_main, monkeypatch):
    pytest.importorskip("torch")
    from repalign.interop import owned

    cache = _cache(tmp_path / "c.h5", n=3)
    assert run_main("cache", "export", cache, "-m", "m", "-o", tmp_path / "out").returncode == 0
    record = owned.Manifest.record
    calls = []

    def user_writes_meanwhile(self, name, digests):  # between the ownership check and the rename
        calls.append(name)
        if len(calls) == 1:
            (tmp_path / "out" / "notes.txt").write_text("the user's own notes")
        return record(self, name, digests)

    monkeypatch.setattr(owned.Manifest, "record", user_writes_meanwhile)
    res = run_main("cache", "export", cache, "-m", "m", "-o", tmp_path / "out", "--overwrite")
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert "changed while it was being replaced" in res.stderr and "left as it is" in res.stderr, res.stderr
    assert (tmp_path / "out" / "notes.txt").read_text() == "the user's own notes"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".repalign-work")]
    monkeypatch.setattr(owned.Manifest, "record", record)
    assert run_main("cache", "export", cache, "-m", "m", "-o", tmp_path / "y.npz").returncode == 0
    before = (tmp_path / "y.npz").stat().st_ino
    assert run_main("cache", "export", cache, "-m", "m", "-o", tmp_path / "y.npz", "--overwrite").returncode == 0
    assert (tmp_path / "y.npz").stat().st_ino != before and len(np.load(tmp_path / "y.npz")["ids"]) == 3


def test_demo_files_are_recorded_before_they_are_renamed_into_place_and_stale_work_is_removed(tmp_path):
    from repalign import demo
    from repalign.interop.owned import Manifest

    out = tmp_path / "demo"
    out.mkdir()
    manifest = demo.check_demo_output(out)

    def table(text):
        def write(work):
            (work / demo.SCORES_FILE).write_text(text)
            return [work / demo.SCORES_FILE]
        return write

    assert demo.publish(out, manifest, table("a,b\n1,2\n")) == [out / demo.SCORES_FILE]
    assert Manifest(out, demo.DEMO_MANIFEST, "repalign demo").owns(out / demo.SCORES_FILE)
    stale = out / ".repalign-work-killed.tmp"  # what a killed run leaves: a half-written file in its work folder
    stale.mkdir()
    (stale / demo.SCORES_FILE).write_text("a,b\n1,")

    def interrupted(work):
        (work / demo.SCORES_FILE).write_text("a,b\n3,")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        demo.publish(out, manifest, interrupted)
    assert (out / demo.SCORES_FILE).read_text() == "a,b\n1,2\n"  # the earlier, recorded file is untouched
    assert sorted(p.name for p in out.iterdir()) == sorted([demo.SCORES_FILE, demo.DEMO_MANIFEST])
    demo.publish(out, manifest, table("a,b\n5,6\n"))  # its own earlier file is replaced
    assert (out / demo.SCORES_FILE).read_text() == "a,b\n5,6\n"
    (out / demo.SCORES_FILE).write_text("the user's edits")
    with pytest.raises(RepalignError, match="was not written by 'repalign demo'"):
        demo.publish(out, manifest, table("x"))
    assert (out / demo.SCORES_FILE).read_text() == "the user's edits"


def test_an_esm_folder_is_bounded_by_all_its_files_together(tmp_path, run_main, monkeypatch):
    torch = pytest.importorskip("torch")
    import embeddings_cache.untrusted as untrusted

    folder = tmp_path / "esm"
    folder.mkdir()
    for k in range(3):  # 1 MB each, 3 MB together; every file is held until the folder is read
        torch.save({"label": f"s{k}", "mean_representations": {1: torch.ones(250_000)}}, folder / f"p{k}.pt")
    monkeypatch.setattr(untrusted, "available_memory", lambda: 5_000_000)  # half: 2.5 MB, above any one file
    res = run_main("cache", "import", folder, "-m", "m", "-o", tmp_path / "c.h5")
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"{folder}: its 3 .pt files together declares 2.9 MiB, more than half the available memory" in res.stderr
    monkeypatch.setattr(untrusted, "available_memory", lambda: 1 << 34)
    assert run_main("cache", "import", folder, "-m", "m", "-o", tmp_path / "c.h5").returncode == 0
