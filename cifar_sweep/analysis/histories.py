"""Per-epoch metric histories (the long frame `tracking.queries.load_histories` returns) reduced per run.

Pandas only, torch-free: the leaderboard, the device comparison and the report use these.
"""

from __future__ import annotations

import pandas as pd

WARMUP_EPOCH = 0


def curve(histories: pd.DataFrame, key: str) -> pd.DataFrame:
    """Wide frame: one row per (run_id, step), for one key."""
    part = histories[histories["key"] == key]
    return part[["run_id", "step", "value"]].rename(columns={"value": key})


def mean_excluding_warmup(histories: pd.DataFrame, key: str) -> pd.Series:
    """Per-run mean of a per-epoch metric, leaving out the warm-up epoch 0 when there are >= 2 epochs.

    Epoch 0 pays for allocator growth, cuDNN/oneDNN autotuning and compilation; averaging it in
    would make short runs look slower than the device is.
    """
    part = curve(histories, key)
    epochs = part.groupby("run_id")["step"].transform("size")
    kept = part[(epochs < 2) | (part["step"] != WARMUP_EPOCH)]
    return kept.groupby("run_id")[key].mean()


def logged_rates(runs: pd.DataFrame) -> pd.Series:
    """Per run id: the `steady_images_per_s` a run logged at its end, the same mean as
    `mean_excluding_warmup` of its images/s; runs from before it was logged are left out."""
    if "metrics.steady_images_per_s" not in runs:
        return pd.Series(dtype=float)
    rates = pd.to_numeric(runs["metrics.steady_images_per_s"], errors="coerce")
    return pd.Series(rates.to_numpy(), index=runs["run_id"].to_numpy()).dropna()


def time_to_target(histories: pd.DataFrame, target: float, metric: str = "val_acc") -> pd.DataFrame:
    """Per run: first epoch whose `metric` reached `target`, and elapsed_s at that epoch (NaN: never)."""
    acc = curve(histories, metric)
    hit = acc[acc[metric] >= target].sort_values(["run_id", "step"]).drop_duplicates("run_id")
    elapsed = curve(histories, "elapsed_s")
    hit = hit.merge(elapsed, on=["run_id", "step"], how="left")
    out = hit.set_index("run_id")[["step", "elapsed_s"]].rename(
        columns={"step": "target_epoch", "elapsed_s": "target_time_s"}
    )
    return out.astype(float)
