"""cifar_sweep's Hydra sweepers: `grid` (the default) and `optuna` (a resumable search).

Hydra imports every module of `hydra_plugins` at start-up to find plugins, so this one stays light:
optuna is imported only when the optuna sweeper runs.

Why our own Optuna sweeper and not hydra-optuna-sweeper 1.3: that plugin pins optuna<3, and its
persistent study (`storage=sqlite:///...`) fails optuna 2's schema check under SQLAlchemy 2, which
MLflow 3 needs; it also aborts the search on the first failed trial. This one drives current Optuna
through ask/tell: the study lives in an RDB (SQLite under runs/ by default) or journal storage and
is loaded again on the next launch, so `n_trials` more trials continue it; a failed trial is told
FAIL and the search goes on. A study is named by its search (the space and the fixed overrides),
so another search never continues it by accident.
"""

from __future__ import annotations

import hashlib
import json
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




# Overrides that change how a sweep runs, not what it searches: they do not rename the study.
NOT_IN_SEARCH = ("sweep.dry_run", "sweep.force")
SEARCH_PLACEHOLDER = "{search}"
DEFAULT_STUDY_NAME = f"study-{SEARCH_PLACEHOLDER}"


def _distribution(key: str, sweep: Any) -> Any:
    """A Hydra sweep override (choice / range / interval, optionally tagged `log`) as an Optuna distribution."""
    import optuna.distributions as d
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    if not isinstance(sweep, (ChoiceSweep, RangeSweep, IntervalSweep)):  # glob(), or anything new
        raise ValueError(f"{key}: unsupported sweep {sweep!r} for the optuna sweeper; use a,b,c / choice() / "
                         "range() / interval() / tag(log, interval())")
    log_scale = "log" in (sweep.tags or set())
    if isinstance(sweep, ChoiceSweep):
        return d.CategoricalDistribution([_plain(v) for v in sweep.list])
    if isinstance(sweep, RangeSweep):
        values = list(sweep.range())
        if not values:
            raise ValueError(f"{key}: range({sweep.start}, {sweep.stop}, {sweep.step}) is empty")
        if all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
            # Optuna's integer range runs upwards; a descending range() is the same set of values.
            return d.IntDistribution(min(values), max(values), step=abs(sweep.step), log=log_scale)
        return d.CategoricalDistribution(values)
    if isinstance(sweep.start, int) and isinstance(sweep.end, int):
        return d.IntDistribution(sweep.start, sweep.end, log=log_scale)
    return d.FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)


def _plain(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def _override(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{key}={value!r}"
    if isinstance(value, str) and any(c in value for c in " ,()[]{}'\"=:"):
        return f"{key}='{value}'"
    return f"{key}={value}"


class Search:
    """What one optuna sweep searches: the space, the overrides fixed for every trial, and the text
    of both (which names the study).

    A plain class: Hydra loads this module to scan for plugins without registering it in
    sys.modules, where a dataclass looks its annotations up.
    """

    def __init__(self) -> None:
        self.space: Dict[str, Any] = {}
        self.fixed: List[str] = []
        self.lines: List[str] = []

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.lines).encode()).hexdigest()[:10]

    def probes(self) -> List[List[str]]:
        """Trials that between them use every choice and both ends of every range (each with the other
        parameters at their first value): composed before the search, they find a bad key or value."""
        import optuna.distributions as d

        def ends(dist: Any) -> List[Any]:
            if isinstance(dist, d.CategoricalDistribution):
                return list(dist.choices)
            return [dist.low, dist.high]

        base = {k: ends(v)[0] for k, v in self.space.items()}
        probes, seen = [], set()
        for key, dist in self.space.items():
            for value in ends(dist):
                params = {**base, key: value}
                overrides = self.fixed + [_override(k, v) for k, v in params.items()]
                if tuple(overrides) not in seen:
                    seen.add(tuple(overrides))
                    probes.append(overrides)
        return probes


def parse_search(params: Dict[str, str], arguments: Sequence[str], config_loader: Any) -> Search:
    """The search of config `params` and command-line sweeps; a ValueError names what cannot be searched."""
    parser = OverridesParser.create(config_loader=config_loader)
    merged = {k: f"{k}={v}" for k, v in params.items()}
    for override in parser.parse_overrides(list(arguments)):
        merged[override.get_key_element()] = override.input_line
    search = Search()
    for override in parser.parse_overrides(list(merged.values())):
        key = override.get_key_element()
        if override.is_sweep_override():
            search.space[key] = _distribution(key, override.value())
            search.lines.append(f"search {override.input_line}")
        else:
            search.fixed.append(f"{key}={override.get_value_element_as_str()}")
            if not key.lstrip("+~").startswith(NOT_IN_SEARCH):
                search.lines.append(f"fixed {search.fixed[-1]}")
    search.lines.sort()
    if not search.space:
        raise ValueError("the optuna sweeper needs a search space: hydra.sweeper.params or sweep overrides "
                         "such as 'optimizer.lr=tag(log, interval(1e-4, 1e-1))' model=logreg,cnn_simple")
    return search


def study_name(template: str, search: Search) -> str:
    return template.replace(SEARCH_PLACEHOLDER, search.digest)


def search_conflict(study: Any, search: Search, storage: Optional[str]) -> Optional[str]:
    """Why `study` must not be continued by `search` (it was made by another one), or None."""
    recorded = study.user_attrs.get("search")
    if recorded is None or recorded == search.lines:
        return None
    differs = sorted(set(recorded) ^ set(search.lines))
    return (f"optuna study {study.study_name!r} in {storage} was made by another search (differs: "
            f"{'; '.join(differs)}); give hydra.sweeper.study_name a new name, or keep {SEARCH_PLACEHOLDER} "
            "in it to name the study by its search")


def stored_search_conflict(template: str, storage: Optional[str], search: Search) -> Optional[str]:
    """`search_conflict` for the study the sweep would continue, read without creating anything."""
    import optuna

    if not storage or (storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).exists()):
        return None
    name = study_name(template, search)
    store = _storage(storage)
    if name not in optuna.study.get_all_study_names(store):
        return None
    return search_conflict(optuna.load_study(study_name=name, storage=store), search, storage)


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


def _grid_search_space(space: Dict[str, Any]) -> Dict[str, List[Any]]:
    """GridSampler's `search_space` from the sweep's: every value of each choice and integer range."""
    import optuna.distributions as d

    grid = {}
    for key, dist in space.items():
        if isinstance(dist, d.CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif isinstance(dist, d.IntDistribution):
            grid[key] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise ValueError(f"{key}: GridSampler needs a finite grid; give the values as a,b,c or range(), "
                             "not interval()")
    return grid


def _is_grid(sampler: Any) -> bool:
    import optuna

    return isinstance(sampler, optuna.samplers.GridSampler)


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
        self.study_name = study_name or DEFAULT_STUDY_NAME
        self.n_trials, self.n_jobs, self.max_failures = int(n_trials), int(n_jobs), max_failures
        self.sampler_conf = sampler
        self.params = dict(params or {})
        self.config: Optional[DictConfig] = None
        self.launcher: Optional[Launcher] = None
        self.hydra_context: Optional[HydraContext] = None
        self.grid_space: Optional[Dict[str, List[Any]]] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _search(self, arguments: List[str]) -> Search:
        assert self.hydra_context is not None
        return parse_search(self.params, arguments, self.hydra_context.config_loader)

    def _study(self, search: Search) -> Any:
        """Create the study of this search, or load it; a study of the same name made by another
        search (a name given without {search}) is refused, never continued."""
        import optuna

        name = study_name(self.study_name, search)
        study = optuna.create_study(study_name=name, storage=_storage(self.storage), direction=self.direction,
                                    load_if_exists=True)
        conflict = search_conflict(study, search, self.storage)
        if conflict:
            raise ValueError(conflict)
        if study.user_attrs.get("search") is None:
            if study.trials:
                log.warning("optuna study %r has %d trials from a search that was not recorded; continuing it as "
                            "this one: %s", name, len(study.trials), "; ".join(search.lines))
            study.set_user_attr("search", search.lines)
        sampler = self._sampler(len(study.trials), search)
        if sampler is not None:
            study.sampler = sampler
        return study

    def _sampler(self, trials_so_far: int, search: Search) -> Any:
        """The configured sampler; a fixed seed is offset by the study's trial count, or a continued
        search would draw the very same first points again (its random start restarts from the seed).
        GridSampler gets its grid from the search space unless the config gives one."""
        from hydra.utils import instantiate

        conf = self.sampler_conf  # left a config by `_recursive_: false` in conf/hydra/sweeper/optuna.yaml
        if conf is None:
            return None
        if not (isinstance(conf, dict) or OmegaConf.is_config(conf)):
            return conf  # already a sampler object
        conf = OmegaConf.to_container(OmegaConf.create(conf), resolve=True)
        if conf.get("seed") is not None:
            conf["seed"] = int(conf["seed"]) + trials_so_far
        if str(conf.get("_target_", "")).endswith("GridSampler"):
            if not conf.get("search_space"):
                conf["search_space"] = _grid_search_space(search.space)
            self.grid_space = conf["search_space"]
        return instantiate(conf)

    def _grid_left(self, study: Any) -> Optional[int]:
        """Points of a GridSampler's grid not finished yet (None for other samplers)."""
        if not _is_grid(study.sampler):
            return None
        if study.sampler.is_exhausted(study):
            return 0
        grid = self.grid_space or {}
        done = {tuple(sorted(t.params.items())) for t in study.trials if t.state.is_finished()}
        return max(0, math.prod(len(v) for v in grid.values()) - len(done))

    @staticmethod
    def _tell(study: Any, trial: Any, value: Optional[float]) -> bool:
        """Tell a trial's result; True when the sampler asks the search to stop (GridSampler, grid done).

        GridSampler calls `Study.stop()` from the tell that completes the grid, which raises outside
        `study.optimize`; the trial's result is stored before that (optuna's tell stores it in a
        `finally`), so the raise is the request to stop, nothing is lost.
        """
        import optuna

        try:
            if value is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, value)
        except RuntimeError:
            if _is_grid(study.sampler) and study.sampler.is_exhausted(study):
                return True
            raise
        return False

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        search = self._search(arguments)
        study = self._study(search)
        before = len(study.trials)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        how = "continuing it, the same search" if before else "a new study"
        log.info("optuna study %r (%s): %s: %d trials so far, %d more over %s", study.study_name, self.storage,
                 how, before, self.n_trials, ", ".join(search.space))

        batch_size = self.n_jobs if self.n_jobs > 0 else 1
        returns: List[Sequence[JobReturn]] = []
        job_idx, failures, completed, stop = 0, 0, 0, False
        first_error: Optional[BaseException] = None
        while job_idx < self.n_trials and not stop:
            size = min(batch_size, self.n_trials - job_idx)
            left = self._grid_left(study)
            if left is not None:
                if left == 0:
                    log.info("optuna: every point of the grid has run in study %r: the search is complete",
                             study.study_name)
                    break
                size = min(size, left)  # more asks would repeat finished points
            trials = [study.ask(search.space) for _ in range(size)]
            launchable, refused = [], []
            for trial in trials:
                overrides = search.fixed + [_override(k, v) for k, v in trial.params.items()]
                trial.set_user_attr("overrides", list(overrides))
                trial.set_user_attr("sweep_dir", str(sweep_dir))
                try:
                    self.validate_batch_is_legal([overrides])
                    launchable.append((trial, overrides))
                except Exception as err:  # noqa: BLE001  one bad combination must not end the search
                    refused.append((trial, overrides, err))
            if launchable:
                results = self.launcher.launch([o for _, o in launchable], initial_job_idx=job_idx)
                for (trial, _), ret in zip(launchable, results):
                    value = ret._return_value if ret.status == JobStatus.COMPLETED else None
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        completed += 1
                        stop = self._tell(study, trial, float(value)) or stop
                        continue
                    if ret.status != JobStatus.COMPLETED and first_error is None:
                        first_error = ret._return_value
                    log.warning("trial %d failed (%s): told FAIL, the search goes on", trial.number,
                                value if ret.status == JobStatus.COMPLETED else ret._return_value)
                    failures += 1
                    stop = self._tell(study, trial, None) or stop
                returns.append(results)
            for num, (trial, overrides, err) in enumerate(refused, start=job_idx + len(launchable)):
                log.warning("trial %d cannot be composed (%s): told FAIL", trial.number, err)
                first_error = first_error or err
                failures += 1
                self._record_refused(num, overrides, err)
                stop = self._tell(study, trial, None) or stop
            job_idx += len(trials)
            if stop:
                log.info("optuna: the sampler completed its grid in study %r: the search is complete",
                         study.study_name)
            if self.max_failures is not None and failures >= int(self.max_failures):
                log.error("optuna: %d failed trials (max_failures=%s): stopping the search", failures,
                          self.max_failures)
                break
        self._report(study, sweep_dir)
        if job_idx and not completed and first_error is not None and not _callback_configured(self.config):
            raise first_error  # every trial failed: as the grid sweeper, never a silent success
        return returns

    def _record_refused(self, num: int, overrides: List[str], err: BaseException) -> None:
        """A trial refused before it ran is a FAILED job of the sweep's summary (it has no run)."""
        if not _callback_configured(self.config):
            return
        from cifar_sweep.sweeps.records import JobRecord, write_record

        reason = " ".join(str(err).split())
        write_record(str(self.config.hydra.sweep.dir),
                     JobRecord(num, list(overrides), "FAILED", error=f"cannot be composed: {reason}"))

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
