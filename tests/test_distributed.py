"""Distributed extraction and comparison on a real 2-process Dask LocalCluster.

Extraction runs the tiny ESM-2 checkpoint of conftest; the reference is a single-process
``repalign.extract.extract`` of the same inputs with one torch thread (Dask workers run one thread,
and CPU matrix products can differ in the last bit with the thread count). A worker is killed
with SIGKILL mid-run. Comparison results are checked against the single-process layer engine.
"""

import os
import signal
import threading
import time

import numpy as np
import pytest

pytest.importorskip("distributed")

from cluster_helpers import KEY, assert_same_cache, random_fasta  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from embeddings_cache import Cache, CacheWriter  # noqa: E402
from repalign.compare import CacheLayer  # noqa: E402
from repalign.distributed import (  # noqa: E402
    align_layers_distributed,
    extract_distributed,
    parse_cluster,
    plan_shards,
    shard_folder,
)
from repalign.errors import RepalignError  # noqa: E402
from repalign.extract import length_batches  # noqa: E402
from repalign.metrics import align_layers_multi  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        yield c


# ----------------------------------------------------------------------------- cluster specs
@pytest.mark.parametrize("spec, fragment", [
    ("local:0", "positive whole number"),
    ("local:two", "positive whole number"),
    ("tcp://host", "tcp://HOST:PORT"),
    ("mpi:4", "local:N"),
    ("", "local:N"),
])
def test_bad_cluster_specs_name_the_accepted_forms(spec, fragment):
    with pytest.raises(RepalignError, match=fragment) as info:
        parse_cluster(spec)
    assert "\n" not in str(info.value)


def test_cluster_specs_parse():
    assert parse_cluster("local:3").workers == 3
    assert parse_cluster("tcp://10.0.0.5:8786").address == "tcp://10.0.0.5:8786"


@pytest.mark.parametrize("text, fragment", [
    ("cores: [8\nmemory: 1GB", "not valid YAML at line"),
    ("- cores\n- memory", "must be a mapping"),
    ("cores: 8\nmemory: 64GB\ngpus: 2", "unknown key(s) gpus"),
    ("cores: 8", "missing memory"),
    ("cores: 8\nmemory: lots", "memory='lots'"),
    ("cores: 8\nmemory: 64GB\njobs: 0", "jobs=0"),
])
def test_invalid_slurm_config_is_a_one_line_error(tmp_path, text, fragment):
    conf = tmp_path / "slurm.yaml"
    conf.write_text(text)
    with pytest.raises(RepalignError) as info:
        parse_cluster(f"slurm:{conf}")
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_valid_slurm_config_and_missing_file(tmp_path):
    conf = tmp_path / "slurm.yaml"
    conf.write_text("cores: 8\nmemory: 64GB\nqueue: gpu\njobs: 4\njob_extra_directives: ['--gres=gpu:1']\n")
    spec = parse_cluster(f"slurm:{conf}")
    assert spec.jobs == 4 and spec.slurm == {"cores": 8, "memory": "64GB", "queue": "gpu", "job_extra_directives": ["--gres=gpu:1"]}
    with pytest.raises(RepalignError, match="does not exist"):
        parse_cluster(f"slurm:{tmp_path / 'none.yaml'}")


def test_shards_are_runs_of_whole_length_batches():
    rng = np.random.default_rng(0)
    sizes = [int(s) for s in rng.integers(5, 80, 60)]
    batches = length_batches(list(range(60)), sizes, 150)
    shards = plan_shards(sizes, 150, 400)
    assert [i for s in shards for i in s] == [i for b in batches for i in b]  # same global order
    bounds = {len([i for b in batches[:j] for i in b]) for j in range(len(batches) + 1)}
    cuts = np.cumsum([len(s) for s in shards])
    assert set(cuts.tolist()) <= bounds  # a shard never splits a batch
    for s in shards:  # re-batching one shard alone gives back its batches
        local = length_batches(s, [sizes[i] for i in s], 150)
        assert [[s[i] for i in b] for b in local] == [b for b in batches if b[0] in s]


# ----------------------------------------------------------------------------- extraction
def test_distributed_extraction_equals_single_process(client, tiny_esm2, esm_inputs, tmp_path):
    records, ref = esm_inputs
    out = tmp_path / "dist.h5"
    runs = extract_distributed(records, [f"hf:{tiny_esm2}"], out, cluster=client, layers=["all"],
                               batch_tokens=160, shard_tokens=300, quiet=True)
    assert runs[0].stored == len(records)
    assert_same_cache(out, ref)
    # the model was loaded once per worker process, not once per shard
    pids = {pid for pid, _ in runs[0].workers}
    assert len(runs[0].workers) == len(pids) <= 2
    assert not shard_folder(out).exists()
    # a second run finds everything stored and changes nothing
    again = extract_distributed(records, [f"hf:{tiny_esm2}"], out, cluster=client, layers=["all"],
                                batch_tokens=160, quiet=True)
    assert again[0].stored == 0 and again[0].skipped_existing == len(records)
    assert_same_cache(out, ref)


def test_distributed_extraction_writes_the_compression_asked(client, tiny_esm2, esm_inputs, tmp_path):
    """compression='lzf' reaches the merged target (its header and every HDF5 dataset of the model), with
    the values of the single-process (gzip) reference."""
    import h5py

    records, ref = esm_inputs
    out = tmp_path / "lzf.h5"
    extract_distributed(records, [f"hf:{tiny_esm2}"], out, cluster=client, layers=["all"], batch_tokens=160,
                        shard_tokens=300, quiet=True, compression="lzf")
    assert_same_cache(out, ref)
    with Cache(out) as cache, Cache(ref) as reference:
        assert cache.compression(KEY) == "lzf" and reference.compression(KEY) == "gzip"
    with h5py.File(out, "r") as f:
        (model,) = f["models"].values()
        assert {model["pooled"][layer].compression for layer in model["pooled"]} == {"lzf"}


def test_distributed_extraction_counts_its_shards_in_a_progress_bar(client, tiny_esm2, esm_inputs, tmp_path):
    """The shards' futures drive one bar (asked for here: standard error is no terminal under pytest)."""
    import contextlib
    import io
    import re

    from repalign.progress import progress_setting

    records, ref = esm_inputs
    err = io.StringIO()
    with contextlib.redirect_stderr(err), progress_setting(True):
        runs = extract_distributed(records, [f"hf:{tiny_esm2}"], tmp_path / "bar.h5", cluster=client, layers=["all"],
                                   batch_tokens=160, shard_tokens=300)
    n = runs[0].shards
    assert n >= 2 and re.search(rf"{re.escape(KEY)}: shards: 100%\|[^|]*\| {n}/{n} \[", err.getvalue()), err.getvalue()
    assert_same_cache(tmp_path / "bar.h5", ref)


def test_second_distributed_run_on_the_same_target_is_refused(client, tiny_esm2, esm_inputs, tmp_path):
    from repalign.distributed.extraction import run_lock

    records, _ = esm_inputs
    out = tmp_path / "locked.h5"
    with run_lock(shard_folder(out)):
        with pytest.raises(RepalignError, match="another distributed extraction .* is writing into"):
            extract_distributed(records, [f"hf:{tiny_esm2}"], out, cluster=client, layers=["all"], quiet=True)
    assert not out.exists()


def test_killed_worker_loses_no_sample(client, tiny_esm2, esm_inputs, tmp_path):
    records, ref = esm_inputs
    out = tmp_path / "killed.h5"
    folder = shard_folder(out)
    result, error = {}, {}

    def run():
        try:
            result["runs"] = extract_distributed(records, [f"hf:{tiny_esm2}"], out, cluster=client, layers=["all"],
                                                 batch_tokens=160, shard_tokens=300, quiet=True)
        except BaseException as exc:  # reported by the assertion below
            error["exc"] = exc

    pids = client.run(os.getpid)
    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 120
    killed = None
    while time.time() < deadline and thread.is_alive():
        parts = [p for p in folder.glob("*.h5.parts/*.h5")] if folder.exists() else []
        if parts:  # shards are being written: kill a worker now
            killed = sorted(pids.values())[0]
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.01)
    thread.join(240)
    assert not thread.is_alive()
    assert "exc" not in error, error.get("exc")
    assert killed is not None, "the run ended before a worker could be killed"
    assert killed not in client.run(os.getpid).values()
    assert_same_cache(out, ref)
    run = result["runs"][0]
    assert run.stored == len(records) and run.shards >= 2


def test_workers_paused_at_their_memory_limit_are_a_one_line_error(tiny_esm2, esm_inputs, tmp_path, monkeypatch):
    """A worker whose memory limit its model does not fit in is paused by Dask and takes no task;
    the run fails after PAUSED_TIMEOUT_S with the memory named, instead of waiting forever."""
    import dask

    import repalign.distributed.cluster as cluster_module

    monkeypatch.setattr(cluster_module, "PAUSED_TIMEOUT_S", 10)
    records, _ = esm_inputs
    out = tmp_path / "paused.h5"
    # pause at 50% of a limit that an idle worker is under and a worker holding torch is over; never kill
    config = {"distributed.worker.memory.pause": 0.5, "distributed.worker.memory.terminate": False,
              "distributed.worker.memory.target": False, "distributed.worker.memory.spill": False}
    with dask.config.set(config), LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit="400MiB",
                                                dashboard_address=":0") as cluster, Client(cluster) as small:
        start = time.monotonic()
        with pytest.raises(RepalignError) as info:
            extract_distributed(records, [f"hf:{tiny_esm2}"], out, cluster=small, layers=["all"], batch_tokens=160,
                                shard_tokens=300, quiet=True)
        waited = time.monotonic() - start
    message = str(info.value)
    assert "\n" not in message and "paused for 10 s at its memory limit" in message and "of 400 MiB" in message
    assert waited < 120
    assert not out.exists()  # nothing merged into the target


def test_concurrent_cli_extractions_one_wins_one_fails_clearly(tiny_esm2, tmp_path):
    """Two real `repalign extract` processes on one cache: the second is refused while the first writes.

    The first is paused (SIGSTOP) once it has written a batch, so the second surely meets a live
    writer; then the first resumes (SIGCONT) and completes the cache.
    """
    import subprocess
    import sys

    fasta = random_fasta(tmp_path / "in.fasta", 30, seed=2)
    cache = tmp_path / "c.h5"
    cmd = [sys.executable, "-m", "repalign", "extract", str(fasta), "--model", f"hf:{tiny_esm2}", "-o", str(cache),
           "--layers", "all", "--batch-tokens", "64", "--quiet"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parts = tmp_path / "c.h5.parts"
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None and not (parts.exists() and any(parts.glob("*.h5"))):
        time.sleep(0.01)
    assert first.poll() is None, "the first extraction ended before it could be paused"
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=240)
    assert first.returncode == 0, err
    assert second.returncode != 0
    assert "being written by another process" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    done = Cache(cache)
    assert len(done.ids(KEY)) == 30 == len(set(done.ids(KEY)))


# ----------------------------------------------------------------------------- comparison
@pytest.fixture(scope="module")
def layer_data():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((300, 6))
    a = [np.ascontiguousarray((base @ rng.standard_normal((6, d)) + 0.5 * rng.standard_normal((300, d))).astype(np.float32))
         for d in (8, 12, 10)]
    b = [np.ascontiguousarray((base @ rng.standard_normal((6, d)) + 0.8 * rng.standard_normal((300, d))).astype(np.float32))
         for d in (9, 7)]
    a[2][10:14] = a[2][3]  # exact duplicates: tied neighbours
    b[1][200:203] = b[1][50]
    return a, b


def test_distributed_layer_scores_equal_the_single_process_engine(client, layer_data):
    a, b = layer_data
    metrics = ["mknn", "cka", "cknna", "svcca_platonic", "cycle_knn"]
    ref = align_layers_multi(a, b, metrics, names_a=["a0", "a1", "a2"], names_b=["b0", "b1"], k=7, dim=3)
    got = align_layers_distributed(client, a, b, metrics, names_a=["a0", "a1", "a2"], names_b=["b0", "b1"], k=7, dim=3)
    assert all(g.recall is None for g in got)
    for r, g in zip(ref, got):
        assert g.metric == r.metric and g.params == r.params and g.n_samples == 300
        np.testing.assert_array_equal(g.scores, r.scores)


def test_distributed_out_of_core_from_a_cache(client, layer_data, tmp_path):
    a, b = layer_data
    path = tmp_path / "layers.h5"
    ids = [f"s{i}" for i in range(300)]
    hashes = [f"{i:064x}" for i in range(300)]
    for model, mats in (("A", a), ("B", b)):
        names = [f"l{i}" for i in range(len(mats))]
        with CacheWriter(path, model, provenance={"options": {}}, layers=names) as w:
            for s in range(0, 300, 64):  # appended in batches; read back in other blocks
                w.append(ids[s:s + 64], hashes[s:s + 64], {n: m[s:s + 64] for n, m in zip(names, mats)})
    src_a = [CacheLayer(str(path), "A", f"l{i}") for i in range(3)]
    order = tuple(ids[::-1])  # an explicit id order (as align_ids gives) is honoured
    src_b = [CacheLayer(str(path), "B", f"l{i}", ids=tuple(ids)) for i in range(2)]
    got = align_layers_distributed(client, src_a, src_b, ["mknn", "cknna", "cka"], k=5, block_rows=70)
    here = align_layers_multi([lambda s=s: s.blocks(70) for s in src_a], [lambda s=s: s.blocks(70) for s in src_b],
                              ["mknn", "cknna", "cka"], k=5, block_rows=70, n_samples=300)
    ref = align_layers_multi(a, b, ["mknn", "cknna", "cka"], k=5)
    for r, g, h in zip(ref, got, here):
        np.testing.assert_array_equal(g.scores, h.scores)
        if r.metric == "cka":  # streamed statistics: equal up to float64 rounding
            np.testing.assert_allclose(g.scores, r.scores, rtol=1e-5)
        else:
            np.testing.assert_array_equal(g.scores, r.scores)
    # samples read in reverse order: the same scores (tie handling does not depend on sample order)
    rev = align_layers_distributed(client, [CacheLayer(str(path), "A", "l2", ids=order)],
                                   [CacheLayer(str(path), "B", "l1", ids=order)], ["mknn", "lcs_knn"], k=5)
    forward = align_layers_multi([a[2]], [b[1]], ["mknn", "lcs_knn"], k=5)
    for r, f in zip(rev, forward):
        np.testing.assert_array_equal(r.scores, f.scores)
    with pytest.raises(RepalignError, match="cannot run out of core"):
        align_layers_distributed(client, src_a[:1], src_b[:1], ["svcca"], block_rows=70)


def test_distributed_approximate_knn_reports_recall(client, layer_data):
    pytest.importorskip("faiss")
    a, b = layer_data
    got = align_layers_distributed(client, a[:1], b[:1], ["mknn"], k=5, knn="faiss-hnsw")
    recall = got[0].recall
    assert set(recall) == {("a", "0"), ("b", "0")}
    assert all(0.9 <= r <= 1.0 for r in recall.values())
    exact = align_layers_multi(a[:1], b[:1], ["mknn"], k=5)[0].scores
    assert got[0].params["knn"] == "faiss-hnsw"
    assert abs(got[0].scores[0, 0] - exact[0, 0]) < 0.05


# ----------------------------------------------------------------------------- one layer across workers
@pytest.mark.parametrize("block", [64, 200])
def test_one_layer_search_split_over_workers_gives_the_same_lists(client, block):
    """Row block × column block tasks with top-k merges: the very lists of the in-memory search
    (small integer features: many exactly tied similarities; duplicated rows)."""
    from repalign.distributed import DaskCandidateSearch, distributed_knn_state
    from repalign.metrics.neighbors import knn_state
    from repalign.metrics.outofcore import blocked_knn_state
    from repalign.metrics.prepare import prepare_valid

    rng = np.random.default_rng(4)
    X = rng.integers(-2, 3, size=(500, 6)).astype(np.float32)
    X[40:48] = X[5]
    ref = knn_state(prepare_valid(X, "l2", None), 9)
    got = distributed_knn_state(client, X, k=9, block=block)
    for field in ("indices", "similarities", "weights", "levels"):
        np.testing.assert_array_equal(getattr(got, field), getattr(ref, field))
    search = DaskCandidateSearch(client, block)
    blocked_knn_state(lambda: (X[s:s + 97] for s in range(0, 500, 97)), 9, "l2", search=search)
    n_distinct = len(np.unique(X, axis=0))
    b = -(-n_distinct // block)
    assert search.tasks == b * (b + 1) // 2 and 1 <= len(search.pids) <= 2
    with pytest.raises(RepalignError, match="block=0"):
        DaskCandidateSearch(client, 0)


def test_comparison_with_each_layer_search_split_over_workers(client, layer_data):
    """search_block: every layer's search spread over both workers; the scores of the single-process engine."""
    a, b = layer_data
    ref = align_layers_multi(a, b, ["mknn", "cknna", "cka"], k=7)
    got = align_layers_distributed(client, a, b, ["mknn", "cknna", "cka"], k=7, search_block=64)
    for r, g in zip(ref, got):
        if r.metric == "cka":  # streamed statistics: equal up to float64 rounding
            np.testing.assert_allclose(g.scores, r.scores, rtol=1e-6)
        else:
            np.testing.assert_array_equal(g.scores, r.scores)
    with pytest.raises(RepalignError, match="search_block splits the exact"):
        align_layers_distributed(client, a, b, ["mknn"], knn="faiss-hnsw", search_block=64)
