"""Sweeps that survive (issue 4): the Hydra callback and the helpers a sweep job calls.

One `cifar-sweep -m ...` is one MLflow *parent* run; every job is a child run pointing to it.

Where each piece runs (Hydra 1.3, checked in hydra/_internal/hydra.py and hydra/core/utils.py):
- `on_multirun_start` / `on_multirun_end`: the launching process, before the sweeper exists and
  after it returns. The store, the experiment and the parent run are created here, once, before
  any job starts: no migration race, no run filed in the wrong experiment.
- `on_job_start` / `on_job_end`: around the task function, in the process that runs the job
  (a joblib worker, a submitit job). Each job writes a small record into
  `<sweep dir>/.cifar_sweep/jobs/`; the summary at the end reads those and the child runs.
- Hydra swallows an `Exception` raised by a callback (it only warns), but not `SystemExit`: the
  non-zero exit of a sweep with failed jobs is a `sys.exit` in `on_multirun_end`, after the summary
  is printed and logged. Hydra's own basic sweeper re-raises the first job error *before*
  `on_multirun_end`; the project's `grid` sweeper (hydra_plugins/cifar_sweep_sweeper) does not, and
  an atexit safety net still ends the parent run if a sweep dies some other way.
"""

from __future__ import annotations

import atexit
import copy
import json
import logging
import math
import os
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger("cifar_sweep")

STATE_DIR = ".cifar_sweep"  # inside the sweep dir: parent.json, jobs/<num>.json, gpu slot locks
COMMAND = "cifar-sweep"
FAILURES = ("FAILED", "KILLED", "MISSING")

# What the running job tells its own on_job_end (same process): run id, skipped, pruned.
_job: dict[str, Any] = {}


def note_job(**values: Any) -> None:
    _job.update(values)


# -- small config readers ------------------------------------------------------------------------


def _setting(cfg: DictConfig, key: str, default: Any) -> Any:
    value = OmegaConf.select(cfg, key, default=default)
    return default if value is None else value


def _is_multirun(config: DictConfig) -> bool:
    return str(OmegaConf.select(config, "hydra.mode")) == str(RunMode.MULTIRUN)


def _state_dir(sweep_dir: str | os.PathLike) -> Path:
    return Path(sweep_dir) / STATE_DIR


def _current_sweep_dir() -> Path | None:
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if str(hc.mode) != str(RunMode.MULTIRUN):
        return None
    return Path(str(hc.sweep.dir))


def command_line(overrides: list[str], multirun: bool = False) -> str:
    return " ".join([COMMAND, *(["-m"] if multirun else []), *(shlex.quote(o) for o in overrides)])


# -- inside a job: parent run, resume/skip, threads, pruning ---------------------------------------


def parent_run_id(tracking_uri: str) -> str | None:
    """The sweep's parent run, written by the callback into the sweep dir (any launcher can read it)."""
    sweep_dir = _current_sweep_dir()
    if sweep_dir is None:
        return None
    path = _state_dir(sweep_dir) / "parent.json"
    try:
        parent = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return parent["run_id"] if parent.get("tracking_uri") == tracking_uri else None


@dataclass(frozen=True)
class Previous:
    run_id: str
    best_val_acc: float


def finished_run(cfg: DictConfig, sweep_id: str | None, tags: dict[str, Any]) -> Previous | None:
    """A FINISHED run of this very job in the experiment, if any: the resume rule.

    Same `config_hash` (resolved config without seed, device and paths), same `seed`, same resolved
    device and same requested `trainer.threads` (so device and thread-count comparisons are not
    mistaken for repeats). FAILED, KILLED, RUNNING or missing runs do not count: those jobs run
    again. Only sweep jobs skip (a single run does what it is told); `sweep.force=true` reruns.
    """
    if sweep_id is None or _setting(cfg, "sweep.force", False):
        return None
    return find_finished_run(
        cfg.tracking.uri, cfg.tracking.experiment, str(tags["config_hash"]), str(cfg.seed), str(tags["device"]),
        str(cfg.trainer.threads),
    )


def find_finished_run(uri: str, experiment: str, config_hash: str, seed: str, device: str,
                      threads: str) -> Previous | None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    query = " and ".join([
        f"tags.config_hash = '{config_hash}'", f"params.seed = '{seed}'", f"tags.device = '{device}'",
        f"params.`trainer.threads` = '{threads}'", "attributes.status = 'FINISHED'",
    ])
    runs = client.search_runs([found.experiment_id], query, max_results=1, order_by=["attributes.start_time DESC"])
    if not runs:
        return None
    best = runs[0].data.metrics.get("best_val_acc")
    return Previous(runs[0].info.run_id, float("nan") if best is None else float(best))


def job_threads() -> int | None:
    """Default torch threads for a sweep job: this machine's cores shared by the concurrent jobs.

    joblib: cores // n_jobs (n_jobs=-1 means one job per core); submitit: `cpus_per_task` when set
    (SLURM also pins the job to them). None outside such a sweep: the run uses every core it has.
    """
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if str(hc.mode) != str(RunMode.MULTIRUN):
        return None
    from cifar_sweep.training.device import cpu_share

    n_jobs = OmegaConf.select(hc, "launcher.n_jobs")
    if n_jobs is not None:
        n = int(n_jobs)
        if n < 0:  # joblib: -1 = all CPUs, -2 = all but one, ...
            n = max(1, (os.cpu_count() or 1) + 1 + n)
        return max(1, cpu_share() // max(n, 1))
    cpus = OmegaConf.select(hc, "launcher.cpus_per_task")
    return int(cpus) if cpus else None


class MedianPruner:
    """Stop a run whose val_acc at epoch k is below the median of its sweep siblings at epoch k.

    Siblings are the other runs with the same `sweep_id` tag, read back from MLflow, so it works
    with any launcher. Checked at every epoch from `sweep.pruning.after_epoch` on (0-based), and
    only once at least `sweep.pruning.min_siblings` siblings have reached that epoch.
    """

    def __init__(self, client, run_id: str, sweep_id: str, after_epoch: int, min_siblings: int):
        self.client, self.run_id, self.sweep_id = client, run_id, sweep_id
        self.after_epoch, self.min_siblings = int(after_epoch), max(1, int(min_siblings))
        self.experiment_id = client.get_run(run_id).info.experiment_id
        self.median: float | None = None

    @classmethod
    def from_config(cls, cfg: DictConfig, client, run_id: str, sweep_id: str | None) -> "MedianPruner | None":
        if not _setting(cfg, "sweep.pruning.enabled", False) or sweep_id is None:
            return None
        return cls(client, run_id, sweep_id, _setting(cfg, "sweep.pruning.after_epoch", 1),
                   _setting(cfg, "sweep.pruning.min_siblings", 2))

    def sibling_values(self, epoch: int) -> list[float]:
        sweep_id = self.sweep_id.replace("'", "\\'")
        siblings = self.client.search_runs([self.experiment_id], f"tags.sweep_id = '{sweep_id}'", max_results=1000)
        values = []
        for run in siblings:
            if run.info.run_id == self.run_id:
                continue
            at_epoch = [m.value for m in self.client.get_metric_history(run.info.run_id, "val_acc") if m.step == epoch]
            if at_epoch:
                values.append(at_epoch[-1])
        return values

    def should_stop(self, epoch: int, val_acc: float) -> bool:
        if epoch < self.after_epoch:
            return False
        values = self.sibling_values(epoch)
        if len(values) < self.min_siblings:
            return False
        self.median = statistics.median(values)
        return val_acc < self.median


# -- the records a sweep leaves --------------------------------------------------------------------


@dataclass
class JobRecord:
    job_num: int
    overrides: list[str]
    status: str  # FINISHED | FAILED | KILLED | SKIPPED | PRUNED | MISSING
    best_val_acc: float | None = None
    run_id: str | None = None
    error: str | None = None
    output_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status in FAILURES


def _job_record(config: DictConfig, job_return: JobReturn, state: dict[str, Any]) -> JobRecord:
    ok = job_return.status == JobStatus.COMPLETED
    value = job_return._return_value if ok else None
    best = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if not ok:
        status = "FAILED"
    elif state.get("skipped_run_id"):
        status = "SKIPPED"
    elif state.get("pruned"):
        status = "PRUNED"
    else:
        status = "FINISHED"
    error = None
    if not ok:
        err = job_return._return_value
        error = f"{type(err).__name__}: {err}"
    return JobRecord(
        job_num=int(config.hydra.job.num),
        overrides=[str(o) for o in config.hydra.overrides.task],
        status=status,
        best_val_acc=best if best is None or math.isfinite(best) else None,
        run_id=state.get("skipped_run_id") or state.get("run_id"),
        error=error,
        output_dir=str(config.hydra.runtime.output_dir),
    )


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)  # atomic: a reader never sees half a record


def read_job_records(sweep_dir: str | os.PathLike) -> dict[int, JobRecord]:
    records = {}
    for path in sorted((_state_dir(sweep_dir) / "jobs").glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        records[int(data["job_num"])] = JobRecord(**data)
    return records


# -- the sweep's job list (grid sweeps) and the dry run ------------------------------------------------


def _grid_jobs(config: DictConfig) -> list[list[str]] | None:
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


def _job_identity(config: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """Compose one job as the launcher would and return what the resume rule compares."""
    from hydra.core.global_hydra import GlobalHydra

    from cifar_sweep.training.device import resolve_device
    from cifar_sweep.config.identity import config_hash

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
    jobs = _grid_jobs(config)
    lines = []
    if jobs is None:
        sweeper = OmegaConf.to_container(config.hydra.sweeper, resolve=True)
        params = {**(sweeper.get("params") or {}),
                  **{o.split("=", 1)[0]: o.split("=", 1)[1] for o in config.hydra.overrides.task
                     if "=" in o and not o.startswith("sweep.")}}
        lines.append(f"dry run: {sweeper.get('_target_', '?').rsplit('.', 1)[-1]} would launch "
                     f"{sweeper.get('n_trials', '?')} trials (study {sweeper.get('study_name')!r} in "
                     f"{sweeper.get('storage')}); nothing was run")
        lines += [f"  {k}: {v}" for k, v in params.items()]
        return "\n".join(lines)
    uri, experiment = str(config.tracking.uri), str(config.tracking.experiment)
    store_exists = not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///"):]).exists()
    to_run = 0
    rows = []
    for num, overrides in enumerate(jobs):
        ident = _job_identity(config, overrides)
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
    lines.append(f"dry run: {len(jobs)} jobs, {to_run} to run, {len(jobs) - to_run} already FINISHED "
                 f"(store {uri}, experiment {experiment}); nothing was run")
    lines.append(f"  {'job':<4} {'config_hash':<12}  {'action':<28} overrides")
    return "\n".join(lines + rows)


# -- the callback ----------------------------------------------------------------------------------------


class SweepCallback(Callback):
    """Parent run, per-job records, summary and exit status of a multirun. Configured in train.yaml:

        hydra:
          callbacks:
            cifar_sweep:
              _target_: cifar_sweep.sweeps.callback.SweepCallback
    """

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.tracking_uri: str | None = None
        self.sweep_dir: str | None = None
        self.expected: list[list[str]] | None = None
        self.started = 0.0
        self.done = False

    # Launch side ------------------------------------------------------------------------------------

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _setting(config, "sweep.dry_run", False):
            try:
                text = dry_run(config)
            except Exception as err:  # noqa: BLE001  a callback's error would only be a warning
                raise SystemExit(f"dry run failed: {type(err).__name__}: {err}") from err
            print(text, flush=True)
            raise SystemExit(0)  # Hydra lets SystemExit through: no sweeper, no job, no run
        try:
            self._start_parent(config)
        except Exception as err:  # noqa: BLE001
            raise SystemExit(
                f"cifar_sweep: could not prepare the MLflow store {config.tracking.uri!s} for the sweep: "
                f"{type(err).__name__}: {err}"
            ) from err

    def _start_parent(self, config: DictConfig) -> None:
        from mlflow.tracking import MlflowClient

        from cifar_sweep.config import paths
        from cifar_sweep.tracking.run import ensure_experiment, git_commit

        self.started = time.time()
        self.tracking_uri = str(config.tracking.uri)
        self.sweep_dir = str(config.hydra.sweep.dir)
        try:
            self.expected = _grid_jobs(config)
        except Exception:  # noqa: BLE001  the sweeper reports a bad override itself, better
            self.expected = None
        experiment_id = ensure_experiment(self.tracking_uri, str(config.tracking.experiment))
        client = MlflowClient(tracking_uri=self.tracking_uri)
        task = [str(o) for o in config.hydra.overrides.task]
        choices = config.hydra.runtime.choices
        tags = {
            "sweep_parent": "true",
            "sweep_id": self.sweep_dir,
            "sweep_command": " ".join([COMMAND, *(shlex.quote(a) for a in sys.argv[1:])])[:5000],
            "sweeper": choices.get("hydra/sweeper"),
            "launcher": choices.get("hydra/launcher"),
            "jobs_planned": len(self.expected) if self.expected is not None else None,
            "mlflow.source.name": "cifar_sweep.sweeps.callback",
            "mlflow.source.git.commit": git_commit(paths.project_root()),
        }
        name = ("sweep " + " ".join(task))[:250]
        run = client.create_run(experiment_id, run_name=name, tags={k: str(v) for k, v in tags.items() if v is not None})
        self.parent_run_id = run.info.run_id
        _write_json(_state_dir(self.sweep_dir) / "parent.json", {
            "run_id": self.parent_run_id, "tracking_uri": self.tracking_uri, "experiment_id": experiment_id,
        })
        atexit.register(self._abandoned)
        log.info("sweep parent run %s in %s (experiment %s)%s", self.parent_run_id, self.tracking_uri,
                 config.tracking.experiment, f", {len(self.expected)} jobs" if self.expected is not None else "")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_run_id is None or self.done:
            return
        records = self._finish(interrupted=False)
        failed = [r for r in records if r.failed]
        if failed:
            sys.exit(f"cifar_sweep: {len(failed)} of {len(records)} jobs failed (see the summary above)")

    def _abandoned(self) -> None:
        """atexit: the sweep died before on_multirun_end (Ctrl-C, a launcher error): still end the parent."""
        if self.parent_run_id is not None and not self.done:
            try:
                self._finish(interrupted=True)
            except Exception:  # noqa: BLE001
                log.exception("could not end the sweep's parent run %s", self.parent_run_id)

    # Job side ----------------------------------------------------------------------------------------

    def on_job_start(self, config: DictConfig, *, task_function: Any, **kwargs: Any) -> None:
        _job.clear()
        if _is_multirun(config):
            _claim_gpu_slot(config)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        state = dict(_job)
        _job.clear()
        if not _is_multirun(config):
            return
        record = _job_record(config, job_return, state)
        _write_json(_state_dir(str(config.hydra.sweep.dir)) / "jobs" / f"{record.job_num}.json", asdict(record))
        if record.failed:
            err = job_return._return_value
            # Hydra only re-raises the first error at the very end: say it now, in the job's own log too.
            log.error("job #%d failed: %s", record.job_num, record.error,
                      exc_info=(type(err), err, err.__traceback__) if isinstance(err, BaseException) else None)

    # Summary -------------------------------------------------------------------------------------------

    def _finish(self, interrupted: bool) -> list[JobRecord]:
        from mlflow.entities import Metric, RunStatus
        from mlflow.tracking import MlflowClient

        self.done = True
        client = MlflowClient(tracking_uri=self.tracking_uri)
        records = self._collect(client)
        failed = [r for r in records if r.failed]
        text = summary_text(records, self.parent_run_id, interrupted)
        print(text, flush=True)
        counts = {s: sum(r.status == s for r in records) for s in ("FINISHED", "SKIPPED", "PRUNED") + FAILURES}
        values = [r.best_val_acc for r in records if r.best_val_acc is not None and not r.failed]
        now = int(time.time() * 1000)
        metrics = [Metric(f"jobs_{k.lower()}", v, now, 0) for k, v in counts.items()]
        metrics.append(Metric("jobs_total", len(records), now, 0))
        metrics.append(Metric("sweep_time_s", time.time() - self.started, now, 0))
        if values:
            metrics.append(Metric("best_val_acc", max(values), now, 0))
        status = "KILLED" if interrupted and not failed else ("FAILED" if failed else "FINISHED")
        try:
            client.log_batch(self.parent_run_id, metrics=metrics)
            client.set_tag(self.parent_run_id, "sweep_status", status)
            client.log_text(self.parent_run_id, text + "\n", "sweep_summary.txt")
            client.log_dict(self.parent_run_id, [asdict(r) for r in records], "sweep_summary.json")
        finally:
            client.set_terminated(self.parent_run_id, RunStatus.to_string(getattr(RunStatus, status)))
        return records

    def _collect(self, client) -> list[JobRecord]:
        """Job records from the sweep dir, checked against the child runs in MLflow."""
        records = read_job_records(self.sweep_dir)
        children = client.search_runs(
            [client.get_run(self.parent_run_id).info.experiment_id],
            f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'", max_results=10000,
        )
        by_id = {run.info.run_id: run for run in children}
        for run in children:
            num = run.data.tags.get("job_num")
            if run.info.status == "RUNNING":
                # Its job is over (we are past the launcher) yet the run is open: the process died.
                client.set_tag(run.info.run_id, "failure_reason", "the job's process ended without closing its run")
                client.set_terminated(run.info.run_id, "KILLED")
            if num is not None and int(num) not in records:
                records[int(num)] = JobRecord(int(num), [], "MISSING", run_id=run.info.run_id,
                                              error="the job's process ended without reporting")
        for record in records.values():
            run = by_id.get(record.run_id or "")
            if run is None:
                continue
            if record.status in ("FINISHED", "PRUNED") and run.info.status != "FINISHED":
                record.status = run.info.status
            if run.info.status == "RUNNING":
                record.status = "KILLED"
            if record.best_val_acc is None:
                record.best_val_acc = run.data.metrics.get("best_val_acc")
            if record.failed and not record.error:
                record.error = run.data.tags.get("failure_reason")
        for num, overrides in enumerate(self.expected or []):
            if num not in records:
                records[num] = JobRecord(num, list(overrides), "MISSING", error="not run (the sweep stopped first)")
        return [records[k] for k in sorted(records)]


def summary_text(records: list[JobRecord], parent_run_id: str | None, interrupted: bool = False) -> str:
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    head = ", ".join(f"{n} {s.lower()}" for s, n in counts.items()) or "no jobs"
    lines = [
        "",
        f"sweep summary{' (interrupted)' if interrupted else ''}: {len(records)} jobs: {head}; parent run {parent_run_id}",
        f"{'job':<4} {'status':<9} {'best_val_acc':>12}  {'run':<8}  overrides",
    ]
    for r in records:
        acc = f"{r.best_val_acc:.4f}" if r.best_val_acc is not None else "-"
        lines.append(f"{r.job_num:<4} {r.status:<9} {acc:>12}  {(r.run_id or '-')[:8]:<8}  {' '.join(r.overrides)}")
    failed = [r for r in records if r.failed]
    if failed:
        lines.append("")
        lines.append("failed jobs (rerun one alone with the command below it):")
        for r in failed:
            lines.append(f"  #{r.job_num} {r.status}: {r.error or ''}".rstrip())
            if r.overrides:
                lines.append(f"    {command_line(r.overrides)}")
        lines.append("or relaunch the whole sweep: jobs already FINISHED are skipped:")
        lines.append(f"  {COMMAND} {' '.join(shlex.quote(a) for a in sys.argv[1:])}")
    return "\n".join(lines)


# -- GPU slots for parallel local jobs ---------------------------------------------------------------------

_gpu_lock = None


def _count_gpus() -> int:
    try:
        return len(list(Path("/proc/driver/nvidia/gpus").iterdir()))
    except OSError:
        return 0


def _claim_gpu_slot(config: DictConfig) -> None:
    """Give each parallel joblib worker its own GPU (CUDA_VISIBLE_DEVICES) where there are several.

    A worker process keeps its slot for life: CUDA reads the variable once, at initialisation.
    SLURM and an explicit CUDA_VISIBLE_DEVICES are left alone; counting GPUs never touches CUDA.
    """
    global _gpu_lock
    if _gpu_lock is not None or "CUDA_VISIBLE_DEVICES" in os.environ or "SLURM_JOB_ID" in os.environ:
        return
    if OmegaConf.select(config, "hydra.launcher.n_jobs") is None:
        return
    gpus = _count_gpus()
    if gpus < 2:
        return
    from filelock import FileLock, Timeout

    folder = _state_dir(str(config.hydra.sweep.dir)) / "gpu_slots"
    folder.mkdir(parents=True, exist_ok=True)
    for slot in range(gpus):
        lock = FileLock(str(folder / f"gpu{slot}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue
        _gpu_lock = lock
        break
    else:
        slot = os.getpid() % gpus  # more workers than GPUs: share, spread by pid
    os.environ["CUDA_VISIBLE_DEVICES"] = str(slot)
    log.info("GPU slot %d (CUDA_VISIBLE_DEVICES=%d) for this worker", slot, slot)
