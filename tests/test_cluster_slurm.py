"""``--cluster slurm:CONFIG.yaml`` on a real single-node SLURM started here.

munged, slurmctld and slurmd (Debian ``munge`` and ``slurm-wlm``, installed by ``.ci/run``) run in
the foreground in their own process groups, with a minimal ``slurm.conf`` written by the fixture
(one node ``localhost`` at 127.0.0.1 with 2 CPUs, one partition ``debug``, private ports, state and
munge socket in a temporary folder); teardown kills them. Dask workers are SLURM jobs and talk to
the scheduler over the loopback interface only. The test skips, saying why, only when the daemons
are not installed or cannot run (they need root).
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("dask_jobqueue")

from cluster_helpers import assert_same_cache, free_port, random_fasta, run_cli, start_process, stop_process, subprocess_env  # noqa: E402

from repalign.compare import compare_models  # noqa: E402
from repalign.distributed import shard_folder  # noqa: E402

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue")

SLURM_CONF = """\
ClusterName=repalign-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={folder}/munge.sock
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _which(name):
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:" + os.environ.get("PATH", ""))


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """SLURM_CONF of a running single-node SLURM; the daemons are stopped at the end."""
    missing = [d for d in DAEMONS if _which(d) is None]
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge (.ci/run does)")
    if os.geteuid() != 0:
        pytest.skip("slurmd must run as root to start jobs; run the suite as root (CI does)")
    folder = tmp_path_factory.mktemp("slurm")
    os.chmod(folder, 0o755)
    for sub in ("state", "spool", "logs"):
        (folder / sub).mkdir()
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    conf = folder / "slurm.conf"
    conf.write_text(SLURM_CONF.format(folder=folder, ctld_port=free_port(), d_port=free_port()))
    env = {"SLURM_CONF": str(conf)}
    os.environ.update(env)  # sbatch, sinfo, squeue of this process and its children use this SLURM
    log = open(folder / "daemons.log", "w")
    procs = []
    try:
        procs.append(start_process([_which("munged"), "-F", "--force", f"--socket={folder}/munge.sock", f"--key-file={key}",
                             f"--pid-file={folder}/munged.pid", f"--log-file={folder}/munged.log",
                             f"--seed-file={folder}/munge.seed"], log))
        deadline = time.time() + 30
        while not (folder / "munge.sock").exists() and time.time() < deadline:
            time.sleep(0.1)
        procs.append(start_process([_which("slurmctld"), "-D", "-i", "-f", str(conf)], log))
        procs.append(start_process([_which("slurmd"), "-D", "-N", "localhost", "-f", str(conf)], log))
        deadline = time.time() + 60
        state = ""
        while time.time() < deadline:
            out = subprocess.run([_which("sinfo"), "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
            state = out.stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        if state != "idle":
            logs = "".join((folder / f).read_text()[-2000:] for f in ("slurmctld.log", "slurmd.log") if (folder / f).exists())
            pytest.fail(f"the single-node SLURM did not come up (node state {state!r}):\n{logs}")
        yield folder
    finally:
        subprocess.run([_which("scancel"), "--user", "root"], capture_output=True, timeout=30) if _which("scancel") else None
        for p in reversed(procs):
            stop_process(p)
        log.close()
        os.environ.pop("SLURM_CONF", None)


def slurm_config(folder, name="slurm.yaml", **extra):
    # 2 GB: a worker holding torch and a model uses ~0.8 GB, and Dask pauses a worker at 80% of its limit
    settings = {"cores": 1, "memory": "2GB", "processes": 1, "jobs": 2, "queue": "debug", "walltime": "00:30:00",
                "interface": "lo", "death_timeout": 60, "local_directory": str(folder / "spool"),
                "log_directory": str(folder / "logs"), "start_timeout": 120,
                "job_script_prologue": ["export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1"], **extra}
    import yaml

    path = folder / name
    path.write_text(yaml.safe_dump(settings))
    return path


def _worker_processes(folder):
    """Dask worker processes (spawned by a nanny) inside jobs of this SLURM: their environment names
    its slurm.conf and a job id (slurmstepd detaches, so they are not children of slurmd)."""
    import psutil

    conf = str(folder / "slurm.conf")
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "spawn_main" not in " ".join(proc.info["cmdline"] or []):
                continue
            env = proc.environ()
        except psutil.Error:
            continue
        if env.get("SLURM_CONF") == conf and env.get("SLURM_JOB_ID"):
            found.append(proc.pid)
    return found


@pytest.mark.slow
def test_slurm_extraction_with_a_worker_killed_equals_single_process(slurm, tiny_esm2, esm_inputs, tmp_path):
    records, ref = esm_inputs
    fasta = ref.parent / "in.fasta"
    out = tmp_path / "slurm.h5"
    conf = slurm_config(slurm, "extract.yaml")
    env = dict(subprocess_env(), SLURM_CONF=os.environ["SLURM_CONF"])
    proc = subprocess.Popen([sys.executable, "-m", "repalign", "extract", str(fasta), "--model", f"hf:{tiny_esm2}",
                             "-o", str(out), "--layers", "all", "--batch-tokens", "160", "--cluster", f"slurm:{conf}",
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    killed = None
    try:
        deadline = time.time() + 240
        folder = shard_folder(out)
        while time.time() < deadline and proc.poll() is None:
            if folder.exists() and any(folder.glob("*.h5.parts/*.h5")):  # shards are being written
                workers = _worker_processes(slurm)
                if workers:
                    killed = workers[0]
                    os.kill(killed, signal.SIGKILL)
                    break
            time.sleep(0.01)
        stdout, stderr = proc.communicate(timeout=400)
    finally:
        stop_process(proc)
    assert proc.returncode == 0, stderr
    assert killed is not None, "the extraction ended before a worker could be killed"
    assert f"stored {len(records)} samples" in stdout
    assert_same_cache(out, ref, exact=False)


@pytest.mark.slow
def test_slurm_compare_equals_single_process(slurm, layer_cache, tmp_path):
    import pandas as pd

    path, _ = layer_cache
    table = tmp_path / "t.csv"
    conf = slurm_config(slurm, "compare.yaml")
    done = run_cli("compare", str(path), "--a", "A", "--b", "B", "--metric", "mknn", "cka", "--k", "5",
                "--cluster", f"slurm:{conf}", "-o", str(table), timeout=400)
    assert done.returncode == 0, done.stderr
    got = pd.read_csv(table).sort_values(["metric", "layer_a", "layer_b"]).reset_index(drop=True)
    ref = compare_models(path, "A", "B", ["mknn", "cka"], k=5).table
    ref = ref.sort_values(["metric", "layer_a", "layer_b"]).reset_index(drop=True)
    assert got[["metric", "layer_a", "layer_b"]].values.tolist() == ref[["metric", "layer_a", "layer_b"]].values.tolist()
    knn = got["metric"] == "mknn"
    np.testing.assert_array_equal(got["score"][knn].to_numpy(), ref["score"][knn].to_numpy())
    np.testing.assert_allclose(got["score"][~knn].to_numpy(), ref["score"][~knn].to_numpy(), rtol=1e-6)


@pytest.mark.slow
def test_slurm_unknown_partition_and_pending_jobs_are_one_line_errors(slurm, tiny_esm2, tmp_path):
    fasta = random_fasta(tmp_path / "in.fasta", 4)
    out = tmp_path / "never.h5"
    bad = slurm_config(slurm, "bad.yaml", queue="gpu-a100")
    done = run_cli("extract", str(fasta), "--model", f"hf:{tiny_esm2}", "-o", str(out), "--cluster", f"slurm:{bad}",
                "--quiet", timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "SLURM partition 'gpu-a100' does not exist" in lines[0] and "debug" in lines[0]
    assert not out.exists() and not shard_folder(out).exists()
    # jobs that cannot start for an hour: the error comes after start_timeout (15 s) and names the reason
    pending = slurm_config(slurm, "pending.yaml", start_timeout=15, job_extra_directives=["--begin=now+3600"])
    done = run_cli("extract", str(fasta), "--model", f"hf:{tiny_esm2}", "-o", str(out), "--cluster", f"slurm:{pending}",
                "--quiet", timeout=180)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "no SLURM job started within 15 s" in lines[0] and "PENDING" in lines[0] and "BeginTime" in lines[0]
    assert not out.exists() and not shard_folder(out).exists()
    time.sleep(1)
    queued = subprocess.run([_which("squeue"), "-h"], capture_output=True, text=True, timeout=30).stdout.strip()
    assert queued == "", f"jobs left queued: {queued}"  # the cluster cancelled its jobs on the way out
