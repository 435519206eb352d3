"""What a new user meets in the first hour: mistyped keys, progress within an epoch, targets the loop
cannot run. Each through the real CLI in a subprocess, as a user types it."""

from __future__ import annotations

import logging
import os
import pty
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from cifar_sweep.config.keys import did_you_mean, unknown_override_keys
from cifar_sweep.training.engine import Running
from cifar_sweep.training.progress import EpochProgress
from helpers import run_cli

QUICK = ["data=synthetic", "data.n_train=300", "data.val_size=100", "data.n_test=100", "model=logreg",
         "trainer.epochs=1", "trainer.threads=1", "diagnostics.embedding=false", "tracking.system_metrics_s=0"]


def _store_runs(home: Path):
    db = home / "runs" / "mlflow.db"
    if not db.exists():
        return []
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    return mlflow.search_runs(search_all_experiments=True).to_dict("records")


@pytest.mark.parametrize("args", [["trainer.epoch=2"], ["+trainer.epoch=2"], ["-m", "trainer.epoch=1,2"]],
                         ids=["plain", "plus", "sweep"])
@pytest.mark.cli
def test_a_mistyped_key_names_the_key_meant(tmp_path, args):
    res = run_cli(["data=synthetic", *args], tmp_path, timeout=120)
    assert res.returncode == 1
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines == ["cifar-sweep: trainer.epoch is not a config key; did you mean trainer.epochs?"], res.stderr
    assert "+trainer.epoch" not in res.stderr  # never Hydra's advice to force the key in
    assert _store_runs(tmp_path) == []


def test_closest_keys_cover_a_missing_block_name_and_typos():
    assert did_you_mean("epochs") == ["trainer.epochs"]
    assert did_you_mean("data.augment.flp") == ["data.augment.flip"]
    assert did_you_mean("trainer.batchsize") == ["trainer.batch_size"]
    # The builder groups' keys depend on the option chosen: left to Hydra, never refused here.
    assert unknown_override_keys(["model.width=8", "optimizer.momentum=0.8", "hydra/launcher=parallel",
                                  "model=lenet", "seed=1", "trainer.epochs=2"]) == []


def test_a_forced_typed_key_inside_a_config_gets_the_same_advice(compose_cfg):
    from cifar_sweep.config import rules

    cfg = compose_cfg(["data=synthetic", "+trainer.epoch=3"])
    with pytest.raises(rules.ConfigError, match=r"^trainer\.epoch is not a config key; did you mean trainer\.epochs\?$"):
        rules.validate(cfg)


@pytest.mark.parametrize("target, message", [
    ("torchvision.models.resnet18", "model._target_='torchvision.models.resnet18' is not allowed"),
    ("cifar_sweep.models.nowhere.Net", "model._target_='cifar_sweep.models.nowhere.Net' does not exist"),
])
@pytest.mark.cli
def test_a_target_the_loop_cannot_run_fails_before_any_run_exists(tmp_path, target, message):
    res = run_cli([*QUICK, f"model._target_={target}"], tmp_path, timeout=120)
    assert res.returncode == 1
    assert message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert _store_runs(tmp_path) == []


@pytest.mark.cli
def test_a_torchvision_network_trains_as_a_zoo_model(tmp_path):
    res = run_cli([*QUICK, "model=torchvision", "model.arch=resnet18", "trainer.limit_train_batches=2",
                   "trainer.batch_size=32"], tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = _store_runs(tmp_path)
    assert run["status"] == "FINISHED" and run["tags.model"] == "torchvision"
    assert run["params.model.arch"] == "resnet18" and int(run["tags.n_params"]) == 11_181_642


def _running(steps: int, seconds: float) -> Running:
    return Running(steps=steps, images=steps * 10, loss_sum=steps * 10 * 1.5, correct=steps * 4, seconds=seconds)


def test_progress_in_a_log_is_a_line_at_a_steady_interval(caplog):
    progress = EpochProgress(list(range(40)), epoch=3, show="auto", every_s=0.0)
    assert progress.mode == "log"  # pytest's stderr is not a terminal
    with caplog.at_level(logging.INFO, logger="cifar_sweep"):
        assert list(progress) == list(range(40))
        progress.on_check(_running(10, 5.0))
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == "epoch 3: 10/40 batches (25%), loss 1.5000, acc 40.00%, 20 img/s, about 15 s left"


def test_progress_waits_for_its_interval(caplog):
    progress = EpochProgress(list(range(40)), epoch=0, show="auto", every_s=3600.0)
    with caplog.at_level(logging.INFO, logger="cifar_sweep"):
        progress.on_check(_running(10, 5.0))
    assert caplog.records == []
    assert EpochProgress([1], 0, show=False).mode is None


@pytest.mark.cli
def test_a_run_on_a_terminal_shows_a_progress_bar_within_the_epoch(tmp_path):
    """Under a pseudo-terminal (as a user's shell gives), the bar appears while epoch 0 trains."""
    env = {**os.environ, "CIFAR_SWEEP_HOME": str(tmp_path)}
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "cifar_sweep.train", *QUICK, "trainer.batch_size=16"],
                            cwd=tmp_path, env=env, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=300) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert "epoch 0:" in text and "batch" in text and "img/s" in text, text[-3000:]
    assert text.index("epoch 0:") < text.index('{"epoch": 0')  # the bar came before the epoch ended
