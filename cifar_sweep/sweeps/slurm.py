"""What a sweep on SLURM (`hydra/launcher=slurm`) needs from the cluster, and what its runs say of it.

Before anything is recorded, the launching process checks what would otherwise fail only inside
Hydra's submitit launcher, after the parent run exists, as `sbatch`'s own error in a traceback:
that `sbatch` is on the PATH and that the partition asked for is one of the cluster's. Each job's run
is tagged with its SLURM job id (`slurm_job_id`, as squeue and scontrol name it) and how often SLURM
requeued it (`slurm_restarts`), so a run in the UI leads to its job on the cluster and back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf

from cifar_sweep.errors import CifarSweepError

SLURM_LAUNCHER = "SlurmLauncher"  # the class name of hydra-submitit-launcher's SLURM launcher
SINFO_TIMEOUT_S = 30.0


class SlurmUnavailable(CifarSweepError, RuntimeError):
    """The sweep asks for SLURM and the cluster cannot take it: refused before anything runs."""


def uses_slurm(config: DictConfig) -> bool:
    target = str(OmegaConf.select(config, "hydra.launcher._target_") or "")
    return target.rsplit(".", 1)[-1] == SLURM_LAUNCHER


def check_slurm(config: DictConfig) -> None:
    """Refuse, in one line naming the fix, a SLURM sweep this machine cannot submit."""
    if not uses_slurm(config):
        return
    if shutil.which("sbatch") is None:
        raise SlurmUnavailable(
            "hydra/launcher=slurm needs SLURM's `sbatch` on the PATH and there is none here",
            hint="; launch from a node of the cluster (or put SLURM's bin folder on the PATH), or run the jobs "
                 "on this machine with hydra/launcher=local or hydra/launcher=parallel")
    try:
        res = subprocess.run(["sinfo", "--noheader", "--format=%R"], capture_output=True, text=True,
                             timeout=SINFO_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        res = subprocess.CompletedProcess([], 1, "", f"{type(err).__name__}: {err}")
    if res.returncode != 0:
        why = (res.stderr.strip().splitlines() or ["no answer"])[-1]
        raise SlurmUnavailable(f"SLURM's controller does not answer (sinfo: {why})",
                               hint="; check that slurmctld runs and SLURM_CONF points at its slurm.conf")
    partitions = sorted(set(res.stdout.split()))
    wanted = OmegaConf.select(config, "hydra.launcher.partition")
    if wanted is not None and str(wanted) not in partitions:
        raise SlurmUnavailable(
            f"hydra.launcher.partition={wanted} is not a partition of this cluster",
            hint=f"; set hydra.launcher.partition to one of: {', '.join(partitions) or '(none found)'}")


def slurm_tags(environ: Mapping[str, str] = os.environ) -> dict[str, str | None]:
    """The SLURM job this process runs in (all None outside SLURM): `<array job>_<task>` for a
    task of an array, as submitit submits a sweep, else the job id."""
    array, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{task}" if array and task else environ.get("SLURM_JOB_ID")
    return {"slurm_job_id": job, "slurm_restarts": environ.get("SLURM_RESTART_COUNT", "0") if job else None}
