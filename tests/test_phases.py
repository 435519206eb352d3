"""Where a run's seconds go: phases count exclusively, and every second not in one is `other`."""

from __future__ import annotations

import time

from cifar_sweep.training.phases import Phases


def test_nested_phases_count_exclusively_and_the_rest_is_other():
    phases = Phases()
    with phases("training"):
        time.sleep(0.05)
        with phases("logging"):
            time.sleep(0.03)
    time.sleep(0.02)  # in no phase
    metrics = phases.metrics()
    assert 0.045 <= metrics["seconds/training"] < 0.07  # its own 0.05 s, not the logging inside it
    assert 0.025 <= metrics["seconds/logging"] < 0.05
    assert metrics["seconds/other"] >= 0.015
    parts = sum(v for k, v in metrics.items() if k != "seconds/total")
    assert abs(parts - metrics["seconds/total"]) < 0.005
    assert metrics["seconds/total"] <= phases.elapsed() + 0.001  # rounded to ms


def test_moved_seconds_change_owner_and_never_go_negative():
    phases = Phases()
    phases.add("training", 2.0)
    phases.move("training", "evaluation", 0.5)
    phases.move("training", "evaluation", 5.0)  # more than training has: only what it has moves
    assert phases.seconds == {"training": 0.0, "evaluation": 2.0}
    timed = phases.timed("pruning", lambda x: x + 1)
    assert timed(1) == 2 and "pruning" in phases.seconds
    assert phases.timed("pruning", None) is None
    assert phases.describe().startswith("evaluation 2.0 s")
