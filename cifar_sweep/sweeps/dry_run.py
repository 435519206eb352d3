"""A sweep's jobs composed as the launcher would compose them: the check that refuses a sweep with a
job that could never start, and the dry run that shows the jobs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from cifar_sweep.sweeps.search_space import Search, parse_search


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


def compose_task(config: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """One job's config as the launcher composes it and as `train` checks it before any run starts;
    any error is the one that job would fail with."""
    from hydra.core.global_hydra import GlobalHydra

    from cifar_sweep.config import rules

    loader = GlobalHydra.instance().config_loader()
    job_cfg = loader.load_sweep_config(config, list(overrides))
    previous_hydra = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(job_cfg)
    try:
        task_cfg = copy.deepcopy(job_cfg)  # as run_job does: the task's config is the one without `hydra`
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        rules.keep_literal_names(task_cfg, overrides)
        rules.validate(task_cfg)
        return OmegaConf.to_container(task_cfg, resolve=True)
    finally:
        HydraConfig.instance().cfg = previous_hydra


def one_line(err: BaseException) -> str:
    """An error (and what caused it, as Hydra's composition errors keep the detail there) on one line."""
    texts = [str(err)] + ([str(err.__cause__)] if err.__cause__ is not None else [])
    texts = [t.split("Config search path:")[0] for t in texts]  # Hydra's list of every config source
    return " ".join(" ".join(t.split()) for t in texts if t.strip()) or type(err).__name__


def refused_jobs(config: DictConfig) -> list[str]:
    """The jobs of a sweep that would be refused before training, one line each (none: it may start).

    Grid: every job. Optuna: the search space, then trials that between them try every choice and
    both ends of every range (a bad key or value); a combination that fails only with another value
    is still told FAIL during the search and listed in the summary.
    """
    if str(OmegaConf.select(config, "hydra.sweeper._target_") or "").endswith("OptunaSweeper"):
        return _refused_trials(config)
    try:
        jobs = grid_jobs(config)
    except Exception:  # noqa: BLE001  a bad sweep override: the sweeper reports it, better
        return []
    return [] if jobs is None else _refused(config, jobs, "job")


def _refused_trials(config: DictConfig) -> list[str]:
    from cifar_sweep.sweeps.optuna_search import DEFAULT_STUDY_NAME, stored_search_conflict

    try:
        search = config_search(config)
    except Exception as err:  # noqa: BLE001  the message is what the user needs
        return [f"search space: {one_line(err)}"]
    template = str(OmegaConf.select(config, "hydra.sweeper.study_name") or DEFAULT_STUDY_NAME)
    conflict = stored_search_conflict(template, OmegaConf.select(config, "hydra.sweeper.storage"), search)
    return [conflict] if conflict else _refused(config, search.probes(), "trial")


def _refused(config: DictConfig, jobs: list[list[str]], label: str) -> list[str]:
    refused = []
    for num, overrides in enumerate(jobs):
        try:
            compose_task(config, overrides)
        except Exception as err:  # noqa: BLE001
            shown = f"#{num} " if label == "job" else ""
            refused.append(f"{label} {shown}{' '.join(overrides)}: {one_line(err)}")
    return refused


def config_search(config: DictConfig) -> Search:
    """The Optuna search the sweeper of `config` will run (its params and the command line's sweeps)."""
    from hydra.core.global_hydra import GlobalHydra

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    return parse_search({str(k): str(v) for k, v in params.items()}, list(config.hydra.overrides.task),
                        GlobalHydra.instance().config_loader())


def job_identity(config: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """Compose one job as the launcher would and return what the skip rule compares."""
    from cifar_sweep.config.identity import config_hash
    from cifar_sweep.training.device import resolve_device

    task = compose_task(config, overrides)
    return {
        "config_hash": config_hash(task),
        "seed": str(task.get("seed")),
        "device": str(resolve_device(task["trainer"]["device"])),
        "threads": str(task["trainer"].get("threads")),
        "force": bool((task.get("sweep") or {}).get("force")),
        "rerun_pruned": bool((task.get("sweep") or {}).get("rerun_pruned")),
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
    to_run = refused = 0
    rows = []
    for num, overrides in enumerate(jobs):
        shown = [o for o in overrides if not o.startswith("sweep.dry_run=")]
        try:
            ident = job_identity(config, overrides)
        except Exception as err:  # noqa: BLE001  shown with its job: the real launch refuses the sweep
            refused += 1
            rows.append(f"  #{num:<3} {'-':<12}  refused: {one_line(err)[:200]}  {' '.join(shown)}")
            continue
        previous = None
        if store_exists and not ident["force"]:
            previous = find_finished_run(uri, experiment, ident["config_hash"], ident["seed"], ident["device"],
                                         ident["threads"], rerun_pruned=ident["rerun_pruned"])
        if previous is None:
            to_run += 1
            what = "run"
        else:
            what = f"skip (FINISHED run {previous.run_id[:8]})"
        rows.append(f"  #{num:<3} {ident['config_hash']}  {what:<28} {' '.join(shown)}")
    head = [f"dry run: {len(jobs)} jobs, {to_run} to run, {len(jobs) - to_run - refused} already FINISHED"
            + (f", {refused} refused (the sweep would not start)" if refused else "")
            + f" (store {uri}, experiment {experiment}); nothing was run",
            f"  {'job':<4} {'config_hash':<12}  {'action':<28} overrides"]
    return "\n".join(head + rows)


def _adaptive_dry_run(config: DictConfig) -> str:
    sweeper = OmegaConf.to_container(config.hydra.sweeper, resolve=True)
    params = {**(sweeper.get("params") or {}),
              **{o.split("=", 1)[0]: o.split("=", 1)[1] for o in config.hydra.overrides.task
                 if "=" in o and not o.startswith("sweep.")}}
    study = str(sweeper.get("study_name"))
    if str(sweeper.get("_target_", "")).endswith("OptunaSweeper"):
        from cifar_sweep.sweeps.optuna_search import study_name

        study = study_name(study, config_search(config))
    lines = [f"dry run: {sweeper.get('_target_', '?').rsplit('.', 1)[-1]} would launch "
             f"{sweeper.get('n_trials', '?')} trials (study {study!r} in "
             f"{sweeper.get('storage')}); nothing was run"]
    return "\n".join(lines + [f"  {k}: {v}" for k, v in params.items()] + [
        f"  refused: {line}" for line in refused_jobs(config)])
