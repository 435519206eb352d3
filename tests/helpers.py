"""Plain helpers the test modules import (`from helpers import run_cli, CONF`): paths of this checkout
and the one way a test starts a cifar_sweep command in a subprocess. No fixtures here: those live in
conftest.py and in the plugin modules it lists in `pytest_plugins`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
JPEG_ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def run_cli(args, home: Path, timeout: float = 300, env_extra=None, module="cifar_sweep.train"):
    """Run a cifar_sweep command in a subprocess with its own project home; returns CompletedProcess.

    A test that calls this (directly or through a fixture) is marked `cli`."""
    env = {**os.environ, "CIFAR_SWEEP_HOME": str(home), **(env_extra or {})}
    env.pop("MLFLOW_RUN_ID", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=home, env=env, capture_output=True, text=True, timeout=timeout
    )


def signal_after_first_epoch(home: Path, args, sig: int) -> tuple[int, float, str]:
    """Start `cifar-sweep ARGS`, send `sig` as soon as epoch 0's JSON line appears; return (exit code,
    seconds from the signal to the exit, output). Raises AssertionError if the run ended first."""
    env = {**os.environ, "CIFAR_SWEEP_HOME": str(home)}
    # SIG_DFL first: a shell's background job ignores SIGINT, and its children would inherit that.
    proc = subprocess.Popen([sys.executable, "-m", "cifar_sweep.train", *args], cwd=home, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith('{"epoch": 0'):
            sent = time.perf_counter()
            proc.send_signal(sig)
            break
    else:
        proc.wait()
        raise AssertionError("the run ended before epoch 0 finished:\n" + "".join(out)[-3000:])
    rest = proc.stdout.read()
    code = proc.wait(timeout=60)
    return code, time.perf_counter() - sent, "".join(out) + rest
