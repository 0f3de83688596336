"""Helpers shared by the Dask tests (test_distributed, test_cluster_tcp, test_cluster_slurm): input
files, cache comparison, and processes started in their own process groups. Their fixtures
(``esm_inputs``, ``layer_cache``) are in conftest.py."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from embeddings_cache import Cache

ROOT = Path(__file__).resolve().parents[1]
AA = "ACDEFGHIKLMNPQRSTVWY"
KEY = "hf:tiny"


def random_fasta(path, n, seed=0, lo=8, hi=60):
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        lines += [f">p{i:03d}", "".join(rng.choice(list(AA), rng.integers(lo, hi)))]
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_same_cache(path, ref_path, exact=True):
    ref, got = Cache(ref_path), Cache(path)
    assert got.models == ref.models == [KEY]
    assert got.ids(KEY) == ref.ids(KEY)  # same samples, same order, none duplicated
    assert got.hashes(KEY) == ref.hashes(KEY)
    assert got.layers(KEY) == ref.layers(KEY)
    for layer in ref.layers(KEY):
        a, b = got.read_layer(KEY, layer), ref.read_layer(KEY, layer)
        if exact:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def subprocess_env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")


def start_process(cmd, log):
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(), start_new_session=True)


def stop_process(proc):
    """Kill the process group (the worker's nanny and its child) and reap it."""
    if proc.poll() is None:
        kill_group(proc, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            kill_group(proc, signal.SIGKILL)
            proc.wait(10)


def kill_group(proc, sig):
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def run_cli(*args, timeout=300, env=None):
    """``python -m repalign ARGS`` in a child; ``env``: variables added to :func:`subprocess_env`."""
    return subprocess.run([sys.executable, "-m", "repalign", *args], capture_output=True, text=True,
                          env={**subprocess_env(), **(env or {})}, timeout=timeout)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
