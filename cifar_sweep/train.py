"""`cifar-sweep`: the Hydra entry point. Glue only: the one module that sees the config object.

It resolves the config into plain values, hands them to the library modules (data, engine,
tracking, reports), and owns the MLflow run's lifecycle: FINISHED on success, FAILED with a
`failure_reason` on any error, KILLED on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from cifar_sweep.config import paths
from cifar_sweep.sweeps import callback as sweep  # issue 4: parent run, resume/skip, per-job threads, pruning
from cifar_sweep.config.identity import config_hash, flatten, run_name

log = logging.getLogger("cifar_sweep")

paths.register_resolvers()


class Terminated(BaseException):
    """SIGTERM, turned into an exception so the run unwinds (and is marked KILLED) like on Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


@dataclass(frozen=True)
class JobInfo:
    """What Hydra knows about this job, as plain values (empty outside a Hydra app, e.g. in tests)."""

    choices: Mapping[str, str | None]
    overrides: tuple[str, ...]
    output_dir: Path
    sweep_id: str | None
    job_num: int | None

    @classmethod
    def from_hydra(cls) -> "JobInfo":
        if not HydraConfig.initialized():
            return cls({}, (), Path.cwd(), None, None)
        hc = HydraConfig.get()
        multirun = str(hc.mode) == "RunMode.MULTIRUN"
        return cls(
            choices=dict(hc.runtime.choices),
            overrides=tuple(hc.overrides.task),
            output_dir=Path(hc.runtime.output_dir),
            sweep_id=str(hc.sweep.dir) if multirun else None,
            job_num=int(hc.job.num) if multirun else None,
        )


# Modules a config may name in `_target_`. Anything else (e.g. `model._target_=os.system`) is
# refused before it is called: a config file or command line must never run arbitrary code.
TARGET_ALLOWLIST = ("cifar_sweep.", "torch.optim.", "torch.nn.", "torchvision.models.")


def _targets(node: Any, path: str = "") -> list[tuple[str, str]]:
    found = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                found.append((where, str(value)))
            else:
                found += _targets(value, where)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            found += _targets(value, f"{path}[{i}]")
    return found


def validate(cfg: DictConfig) -> None:
    """Catch mistakes before anything starts (no run, no data), naming the key and the fix."""
    for where, target in _targets(OmegaConf.to_container(cfg, resolve=False)):
        if not target.startswith(TARGET_ALLOWLIST):
            raise ValueError(f"{where}={target!r} is not allowed: _target_ must name a callable in "
                             f"{', '.join(p.rstrip('.') for p in TARGET_ALLOWLIST)}")
    t = cfg.trainer
    for key, value, low in (("trainer.epochs", t.epochs, 1), ("trainer.batch_size", t.batch_size, 1),
                            ("trainer.eval_batch_size", t.eval_batch_size, 1), ("trainer.ema_every", t.ema_every, 1),
                            ("seed", cfg.seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{key}={value!r} must be an integer >= {low}")
    lr = cfg.optimizer.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"optimizer.lr={lr!r} must be a positive number, e.g. optimizer.lr=0.01")
    if not isinstance(t.label_smoothing, (int, float)) or not 0.0 <= t.label_smoothing < 1.0:
        raise ValueError(f"trainer.label_smoothing={t.label_smoothing!r} must be a number in [0, 1)")
    if str(cfg.data.get("_target_", "")).endswith(".load_folder"):
        from cifar_sweep.data.roots import resolve_root  # torch-free: a wrong path fails in milliseconds

        resolve_root(cfg.data.root)
    val_size = cfg.data.get("val_size")
    if isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 0:
        raise ValueError(f"data.val_size={val_size!r} must be an integer >= 0 (0 = validate on the test set)")
    flip = cfg.data.get("augment", {}).get("flip", False)
    if flip not in (True, False, "alternate"):
        raise ValueError(f"data.augment.flip={flip!r} must be true, false or alternate")
    if t.get("lookahead") and t.ema_decay is None:
        raise ValueError("trainer.lookahead=true needs trainer.ema_decay (its peak decay, e.g. trainer.ema_decay=0.77)")


@contextmanager
def run_lifecycle(tracker):
    """End the run with the status that matches how the body ended, then let the error propagate."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except KeyboardInterrupt:
        tracker.kill("interrupted (SIGINT)")
        # An explicit 130 (128 + SIGINT), as shells report it; a bare KeyboardInterrupt would make
        # Python kill itself with SIGINT, which callers see as -2.
        raise SystemExit(130) from None
    except Terminated:
        tracker.kill("terminated (SIGTERM)")
        raise SystemExit(143) from None
    except SystemExit as exit_:
        # Someone else ends the process mid-run, e.g. submitit on preemption or timeout before it
        # requeues the job: KILLED, not FAILED; the requeued job resumes from the checkpoint.
        tracker.kill(f"process exiting (SystemExit {exit_.code}): preempted or requeued")
        raise
    except BaseException as err:
        tracker.fail(err)
        raise
    else:
        tracker.finish()
    finally:
        signal.signal(signal.SIGTERM, previous)


def build_tags(cfg: DictConfig, job: JobInfo, hw, resolved: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    from cifar_sweep.tracking.run import git_commit

    reported = cfg.get("reported") or {}
    return {
        **{group: job.choices.get(group) for group in ("model", "optimizer", "schedule", "data")},
        "experiment_preset": job.choices.get("experiment"),
        "device": str(hw.device),
        "device_name": hw.name,
        "threads": hw.threads,
        "precision": hw.precision,
        "config_hash": config_hash(resolved),
        "sweep_id": job.sweep_id,
        "job_num": job.job_num,
        "warmup_epoch": 0,
        "reported_acc": reported.get("test_acc"),
        "reported_source": reported.get("source"),
        "mlflow.source.git.commit": git_commit(paths.project_root()),
        "mlflow.source.name": "cifar_sweep.train",
        # Who runs it, so `cifar-sweep-reap` can tell a dead process's run from a live one.
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "versions.torch": torch.__version__,
        "versions.python": sys.version.split()[0],
    }


def train(cfg: DictConfig) -> float:
    """Run one job and return its best validation accuracy (what a sweeper maximises)."""
    validate(cfg)
    # Heavy imports only now: a bad config or data path fails before torch and MLflow load.
    from cifar_sweep import fit
    from cifar_sweep.training.device import setup_hardware
    from cifar_sweep.analysis.diagnostics import DiagnosticsOptions
    from cifar_sweep.tracking.run import RunTracker

    DiagnosticsOptions.from_mapping(cfg.get("diagnostics"))  # a mistyped switch fails now, not after training

    job = JobInfo.from_hydra()
    threads = cfg.trainer.threads if cfg.trainer.threads is not None else sweep.job_threads()  # issue 4
    hw = setup_hardware(cfg.trainer.device, cfg.trainer.precision, threads)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    tags = build_tags(cfg, job, hw, resolved)
    name = cfg.tracking.run_name or run_name(job.choices, job.overrides)
    # -- sweeps (issue 4, cifar_sweep/sweep.py): dry run, resume/skip, the sweep's parent run --------
    if job.sweep_id is None and OmegaConf.select(cfg, "sweep.dry_run"):
        print(f"dry run: would run {name!r} (config_hash {tags['config_hash']}, seed {cfg.seed}); nothing was run")
        return float("nan")
    previous = sweep.finished_run(cfg, job.sweep_id, tags)
    if previous is not None:
        log.info("skipping: run %s already FINISHED this job (config_hash %s, seed %s, device %s); "
                 "sweep.force=true reruns it", previous.run_id, tags["config_hash"], cfg.seed, tags["device"])
        sweep.note_job(skipped_run_id=previous.run_id)
        return previous.best_val_acc
    parent_run_id = sweep.parent_run_id(cfg.tracking.uri)
    # -- end sweeps ---------------------------------------------------------------------------------
    found = fit.find_resume(cfg, resolved)
    if found is not None:  # continue the interrupted run: same MLflow run, same params
        tracker = RunTracker.reopen(cfg.tracking.uri, found.state["run_id"])
        tracker.set_tags({k: tags[k] for k in ("device", "device_name", "threads", "precision", "host", "pid")})
        tracker.set_tags({"resumed_from_epoch": found.state["epoch"],
                          "resume_warning": "; ".join(found.skipped) or None})
    else:
        tracker = RunTracker.start(cfg.tracking.uri, cfg.tracking.experiment, name, tags, parent_run_id=parent_run_id)
    sweep.note_job(run_id=tracker.run_id)  # issue 4
    log.info("MLflow run %s (%s) in %s; device %s (%s), precision %s, %d threads",
             tracker.run_id, name, cfg.tracking.uri, hw.device, hw.name, hw.precision, hw.threads)
    with run_lifecycle(tracker):
        if found is None:
            tracker.log_params(flatten({k: v for k, v in resolved.items() if k != "paths"}))
            tracker.log_text(OmegaConf.to_yaml(resolved), "config.yaml")
        best = fit.fit(cfg, hw, tracker, job, found)
    # The weights are in MLflow now; the resume checkpoints of a finished run only take disk space.
    shutil.rmtree(fit.checkpoint_dir(cfg), ignore_errors=True)
    return best


# issue 4: an absolute config dir. "../conf" is resolved against the *module* when main is imported
# (the `cifar-sweep` console script, or the importable main that parallel launchers pickle) and
# then means the package `conf`, which does not exist: "Primary config module 'conf' not found".
@hydra.main(config_path=paths.CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    return train(cfg)


if __name__ == "__main__":
    # issue 4: run the function of the importable module, not of `__main__`: the joblib and submitit
    # launchers pickle the task function, and `__main__`'s would be pickled by value (and fail on torch).
    from cifar_sweep.train import main as _importable_main

    _importable_main()
