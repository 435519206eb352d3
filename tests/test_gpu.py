"""CUDA paths: steps that never wait for the GPU, timing that covers the GPU's work, strict fp32,
fp16 with a grad scaler, torch.compile and its recompiles, GPU-resident data, the GPU faster than the
CPU, checkpoints a machine without a GPU can read, a CPU run that leaves the GPU alone, a sweep's
parallel jobs on one GPU. Marked `gpu`: skipped without CUDA (conftest.py);
`benchmarks/gpu_check.sh` runs them on a GPU machine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from helpers import run_cli

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


def _sleep_cycles(seconds: float) -> int:
    """GPU clock cycles that `torch.cuda._sleep` spins for `seconds` on this GPU, measured with events."""
    probe = 50_000_000
    torch.cuda._sleep(probe)  # warm-up: the first launch loads the kernel
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(probe)
    end.record()
    end.synchronize()
    return int(probe * seconds / (start.elapsed_time(end) / 1000))


def test_gpu_timing_waits_for_the_work_and_times_the_first_step():
    from cifar_sweep.training.engine import train_one_epoch

    hw = _hw()
    model, opt, sched, batches, _, _ = _trainee("resnet_seed", hw, images=2048)
    stats = train_one_epoch(model, batches, opt, sched, hw, 0, time_first_step=True)
    assert 0 < stats.first_step_s < stats.seconds
    # Known GPU work queued in the last step, after which the loop reads nothing (no check falls inside
    # the epoch): only the synchronisation before the clock is read makes the epoch's seconds cover it.
    # Without it the epoch would end when the sleep was launched, a few microseconds later.
    sleep_s, cycles = 0.5, _sleep_cycles(0.5)
    last = len(batches)

    def sleep_in_the_last_step(step, loss):
        if step == last:
            torch.cuda._sleep(cycles)

    torch.cuda.synchronize()
    again = train_one_epoch(model, batches, opt, sched, hw, 1, on_step=sleep_in_the_last_step, check_every=10**6)
    assert again.seconds >= sleep_s * 0.9
    assert torch.cuda.current_stream(hw.device).query()  # nothing left running when the epoch returns
    # And without the sleep, CUDA events around an epoch agree with the engine's clock.
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    plain = train_one_epoch(model, batches, opt, sched, hw, 2)
    end.record()
    end.synchronize()
    assert plain.seconds == pytest.approx(start.elapsed_time(end) / 1000, rel=0.25, abs=0.02)
    assert again.seconds > plain.seconds + sleep_s * 0.8


def test_fp32_is_strict_and_tf32_is_asked_for():
    """A run tagged fp32 convolves and multiplies in fp32: cuDNN's TF32 default is switched off."""
    x = torch.randn(64, 64, 32, 32, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    w = torch.randn(64, 64, 3, 3, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    a, b = torch.randn(2048, 2048, device="cuda"), torch.randn(2048, 2048, device="cuda")
    exact_conv = torch.nn.functional.conv2d(x.double(), w.double(), padding=1)
    exact_mm = a.double() @ b.double()

    def errors(precision: str) -> tuple[float, float]:
        _hw(precision)
        conv = torch.nn.functional.conv2d(x, w, padding=1)
        mm = a @ b
        return (float((conv.double() - exact_conv).abs().max() / exact_conv.abs().max()),
                float((mm.double() - exact_mm).abs().max() / exact_mm.abs().max()))

    strict, tf32 = errors("fp32"), errors("tf32")
    assert torch.backends.cudnn.allow_tf32 is True and torch.get_float32_matmul_precision() == "high"  # tf32: the last
    _hw("fp32")
    assert torch.backends.cudnn.allow_tf32 is False and torch.get_float32_matmul_precision() == "highest"
    # fp32 rounds at 2^-24, TF32's 10-bit mantissa at 2^-11: thousands of times further from exact.
    for kind, fp32_error, tf32_error in zip(("convolution", "matmul"), strict, tf32):
        assert fp32_error < 1e-4 and tf32_error > 10 * fp32_error, (kind, fp32_error, tf32_error)


def test_auto_precision_is_native_bf16_on_this_gpu():
    from cifar_sweep.training.device import resolve_precision

    expected = "bf16" if torch.cuda.get_device_capability(0)[0] >= 8 else "fp16"
    assert resolve_precision("auto", torch.device("cuda", 0)) == expected


def test_a_run_built_for_the_gpu_keeps_its_data_batches_and_model_there(compose_cfg):
    """The build of a real run (what `cifar-sweep` trains): every tensor the steps read is on the GPU."""
    from cifar_sweep.assembly import assemble_run

    hw = _hw("bf16")
    run = assemble_run(compose_cfg(["data=synthetic", "model=cnn_simple", "trainer.device=cuda"]), hw)
    assert run.batches.images.is_cuda and run.batches.labels.is_cuda
    assert run.val.images.is_cuda and run.val.labels.is_cuda
    assert all(p.is_cuda for p in run.model.parameters()) and run.trainee.generator.device.type == "cuda"
    for step, (x, y) in enumerate(run.batches):
        assert x.is_cuda and y.is_cuda and x.dtype == torch.float32
        if step == 2:
            break


def test_the_gpu_trains_faster_than_the_cpu():
    """The same network, batches and optimizer, one warm-up epoch then one timed, on each device."""
    from cifar_sweep.training.device import setup_hardware
    from cifar_sweep.training.engine import train_one_epoch

    rates = {}
    for name, images in (("cuda", 4096), ("cpu", 512)):
        hw = setup_hardware(name, "auto", None)  # each device in the precision it is fastest in
        model, opt, sched, batches, _, _ = _trainee("resnet_seed", hw, images=images, batch=256)
        train_one_epoch(model, batches, opt, sched, hw, 0)
        rates[name] = train_one_epoch(model, batches, opt, sched, hw, 1).images_per_s
    assert rates["cuda"] > 5 * rates["cpu"], rates


def _loads_without_a_gpu(path) -> bool:
    """A plain `torch.load` (no map_location) in a process that sees no GPU."""
    code = "import torch, sys; assert not torch.cuda.is_available(); torch.load(sys.argv[1], weights_only=True)"
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return True


def test_a_gpu_runs_checkpoint_loads_on_a_machine_without_a_gpu(tmp_path):
    from cifar_sweep.training import checkpoint as ckpt
    from cifar_sweep.training.engine import train_one_epoch
    from cifar_sweep.training.loop import Trainee

    hw = _hw("fp16")
    model, opt, sched, batches, ema, _ = _trainee("cnn_simple", hw, optimizer="adam", average=(0.9, False))
    scaler = torch.amp.GradScaler("cuda")
    train_one_epoch(model, batches, opt, sched, hw, 0, scaler=scaler, ema=ema)
    trainee = Trainee(model, model, opt, sched, batches, batches.generator, scaler, ema)
    ckpt.save(tmp_path, trainee.state([{"val_acc": 0.1}], "run", {}))
    assert _loads_without_a_gpu(tmp_path / "last.pt")
    # And the same state resumes on the GPU, its RNG on the run's own device.
    found = ckpt.Found(ckpt.read(tmp_path / "last.pt"), tmp_path / "last.pt", ())
    assert trainee.restore(found) == [{"val_acc": 0.1}]
    assert all(v.is_cuda for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0)


def test_a_cpu_run_on_a_gpu_machine_leaves_cuda_alone(tmp_path):
    """Training, evaluating and checkpointing on the CPU never create a CUDA context."""
    code = (
        "import sys, torch; sys.path.insert(0, 'tests'); from pathlib import Path\n"
        "from test_gpu import _trainee; from cifar_sweep.training.device import setup_hardware\n"
        "from cifar_sweep.training import checkpoint as ckpt; from cifar_sweep.training.engine import train_one_epoch, evaluate\n"
        "from cifar_sweep.training.loop import Trainee\n"
        "hw = setup_hardware('cpu', 'fp32', 2)\n"
        "model, opt, sched, batches, ema, (x, y, st) = _trainee('cnn_simple', hw, images=256)\n"
        "train_one_epoch(model, batches, opt, sched, hw, 0); evaluate(model, x, y, 128, st, hw)\n"
        "ckpt.save(Path(sys.argv[1]), Trainee(model, model, opt, sched, batches, batches.generator).state([], 'r', {}))\n"
        "print('cuda initialised:', torch.cuda.is_initialized())\n")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("cuda initialised: False")


def _run(args, home, timeout=300):
    res = run_cli(["data=synthetic", "trainer.device=cuda", "trainer.progress=false", *args], home, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{home}/runs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("cifar_sweep").experiment_id],
                              order_by=["attributes.start_time ASC"])
    return res, client, runs


@pytest.mark.cli
def test_cli_run_on_the_gpu_reports_its_device_precision_and_timing(tmp_path):
    res, client, (run,) = _run(["model=resnet_seed", "trainer.epochs=3", "data.augment.crop_padding=4",
                                "data.augment.flip=true"], tmp_path)
    assert run.info.status == "FINISHED"
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["device"] == "cuda:0" and tags["precision"] == "bf16"
    assert tags["device_name"] == torch.cuda.get_device_name(0)
    for key in ("first_epoch_time_s", "steady_epoch_time_s", "total_eval_time_s", "train_time_s", "test_acc"):
        assert key in metrics, key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "first_step_s")] == [0]
    # The project's logging writes to stdout; stderr too, should that change.
    assert re.search(r"training [0-9.]+ s over 3 epochs \(first [0-9.]+ s, of which [0-9.]+ s its first step",
                     res.stdout + res.stderr)
    assert metrics["test_acc"] > 0.3
    # Its weights artifact is CPU tensors: a machine without a GPU loads it as it is.
    assert _loads_without_a_gpu(client.download_artifacts(run.info.run_id, "checkpoint/last.pt", str(tmp_path)))


@pytest.mark.cli
def test_fp16_with_a_grad_scaler_trains(tmp_path):
    res, client, (run,) = _run(["model=cnn_simple", "trainer.precision=fp16", "trainer.epochs=2"], tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["precision"] == "fp16"
    assert run.data.metrics["test_acc"] > 0.3


@pytest.mark.cli
def test_compiled_model_on_the_gpu_reports_the_compile_and_its_recompiles(tmp_path):
    res, client, (run,) = _run(["model=cnn_simple", "trainer.compile=true", "trainer.epochs=3"], tmp_path, timeout=400)
    first_step = client.get_metric_history(run.info.run_id, "first_step_s")[0].value
    metrics = run.data.metrics
    assert run.info.status == "FINISHED" and first_step > metrics["steady_epoch_time_s"]  # the compile: first step
    compile_s = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "compile_s")}
    assert sorted(compile_s) == [0, 1, 2] and compile_s[0] > 0
    assert metrics["total_compile_time_s"] == pytest.approx(sum(compile_s.values()), rel=1e-6)
    assert "total_recompiles" in metrics


@pytest.mark.cli
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
    if torch.cuda.device_count() == 1:  # two jobs at once on one GPU: their timings say so
        assert max(int(r.data.tags.get("device_shared_by", 1)) for r in jobs) == 2
