"""A user's data is never lost or exposed: interrupted overwrites, full disks, permissions, NaN
samples, early checks and one-line errors, with real subprocesses, real signals and real files.

The tests run as root in CI, and root may write any file whatever its mode, so permissions are
checked on the mode bits themselves (what every other user gets), and a "read-only" cache is one
without any write bit.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_helpers import default_signals, run_main

from embeddings_cache import Cache, CacheError, CacheWriter

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
MODEL_KEY = "hf:tiny"

# batch b of run "old" or "new": content is a function of (run, b), so any stored row can be checked
WRITER = r'''
import hashlib, sys, time
import numpy as np
from embeddings_cache import CacheWriter

def batch(run, b, dim):
    ids = [f"{run}{b:03d}-{i}" for i in range(4)]
    hashes = [hashlib.sha256(i.encode()).hexdigest() for i in ids]
    rng = np.random.default_rng(b + (1000 if run == "new" else 0))
    return ids, hashes, {"l": rng.normal(size=(4, dim))}

path, run, n, overwrite, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", float(sys.argv[5])
dim = int(sys.argv[6]) if len(sys.argv) > 6 else 64
with CacheWriter(path, "m", {"options": {"run": run}}, ["l"], overwrite=overwrite) as w:
    stored = w.stored()
    print("ready", flush=True)
    for b in range(n):
        ids, hashes, pooled = batch(run, b, dim)
        if ids[0] in stored:
            continue
        time.sleep(pause)
        w.append(ids, hashes, pooled)
        print(f"done {b}", flush=True)
print("closed", flush=True)
'''

namespace: dict = {}
exec(WRITER.split("path, run")[0], namespace)


def expected(run: str, n: int, dim: int = 64) -> tuple[list[str], np.ndarray]:
    batches = [namespace["batch"](run, b, dim) for b in range(n)]
    values = [bt[2]["l"] for bt in batches] or [np.zeros((0, dim))]  # n = 0: a model with no sample yet
    return [i for bt in batches for i in bt[0]], np.concatenate(values).astype(np.float32)


def start_writer(path, run, n, overwrite, pause, *extra, preexec=default_signals) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), run, str(n), "1" if overwrite else "0",
                             str(pause), *map(str, extra)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, preexec_fn=preexec)


def assert_holds(path: Path, run: str, n: int, dim: int = 64) -> None:
    ids, values = expected(run, n, dim)
    with Cache(path) as c:
        assert c.ids("m") == ids
        np.testing.assert_array_equal(c.read_layer("m", "l"), values)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(*args) -> subprocess.CompletedProcess:
    return run_main(*args)


def run_cli_process(*args, **kw) -> subprocess.CompletedProcess:
    """`python -m repalign ARGS` in a fresh process, where the process boundary is the point."""
    return subprocess.run([sys.executable, "-m", "repalign", *map(str, args)], capture_output=True, text=True,
                          env=ENV, **kw)


def one_line_error(res: subprocess.CompletedProcess, *fragments: str) -> None:
    assert res.returncode == 1, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("repalign: error: ") and "Traceback" not in res.stderr, res.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ---- an interrupted or failed overwrite keeps the old data -----------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
@pytest.mark.parametrize("when", ["before the first batch", "after some batches"])
def test_interrupted_overwrite_keeps_the_old_model_and_the_rerun_replaces_it(tmp_path, sig, when):
    path = tmp_path / "c.h5"
    old = start_writer(path, "old", 3, False, 0)
    assert old.wait(timeout=120) == 0, old.stderr.read()
    new = start_writer(path, "new", 8, True, 0.3 if when == "after some batches" else 30)
    assert new.stdout.readline().strip() == "ready"
    if when == "after some batches":
        assert new.stdout.readline().strip() == "done 0"
        assert new.stdout.readline().strip() == "done 1"
    new.send_signal(sig)
    new.wait(timeout=60)
    assert new.returncode != 0
    with Cache(path) as c:  # the interrupted overwrite left the old model whole, also for readers
        assert c.provenance("m")["options"] == {"run": "old"}
        if when == "after some batches":
            assert c.unfinished_overwrites["m"] >= 2 and "an overwrite was interrupted" in c.describe()
    assert_holds(path, "old", 3)
    rerun = start_writer(path, "new", 8, True, 0)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    done = [line for line in out.splitlines() if line.startswith("done")]
    if when == "after some batches":  # the completed batches of the interrupted run were resumed
        assert "done 0" not in done and "done 1" not in done
    assert_holds(path, "new", 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5", "c.h5.lock", "c.h5.parts"]
    assert list((tmp_path / "c.h5.parts").iterdir()) == []


def test_sigkill_during_in_place_appends_keeps_a_prefix(tmp_path):
    """Kills at random moments of a writer that closes (commits in place) after every batch."""
    path = tmp_path / "c.h5"
    script = WRITER.replace("        w.append(ids, hashes, pooled)\n", "        w.append(ids, hashes, pooled)\n"
                            "        w.close(); w = CacheWriter(path, 'm', {'options': {'run': run}}, ['l'])\n")
    rng = np.random.default_rng(3)
    for trial in range(4):
        proc = subprocess.Popen([sys.executable, "-c", script, str(path), "old", "40", "0", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.05, 0.8)))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        finished = [int(line.split()[1]) for line in out.splitlines() if line.startswith("done")]
        if not path.exists():
            continue  # killed before its first commit: nothing to keep yet
        with Cache(path) as c:
            if "m" not in c.models:
                continue
            n = len(c.ids("m")) // 4
        if finished:  # every reported batch is kept, and at most the one being written besides
            assert max(finished) + 1 <= n <= max(finished) + 2
        assert_holds(path, "old", n)
    proc = start_writer(path, "old", 40, False, 0)
    assert proc.wait(timeout=120) == 0
    assert_holds(path, "old", 40)
    assert not (tmp_path / "c.h5.redo").exists()


# ---- a full disk or a file size limit ---------------------------------------------------------------


def _file_size_limit(nbytes: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


def test_a_file_size_limit_gives_an_error_keeps_the_data_and_a_rerun_completes(tmp_path):
    path = tmp_path / "c.h5"
    first = start_writer(path, "old", 10, False, 0, 1000)
    assert first.wait(timeout=120) == 0
    before = digest(path)
    proc = start_writer(path, "old", 60, False, 0, 1000, preexec=_file_size_limit(path.stat().st_size + 300_000))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err  # an exception, not a crash (139) or a signal
    assert "file size limit" in err.strip().splitlines()[-1] and "ulimit -f" in err
    assert "Segmentation" not in err
    assert digest(path) == before  # the main file was left as it was (the appended bytes dropped)
    n_done = out.count("done")
    assert n_done == 50  # every batch was durable in the journal: readers see them
    assert_holds(path, "old", 60, 1000)
    rerun = start_writer(path, "old", 60, False, 0, 1000)
    assert rerun.wait(timeout=120) == 0, rerun.stderr.read()
    assert_holds(path, "old", 60, 1000)
    assert list((tmp_path / "c.h5.parts").iterdir()) == []


def test_a_full_disk_while_writing_a_part_is_a_cache_error(tmp_path):
    path = tmp_path / "c.h5"
    proc = start_writer(path, "old", 3, False, 0, 40000, preexec=_file_size_limit(400_000))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "file size limit" in err.strip().splitlines()[-1], err
    assert out.count("done") == 0
    assert [p.name for p in (tmp_path / "c.h5.parts").iterdir() if p.name.startswith(".tmp")] == []


# ---- permissions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664])
def test_appending_keeps_the_mode_and_group_of_the_cache(tmp_path, mode):
    path = tmp_path / "c.h5"
    proc = start_writer(path, "old", 2, False, 0)
    assert proc.wait(timeout=120) == 0
    gid = next(g for g in (os.getgid(), 1, 100) if g != os.stat(path).st_gid) if os.getuid() == 0 else os.getgid()
    os.chmod(path, mode)
    if os.getuid() == 0:
        os.chown(path, -1, gid)
    parts_modes = []
    with CacheWriter(path, "m", {"options": {"run": "old"}}, ["l"]) as w:
        ids, hashes, pooled = namespace["batch"]("old", 2, 64)
        w.append(ids, hashes, pooled)
        parts_modes = [stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "c.h5.parts").iterdir()]
    assert parts_modes == [mode]  # the journal is as private as the cache
    # an overwrite rebuilds the file under another name: still the same mode and group
    with CacheWriter(path, "m", {"options": {"run": "new"}}, ["l"], overwrite=True) as w:
        w.append(*namespace["batch"]("new", 0, 64))
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == mode and st.st_gid == gid
    assert_holds(path, "new", 1)


def test_a_read_only_cache_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "c.h5"
    assert start_writer(path, "old", 2, False, 0).wait(timeout=120) == 0
    os.chmod(path, 0o444)
    before = digest(path)
    with pytest.raises(CacheError, match=r"read-only \(mode 0444\); make it writable \(chmod u\+w"):
        CacheWriter(path, "m", {"options": {"run": "old"}}, ["l"])
    res = subprocess.run([sys.executable, "-c", WRITER, str(path), "old", "4", "0", "0"], capture_output=True,
                         text=True, env=ENV)
    assert res.returncode == 1 and "read-only" in res.stderr
    assert digest(path) == before and stat.S_IMODE(path.stat().st_mode) == 0o444
    assert_holds(path, "old", 2)


# ---- values -----------------------------------------------------------------------------------------


def test_values_that_overflow_the_storage_dtype_are_refused_naming_sample_and_layer(tmp_path):
    ids = ["a", "b", "c"]
    values = np.ones((3, 4))
    values[1, 2] = 1e39  # finite in float64, inf in float32
    with CacheWriter(tmp_path / "c.h5", "m", {"options": {}}, ["enc.3"]) as w:
        with pytest.raises(CacheError) as info:
            w.append(ids, [hashlib.sha256(i.encode()).hexdigest() for i in ids], {"enc.3": values})
        assert str(info.value) == ("pooled layer 'enc.3' of sample 'b' holds values beyond the float32 range "
                                   "(+-3.40282e+38); check the model run (dtype, inputs)")
        with pytest.raises(CacheError, match="sample id 'x.*' contains a NUL character"):
            w.append(["x\x00"], [hashlib.sha256(b"x").hexdigest()], {"enc.3": np.ones((1, 4))})
    with Cache(tmp_path / "c.h5") as c:
        assert c.ids("m") == []


def test_a_tiny_cache_is_small(tmp_path):
    """The fixed overhead of the journal and the 1-D datasets (was about 2 MiB per cache)."""
    path = tmp_path / "c.h5"
    with CacheWriter(path, "m", {"options": {}}, ["l"]) as w:
        w.append(["a"], [hashlib.sha256(b"a").hexdigest()], {"l": np.ones((1, 8))})
    assert path.stat().st_size < 200_000


def test_a_damaged_list_of_applied_parts_names_the_file(tmp_path):
    path = tmp_path / "c.h5"
    assert start_writer(path, "old", 2, False, 0).wait(timeout=120) == 0
    with h5py.File(path, "r") as f:
        chunk = f["journal/applied_parts"].id.get_chunk_info(0)
    raw = bytearray(path.read_bytes())
    raw[chunk.byte_offset] ^= 0xFF
    path.write_bytes(bytes(raw))
    with Cache(path) as c:  # nothing pending: the list is not needed
        assert len(c.ids("m")) == 8
    # a pending part (a killed writer's batch) needs it
    kill = WRITER.replace("print(\"closed\", flush=True)", "").replace(
        "        print(f\"done {b}\", flush=True)", "        print(f\"done {b}\", flush=True)\n"
        "        import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    subprocess.run([sys.executable, "-c", kill, str(path), "old", "3", "0", "0"], env=ENV, capture_output=True)
    with pytest.raises(CacheError, match=f"{path}: its list of applied journal parts .* is damaged"):
        Cache(path)


# ---- the command line ------------------------------------------------------------------------------


def test_cache_info_into_a_closed_pipe_and_on_a_fifo(tmp_path):
    path = tmp_path / "c.h5"
    assert start_writer(path, "old", 2, False, 0).wait(timeout=120) == 0
    res = subprocess.run(f"{sys.executable} -m repalign cache info {path} | head -1", shell=True, capture_output=True,
                         text=True, env=ENV)
    assert res.stdout.startswith("cache ") and res.stderr == ""
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    res = run_cli_process("cache", "info", fifo, timeout=60)
    one_line_error(res, "not a regular file")


def test_compare_checks_its_arguments_before_computing(tmp_path):
    path = tmp_path / "c.h5"
    assert start_writer(path, "old", 2, False, 0).wait(timeout=120) == 0
    (tmp_path / "out.csv").mkdir()
    one_line_error(run_cli("compare", path, "--a", "m", "--b", "m", "-o", tmp_path / "out.csv"), "is a folder")
    one_line_error(run_cli("compare", path, "--a", "m", "--b", "m", "--ci", "0"), "--ci 0.0", "between 0 and 1")
    one_line_error(run_cli("compare", path, "--a", "m", "--b", "m", "--ci", "1.5"), "between 0 and 1")


def random_fasta(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    aa = list("ACDEFGHIKLMNPQRSTVWY")
    path.write_text("".join(f">p{i:03d}\n{''.join(rng.choice(aa, rng.integers(8, 40)))}\n" for i in range(n)))
    return path


@pytest.fixture
def broken_checkpoint(tiny_esm2, tmp_path):
    """The tiny checkpoint with its weights file cut to a third: loading it fails."""
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_esm2.iterdir():
        data = f.read_bytes()
        (broken / f.name).write_bytes(data[: len(data) // 3] if f.suffix in (".safetensors", ".bin") else data)
    return broken


def test_extract_checks_arguments_and_the_cache_before_loading_the_model(tiny_esm2, broken_checkpoint, tmp_path):
    fasta = random_fasta(tmp_path / "in.fasta", 3)
    model = f"hf:{broken_checkpoint}"  # loading it would fail: every error below comes before the load
    one_line_error(run_cli("extract", fasta, "-m", model, "-o", tmp_path / "c.h5", "--batch-tokens", "0"),
                   "--batch-tokens 0 must be a positive whole number of tokens")
    one_line_error(run_cli("extract", fasta, "-m", model, "-o", tmp_path / "nowhere" / "c.h5"), "does not exist")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    one_line_error(run_cli("extract", fasta, "-m", model, "-o", notes), "not a readable HDF5 file")
    assert notes.read_text() == "my notes\n" and not (tmp_path / "notes.txt.lock").exists()
    nul = tmp_path / "nul.fasta"
    nul.write_text(">a\x00b\nMKV\n")
    one_line_error(run_cli("extract", nul, "-m", model, "-o", tmp_path / "c.h5"), "NUL character")
    # a stored model with other options: the CLI's wording names the flag
    cache = tmp_path / "c.h5"
    good = f"hf:{tiny_esm2}"
    assert run_cli("extract", fasta, "-m", good, "-o", cache, "-q").returncode == 0
    res = run_cli("extract", fasta, "-m", good, "-o", cache, "--pool", "cls", "-q")
    one_line_error(res, "other options (pool: 'mean' -> 'cls')", "pass --overwrite")
    (tmp_path / "tiny").symlink_to(broken_checkpoint)  # same model key, damaged weights
    # and the damaged checkpoint itself is a one-line error
    res = run_cli("extract", fasta, "-m", f"hf:{tmp_path / 'tiny'}", "-o", cache, "--overwrite", "-q")
    one_line_error(res, "cannot load the weights", "download it again")
    assert Cache(cache).n_samples(MODEL_KEY) == 3


def test_ctrl_c_during_extract_overwrite_keeps_the_old_samples(tiny_esm2, tmp_path):
    # enough samples that the run is still going when Ctrl-C lands (60 could all finish first)
    fasta = random_fasta(tmp_path / "in.fasta", 400, seed=1)
    cache = tmp_path / "c.h5"
    model = f"hf:{tiny_esm2}"
    assert run_cli("extract", fasta, "-m", model, "-o", cache, "--limit", "12", "-q").returncode == 0
    with Cache(cache) as c:
        old = c.read_layer(MODEL_KEY, c.layers(MODEL_KEY)[-1])
    proc = subprocess.Popen([sys.executable, "-m", "repalign", "extract", str(fasta), "-m", model, "-o", str(cache),
                             "--pool", "cls", "--overwrite", "--batch-tokens", "40", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=default_signals)
    parts = tmp_path / "c.h5.parts"
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.suffix == ".h5" for p in parts.iterdir()):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "rerun the same command to resume" in err, err[-2000:]
    with Cache(cache) as c:  # the 12 samples of the old run, untouched
        assert c.n_samples(MODEL_KEY) == 12 and c.provenance(MODEL_KEY)["options"]["pool"] == "mean"
        np.testing.assert_array_equal(c.read_layer(MODEL_KEY, c.layers(MODEL_KEY)[-1]), old)
    res = run_cli("extract", fasta, "-m", model, "-o", cache, "--pool", "cls", "--overwrite", "-q")
    assert res.returncode == 0, res.stderr
    with Cache(cache) as c:
        assert c.n_samples(MODEL_KEY) == 400 and c.provenance(MODEL_KEY)["options"]["pool"] == "cls"


def test_a_nan_sample_is_named_and_skip_invalid_stores_the_rest(tmp_path):
    """CHGNet gives NaN features for two atoms on one site; the issue's case, end to end."""
    ase_io = pytest.importorskip("ase.io")
    from ase import Atoms
    from ase.build import bulk

    folder = tmp_path / "crystals"
    folder.mkdir()
    for name, a in (("Cu", 3.6), ("Al", 4.05), ("Ni", 3.52)):
        ase_io.write(folder / f"{name}.extxyz", bulk(name, a=a))
    cache = tmp_path / "c.h5"
    res = run_cli("extract", folder, "-m", "chgnet-0.3.0", "-o", cache, "-q")
    assert res.returncode == 0, res.stderr
    before = digest(cache)
    ase_io.write(folder / "clash.extxyz", Atoms("NaCl", positions=[[0, 0, 0], [0, 0, 0]], cell=[4, 4, 4], pbc=True))
    (folder / "README.md").write_text("crystals for the paper\n")
    res = run_cli("extract", folder, "-m", "chgnet-0.3.0", "-o", cache, "--overwrite", "--skip-invalid", "-q",
                  "--store-dtype", "float16")
    assert res.returncode == 0, res.stderr
    assert "skipped 1 invalid samples: clash" in res.stdout and "README.md" in res.stderr
    with Cache(cache) as c:
        assert sorted(c.ids("chgnet-0.3.0")) == ["Al", "Cu", "Ni"] and c.storage_dtype("chgnet-0.3.0") == "float16"
    (folder / "README.md").unlink()
    res = run_cli("extract", folder, "-m", "chgnet-0.3.0", "-o", cache, "--overwrite", "-q")
    one_line_error(res, "clash: pooled layer", "NaN")
    with Cache(cache) as c:  # the failed overwrite left the float16 run in place
        assert sorted(c.ids("chgnet-0.3.0")) == ["Al", "Cu", "Ni"] and c.storage_dtype("chgnet-0.3.0") == "float16"
    assert digest(cache) != before


@pytest.mark.parametrize("damage", ["random bytes", "truncated"])
def test_a_damaged_pytorch_model_bin_is_a_one_line_error(tmp_path, damage):
    from repalign.models.antiberty import find_weights_dir

    source = find_weights_dir()
    if source is None:
        pytest.skip("the antiberty weights are not installed (python -m repalign.models.antiberty install-weights)")
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "config.json").write_bytes((source / "config.json").read_bytes())
    good = (source / "pytorch_model.bin").read_bytes()
    bad = np.random.default_rng(0).bytes(5000) if damage == "random bytes" else good[: len(good) // 2]
    (weights / "pytorch_model.bin").write_bytes(bad)
    fasta = tmp_path / "ab.fasta"
    fasta.write_text(">h1\nEVQLVESGGGLVQPGGSLRLSCAASGFTFS\n")
    res = run_cli("extract", fasta, "-m", "antiberty", "--weights", weights, "-o", tmp_path / "c.h5", "-q")
    one_line_error(res, "cannot load the weights of model antiberty", str(weights))
    assert not (tmp_path / "c.h5").exists()


def test_extract_under_a_file_size_limit_is_a_one_line_error_and_a_rerun_completes(tiny_esm2, tmp_path):
    """The issue's `ulimit -f` case through the command line."""
    fasta = random_fasta(tmp_path / "in.fasta", 40, seed=2)
    cache = tmp_path / "c.h5"
    model = f"hf:{tiny_esm2}"
    args = ["extract", fasta, "-m", model, "-o", cache, "--layers", "all", "--tokens", "all", "--batch-tokens", "200",
            "-q"]
    assert run_cli(*args, "--limit", "4").returncode == 0
    before = digest(cache)
    res = subprocess.run([sys.executable, "-m", "repalign", *map(str, args)], capture_output=True, text=True, env=ENV,
                         preexec_fn=_file_size_limit(cache.stat().st_size + 20_000))
    one_line_error(res, "file size limit", "ulimit -f")
    assert digest(cache) == before
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    with Cache(cache) as c:
        assert c.n_samples(MODEL_KEY) == 40


KILLED_AT_COMMIT = WRITER.replace("from embeddings_cache import CacheWriter", '''from embeddings_cache import CacheWriter
import os, signal
import embeddings_cache.journal as journal

def killed(*args):  # a real SIGKILL the moment the redo log is durable, before the main file changes
    os.kill(os.getpid(), signal.SIGKILL)

journal.commit_lock = killed''')


def test_a_writer_killed_at_the_commit_point_leaves_a_redo_log_that_readers_and_writers_apply(tmp_path):
    path = tmp_path / "c.h5"
    assert start_writer(path, "old", 2, False, 0).wait(timeout=120) == 0
    proc = subprocess.run([sys.executable, "-c", KILLED_AT_COMMIT, str(path), "old", "5", "0", "0"], env=ENV,
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL and proc.stdout.count("done") == 3
    redo = tmp_path / "c.h5.redo"
    assert redo.exists()
    before = digest(path)
    assert_holds(path, "old", 5)  # the reader applies the redo log in memory
    assert digest(path) == before and redo.exists()  # and changes nothing
    with h5py.File(path, "r") as f:  # plain h5py reads the main file as it was before the commit
        assert f["models/m/ids"].shape == (8,)
    with CacheWriter(path, "m", {"options": {"run": "old"}}, ["l"]) as w:  # a writer finishes the commit
        assert len(w.stored()) == 20
    assert not redo.exists()
    assert_holds(path, "old", 5)
    assert list((tmp_path / "c.h5.parts").iterdir()) == []


READER = r'''
import sys, numpy as np
from embeddings_cache import Cache
sys.path.insert(0, sys.argv[2])
path, rounds = sys.argv[1], int(sys.argv[3])
ns = {}
exec(open(sys.argv[4]).read(), ns)
seen = set()
with Cache(path) as c:
    for r in range(rounds):
        ids = c.ids("m")
        values = c.read_layer("m", "l", ids=ids[-8:] if ids else [])
        n = len(ids) // 4
        want_ids, want = ns["expected"]("old", n)
        assert ids[-8:] == want_ids[-8:], (ids[-8:], want_ids[-8:])
        np.testing.assert_array_equal(values, want[-8:])
        seen.add(n)
        if r % 3 == 0:  # a new snapshot; otherwise the reader reopens by itself after each commit
            c.close(); c.__init__(path)
print("ok", len(seen), flush=True)
'''


def test_readers_in_another_process_see_whole_commits_while_a_writer_appends_in_place(tmp_path):
    path = tmp_path / "c.h5"
    script = WRITER.replace("        w.append(ids, hashes, pooled)\n", "        w.append(ids, hashes, pooled)\n"
                            "        w.close(); w = CacheWriter(path, 'm', {'options': {'run': run}}, ['l'])\n")
    assert start_writer(path, "old", 1, False, 0).wait(timeout=120) == 0
    helper = tmp_path / "expected.py"
    helper.write_text(WRITER.split("path, run")[0] + "\n" + "\n".join(
        ["def expected(run, n, dim=64):",
         "    batches = [batch(run, b, dim) for b in range(n)]",
         "    return [i for bt in batches for i in bt[0]], np.concatenate([bt[2]['l'] for bt in batches]).astype(np.float32)"]))
    writer = subprocess.Popen([sys.executable, "-c", script, str(path), "old", "60", "0", "0.02"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(path), str(REPO), "150", str(helper)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(2)]
    for reader in readers:
        out, err = reader.communicate(timeout=300)
        assert reader.returncode == 0 and out.startswith("ok"), err
        assert int(out.split()[1]) >= 3  # it read the cache at several commits
    _, err = writer.communicate(timeout=300)
    assert writer.returncode == 0, err
    assert_holds(path, "old", 60)
