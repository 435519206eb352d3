"""The one object through which a run reaches the sweep it belongs to.

`SweepJob.current()` reads Hydra's job config once (None outside a multirun); the run's stages
then ask it for the parent run, the default thread count, the skip rule, the pruner and how many
jobs share its GPU, and tell it how the job went: the job writes its own record into the sweep folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from cifar_sweep.sweeps.records import JobRecord, state_dir, write_record


def in_multirun(hydra_cfg) -> bool:
    """True for a job of a multirun, given Hydra's config (`HydraConfig.get()` or `config.hydra`)."""
    return str(OmegaConf.select(hydra_cfg, "mode")) == str(RunMode.MULTIRUN)


@dataclass(frozen=True)
class SweepJob:
    sweep_dir: Path
    job_num: int
    overrides: tuple[str, ...]
    output_dir: str
    tracking_uri: str
    parent_run_id: str | None
    default_threads: int | None  # this machine's cores shared by the jobs that run at once

    @property
    def sweep_id(self) -> str:
        return str(self.sweep_dir)

    @classmethod
    def current(cls, tracking_uri: str) -> "SweepJob | None":
        if not HydraConfig.initialized():
            return None
        hc = HydraConfig.get()
        if not in_multirun(hc):
            return None
        sweep_dir = Path(str(hc.sweep.dir))
        return cls(sweep_dir, int(hc.job.num), tuple(str(o) for o in hc.overrides.task), str(hc.runtime.output_dir),
                   tracking_uri, _parent_run_id(sweep_dir, tracking_uri), _default_threads(hc))

    def record(self, status: str, run_id: str | None = None, best_val_acc: float | None = None,
               error: str | None = None) -> None:
        best = best_val_acc if best_val_acc is None or best_val_acc == best_val_acc else None  # NaN: none
        write_record(self.sweep_dir, JobRecord(self.job_num, list(self.overrides), status, best, run_id, error,
                                               self.output_dir))

    def finished_run(self, experiment: str, identity, rerun_pruned: bool = False):
        """A FINISHED run of this very job (`finished_run`)."""
        return finished_run(self.tracking_uri, experiment, identity, rerun_pruned)

    def device_shared_by(self, device) -> int | None:
        """Jobs of this sweep holding a seat on this job's GPU now, this one included (the run's
        `device_shared_by` tag); None for a job that claimed none (a CPU run, sequential jobs, SLURM)."""
        from cifar_sweep.sweeps.gpu_slots import SLOTS_DIR, held_slot

        if str(device).split(":")[0] != "cuda":
            return None
        slot = held_slot(state_dir(self.sweep_dir) / SLOTS_DIR)
        return slot.shared_by() if slot is not None else None

    def pruner(self, run_id: str, settings, epochs: int):
        """The pruner `sweep.pruning` asks for (median, halving, hyperband), or None."""
        from cifar_sweep.sweeps.prune_hook import make_pruner

        return make_pruner(self.sweep_dir, self.tracking_uri, run_id, self.sweep_id, settings, epochs)


def finished_run(tracking_uri: str, experiment: str, identity, rerun_pruned: bool = False):
    """A FINISHED run of the job of this `RunIdentity`: same config hash, seed, device, requested
    threads, and setup (compiled or eager, resolved precision): `-m trainer.compile=false,true` runs
    both. The one skip rule, for a job and for the launcher's look before a relaunch."""
    from cifar_sweep.tracking.sweep_runs import find_finished_run

    return find_finished_run(tracking_uri, experiment, identity.config_hash, str(identity.seed),
                             identity.device, str(identity.threads), compile=identity.setup["compile"],
                             # `auto` is a request, not what a run computed in: matched by the hash alone
                             precision=None if identity.setup["precision"] == "auto" else identity.setup["precision"],
                             rerun_pruned=rerun_pruned)


def launcher_of(sweep_dir: str | os.PathLike) -> tuple[int | None, str | None]:
    """(pid, host) of the process that launched the sweep, as the callback wrote them."""
    try:
        parent = json.loads((state_dir(sweep_dir) / "parent.json").read_text())
    except (OSError, ValueError):
        return None, None
    pid = parent.get("launcher_pid")
    return (int(pid) if pid is not None else None), parent.get("launcher_host")


def _parent_run_id(sweep_dir: Path, tracking_uri: str) -> str | None:
    """The parent run, written by the callback into the sweep folder (any launcher can read it)."""
    try:
        parent = json.loads((state_dir(sweep_dir) / "parent.json").read_text())
    except (OSError, ValueError):
        return None
    return parent["run_id"] if parent.get("tracking_uri") == tracking_uri else None


def _default_threads(hc) -> int | None:
    """joblib: cores // n_jobs (n_jobs=-1 means one job per core); submitit: `cpus_per_task` when set
    (SLURM also pins the job to them). None: the run uses every core it has."""
    n_jobs = OmegaConf.select(hc, "launcher.n_jobs")
    if n_jobs is not None:
        from cifar_sweep.training.device import cpu_share

        n = int(n_jobs)
        if n < 0:  # joblib: -1 = all CPUs, -2 = all but one, ...
            n = max(1, (os.cpu_count() or 1) + 1 + n)
        return max(1, cpu_share() // max(n, 1))
    cpus = OmegaConf.select(hc, "launcher.cpus_per_task")
    return int(cpus) if cpus else None
