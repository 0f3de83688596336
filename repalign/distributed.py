"""Extraction and layer comparison on a Dask cluster (optional: ``pip install 'repalign[dask]'``).

Cluster specs (:func:`parse_cluster`, :func:`open_client`):

- ``local:N``           a LocalCluster of N worker processes, one thread each, on this machine;
- ``tcp://HOST:PORT``   an existing scheduler (``dask scheduler`` + ``dask worker`` started by hand);
- ``slurm:CONFIG.yaml`` a dask-jobqueue SLURMCluster whose keyword arguments are the YAML mapping
  (plus ``jobs: N``, the number of jobs to start, and ``start_timeout: S``, the seconds to wait for
  the first job to start); see docs/scaling.md.

Extraction (:func:`extract_distributed`): the samples still to do are ordered and batched exactly
as :func:`repalign.extract.extract` would (``length_batches``), the batch list is cut into shards
of consecutive batches, each shard is extracted by a worker into its own shard cache (a normal
cache written by ``CacheWriter``, hence crash-safe and resumable), then the shards are appended to
the target cache in shard order. The target therefore holds the same samples, in the same order,
with the same values as a single-process run. Shard files rather than HDF5 virtual datasets:
a virtual dataset would leave the target depending on many files, skip the target's compression
and checksums, and bypass the journal that makes every append atomic; the merge copies each row
once through the public writer instead.

Comparison (:func:`align_layers_distributed`): the layer-state engine
(:func:`repalign.metrics.engine.layer_state`, with its neighbour backend) is mapped over the
layers on workers, once per layer, and every layer pair is scored where the states are; the
numbers are those of :func:`repalign.metrics.align_layers_multi`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from repalign.errors import RepalignError
from repalign.extract import ModelRun, plan_model, split_stored
from repalign.inputs import Record

log = logging.getLogger("repalign.distributed")

CLUSTER_FORMS = "local:N (N worker processes here), tcp://HOST:PORT (a running scheduler) or slurm:CONFIG.yaml (dask-jobqueue)"

# Keyword arguments of dask_jobqueue.SLURMCluster accepted in a slurm:CONFIG.yaml, plus "jobs".
SLURM_KEYS = frozenset({
    "cores", "memory", "processes", "queue", "account", "walltime", "job_cpu", "job_mem", "interface",
    "death_timeout", "local_directory", "worker_extra_args", "job_extra_directives", "job_script_prologue",
    "job_directives_skip", "log_directory", "shebang", "python", "job_name", "nanny", "protocol",
    "scheduler_options", "name", "silence_logs", "dashboard_address", "host", "shared_temp_directory",
})
SLURM_REQUIRED = ("cores", "memory")
# Seconds to wait for a scheduler to answer, and for the first worker (tcp) or SLURM job to start.
CONNECT_TIMEOUT_S = 30
WORKER_TIMEOUT_S = 600


def _dask():
    try:
        import distributed
    except ImportError:
        raise RepalignError("running on a cluster needs Dask: pip install 'repalign[dask]'") from None
    return distributed


# ----------------------------------------------------------------------------- cluster specs
@dataclass(frozen=True)
class ClusterSpec:
    """A parsed ``--cluster`` value: kind ("local", "tcp", "slurm") and its settings."""

    kind: str
    workers: int | None = None  # local
    address: str | None = None  # tcp
    slurm: dict | None = None  # slurm: SLURMCluster keyword arguments
    jobs: int | None = None  # slurm: jobs to start


def read_slurm_config(path: str | os.PathLike) -> tuple[dict, int]:
    """SLURMCluster keyword arguments and the number of jobs from a YAML file, validated."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RepalignError(f"slurm config {path} does not exist; give a YAML file of dask-jobqueue SLURMCluster settings (see docs/scaling.md)")
    try:
        conf = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise RepalignError(f"slurm config {path} is not valid YAML{at}; fix the syntax (see docs/scaling.md for an example)") from None
    if not isinstance(conf, dict):
        raise RepalignError(f"slurm config {path} must be a mapping of SLURMCluster settings (cores: 8, memory: 64GB, ...), got {type(conf).__name__}")
    unknown = sorted(str(k) for k in conf if k not in SLURM_KEYS and k not in ("jobs", "start_timeout"))
    if unknown:
        raise RepalignError(f"slurm config {path}: unknown key(s) {', '.join(unknown)}; accepted: jobs, start_timeout, "
                            f"{', '.join(sorted(SLURM_KEYS))}")
    wait = conf.get("start_timeout", WORKER_TIMEOUT_S)
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait > 0:
        raise RepalignError(f"slurm config {path}: start_timeout={wait!r} must be a positive number of seconds, e.g. 600")
    missing = [k for k in SLURM_REQUIRED if k not in conf]
    if missing:
        raise RepalignError(f"slurm config {path}: missing {', '.join(missing)}; every job needs e.g. 'cores: 8' and 'memory: 64GB'")
    jobs = conf.pop("jobs", 1)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise RepalignError(f"slurm config {path}: jobs={jobs!r} must be a positive whole number (one job = one worker, e.g. one GPU)")
    if isinstance(conf["cores"], bool) or not isinstance(conf["cores"], int) or conf["cores"] < 1:
        raise RepalignError(f"slurm config {path}: cores={conf['cores']!r} must be a positive whole number")
    if not isinstance(conf["memory"], str) or not re.fullmatch(r"\s*\d+(\.\d+)?\s*[KMGT]i?B\s*", conf["memory"], re.I):
        raise RepalignError(f"slurm config {path}: memory={conf['memory']!r} must be a size such as '64GB'")
    return conf, jobs


def parse_cluster(spec: str) -> ClusterSpec:
    """Parse a cluster spec (see the module docstring); bad specs raise a one-line RepalignError."""
    if not isinstance(spec, str) or not spec.strip():
        raise RepalignError(f"cluster spec {spec!r} is not valid; use {CLUSTER_FORMS}")
    spec = spec.strip()
    if spec.startswith("local:"):
        count = spec[6:]
        if not count.isdigit() or int(count) < 1:
            raise RepalignError(f"cluster spec {spec!r}: the number of workers must be a positive whole number, e.g. local:4")
        return ClusterSpec("local", workers=int(count))
    if spec.startswith("tcp://"):
        if not re.fullmatch(r"tcp://[A-Za-z0-9_.\-\[\]:]+:\d{1,5}", spec):
            raise RepalignError(f"cluster spec {spec!r}: a scheduler address is tcp://HOST:PORT, e.g. tcp://10.0.0.5:8786")
        return ClusterSpec("tcp", address=spec)
    if spec.startswith("slurm:"):
        conf, jobs = read_slurm_config(spec[6:])
        return ClusterSpec("slurm", slurm=conf, jobs=jobs)
    raise RepalignError(f"cluster spec {spec!r} is not valid; use {CLUSTER_FORMS}")


@contextlib.contextmanager
def open_client(cluster) -> Iterator[Any]:
    """A ``distributed.Client`` for a spec string or ClusterSpec; a Client passed in is used as is.

    Clusters started here (local, slurm) are shut down on exit; an existing scheduler (tcp) is left running.
    Every way of waiting is bounded: a scheduler that does not answer fails after
    :data:`CONNECT_TIMEOUT_S`; a scheduler without workers, or SLURM jobs that never start, after
    :data:`WORKER_TIMEOUT_S` (SLURM: the config's ``start_timeout``), each with a one-line error.
    """
    distributed = _dask()
    if isinstance(cluster, distributed.Client):
        yield cluster
        return
    spec = cluster if isinstance(cluster, ClusterSpec) else parse_cluster(cluster)
    if spec.kind == "tcp":
        try:
            client = distributed.Client(spec.address, timeout=f"{CONNECT_TIMEOUT_S}s")
        except OSError as exc:
            raise RepalignError(f"cannot reach the Dask scheduler at {spec.address} within {CONNECT_TIMEOUT_S} s "
                                f"({_first_line(exc)}); start it with 'dask scheduler' or check the address") from None
        with client:
            _wait_for_workers(client, WORKER_TIMEOUT_S,
                              f"the Dask scheduler at {spec.address} has no worker after {WORKER_TIMEOUT_S} s; "
                              f"start workers with 'dask worker {spec.address}'")
            yield client
        return
    if spec.kind == "local":
        cm = distributed.LocalCluster(n_workers=spec.workers, threads_per_worker=1, processes=True, dashboard_address=":0")
        with cm as cl, distributed.Client(cl) as client:
            yield client
        return
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise RepalignError("slurm clusters need dask-jobqueue: pip install 'repalign[dask]'") from None
    settings = dict(spec.slurm)
    start_timeout = settings.pop("start_timeout", WORKER_TIMEOUT_S)
    check_slurm_queue(settings.get("queue"))
    if "dashboard_address" not in settings and "dashboard_address" not in (settings.get("scheduler_options") or {}):
        # any free port: dask-jobqueue's fixed 8787 clashes with other schedulers on the same host
        settings["scheduler_options"] = {**(settings.get("scheduler_options") or {}), "dashboard_address": ":0"}
    with _quiet_dask(), SLURMCluster(**settings) as cl, distributed.Client(cl) as client:
        cl.scale(jobs=spec.jobs)
        _wait_for_workers(client, start_timeout, lambda: (
            f"no SLURM job started within {start_timeout} s ({_pending_reason(cl)}); free resources, choose "
            f"another queue, or raise start_timeout in the slurm config"))
        yield client


@contextlib.contextmanager
def _quiet_dask() -> Iterator[None]:
    """The scheduler a SLURMCluster starts in this process logs every event at INFO; keep warnings only."""
    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _wait_for_workers(client, timeout: float, message) -> None:
    """At least one worker within ``timeout`` seconds, else a RepalignError (``message``: text or callable)."""
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise RepalignError(message() if callable(message) else message) from None


def check_slurm_queue(queue: str | None) -> None:
    """Refuse a partition that ``sinfo`` does not list (sbatch would fail in the background and the
    jobs never appear), and say so when the SLURM commands are missing."""
    import subprocess

    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        raise RepalignError("slurm clusters need the SLURM commands (sbatch, sinfo) on PATH; run on a SLURM login node")
    if queue is None:
        return
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=CONNECT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RepalignError(f"sinfo did not answer within {CONNECT_TIMEOUT_S} s; is slurmctld running?") from None
    if out.returncode != 0:
        raise RepalignError(f"sinfo failed ({(out.stderr.strip().splitlines() or ['no output'])[0]}); is slurmctld running?")
    partitions = sorted(set(out.stdout.split()))
    if queue not in partitions:
        raise RepalignError(f"SLURM partition {queue!r} does not exist; the partitions are {', '.join(partitions) or 'none'}: "
                            f"set queue in the slurm config to one of them")


def _pending_reason(cluster) -> str:
    """What squeue says about the cluster's jobs, for the error when none starts."""
    import subprocess

    ids = [str(j.job_id) for j in getattr(cluster, "workers", {}).values() if getattr(j, "job_id", None)]
    if not ids or shutil.which("squeue") is None:
        return "no job was accepted by sbatch" if not ids else f"jobs {','.join(ids)}"
    try:
        out = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T %r"], capture_output=True, text=True,
                             timeout=CONNECT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"jobs {','.join(ids)}; squeue did not answer"
    states = "; ".join(line.strip() for line in out.stdout.splitlines() if line.strip())
    return f"squeue: {states}" if states else f"jobs {','.join(ids)} are no longer queued"


# ----------------------------------------------------------------------------- worker side
# One dict per worker process: adapters are loaded once per worker (not per shard) and reused.
_WORKER_ADAPTERS: dict[tuple, Any] = {}
_WORKER_LOCK = threading.Lock()


def _worker_device(device: str) -> str:
    """``cuda`` without an index becomes ``cuda:<worker index mod visible GPUs>`` on LocalCluster workers.

    On job-queue clusters each worker usually sees its own GPU as cuda:0 (CUDA_VISIBLE_DEVICES),
    and worker names are not integers, so ``cuda`` stays ``cuda``.
    """
    if device != "cuda":
        return device
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return device
    if isinstance(name, int):
        import torch

        count = torch.cuda.device_count()
        if count:
            return f"cuda:{name % count}"
    return device


def _worker_adapter(factory, name, weights, device, dtype, options):
    key = (getattr(factory, "__module__", ""), getattr(factory, "__qualname__", repr(factory)), name, weights, device, dtype,
           tuple(sorted((str(k), repr(v)) for k, v in (options or {}).items())))
    with _WORKER_LOCK:
        adapter = _WORKER_ADAPTERS.get(key)
        if adapter is None:
            adapter = factory(name, weights=weights, device=device, dtype=dtype, **(options or {}))
            adapter.ensure_loaded()
            _WORKER_ADAPTERS[key] = adapter
    return adapter


def _run_shard(shard_path: str, records: list, layers: list, model: str, key: str, pool: str, token_layers: list,
               store_dtype: str, batch_tokens: int, factory, weights, device, dtype, options) -> dict:
    """Extract one shard into its own cache file (resuming it if a previous attempt died).

    A RepalignError (bad input, model error) is returned, not raised: retrying cannot fix it,
    whereas a dead worker makes Dask run the shard again.
    """
    from repalign.extract import _extract_one

    try:
        adapter = _worker_adapter(factory, model, weights, _worker_device(device), dtype, options)
        run = ModelRun(key, list(layers))
        _extract_one(adapter, run, records, shard_path, pool, token_layers, store_dtype, batch_tokens, False, True)
    except RepalignError as exc:
        return {"error": str(exc)}
    return {"path": shard_path, "stored": run.stored, "resumed": run.skipped_existing, "tokens": run.tokens,
            "seconds": run.seconds, "pid": os.getpid(), "adapter": id(adapter)}


# ----------------------------------------------------------------------------- extraction
@dataclass
class DistributedModelRun(ModelRun):
    """A ModelRun plus what the cluster did: shards, (worker pid, loaded adapter id) pairs, merge time,
    and ``resumed``: samples a retried shard found already in its shard cache (work a dead worker kept)."""

    shards: int = 0
    resumed: int = 0
    workers: list = field(default_factory=list)
    merge_seconds: float = 0.0


def _todo(cache: Path, key: str, records: list[Record], overwrite: bool) -> tuple[list[Record], int]:
    """Records not yet in the target cache (same rule as a single-process resume)."""
    from embeddings_cache import Cache

    if overwrite or not (cache.exists() or Path(str(cache) + ".parts").exists()):
        return list(records), 0
    with Cache(cache) as c:
        stored = dict(zip(c.ids(key), c.hashes(key))) if key in c.models else {}
    return split_stored(records, stored, key)


def plan_shards(sizes: Sequence[int], batch_tokens: int, shard_tokens: int) -> list[list[int]]:
    """Shards of consecutive length batches (indices into ``sizes``), each about ``shard_tokens`` tokens.

    Batches are those of :func:`repalign.extract.length_batches`; a shard never splits a batch, so
    each worker re-batches its shard into exactly the same batches.
    """
    from repalign.extract import length_batches

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


def _shard_name(key: str, index: int, records: list[Record], options_text: str) -> str:
    digest = hashlib.sha256(options_text.encode())
    digest.update(key.encode())
    for r in records:
        digest.update(r.id.encode() + b"\0" + r.content_hash.encode() + b"\n")
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
    return f"{safe}-{index:05d}-{digest.hexdigest()[:16]}.h5"


def merge_shards(shard_paths: Sequence[str | os.PathLike], cache: str | os.PathLike, key: str,
                 overwrite: bool = False, rows_per_append: int = 256) -> int:
    """Append the samples of shard caches to ``cache`` in the given order; returns the samples added.

    Goes through the public cache API only (``Cache`` reads, ``CacheWriter.append``), so the
    target keeps its journal, compression and checksums; samples already in the target are skipped,
    which makes a merge interrupted by a crash safe to run again.
    """
    from embeddings_cache import Cache, CacheWriter

    shards = [Cache(p) for p in shard_paths]
    try:
        first = next((c for c in shards if key in c.models), None)
        if first is None:
            return 0
        prov = first.provenance(key)
        prov.pop("created", None)
        prov.pop("format_version", None)
        layers, token_layers = first.layers(key), first.token_layers(key)
        added = 0
        with CacheWriter(cache, key, provenance=prov, layers=layers, token_layers=token_layers,
                         dtype=first.storage_dtype(key), overwrite=overwrite) as writer:
            stored = writer.stored()
            for shard in shards:
                if key not in shard.models:
                    continue
                ids, hashes = shard.ids(key), shard.hashes(key)
                outputs = shard.outputs(key)
                keep = [i for i, sid in enumerate(ids) if sid not in stored]
                for s in range(0, len(keep), rows_per_append):
                    rows = [ids[i] for i in keep[s:s + rows_per_append]]
                    pooled = {l: shard.read_layer(key, l, ids=rows, dtype=first.storage_dtype(key)) for l in layers}
                    toks = {}
                    for l in token_layers:
                        data, offsets = shard.read_tokens(key, l, ids=rows, dtype=first.storage_dtype(key))
                        toks[l] = [data[offsets[j]:offsets[j + 1]] for j in range(len(rows))]
                    outs = {o: shard.read_output(key, o, ids=rows) for o in outputs}
                    writer.append(rows, [hashes[i] for i in keep[s:s + rows_per_append]], pooled, tokens=toks, outputs=outs)
                    added += len(rows)
        return added
    finally:
        for c in shards:
            c.close()


def extract_distributed(
    records: Sequence[Record],
    models: Sequence[str],
    cache: str | os.PathLike,
    cluster="local:2",
    *,
    layers: Sequence[str] | None = None,
    pool: str | None = None,
    tokens: Sequence[str] = (),
    device: str = "cpu",
    dtype: str = "float32",
    store_dtype: str = "float32",
    batch_tokens: int = 4096,
    shard_tokens: int | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    skip_invalid: bool = False,
    weights: str | None = None,
    options: dict | None = None,
    quiet: bool = False,
    retries: int = 3,
    keep_shards: bool = False,
    adapter_factory: Callable | None = None,
):
    """:func:`repalign.extract.extract` on a Dask cluster; the resulting cache is the same.

    cluster: a spec (``local:N``, ``tcp://HOST:PORT``, ``slurm:CONFIG.yaml``) or a distributed.Client.
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
    from repalign.extract import check_extract_args, model_key
    from repalign.models import get_adapter
    from repalign.options import check_options, options_for_model

    factory = adapter_factory or get_adapter
    records = check_extract_args(records, models, pool, store_dtype, limit, weights)
    check_options(options, models)
    if shard_tokens is not None and (isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) or shard_tokens < 1):
        raise RepalignError(f"shard_tokens={shard_tokens!r} must be a positive whole number of tokens")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise RepalignError(f"retries={retries!r} must be a whole number >= 0")
    cache = Path(cache)
    if not cache.parent.is_dir():
        raise RepalignError(f"folder {cache.parent} does not exist; create it first")
    spec = cluster if not isinstance(cluster, str) else parse_cluster(cluster)  # bad specs fail before any work

    plans = [plan_model(name, records, layers, pool, tokens, device, dtype, weights, options, skip_invalid, factory)
             for name in models]
    runs = []
    with open_client(spec) as client:
        n_workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))
        for adapter, chosen, model_pool, token_layers, good, invalid in plans:
            key = model_key(adapter)
            run = DistributedModelRun(key, chosen, invalid=invalid)
            for sid, reason in invalid.items():
                log.warning("skipped %s: %s", sid, reason)
            start = time.perf_counter()
            todo, run.skipped_existing = _todo(cache, key, good, overwrite)
            if todo:
                sizes = [adapter.size(r) for r in todo]
                budget = shard_tokens or max(1, sum(sizes) // (4 * n_workers))
                shards = [[todo[i] for i in shard] for shard in plan_shards(sizes, batch_tokens, budget)]
                folder = shard_folder(cache)
                options_text = repr((key, sorted(chosen), model_pool, sorted(token_layers), store_dtype, dtype,
                                     batch_tokens, sorted((options or {}).items()), weights))
                paths = [str(folder / _shard_name(key, i, s, options_text)) for i, s in enumerate(shards)]
                with _run_lock(folder):
                    _remove_stale_shards(folder, key, paths)
                    futures = [
                        client.submit(_run_shard, path, shard, chosen, adapter_name(adapter), key, model_pool,
                                      token_layers, store_dtype, batch_tokens, factory, weights, device, dtype,
                                      options_for_model(adapter_name(adapter), options),
                                      key=f"repalign-shard-{Path(path).stem}-{uuid.uuid4().hex[:8]}", retries=retries,
                                      pure=False)
                        for path, shard in zip(paths, shards)
                    ]
                    try:
                        results = _gather(client, futures, key, quiet)
                    finally:
                        client.cancel(futures)  # no-op for finished shards; stops the others after an error
                    run.tokens = sum(r["tokens"] for r in results)
                    run.shards = len(paths)
                    run.resumed = sum(r["resumed"] for r in results)
                    run.workers = sorted({(r["pid"], r["adapter"]) for r in results})
                    merge_start = time.perf_counter()
                    run.stored = merge_shards(paths, cache, key, overwrite=overwrite)
                    run.merge_seconds = time.perf_counter() - merge_start
                    if not keep_shards:
                        for p in paths:
                            _remove_cache_files(Path(p))
                if not keep_shards and not any(folder.glob("*.h5")):
                    shutil.rmtree(folder, ignore_errors=True)
            run.seconds = time.perf_counter() - start
            runs.append(run)
    return runs


def adapter_name(adapter) -> str:
    """The name the adapter was created with (``hf:PATH`` keeps its full path for the workers)."""
    return getattr(adapter, "name", None) or adapter.info.name


def _gather(client, futures, key: str, quiet: bool) -> list[dict]:
    from distributed import as_completed

    results = {}
    done = 0
    try:
        for fut in as_completed(futures):
            res = fut.result()
            if "error" in res:
                raise RepalignError(f"extraction of {key} failed: {res['error']}")
            results[fut.key] = res
            done += 1
            if not quiet:
                log.info("model=%s shards_done=%d/%d", key, done, len(futures))
    except RepalignError:
        raise
    except Exception as exc:  # a shard failed after its retries: report the first line
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RepalignError(f"extraction of {key} failed on a worker: {text}; completed shards are kept in "
                            f"their shard caches and a rerun resumes them") from None
    return [results[f.key] for f in futures]


@contextlib.contextmanager
def _run_lock(folder: Path) -> Iterator[None]:
    """One distributed extraction per target at a time (it owns the shard folder until its merge ends)."""
    import fcntl

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


def _remove_cache_files(path: Path) -> None:
    for extra in (path, Path(str(path) + ".lock"), Path(str(path) + ".consolidating")):
        with contextlib.suppress(FileNotFoundError):
            extra.unlink()
    shutil.rmtree(str(path) + ".parts", ignore_errors=True)


def _remove_stale_shards(folder: Path, key: str, keep: list[str]) -> None:
    """Shard caches of this model from an earlier, different plan (its merge was interrupted) are dropped."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
    keep_names = {Path(p).name for p in keep}
    for p in folder.glob(f"{safe}-*.h5"):
        if p.name not in keep_names:
            _remove_cache_files(p)


# ----------------------------------------------------------------------------- comparison
@dataclass(frozen=True)
class CacheLayer:
    """A picklable reference to one pooled layer in a cache, read on the worker that needs it.

    ids: the samples (in this order) to read, e.g. from ``embeddings_cache.align_ids``; None = all, stored order.
    """

    path: str
    model: str
    layer: str
    ids: tuple | None = None

    def read(self) -> np.ndarray:
        from embeddings_cache import Cache

        with Cache(self.path) as c:
            return c.read_layer(self.model, self.layer, ids=None if self.ids is None else list(self.ids))

    def blocks(self, block_rows: int = 65536) -> Iterator[np.ndarray]:
        from embeddings_cache import Cache

        with Cache(self.path) as c:
            if self.ids is None:
                yield from c.iter_row_blocks(self.model, self.layer, block_rows)
            else:
                ids = list(self.ids)
                for s in range(0, len(ids), block_rows):
                    yield c.read_layer(self.model, self.layer, ids=ids[s:s + block_rows])


def _layer_source(item, block_rows: int | None):
    """What the engine reads on a worker: the array, or with ``block_rows`` a block source."""
    if isinstance(item, CacheLayer):
        return (lambda: item.blocks(block_rows)) if block_rows is not None else item.read()
    if callable(item) and block_rows is None:
        return item()
    return item


def _state_on_worker(item, resolved, name, label, options):
    """The engine's per-layer state, built where the layer is read (runs on a worker)."""
    from repalign.metrics.engine import layer_state

    return layer_state(_layer_source(item, options["block_rows"]), resolved, name=name, label=label, **options)


def _score_row(state_a, states_b, resolved) -> np.ndarray:
    """Scores of one layer of A against every layer of B, for every metric: array (M, Lb)."""
    from repalign.metrics.engine import score_matrix

    return np.stack([score_matrix(metric, p, m, [state_a], states_b)[0] for m, (metric, p) in enumerate(resolved)])


def _recall_of(state) -> float | None:
    return state.recall


def _n_rows(item) -> int:
    if isinstance(item, CacheLayer):
        if item.ids is not None:
            return len(item.ids)
        from embeddings_cache import Cache

        with Cache(item.path) as c:
            return c.n_samples(item.model)
    if callable(item):
        raise RepalignError("a callable layer source needs n_samples=...; pass the number of rows")
    shape = np.shape(item)
    if len(shape) != 2:
        raise RepalignError(f"a layer has shape {shape}; pass (N, D) matrices, CacheLayer references or callables")
    return int(shape[0])


def align_layers_distributed(
    client,
    layers_a: Sequence,
    layers_b: Sequence,
    metrics: Sequence[str] | str = ("mknn",),
    names_a=None,
    names_b=None,
    normalize="l2",
    clip_quantile=None,
    *,
    knn: str = "exact",
    knn_options: dict | None = None,
    block_rows: int | None = None,
    n_samples: int | None = None,
    search_block: int | None = None,
    **params,
):
    """:func:`repalign.metrics.align_layers_multi` with the per-layer states built on Dask workers.

    client: a ``distributed.Client``. layers_a, layers_b: per-layer (N, D) arrays,
    :class:`CacheLayer` references (read on the worker), or callables returning the array.
    The engine's :func:`repalign.metrics.engine.layer_state` runs once per layer on a worker (with
    the neighbour backend ``knn`` / ``knn_options`` / ``block_rows``) and its states stay there;
    each layer of A is then scored against every layer of B on one worker. Same numbers as
    the single-process engine. Returns one LayerAlignment per metric (approximate neighbours:
    ``recall`` set, params include ``knn``).

    search_block: instead of one task per layer, spread each layer's exact neighbour search over
    all workers (:class:`DaskCandidateSearch` with blocks of ``search_block`` rows; for a few
    layers of very many samples). The layers are then read here in blocks of ``block_rows``
    (default ``search_block``) and the finished states are sent to the workers that score them.
    """
    from repalign.metrics import LayerAlignment
    from repalign.metrics.engine import check_backend, resolve_metrics
    from repalign.metrics.prepare import check_prepare_options

    _dask()
    check_prepare_options(normalize, clip_quantile)
    knn_options = check_backend(knn, block_rows, knn_options)
    items_a, items_b = list(layers_a), list(layers_b)
    if not items_a or not items_b:
        raise RepalignError("layers_a and layers_b must each hold at least one layer")
    names_a = [str(x) for x in names_a] if names_a is not None else [str(i) for i in range(len(items_a))]
    names_b = [str(x) for x in names_b] if names_b is not None else [str(i) for i in range(len(items_b))]
    if len(names_a) != len(items_a) or len(names_b) != len(items_b):
        raise RepalignError("pass one name per layer in names_a and names_b")
    n_samples = _n_rows(items_a[0]) if n_samples is None else int(n_samples)
    resolved = resolve_metrics(metrics, n_samples, params)
    if search_block is not None:
        if knn != "exact":
            raise RepalignError("search_block splits the exact neighbour search; use knn='exact' with it")
        search = DaskCandidateSearch(client, search_block)
        block_rows = block_rows or search.block
    options = dict(normalize=normalize, clip_quantile=clip_quantile, knn=knn, knn_options=knn_options,
                   block_rows=block_rows, n_samples=n_samples)

    def state(item, name, label):
        if search_block is None:
            return client.submit(_state_on_worker, item, resolved, name, label, options, pure=False)
        from repalign.metrics.engine import layer_state

        built = layer_state(_layer_source(item, block_rows), resolved, name=name, label=label, knn_search=search, **options)
        return client.scatter(built)

    futures_b: dict[int, Any] = {}
    for item, name in zip(items_b, names_b):
        if id(item) not in futures_b:
            futures_b[id(item)] = state(item, name, f"layer {name!r} of layers_b")
    states_b = [futures_b[id(item)] for item in items_b]
    rows, futures_a = [], []
    for item, name in zip(items_a, names_a):
        fa = futures_b.get(id(item)) or state(item, name, f"layer {name!r} of layers_a")
        futures_a.append(fa)
        rows.append(client.submit(_score_row, fa, states_b, resolved, pure=False))
    try:
        scores = np.stack(client.gather(rows), axis=1)  # (M, La, Lb)
        recall = {}
        if knn != "exact":
            recalls = client.gather([client.submit(_recall_of, f, pure=False) for f in futures_a + states_b])
            recall = {**{("a", x): r for x, r in zip(names_a, recalls[:len(names_a)])},
                      **{("b", x): r for x, r in zip(names_b, recalls[len(names_a):])}}
    finally:
        client.cancel(list(futures_b.values()) + futures_a + rows)
    out = []
    for m, (metric, p) in enumerate(resolved):
        params_m = {**p, "normalize": normalize, "clip_quantile": clip_quantile}
        approximate = knn != "exact" and metric.is_knn
        if approximate:
            params_m["knn"] = knn
        out.append(LayerAlignment(scores[m], list(names_a), list(names_b), metric.name, params_m, n_samples,
                                  recall=recall if approximate else None))
    return out


# ----------------------------------------------------------------------------- one layer across workers
class DaskCandidateSearch:
    """A candidate search (:data:`repalign.metrics.neighbors.CandidateSearch`) spread over Dask workers.

    The distinct rows are cut into B blocks of ``block`` rows and scattered to the workers once; each
    of the B(B+1)/2 row block × column block products above the diagonal is one task
    (:func:`repalign.metrics.neighbors.block_pair_topk`), and each row block's partial lists are
    merged by one more task (:func:`repalign.metrics.neighbors.merge_topk`). The lists it returns are
    only candidates: :func:`repalign.metrics.neighbors.build_knn_state` finishes them with float64
    index-order similarities, so the neighbour lists are those of the single-process search,
    whatever ``block`` and the number of workers.

    After a call: ``tasks`` (products run) and ``pids`` (worker processes that ran them).
    """

    def __init__(self, client, block: int = 2048):
        if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
            raise RepalignError(f"block={block!r} must be a positive whole number of rows, e.g. 8192")
        self.client = client
        self.block = int(block)
        self.tasks = 0
        self.pids: set[int] = set()

    def __call__(self, rows, ks: int) -> tuple[np.ndarray, np.ndarray]:
        from repalign.metrics.neighbors import rechunked_rows

        client = self.client
        starts, blocks = [], []
        for r0, X in rechunked_rows(rows, self.block):
            starts.append(r0)
            blocks.append(client.scatter(X))
        pairs = {}
        for i, (r0, Xr) in enumerate(zip(starts, blocks)):
            for j in range(i, len(blocks)):
                pairs[i, j] = client.submit(_pair_task, Xr, blocks[j], r0, starts[j], ks, rows.n, pure=False)
        merged = []
        for b in range(len(blocks)):
            parts = [(pairs[b, j], 0) for j in range(b, len(blocks))] + [(pairs[i, b], 1) for i in range(b + 1)]
            merged.append(client.submit(_merge_task, parts, ks, pure=False))
        try:
            results = client.gather(merged)
        finally:
            client.cancel(merged + list(pairs.values()) + blocks)
        self.tasks += len(pairs)
        self.pids.update(pid for r in results for pid in r[2])
        if not results:
            return np.empty((0, ks), dtype=np.int64), np.empty((0, ks))
        return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])


def _pair_task(Xr, Xc, r0, c0, ks, n):
    from repalign.metrics.neighbors import block_pair_topk

    return os.getpid(), block_pair_topk(Xr, Xc, r0, c0, ks, n)


def _merge_task(parts, ks):
    from repalign.metrics.neighbors import merge_topk

    idx, sim = merge_topk([result[1][side] for result, side in parts], ks)
    return idx, sim, {result[0] for result, _ in parts}


def distributed_knn_state(client, layer, k: int = 10, normalize="l2", clip_quantile=None, block: int = 2048,
                          name: str = "layer"):
    """Tie-aware neighbour lists of one layer with its search spread over the workers of ``client``.

    layer: an (N, D) array or a block source (a callable returning a fresh iterator of row blocks,
    e.g. ``CacheLayer.blocks``); the rows are read here, in blocks, and scattered once. The same
    :class:`repalign.metrics.neighbors.KnnState` as the in-memory and out-of-core searches
    (:func:`repalign.metrics.outofcore.blocked_knn_state` with a :class:`DaskCandidateSearch`).
    """
    from repalign.metrics.engine import row_blocks
    from repalign.metrics.outofcore import blocked_knn_state

    search = DaskCandidateSearch(client, block)
    source = row_blocks(layer, search.block)
    return blocked_knn_state(source, k, normalize, clip_quantile, search.block, name=name, search=search)
