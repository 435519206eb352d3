"""A resumable Optuna search over Hydra overrides: the study, its sampler, and the ask/tell loop.

Why our own and not hydra-optuna-sweeper 1.3: that plugin pins optuna<3, and its persistent study
(`storage=sqlite:///...`) fails optuna 2's schema check under SQLAlchemy 2, which MLflow 3 needs; it
also aborts the search on the first failed trial. This drives current Optuna through ask/tell: the
study lives in an RDB (SQLite under runs/ by default) or journal storage and is loaded again on the
next launch, so `n_trials` more trials continue it; a failed trial is told FAIL and the search goes
on. A study is named by its search (the space and the fixed overrides), so another search never
continues it by accident. The `OptunaSweeper` plugin only wires this to Hydra's config and launcher.
Optuna is imported when a search runs, never at import.

A launch killed hard (SIGKILL) cannot tell its trial's end: the trial stays RUNNING in the study.
Each trial records the process that asked it; a relaunch tells FAIL every RUNNING trial whose
process is gone, and asks its point again first (once: a retry that dies too is only failed), so
that the retry's job resumes the killed trial's MLflow run from its last checkpoint instead of
starting it over. The trials a launch counts say which state they are in.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from cifar_sweep.sweeps.search_space import Search, SearchSpaceError, grid_points

log = logging.getLogger(__name__)

SEARCH_PLACEHOLDER = "{search}"
DEFAULT_STUDY_NAME = f"study-{SEARCH_PLACEHOLDER}"
SQLITE_PREFIX = "sqlite:///"
JOURNAL_PREFIX = "journal://"
LAUNCHER_ATTR = "launcher"  # trial user attr: {"pid", "host"} of the process that asked it
RETRY_OF_ATTR = "retry_of"  # trial user attr: the number of the killed trial whose point it runs again


# -- the study --------------------------------------------------------------------------------------


def study_name(template: str, search: Search) -> str:
    return template.replace(SEARCH_PLACEHOLDER, search.digest)


def open_storage(url: str | None) -> Any:
    """`sqlite:///...` (or any SQLAlchemy URL) -> RDB storage; `journal:///path` -> journal file storage."""
    if not url:
        return None
    if url.startswith(JOURNAL_PREFIX):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len(JOURNAL_PREFIX):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith(SQLITE_PREFIX):
        Path(url[len(SQLITE_PREFIX):]).parent.mkdir(parents=True, exist_ok=True)
    return url


def search_conflict(study: Any, search: Search, storage: str | None) -> str | None:
    """Why `study` must not be continued by `search` (it was made by another one), or None."""
    recorded = study.user_attrs.get("search")
    if recorded is None or recorded == search.lines:
        return None
    differs = sorted(set(recorded) ^ set(search.lines))
    return (f"optuna study {study.study_name!r} in {storage} was made by another search (differs: "
            f"{'; '.join(differs)}); give hydra.sweeper.study_name a new name, or keep {SEARCH_PLACEHOLDER} "
            "in it to name the study by its search")


def stored_search_conflict(template: str, storage: str | None, search: Search) -> str | None:
    """`search_conflict` for the study the sweep would continue, read without creating anything."""
    import optuna

    if not storage or (storage.startswith(SQLITE_PREFIX) and not Path(storage[len(SQLITE_PREFIX):]).exists()):
        return None
    name = study_name(template, search)
    store = open_storage(storage)
    if name not in optuna.study.get_all_study_names(store):
        return None
    return search_conflict(optuna.load_study(study_name=name, storage=store), search, storage)


def open_study(template: str, storage: str | None, direction: str, search: Search) -> Any:
    """Create the study of this search, or load it; a study of the same name made by another search
    (a name given without {search}) is refused, never continued."""
    import optuna

    name = study_name(template, search)
    study = optuna.create_study(study_name=name, storage=open_storage(storage), direction=direction,
                                load_if_exists=True)
    conflict = search_conflict(study, search, storage)
    if conflict:
        raise SearchSpaceError(conflict)
    if study.user_attrs.get("search") is None:
        if study.trials:
            log.warning("optuna study %r has %d trials from a search that was not recorded; continuing it as "
                        "this one: %s", name, len(study.trials), "; ".join(search.lines))
        study.set_user_attr("search", search.lines)
    return study


def _process_alive(pid: int) -> bool:
    """A live Python process (a recycled pid running something else is not the launch that asked)."""
    import psutil

    try:
        return "python" in " ".join(psutil.Process(pid).cmdline()).lower()
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # exists, not ours to read
        return True


def settle_dead_trials(study: Any) -> list[str]:
    """Tell FAIL every RUNNING trial whose asking process (on this host) is gone, and queue its point
    to be asked first, once; returns a line for each. A trial of a live launch, of another host or
    from before trials recorded their process is left as it is (it is counted as running)."""
    import optuna

    lines = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        launcher = trial.user_attrs.get(LAUNCHER_ATTR) or {}
        pid, host = launcher.get("pid"), launcher.get("host")
        if pid is None or host != socket.gethostname() or pid == os.getpid() or _process_alive(int(pid)):
            continue
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        line = f"trial {trial.number} was left RUNNING by a launch whose process {pid} on {host} is gone: told FAIL"
        retry_of = trial.user_attrs.get(RETRY_OF_ATTR)
        if retry_of is None and trial.params:
            study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF_ATTR: trial.number})
            line += "; its point is asked first again, and that job resumes its MLflow run from its last checkpoint"
        elif retry_of is not None:
            line += f"; not retried again (it was the retry of trial {retry_of})"
        log.warning("optuna: %s", line)
        lines.append(line)
    return lines


def trial_counts(study: Any) -> tuple[int, str]:
    """(trials asked so far, 'by state: 1 complete, 1 failed, 1 queued'): what a launch counts, and
    what those trials are (a queued one has not been asked yet, so it is not among them)."""
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        name = {"WAITING": "queued", "FAIL": "failed"}.get(trial.state.name, trial.state.name.lower())
        counts[name] = counts.get(name, 0) + 1
    asked = sum(n for name, n in counts.items() if name != "queued")
    return asked, "by state: " + (", ".join(f"{n} {name}" for name, n in counts.items()) or "none")


def build_sampler(conf: Any, trials_so_far: int, search: Search) -> tuple[Any, dict[str, list] | None]:
    """(the configured sampler or None, the grid of a GridSampler built from a config or None).

    A fixed seed is offset by the study's trial count, or a continued search would draw the very same
    first points again (its random start restarts from the seed). GridSampler gets its grid from the
    search space unless the config gives one.
    """
    from hydra.utils import instantiate

    if conf is None:
        return None, None
    if not (isinstance(conf, dict) or OmegaConf.is_config(conf)):
        return conf, None  # already a sampler object
    conf = OmegaConf.to_container(OmegaConf.create(conf), resolve=True)
    if conf.get("seed") is not None:
        conf["seed"] = int(conf["seed"]) + trials_so_far
    grid = None
    if str(conf.get("_target_", "")).endswith("GridSampler"):
        if not conf.get("search_space"):
            conf["search_space"] = grid_points(search.space)
        grid = conf["search_space"]
    return instantiate(conf), grid


def is_grid(sampler: Any) -> bool:
    import optuna

    return isinstance(sampler, optuna.samplers.GridSampler)


def grid_left(study: Any, grid: Mapping[str, list] | None) -> int | None:
    """Points of a GridSampler's grid not finished yet (None for other samplers)."""
    if not is_grid(study.sampler):
        return None
    if study.sampler.is_exhausted(study):
        return 0
    done = {tuple(sorted(t.params.items())) for t in study.trials if t.state.is_finished()}
    return max(0, math.prod(len(v) for v in (grid or {}).values()) - len(done))


def was_pruned(sweep_dir: Path, job: JobReturn) -> bool:
    """The job's own record says a pruner (`sweep.pruning`) stopped its run early."""
    from cifar_sweep.sweeps.records import read_record

    num = OmegaConf.select(job.hydra_cfg, "hydra.job.num") if job.hydra_cfg is not None else None
    record = read_record(sweep_dir, int(num)) if num is not None else None
    return record is not None and record.status == "PRUNED"


def tell(study: Any, trial: Any, value: float | None, pruned: bool = False) -> bool:
    """Tell a trial's result (None: it failed; `pruned`: a pruner stopped it, told PRUNED so that
    the sampler does not rank its shorter run's accuracy with complete ones); True when the sampler
    asks the search to stop.

    GridSampler calls `Study.stop()` from the tell that completes the grid, which raises outside
    `study.optimize`; the trial's result is stored before that (optuna's tell stores it in a
    `finally`), so the raise is the request to stop, nothing is lost.
    """
    import optuna

    try:
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif value is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, value)
    except RuntimeError:
        if is_grid(study.sampler) and study.sampler.is_exhausted(study):
            return True
        raise
    return False


def results(study: Any, storage: str | None, direction: str) -> dict[str, Any]:
    """What `optimization_results.yaml` says: the study, its trial counts, and its best trial so far."""
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    summary: dict[str, Any] = {"study_name": study.study_name, "storage": storage,
                               "n_trials": len(study.trials), "n_complete": len(done)}
    if done:
        summary.update(best_value=study.best_value, best_params=study.best_params)
        log.info("optuna: best %s = %.4f with %s (%d trials in the study)", direction, study.best_value,
                 study.best_params, len(study.trials))
    return summary


# -- the ask/tell loop ------------------------------------------------------------------------------

# Hydra's `Launcher.launch(job_overrides, initial_job_idx=...)`: one JobReturn per job, in order.
Launch = Callable[..., Sequence[JobReturn]]


@dataclass
class TrialLoop:
    """Ask trials in batches, launch them, tell their results; n_trials in all, unless the grid is done
    or `max_failures` trials failed. A trial that fails, returns no finite value or cannot be composed
    (`validate` raises) is told FAIL and the search goes on; `on_refused(job_num, overrides, error)`
    records one that never launched."""

    study: Any
    search: Search
    n_trials: int
    batch_size: int
    launch: Launch
    validate: Callable[[list[str]], None]
    on_refused: Callable[[int, list[str], BaseException], None]
    sweep_dir: Path
    max_failures: int | None = None
    grid: Mapping[str, list] | None = None
    returns: list[Sequence[JobReturn]] = field(default_factory=list)
    asked: int = 0
    completed: int = 0
    failures: int = 0
    first_error: BaseException | None = None
    stop: bool = False

    @property
    def all_failed(self) -> bool:
        """Trials ran and none completed: the sweep is a failure, never a silent success."""
        return bool(self.asked) and not self.completed and self.first_error is not None

    def run(self) -> list[Sequence[JobReturn]]:
        while self.asked < self.n_trials and not self.stop:
            size = self._next_size()
            if not size:
                break
            trials = [self.study.ask(self.search.space) for _ in range(size)]
            launchable, refused = self._compose(trials)
            self._launch(launchable)
            self._refuse(refused, first_num=self.asked + len(launchable))
            self.asked += len(trials)
            if self.stop:
                log.info("optuna: the sampler completed its grid in study %r: the search is complete",
                         self.study.study_name)
            if self.max_failures is not None and self.failures >= int(self.max_failures):
                log.error("optuna: %d failed trials (max_failures=%s): stopping the search", self.failures,
                          self.max_failures)
                break
        return self.returns

    def _next_size(self) -> int:
        size = min(self.batch_size, self.n_trials - self.asked)
        left = grid_left(self.study, self.grid)
        if left == 0:
            log.info("optuna: every point of the grid has run in study %r: the search is complete",
                     self.study.study_name)
        return size if left is None else min(size, left)  # more asks would repeat finished points

    def _compose(self, trials: list) -> tuple[list, list]:
        launchable, refused = [], []
        for trial in trials:
            overrides = self.search.trial_overrides(trial.params)
            trial.set_user_attr("overrides", list(overrides))
            trial.set_user_attr("sweep_dir", str(self.sweep_dir))
            # Who asks it: a relaunch fails the trial when this process is gone (`settle_dead_trials`).
            trial.set_user_attr(LAUNCHER_ATTR, {"pid": os.getpid(), "host": socket.gethostname()})
            try:
                self.validate(overrides)
                launchable.append((trial, overrides))
            except Exception as err:  # noqa: BLE001  one bad combination must not end the search
                refused.append((trial, overrides, err))
        return launchable, refused

    def _launch(self, launchable: list) -> None:
        if not launchable:
            return
        jobs = self.launch([overrides for _, overrides in launchable], initial_job_idx=self.asked)
        for (trial, _), job in zip(launchable, jobs):
            self._tell(trial, job)
        self.returns.append(jobs)

    def _tell(self, trial: Any, job: JobReturn) -> None:
        value = job._return_value if job.status == JobStatus.COMPLETED else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            self.completed += 1
            pruned = was_pruned(self.sweep_dir, job)
            self.stop = tell(self.study, trial, None if pruned else float(value), pruned=pruned) or self.stop
            return
        if job.status != JobStatus.COMPLETED and self.first_error is None:
            self.first_error = job._return_value
        log.warning("trial %d failed (%s): told FAIL, the search goes on", trial.number,
                    value if job.status == JobStatus.COMPLETED else job._return_value)
        self._fail(trial)

    def _refuse(self, refused: list, first_num: int) -> None:
        for num, (trial, overrides, err) in enumerate(refused, start=first_num):
            log.warning("trial %d cannot be composed (%s): told FAIL", trial.number, err)
            self.first_error = self.first_error or err
            self.on_refused(num, overrides, err)
            self._fail(trial)

    def _fail(self, trial: Any) -> None:
        self.failures += 1
        self.stop = tell(self.study, trial, None) or self.stop


def record_refused(sweep_dir: str, num: int, overrides: list[str], err: BaseException) -> None:
    """A trial refused before it ran is a FAILED job of the sweep's summary (it has no run)."""
    from cifar_sweep.sweeps.records import JobRecord, write_record

    reason = " ".join(str(err).split())
    write_record(sweep_dir, JobRecord(num, list(overrides), "FAILED", error=f"cannot be composed: {reason}"))
