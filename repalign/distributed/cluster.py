"""Dask clusters: the ``--cluster`` specs and the client's lifecycle (optional: ``pip install 'repalign[dask]'``).

- ``local:N``           a LocalCluster of N worker processes, one thread each, on this machine;
- ``tcp://HOST:PORT``   an existing scheduler (``dask scheduler`` + ``dask worker`` started by hand);
- ``slurm:CONFIG.yaml`` a dask-jobqueue SLURMCluster whose keyword arguments are the YAML mapping
  (plus ``jobs: N``, the number of jobs to start, and ``start_timeout: S``, the seconds to wait for
  the first job to start); see docs/scaling.md.

:func:`parse_cluster` validates a spec before any work; :func:`open_client` starts (or connects
to) the cluster with bounded waits and shuts down what it started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from repalign.errors import RepalignError
from repalign.progress import progress

CLUSTER_FORMS = "local:N (N worker processes here), tcp://HOST:PORT (a running scheduler) or slurm:CONFIG.yaml (dask-jobqueue)"

# Keyword arguments of dask_jobqueue.SLURMCluster accepted in a slurm:CONFIG.yaml, plus "jobs".
SLURM_KEYS = frozenset({
    "cores", "memory", "processes", "queue", "account", "walltime", "job_cpu", "job_mem", "interface",
    "death_timeout", "local_directory", "worker_extra_args", "job_extra_directives", "job_script_prologue",
    "job_directives_skip", "log_directory", "shebang", "python", "job_name", "nanny", "protocol",
    "scheduler_options", "name", "silence_logs", "dashboard_address", "host", "shared_temp_directory",
})
SLURM_REQUIRED = ("cores", "memory")
# Seconds to wait for the first worker (tcp) or SLURM job to start.
WORKER_TIMEOUT_S = 600
# Seconds every worker may stay paused at Dask's memory limit, with work pending, before the run fails:
# a paused worker takes no task, so without this bound the run would wait forever.
PAUSED_TIMEOUT_S = 120


def connect_timeout_s() -> float:
    """Seconds to wait for a scheduler (or the SLURM commands) to answer: Dask's own setting
    ``distributed.comm.timeouts.connect`` (30 s unless configured, e.g. with the environment variable
    ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=60s``), so one setting bounds every connection."""
    import dask
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="seconds"))


def dask_distributed():
    """The ``distributed`` package, or a one-line error saying how to install it (an optional extra)."""
    try:
        import distributed  # the optional dask extra
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
    import yaml  # part of the optional dask extra

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
    :func:`connect_timeout_s`; a scheduler without workers, or SLURM jobs that never start, after
    :data:`WORKER_TIMEOUT_S` (SLURM: the config's ``start_timeout``), each with a one-line error.
    """
    distributed = dask_distributed()
    if isinstance(cluster, distributed.Client):
        yield cluster
        return
    spec = cluster if isinstance(cluster, ClusterSpec) else parse_cluster(cluster)
    if spec.kind == "tcp":
        timeout = connect_timeout_s()
        try:
            client = distributed.Client(spec.address, timeout=f"{timeout:g}s")
        except OSError as exc:
            raise RepalignError(f"cannot reach the Dask scheduler at {spec.address} within {timeout:g} s "
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
        from dask_jobqueue import SLURMCluster  # optional: the dask extra
    except ImportError:
        raise RepalignError("slurm clusters need dask-jobqueue: pip install 'repalign[dask]'") from None
    assert spec.slurm is not None  # every slurm spec carries its settings (parse_cluster)
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


def gather_watched(client, futures: list, on_done=None, poll_s: float = 5.0, desc: str = "Dask tasks",
                   quiet: bool = False) -> list:
    """``client.gather(futures)``, with three differences: the first failed task raises at once (or
    ``on_done(future)`` is called for each finished one, in the order they finish), a one-line
    RepalignError when every worker has stayed paused at its memory limit for
    :data:`PAUSED_TIMEOUT_S` seconds while results are pending (paused workers take no task), and a
    progress bar of the finished tasks (``desc``; :mod:`repalign.progress`, none when ``quiet``)."""
    distributed = dask_distributed()
    paused_since = None
    pending = list(futures)
    with progress(total=len(pending), desc=desc, unit="task", quiet=quiet) as bar:
        while pending:
            pending, paused_since = _wait_some(client, distributed, pending, on_done, poll_s, paused_since)
            bar.update(len(futures) - len(pending) - bar.n)
    return client.gather(futures)


def _wait_some(client, distributed, pending: list, on_done, poll_s: float, paused_since: float | None):
    """One wait of :func:`gather_watched`: the tasks still pending, and since when every worker is paused."""
    try:
        distributed.wait(pending, timeout=poll_s, return_when="FIRST_COMPLETED")
    except TimeoutError:
        pass
    finished = [f.done() for f in pending]
    if any(finished):
        for f in (f for f, done in zip(pending, finished) if done):
            if on_done is not None:
                on_done(f)
            elif f.status == "error":
                f.result()  # raises the task's exception
        return [f for f, done in zip(pending, finished) if not done], None
    paused = paused_workers(client)
    paused_since = None if paused is None else (paused_since or time.monotonic())
    if paused_since is not None and time.monotonic() - paused_since >= PAUSED_TIMEOUT_S:
        raise RepalignError(f"every Dask worker has been paused for {PAUSED_TIMEOUT_S} s at its memory limit "
                            f"({paused}); give each worker more memory ('memory' in a slurm config, fewer "
                            f"processes per job) or use smaller shards")
    return pending, paused_since


def paused_workers(client) -> str | None:
    """None unless every worker is paused (Dask's memory pause); then their memory use against their limit."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    if not workers or any(w.get("status") != "paused" for w in workers.values()):
        return None
    mib = 2.0 ** 20
    return ", ".join(f"{(w.get('metrics') or {}).get('memory', 0) / mib:.0f} of {(w.get('memory_limit') or 0) / mib:.0f} MiB"
                     for w in workers.values())


def check_slurm_queue(queue: str | None) -> None:
    """Refuse a partition that ``sinfo`` does not list (sbatch would fail in the background and the
    jobs never appear), and say so when the SLURM commands are missing."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        raise RepalignError("slurm clusters need the SLURM commands (sbatch, sinfo) on PATH; run on a SLURM login node")
    if queue is None:
        return
    timeout = connect_timeout_s()
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RepalignError(f"sinfo did not answer within {timeout:g} s; is slurmctld running?") from None
    if out.returncode != 0:
        raise RepalignError(f"sinfo failed ({(out.stderr.strip().splitlines() or ['no output'])[0]}); is slurmctld running?")
    partitions = sorted(set(out.stdout.split()))
    if queue not in partitions:
        raise RepalignError(f"SLURM partition {queue!r} does not exist; the partitions are {', '.join(partitions) or 'none'}: "
                            f"set queue in the slurm config to one of them")


def _pending_reason(cluster) -> str:
    """What squeue says about the cluster's jobs, for the error when none starts."""
    ids = [str(j.job_id) for j in getattr(cluster, "workers", {}).values() if getattr(j, "job_id", None)]
    if not ids or shutil.which("squeue") is None:
        return "no job was accepted by sbatch" if not ids else f"jobs {','.join(ids)}"
    try:
        out = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T %r"], capture_output=True, text=True,
                             timeout=connect_timeout_s())
    except subprocess.TimeoutExpired:
        return f"jobs {','.join(ids)}; squeue did not answer"
    states = "; ".join(line.strip() for line in out.stdout.splitlines() if line.strip())
    return f"squeue: {states}" if states else f"jobs {','.join(ids)} are no longer queued"
