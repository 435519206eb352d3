"""The training engine on the CPU: divergence named at the right step, host reads only at checks,
exact accuracies, first-step timing, the progress bar's readings, the run's timing summary."""

from __future__ import annotations

import io
import re

import pytest
import torch
from torch import nn

from cifar_sweep.training import engine
from cifar_sweep.training.device import Hardware
from cifar_sweep.training.engine import NonFiniteLossError, evaluate, train_one_epoch
from cifar_sweep.training.loop import running_postfix, timing_summary
from cifar_sweep.training.optim import _fused, sgd

CPU = Hardware(torch.device("cpu"), "fp32", 1, "test cpu")


class Counted:
    """A list of batches that counts how many the loop took (a stopped epoch takes fewer)."""

    def __init__(self, batches):
        self.batches, self.taken = batches, 0

    def __iter__(self):
        for batch in self.batches:
            self.taken += 1
            yield batch

    def __len__(self):
        return len(self.batches)


def _setup(steps: int = 10, bad_step: int | None = None, batch: int = 8):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    batches = []
    for i in range(steps):
        x = torch.randn(batch, 3, 4, 4)
        if i == bad_step:
            x[0, 0, 0, 0] = float("nan")  # one poisoned pixel: that step's loss is NaN
        batches.append((x, torch.randint(0, 3, (batch,))))
    optimizer = sgd(model, lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, Counted(batches), optimizer, scheduler


def test_a_cpu_run_stops_at_the_first_non_finite_step_and_names_it():
    model, batches, optimizer, scheduler = _setup(bad_step=5)
    assert CPU.check_every == 1  # a host read is free on the CPU: every step is checked
    with pytest.raises(NonFiniteLossError, match=r"^non-finite loss at epoch 2 step 5$") as err:
        train_one_epoch(model, batches, optimizer, scheduler, CPU, epoch=2)
    assert (err.value.epoch, err.value.step, err.value.noticed_at) == (2, 5, 5)
    assert batches.taken == 6  # stopped at once: steps 0..5, nothing after the bad one


def test_checks_every_n_steps_still_name_the_first_bad_step():
    model, batches, optimizer, scheduler = _setup(bad_step=5)
    with pytest.raises(NonFiniteLossError) as err:
        train_one_epoch(model, batches, optimizer, scheduler, CPU, epoch=0, check_every=4)
    # Steps 5..7 ran before the check after step 7 looked; the message still names step 5.
    assert str(err.value) == "non-finite loss at epoch 0 step 5 (found at the check after step 7)"
    assert (err.value.step, err.value.noticed_at, batches.taken) == (5, 7, 8)


def test_divergence_in_the_last_steps_is_caught_at_the_epoch_end():
    model, batches, optimizer, scheduler = _setup(steps=10, bad_step=9)
    with pytest.raises(NonFiniteLossError, match="step 9"):
        train_one_epoch(model, batches, optimizer, scheduler, CPU, epoch=0, check_every=4)


def test_the_host_reads_only_at_checks_and_the_epoch_end(monkeypatch):
    reads, seen = [], []
    real = engine._Sums.read

    def counting(self, hw):
        reads.append(1)
        return real(self, hw)

    monkeypatch.setattr(engine._Sums, "read", counting)
    model, batches, optimizer, scheduler = _setup(steps=10)
    stats = train_one_epoch(model, batches, optimizer, scheduler, CPU, epoch=0, check_every=4, on_check=seen.append)
    assert len(reads) == 3  # after steps 4 and 8, and once at the end
    assert [r.steps for r in seen] == [4, 8] and [r.images for r in seen] == [32, 64]
    assert all(0 <= r.correct <= r.images and r.loss > 0 and r.images_per_s > 0 for r in seen)
    assert stats.steps == 10 and stats.images == 80 and stats.acc == stats.correct / 80


def test_accuracies_are_exact_fractions():
    class Always(nn.Module):  # predicts class 0 for every image
        def forward(self, x):
            return torch.tensor([[2.0, 0.0]]).expand(len(x), 2)

    labels = torch.cat([torch.zeros(1810, dtype=torch.long), torch.ones(190, dtype=torch.long)])
    images = torch.zeros(2000, 3, 2, 2, dtype=torch.uint8)
    from cifar_sweep.data.batches import Standardize

    result = evaluate(Always(), images, labels, 1000, Standardize([0.0] * 3, [1.0] * 3, CPU.device, False), CPU)
    assert result.correct == 1810 and result.acc == 0.905  # float32's mean would say 0.90499997
    assert type(result.acc) is float and result.probs.shape == (2000, 2)
    assert float((result.probs.argmax(1) == labels).float().mean()) != 0.905  # what the old figure was


def test_first_step_is_timed_apart_when_asked():
    model, batches, optimizer, scheduler = _setup(steps=4)
    plain = train_one_epoch(model, batches, optimizer, scheduler, CPU, epoch=0)
    assert plain.first_step_s is None
    model, batches, optimizer, scheduler = _setup(steps=4)
    timed = train_one_epoch(model, batches, optimizer, scheduler, CPU, epoch=0, time_first_step=True)
    assert 0 < timed.first_step_s <= timed.seconds


def test_the_progress_bar_shows_loss_accuracy_and_images_per_second():
    from tqdm import tqdm

    out = io.StringIO()
    model, batches, optimizer, scheduler = _setup(steps=6)
    bar = tqdm(batches, total=len(batches), file=out, mininterval=0)
    train_one_epoch(model, bar, optimizer, scheduler, CPU, epoch=0, on_check=running_postfix(bar))
    bar.close()
    assert re.search(r"loss \d+\.\d{4}, acc \d+\.\d\d%, [\d,]+ img/s", out.getvalue())
    assert running_postfix([1, 2, 3]) is None  # a plain iterable (no terminal) shows nothing


def test_timing_summary_reports_the_first_epoch_apart():
    history = [{"epoch_time_s": 9.0, "eval_time_s": 0.5, "first_step_s": 2.5},
               {"epoch_time_s": 4.0, "eval_time_s": 0.25}, {"epoch_time_s": 5.0, "eval_time_s": 0.25},
               {"epoch_time_s": 4.5, "eval_time_s": 0.25}]
    timing = timing_summary(history)
    assert timing.metrics() == {"train_time_s": 22.5, "total_eval_time_s": 1.25, "first_epoch_time_s": 9.0,
                                "steady_epoch_time_s": 4.5}
    assert timing.describe() == ("training 22.5 s over 4 epochs (first 9.0 s, of which 2.50 s its first step; "
                                 "then 4.5 s per epoch (median)), evaluation 1.2 s")
    assert "steady_epoch_time_s" not in timing_summary(history[:1]).metrics()


def test_optimizers_fuse_only_on_cuda():
    assert _fused(nn.Linear(2, 2)) == {}
    assert sgd(nn.Linear(2, 2), lr=0.1).defaults.get("fused") in (None, False)


@pytest.mark.parametrize("flags, vendor, fast", [
    ({"avx512_bf16", "amx_bf16"}, "GenuineIntel", True),   # AMX: bf16 tiles
    ({"avx512_bf16"}, "AuthenticAMD", True),               # Zen 4/5: bf16 dot product at twice the fp32 rate
    ({"avx512_bf16"}, "GenuineIntel", False),              # Intel without AMX: bf16 at half the fp32 rate
    ({"avx2"}, "AuthenticAMD", False),
])
def test_auto_precision_picks_bf16_only_where_it_beats_fp32(monkeypatch, flags, vendor, fast):
    from cifar_sweep.training import device

    monkeypatch.setattr(device.machine, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(device.machine, "cpu_vendor", lambda: vendor)
    assert device.cpu_has_fast_bf16() is fast
    assert device.resolve_precision("auto", torch.device("cpu")) == ("bf16" if fast else "fp32")
