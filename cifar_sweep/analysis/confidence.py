"""How sure a figure is: intervals, a two-sample test and a spread check, on a handful of repeats.

The leaderboard asks whether a config's lead over another is more than seed noise; the device
comparison asks how far a speed-up would move if the runs were timed again. Both have few samples
(2-10 seeds or repeats), so every function here says what it does with one sample (no interval:
NaN) and with samples that do not vary (an interval of zero width, a test that cannot be wrong),
instead of handing scipy's warnings and NaNs to a table.

scipy does the statistics; this module only fixes the conventions (95%, a fixed resampling seed so
that a table reads the same twice, Welch's test rather than Student's).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import numpy as np

LEVEL = 0.95
NOISE_P = 0.05  # a gap to the leader with Welch's p at or above this is within noise
SPREAD_LIMIT = 0.10  # IQR / median of a side's repeats above this: a noisy machine, a wide interval
RESAMPLES = 9_999
RNG_SEED = 0  # the bootstrap resamples the same way every time: the same runs print the same interval
MLPERF_TRIM_FROM = 5  # with this many repeats or more, the fastest and the slowest are dropped

_NAN_PAIR = (math.nan, math.nan)


def _stats():
    # scipy.stats takes a second or more to import: loaded by the first figure that needs it, so a
    # leaderboard without folded seeds, or a command that never ranks, does not wait for it.
    from scipy import stats

    return stats


def _clean(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[np.isfinite(array)]


def mean_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Student's t-interval of the mean (n - 1 degrees of freedom); NaN with fewer than two values.

    Identical values give an interval of zero width (scipy would give NaN for a zero scale)."""
    x = _clean(values)
    if len(x) < 2:
        return _NAN_PAIR
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    stats = _stats()
    mean, sem = float(x.mean()), float(stats.sem(x))
    low, high = stats.t.interval(level, len(x) - 1, loc=mean, scale=sem)
    return float(low), float(high)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p of Welch's t-test (unequal variances) that `a` and `b` have the same mean.

    NaN when either side has fewer than two values (no variance to test with). Two sides without any
    spread cannot be noise: p is 1 where their means are equal and 0 where they differ."""
    x, y = _clean(a), _clean(b)
    if len(x) < 2 or len(y) < 2:
        return math.nan
    if x.std() == 0 and y.std() == 0:
        return 1.0 if x.mean() == y.mean() else 0.0
    return float(_stats().ttest_ind(x, y, equal_var=False).pvalue)


def within_noise(p: float) -> bool | None:
    """The verdict of `welch_p`: True (no evidence of a difference), False, or None (no test)."""
    return None if math.isnan(p) else bool(p >= NOISE_P)


def _rng_option() -> str:
    # scipy 1.15 renamed `random_state` to `rng`; older releases only know the first.
    return "rng" if "rng" in inspect.signature(_stats().bootstrap).parameters else "random_state"


def bootstrap_interval(values: Sequence[float], statistic: Callable = np.median, level: float = LEVEL,
                       resamples: int = RESAMPLES, seed: int = RNG_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` (default: the median); NaN with fewer than two values.

    Percentile rather than BCa: with 2-5 repeats BCa's acceleration estimate is itself noise, and it
    is undefined for samples without spread. Resampled from a fixed seed, so reproducible."""
    x = _clean(values)
    if len(x) < 2:
        return _NAN_PAIR
    if np.all(x == x[0]):
        value = float(statistic(x))
        return value, value
    result = _stats().bootstrap((x,), statistic, confidence_level=level, n_resamples=resamples,
                             method="percentile",
                             **{_rng_option(): np.random.default_rng(seed)})
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def relative_iqr(values: Sequence[float]) -> float:
    """Interquartile range over the median: the spread of repeats, robust to one outlier; NaN if empty."""
    x = _clean(values)
    if not len(x):
        return math.nan
    median = float(np.median(x))
    q1, q3 = np.percentile(x, [25, 75])
    return float(q3 - q1) / median if median else math.nan


def too_spread(values: Sequence[float], limit: float = SPREAD_LIMIT) -> bool:
    spread = relative_iqr(values)
    return not math.isnan(spread) and spread > limit


def mlperf_mean(values: Sequence[float]) -> float:
    """MLPerf Training's score of repeated time-to-target runs: the mean, after dropping the fastest
    and the slowest run where there are at least five; NaN when no run reached the target."""
    x = np.sort(_clean(values))
    if len(x) >= MLPERF_TRIM_FROM:
        x = x[1:-1]
    return float(x.mean()) if len(x) else math.nan
