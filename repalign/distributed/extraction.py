"""Extraction on a Dask cluster: :func:`extract_distributed` gives the cache ``repalign.extract.extract`` gives.

The samples still to do are ordered and batched exactly as a single-process run would
(:func:`repalign.extract_batches.length_batches`), the batch list is cut into shards of consecutive
batches, and each shard is extracted by a worker through the public
:func:`repalign.extract.extract_model` into its own shard cache (a normal cache written by
``CacheWriter``, hence crash-safe and resumable); then the shards are appended to the target
cache in shard order (:func:`embeddings_cache.merge_shards`). The target therefore holds the same
samples, in the same order, with the same values as a single-process run. Shard files rather than
HDF5 virtual datasets: a virtual dataset would leave the target depending on many files, skip the
target's compression and checksums, and bypass the journal that makes every append atomic; the
merge copies each row once through the public writer instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from embeddings_cache import merge_shards, remove_cache
from embeddings_cache.format import CACHE_COMPRESSION
from repalign.distributed.cluster import dask_distributed, gather_watched, open_client, parse_cluster
from repalign.errors import RepalignError
from repalign.extract import ModelRun, extract_model, load_model, model_writer, plan_run
from repalign.extract_batches import length_batches, stored_hashes
from repalign.extract_options import ExtractOptions, ModelPlan, adapter_name, dataset_provenance, split_stored
from repalign.inputs import Record
from repalign.models import ModelAdapter, options_for_model


@dataclass
class DistributedModelRun(ModelRun):
    """A ModelRun plus what the cluster did: shards, (worker pid, loaded adapter id) pairs, merge time,
    and ``resumed``: samples a retried shard found already in its shard cache (work a dead worker kept)."""

    shards: int = 0
    resumed: int = 0
    workers: list = field(default_factory=list)
    merge_seconds: float = 0.0


@dataclass(frozen=True)
class Sharding:
    """How a distributed extraction cuts and runs its work (see :func:`extract_distributed`)."""

    shard_tokens: int | None = None
    retries: int = 3
    keep_shards: bool = False

    def __post_init__(self):
        tokens = self.shard_tokens
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
            raise RepalignError(f"shard_tokens={tokens!r} must be a positive whole number of tokens")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise RepalignError(f"retries={self.retries!r} must be a whole number >= 0")


@dataclass(frozen=True)
class ShardTask:
    """One shard's work, sent to a worker: the shard cache to write and the plan of its model.

    model: the name the adapter was built with (``hf:PATH`` keeps its path); model_options: this
    model's options, scoped ones resolved; key: the model's name in the cache.
    """

    path: str
    model: str
    model_options: dict
    key: str
    layers: list[str]
    pool: str
    token_layers: list[str]
    records: list[Record]
    dataset: dict | None = None


# ----------------------------------------------------------------------------- worker side
# One dict per worker process: adapters are loaded once per worker (not per shard) and reused.
_WORKER_ADAPTERS: dict[tuple, Any] = {}
_WORKER_LOCK = threading.Lock()


def worker_device(device: str) -> str:
    """``cuda`` without an index becomes ``cuda:<worker index mod visible GPUs>`` on LocalCluster workers.

    On job-queue clusters each worker usually sees its own GPU as cuda:0 (CUDA_VISIBLE_DEVICES),
    and worker names are not integers, so ``cuda`` stays ``cuda``.
    """
    if device != "cuda":
        return device
    try:
        name = dask_distributed().get_worker().name
    except (RepalignError, ValueError):
        return device
    if isinstance(name, int):
        import torch  # heavy, and only needed on GPU workers

        count = torch.cuda.device_count()
        if count:
            return f"cuda:{name % count}"
    return device


def worker_adapter(task: ShardTask, options: ExtractOptions) -> ModelAdapter:
    """The loaded adapter of ``task``'s model in this worker process (built and loaded once)."""
    factory = options.adapter_factory
    key = (getattr(factory, "__module__", ""), getattr(factory, "__qualname__", repr(factory)), task.model,
           options.weights, options.device, options.dtype,
           tuple(sorted((str(k), repr(v)) for k, v in task.model_options.items())))
    with _WORKER_LOCK:
        adapter = _WORKER_ADAPTERS.get(key)
        if adapter is None:
            adapter = factory(task.model, weights=options.weights, device=options.device, dtype=options.dtype,
                              **task.model_options)
            load_model(adapter)
            _WORKER_ADAPTERS[key] = adapter
    return adapter


def run_shard(task: ShardTask, options: ExtractOptions) -> dict:
    """Extract one shard into its own cache file (resuming it if a previous attempt died); runs on a worker.

    A RepalignError (bad input, model error) is returned, not raised: retrying cannot fix it,
    whereas a dead worker makes Dask run the shard again.
    """
    try:
        options = dataclasses.replace(options, device=worker_device(options.device), overwrite=False, quiet=True)
        adapter = worker_adapter(task, options)
        plan = ModelPlan(task.key, adapter, list(task.layers), task.pool, list(task.token_layers), list(task.records))
        with model_writer(plan, task.path, options, task.dataset) as writer:
            run = extract_model(plan, writer, options)
    except RepalignError as exc:
        return {"error": str(exc)}
    return {"path": task.path, "stored": run.stored, "resumed": run.skipped_existing, "tokens": run.tokens,
            "seconds": run.seconds, "pid": os.getpid(), "adapter": id(adapter), "invalid": run.invalid,
            "retries": run.retries}


# ----------------------------------------------------------------------------- shards
def plan_shards(sizes: Sequence[int], batch_tokens: int, shard_tokens: int) -> list[list[int]]:
    """Shards of consecutive length batches (indices into ``sizes``), each about ``shard_tokens`` tokens.

    Batches are those of :func:`repalign.extract_batches.length_batches`; a shard never splits a batch, so
    each worker re-batches its shard into exactly the same batches.
    """
    if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise RepalignError(f"shard_tokens={shard_tokens!r} must be a positive whole number of tokens, e.g. 200000")
    batches = length_batches(list(range(len(sizes))), sizes, batch_tokens)
    shards, current, tokens = [], [], 0
    for batch in batches:
        current.extend(batch)
        tokens += sum(sizes[i] for i in batch)
        if tokens >= shard_tokens:
            shards.append(current)
            current, tokens = [], 0
    if current:
        shards.append(current)
    return shards


def shard_folder(cache: str | os.PathLike) -> Path:
    """Where the shard caches of a distributed extraction into ``cache`` live: ``<cache>.shards/``."""
    return Path(str(cache) + ".shards")


def _safe_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)


def shard_name(key: str, index: int, records: list[Record], options_text: str) -> str:
    """The shard cache's file name: model, index, and a digest of its samples and the run's options
    (a rerun of the same plan finds, and resumes, the same files)."""
    digest = hashlib.sha256(options_text.encode())
    digest.update(key.encode())
    for r in records:
        digest.update(r.id.encode() + b"\0" + r.content_hash.encode() + b"\n")
    return f"{_safe_key(key)}-{index:05d}-{digest.hexdigest()[:16]}.h5"


def shard_tasks(plan: ModelPlan, todo: list[Record], cache: Path, options: ExtractOptions, shard_tokens: int,
                dataset: dict | None = None) -> list[ShardTask]:
    """The shards of one model's samples still to do (``shard_tokens`` tokens each), in run order."""
    sizes = [plan.adapter.size(r) for r in todo]
    shards = [[todo[i] for i in shard] for shard in plan_shards(sizes, options.batch_tokens, shard_tokens)]
    options_text = repr((plan.key, sorted(plan.layers), plan.pool, sorted(plan.token_layers), options.store_dtype,
                         options.dtype, options.batch_tokens, sorted((options.options or {}).items()), options.weights))
    model = adapter_name(plan.adapter)
    model_options = options_for_model(model, options.options)
    return [ShardTask(str(shard_folder(cache) / shard_name(plan.key, i, s, options_text)), model, model_options,
                      plan.key, list(plan.layers), plan.pool, list(plan.token_layers), s, dataset)
            for i, s in enumerate(shards)]


@contextlib.contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """One distributed extraction per target at a time (it owns the shard folder until its merge ends)."""
    folder.mkdir(exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise RepalignError(f"another distributed extraction (pid {other}) is writing into {folder.parent}; "
                                f"wait for it or write to another file") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def remove_stale_shards(folder: Path, key: str, keep: list[str]) -> None:
    """Shard caches of this model from an earlier, different plan (its merge was interrupted) are dropped."""
    keep_names = {Path(p).name for p in keep}
    for p in folder.glob(f"{_safe_key(key)}-*.h5"):
        if p.name not in keep_names:
            remove_cache(p)


# ----------------------------------------------------------------------------- extraction
def extract_distributed(records: Sequence[Record], models: Sequence[str], cache: str | os.PathLike, cluster="local:2",
                        settings: ExtractOptions | None = None, *, shard_tokens: int | None = None, retries: int = 3,
                        keep_shards: bool = False, **fields: Any) -> list[DistributedModelRun]:
    """:func:`repalign.extract.extract` on a Dask cluster; the resulting cache is the same.

    cluster: a spec (``local:N``, ``tcp://HOST:PORT``, ``slurm:CONFIG.yaml``) or a distributed.Client.
    settings / fields: as for :func:`repalign.extract.extract` (an ``ExtractOptions``, and its fields by name).
    shard_tokens: tokens (residues / atoms) per shard; default: the work split into about
    4 shards per worker (at least one batch each). Smaller shards lose less work when a worker dies.
    device: ``cuda`` gives LocalCluster worker i the GPU ``cuda:i`` (mod the GPU count); on job-queue
    clusters each job's own GPU. retries: times a shard is retried after an error or a dead worker
    (its shard cache resumes where it stopped).

    Order: samples are ordered and batched as a single-process run would (by length, then input
    order), shards hold consecutive batches and are merged in shard order, so neither the number of
    workers nor which worker finishes first changes the target. Shard caches live in
    ``<cache>.shards/`` and are deleted after a successful merge (``keep_shards=False``). Returns one
    run per model: a ``repalign.extract.ModelRun`` with ``shards``, ``workers`` (pairs of worker
    pid and loaded-model id: one per worker process) and ``merge_seconds`` added.
    """
    options = ExtractOptions.build(settings, **fields)
    sharding = Sharding(shard_tokens, retries, keep_shards)
    spec = cluster if not isinstance(cluster, str) else parse_cluster(cluster)  # bad specs fail before any work
    dataset = dataset_provenance(records)
    plans = plan_run(records, models, cache, options)
    with open_client(spec) as client:
        return [extract_on_cluster(client, plan, Path(cache), options, sharding, dataset) for plan in plans]


def extract_on_cluster(client, plan: ModelPlan, cache: Path, options: ExtractOptions, sharding: Sharding,
                       dataset: dict | None = None) -> DistributedModelRun:
    """One model of :func:`extract_distributed`: its shards extracted on the workers of ``client``,
    then merged into ``cache`` in shard order."""
    run = DistributedModelRun(plan.key, list(plan.layers), invalid=dict(plan.invalid))
    start = time.perf_counter()
    stored = {} if options.overwrite else stored_hashes(cache, plan.key)
    todo, run.skipped_existing = split_stored(plan.records, stored, plan.key)
    if not todo:
        run.seconds = time.perf_counter() - start
        return run
    n_workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))
    budget = sharding.shard_tokens or max(1, sum(plan.adapter.size(r) for r in todo) // (4 * n_workers))
    tasks = shard_tasks(plan, todo, cache, options, budget, dataset)
    folder = shard_folder(cache)
    paths = [task.path for task in tasks]
    with run_lock(folder):
        remove_stale_shards(folder, plan.key, paths)
        results = run_shards(client, tasks, options, sharding.retries)
        run.tokens = sum(r["tokens"] for r in results)
        run.shards = len(paths)
        run.resumed = sum(r["resumed"] for r in results)
        run.workers = sorted({(r["pid"], r["adapter"]) for r in results})
        for r in results:
            run.invalid.update(r["invalid"])
            run.retries.extend(r["retries"])
        merge_start = time.perf_counter()
        run.stored = merge_shards(paths, cache, plan.key, overwrite=options.overwrite,
                                  compression=options.compression or CACHE_COMPRESSION)
        run.merge_seconds = time.perf_counter() - merge_start
        if not sharding.keep_shards:
            for p in paths:
                remove_cache(p)
    if not sharding.keep_shards and not any(folder.glob("*.h5")):
        shutil.rmtree(folder, ignore_errors=True)
    run.seconds = time.perf_counter() - start
    return run


def run_shards(client, tasks: list[ShardTask], options: ExtractOptions, retries: int) -> list[dict]:
    """Submit every shard to the cluster and wait for all; results in shard order. The first failure
    cancels the shards still running and is one RepalignError."""
    futures = [client.submit(run_shard, task, options, key=f"repalign-shard-{Path(task.path).stem}-{uuid.uuid4().hex[:8]}",
                             retries=retries, pure=False)
               for task in tasks]
    try:
        return _gather(client, futures, tasks[0].key, options.quiet)
    finally:
        client.cancel(futures)  # no-op for finished shards; stops the others after an error


def _gather(client, futures, key: str, quiet: bool) -> list[dict]:
    def check(fut):
        res = fut.result()
        if "error" in res:
            raise RepalignError(f"extraction of {key} failed: {res['error']}")

    try:
        return gather_watched(client, futures, on_done=check, desc=f"{key}: shards", quiet=quiet)
    except RepalignError:
        raise
    except Exception as exc:  # a shard failed after its retries: report the first line
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RepalignError(f"extraction of {key} failed on a worker: {text}; completed shards are kept in "
                            f"their shard caches and a rerun resumes them") from None
