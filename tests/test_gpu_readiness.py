"""What the CUDA path decides without a GPU: precision flags, recompile counts, the skip rule's setup,
the leaderboard's note on shared GPUs. The parts that need CUDA itself are in test_gpu.py."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from cifar_sweep.errors import CifarSweepError
from cifar_sweep.training import device as dev
from cifar_sweep.training.device import Hardware


@pytest.fixture
def precision_flags():
    """Leave torch's process-wide precision flags as they were."""
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    yield
    torch.set_float32_matmul_precision(before[0])
    torch.backends.cudnn.allow_tf32 = before[1]


@pytest.mark.parametrize("precision, matmul, conv", [("fp32", "highest", False), ("tf32", "high", True),
                                                     ("bf16", "highest", False), ("fp16", "highest", False)])
def test_a_cuda_runs_precision_sets_matmul_and_convolution_precision(precision_flags, precision, matmul, conv):
    torch.set_float32_matmul_precision("medium")
    torch.backends.cudnn.allow_tf32 = not conv  # torch's default is True: an fp32 run would convolve in TF32
    dev.apply_precision(Hardware(torch.device("cuda", 0), precision, 1, "test gpu"))
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == (matmul, conv)
    # Read back through the newer per-backend API without torch refusing a mix of the two.
    assert torch.backends.cuda.matmul.fp32_precision == ("tf32" if conv else "ieee")


def test_tf32_is_its_own_precision_on_cuda_only(compose_cfg):
    from cifar_sweep.config import rules

    assert dev.resolve_precision("tf32", torch.device("cuda", 0)) == "tf32"
    with pytest.raises(ValueError, match="trainer.precision=tf32 is a CUDA mode; on cpu use fp32 or bf16") as err:
        dev.resolve_precision("tf32", torch.device("cpu"))
    assert isinstance(err.value, CifarSweepError)  # one line from the entry point, not a traceback
    rules.validate(compose_cfg(["trainer.precision=tf32"]))  # a valid config value
    assert Hardware(torch.device("cuda", 0), "tf32", 1, "x").autocast().__class__.__name__ == "nullcontext"


def test_auto_on_cuda_asks_the_runs_own_device_for_native_bf16(monkeypatch):
    asked = []

    class OnDevice:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            asked.append(("device", str(self.device)))

        def __exit__(self, *exc):
            return False

    def bf16(including_emulation=True):
        asked.append(("emulation", including_emulation))
        return False  # e.g. a V100 or T4: bf16 only emulated

    monkeypatch.setattr(torch.cuda, "device", OnDevice)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16)
    assert dev.resolve_precision("auto", torch.device("cuda", 1)) == "fp16"
    assert asked == [("device", "cuda:1"), ("emulation", False)]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation)
    assert dev.resolve_precision("auto", torch.device("cuda", 0)) == "bf16"


def _trainee(compile_model: bool, images: int = 72, batch: int = 32):
    """A tiny run: 72 images in batches of 32, so every epoch ends on a partial batch of 8."""
    from cifar_sweep.data.augment import Augment
    from cifar_sweep.data.batches import Standardize, TrainBatches
    from cifar_sweep.models.keras_tutorial import LogReg
    from cifar_sweep.training.loop import EvalSet, Trainee
    from cifar_sweep.training.optim import sgd
    from cifar_sweep.training.schedules import constant

    torch.manual_seed(0)
    cpu = torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (images,), generator=gen)
    standardize = Standardize([125.0] * 3, [60.0] * 3, cpu, False)
    model = LogReg()
    optimizer = sgd(model, lr=0.01)
    # The eager backend: dynamo's guards and recompiles as under inductor, without minutes of C++ builds.
    step_model = torch.compile(model, backend="eager") if compile_model else model
    trainee = Trainee(model, step_model, optimizer, constant(optimizer, total_steps=100),
                      TrainBatches(x, y, batch, standardize, Augment(), gen), gen)
    return trainee, EvalSet(x, y, 64, standardize, False)


def test_recompiles_are_counted_per_epoch_and_in_the_runs_timing(tmp_path, caplog):
    import torch._dynamo

    from cifar_sweep.training.loop import run_epochs, timing_summary

    caplog.set_level("INFO", logger="cifar_sweep.training.loop")
    torch._dynamo.reset()
    hw = Hardware(torch.device("cpu"), "fp32", 1, "test cpu")
    trainee, val = _trainee(compile_model=True)
    history: list[dict] = []
    run_epochs(trainee, hw, val, history, 2, tmp_path, lambda h: {"model": trainee.model.state_dict()},
               lambda epoch, metrics, result: False)
    # Epoch 0 compiles the frame for batches of 32, then again for the last batch of 8 (a new shape).
    assert history[0]["recompiles"] >= 1 and history[0]["compile_s"] > 0
    assert history[1]["recompiles"] == 0  # the shapes are known now: nothing is compiled again
    timing = timing_summary(history)
    assert timing.metrics()["total_recompiles"] == history[0]["recompiles"]
    assert timing.metrics()["total_compile_time_s"] == pytest.approx(history[0]["compile_s"] + history[1]["compile_s"])
    assert "size mismatch" in caplog.text and "recompile(s) of the compiled model" in caplog.text
    assert "compiling" in timing.describe()

    eager, val = _trainee(compile_model=False)
    plain: list[dict] = []
    run_epochs(eager, hw, val, plain, 1, tmp_path, lambda h: {"model": eager.model.state_dict()},
               lambda epoch, metrics, result: False)
    assert "recompiles" not in plain[0] and "total_recompiles" not in timing_summary(plain).metrics()


def test_a_requires_grad_flip_is_a_recompile_with_its_reason():
    """airbench freezes its whitening bias after a few epochs: the compiled frame's guard fails."""
    import torch._dynamo

    from cifar_sweep.training.compile_stats import CompileWatch

    torch._dynamo.reset()
    layer = torch.nn.Linear(4, 2)
    compiled = torch.compile(layer, backend="eager")
    compiled(torch.randn(3, 4)).sum().backward()
    watch = CompileWatch()
    layer.bias.requires_grad_(False)
    compiled(torch.randn(3, 4)).sum().backward()
    stats = watch.read()
    assert stats.recompiles == 1 and "requires_grad" in stats.reasons[0]


@pytest.mark.cli
def test_the_skip_rule_tells_compiled_from_eager_runs(tmp_path):
    """`-m trainer.compile=false,true`: the second job is not the first one's rerun."""
    from omegaconf import OmegaConf

    from helpers import CONF, run_cli

    from cifar_sweep.config import paths
    from cifar_sweep.sweeps.job import SweepJob
    from cifar_sweep.training.resume import RunIdentity

    overrides = ["data=synthetic", "data.n_train=128", "data.val_size=32", "data.n_test=32", "model=logreg",
                 "trainer.epochs=1", "trainer.threads=1", "trainer.device=cpu", "trainer.precision=fp32",
                 "trainer.progress=false", "diagnostics.embedding=false", "tracking.misclassified_grid=false"]
    res = run_cli(overrides, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    from hydra import compose, initialize_config_dir

    paths.register_resolvers()
    identities = {}
    for compiled in ("false", "true"):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=[*overrides, f"trainer.compile={compiled}"])
        resolved = OmegaConf.to_container(cfg, resolve=True)
        identities[compiled] = RunIdentity.of(resolved, "cpu", tmp_path / "runs", "cifar_sweep", precision="fp32")
    uri = f"sqlite:///{tmp_path}/runs/mlflow.db"
    job = SweepJob(tmp_path, 0, (), str(tmp_path), uri, None, None)
    (run,) = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("cifar_sweep").experiment_id])
    assert job.finished_run("cifar_sweep", identities["false"]).run_id == run.info.run_id
    assert job.finished_run("cifar_sweep", identities["true"]) is None  # same config_hash, other setup
    assert identities["false"].config_hash == identities["true"].config_hash


def test_the_leaderboard_folds_shared_gpu_runs_apart_and_notes_their_speed():
    from cifar_sweep.analysis import ranking

    def run(rid, seed, shared):
        return {"run_id": rid, "run_name": "cnn", "status": "FINISHED", "start_time": 1, "tags.config_hash": "h",
                "tags.device": "cuda:0", "tags.threads": "16", "params.seed": seed, "metrics.best_val_acc": 0.7,
                **({"tags.device_shared_by": shared} if shared is not None else {})}

    runs = pd.DataFrame([run("alone0", "0", None), run("alone1", "1", "1"), run("shared0", "0", "2")])
    rows = ranking.rank_runs(runs)
    assert sorted(map(sorted, rows["run_ids"])) == [["alone0", "alone1"], ["shared0"]]
    note = ranking.speed_note(rows)
    assert note.startswith("train time and img/s of #") and "shared by up to 2 jobs at once" in note
    assert ranking.speed_note(ranking.rank_runs(runs.iloc[:2])) is None


def test_a_gpu_check_step_is_killed_whole_at_its_limit(tmp_path):
    """The limit holds while the step runs, and takes its children with it (pytest's, a pool's workers)."""
    import os
    import sys
    import time
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from gpu_steps import run_step

    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "print('started', flush=True)\n"
            "time.sleep(120)\n")
    start = time.monotonic()
    result = run_step("sleeper", [sys.executable, "-c", code], 3, tmp_path / "steps.log", echo=False)
    assert result.timed_out and result.code is None and not result.ok
    assert time.monotonic() - start < 15  # not 120 s: stopped at the limit, not after the child exits
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{grandchild}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{grandchild}") or "Z" in open(f"/proc/{grandchild}/stat").read().split()[2]
    assert result.tail == ["started"] and "stopped at its 3 s limit" in result.describe()
    assert "== sleeper: stopped at its limit" in (tmp_path / "steps.log").read_text()
    done = run_step("quick", [sys.executable, "-c", "print('hi')"], 30, tmp_path / "steps.log", echo=False)
    assert done.ok and done.tail == ["hi"]
