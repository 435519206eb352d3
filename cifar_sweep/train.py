"""`cifar-sweep`: the Hydra entry point and the one module that reads the composed config.

Short stages hand plain values to the library: `train` checks and resolves the config once and
sets up the run, `open_run` starts (or resumes) its MLflow run, `fit` builds the data, the network
and the optimizer and runs the epochs, `finish` evaluates and logs the results. The run's
lifecycle (tracking/lifecycle.py) wraps `fit`: FINISHED on success, FAILED with a `failure_reason` on any error, KILLED on
Ctrl-C or SIGTERM. Torch and MLflow load only once the config is known to be valid, so a bad
config fails in a second.
"""

from __future__ import annotations

import json
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
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cifar_sweep.config import paths, rules, schema  # noqa: F401  schema: registers the typed config
from cifar_sweep.config.identity import dataset_name, flatten, run_name
from cifar_sweep.sweeps.job import SweepJob

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
        "sweep_id": sweep_job.sweep_id if sweep_job else None,
        "job_num": sweep_job.job_num if sweep_job else None,
        "warmup_epoch": 0,
        "reported_acc": reported.get("test_acc"),
        "reported_source": reported.get("source"),
        "mlflow.source.git.commit": git_commit(paths.repo_root()),
        "mlflow.source.name": "cifar_sweep.train",
        # Who runs it, so `cifar-sweep-reap` can tell a dead process's run from a live one.
        "host": socket.gethostname(),
        "pid": os.getpid(),
        # Where an unfinished run's checkpoints are, and where it leaves an end the store refused.
        "checkpoint_dir": str(identity.checkpoint_dir),
        "versions.torch": torch.__version__,
        "versions.python": sys.version.split()[0],
    }


def train(cfg: DictConfig) -> float:
    """Run one job and return its best validation accuracy (what a sweeper maximises)."""
    job = JobInfo.from_hydra()
    rules.keep_literal_names(cfg, job.overrides)
    rules.validate(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    sweep_job = SweepJob.current(str(cfg.tracking.uri))
    dataset = dataset_name(resolved["data"], job.choices.get("data"))
    name = cfg.tracking.run_name or run_name(job.choices, job.overrides, dataset)
    if sweep_job is None and cfg.sweep.dry_run:
        print(f"dry run: would run {name!r} (seed {cfg.seed}); nothing was run")
        return float("nan")
    # Heavy imports only now: a bad config or data path fails before torch and MLflow load.
    from cifar_sweep.training.device import setup_hardware
    from cifar_sweep.tracking.lifecycle import run_lifecycle
    from cifar_sweep.tracking.store import sqlite_path
    from cifar_sweep.training.resume import FolderLock, RunIdentity

    threads = cfg.trainer.threads if cfg.trainer.threads is not None else (sweep_job and sweep_job.default_threads)
    hw = setup_hardware(cfg.trainer.device, cfg.trainer.precision, threads)
    identity = RunIdentity.of(resolved, str(hw.device), Path(cfg.paths.runs), cfg.tracking.experiment)
    tags = {**build_tags(cfg, job, hw, identity, sweep_job), "dataset": dataset}
    if sweep_job is not None and not cfg.sweep.force:
        previous = sweep_job.finished_run(cfg.tracking.experiment, identity)
        if previous is not None:
            log.info("skipping: run %s already FINISHED this job (config_hash %s, seed %s, device %s); "
                     "sweep.force=true reruns it", previous.run_id, identity.config_hash, cfg.seed, identity.device)
            sweep_job.record("SKIPPED", run_id=previous.run_id, best_val_acc=previous.best_val_acc)
            return previous.best_val_acc
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
            best, pruned = fit(cfg, hw, tracker, identity, found, sweep_job, dataset)
        if sweep_job is not None:
            sweep_job.record("PRUNED" if pruned else "FINISHED", run_id=tracker.run_id, best_val_acc=best)
        # The weights are in MLflow now; the resume checkpoints of a finished run only take disk space.
        shutil.rmtree(identity.checkpoint_dir, ignore_errors=True)
    finally:
        lock.release()
    return best


def open_run(cfg: DictConfig, resolved: dict, identity, tags: dict, name: str, sweep_job: SweepJob | None):
    """Start the run, or reopen the interrupted one this checkpoint belongs to; log its config once."""
    from cifar_sweep.tracking.run import RunTracker
    from cifar_sweep.training.resume import find_resume

    uri = str(cfg.tracking.uri)
    found = find_resume(identity, cfg.resume, lambda run_id: RunTracker.status_of(uri, run_id))
    if found is not None:  # continue the interrupted run: same MLflow run, same params
        tracker = RunTracker.reopen(uri, found.state["run_id"])
        tracker.set_tags({k: tags[k] for k in ("device", "device_name", "threads", "precision", "host", "pid",
                                               "checkpoint_dir")})
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


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fit(cfg: DictConfig, hw, tracker, identity, found, sweep_job: SweepJob | None,
        dataset: str) -> tuple[float, bool]:
    """Build everything from the config, run the epochs, log the results; (best val_acc, pruned)."""
    import torch

    from cifar_sweep.data.augment import Augment
    from cifar_sweep.data.options import loader_kwargs
    from cifar_sweep.data.batches import Standardize, TrainBatches
    from cifar_sweep.models import count_params
    from cifar_sweep.models.summary import model_summary
    from cifar_sweep.tracking.dataset_input import log_dataset_input
    from cifar_sweep.training.averaging import weight_average
    from cifar_sweep.training.loop import EvalSet, Trainee, run_epochs

    started = time.perf_counter()
    t = cfg.trainer
    seed_everything(cfg.seed)
    bundle = instantiate(loader_kwargs(cfg.data), seed=cfg.seed)
    if found is None:  # the statistics the model was trained with (cifar-featuremaps reuses them)
        tracker.log_params({"data.mean": [round(float(v), 6) for v in bundle.mean],
                            "data.std": [round(float(v), 6) for v in bundle.std]})
        log_dataset_input(tracker, dataset, bundle, OmegaConf.select(cfg, "data.root"))
    log.info("data: %s; %d train / %d val%s / %d test images, %d classes",
             bundle.source, len(bundle.train.labels), len(bundle.val.labels),
             " (= test)" if bundle.val_is_test else "", len(bundle.test.labels), len(bundle.classes))

    model = instantiate(cfg.model, num_classes=len(bundle.classes))
    summary = model_summary(model)
    print(summary, flush=True)
    tracker.log_text(summary, "model_summary.txt")
    tracker.set_tags({"n_params": count_params(model), "n_params_frozen": count_params(model, trainable=False)})
    model = model.to(hw.device, memory_format=torch.channels_last if t.channels_last else torch.contiguous_format)

    standardize = Standardize(bundle.mean, bundle.std, hw.device, t.channels_last)
    train_x, train_y = bundle.train.images.to(hw.device), bundle.train.labels.to(hw.device)
    model.init_from_data(standardize(train_x[:5000]))
    generator = torch.Generator(device=hw.device).manual_seed(cfg.seed)
    batches = TrainBatches(train_x, train_y, t.batch_size, standardize, Augment(**cfg.data.augment), generator,
                           limit_batches=t.limit_train_batches)
    optimizer = instantiate(cfg.optimizer)(model)
    total_steps = t.epochs * len(batches)
    trainee = Trainee(
        model=model, step_model=torch.compile(model) if t.compile else model, optimizer=optimizer,
        scheduler=instantiate(cfg.schedule)(optimizer, total_steps=total_steps), batches=batches, generator=generator,
        scaler=torch.amp.GradScaler(hw.device.type) if hw.precision == "fp16" else None,
        ema=weight_average(model, t.ema_decay, t.lookahead, total_updates=total_steps // t.ema_every),
    )
    val = EvalSet(bundle.val.images.to(hw.device), bundle.val.labels.to(hw.device), t.eval_batch_size,
                  standardize, t.tta_flip)

    history: list[dict[str, float]] = []
    logged: set[int] = set()
    if found is not None:
        history = trainee.restore(found)
        logged = tracker.logged_steps("val_acc")
        for epoch, metrics in enumerate(history):
            if epoch not in logged:  # epochs the checkpoint holds that the store lacks
                tracker.log_metrics(metrics, step=epoch)
                logged.add(epoch)
        log.info("resumed from %s after epoch %d", found.path, len(history) - 1)
    # Time the earlier processes of a resumed run spent, so the total covers every epoch trained.
    earlier_s = history[-1]["elapsed_s"] if history else 0.0

    pruner = sweep_job.pruner(tracker.run_id, cfg.sweep.pruning) if sweep_job else None
    pruned = []

    def on_epoch(epoch: int, metrics: dict[str, float], result) -> bool:
        # An epoch already in the store (resumed from the previous checkpoint) is not logged again.
        if epoch not in logged:
            tracker.log_metrics(metrics, step=epoch)
        tracker.set_tags({"heartbeat": round(time.time(), 1)})
        print(json.dumps(epoch_line(history, epoch, bundle.val_is_test)), flush=True)
        log.info("epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1f s, %.0f img/s",
                 epoch, metrics["train_loss"], metrics["train_acc"], metrics["val_loss"], metrics["val_acc"],
                 metrics["epoch_time_s"], metrics["images_per_s"])
        if cfg.tracking.misclassified_grid:
            log_misclassified_grid(tracker, bundle.val.images, result, bundle.classes, cfg.tracking.grid_tiles, epoch)
        if pruner is not None and epoch + 1 < t.epochs and pruner.should_stop(epoch, result.acc):
            log.info("pruned after epoch %d: val_acc %.4f is below the median %.4f of its sweep siblings",
                     epoch, result.acc, pruner.median)
            tracker.set_tags({"pruned": "true", "pruned_at_epoch": epoch, "pruned_median": round(pruner.median, 6)})
            pruned.append(epoch)
            return True
        return False

    last = run_epochs(
        trainee, hw, val, history, t.epochs, identity.checkpoint_dir,
        lambda h: trainee.state(h, tracker.run_id, identity.record()), on_epoch,
        label_smoothing=t.label_smoothing, ema_every=t.ema_every,
        progress=lambda b, epoch: progress_bar(b, epoch, t.progress),
        step_hook=lambda epoch: step_logger(tracker, t.log_every_n_steps, epoch, len(batches)),
    )
    best = finish(cfg, hw, tracker, trainee, bundle, standardize, history, last)
    here = time.perf_counter() - started
    log.info("total %.1f s%s", earlier_s + here, f" ({here:.1f} s in this process, resumed)" if earlier_s else "")
    return best, bool(pruned)


def finish(cfg: DictConfig, hw, tracker, trainee, bundle, standardize, history: list[dict], last) -> float:
    """Test the weights, log the summary metrics, the diagnostics and the final checkpoint."""
    from cifar_sweep.analysis.diagnostics import log_test_diagnostics
    from cifar_sweep.training.loop import EvalSet, timing_summary

    tracker.log_jsonl([epoch_line(history, e, bundle.val_is_test) for e in range(len(history))], "epochs.jsonl")
    test_x = bundle.test.images.to(hw.device)
    if bundle.val_is_test and last is not None:
        test = last  # no held-out split: the last epoch's evaluation was of these weights on the test split
    else:
        test = EvalSet(test_x, bundle.test.labels.to(hw.device), cfg.trainer.eval_batch_size, standardize,
                       cfg.trainer.tta_flip).evaluate(trainee.eval_model, hw)
    best_epoch = max(range(len(history)), key=lambda e: history[e]["val_acc"])
    best_acc = history[best_epoch]["val_acc"]
    timing = timing_summary(history)
    tracker.log_metrics({"best_val_acc": best_acc, "best_epoch": best_epoch, "test_acc": test.acc,
                         "test_loss": test.loss, **timing.metrics()})
    # Per-class accuracy, misclassified table, confusion matrix, PR curves, embedding: of the
    # weights the test accuracy was measured with (the weight average when there is one).
    log_test_diagnostics(tracker, trainee.eval_model, test, test_x, bundle.classes, standardize, hw,
                         OmegaConf.to_object(cfg.diagnostics))
    if cfg.tracking.checkpoint:
        log_final_weights(tracker, trainee.eval_model)
    log.info("test accuracy %.4f (best val %.4f at epoch %d), %s", test.acc, best_acc, best_epoch, timing.describe())
    return best_acc


def epoch_line(history: list[dict], epoch: int, val_is_test: bool) -> dict:
    """The ResNet exercise's per-epoch JSON line: epoch, accuracy, seconds since the start."""
    key = "test_acc" if val_is_test else "val_acc"
    return {"epoch": epoch, key: round(history[epoch]["val_acc"], 4), "time": round(history[epoch]["elapsed_s"], 2)}


def progress_bar(batches, epoch: int, show):
    if show == "auto":
        show = sys.stderr.isatty()
    if not show:
        return batches
    from tqdm import tqdm

    return tqdm(batches, total=len(batches), desc=f"epoch {epoch}", unit="batch", leave=False, dynamic_ncols=True)


def step_logger(tracker, every: int, epoch: int, steps_per_epoch: int):
    """Per-step loss every `every` steps (`train_loss_step`, step = global step)."""
    if not every:
        return None

    def hook(step: int, loss) -> None:
        if step % every == 0:
            tracker.log_metrics({"train_loss_step": loss.item()}, step=epoch * steps_per_epoch + step)

    return hook


def log_misclassified_grid(tracker, images, result, classes, tiles: int, epoch: int) -> None:
    from cifar_sweep.analysis.figures import misclassified_grid

    grid = misclassified_grid(images, result.labels, result.probs, classes, tiles)
    if grid is not None:
        tracker.log_image(grid, f"misclassified/epoch_{epoch:03d}.png")
        tracker.log_image_step(grid, "misclassified", epoch)  # the run page's image view steps through these


def log_final_weights(tracker, model) -> None:
    """The final weights as the run's `checkpoint/last.pt` artifact (the resume checkpoints with
    optimizer and RNG state stay under runs/checkpoints/ only while the run is unfinished)."""
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "last.pt"
        torch.save({"model": model.state_dict()}, path)
        tracker.log_file(path, "checkpoint")


def is_user_error(err: BaseException) -> bool:
    """A mistake the user fixes from its message alone (a config key, a data path, a store file)."""
    from cifar_sweep.data.errors import DataError

    store = sys.modules.get("cifar_sweep.tracking.store")
    resume = sys.modules.get("cifar_sweep.training.resume")
    checkpoint = sys.modules.get("cifar_sweep.training.checkpoint")
    kinds = (rules.ConfigError, DataError) + ((store.StoreError,) if store else ()) + ((resume.RunInUse,) if resume else ())
    kinds += (checkpoint.DiskFull,) if checkpoint else ()
    return isinstance(err, kinds)


@hydra.main(config_path=paths.CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    try:
        return train(cfg)
    except Exception as err:
        # One line for a single run; in a sweep the error must stay an exception so that Hydra
        # records the job as failed and the other jobs go on.
        if SweepJob.current(str(cfg.tracking.uri)) is None and is_user_error(err):
            hint = getattr(err, "hint", "")  # what to do, where the message alone does not say it
            raise SystemExit(f"cifar-sweep: {err}{hint} (HYDRA_FULL_ERROR=1 shows the traceback)") from None
        raise


if __name__ == "__main__":
    # Run the function of the importable module, not of `__main__`: the joblib and submitit
    # launchers pickle the task function, and `__main__`'s would be pickled by value (and fail on torch).
    from cifar_sweep.train import main as _importable_main

    _importable_main()
