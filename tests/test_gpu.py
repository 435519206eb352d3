"""CUDA paths: steps that never wait for the GPU, timing, fp16 with a grad scaler, torch.compile,
GPU-resident data, a sweep's parallel jobs on one GPU. Marked `gpu`: skipped without CUDA
(conftest.py); `benchmarks/gpu_check.sh` runs them on a GPU machine."""

from __future__ import annotations

import re

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import run_cli

pytestmark = pytest.mark.gpu


def _hw(precision: str = "bf16"):
    from cifar_sweep.training.device import setup_hardware

    return setup_hardware("cuda", precision, None)


def _trainee(model_name: str, hw, *, optimizer: str = "sgd", augment=None, average=None, images: int = 1024,
             batch: int = 128, classes: int = 10):
    """Model, optimizer, schedule, batches and average on the GPU, the way `fit` builds them."""
    from cifar_sweep.data.augment import Augment
    from cifar_sweep.data.batches import Standardize, TrainBatches
    from cifar_sweep.models.airbench import AirBench
    from cifar_sweep.models.keras_tutorial import CNNSimple
    from cifar_sweep.models.resnets import ResNetSeed
    from cifar_sweep.training import optim
    from cifar_sweep.training.averaging import weight_average
    from cifar_sweep.training.schedules import linear

    torch.manual_seed(0)
    model = {"resnet_seed": ResNetSeed, "airbench": AirBench, "cnn_simple": CNNSimple}[model_name](num_classes=classes)
    model = model.to(hw.device, memory_format=torch.channels_last)
    gen = torch.Generator(device=hw.device).manual_seed(0)
    x = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, device=hw.device, generator=gen)
    y = torch.randint(0, classes, (images,), device=hw.device, generator=gen)
    standardize = Standardize([125.0] * 3, [60.0] * 3, hw.device, True)
    model.init_from_data(standardize(x[:512]))
    batches = TrainBatches(x, y, batch, standardize, augment or Augment(), gen)
    opt = optim.sgd(model, lr=0.05, momentum=0.9, nesterov=True) if optimizer == "sgd" else optim.adam(model, lr=1e-3)
    steps = 3 * len(batches)
    ema = weight_average(model, *average, total_updates=steps // 2) if average else None
    return model, opt, linear(opt, total_steps=steps), batches, ema, (x, y, standardize)


CASES = {
    # The ResNet exercise's setting: bf16 autocast, SGD (fused), crop + flip.
    "resnet_seed bf16": dict(model_name="resnet_seed", precision="bf16", augment=dict(crop_padding=4, flip=True)),
    # airbench's: lookahead every 2 steps, alternating flip, reflect crop, label smoothing.
    "airbench lookahead": dict(model_name="airbench", precision="bf16", average=(0.8, True),
                               augment=dict(crop_padding=2, pad_mode="reflect", flip="alternate")),
    # fp16 with a grad scaler: the fused Adam takes the scaler's inf flag on the device.
    "cnn_simple fp16 + scaler": dict(model_name="cnn_simple", precision="fp16", optimizer="adam", average=(0.9, False)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_training_steps_never_wait_for_the_gpu(case):
    """Every synchronisation but the loop's own checks raises under sync debug mode "error"."""
    from cifar_sweep.data.augment import Augment
    from cifar_sweep.training.engine import evaluate, train_one_epoch

    spec = dict(CASES[case])
    hw = _hw(spec.pop("precision"))
    spec["augment"] = Augment(**spec.get("augment", {}))
    model, opt, sched, batches, ema, (x, y, standardize) = _trainee(hw=hw, **spec)
    scaler = torch.amp.GradScaler("cuda") if hw.precision == "fp16" else None
    kwargs = dict(scaler=scaler, ema=ema, ema_every=2, label_smoothing=0.2, check_every=3)
    # One epoch first: lazy CUDA set-up (cuBLAS handles, cuDNN plans) may synchronise once.
    train_one_epoch(model, batches, opt, sched, hw, 0, **kwargs)
    torch.cuda.synchronize()
    batches.set_epoch(1)
    model.on_epoch_start(1)
    torch.cuda.set_sync_debug_mode("error")
    try:
        stats = train_one_epoch(model, batches, opt, sched, hw, 1, **kwargs)
        result = evaluate(ema.module if ema is not None else model, x, y, 256, standardize, hw, tta_flip=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert stats.steps == len(batches) and 0 <= stats.acc <= 1 and stats.seconds > 0
    assert result.correct == int((result.probs.argmax(1) == y.cpu()).sum()) and result.acc == result.correct / len(y)


def test_a_stray_sync_is_caught_by_the_debug_mode():
    """The check above can fail: a per-step `.item()` in the loop is an error under the same mode."""
    from cifar_sweep.training.engine import train_one_epoch

    hw = _hw()
    model, opt, sched, batches, ema, _ = _trainee("cnn_simple", hw)
    train_one_epoch(model, batches, opt, sched, hw, 0)

    def reads_every_step(step, loss):
        loss.item()

    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            train_one_epoch(model, batches, opt, sched, hw, 1, on_step=reads_every_step)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_divergence_on_the_gpu_is_named_at_its_first_step():
    from cifar_sweep.training.engine import NonFiniteLossError, train_one_epoch

    hw = _hw("fp32")
    assert hw.check_every > 1  # the GPU is not asked after every step
    model, opt, sched, batches, _, _ = _trainee("cnn_simple", hw, images=4096)
    for group in opt.param_groups:
        group["lr"] = 1e30
    sched.base_lrs = [1e30] * len(sched.base_lrs)
    with pytest.raises(NonFiniteLossError) as err:
        train_one_epoch(model, batches, opt, sched, hw, 0, check_every=8)
    assert err.value.step <= err.value.noticed_at and (err.value.noticed_at + 1) % 8 == 0
    assert str(err.value).startswith(f"non-finite loss at epoch 0 step {err.value.step}")


def test_gpu_timing_waits_for_the_work_and_times_the_first_step():
    from cifar_sweep.training.engine import train_one_epoch

    hw = _hw()
    model, opt, sched, batches, _, _ = _trainee("resnet_seed", hw, images=2048)
    stats = train_one_epoch(model, batches, opt, sched, hw, 0, time_first_step=True)
    assert 0 < stats.first_step_s < stats.seconds
    # Synchronised timing: the epoch's seconds cover its kernels, not only their launch. A second
    # epoch timed with CUDA events around it agrees with the engine's clock.
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    again = train_one_epoch(model, batches, opt, sched, hw, 1)
    end.record()
    end.synchronize()
    assert again.seconds == pytest.approx(start.elapsed_time(end) / 1000, rel=0.25, abs=0.02)


def _run(args, home, timeout=300):
    res = run_cli(["data=synthetic", "trainer.device=cuda", "trainer.progress=false", *args], home, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{home}/runs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("cifar_sweep").experiment_id],
                              order_by=["attributes.start_time ASC"])
    return res, client, runs


def test_cli_run_on_the_gpu_keeps_data_there_and_reports_timing(tmp_path):
    res, client, (run,) = _run(["model=resnet_seed", "trainer.epochs=3", "data.augment.crop_padding=4",
                                "data.augment.flip=true"], tmp_path)
    assert run.info.status == "FINISHED"
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["device"] == "cuda:0" and tags["precision"] == "bf16"
    assert tags["device_name"] == torch.cuda.get_device_name(0)
    for key in ("first_epoch_time_s", "steady_epoch_time_s", "total_eval_time_s", "train_time_s", "test_acc"):
        assert key in metrics, key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "first_step_s")] == [0]
    assert re.search(r"training [0-9.]+ s over 3 epochs \(first [0-9.]+ s, of which [0-9.]+ s its first step", res.stderr)
    assert metrics["test_acc"] > 0.3


def test_fp16_with_a_grad_scaler_trains(tmp_path):
    res, client, (run,) = _run(["model=cnn_simple", "trainer.precision=fp16", "trainer.epochs=2"], tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["precision"] == "fp16"
    assert run.data.metrics["test_acc"] > 0.3


def test_compiled_model_on_the_gpu_reports_the_compile_in_its_first_step(tmp_path):
    res, client, (run,) = _run(["model=cnn_simple", "trainer.compile=true", "trainer.epochs=3"], tmp_path, timeout=400)
    first_step = client.get_metric_history(run.info.run_id, "first_step_s")[0].value
    steady = run.data.metrics["steady_epoch_time_s"]
    assert run.info.status == "FINISHED" and first_step > steady  # the compile sits in the first step


def test_parallel_sweep_jobs_share_the_gpu(tmp_path):
    """Two joblib workers on this machine's GPU(s): the slot count matches CUDA's, both jobs finish."""
    from cifar_sweep.sweeps.gpu_slots import count_gpus

    assert count_gpus() in (0, torch.cuda.device_count())  # 0: /proc/driver/nvidia is not visible here
    res = run_cli(["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "data=synthetic", "model=logreg",
                   "trainer.device=cuda", "trainer.epochs=1", "trainer.progress=false", "seed=0,1"], tmp_path,
                  timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("cifar_sweep").experiment_id])
    jobs = [r for r in runs if r.data.tags.get("job_num") not in (None, "None")]
    assert len(jobs) == 2 and {r.info.status for r in jobs} == {"FINISHED"}
    assert {r.data.tags["device"] for r in jobs} == {"cuda:0"}
