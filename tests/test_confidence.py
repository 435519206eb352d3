"""The statistics behind the leaderboard's intervals and the speed-ups' (analysis.confidence): known
inputs against scipy called directly, and the edge cases a handful of seeds produces."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cifar_sweep.analysis import confidence as conf
from cifar_sweep.analysis import ranking, speedup


def test_mean_interval_is_scipys_t_interval():
    values = [0.70, 0.72, 0.74]
    # mean 0.72, sem 0.02 / sqrt(3), t(0.975, 2) = 4.303: 0.72 +- 0.0497
    expected = stats.t.interval(0.95, 2, loc=0.72, scale=0.02 / math.sqrt(3))
    assert conf.mean_interval(values) == pytest.approx(expected)
    assert conf.mean_interval(values) == pytest.approx((0.670317, 0.769683), abs=1e-6)
    assert conf.mean_interval([0.7, 0.7, 0.7]) == (0.7, 0.7)  # no spread: zero width, not NaN
    assert all(math.isnan(v) for v in conf.mean_interval([0.7]))  # one seed: no interval
    assert all(math.isnan(v) for v in conf.mean_interval([0.7, math.nan]))  # NaN is not a seed


def test_welch_p_is_scipys_and_says_noise_or_not():
    a, b = [0.70, 0.72, 0.74, 0.71], [0.69, 0.73, 0.70]
    assert conf.welch_p(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    # Identical samples: within noise; well separated: a real gap.
    assert conf.welch_p(a, a) == pytest.approx(1.0) and conf.within_noise(conf.welch_p(a, a)) is True
    far = conf.welch_p([0.90, 0.91, 0.92], [0.50, 0.51, 0.52])
    assert far < 1e-4 and conf.within_noise(far) is False
    # Without spread on either side, a difference is no noise and equality is no gap.
    assert conf.welch_p([0.7, 0.7], [0.6, 0.6]) == 0.0 and conf.welch_p([0.7, 0.7], [0.7, 0.7]) == 1.0
    # One seed on a side: no test, and no verdict.
    assert math.isnan(conf.welch_p([0.7], a)) and conf.within_noise(conf.welch_p([0.7], a)) is None


def test_bootstrap_interval_is_scipys_percentile_bootstrap_and_reproducible():
    ratios = [1.9, 2.0, 2.1, 2.05, 1.7, 2.4]
    got = conf.bootstrap_interval(ratios)
    direct = stats.bootstrap((np.array(ratios),), np.median, n_resamples=conf.RESAMPLES, method="percentile",
                             **{conf._rng_option(): np.random.default_rng(conf.RNG_SEED)}).confidence_interval
    assert got == pytest.approx((direct.low, direct.high))
    assert got == conf.bootstrap_interval(ratios)  # a fixed seed: the same runs print the same interval
    assert got[0] <= np.median(ratios) <= got[1] and 1.7 <= got[0] and got[1] <= 2.4
    assert conf.bootstrap_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert all(math.isnan(v) for v in conf.bootstrap_interval([2.0]))


def test_spread_and_mlperf_mean():
    assert conf.relative_iqr([1.0, 1.1, 1.2]) == pytest.approx(0.1 / 1.1)
    assert not conf.too_spread([1.0, 1.1, 1.2]) and conf.too_spread([1.0, 1.5, 2.0])
    assert math.isnan(conf.relative_iqr([]))
    assert conf.mlperf_mean([10, 20, 30, 40]) == 25  # fewer than five: the plain mean
    assert conf.mlperf_mean([10, 20, 30, 40, 500]) == 30  # five: the fastest and the slowest dropped
    assert conf.mlperf_mean([10, math.nan]) == 10 and math.isnan(conf.mlperf_mean([]))


def _pairs(times_a, times_b, **extra) -> pd.DataFrame:
    """add_timing's rows for one config and setup pair, one per seed."""
    return pd.DataFrame([{
        "config_hash": "h", "seed": str(k), "model": "cnn_simple", "data": "synthetic", "optimizer": "adam", "lr": "0.001",
        "schedule": "constant", "epochs": "2", "batch_size": "128",
        **{f"{key}_{s}": value for s in "ab" for key, value in
           (("device", "cpu"), ("device_name", "CPU"), ("compile", "False"), ("precision", "fp32"),
            ("shared_by", math.nan), ("test_acc", 0.7), ("images_per_s", 100.0))},
        "threads_a": "1", "threads_b": "2", "run_id_a": f"a{k}", "run_id_b": f"b{k}",
        "epoch_time_s_a": ta, "epoch_time_s_b": tb, **{key: v[k] for key, v in extra.items()},
    } for k, (ta, tb) in enumerate(zip(times_a, times_b))])


def test_speedup_over_repeats_has_an_interval_and_a_verdict():
    rows = speedup.summarize(_pairs([2.0, 2.2, 1.8, 2.0, 2.1], [1.0, 1.0, 1.0, 1.05, 1.0],
                                    target_time_s_a=[10, 11, 12, 13, 50], target_time_s_b=[5, 6, math.nan, 7, 8]))
    row = rows.iloc[0]
    assert row["n"] == 5 and row["seeds"] == ["0", "1", "2", "3", "4"]
    ratios = [2.0, 2.2, 1.8, 2.0 / 1.05, 2.1]
    assert row["speedup"] == pytest.approx(np.median(ratios))
    assert (row["speedup_ci_low"], row["speedup_ci_high"]) == pytest.approx(conf.bootstrap_interval(ratios))
    assert row["verdict"] == "B faster" and row["speedup_ci_low"] > 1
    # IQR of 1.8, 2.0, 2.0, 2.1, 2.2 over their median
    assert row["epoch_time_s_a"] == 2.0 and row["spread_a"] == pytest.approx((2.1 - 2.0) / 2.0)
    assert row["target_time_s_a"] == 12 and row["target_reached_a"] == 5  # 10 and 50 dropped (MLPerf)
    assert row["target_time_s_b"] == 6.5 and row["target_reached_b"] == 4  # four reached: plain mean
    assert speedup.noisy_sides(next(rows.itertuples(index=False))) == []
    even = speedup.summarize(_pairs([1.0, 1.3, 0.9], [1.1, 1.0, 1.0])).iloc[0]
    assert even["verdict"] == "no clear difference" and even["speedup_ci_low"] < 1 < even["speedup_ci_high"]
    noisy = speedup.summarize(_pairs([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]))
    assert speedup.noisy_sides(next(noisy.itertuples(index=False))) == ["A 50%"]


def test_one_repeat_is_a_single_sample_without_interval():
    row = speedup.summarize(_pairs([2.0], [1.0])).iloc[0]
    assert (row["n"], row["speedup"], row["verdict"]) == (1, 2.0, "single sample")
    assert math.isnan(row["speedup_ci_low"]) and math.isnan(row["speedup_ci_high"])


def _runs(groups: dict[str, list[float]]) -> pd.DataFrame:
    """A runs frame as the store gives it: one FINISHED run per (config, seed)."""
    rows = []
    for config, values in groups.items():
        for seed, value in enumerate(values):
            rows.append({"run_id": f"{config}{seed}", "run_name": config, "status": "FINISHED",
                         "start_time": len(rows), "tags.config_hash": config, "tags.device": "cpu",
                         "tags.threads": "2", "params.seed": str(seed), "metrics.best_val_acc": value})
    return pd.DataFrame(rows)


def test_ranking_marks_what_is_within_noise_of_the_leader():
    rows = ranking.rank_runs(_runs({"lead": [0.80, 0.82, 0.84], "close": [0.79, 0.83, 0.81],
                                    "far": [0.50, 0.51, 0.52], "one": [0.815]}))
    by_name = rows.set_index("run_name")
    assert list(rows["run_name"]) == ["lead", "one", "close", "far"]
    assert (by_name.loc["lead", "ci_low"], by_name.loc["lead", "ci_high"]) == pytest.approx(
        stats.t.interval(0.95, 2, loc=0.82, scale=stats.sem([0.80, 0.82, 0.84])))
    assert math.isnan(by_name.loc["lead", "p_vs_leader"]) and pd.isna(by_name.loc["lead", "within_noise"])
    assert by_name.loc["close", "within_noise"] == True  # noqa: E712 (a pandas boolean)
    assert by_name.loc["close", "p_vs_leader"] == pytest.approx(
        stats.ttest_ind([0.79, 0.83, 0.81], [0.80, 0.82, 0.84], equal_var=False).pvalue)
    assert by_name.loc["far", "within_noise"] == False and by_name.loc["far", "p_vs_leader"] < 0.05  # noqa: E712
    assert pd.isna(by_name.loc["one", "within_noise"]) and math.isnan(by_name.loc["one", "ci_low"])
