"""A relaunch with nothing left to run: every job of a grid sweep already has its FINISHED run.

Such a launch would only skip each job and leave a new parent run with no child of its own beside
the sweep that did the work. The launcher looks first, with the jobs' own skip rule
(`job.finished_run`), and says so in one line instead; no parent run, no job folder is made. The
look stops at the first job that would run, so a sweep with work to do pays one store query for it.
Adaptive sweeps (Optuna) ask for their trials as they go: they always start.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from cifar_sweep.sweeps.dry_run import compose_task, grid_jobs


def finished_runs(config: DictConfig) -> list[str] | None:
    """The FINISHED run id of every job of this grid sweep, or None as soon as one job would run."""
    from cifar_sweep.sweeps.job import finished_run
    from cifar_sweep.tracking.store import sqlite_path

    try:
        jobs = grid_jobs(config)
    except Exception:  # noqa: BLE001  a bad sweep override: the sweeper reports it, better
        return None
    db = sqlite_path(str(config.tracking.uri))
    if not jobs or (db is not None and not db.exists()):
        return None
    run_ids = []
    for overrides in jobs:
        identity, task = _identity(config, overrides)
        sweep = task.get("sweep") or {}
        if sweep.get("force"):
            return None
        previous = finished_run(str(task["tracking"]["uri"]), str(task["tracking"]["experiment"]), identity,
                                rerun_pruned=bool(sweep.get("rerun_pruned")))
        if previous is None:
            return None
        run_ids.append(previous.run_id)
    return run_ids


def _identity(config: DictConfig, overrides: list[str]):
    """The job's `RunIdentity` as its run computes it (device resolved, precision as requested)."""
    import torch

    from cifar_sweep.training.device import resolve_device
    from cifar_sweep.training.resume import RunIdentity

    task = compose_task(config, overrides)
    name = str(task["trainer"]["device"]).strip().lower()
    # `auto` on a GPU machine is cuda:0 in every job (a parallel job sees only its own GPU), asked
    # without `resolve_device`'s current_device(), which would start CUDA in the launching process.
    device = "cuda:0" if name == "auto" and torch.cuda.is_available() else str(resolve_device(name))
    return RunIdentity.of(task, device, Path(task["paths"]["runs"]), str(task["tracking"]["experiment"])), task


def nothing_to_run_line(run_ids: list[str]) -> str:
    shown = ", ".join(r[:8] for r in run_ids[:5]) + (f" and {len(run_ids) - 5} more" if len(run_ids) > 5 else "")
    return (f"cifar_sweep: nothing to run: each of the {len(run_ids)} jobs of this sweep already has a FINISHED "
            f"run ({shown}); no parent run was made. sweep.force=true runs them again "
            "(sweep.rerun_pruned=true: only those a pruner stopped early)")
