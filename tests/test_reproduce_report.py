"""benchmarks/reproduce.py's report: rows an earlier store measured carry over, marked, and never hide a new run.

The script trains for hours, so only its report logic is tested here, on rows shaped as `measure` returns them.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def reproduce():
    sys.path.insert(0, str(BENCH))  # the script imports its sibling `_common` as a top-level module
    try:
        spec = importlib.util.spec_from_file_location("reproduce_script", BENCH / "reproduce.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up while it executes
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("reproduce_script", None)
        sys.path.remove(str(BENCH))


def row(reproduce, name: str, n: int, acc: float = math.nan, epochs_done: int = 0) -> dict:
    preset = reproduce.PRESETS[name]
    return {"preset": name, "writeup": preset.writeup, "network": preset.network, "reported": preset.reported,
            "epochs": 2, "shortened": list(preset.shortened), "n": n, "test_acc": acc, "test_acc_std": math.nan,
            "best_epoch_acc": acc, "run_wall_s": 60.0, "images_per_s": 100.0, "verdict": "v",
            "per_class": {}, "test_acc_by_epoch": [], "epochs_done": epochs_done, "last_epoch_acc": 0.3}


def previous(reproduce, rows: list[dict], quick: bool = False) -> dict:
    return {"machine": {"date": "2026-12-01 10:00"}, "home": "/tmp/old-store", "quick": quick,
            "commands": ["2026-12-01 09:00  reproduce.py --presets lenet"], "results": rows}


def test_a_preset_this_store_never_ran_keeps_the_earlier_row_marked(reproduce):
    now = [row(reproduce, "lenet", 0), row(reproduce, "keras_mlp", 2, 0.46)]
    before = previous(reproduce, [row(reproduce, "lenet", 1, 0.55), row(reproduce, "keras_mlp", 1, 0.40)])
    out = {r["preset"]: r for r in reproduce.carried(now, before)}
    assert out["lenet"]["test_acc"] == 0.55
    assert out["lenet"]["carried_from"] == {"store": "/tmp/old-store", "written": "2026-12-01 10:00",
                                            "commands": ["2026-12-01 09:00  reproduce.py --presets lenet"]}
    # This store measured keras_mlp: its figure wins, unmarked.
    assert out["keras_mlp"]["test_acc"] == 0.46 and "carried_from" not in out["keras_mlp"]


def test_a_run_stopped_here_shows_this_stores_progress_not_an_old_figure(reproduce):
    now = [row(reproduce, "lenet", 0, epochs_done=1)]
    out = reproduce.carried(now, previous(reproduce, [row(reproduce, "lenet", 1, 0.55)]))
    assert out[0]["n"] == 0 and "carried_from" not in out[0]


def test_nothing_carries_from_a_smoke_check_or_an_unmeasured_row(reproduce):
    now = [row(reproduce, "lenet", 0), row(reproduce, "vgg16", 0)]
    assert reproduce.carried(now, previous(reproduce, [row(reproduce, "lenet", 1, 0.5)], quick=True)) == now
    assert reproduce.carried(now, previous(reproduce, [row(reproduce, "vgg16", 0)])) == now
    assert reproduce.carried(now, None) == now


def test_the_table_marks_carried_figures_and_names_where_they_came_from(reproduce):
    before = previous(reproduce, [row(reproduce, "lenet", 1, 0.5486)])
    rows = reproduce.carried([row(reproduce, "lenet", 0), row(reproduce, "keras_mlp", 1, 0.4685)], before)
    info = {"date": "2026-12-03 12:00", "cpu": "cpu", "cores": 2, "matrix_flags": [], "memory_gib": 1.0,
            "torch": "t", "load_average_at_start": 0.0}
    text = reproduce.markdown(rows, info, ["cmd"], quick=False, home="/tmp/old-store")
    lenet = next(line for line in text.splitlines() if line.startswith("| `lenet`"))
    mlp = next(line for line in text.splitlines() if line.startswith("| `keras_mlp`"))
    assert "54.86 †" in lenet and "†" not in mlp
    assert "earlier store (at this same path, since removed; its report written 2026-12-01 10:00)" in text
    assert "2026-12-01 09:00  reproduce.py --presets lenet" in text
    elsewhere = reproduce.markdown(rows, info, ["cmd"], quick=False, home="/tmp/new-store")
    assert "earlier store (/tmp/old-store;" in elsewhere


def test_a_pass_over_some_presets_still_reports_the_whole_zoo(reproduce, monkeypatch, tmp_path):
    """Training two presets must not drop the other rows from the report."""
    asked = []
    monkeypatch.setattr(reproduce, "measure", lambda name, args: asked.append(name) or row(reproduce, name, 0))
    monkeypatch.setattr(reproduce, "run_preset", lambda name, args: {"exit": 0})
    monkeypatch.setattr(reproduce, "previous_report", lambda: None)
    assert reproduce.main(["--home", str(tmp_path), "--presets", "lenet", "--report-only", "--no-write"]) == 0
    assert asked == list(reproduce.PRESETS)
