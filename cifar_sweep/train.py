"""`cifar-sweep`: the Hydra entry point and the one module that reads the composed config.

Short stages hand plain values to the library: `train` checks and resolves the config once and
sets up the run, `open_run` starts (or resumes) its MLflow run, `fit` builds the data, the network
and the optimizer and runs the epochs, `finish` evaluates and logs the results. The run's
lifecycle (tracking/lifecycle.py) wraps `fit`: FINISHED on success, FAILED with a `failure_reason` on any error, KILLED on
Ctrl-C or SIGTERM. Torch and MLflow load only once the config is known to be valid, so a bad
config fails in a second.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from cifar_sweep.config import paths, rules, schema  # noqa: F401  schema: registers the typed config
from cifar_sweep.config.identity import dataset_name, flatten, run_name
from cifar_sweep.errors import CifarSweepError
from cifar_sweep.sweeps.job import SweepJob
from cifar_sweep.sweeps.naming import sweep_label, varying_keys
from cifar_sweep.sweeps.records import RERUN_OF_ENV, command_line
from cifar_sweep.sweeps.slurm import slurm_tags

log = logging.getLogger("cifar_sweep")

paths.register_resolvers()


@dataclass(frozen=True)
class JobInfo:
    """What Hydra knows about this job, as plain values (empty outside a Hydra app, e.g. in tests)."""

    choices: Mapping[str, str | None]
    overrides: tuple[str, ...]

    @classmethod
    def from_hydra(cls) -> "JobInfo":
        if not HydraConfig.initialized():
            return cls({}, ())
        hc = HydraConfig.get()
        return cls(choices=dict(hc.runtime.choices), overrides=tuple(hc.overrides.task))


def build_tags(cfg: DictConfig, job: JobInfo, hw, identity, sweep_job: SweepJob | None) -> dict[str, Any]:
    import torch

    from cifar_sweep.tracking.run import git_commit

    reported = cfg.reported or {}
    return {
        **{group: job.choices.get(group) for group in ("model", "optimizer", "schedule", "data")},
        "experiment_preset": job.choices.get("experiment"),
        "device": str(hw.device),
        "device_name": hw.name,
        "threads": hw.threads,
        "precision": hw.precision,
        "config_hash": identity.config_hash,
        # The line that runs this job again alone (a sweep job's own overrides included).
        "command": command_line(list(job.overrides))[:5000],
        "rerun_of": os.environ.get(RERUN_OF_ENV) or None,
        "sweep_id": sweep_job.sweep_id if sweep_job else None,
        "job_num": sweep_job.job_num if sweep_job else None,
        # Other jobs of the sweep on this GPU now: their timings are contended, and the comparison says so.
        "device_shared_by": sweep_job.device_shared_by(hw.device) if sweep_job else None,
        "sweep": sweep_label(sweep_job.sweep_dir) if sweep_job else None,  # the UI's sweep column
        "reported_acc": reported.get("test_acc"),
        "reported_source": reported.get("source"),
        "mlflow.source.git.commit": git_commit(paths.repo_root()),
        "mlflow.source.name": "cifar_sweep.train",
        # Who runs it, so `cifar-sweep-reap` can tell a dead process's run from a live one.
        "host": socket.gethostname(),
        "pid": os.getpid(),
        **slurm_tags(),  # slurm_job_id, slurm_restarts: the SLURM job that trains it, if any
        # Where an unfinished run's checkpoints are, and where it leaves an end the store refused.
        "checkpoint_dir": str(identity.checkpoint_dir),
        "versions.torch": torch.__version__,
        "versions.python": sys.version.split()[0],
    }


def train(cfg: DictConfig) -> float:
    """Run one job and return its best validation accuracy (what a sweeper maximises)."""
    from cifar_sweep.training.phases import Phases

    phases = Phases()
    job = JobInfo.from_hydra()
    rules.keep_literal_names(cfg, job.overrides)
    rules.validate(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    sweep_job = SweepJob.current(str(cfg.tracking.uri))
    dataset = dataset_name(resolved["data"], job.choices.get("data"))
    name = cfg.tracking.run_name or run_name(job.choices, job.overrides, dataset,
                                             varying_keys(sweep_job.sweep_dir) if sweep_job else ())
    if sweep_job is None and cfg.sweep.dry_run:
        print(f"dry run: would run {name!r} (seed {cfg.seed}); nothing was run")
        return float("nan")
    # Heavy imports only now: a bad config or data path fails before torch and MLflow load.
    from cifar_sweep.training.device import setup_hardware
    from cifar_sweep.tracking.lifecycle import run_lifecycle
    from cifar_sweep.tracking.store import sqlite_path
    from cifar_sweep.training.resume import FolderLock, RunIdentity

    rules.check_targets_exist(cfg)
    threads = cfg.trainer.threads if cfg.trainer.threads is not None else (sweep_job and sweep_job.default_threads)
    hw = setup_hardware(cfg.trainer.device, cfg.trainer.precision, threads)
    identity = RunIdentity.of(resolved, str(hw.device), Path(cfg.paths.runs), cfg.tracking.experiment,
                              precision=hw.precision)
    tags = {**build_tags(cfg, job, hw, identity, sweep_job), "dataset": dataset}
    previous = already_finished(cfg, sweep_job, identity)
    if previous is not None:
        return previous
    lock = FolderLock(identity.checkpoint_dir)
    lock.acquire(f" (config_hash {identity.config_hash}, seed {cfg.seed})")
    try:
        tracker, found = open_run(cfg, resolved, identity, tags, name, sweep_job)
        tracker.on_unrecorded_end = lambda status, reason: lock.leave_end(tracker.run_id, status, reason)
        log.info("MLflow run %s (%s) in %s; device %s (%s), precision %s, %d threads",
                 tracker.run_id, name, cfg.tracking.uri, hw.device, hw.name, hw.precision, hw.threads)
        with run_lifecycle(tracker, store_path=sqlite_path(str(cfg.tracking.uri))):
            if cfg.tracking.system_metrics_s:
                tracker.start_system_metrics(cfg.tracking.system_metrics_s, resumed=found is not None)
            best, pruned = fit(cfg, hw, tracker, identity, found, sweep_job, dataset, phases)
        log.info("reproduce run %s with: %s", tracker.run_id[:8], tags["command"])
        if sweep_job is not None:
            sweep_job.record("PRUNED" if pruned else "FINISHED", run_id=tracker.run_id, best_val_acc=best)
        # The weights are in MLflow now; the resume checkpoints of a finished run only take disk space.
        shutil.rmtree(identity.checkpoint_dir, ignore_errors=True)
    finally:
        lock.release()
    return best


def already_finished(cfg: DictConfig, sweep_job: SweepJob | None, identity) -> float | None:
    """A sweep job that a FINISHED run already did is skipped: that run's best val_acc, else None."""
    if sweep_job is None or cfg.sweep.force:
        return None
    previous = sweep_job.finished_run(cfg.tracking.experiment, identity, rerun_pruned=cfg.sweep.rerun_pruned)
    if previous is None:
        return None
    log.info("skipping: run %s already FINISHED this job (config_hash %s, seed %s, device %s); "
             "sweep.force=true reruns it", previous.run_id, identity.config_hash, cfg.seed, identity.device)
    sweep_job.record("SKIPPED", run_id=previous.run_id, best_val_acc=previous.best_val_acc)
    return previous.best_val_acc


def open_run(cfg: DictConfig, resolved: dict, identity, tags: dict, name: str, sweep_job: SweepJob | None):
    """Start the run, or reopen the interrupted one this checkpoint belongs to; log its config once."""
    from cifar_sweep.tracking.run import RunTracker
    from cifar_sweep.training.resume import find_resume

    uri = str(cfg.tracking.uri)
    found = find_resume(identity, cfg.resume, lambda run_id: RunTracker.status_of(uri, run_id))
    if found is not None:  # continue the interrupted run: same MLflow run, same params
        tracker = RunTracker.reopen(uri, found.state["run_id"])
        tracker.set_tags({k: tags[k] for k in ("device", "device_name", "threads", "precision", "host", "pid",
                                               "checkpoint_dir", "slurm_job_id", "slurm_restarts")})
        tracker.set_tags({"resumed_from_epoch": found.state["epoch"],
                          "resume_warning": "; ".join(found.skipped) or None,
                          "resumed_by_sweep": sweep_job.sweep_id if sweep_job else None})
    else:
        parent = sweep_job.parent_run_id if sweep_job else None
        tracker = RunTracker.start(uri, cfg.tracking.experiment, name, tags, parent_run_id=parent)
        tracker.log_params(flatten({k: v for k, v in resolved.items() if k != "paths"}))
        tracker.log_text(OmegaConf.to_yaml(resolved), "config.yaml")
    if sweep_job is not None:
        sweep_job.record("RUNNING", run_id=tracker.run_id)
    return tracker, found


def fit(cfg: DictConfig, hw, tracker, identity, found, sweep_job: SweepJob | None,
        dataset: str, phases) -> tuple[float, bool]:
    """Assemble the run, run its epochs with the tracker's hooks, log the results; (best val_acc, pruned)."""
    from cifar_sweep.assembly import assemble_run
    from cifar_sweep.sweeps.prune_hook import PruneHook
    from cifar_sweep.tracking.epoch_log import EpochLog, chain, step_logger
    from cifar_sweep.training.progress import EpochProgress

    phases.add("setup", time.perf_counter() - phases.started)
    started = time.perf_counter()
    t = cfg.trainer
    with phases("data"):
        run = assemble_run(cfg, hw)
    with phases("logging"):
        log_build(tracker, run, dataset, first_time=found is None)
    epochs = EpochLog(tracker, run.history, run.bundle.val.images, run.bundle.classes, run.bundle.val_is_test,
                      cfg.tracking.grid_tiles if cfg.tracking.misclassified_grid else None)
    if found is not None:
        run.resume_from(found)
        epochs.backfill()
        log.info("resumed from %s after epoch %d", found.path, len(run.history) - 1)
    # Time the earlier processes of a resumed run spent, so the total covers every epoch trained.
    earlier_s = run.history[-1]["elapsed_s"] if run.history else 0.0
    pruner = sweep_job.pruner(tracker.run_id, cfg.sweep.pruning, t.epochs) if sweep_job else None
    prune = PruneHook(pruner, tracker, t.epochs) if pruner is not None else None

    first = len(run.history)
    with phases("training"):
        last = run.run_epochs(
            identity.checkpoint_dir, lambda h: run.trainee.state(h, tracker.run_id, identity.record()),
            chain(phases.timed("logging", epochs), phases.timed("pruning", prune)),
            progress=lambda batches, epoch: EpochProgress(batches, epoch, t.progress),
            step_hook=lambda epoch: phases.timed("logging", step_logger(tracker, t.log_every_n_steps, epoch,
                                                                         len(run.batches))),
        )
    # The epochs' validation passes ran inside the training phase; they are evaluation.
    phases.move("training", "evaluation", sum(h.get("eval_time_s", 0.0) for h in run.history[first:]))
    best = finish(cfg, tracker, run, epochs, last, phases, in_sweep=sweep_job is not None)
    here = time.perf_counter() - started
    log.info("epochs and end of run: total %.1f s%s", earlier_s + here, f" ({here:.1f} s in this process, resumed)" if earlier_s else "")
    return best, prune is not None and prune.pruned_at is not None


def log_build(tracker, run, dataset: str, first_time: bool) -> None:
    """What the build tells about the run: data statistics and input (once), the model summary."""
    from cifar_sweep.models import count_params
    from cifar_sweep.tracking.dataset_input import log_dataset_input

    bundle = run.bundle
    if first_time:  # the statistics the model was trained with (cifar-featuremaps reuses them)
        tracker.log_params({"data.mean": [round(float(v), 6) for v in bundle.mean],
                            "data.std": [round(float(v), 6) for v in bundle.std]})
        log_dataset_input(tracker, dataset, bundle, OmegaConf.select(run.cfg, "data.root"))
    log.info("data: %s; %d train / %d val%s / %d test images, %d classes",
             bundle.source, len(bundle.train.labels), len(bundle.val.labels),
             " (= test)" if bundle.val_is_test else "", len(bundle.test.labels), len(bundle.classes))
    print(run.summary, flush=True)
    tracker.log_text(run.summary, "model_summary.txt")
    tracker.set_tags({"n_params": count_params(run.model),
                      "n_params_frozen": count_params(run.model, trainable=False)})


def diagnostics_options(cfg: DictConfig, in_sweep: bool):
    """The diagnostics block, `figures: auto` decided: a sweep's many short jobs skip the drawing."""
    options = OmegaConf.to_object(cfg.diagnostics)
    if options.figures == "auto":
        options.figures = not in_sweep
    return options


def finish(cfg: DictConfig, tracker, run, epochs, last, phases, in_sweep: bool) -> float:
    """Test the weights, log the summary metrics, the diagnostics and the final weights."""
    from cifar_sweep.analysis.diagnostics import log_test_diagnostics
    from cifar_sweep.training.loop import timing_summary

    history, hw, bundle = run.history, run.hw, run.bundle
    test_set = run.test_set()
    with phases("evaluation"):
        # No held-out split: the last epoch's evaluation was of these weights on the test split.
        test = last if bundle.val_is_test and last is not None else test_set.evaluate(run.trainee.eval_model, hw)
    best_epoch = max(range(len(history)), key=lambda e: history[e]["val_acc"])
    best_acc = history[best_epoch]["val_acc"]
    timing = timing_summary(history)
    with phases("diagnostics"):
        # Per-class accuracy, misclassified table, confusion matrix, PR curves, embedding: of the
        # weights the test accuracy was measured with (the weight average when there is one).
        log_test_diagnostics(tracker, run.trainee.eval_model, test, test_set.images, bundle.classes, run.standardize,
                             hw, diagnostics_options(cfg, in_sweep), source_index=bundle.test.source_index)
    with phases("logging"):
        epochs.log_epochs_file()
        if cfg.tracking.checkpoint:
            tracker.log_weights(run.trainee.eval_model)
        tracker.log_metrics({"best_val_acc": best_acc, "best_epoch": best_epoch, "test_acc": test.acc,
                             "test_loss": test.loss, **timing.metrics()})
    tracker.log_metrics(phases.metrics())
    log.info("test accuracy %.4f (best val %.4f at epoch %d), %s", test.acc, best_acc, best_epoch, timing.describe())
    log.info("seconds by phase (%.1f s in all): %s", phases.elapsed(), phases.describe())
    return best_acc


@hydra.main(config_path=paths.CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    try:
        return train(cfg)
    except CifarSweepError as err:
        # One line for a single run; in a sweep the error must stay an exception so that Hydra
        # records the job as failed and the other jobs go on.
        if SweepJob.current(str(cfg.tracking.uri)) is None:
            raise SystemExit(f"cifar-sweep: {err.one_line()} (HYDRA_FULL_ERROR=1 shows the traceback)") from None
        raise


def cli() -> None:
    """`cifar-sweep`: a mistyped key gets the key it was meant to be, before Hydra composes
    anything (Hydra's own advice, "use +key=value", would only lead to the schema's refusal)."""
    from cifar_sweep.config.keys import unknown_key_message, unknown_override_keys
    from cifar_sweep.python_support import require_supported_python

    require_supported_python("cifar-sweep")
    unknown = unknown_override_keys(sys.argv[1:])
    if unknown:
        raise SystemExit("cifar-sweep: " + "; ".join(unknown_key_message(k) for k in dict.fromkeys(unknown)))
    main()


if __name__ == "__main__":
    # Run the function of the importable module, not of `__main__`: the joblib and submitit
    # launchers pickle the task function, and `__main__`'s would be pickled by value (and fail on torch).
    from cifar_sweep.train import cli as _importable_cli

    _importable_cli()
