"""A real one-node SLURM cluster for the tests (and benchmarks/bench_shared_store.py): a fixture plugin.

Debian's `slurm-wlm` and `munge` (`scripts/install.sh test` installs them) run here without
systemd or root-owned state: everything lives in a scratch folder. `munged` gets its own key and
socket there, `slurmctld -D` and `slurmd -D -N localhost` a slurm.conf that points at that socket,
listen on free loopback ports and keep their state, spool, logs and pids in the folder. Clients
(sbatch, squeue, scontrol, and submitit through Hydra's launcher) find the cluster through
`SLURM_CONF`, which the fixture sets for the test session's processes while the cluster is up.

The cluster: one node `localhost` (127.0.0.1) with 2 CPUs in one default partition `debug`;
`select/cons_tres` hands out single CPUs (two one-CPU jobs run at once); `proctrack/linuxproc` and
`task/none` need no cgroups; no accounting, so no `sacct`: submitit polls `sacct` for its jobs'
states, and a small `sacct` in the cluster's bin folder (first on the PATH while the cluster runs)
answers from `squeue`, which keeps a finished job for `MinJobAge` seconds. A requeued job normally
waits out the job credential's lifetime (`AuthInfo=cred_expire`, 120 s) before it may start again;
10 s here.

Everything is stopped by pid in the fixture's teardown; without the packages the tests that ask for
the cluster are skipped, saying what to install.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PARTITION = "debug"
NODE = "localhost"
CPUS = 2
REAL_MEMORY_MB = 4096  # what jobs may ask for (--mem); memory is not a consumable resource here
REQUEUE_DELAY_S = 10   # cred_expire: how long a requeued job waits before it may start again
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def missing_programs() -> list[str]:
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    return [name for name in PROGRAMS if shutil.which(name, path=path) is None]


def _which(name: str) -> str:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN])) or name


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SLURM_CONF = """\
ClusterName=cifarsweep
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser={user}
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire={requeue_delay}
StateSaveLocation={top}/state
SlurmdSpoolDir={top}/spool/%n
SlurmctldPidFile={top}/slurmctld.pid
SlurmdPidFile={top}/slurmd.pid
SlurmctldLogFile={top}/slurmctld.log
SlurmdLogFile={top}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
MinJobAge=600
InactiveLimit=0
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


# submitit runs `sacct -o JobID,State,NodeList --parsable2 -j IDS`; squeue prints the same columns.
SACCT = """\
#!/bin/sh
jobs=""
while [ $# -gt 0 ]; do case "$1" in -j|--jobs) jobs="$2"; shift 2 ;; *) shift ;; esac; done
echo "JobID|State|NodeList"
exec squeue --noheader --states=all ${jobs:+--jobs=$jobs} --format='%i|%T|%N'
"""


@dataclass
class SlurmCluster:
    top: Path
    conf: Path
    partition: str = PARTITION
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs: SLURM_CONF, and the cluster's `sacct` first on the PATH."""
        return {"SLURM_CONF": str(self.conf), "PATH": f"{self.top / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([_which(cmd[0]), *cmd[1:]], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env})

    def node_state(self) -> str:
        res = self.run("sinfo", "-h", "-N", "-o", "%T")
        return res.stdout.strip() if res.returncode == 0 else f"sinfo failed: {res.stderr.strip()}"

    def queue(self) -> list[str]:
        """squeue's lines for the jobs in the cluster now: 'jobid state name'."""
        res = self.run("squeue", "-h", "-o", "%i %T %j")
        return [line for line in res.stdout.splitlines() if line.strip()] if res.returncode == 0 else []

    def logs(self) -> str:
        parts = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            path = self.top / name
            if path.exists():
                parts.append(f"--- {name} (tail)\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    def wait_idle_queue(self, timeout: float = 60) -> None:
        """Wait until no job is left in the queue (a test's jobs do not leak into the next test)."""
        deadline = time.monotonic() + timeout
        while self.queue() and time.monotonic() < deadline:
            time.sleep(1)


def _start(name: str, cmd: list[str], top: Path, env: dict[str, str]) -> subprocess.Popen:
    log = open(top / f"{name}.out", "w")  # noqa: SIM115  the daemon's own stdout/stderr, kept open with it
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=top, start_new_session=True)


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _kill_job_processes(top: Path) -> None:
    """Job steps slurmd started (slurmstepd and its children) that outlived slurmd: by their pids."""
    import psutil

    for proc in psutil.process_iter(["pid", "name", "environ"]):
        try:
            env = proc.info["environ"] or {}
        except (psutil.Error, KeyError):
            continue
        if proc.info["name"] == "slurmstepd" or env.get("SLURM_CONF") == str(top / "slurm.conf"):
            if env.get("SLURM_JOB_ID") or proc.info["name"] == "slurmstepd":
                with contextlib.suppress(psutil.Error):
                    proc.kill()


@contextlib.contextmanager
def slurm_cluster(ready_timeout: float = 30.0) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd in a scratch folder; yield the cluster; stop them by pid."""
    missing = missing_programs()
    if missing:
        raise FileNotFoundError(f"SLURM is not installed (missing {', '.join(missing)}); "
                                "apt-get install slurm-wlm munge (scripts/install.sh test does it)")
    top = Path(tempfile.mkdtemp(prefix="cifar_sweep_slurm_"))
    for sub in ("state", "spool", "munge", "bin"):
        (top / sub).mkdir(mode=0o700)
    (top / "bin" / "sacct").write_text(SACCT)
    (top / "bin" / "sacct").chmod(0o755)
    key = top / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    socket_path = top / "munge" / "munge.socket.2"
    conf = top / "slurm.conf"
    conf.write_text(SLURM_CONF.format(
        ctld_port=_free_port(), d_port=_free_port(), user=os.environ.get("USER") or "root",
        munge_socket=socket_path, requeue_delay=REQUEUE_DELAY_S, top=top, node=NODE, cpus=CPUS,
        memory=REAL_MEMORY_MB, partition=PARTITION))
    cluster = SlurmCluster(top, conf)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        cluster.procs["munged"] = _start("munged", [
            _which("munged"), "-F", "--force", f"--key-file={key}", f"--socket={socket_path}",
            f"--pid-file={top / 'munge' / 'munged.pid'}", f"--log-file={top / 'munged.log'}",
            f"--seed-file={top / 'munge' / 'munged.seed'}"], top, env)
        deadline = time.monotonic() + ready_timeout
        while not socket_path.exists():
            if time.monotonic() > deadline or cluster.procs["munged"].poll() is not None:
                raise RuntimeError("munged did not start:\n" + (top / "munged.out").read_text() + cluster.logs())
            time.sleep(0.1)
        cluster.procs["slurmctld"] = _start("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(conf)], top, env)
        cluster.procs["slurmd"] = _start("slurmd", [_which("slurmd"), "-D", "-N", NODE, "-f", str(conf)], top, env)
        state = ""
        while time.monotonic() < deadline:
            for name, proc in cluster.procs.items():
                if proc.poll() is not None:
                    out = (top / f"{name}.out").read_text(errors="replace")
                    raise RuntimeError(f"{name} exited ({proc.returncode}):\n{out}\n{cluster.logs()}")
            state = cluster.node_state()
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the SLURM node is not idle after {ready_timeout:.0f} s ({state}):\n{cluster.logs()}")
        yield cluster
    finally:
        # Jobs first (they would be requeued when the node comes back), then the daemons, by pid.
        if "slurmctld" in cluster.procs and cluster.procs["slurmctld"].poll() is None:
            with contextlib.suppress(Exception):
                cluster.run("scancel", "--full", "--user", os.environ.get("USER") or "root", timeout=10)
        for name in ("slurmd", "slurmctld", "munged"):
            if name in cluster.procs:
                _stop(cluster.procs[name])
        _kill_job_processes(top)
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm():
    """A started one-node SLURM cluster (SlurmCluster); its `env` (SLURM_CONF, PATH) is set in os.environ
    while it runs."""
    if os.name != "posix":
        pytest.skip("SLURM runs on Linux only")
    missing = missing_programs()
    if missing:
        pytest.skip(f"SLURM is not installed (no {', '.join(missing)}): apt-get install slurm-wlm munge "
                    "(scripts/install.sh test does it)")
    with slurm_cluster() as cluster:
        before = {key: os.environ.get(key) for key in cluster.env}
        os.environ.update(cluster.env)
        try:
            yield cluster
        finally:
            for key, value in before.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
