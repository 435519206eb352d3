"""The training procedure of one run: the second half of the entry point (`cifar_sweep.train`).

Glue like `train.py` (it reads the composed config and builds from `_target_`s), kept apart so the
entry point starts in a second: torch, torchvision and MLflow load only once the config is known
to be valid. The library modules it drives (data, engine, tracking, reports, checkpoint) take
plain arguments.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cifar_sweep.training import checkpoint as ckpt
from cifar_sweep.sweeps import callback as sweep
from cifar_sweep.data.augment import Augment
from cifar_sweep.training.averaging import weight_average
from cifar_sweep.data.batches import Standardize, TrainBatches
from cifar_sweep.training.device import Hardware
from cifar_sweep.analysis.diagnostics import DiagnosticsOptions, log_test_diagnostics
from cifar_sweep.training.engine import EvalResult, evaluate, train_one_epoch
from cifar_sweep.analysis.figures import misclassified_grid
from cifar_sweep.config.identity import config_hash, hashed_items
from cifar_sweep.models.summary import count_params, model_summary
from cifar_sweep.tracking.run import RunTracker

log = logging.getLogger("cifar_sweep")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def find_resume(cfg: DictConfig, resolved: dict) -> ckpt.Found | None:
    """The checkpoint to continue from, per `resume`: auto (default) | true | false | a path.

    auto continues an unfinished run of this exact config and seed when its checkpoint exists;
    true insists on one; a path names a checkpoint folder or file. A checkpoint made with another
    config is refused with the differing keys; a damaged one falls back to the previous one.
    """
    mode = cfg.get("resume", "auto")
    if mode in (False, "false", None):
        return None
    explicit = mode not in (True, "true", "auto")
    path = Path(str(mode)).expanduser() if explicit else checkpoint_dir(cfg)
    if explicit and path.is_file():
        found = ckpt.Found(ckpt.read(path), path, ())
    else:
        found = ckpt.latest(path)
    if found is None:
        if mode == "auto":
            return None
        raise ValueError(f"resume={mode}: no checkpoint in {path}; run without resume=... to start fresh")
    current = {k: str(v) for k, v in hashed_items(resolved).items()} | {"seed": str(cfg.seed)}
    saved = dict(found.state.get("config", {})) | {"seed": str(found.state.get("seed"))}
    differing = ckpt.differing_keys(saved, current)
    if differing:
        raise ValueError(
            f"checkpoint {found.path} was made with a different config; differing keys: {', '.join(differing)}. "
            "Resume with the same config, or set resume=false to start a new run."
        )
    status = RunTracker.status_of(cfg.tracking.uri, found.state["run_id"])
    if status in (None, "FINISHED"):
        if mode == "auto":  # nothing to continue: that run completed (or was deleted)
            return None
        raise ValueError(f"resume={mode}: the run {found.state['run_id']} of {found.path} is {status or 'gone'}")
    return found


def fit(cfg: DictConfig, hw: Hardware, tracker: RunTracker, job, resume: ckpt.Found | None) -> float:
    """Train, evaluate and log one run into `tracker`; return its best validation accuracy."""
    started = time.perf_counter()
    seed_everything(cfg.seed)
    data_cfg = {k: v for k, v in cfg.data.items() if k != "augment"}
    bundle = instantiate(data_cfg, seed=cfg.seed)
    if resume is None:  # the statistics the model was trained with (cifar-featuremaps reuses them)
        tracker.log_params({"data.mean": [round(float(v), 6) for v in bundle.mean],
                            "data.std": [round(float(v), 6) for v in bundle.std]})
    log.info("data: %s; %d train / %d val%s / %d test images, %d classes",
             bundle.source, len(bundle.train.labels), len(bundle.val.labels),
             " (= test)" if bundle.val_is_test else "", len(bundle.test.labels), len(bundle.classes))

    model = instantiate(cfg.model, num_classes=len(bundle.classes))
    trainable, frozen = count_params(model)
    summary = model_summary(model)
    print(summary, flush=True)
    tracker.log_text(summary, "model_summary.txt")
    tracker.set_tags({"n_params": trainable, "n_params_frozen": frozen})
    memory_format = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    model = model.to(hw.device, memory_format=memory_format)

    standardize = Standardize(bundle.mean, bundle.std, hw.device, cfg.trainer.channels_last)
    train_x, train_y = bundle.train.images.to(hw.device), bundle.train.labels.to(hw.device)
    val_x, val_y = bundle.val.images.to(hw.device), bundle.val.labels.to(hw.device)
    if hasattr(model, "init_from_data"):
        model.init_from_data(standardize(train_x[:5000]))

    generator = torch.Generator(device=hw.device).manual_seed(cfg.seed)
    augment = Augment(**cfg.data.get("augment", {}))
    batches = TrainBatches(train_x, train_y, cfg.trainer.batch_size, standardize, augment, generator,
                           limit_batches=cfg.trainer.limit_train_batches)
    optimizer = instantiate(cfg.optimizer)(model)
    total_steps = cfg.trainer.epochs * len(batches)
    scheduler = instantiate(cfg.schedule)(optimizer, total_steps=total_steps)
    scaler = torch.amp.GradScaler(hw.device.type) if hw.precision == "fp16" else None
    step_model = torch.compile(model) if cfg.trainer.compile else model
    ema = weight_average(model, cfg.trainer.ema_decay, cfg.trainer.lookahead,
                         total_updates=total_steps // cfg.trainer.ema_every)
    eval_model = ema.module if ema is not None else model
    stateful = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "ema": ema, "scaler": scaler}

    # Per-epoch metrics so far: the one record that resumes, from which best/total are derived.
    history: list[dict[str, float]] = []
    if resume is not None:
        history = _restore(resume, stateful, generator, tracker)
    elapsed_before = history[-1]["elapsed_s"] if history else 0.0
    ckpt_dir = checkpoint_dir(cfg)
    identity = _config_identity(cfg)

    pruner = sweep.MedianPruner.from_config(cfg, tracker.client, tracker.run_id, job.sweep_id)  # issue 4
    val = None
    for epoch in range(len(history), cfg.trainer.epochs):
        if hasattr(model, "on_epoch_start"):  # per-epoch changes a network makes to itself (airbench)
            model.on_epoch_start(epoch)
        batches.set_epoch(epoch)
        try:
            stats = train_one_epoch(
                step_model, _progress(batches, epoch, cfg), optimizer, scheduler, hw, epoch,
                label_smoothing=cfg.trainer.label_smoothing, scaler=scaler,
                on_step=_step_logger(tracker, cfg, epoch, len(batches)), ema=ema, ema_every=cfg.trainer.ema_every,
            )
        except torch.OutOfMemoryError as err:
            _release_accelerator_memory(hw)  # so the next job in this process starts clean
            raise MemoryError(f"out of memory on {hw.device} at trainer.batch_size={cfg.trainer.batch_size}; "
                              "lower trainer.batch_size or use a smaller model") from err
        val = evaluate(eval_model, val_x, val_y, cfg.trainer.eval_batch_size, standardize, hw, cfg.trainer.tta_flip)
        metrics = {
            "train_loss": stats.loss, "train_acc": stats.acc, "val_loss": val.loss, "val_acc": val.acc,
            "lr": scheduler.get_last_lr()[0], "epoch_time_s": stats.seconds, "images_per_s": stats.images_per_s,
            "eval_time_s": val.seconds, "elapsed_s": elapsed_before + time.perf_counter() - started,
        }
        history.append(metrics)
        # Checkpoint before logging: a kill between the two re-logs this epoch from the checkpoint
        # on resume, never twice (see _restore).
        ckpt.save(ckpt_dir, _checkpoint_state(stateful, generator, history, tracker.run_id, identity))
        tracker.log_metrics(metrics, step=epoch)
        tracker.set_tags({"heartbeat": round(time.time(), 1)})
        print(json.dumps(_epoch_line(history, epoch, bundle.val_is_test)), flush=True)
        log.info("epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1f s, %.0f img/s",
                 epoch, stats.loss, stats.acc, val.loss, val.acc, stats.seconds, stats.images_per_s)
        if cfg.tracking.misclassified_grid:
            _log_grid(tracker, bundle.val.images, val, bundle.classes, cfg.tracking.grid_tiles,
                      f"misclassified/epoch_{epoch:03d}.png")
        # -- sweeps (issue 4): median pruning; the run stops early and still ends FINISHED ------------
        if pruner is not None and epoch + 1 < cfg.trainer.epochs and pruner.should_stop(epoch, val.acc):
            log.info("pruned after epoch %d: val_acc %.4f is below the median %.4f of its sweep siblings",
                     epoch, val.acc, pruner.median)
            tracker.set_tags({"pruned": "true", "pruned_at_epoch": epoch, "pruned_median": round(pruner.median, 6)})
            sweep.note_job(pruned=True)
            break
    tracker.log_jsonl([_epoch_line(history, e, bundle.val_is_test) for e in range(len(history))], "epochs.jsonl")

    if bundle.val_is_test and val is not None:
        test = val  # no held-out split: the last epoch's evaluation was of these weights on the test split
    else:
        test = evaluate(eval_model, bundle.test.images.to(hw.device), bundle.test.labels.to(hw.device),
                        cfg.trainer.eval_batch_size, standardize, hw, cfg.trainer.tta_flip)
    best_epoch = max(range(len(history)), key=lambda e: history[e]["val_acc"])
    best_acc = history[best_epoch]["val_acc"]
    train_time = sum(h["epoch_time_s"] for h in history)
    tracker.log_metrics({
        "best_val_acc": best_acc, "best_epoch": best_epoch, "test_acc": test.acc, "test_loss": test.loss,
        "train_time_s": train_time,
    })
    # Per-class accuracy, misclassified table, confusion matrix, PR curves, embedding: of the
    # weights the test accuracy was measured with (the weight average when there is one).
    log_test_diagnostics(tracker, eval_model, test, bundle.test.images.to(hw.device), bundle.classes,
                         standardize, hw, DiagnosticsOptions.from_mapping(cfg.get("diagnostics")))
    if cfg.tracking.checkpoint:
        _log_checkpoint(tracker, eval_model)
    log.info("test accuracy %.4f (best val %.4f at epoch %d), training %.1f s, total %.1f s",
             test.acc, best_acc, best_epoch, train_time, time.perf_counter() - started)
    return best_acc


def _release_accelerator_memory(hw: Hardware) -> None:
    import gc

    gc.collect()
    if hw.device.type == "cuda":
        torch.cuda.empty_cache()


def _epoch_line(history: list[dict], epoch: int, val_is_test: bool) -> dict:
    """The ResNet exercise's per-epoch JSON line: epoch, accuracy, seconds since the start."""
    key = "test_acc" if val_is_test else "val_acc"
    return {"epoch": epoch, key: round(history[epoch]["val_acc"], 4), "time": round(history[epoch]["elapsed_s"], 2)}


def checkpoint_dir(cfg: DictConfig) -> Path:
    """One folder per (experiment, config, seed): a relaunch of the same job finds its checkpoint."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return Path(cfg.paths.runs) / "checkpoints" / cfg.tracking.experiment / f"{config_hash(resolved)}-seed{cfg.seed}"


def _config_identity(cfg: DictConfig) -> dict[str, Any]:
    """What a checkpoint records of its config (resolved once per run, not once per epoch)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return {
        "config_hash": config_hash(resolved),
        "config": {k: str(v) for k, v in hashed_items(resolved).items()},
        "seed": cfg.seed,
    }


def _checkpoint_state(stateful: dict, generator: torch.Generator, history: list[dict], run_id: str,
                      identity: dict[str, Any]) -> dict[str, Any]:
    return {
        **{k: v.state_dict() for k, v in stateful.items() if v is not None},
        "rng": ckpt.rng_state(generator),
        "history": history,
        "epoch": len(history) - 1,
        "run_id": run_id,
        **identity,
    }


def _restore(found: ckpt.Found, stateful: dict, generator: torch.Generator, tracker: RunTracker) -> list[dict]:
    """Load a checkpoint into the freshly built objects; log epochs it holds that MLflow lacks."""
    state = found.state
    for key, obj in stateful.items():
        if obj is not None:
            if key not in state:
                raise ckpt.CheckpointError(f"checkpoint {found.path} has no {key!r} state; it cannot resume this run")
            obj.load_state_dict(state[key])
    ckpt.restore_rng(state["rng"], generator)
    history = [dict(h) for h in state["history"]]
    logged = {m.step for m in tracker.client.get_metric_history(tracker.run_id, "val_acc")}
    for epoch, metrics in enumerate(history):
        if epoch not in logged:
            tracker.log_metrics(metrics, step=epoch)
    log.info("resumed from %s after epoch %d", found.path, len(history) - 1)
    return history


def _progress(batches: TrainBatches, epoch: int, cfg: DictConfig):
    show = cfg.trainer.progress
    if show == "auto":
        show = sys.stderr.isatty()
    if not show:
        return batches
    from tqdm import tqdm

    return tqdm(batches, total=len(batches), desc=f"epoch {epoch}", unit="batch", leave=False, dynamic_ncols=True)


def _step_logger(tracker: RunTracker, cfg: DictConfig, epoch: int, steps_per_epoch: int):
    """Per-step loss every `trainer.log_every_n_steps` steps (`train_loss_step`, step = global step)."""
    every = cfg.trainer.log_every_n_steps
    if not every:
        return None

    def hook(step: int, loss: torch.Tensor) -> None:
        if step % every == 0:
            tracker.log_metrics({"train_loss_step": loss.item()}, step=epoch * steps_per_epoch + step)

    return hook


def _log_grid(tracker: RunTracker, images: torch.Tensor, result: EvalResult, classes, tiles: int, path: str) -> None:
    grid = misclassified_grid(images, result.labels, result.probs, classes, tiles)
    if grid is not None:
        tracker.log_image(grid, path)


def _log_checkpoint(tracker: RunTracker, model: torch.nn.Module) -> None:
    """The final weights as the run's `checkpoint/last.pt` artifact (the resume checkpoints with
    optimizer and RNG state stay under runs/checkpoints/ only while the run is unfinished)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "last.pt"
        torch.save({"model": model.state_dict()}, path)
        tracker.log_file(path, "checkpoint")
