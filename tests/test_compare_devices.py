"""Device and thread-count pairing on the seeded store (A0 cpu/2, A_t1 cpu/1, A_cuda cuda:0, seed 0)."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from store_fixtures import seeded_store  # noqa: F401  (module-scoped fixture)

from cifar_sweep.analysis import speedup as su
from cifar_sweep.commands import compare_devices as cd
from cifar_sweep.tracking import queries as rq


@pytest.fixture(scope="module")
def pairs(seeded_store):
    return cd.compare(seeded_store.uri, "cifar_sweep")


def test_pairs_same_config_and_seed_across_setups(seeded_store, pairs):
    ids = seeded_store.ids
    got = list(zip(pairs["run_id_a"], pairs["run_id_b"]))
    # Slower kinds first (cpu before cuda, fewer threads first): speed-up > 1 means B is faster.
    assert got == [(ids["A_t1"], ids["A0"]), (ids["A_t1"], ids["A_cuda"]), (ids["A0"], ids["A_cuda"])]
    assert list(pairs["seed"]) == ["0", "0", "0"]
    assert set(pairs["config_hash"]) == {"hA"}  # seeds 1, 2 ran on one setup only; the KILLED run never pairs


def test_timing_excludes_warmup_and_ratio(pairs):
    threads, cpu_cuda_1, cpu_cuda = (pairs.iloc[i] for i in range(3))
    assert (threads["device_a"], threads["threads_a"], threads["device_b"], threads["threads_b"]) == ("cpu", "1", "cpu", "2")
    # epoch_time_s [20, 16, 16] vs [10, 8, 8]: the warm-up epoch 0 is left out of both medians.
    assert (threads["epoch_time_s_a"], threads["epoch_time_s_b"]) == (16, 8)
    assert threads["speedup"] == pytest.approx(2.0)
    assert (threads["images_per_s_a"], threads["images_per_s_b"]) == (105, 210)
    assert (cpu_cuda["device_a"], cpu_cuda["device_b"]) == ("cpu", "cuda:0")
    assert cpu_cuda["speedup"] == pytest.approx(8.0)
    assert cpu_cuda_1["speedup"] == pytest.approx(16.0)
    # Accuracy of each side, so a faster device that learned worse shows.
    assert (cpu_cuda["test_acc_a"], cpu_cuda["test_acc_b"]) == (0.69, 0.70)
    assert cpu_cuda["device_name_b"] == "NVIDIA A100"


TABLE = """\
Device comparison: cifar_sweep (speed-up = epoch time A / epoch time B)
model       data          optimizer     lr  schedule  epochs  seed  device A  threads A  prec A  device B  threads B  prec B  epoch s A  epoch s B  img/s A  img/s B  speed-up       min-max  n  verdict         test_acc A %  test_acc B %
----------  ------------  ---------  -----  --------  ------  ----  --------  ---------  ------  --------  ---------  ------  ---------  ---------  -------  -------  --------  ------------  -  --------------  ------------  ------------
cnn_simple  cifar10-jpeg  adam       0.001  constant       3     0  cpu               1  fp32    cpu               2  fp32        16.00       8.00      105      210     2.00x    2.00-2.00x  2  too few epochs         69.00         69.00
cnn_simple  cifar10-jpeg  adam       0.001  constant       3     0  cpu               1  fp32    cuda:0            2  fp32        16.00       1.00      105    3,100    16.00x  16.00-16.00x  2  too few epochs         69.00         70.00
cnn_simple  cifar10-jpeg  adam       0.001  constant       3     0  cpu               2  fp32    cuda:0            2  fp32         8.00       1.00      210    3,100     8.00x    8.00-8.00x  2  too few epochs         69.00         70.00

Speed-up: A's epoch time / B's, epoch by epoch; the median, its min-max over the n epochs compared. Epoch 0 (warm-up, compile) is left out; times and images/s are medians of the same epochs. A verdict needs n >= 3.
pair 1 (cpu/1 vs cpu/2): speed-up 2.00x from 2 epochs, not a verdict; rerun with trainer.epochs>=4
pair 2 (cpu/1 vs cuda:0/2): speed-up 16.00x from 2 epochs, not a verdict; rerun with trainer.epochs>=4
pair 3 (cpu/2 vs cuda:0/2): speed-up 8.00x from 2 epochs, not a verdict; rerun with trainer.epochs>=4
Each pair is a single sample (one run per side): its min-max spans the epochs of two runs, not run-to-run noise, and there is no interval across repeats; --repeats N (or seeds 0..N-1 on both setups) times repeats.
"""


def test_table_exact(pairs):
    assert cd.render(pairs, "table", "cifar_sweep") == TABLE


def test_markdown_csv_html(pairs, seeded_store):
    md = cd.render(pairs, "md", "cifar_sweep").splitlines()
    assert md[2].endswith("| 16.00 | 8.00 | 105 | 210 | 2.00x | 2.00-2.00x | 2 | too few epochs | 69.00 | 69.00 |")
    assert md[6].startswith("* Speed-up: A's epoch time / B's") and len(md) == 11
    assert md[-1].startswith("* Each pair is a single sample (one run per side)")
    frame = pd.read_csv(io.StringIO(cd.render(pairs, "csv", "cifar_sweep")))
    assert list(frame["speedup"]) == [2, 16, 8]
    assert list(frame["first_epoch_time_s_a"]) == [20, 20, 10] and list(frame["compared_epochs"]) == [2, 2, 2]
    assert list(frame["device_name_b"]) == ["Test CPU", "NVIDIA A100", "NVIDIA A100"]
    assert list(frame["run_id_a"]) == [seeded_store.ids["A_t1"]] * 2 + [seeded_store.ids["A0"]]
    page = cd.render(pairs, "html", "cifar_sweep")
    assert page.count("<tr>") == 4 and "<td class=\"num\">8.00x</td>" in page


def test_no_pairs_is_a_clear_error(seeded_store, capsys):
    with pytest.raises(rq.StoreError, match=r"^no pairs in 'cifar_sweep' \(.*pairing needs two runs with the same "
                                            r"config_hash and seed"):
        cd.compare(seeded_store.uri, "cifar_sweep", model="resnet9")
    assert cd.main(["--tracking-uri", seeded_store.uri, "--experiment", "empty_exp"]) == 1
    assert capsys.readouterr().err == "cifar-compare-devices: experiment 'empty_exp' has no runs yet\n"


def test_data_selects_one_dataset_and_an_unknown_one_is_named(seeded_store, pairs, capsys):
    same = cd.compare(seeded_store.uri, "cifar_sweep", data="cifar10-jpeg")
    assert list(same["run_id_a"]) == list(pairs["run_id_a"])
    assert cd.main(["--tracking-uri", seeded_store.uri, "--data", "cifar2"]) == 1
    assert capsys.readouterr().err == ("cifar-compare-devices: no runs on data 'cifar2' in 'cifar_sweep'; "
                                       "its runs used: cifar10-jpeg\n")


def test_main_prints_pairs(seeded_store, capsys):
    assert cd.main(["--tracking-uri", seeded_store.uri, "--model", "cnn_simple"]) == 0
    assert capsys.readouterr().out == TABLE


def _series(values) -> pd.Series:
    return pd.Series([float(v) for v in values], index=range(len(values)))


def test_speedup_is_the_median_of_per_epoch_ratios_with_its_spread():
    # CPU epochs of 10 s (the first 14: warm-up), GPU epochs of 1.0-1.25 s (the first 6: compile).
    cpu, gpu = _series([14, 10, 10, 10, 10, 10]), _series([6, 1.25, 1.0, 1.0, 1.1, 1.0])
    got = su.pair_timing(cpu, gpu, _series([700, 1000, 1000, 1000, 1000, 1000]),
                         _series([1600, 8000, 10000, 10000, 9100, 10000]))
    assert got["compared_epochs"] == 5 and got["verdict"] == "B faster"
    assert got["speedup"] == pytest.approx(10.0)  # ratios 8, 10, 10, 9.09, 10: the median, not the mean
    assert (got["speedup_min"], got["speedup_max"]) == pytest.approx((8.0, 10.0))
    assert (got["epoch_time_s_a"], got["epoch_time_s_b"]) == (10.0, 1.0)
    assert (got["first_epoch_time_s_a"], got["first_epoch_time_s_b"]) == (14.0, 6.0)
    assert (got["images_per_s_a"], got["images_per_s_b"]) == (1000.0, 10000.0)


def test_spread_across_one_is_no_verdict_and_too_few_epochs_is_a_caveat():
    even = su.pair_timing(_series([9, 10, 9, 11, 10]), _series([9, 9.5, 10, 10, 10]), _series([1] * 5), _series([1] * 5))
    assert even["verdict"] == "no clear difference" and even["speedup_min"] < 1 < even["speedup_max"]
    slower = su.pair_timing(_series([5, 1, 1, 1]), _series([5, 2, 2, 2]), _series([1] * 4), _series([1] * 4))
    assert slower["verdict"] == "A faster" and slower["speedup"] == 0.5
    one = su.pair_timing(_series([12, 10]), _series([3, 1]), _series([1, 1]), _series([1, 1]))
    assert (one["compared_epochs"], one["verdict"], one["speedup"]) == (1, "too few epochs", 10.0)
    # A one-epoch run has only its warm-up epoch: that is what is compared, and it is no verdict either.
    warm = su.pair_timing(_series([12]), _series([3]), _series([1]), _series([1]))
    assert (warm["compared_epochs"], warm["speedup"], warm["verdict"]) == (1, 4.0, "too few epochs")
    frame = pd.DataFrame([{"device_a": "cpu", "threads_a": "2", "device_b": "cuda:0", "threads_b": "16", **one}])
    assert cd.notes(frame)[1] == ("pair 1 (cpu/2 vs cuda:0/16): speed-up 10.00x from one epoch: a single noisy sample, "
                                  "not a verdict; rerun with trainer.epochs>=4")


def _table(*runs) -> pd.DataFrame:
    """run_table's frame for runs of one config and seed: (run_id, device, compile, precision, shared_by)."""
    return pd.DataFrame([{
        "run_id": rid, "run_name": rid, "start_time": k, "config_hash": "h", "seed": "0", "model": "cnn_simple",
        "data": "cifar10", "optimizer": "adam", "lr": "0.001", "schedule": "constant", "epochs": "4", "batch_size": "128",
        "device": device, "threads": "16", "device_name": "GPU" if device != "cpu" else "CPU",
        "precision": precision, "compile": compile, "shared_by": shared, "test_acc": 0.7,
    } for k, (rid, device, compile, precision, shared) in enumerate(runs)])


def test_compiled_and_eager_runs_of_one_device_pair_instead_of_replacing_each_other():
    pairs = su.pair_runs(_table(("eager", "cuda:0", "False", "bf16", None), ("compiled", "cuda:0", "True", "bf16", None)))
    # Before the compile choice was part of a run's setup, the later run replaced the earlier: no pair.
    assert list(zip(pairs["run_id_a"], pairs["run_id_b"])) == [("eager", "compiled")]  # eager is A: > 1 = compile wins
    shown = cd.display_frame(pairs.assign(**{k: 1.0 for k in ("epoch_time_s_a", "epoch_time_s_b", "images_per_s_a",
                                                                 "images_per_s_b", "speedup", "speedup_min",
                                                                 "speedup_max", "test_acc_a", "test_acc_b")},
                                          compared_epochs=3, verdict="no clear difference"))
    assert (shown["prec A"][0], shown["prec B"][0]) == ("bf16", "bf16+compile")


def test_a_run_timed_on_a_shared_gpu_is_marked_and_noted():
    pairs = su.pair_runs(_table(("cpu", "cpu", "False", "fp32", None), ("gpu", "cuda:0", "False", "bf16", 2.0)))
    timed = su.add_timing(pairs, pd.DataFrame(columns=["run_id", "key", "step", "value"]))
    assert list(cd.display_frame(timed)["device B"]) == ["cuda:0 (2 jobs)"]
    assert list(cd.display_frame(timed)["device A"]) == ["cpu"]
    assert cd.notes(timed)[-1].startswith("pair 1: B's cuda:0 was shared by 2 jobs of its sweep at once: its times "
                                          "include the other jobs' work")
    alone = su.add_timing(su.pair_runs(_table(("cpu", "cpu", "False", "fp32", None),
                                              ("gpu", "cuda:0", "False", "bf16", 1.0))),
                          pd.DataFrame(columns=["run_id", "key", "step", "value"]))
    assert not any("shared" in line for line in cd.notes(alone))
    assert list(cd.display_frame(alone)["device B"]) == ["cuda:0"]
