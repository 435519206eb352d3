"""cifar_sweep's Hydra sweepers: `grid` (the default) and `optuna` (a resumable search).

Hydra imports every module of `hydra_plugins` at start-up to find plugins, so this one stays light:
optuna is imported only when the optuna sweeper runs.

Why our own Optuna sweeper and not hydra-optuna-sweeper 1.3: that plugin pins optuna<3, and its
persistent study (`storage=sqlite:///...`) fails optuna 2's schema check under SQLAlchemy 2, which
MLflow 3 needs; it also aborts the search on the first failed trial. This one drives current Optuna
through ask/tell: the study lives in an RDB (SQLite under runs/ by default) or journal storage and
is loaded again on the next launch, so `n_trials` more trials continue it; a failed trial is told
FAIL and the search goes on.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

CALLBACK = "cifar_sweep.sweeps.callback.SweepCallback"


def _callback_configured(config: DictConfig) -> bool:
    callbacks = OmegaConf.select(config, "hydra.callbacks") or {}
    return any(str(c.get("_target_", "")) == CALLBACK for c in callbacks.values())


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
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        returns: List[Sequence[JobReturn]] = []
        initial_job_idx = 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            initial_job_idx += len(batch)
            returns.append(results)
        failed = [r for batch in returns for r in batch if r.status != JobStatus.COMPLETED]
        if failed and not _callback_configured(self.config):
            _ = failed[0].return_value  # raises the job's error, as Hydra's basic sweeper does
        return returns


def _distribution(key: str, sweep: Any) -> Any:
    """A Hydra sweep override (choice / range / interval, optionally tagged `log`) as an Optuna distribution."""
    import optuna.distributions as d
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    log_scale = "log" in (sweep.tags or set())
    if isinstance(sweep, ChoiceSweep):
        return d.CategoricalDistribution([_plain(v) for v in sweep.list])
    if isinstance(sweep, RangeSweep):
        if all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
            return d.IntDistribution(sweep.start, sweep.stop - 1, step=sweep.step, log=log_scale)
        return d.CategoricalDistribution(list(sweep.range()))
    if isinstance(sweep, IntervalSweep):
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return d.IntDistribution(sweep.start, sweep.end, log=log_scale)
        return d.FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
    raise ValueError(f"{key}: unsupported sweep {sweep!r}; use a,b,c / choice() / range() / interval() / tag(log, interval())")


def _plain(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def _override(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{key}={value!r}"
    if isinstance(value, str) and any(c in value for c in " ,()[]{}'\"=:"):
        return f"{key}='{value}'"
    return f"{key}={value}"


def _storage(url: Optional[str]) -> Any:
    """`sqlite:///...` (or any SQLAlchemy URL) -> RDB storage; `journal:///path` -> journal file storage."""
    if not url:
        return None
    if url.startswith("journal://"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal://"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return url


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
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.n_trials, self.n_jobs, self.max_failures = int(n_trials), int(n_jobs), max_failures
        self.sampler_conf = sampler
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

    def _space(self, arguments: List[str]) -> tuple[Dict[str, Any], List[str]]:
        """Search space (config `params`, then command-line sweeps) and the fixed overrides."""
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        merged = {k: f"{k}={v}" for k, v in self.params.items()}
        for override in parser.parse_overrides(list(arguments)):
            merged[override.get_key_element()] = override.input_line
        space, fixed = {}, []
        for override in parser.parse_overrides(list(merged.values())):
            key = override.get_key_element()
            if override.is_sweep_override():
                space[key] = _distribution(key, override.value())
            else:
                fixed.append(f"{key}={override.get_value_element_as_str()}")
        if not space:
            raise ValueError("the optuna sweeper needs a search space: hydra.sweeper.params or sweep overrides "
                             "such as 'optimizer.lr=tag(log, interval(1e-4, 1e-1))' model=logreg,cnn_simple")
        return space, fixed

    def _study(self) -> Any:
        import optuna

        study = optuna.create_study(
            study_name=self.study_name, storage=_storage(self.storage), direction=self.direction,
            load_if_exists=True,
        )
        sampler = self._sampler(len(study.trials))
        if sampler is not None:
            study.sampler = sampler
        return study

    def _sampler(self, trials_so_far: int) -> Any:
        """The configured sampler; a fixed seed is offset by the study's trial count, or a continued
        search would draw the very same first points again (its random start restarts from the seed)."""
        from hydra.utils import instantiate

        conf = self.sampler_conf  # left a config by `_recursive_: false` in conf/hydra/sweeper/optuna.yaml
        if conf is None:
            return None
        if not (isinstance(conf, dict) or OmegaConf.is_config(conf)):
            return conf  # already a sampler object
        conf = OmegaConf.to_container(OmegaConf.create(conf), resolve=True)
        if conf.get("seed") is not None:
            conf["seed"] = int(conf["seed"]) + trials_so_far
        return instantiate(conf)

    def sweep(self, arguments: List[str]) -> Any:
        import optuna

        assert self.config is not None and self.launcher is not None
        space, fixed = self._space(arguments)
        study = self._study()
        before = len(study.trials)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info("optuna study %r (%s): %d trials so far, %d more over %s", study.study_name, self.storage,
                 before, self.n_trials, ", ".join(space))

        batch_size = self.n_jobs if self.n_jobs > 0 else 1
        returns: List[Sequence[JobReturn]] = []
        job_idx, failures = 0, 0
        while job_idx < self.n_trials:
            trials = [study.ask(space) for _ in range(min(batch_size, self.n_trials - job_idx))]
            batch = [fixed + [_override(k, v) for k, v in t.params.items()] for t in trials]
            launchable = []
            for trial, overrides in zip(trials, batch):
                try:
                    self.validate_batch_is_legal([overrides])
                    launchable.append((trial, overrides))
                except Exception as err:  # noqa: BLE001  one bad combination must not end the search
                    log.warning("trial %d cannot be composed (%s): told FAIL", trial.number, err)
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    failures += 1
            if launchable:
                results = self.launcher.launch([o for _, o in launchable], initial_job_idx=job_idx)
                for (trial, overrides), ret in zip(launchable, results):
                    trial.set_user_attr("overrides", list(overrides))
                    trial.set_user_attr("sweep_dir", str(sweep_dir))
                    value = ret._return_value if ret.status == JobStatus.COMPLETED else None
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        study.tell(trial, float(value))
                    else:
                        log.warning("trial %d failed (%s): told FAIL, the search goes on", trial.number,
                                    value if ret.status == JobStatus.COMPLETED else ret._return_value)
                        study.tell(trial, state=optuna.trial.TrialState.FAIL)
                        failures += 1
                returns.append(results)
            job_idx += len(trials)
            if self.max_failures is not None and failures >= int(self.max_failures):
                log.error("optuna: %d failed trials (max_failures=%s): stopping the search", failures, self.max_failures)
                break
        self._report(study, sweep_dir)
        return returns

    def _report(self, study: Any, sweep_dir: Path) -> None:
        import optuna

        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        results: Dict[str, Any] = {"study_name": study.study_name, "storage": self.storage,
                                   "n_trials": len(study.trials), "n_complete": len(done)}
        if done:
            results.update(best_value=study.best_value, best_params=study.best_params)
            log.info("optuna: best %s = %.4f with %s (%d trials in the study)", self.direction, study.best_value,
                     study.best_params, len(study.trials))
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
