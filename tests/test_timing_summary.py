"""A run's timing summary: the first epoch apart, the steady figures from the epochs after it."""

from __future__ import annotations

import pytest

from cifar_sweep.training.loop import timing_summary


def _epochs(times, rates):
    return [{"epoch_time_s": t, "images_per_s": r, "eval_time_s": 0.5} for t, r in zip(times, rates)]


def test_steady_figures_leave_out_the_first_epoch():
    timing = timing_summary(_epochs([10.0, 4.0, 6.0], [100.0, 250.0, 150.0]))
    metrics = timing.metrics()
    assert metrics["first_epoch_time_s"] == 10.0 and metrics["steady_epoch_time_s"] == 5.0
    assert metrics["steady_images_per_s"] == pytest.approx(200.0)
    assert metrics["train_time_s"] == 20.0 and metrics["total_eval_time_s"] == 1.5


def test_a_one_epoch_run_has_only_its_one_rate():
    metrics = timing_summary(_epochs([3.0], [120.0])).metrics()
    assert "steady_epoch_time_s" not in metrics and metrics["steady_images_per_s"] == 120.0
