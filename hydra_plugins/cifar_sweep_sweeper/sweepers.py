"""cifar_sweep's Hydra sweepers: `grid` (the default) and `optuna` (a resumable search).

Thin adapters: the search itself (space, study, sampler, ask/tell loop) is `cifar_sweep.sweeps`'s;
these classes only take Hydra's config, launcher and job returns. Hydra imports every module of
`hydra_plugins` at start-up to find plugins, so this one stays light: optuna is imported only when
the optuna sweeper runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from cifar_sweep.sweeps import optuna_search
from cifar_sweep.sweeps.search_space import parse_search

log = logging.getLogger(__name__)

CALLBACK = "cifar_sweep.sweeps.callback.SweepCallback"


def _callback_configured(config: DictConfig) -> bool:
    callbacks = OmegaConf.select(config, "hydra.callbacks") or {}
    return any(str(c.get("_target_", "")) == CALLBACK for c in callbacks.values())


def _sweep_dir(config: DictConfig) -> Path:
    """The sweep's folder, made, with the composed config saved in it (as Hydra's sweepers do)."""
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")
    return sweep_dir


class GridSweeper(BasicSweeper):
    """Hydra's basic sweeper (cartesian product, optional batches) that never aborts a sweep.

    The basic sweeper re-raises the first failed job as soon as its batch returns: later batches
    never start, and `on_multirun_end` (where the summary, the parent run's status and the exit
    code live) is never reached. Here every batch runs; failures are reported by
    `cifar_sweep.sweeps.callback.SweepCallback`. Without that callback it raises the first error at the end,
    so a failure is never silent.
    """

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        params_conf = self._parse_config()
        params_conf.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        self.overrides = self.split_arguments(parser.parse_overrides(params_conf), self.max_batch_size)
        _sweep_dir(self.config)

        # Every batch is composed before the first job starts: a bad combination in the last batch
        # refuses the sweep up front instead of ending it halfway.
        batches = []
        while not self.is_done():
            batches.append(self.get_job_batch())
        for batch in batches:
            self.validate_batch_is_legal(batch)
        returns: List[Sequence[JobReturn]] = []
        initial_job_idx = 0
        for batch in batches:
            results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            initial_job_idx += len(batch)
            returns.append(results)
        failed = [r for batch in returns for r in batch if r.status != JobStatus.COMPLETED]
        if failed and not _callback_configured(self.config):
            _ = failed[0].return_value  # raises the job's error, as Hydra's basic sweeper does
        return returns


class OptunaSweeper(Sweeper):
    """Optuna ask/tell search over Hydra overrides; the study is persistent, so launches continue it."""

    def __init__(
        self,
        direction: str = "maximize",
        study_name: Optional[str] = None,
        storage: Optional[str] = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        max_failures: Optional[int] = None,
        sampler: Any = None,
        params: Optional[Dict[str, str]] = None,
    ) -> None:
        self.direction, self.storage = direction, storage
        self.study_name = study_name or optuna_search.DEFAULT_STUDY_NAME
        self.n_trials, self.n_jobs, self.max_failures = int(n_trials), int(n_jobs), max_failures
        self.sampler_conf = sampler  # left a config by `_recursive_: false` in conf/hydra/sweeper/optuna.yaml
        self.params = dict(params or {})
        self.config: Optional[DictConfig] = None
        self.launcher: Optional[Launcher] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        search = parse_search(self.params, arguments, self.hydra_context.config_loader)
        study = optuna_search.open_study(self.study_name, self.storage, self.direction, search)
        optuna_search.settle_dead_trials(study)  # trials of a launch killed hard, left RUNNING
        before = len(study.trials)
        sampler, grid = optuna_search.build_sampler(self.sampler_conf, before, search)
        if sampler is not None:
            study.sampler = sampler
        sweep_dir = _sweep_dir(self.config)
        asked, states = optuna_search.trial_counts(study)
        log.info("optuna study %r (%s): %s: %d trials so far, %d more over %s (the study's trials %s)",
                 study.study_name, self.storage, "continuing it, the same search" if before else "a new study",
                 asked, self.n_trials, ", ".join(search.space), states)
        loop = optuna_search.TrialLoop(
            study, search, self.n_trials, max(self.n_jobs, 1), self.launcher.launch,
            lambda overrides: self.validate_batch_is_legal([overrides]), self._record_refused, sweep_dir,
            max_failures=self.max_failures, grid=grid)
        returns = loop.run()
        results = optuna_search.results(study, self.storage, self.direction)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        if loop.all_failed and not _callback_configured(self.config):
            raise loop.first_error  # every trial failed: as the grid sweeper, never a silent success
        return returns

    def _record_refused(self, num: int, overrides: List[str], err: BaseException) -> None:
        if _callback_configured(self.config):  # the callback's summary lists it; without it, nothing reads it
            optuna_search.record_refused(str(self.config.hydra.sweep.dir), num, overrides, err)


def _register_configs() -> None:
    """`hydra/sweeper=cifar_grid` and `hydra/sweeper=cifar_optuna` for any Hydra app (Hydra's own plugin
    test suites, a script outside this project); cifar_sweep's configs are conf/hydra/sweeper/*.yaml,
    which set the project's defaults (the study's storage under runs/, its name from the experiment)."""
    from hydra.core.config_store import ConfigStore

    here = "hydra_plugins.cifar_sweep_sweeper.sweepers"
    store = ConfigStore.instance()
    store.store(group="hydra/sweeper", name="cifar_grid", provider="cifar_sweep",
                node={"_target_": f"{here}.GridSweeper", "max_batch_size": None, "params": None})
    store.store(group="hydra/sweeper", name="cifar_optuna", provider="cifar_sweep",
                node={"_target_": f"{here}.OptunaSweeper", "_recursive_": False, "direction": "maximize",
                      "study_name": None, "storage": None, "n_trials": 20, "n_jobs": 1, "max_failures": None,
                      "sampler": None, "params": None})


_register_configs()
