"""``--cluster tcp://127.0.0.1:PORT`` against a real ``dask scheduler`` and two ``dask worker`` processes.

The scheduler and the workers are separate processes started here (each in its own process group,
killed in teardown), listening on 127.0.0.1 only. Extraction and comparison go through the CLI; a
worker is killed with SIGKILL while it holds a task, and the result must equal a single-process run
(nothing lost, nothing duplicated).
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

from cluster_helpers import (  # noqa: E402
    assert_same_cache,
    free_port,
    random_fasta,
    run_cli,
    start_process,
    stop_process,
    subprocess_env,
)
from distributed import Client  # noqa: E402

from repalign.compare import CacheLayer, compare_models  # noqa: E402
from repalign.distributed import align_layers_distributed, shard_folder  # noqa: E402
from repalign.metrics import align_layers_multi  # noqa: E402

DASK_CLI = str(Path(sys.executable).with_name("dask"))  # the console script next to this Python
DASK = [DASK_CLI, "scheduler"]
WORKER = [DASK_CLI, "worker"]


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """tcp address of a scheduler with two single-thread workers, all on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("dask_tcp")
    sched_file = folder / "scheduler.json"
    log = open(folder / "dask.log", "w")
    procs = [start_process(DASK + ["--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                            "--scheduler-file", str(sched_file)], log)]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline and procs[0].poll() is None:
            time.sleep(0.1)
        assert sched_file.exists(), (folder / "dask.log").read_text()
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for _ in range(2):
            procs.append(start_process(WORKER + [address, "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard",
                                          "--death-timeout", "60"], log))
        with Client(address, timeout="30s") as c:
            c.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for p in reversed(procs):
            stop_process(p)
        log.close()


def _worker_pids(client):
    return client.run(os.getpid)  # {worker address: pid}


def test_tcp_extraction_with_a_worker_killed_equals_single_process(scheduler, tiny_esm2, esm_inputs, tmp_path):
    records, ref = esm_inputs
    fasta = ref.parent / "in.fasta"
    out = tmp_path / "tcp.h5"
    with Client(scheduler, timeout="30s") as client:
        pids = _worker_pids(client)
        proc = subprocess.Popen([sys.executable, "-m", "repalign", "extract", str(fasta), "--model", f"hf:{tiny_esm2}",
                                 "-o", str(out), "--layers", "all", "--batch-tokens", "160", "--cluster", scheduler,
                                 "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
        killed = None
        deadline = time.time() + 180
        folder = shard_folder(out)
        while time.time() < deadline and proc.poll() is None:
            if folder.exists() and any(folder.glob("*.h5.parts/*.h5")):  # shards are being written
                busy = [w for w, tasks in client.processing().items() if tasks]
                if busy:
                    killed = pids[busy[0]]
                    os.kill(killed, signal.SIGKILL)
                    break
            time.sleep(0.01)
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        assert killed is not None, "the extraction ended before a worker could be killed"
        client.wait_for_workers(2, timeout=120)  # the nanny restarted the killed worker
        assert killed not in _worker_pids(client).values()
    assert f"stored {len(records)} samples" in stdout
    assert_same_cache(out, ref, exact=False)


def test_tcp_compare_cli_equals_single_process(scheduler, layer_cache, tmp_path):
    path, _ = layer_cache
    table = tmp_path / "t.csv"
    done = run_cli("compare", str(path), "--a", "A", "--b", "B", "--metric", "mknn", "cknna", "cka", "--k", "5",
                "--block-rows", "700", "--cluster", scheduler, "-o", str(table))
    assert done.returncode == 0, done.stderr
    import pandas as pd

    got = pd.read_csv(table, float_precision="round_trip")
    ref = compare_models(path, "A", "B", ["mknn", "cknna", "cka"], k=5).table
    assert len(got) == len(ref) == 3 * 3 * 2
    key = ["metric", "layer_a", "layer_b"]
    got, ref = got.sort_values(key).reset_index(drop=True), ref.sort_values(key).reset_index(drop=True)
    assert got[key].values.tolist() == ref[key].values.tolist()
    knn = got["metric"] != "cka"
    np.testing.assert_array_equal(got["score"][knn].to_numpy(), ref["score"][knn].to_numpy())
    np.testing.assert_allclose(got["score"][~knn].to_numpy(), ref["score"][~knn].to_numpy(), rtol=1e-6)
    # each layer's search split into 256 x 256 block tasks over both workers: the same neighbour lists
    split = tmp_path / "split.csv"
    done = run_cli("compare", str(path), "--a", "A", "--b", "B", "--metric", "mknn", "cknna", "--k", "5",
                   "--search-block", "256", "--cluster", scheduler, "-o", str(split))
    assert done.returncode == 0, done.stderr
    split = pd.read_csv(split, float_precision="round_trip").sort_values(key).reset_index(drop=True)
    np.testing.assert_array_equal(split["score"].to_numpy(), ref[knn]["score"].to_numpy())


def test_tcp_comparison_survives_a_killed_worker(scheduler, layer_cache):
    """SIGKILL a worker while it builds a layer state: the task is rerun elsewhere, same scores."""
    path, mats = layer_cache
    src_a = [CacheLayer(str(path), "A", f"l{i}") for i in range(3)]
    src_b = [CacheLayer(str(path), "B", f"l{i}") for i in range(2)]
    ref = align_layers_multi(mats["A"], mats["B"], ["mknn", "lcs_knn"], k=5)
    with Client(scheduler, timeout="30s") as client:
        client.wait_for_workers(2, timeout=120)
        pids = _worker_pids(client)
        result, error = {}, {}

        def run():
            try:
                result["got"] = align_layers_distributed(client, src_a, src_b, ["mknn", "lcs_knn"], k=5)
            except BaseException as exc:  # reported below
                error["exc"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        killed = None
        deadline = time.time() + 120
        while time.time() < deadline and thread.is_alive():
            busy = [w for w, keys in client.processing().items() if any("state_on_worker" in str(k) for k in keys)]
            if busy:
                killed = pids[busy[0]]
                os.kill(killed, signal.SIGKILL)
                break
            time.sleep(0.005)
        thread.join(300)
        assert not thread.is_alive()
        assert "exc" not in error, error.get("exc")
        assert killed is not None, "the comparison ended before a worker could be killed"
        client.wait_for_workers(2, timeout=120)
    for r, g in zip(ref, result["got"]):
        np.testing.assert_array_equal(g.scores, r.scores)


# ----------------------------------------------------------------------------- faults
def test_scheduler_not_answering_is_one_line_and_writes_nothing(tiny_esm2, tmp_path):
    """Nothing listens on the port: one line within Dask's connect timeout (set to 4 s here through Dask's
    own environment variable), no cache, no shard folder."""
    fasta = random_fasta(tmp_path / "in.fasta", 4)
    out = tmp_path / "never.h5"
    address = f"tcp://127.0.0.1:{free_port()}"
    done = run_cli("extract", str(fasta), "--model", f"hf:{tiny_esm2}", "-o", str(out), "--cluster", address, "--quiet",
                timeout=120, env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "4s"})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Dask scheduler at " + address in lines[0] and "within 4 s" in lines[0]
    assert not out.exists() and not shard_folder(out).exists()
    table = tmp_path / "t.csv"
    done = run_cli("compare", str(tmp_path / "none.h5"), "--a", "A", "--b", "B", "--cluster", address, "-o", str(table))
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert not table.exists()


def test_unknown_slurm_key_from_the_cli_is_one_line(tiny_esm2, tmp_path):
    fasta = random_fasta(tmp_path / "in.fasta", 4)
    conf = tmp_path / "slurm.yaml"
    conf.write_text("cores: 1\nmemory: 1GB\npartition: debug\n")  # 'queue' is the SLURMCluster name
    out = tmp_path / "never.h5"
    done = run_cli("extract", str(fasta), "--model", f"hf:{tiny_esm2}", "-o", str(out), "--cluster", f"slurm:{conf}",
                "--quiet", timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown key(s) partition" in lines[0]
    assert not out.exists() and not shard_folder(out).exists()
