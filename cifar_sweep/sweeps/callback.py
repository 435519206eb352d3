"""The Hydra callback that makes a multirun one sweep: a parent run, a summary, an exit status.

Where each hook runs (Hydra 1.3, hydra/_internal/hydra.py and hydra/core/utils.py):
- `on_multirun_start` / `on_multirun_end`: the launching process, before the sweeper exists and
  after it returns. Every job is composed and checked here first (`refused_jobs`): a sweep with a
  job that could never start is refused whole, listing those jobs, before anything runs or is
  recorded, as a single run with that config would be. Then the store, the experiment and the
  parent run are created, once, before any job starts: no migration race, no run filed in the
  wrong experiment.
- `on_job_start` / `on_job_end`: around the task function, in the process that runs the job (a
  joblib worker, a submitit job). The job writes its own record; `on_job_end` only completes it
  from Hydra's JobReturn when the task ended before it could (a refused config, an error).
- Hydra swallows an `Exception` raised by a callback (it only warns), but not `SystemExit`: the
  non-zero exit of a sweep with failed jobs is a `sys.exit` in `on_multirun_end`, after the summary
  is printed and logged. An atexit safety net still ends the parent run if the sweep dies some
  other way (Ctrl-C).

Killed hard (SIGKILL), the launching process can end nothing. So its parent run carries the pid,
host and a heartbeat (`cifar-sweep-reap` ends it KILLED), a relaunch of the same sweep ends the dead
parent KILLED and makes its own (one parent per launch: its summary, its sweep folder and the
`sweep_id` its jobs share belong to that launch, as after Ctrl-C), and a job in a process of its own
stops when the launcher is gone (`watchdog`). A relaunch whose every job already has a FINISHED run
makes no parent at all (`relaunch`).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shlex
import socket
import sys
import time
from dataclasses import asdict
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cifar_sweep.errors import CifarSweepError
from cifar_sweep.sweeps.dry_run import dry_run, grid_jobs, refused_jobs
from cifar_sweep.sweeps.gpu_slots import SLOTS_DIR, claim_job_gpu, register_resolvers
from cifar_sweep.sweeps.job import in_multirun, launcher_of
from cifar_sweep.sweeps.records import (COMMAND, FAILURES, NOT_RUN, JobRecord, read_job_records, read_record,
                                        state_dir, summary_text, write_json, write_record)
from cifar_sweep.sweeps.slurm import check_slurm

log = logging.getLogger("cifar_sweep")


class SweepCallback(Callback):
    """Configured in train.yaml under hydra.callbacks."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.tracking_uri: str | None = None
        self.sweep_dir: str | None = None
        self.expected: list[list[str]] | None = None
        self.started = 0.0
        self.done = False
        self.heartbeat = None  # the parent's, while this process runs the sweep

    def __getstate__(self) -> dict[str, Any]:
        # Hydra pickles its callbacks into every joblib job; the heartbeat thread stays here.
        return {**self.__dict__, "heartbeat": None}

    # Launch side ---------------------------------------------------------------------------------

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from cifar_sweep.config.rules import keep_literal_names

        register_resolvers()  # the GPUs of hydra/launcher=local, resolved when the launcher starts

        keep_literal_names(config, config.hydra.overrides.task)
        if OmegaConf.select(config, "sweep.dry_run"):
            try:
                text = dry_run(config)
            except Exception as err:  # noqa: BLE001  a callback's error would only be a warning
                raise SystemExit(f"dry run failed: {type(err).__name__}: {err}") from err
            print(text, flush=True)
            raise SystemExit(0)  # Hydra lets SystemExit through: no sweeper, no job, no run
        try:
            refused = refused_jobs(config)
        except Exception as err:  # noqa: BLE001  Hydra would only warn, and the sweep run with no parent
            raise SystemExit(f"cifar_sweep: could not check the sweep's jobs: {type(err).__name__}: {err}") from err
        if refused:
            shown = refused[:20] + ([f"... and {len(refused) - 20} more"] if len(refused) > 20 else [])
            raise SystemExit("cifar_sweep: the sweep was refused, nothing was run; these would fail before "
                             "training:\n  {}\nfix or leave out these values, then run the sweep again".format(
                                 "\n  ".join(shown)))
        try:
            check_slurm(config)  # no sbatch, no such partition: refused before a parent run exists
            if self._nothing_to_run(config):
                raise SystemExit(0)
            self._start_parent(config)
        except CifarSweepError as err:  # a read-only or damaged store: the one line that says so
            raise SystemExit(f"cifar_sweep: {err.one_line()}") from None
        except Exception as err:  # noqa: BLE001
            from cifar_sweep.tracking.reaping import first_line

            raise SystemExit(f"cifar_sweep: could not prepare the MLflow store {config.tracking.uri!s} for the sweep: "
                             f"{type(err).__name__}: {first_line(err)}") from None

    def _nothing_to_run(self, config: DictConfig) -> bool:
        from cifar_sweep.sweeps.relaunch import finished_runs, nothing_to_run_line

        run_ids = finished_runs(config)
        if run_ids is None:
            return False
        print(nothing_to_run_line(run_ids), flush=True)
        return True

    def _start_parent(self, config: DictConfig) -> None:
        from cifar_sweep.config.paths import repo_root
        from cifar_sweep.tracking.run import git_commit
        from cifar_sweep.tracking.store import preflight
        from cifar_sweep.tracking.sweep_runs import ParentHeartbeat, create_parent_run

        self.started = time.time()
        self.tracking_uri = str(config.tracking.uri)
        # A read-only or unreachable store is refused in its one line before MLflow tries a write
        # (and logs its own ERROR with a traceback first).
        preflight(self.tracking_uri)
        self.sweep_dir = str(config.hydra.sweep.dir)
        try:
            self.expected = grid_jobs(config)
        except Exception:  # noqa: BLE001  the sweeper reports a bad override itself, better
            self.expected = None
        choices = config.hydra.runtime.choices
        tags = {
            "sweep_parent": "true",
            "sweep_id": self.sweep_dir,
            "sweep_command": " ".join([COMMAND, *(shlex.quote(a) for a in sys.argv[1:])])[:5000],
            "sweeper": choices.get("hydra/sweeper"),
            "launcher": choices.get("hydra/launcher"),
            "jobs_planned": len(self.expected) if self.expected is not None else None,
            "sweep_key": sweep_key(config),
            # Who launched it, as a job's run says who trains it: `cifar-sweep-reap` and a relaunch
            # tell a dead launch from a live one by these (and by the heartbeat on another host).
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "mlflow.source.name": "cifar_sweep.sweeps",
            "mlflow.source.git.commit": git_commit(repo_root()),
        }
        name = "sweep " + " ".join(str(o) for o in config.hydra.overrides.task)
        parent = create_parent_run(self.tracking_uri, str(config.tracking.experiment), name, tags)
        self.parent_run_id = parent.run_id
        write_json(state_dir(self.sweep_dir) / "parent.json", {
            "run_id": self.parent_run_id, "tracking_uri": self.tracking_uri, "experiment_id": parent.experiment_id,
            "launcher_pid": os.getpid(), "launcher_host": socket.gethostname(),
        })
        self.heartbeat = ParentHeartbeat(self.tracking_uri, self.parent_run_id).start()
        atexit.register(self._abandoned)
        log.info("sweep parent run %s in %s (experiment %s)%s", self.parent_run_id, self.tracking_uri,
                 config.tracking.experiment, f", {len(self.expected)} jobs" if self.expected is not None else "")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_run_id is None or self.done:
            return
        records = self._finish(interrupted=False)
        failed = [r for r in records if r.failed]
        if failed or not records:
            sys.exit(f"cifar_sweep: {len(failed)} of {len(records)} jobs failed (see the summary above)"
                     if records else "cifar_sweep: the sweep ran no job (see the errors above)")

    def _abandoned(self) -> None:
        """atexit: the sweep died before on_multirun_end (Ctrl-C, a launcher error): still end the parent."""
        if self.parent_run_id is not None and not self.done:
            try:
                self._finish(interrupted=True)
            except Exception:  # noqa: BLE001
                log.exception("could not end the sweep's parent run %s", self.parent_run_id)

    # Job side ------------------------------------------------------------------------------------

    def on_job_start(self, config: DictConfig, *, task_function: Any, **kwargs: Any) -> None:
        if in_multirun(config.hydra):
            from cifar_sweep.sweeps.watchdog import watch_launcher

            claim_job_gpu(config, state_dir(str(config.hydra.sweep.dir)) / SLOTS_DIR)
            # A job in a process of its own (a loky worker, a submitit job) stops with its launcher.
            watch_launcher(*launcher_of(str(config.hydra.sweep.dir)))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not in_multirun(config.hydra):
            return
        sweep_dir, num = str(config.hydra.sweep.dir), int(config.hydra.job.num)
        record = read_record(sweep_dir, num) or JobRecord(num, [str(o) for o in config.hydra.overrides.task],
                                                          "FAILED", output_dir=str(config.hydra.runtime.output_dir))
        if job_return.status != JobStatus.COMPLETED:
            err = job_return._return_value
            record.status = "KILLED" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "FAILED"
            record.error = f"{type(err).__name__}: {err}"
            write_record(sweep_dir, record)
            # Hydra only re-raises the first error at the very end: say it now, in the job's own log too.
            log.error("job #%d failed: %s", num, record.error,
                      exc_info=(type(err), err, err.__traceback__) if isinstance(err, BaseException) else None)

    # Summary -------------------------------------------------------------------------------------

    def _finish(self, interrupted: bool) -> list[JobRecord]:
        from cifar_sweep.tracking.sweep_runs import end_parent_run

        self.done = True
        if self.heartbeat is not None:
            self.heartbeat.stop()
        records = self._collect()
        failed = [r for r in records if r.failed]
        text = summary_text(records, self.parent_run_id, interrupted)
        print(text, flush=True)
        counts = {s: sum(r.status == s for r in records) for s in ("FINISHED", "SKIPPED", "PRUNED", NOT_RUN) + FAILURES}
        metrics = {f"jobs_{k.lower()}": v for k, v in counts.items()}
        metrics |= {"jobs_total": len(records), "sweep_time_s": time.time() - self.started}
        values = [r.best_val_acc for r in records if r.best_val_acc is not None and not r.failed]
        if values:  # a name of its own: sorting the runs table by best_val_acc lists jobs only
            metrics["sweep_best_val_acc"] = max(values)
        status = "KILLED" if interrupted else ("FAILED" if failed or not records else "FINISHED")
        end_parent_run(self.tracking_uri, self.parent_run_id, status, metrics, text, [asdict(r) for r in records])
        return records

    def _collect(self) -> list[JobRecord]:
        """Job records from the sweep folder, checked against the child runs in MLflow."""
        from cifar_sweep.tracking.sweep_runs import children

        records = read_job_records(self.sweep_dir)
        runs = children(self.tracking_uri, self.parent_run_id)
        by_id = {run.run_id: run for run in runs}
        for run in runs:
            if run.job_num is not None and run.job_num not in records:
                records[run.job_num] = JobRecord(run.job_num, [], "MISSING", run_id=run.run_id,
                                                 error="the job's process ended without reporting")
        for record in records.values():
            run = by_id.get(record.run_id or "")
            if record.status == "RUNNING":  # the job never got to say how it ended
                record.status = "KILLED"
                record.error = record.error or (run.failure_reason if run else None) or "interrupted"
            if run is None:
                continue
            if record.status in ("FINISHED", "PRUNED") and run.status != "FINISHED":
                record.status = run.status
            if record.best_val_acc is None:
                record.best_val_acc = run.best_val_acc
            if record.failed and not record.error:
                record.error = run.failure_reason
        for num, overrides in enumerate(self.expected or []):
            if num not in records:
                records[num] = JobRecord(num, list(overrides), NOT_RUN, error="not run (the sweep stopped first)")
        return [records[k] for k in sorted(records)]


def sweep_key(config: DictConfig) -> str:
    """What makes two launches the same sweep: the sweeper, its search space and the command line's
    overrides (the experiment is where the key is looked up). Hydra's own overrides (a launcher,
    hydra.sweeper.n_trials) say how to run it, not which sweep it is."""
    sweeper = OmegaConf.select(config, "hydra.sweeper")
    params = OmegaConf.to_container(sweeper.params, resolve=False) if sweeper and sweeper.get("params") else {}
    key = {"sweeper": str(OmegaConf.select(config, "hydra.sweeper._target_") or ""), "params": params,
           "overrides": [str(o) for o in config.hydra.overrides.task]}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
