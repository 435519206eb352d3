"""`cifar-compare-devices` over repeats: the seeds of one config on two setups as repeated timings,
the speed-up's bootstrap interval, time to a target, the spread and shared-device lines, and
`--repeats N` launching the runs itself (end to end, on synthetic data)."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from helpers import run_cli
from mlflow.entities import Metric, Param
from store_fixtures import seeded_store  # noqa: F401  (module-scoped fixture)

from cifar_sweep.analysis import confidence as conf
from cifar_sweep.commands import compare_devices as cd
from cifar_sweep.commands import repeat_runs
from cifar_sweep.tracking.store import open_store

# (config, threads, device, shared_by): steady epoch time per seed (the warm-up epoch is 3x that).
SETUPS = {
    ("h", "1", "cpu", None): [2.0, 2.2, 1.8, 2.0, 2.1],
    ("h", "2", "cpu", None): [1.0, 1.0, 1.0, 1.05, 1.0],
    ("g", "2", "cpu", None): [1.0, 1.0],
    ("g", "2", "cuda:0", "2"): [0.1, 0.3],  # noisy, and its GPU was shared by two jobs
}
ELAPSED_TO_0_6 = {"1": [10, 11, 12, 13, 50], "2": [5, 6, 7, 8, 9]}  # seconds at epoch 1, where val_acc is 0.6


@pytest.fixture(scope="module")
def repeat_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("repeat_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = open_store(uri, create=True)
    exp = client.create_experiment("cifar_sweep", artifact_location=(root / "artifacts").as_uri())
    ids = {}
    for (config, threads, device, shared), times in SETUPS.items():
        for seed, t in enumerate(times):
            tags = {"model": "cnn_simple", "optimizer": "adam", "schedule": "constant", "config_hash": config,
                    "device": device, "threads": threads, "device_name": "CPU" if device == "cpu" else "GPU",
                    "precision": "fp32", "dataset": "synthetic"}
            if shared:
                tags["device_shared_by"] = shared
            run = client.create_run(exp, run_name=f"{config} {device}/{threads} seed={seed}", tags=tags)
            elapsed = ELAPSED_TO_0_6.get(threads, [1] * 5)[seed]
            history = {"epoch_time_s": [3 * t, t, t], "images_per_s": [100 / t] * 3, "val_acc": [0.4, 0.6, 0.7],
                       "elapsed_s": [elapsed / 2, elapsed, elapsed + 1]}
            client.log_batch(run.info.run_id, params=[Param("seed", str(seed)), Param("trainer.epochs", "3"),
                                                      Param("optimizer.lr", "0.001")],
                             metrics=[Metric(k, float(v), 0, step) for k, vs in history.items()
                                      for step, v in enumerate(vs)] + [Metric("test_acc", 0.7, 0, 0)])
            client.set_terminated(run.info.run_id, "FINISHED")
            ids[(config, device, threads, seed)] = run.info.run_id
    return uri, ids


def _main(capsys, *args) -> tuple[int, str, str]:
    code = cd.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_seeds_on_both_setups_are_repeats_with_a_bootstrap_interval(repeat_store, capsys):
    uri, _ = repeat_store
    code, out, _ = _main(capsys, "--tracking-uri", uri, "--model", "cnn_simple")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "Device comparison over repeats: cifar_sweep (speed-up = epoch time A / epoch time B)"
    h = next(line for line in lines[3:5] if "cpu               1" in line)
    assert h.split()[1] == "synthetic", "the dataset each pair ran on is named"
    ratios = [2.0, 2.2, 1.8, 2.0 / 1.05, 2.1]
    low, high = conf.bootstrap_interval(ratios)
    cells = h.split()
    assert cells[11:19] == ["5", "2.000", "1.000", "5%", "0%",  # runs, epoch s A and B, spread A and B
                            f"{np.median(ratios):.2f}x", f"{low:.2f}-{high:.2f}x", "B"]
    assert "single sample" not in out
    assert any(line.startswith("Speed-up: A's epoch time / B's per repeat") for line in lines)


def test_csv_has_one_row_per_setup_pair_with_the_interval(repeat_store, capsys):
    uri, ids = repeat_store
    _, out, _ = _main(capsys, "--tracking-uri", uri, "--format", "csv")
    frame = pd.read_csv(io.StringIO(out)).set_index("config_hash")
    assert set(frame.index) == {"g", "h"}
    h = frame.loc["h"]
    assert (h["n"], h["seeds"], h["verdict"]) == (5, "0;1;2;3;4", "B faster")
    assert (h["speedup_ci_low"], h["speedup_ci_high"]) == pytest.approx(
        conf.bootstrap_interval([2.0, 2.2, 1.8, 2.0 / 1.05, 2.1]), rel=1e-5)
    assert h["run_ids_a"].split(";") == [ids[("h", "cpu", "1", s)] for s in range(5)]
    g = frame.loc["g"]
    assert (g["device_a"], g["device_b"], g["shared_by_b"]) == ("cpu", "cuda:0", 2)


def test_noisy_and_shared_sides_get_one_line_each(repeat_store, capsys):
    uri, _ = repeat_store
    _, out, _ = _main(capsys, "--tracking-uri", uri)
    notes = [line for line in out.splitlines() if line.startswith("pair ")]
    assert len(notes) == 2, notes
    assert notes[0].startswith("pair 1 (cpu/2 vs cuda:0/2): runs spread over 10% (IQR / median: B 50%)")
    assert notes[1].startswith("pair 1: device shared at once (B's cuda:0 by 2 jobs of its sweep)")


def test_markdown_and_html_carry_the_notes(repeat_store, capsys):
    uri, _ = repeat_store
    _, md, _ = _main(capsys, "--tracking-uri", uri, "--format", "md")
    assert "| 95% CI |" in md.splitlines()[0] and "\n* pair 1: device shared at once" in md
    _, page, _ = _main(capsys, "--tracking-uri", uri, "--format", "html")
    assert page.count("<tr>") == 3 and '<p class="note">Speed-up: A&#x27;s epoch time' in page
    assert '<p class="note">pair 1 (cpu/2 vs cuda:0/2): runs spread over 10%' in page


def test_time_to_target_is_the_mlperf_mean(repeat_store, capsys):
    uri, _ = repeat_store
    _, out, _ = _main(capsys, "--tracking-uri", uri, "--target", "0.6", "--format", "csv")
    h = pd.read_csv(io.StringIO(out)).set_index("config_hash").loc["h"]
    # A: 10, 11, 12, 13, 50 -> the fastest and slowest dropped; B: 5..9 -> 7.
    assert (h["target_time_s_a"], h["target_reached_a"], h["target_time_s_b"]) == (12, 5, 7)
    _, out, _ = _main(capsys, "--tracking-uri", uri, "--target", "0.6")
    assert "to 0.6 A" in out and "12.0s (5/5)" in out and "as MLPerf Training scores repeats" in out


def test_per_epoch_keeps_a_row_per_pair_of_runs(repeat_store, capsys):
    uri, _ = repeat_store
    _, out, _ = _main(capsys, "--tracking-uri", uri, "--per-epoch", "--format", "csv")
    assert len(pd.read_csv(io.StringIO(out))) == 7  # 5 seeds of h, 2 of g


def test_one_run_per_side_says_it_is_a_single_sample(seeded_store, capsys):
    # The seeded store times config hA once per setup: the per-epoch table, and a line that says so.
    _, out, _ = _main(capsys, "--tracking-uri", seeded_store.uri)
    assert out.splitlines()[-1].startswith("Each pair is a single sample (one run per side)")
    # With a target the repeats view shows, and each of its rows says it has no interval.
    _, out, _ = _main(capsys, "--tracking-uri", seeded_store.uri, "--target", "0.7")
    assert "single sample" in out.splitlines()[3]
    assert "pair 1 (cpu/1 vs cpu/2): a single sample (one run per side): no interval, not a verdict" in out


def test_orient_keeps_the_launched_a_side(repeat_store):
    uri, ids = repeat_store
    a_ids = [ids[("h", "cpu", "2", s)] for s in range(5)]  # launched as A: the faster setup
    pairs = cd.compare(uri, "cifar_sweep", run_ids=a_ids + [ids[("h", "cpu", "1", s)] for s in range(5)],
                       a_ids=a_ids)
    assert list(pairs["run_id_a"]) == a_ids and set(pairs["threads_a"]) == {"2"}
    assert list(pairs["epoch_time_s_a"]) == [1.0, 1.0, 1.0, 1.05, 1.0]
    assert pairs["speedup"].max() < 1  # B (1 thread) is slower: the ratio says so


def test_launched_runs_of_two_configs_are_named_as_the_reason_there_is_no_pair(repeat_store):
    uri, ids = repeat_store
    with pytest.raises(cd.rq.StoreError, match=r"^the 2 runs compared do not pair: .* --a and --b may change only "
                                               r"trainer.device, trainer.threads"):
        cd.compare(uri, "cifar_sweep", run_ids=[ids[("h", "cpu", "1", 0)], ids[("g", "cpu", "2", 0)]])


@pytest.mark.cli
def test_a_launched_run_that_fails_stops_the_comparison_in_one_line(tmp_path):
    done = run_cli(["--repeats", "2", "--job", "model=nonexistent", "--a", "trainer.threads=1", "--b",
                    "trainer.threads=2"], tmp_path, module="cifar_sweep.commands.compare_devices")
    assert done.returncode == 1 and done.stdout == ""
    *progress, last = done.stderr.splitlines()
    assert progress == ["cifar-compare-devices: run 1/4 (A, seed 0): cifar-sweep model=nonexistent trainer.threads=1 "
                        "seed=0 resume=false tracking.experiment=cifar_sweep"]
    assert last.startswith("cifar-compare-devices: run 1/4 (A, seed 0) failed (exit 1): In 'train': Could not find "
                           "'model/nonexistent'; run `cifar-sweep")
    assert last.endswith("; run `cifar-sweep model=nonexistent trainer.threads=1 seed=0 resume=false "
                         "tracking.experiment=cifar_sweep` alone to see its whole output")


def test_the_reason_of_a_failed_run_is_its_telling_line():
    assert repeat_runs.failure_line("x\ncifar-sweep: trainer.epochs=0 must be an integer >= 1 (HYDRA_FULL_ERROR=1 shows "
                           "the traceback)\n").startswith("trainer.epochs=0 must be an integer >= 1")
    assert repeat_runs.failure_line("Traceback (most recent call last):\n  File x\nRuntimeError: boom\n") == "RuntimeError: boom"
    assert repeat_runs.failure_line("") == "no output"


@pytest.mark.parametrize("args, message", [
    (["--repeats", "2", "--a", "trainer.threads=1"], "--repeats needs both setups: e.g. --a"),
    (["--repeats", "2", "--a", "trainer.threads=1", "--b", "trainer.threads=1"], "--a and --b name the same setup"),
    (["--repeats", "2", "--job", "seed=3", "--a", "trainer.threads=1", "--b", "trainer.threads=2"],
     "'seed=3': the comparison sets seed itself; --seed sets the first seed"),
    (["--repeats", "2", "--job", "trainer.threads", "--a", "x=1", "--b", "x=2"],
     "'trainer.threads' is not a cifar-sweep override (key=value)"),
    (["--a", "trainer.threads=1", "--b", "trainer.threads=2"],
     "--job, --a and --b describe runs to launch; add --repeats N"),
    (["--repeats", "0", "--a", "x=1", "--b", "x=2"], "--repeats wants a positive number"),
])
def test_bad_repeat_options_are_one_line(seeded_store, capsys, args, message):
    code, out, err = _main(capsys, "--tracking-uri", seeded_store.uri, *args)
    assert code == 1 and out == ""
    assert err.startswith(f"cifar-compare-devices: {message}") and err.count("\n") == 1, err


@pytest.mark.cli
@pytest.mark.slow
def test_repeats_launch_interleaved_runs_and_compare_exactly_those(tmp_path):
    """Two repeats per side (synthetic data, one epoch, 1 vs 2 threads): four real cifar-sweep runs."""
    job = ["--job", "data=synthetic", "trainer.epochs=1", "diagnostics.figures=false", "tracking.system_metrics_s=0"]
    done = run_cli(["--repeats", "2", "--target", "0.3", *job, "--a", "trainer.device=cpu", "trainer.threads=1",
                    "--b", "trainer.device=cpu", "trainer.threads=2"], tmp_path, timeout=600,
                   module="cifar_sweep.commands.compare_devices")
    assert done.returncode == 0, done.stderr[-3000:]
    launched = [line for line in done.stderr.splitlines() if "): cifar-sweep " in line]
    assert [line.split(": cifar-sweep")[0].split(": ", 1)[1] for line in launched] == [
        "run 1/4 (A, seed 0)", "run 2/4 (B, seed 0)", "run 3/4 (A, seed 1)", "run 4/4 (B, seed 1)"]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Device comparison over repeats: cifar_sweep")
    row = lines[3].split()
    assert row[5:7] == ["cpu", "1"] and row[8:10] == ["cpu", "2"] and row[11] == "2"  # A as launched, 2 runs
    assert "x" in row[16] and "-" in row[17]  # a speed-up and its interval
    # Again: two more runs per side, and the table still compares exactly the runs it launched.
    again = run_cli(["--repeats", "1", "--seed", "5", *job, "--a", "trainer.device=cpu", "trainer.threads=1", "--b",
                     "trainer.device=cpu", "trainer.threads=2",
                     "--format", "csv"], tmp_path, timeout=600, module="cifar_sweep.commands.compare_devices")
    assert again.returncode == 0, again.stderr[-3000:]
    frame = pd.read_csv(io.StringIO(again.stdout))
    assert list(frame["n"]) == [1] and list(frame["seeds"]) == [5] and list(frame["verdict"]) == ["single sample"]
    assert math.isnan(frame["speedup_ci_low"][0])
    # The leaderboard of the same store folds the two seeds of each setup: an interval for each row.
    board = run_cli(["--format", "csv", "--tag-runs"], tmp_path, module="cifar_sweep.commands.leaderboard")
    assert board.returncode == 0, board.stderr
    ranked = pd.read_csv(io.StringIO(board.stdout))
    assert len(ranked) == 2 and list(ranked["n"]) == [3, 3]
    assert ranked["ci_low"].notna().all() and (ranked["ci_low"] <= ranked["best_val_acc"]).all()
