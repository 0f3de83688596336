"""Crash safety and locking of embeddings_cache with real processes and real signals.

A worker process appends batches whose content is a deterministic function of the batch index,
closing (consolidating) its writer every few batches; the test kills it with SIGKILL at random
moments, then checks that the cache opens, holds exactly the first k batches with the right values
(k at least the number of appends the worker reported finished), and that a new writer resumes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from embeddings_cache import Cache, CacheError, CacheWriter

REPO = Path(__file__).resolve().parents[1]

# Shared by the worker and the test: batch b's content, and the writer configuration.
BATCH_CODE = r'''
import hashlib
import numpy as np

MODEL = "m"
PROVENANCE = {"model": "toy", "options": {"pool": "mean"}}
LAYERS = ["enc.0", "trunk.1"]
TOKEN_LAYERS = ["trunk.1"]
BATCH_SIZE = 3

def batch(b):
    ids = [f"b{b:03d}-{i}" for i in range(BATCH_SIZE)]
    hashes = [hashlib.sha256(i.encode()).hexdigest() for i in ids]
    grid = np.arange(BATCH_SIZE)[:, None] * 0.25 + b
    pooled = {"enc.0": np.sin(grid + np.arange(16)), "trunk.1": np.cos(grid * np.arange(1, 9))}
    tokens = {"trunk.1": [np.full(((b + i) % 4 + 1, 8), b + i / 10) for i in range(BATCH_SIZE)]}
    outputs = {"energy": -grid[:, 0]}
    return ids, hashes, pooled, tokens, outputs
'''

WORKER = BATCH_CODE + r'''
import sys
from embeddings_cache import CacheWriter

path, n_batches, per_writer = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print("ready", flush=True)
b = 0
while b < n_batches:
    with CacheWriter(path, MODEL, PROVENANCE, LAYERS, token_layers=TOKEN_LAYERS) as w:
        stored = w.stored()
        for _ in range(per_writer):
            if b >= n_batches:
                break
            ids, hashes, pooled, tokens, outputs = batch(b)
            if ids[0] not in stored:
                w.append(ids, hashes, pooled, tokens, outputs)
                print(f"done {b}", flush=True)
            b += 1
        print("closing", flush=True)
'''

HOLDER = BATCH_CODE + r'''
import sys
from embeddings_cache import CacheWriter

with CacheWriter(sys.argv[1], MODEL, PROVENANCE, LAYERS, token_layers=TOKEN_LAYERS) as w:
    w.append(*batch(0))
    print("ready", flush=True)
    sys.stdin.readline()
    w.append(*batch(1))
print("closed", flush=True)
'''

SELF_KILL = BATCH_CODE + r'''
import os, signal, sys
from embeddings_cache import CacheWriter

w = CacheWriter(sys.argv[1], MODEL, PROVENANCE, LAYERS, token_layers=TOKEN_LAYERS)
for b in range(int(sys.argv[2])):
    w.append(*batch(b))
os.kill(os.getpid(), signal.SIGKILL)
'''

namespace: dict = {}
exec(BATCH_CODE, namespace)
batch = namespace["batch"]


class Worker:
    """A Python subprocess running one of the scripts above; its stdout lines are collected live."""

    def __init__(self, script: str, *args: object):
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *map(str, args)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.strip())
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<eof>")
            self._cond.notify_all()

    def wait_for(self, line: str, count: int = 1, timeout: float = 60) -> bool:
        """Wait until ``line`` was printed ``count`` times; False if the process ended first."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self.lines.count(line) >= count or "<eof>" in self.lines, timeout)
            assert ok, f"worker printed {self.lines[-3:]} in {timeout} s"
            return self.lines.count(line) >= count

    def kill(self) -> list[str]:
        """SIGKILL the worker; return what it reported before dying."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=30)
        return list(self.lines)

    def finish(self) -> str:
        _, err = self.proc.communicate(timeout=60)
        self._reader.join(timeout=30)
        return err


def open_writer(path: Path) -> CacheWriter:
    return CacheWriter(path, "m", namespace["PROVENANCE"], namespace["LAYERS"], token_layers=namespace["TOKEN_LAYERS"])


def check_prefix(path: Path, at_least: int) -> int:
    """The cache holds exactly batches 0..k-1 with their exact content, k >= at_least; return k."""
    with Cache(path) as c:
        ids = c.ids("m")
        assert len(ids) % 3 == 0
        k = len(ids) // 3
        assert k >= at_least
        batches = [batch(b) for b in range(k)]
        assert ids == [i for bt in batches for i in bt[0]]
        assert c.hashes("m") == [h for bt in batches for h in bt[1]]
        if k == 0:
            return 0
        for layer in ("enc.0", "trunk.1"):
            expected = np.concatenate([bt[2][layer] for bt in batches]).astype(np.float32)
            np.testing.assert_array_equal(c.read_layer("m", layer), expected)
        data, offsets = c.read_tokens("m", "trunk.1")
        rows = [r for bt in batches for r in bt[3]["trunk.1"]]
        np.testing.assert_array_equal(np.diff(offsets), [len(r) for r in rows])
        np.testing.assert_array_equal(data, np.concatenate(rows).astype(np.float32))
        np.testing.assert_array_equal(c.read_output("m", "energy"), np.concatenate([bt[4]["energy"] for bt in batches]))
    return k


def resume(path: Path, n_batches: int) -> None:
    with open_writer(path) as w:
        stored = w.stored()
        for b in range(n_batches):
            ids, hashes, pooled, tokens, outputs = batch(b)
            if ids[0] not in stored:
                w.append(ids, hashes, pooled, tokens, outputs)


N_BATCHES = 30
PER_WRITER = 6  # the worker consolidates every 6 batches: kills land in appends and in consolidations


@pytest.mark.parametrize("trial", range(8))
def test_sigkill_at_random_moments_keeps_a_prefix_and_resumes(tmp_path, trial):
    rng = random.Random(1000 + trial)
    path = tmp_path / "crash.h5"
    worker = Worker(WORKER, path, N_BATCHES, PER_WRITER)
    if worker.wait_for("ready"):
        if trial % 2 == 0:
            time.sleep(rng.uniform(0.0, 2.0))  # anywhere: constructing, appending, consolidating
        else:
            # just after the k-th writer starts closing: inside the consolidation
            if worker.wait_for("closing", count=rng.randint(1, N_BATCHES // PER_WRITER - 1)):
                time.sleep(rng.uniform(0.0, 0.03))
    lines = worker.kill()
    done = sum(line.startswith("done ") for line in lines)
    if path.exists() or done:
        k = check_prefix(path, at_least=done)
        assert k <= done + 1  # at most the batch whose "done" was not printed yet
    resume(path, N_BATCHES)
    assert check_prefix(path, at_least=N_BATCHES) == N_BATCHES
    assert not [p for p in (tmp_path / "crash.h5.parts").iterdir()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crash.h5", "crash.h5.lock", "crash.h5.parts"]


def test_resume_after_sigkill_without_close(tmp_path):
    path = tmp_path / "c.h5"
    worker = Worker(SELF_KILL, path, 4)
    worker.finish()
    assert worker.proc.returncode == -signal.SIGKILL
    with Cache(path) as c:  # nothing consolidated: the 4 batches are read from the journal
        assert c.n_pending_parts == 5  # the model's header and 4 batches
    assert check_prefix(path, at_least=4) == 4
    with open_writer(path) as w:
        assert len(w.stored()) == 12
        with Cache(path) as c:  # the new writer consolidated the killed run's batches first
            assert c.n_pending_parts == 0 and c.n_samples("m") == 12
        w.append(*batch(4))
    assert check_prefix(path, at_least=5) == 5


def test_second_writer_gets_a_lock_error_naming_the_pid(tmp_path):
    path = tmp_path / "c.h5"
    holder = Worker(HOLDER, path)
    assert holder.wait_for("ready")
    with pytest.raises(CacheError) as info:
        open_writer(path)
    assert str(info.value) == (
        f"cache {path} is being written by another process (pid {holder.proc.pid}); "
        "wait for it or write to another file"
    )
    with pytest.raises(CacheError, match="being written by another process"):
        CacheWriter(path, "other", {"options": {}}, ["l"])  # the lock is per cache file, not per model
    assert check_prefix(path, at_least=1) == 1  # readers need no lock
    holder.proc.stdin.write("go\n")
    holder.proc.stdin.flush()
    assert holder.wait_for("closed")
    holder.finish()
    resume(path, 3)
    assert check_prefix(path, at_least=3) == 3


def test_second_writer_in_the_same_process_is_refused(tmp_path):
    path = tmp_path / "c.h5"
    with CacheWriter(path, "m", {"options": {}}, ["l"]):
        with pytest.raises(CacheError, match=f"pid {os.getpid()}"):
            CacheWriter(path, "m", {"options": {}}, ["l"])
    CacheWriter(path, "m", {"options": {}}, ["l"]).close()  # released at close


def test_parts_left_after_the_replace_are_not_counted_twice(tmp_path):
    """The state a kill between the main file's replace and the deletion of the parts leaves."""
    path = tmp_path / "c.h5"
    parts = tmp_path / "c.h5.parts"
    w = open_writer(path)
    for b in range(3):
        w.append(*batch(b))
    saved = {p.name: p.read_bytes() for p in parts.iterdir()}
    w.close()
    for name, content in saved.items():  # the parts reappear, already consolidated
        (parts / name).write_bytes(content)
    (parts / ".tmp-0123.h5").write_bytes(b"half a part")  # and a part whose writing was cut short
    with Cache(path) as c:
        assert c.n_pending_parts == 0
    assert check_prefix(path, at_least=3) == 3
    resume(path, 4)
    assert check_prefix(path, at_least=4) == 4
    assert list(parts.iterdir()) == []


def test_an_unfinished_consolidation_is_ignored_and_cleaned(tmp_path):
    path = tmp_path / "c.h5"
    resume(path, 2)
    (tmp_path / "c.h5.consolidating").write_bytes(path.read_bytes()[:1000])
    assert check_prefix(path, at_least=2) == 2
    resume(path, 3)
    assert check_prefix(path, at_least=3) == 3
    assert not (tmp_path / "c.h5.consolidating").exists()
