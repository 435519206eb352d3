"""A grid sweep's job list, composed as the launcher would compose it, and the dry run that shows it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict, read_write


def grid_jobs(config: DictConfig) -> list[list[str]] | None:
    """The jobs a grid/basic sweep will launch, in Hydra's order; None for adaptive sweepers."""
    target = str(OmegaConf.select(config, "hydra.sweeper._target_") or "")
    if not target.endswith(("BasicSweeper", "GridSweeper")):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + [str(o) for o in config.hydra.overrides.task]
    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def job_identity(config: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """Compose one job as the launcher would and return what the skip rule compares."""
    from hydra.core.global_hydra import GlobalHydra

    from cifar_sweep.config.identity import config_hash
    from cifar_sweep.training.device import resolve_device

    loader = GlobalHydra.instance().config_loader()
    job_cfg = loader.load_sweep_config(config, list(overrides))
    previous_hydra = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(job_cfg)
    try:
        task_cfg = copy.deepcopy(job_cfg)  # as run_job does: the task's config is the one without `hydra`
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        task = OmegaConf.to_container(task_cfg, resolve=True)
    finally:
        HydraConfig.instance().cfg = previous_hydra
    return {
        "config_hash": config_hash(task),
        "seed": str(task.get("seed")),
        "device": str(resolve_device(task["trainer"]["device"])),
        "threads": str(task["trainer"].get("threads")),
        "force": bool((task.get("sweep") or {}).get("force")),
    }


def dry_run(config: DictConfig) -> str:
    """The text of a dry run: every job with its overrides and whether a relaunch would skip it."""
    jobs = grid_jobs(config)
    if jobs is None:
        return _adaptive_dry_run(config)
    from cifar_sweep.tracking.store import sqlite_path
    from cifar_sweep.tracking.sweep_runs import find_finished_run

    uri, experiment = str(config.tracking.uri), str(config.tracking.experiment)
    db = sqlite_path(uri)
    store_exists = db is None or Path(db).exists()
    to_run = 0
    rows = []
    for num, overrides in enumerate(jobs):
        ident = job_identity(config, overrides)
        previous = None
        if store_exists and not ident["force"]:
            previous = find_finished_run(uri, experiment, ident["config_hash"], ident["seed"], ident["device"],
                                         ident["threads"])
        if previous is None:
            to_run += 1
            what = "run"
        else:
            what = f"skip (FINISHED run {previous.run_id[:8]})"
        shown = [o for o in overrides if not o.startswith("sweep.dry_run=")]
        rows.append(f"  #{num:<3} {ident['config_hash']}  {what:<28} {' '.join(shown)}")
    head = [f"dry run: {len(jobs)} jobs, {to_run} to run, {len(jobs) - to_run} already FINISHED "
            f"(store {uri}, experiment {experiment}); nothing was run",
            f"  {'job':<4} {'config_hash':<12}  {'action':<28} overrides"]
    return "\n".join(head + rows)


def _adaptive_dry_run(config: DictConfig) -> str:
    sweeper = OmegaConf.to_container(config.hydra.sweeper, resolve=True)
    params = {**(sweeper.get("params") or {}),
              **{o.split("=", 1)[0]: o.split("=", 1)[1] for o in config.hydra.overrides.task
                 if "=" in o and not o.startswith("sweep.")}}
    lines = [f"dry run: {sweeper.get('_target_', '?').rsplit('.', 1)[-1]} would launch "
             f"{sweeper.get('n_trials', '?')} trials (study {sweeper.get('study_name')!r} in "
             f"{sweeper.get('storage')}); nothing was run"]
    return "\n".join(lines + [f"  {k}: {v}" for k, v in params.items()])
