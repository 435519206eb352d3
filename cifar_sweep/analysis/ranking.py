"""Rank an experiment's runs by a metric, repeats of one config folded by seed: the leaderboard's library.

Torch-free on purpose (the leaderboard must answer in a second on a laptop without a GPU stack):
reads MLflow through `tracking.queries`, ranks with pandas. The leaderboard, the HTML report and
still-wrong build their tables from here; how a board looks is the commands' business.

Folding: runs with the same `config_hash` (resolved config without seed, device and threads), the
same device and the same thread count become one row with mean ± std and n. Device and threads are
part of the key on purpose: they do not change what is learned, but they do change the time and
images/s columns, and a mean over a GPU run and a CPU run would describe neither. For the same
reason a run whose GPU other jobs of its sweep shared (the `device_shared_by` tag above 1) folds
apart from runs that had theirs alone, and `speed_note` says under the board that its train time
and img/s measured the contention too. Within a row each seed counts once: a rerun of a seed
replaces the earlier run instead of counting as another seed.

Confidence: a row of two or more seeds carries the 95% t-interval of its mean, and every row is
tested against the leader's seeds with Welch's t-test (`analysis.confidence`): p >= 0.05 means
its gap to the leader is within seed noise. A row or a leader of one seed has neither: NaN, never
a guess. `run_tags` writes these verdicts on the runs, for MLflow's runs table.

Datasets: a board ranks runs of one dataset (the `dataset` tag: `cifar10-jpeg`, `cifar2`,
`synthetic`, ...). A two-class run's 90% and a synthetic demo's 69% say nothing about a CIFAR-10
run's 85%, so `build_all` gives one board per dataset, real CIFAR-10 first and generated data last,
and `build` the first of them (or the one `Query.data` names).

The store may hold runs other tools logged (by hand with MlflowClient, or by an older version): any
tag, param or metric may be missing, and a missing value is NaN/None here, never an error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pandas as pd

from cifar_sweep.analysis import confidence as conf
from cifar_sweep.analysis import histories as hist
from cifar_sweep.config.identity import is_real_cifar10
from cifar_sweep.tracking import lookup
from cifar_sweep.tracking import queries as rq
from cifar_sweep.tracking.store import open_store

DEFAULT_METRIC = "best_val_acc"
# Per-run statistics the rows carry (mean ± std over folded seeds).
STAT_METRICS = ("best_val_acc", "test_acc", "train_time_s")
FINISHED = rq.FINISHED
SYNTHETIC = "synthetic"
SWEEP_SUMMARY = "sweep_summary.json"  # the parent run's job records: run ids, skipped jobs' too


@dataclass
class Query:
    tracking_uri: str | None = None
    experiment: str = rq.DEFAULT_EXPERIMENT
    sweep: str | None = None
    model: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    by: str = DEFAULT_METRIC
    order: str = "auto"  # auto | asc | desc
    top: int | None = None
    all_status: bool = False
    fold: bool = True
    target: float | None = None
    data: str | None = None  # one dataset's board; None: every dataset's (build) or the first (build)


@dataclass
class Board:
    """The ranked rows (raw values) and what they answer."""

    rows: pd.DataFrame
    query: Query
    n_runs: int  # the runs the rows stand for (a row of folded seeds stands for several)
    dataset: str = ""
    other_datasets: tuple[str, ...] = ()  # boards `build` left out (it gives the first)
    # Runs of this dataset the board does not list, by status (RUNNING, KILLED, FAILED): they have no
    # final figures to rank by. Empty with `all_status`, which lists them after the ranked rows.
    unlisted: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)


# -- ranking (pure: a runs frame in, a rows frame out) --------------------------------------------


def lower_is_better(metric: str) -> bool:
    return "loss" in metric or metric.endswith("time_s") or metric.startswith("elapsed")


def _numeric(series: pd.Series) -> pd.Series:
    # Infinite values are as unusable as NaN for a mean and a rank: they sort last with them.
    values = pd.to_numeric(series, errors="coerce").astype(float)
    return values.where(values.abs() != math.inf, math.nan)


def _text(series: pd.Series) -> pd.Series:
    """Strings, with a missing value as None (never the float NaN, which `str` would make "nan")."""
    return series.astype(object).where(series.notna(), None).map(lambda v: v if v is None else str(v))


def _stat_metrics(by: str) -> list[str]:
    return list(dict.fromkeys((*STAT_METRICS, by)))


def members(runs: pd.DataFrame, by: str, fold: bool) -> pd.DataFrame:
    """One normalised row per run, with the key it folds under."""
    col = lambda name, default=math.nan: rq.column(runs, name, default)  # noqa: E731
    out = pd.DataFrame({
        "run_id": _text(runs["run_id"]),
        "run_name": runs["run_name"].fillna("").astype(str),
        "status": _text(runs["status"]),
        "start_time": _numeric(runs["start_time"]),
        "model": _text(col("tags.model", None)),
        "optimizer": _text(col("tags.optimizer", None)),
        "lr": _numeric(col("params.optimizer.lr")),
        "schedule": _text(col("tags.schedule", None)),
        "epochs": _numeric(col("params.trainer.epochs")).round().astype("Int64"),
        "device": _text(col("tags.device", None)),
        "threads": _text(col("tags.threads", None).fillna(col("params.trainer.threads", None))),
        # Jobs that shared the run's GPU; 1 (alone) where the run does not say.
        "device_shared_by": _numeric(col("tags.device_shared_by")).fillna(1).clip(lower=1).astype("Int64"),
        "seed": _text(col("params.seed", None)),
        "config_hash": _text(col("tags.config_hash", None)),
        "n_params": _numeric(col("tags.n_params")).round().astype("Int64"),
        "reported_acc": _numeric(col("tags.reported_acc")),
        "failure_reason": _text(col("tags.failure_reason", None)),
        "dataset": rq.dataset_column(runs),
    }, index=runs.index)
    for metric in _stat_metrics(by):
        out[metric] = _numeric(col(f"metrics.{metric}"))
    # A part of the key that is missing (a run logged by another tool) is an empty string, never NaN:
    # a NaN key would drop the run from its group.
    part = lambda name: out[name].fillna("").astype(str)  # noqa: E731
    shared = out["device_shared_by"].astype(int)
    key = (part("config_hash") + "|" + part("device") + "|" + part("threads")
           + shared.map(lambda n: f"|shared{n}" if n > 1 else ""))
    # Only finished runs with a hash fold: a failed seed must not drag down its siblings' mean.
    alone = (not fold) | out["config_hash"].isna() | (out["status"] != FINISHED)
    out["fold_key"] = key.where(~alone, "run:" + out["run_id"])
    return out


def _one_per_seed(runs: pd.DataFrame) -> pd.DataFrame:
    """The latest run of each (fold key, seed): a rerun replaces its seed, it is not another seed.

    A run that logged no seed cannot be told apart from its siblings' seeds, so it counts alone.
    """
    seed = runs["seed"].where(runs["seed"].notna(), "run:" + runs["run_id"])
    latest = runs.assign(_seed=seed).sort_values(["start_time", "run_id"], na_position="first", kind="stable")
    kept = latest.drop_duplicates(["fold_key", "_seed"], keep="last").index
    return runs[runs.index.isin(kept)]


def _fold(runs: pd.DataFrame, by: str, descending: bool) -> pd.DataFrame:
    """Mean ± std (sample std, ddof=1) and n per fold key; descriptive columns from the best member."""
    metrics = _stat_metrics(by)
    runs = _one_per_seed(runs)
    ordered = runs.sort_values([by, "start_time"], ascending=[not descending, True], na_position="last")
    best = ordered.drop_duplicates("fold_key").set_index("fold_key")
    grouped = ordered.groupby("fold_key", sort=False)
    stats = grouped[metrics].agg(["mean", "std"])
    rows = best.drop(columns=metrics)
    for metric in metrics:
        rows[metric] = stats[(metric, "mean")]
        rows[f"{metric}_std"] = stats[(metric, "std")]
    rows["n"] = grouped.size()
    # A plain dict of lists: pandas would try to align a Series of lists, and an empty group is NaN.
    ids = {key: list(part) for key, part in grouped["run_id"]}
    rows["run_ids"] = [ids.get(key, []) for key in rows.index]
    # Each seed's value of the ranking metric: what the interval and the test against the leader use.
    values = {key: [float(v) for v in part if not math.isnan(v)] for key, part in grouped[by]}
    rows["by_values"] = [values.get(key, []) for key in rows.index]
    return rows.reset_index()


def _first_run_id(ids) -> str:
    return min(ids) if isinstance(ids, list) and ids else ""


def rank_runs(runs: pd.DataFrame, by: str = DEFAULT_METRIC, order: str = "auto", fold: bool = True,
              all_status: bool = False, top: int | None = None) -> pd.DataFrame:
    """FINISHED runs ranked best first (NaN last), seeds folded; with all_status, the others after."""
    descending = {"asc": False, "desc": True}.get(order, not lower_is_better(by))
    rows = members(runs, by, fold)
    finished = rows[rows["status"] == FINISHED]
    ranked = _fold(finished, by, descending)
    # Ties break on test accuracy, then name and id, so the order never depends on the store's.
    ranked["first_run_id"] = ranked["run_ids"].map(_first_run_id)
    ranked = ranked.sort_values(
        [by, "test_acc", "run_name", "first_run_id"],
        ascending=[not descending, False, True, True], na_position="last", kind="stable",
    ).head(top if top is not None else len(ranked))
    ranked.insert(0, "rank", pd.array(range(1, len(ranked) + 1), dtype="Int64"))
    ranked = add_confidence(ranked)
    if all_status:
        others = _fold(rows[rows["status"] != FINISHED], by, descending)
        if len(others):
            others["first_run_id"] = others["run_ids"].map(_first_run_id)
            others["status"] = others["status"].fillna("")
            others = others.sort_values(["status", "run_name", "first_run_id"], kind="stable")
            others.insert(0, "rank", pd.array([pd.NA] * len(others), dtype="Int64"))
            ranked = pd.concat([ranked, others], ignore_index=True)
    return ranked.drop(columns=["first_run_id"]).reset_index(drop=True)


def add_confidence(ranked: pd.DataFrame) -> pd.DataFrame:
    """95% t-interval of each row's mean (`ci_low`, `ci_high`: NaN for one seed) and Welch's p of its
    seeds against the leader's (`p_vs_leader`; NaN for the leader and where either side has one seed),
    `within_noise` its verdict (p >= confidence.NOISE_P; NA where there is no test)."""
    ranked = ranked.copy()
    intervals = [conf.mean_interval(v) for v in ranked["by_values"]]
    ranked["ci_low"] = [lo for lo, _ in intervals]
    ranked["ci_high"] = [hi for _, hi in intervals]
    leader = ranked["by_values"].iloc[0] if len(ranked) else []
    ranked["p_vs_leader"] = [math.nan if k == 0 else conf.welch_p(v, leader)
                             for k, v in enumerate(ranked["by_values"])]
    ranked["within_noise"] = pd.array([conf.within_noise(p) for p in ranked["p_vs_leader"]], dtype="boolean")
    return ranked


def run_tags(board: Board) -> dict[str, dict[str, str]]:
    """{run_id: tags} that put a board's verdicts into MLflow's runs table: `rank`,
    `within_noise_of_leader` (`leader`, `true`, `false`, or `untested` where a side has one seed) and
    `<metric>_ci95` (`low-high`, for rows of two or more seeds; `val_acc_ci95` for best_val_acc)."""
    metric = "val_acc" if board.query.by == DEFAULT_METRIC else board.query.by
    out: dict[str, dict[str, str]] = {}
    for row in board.rows[board.rows["rank"].notna()].itertuples(index=False):
        noise = ("leader" if row.rank == 1 else "untested" if pd.isna(row.within_noise)
                 else str(bool(row.within_noise)).lower())
        tags = {"rank": str(int(row.rank)), "within_noise_of_leader": noise}
        if not math.isnan(row.ci_low):
            tags[f"{metric}_ci95"] = f"{row.ci_low:.4f}-{row.ci_high:.4f}"
        out.update({run_id: tags for run_id in row.run_ids})
    return out


def speed_note(rows: pd.DataFrame) -> str | None:
    """A line for under a board whose rows include runs timed on a GPU shared with other jobs of
    their sweep (more parallel jobs than GPUs); None when every row had its device alone."""
    shared = rows.get("device_shared_by")
    if shared is None:
        return None
    marked = rows[pd.to_numeric(shared, errors="coerce").fillna(1) > 1]
    if marked.empty:
        return None
    names = ", ".join(f"#{r}" if not pd.isna(r) else str(n) for r, n in zip(marked["rank"], marked["run_name"]))
    most = int(pd.to_numeric(marked["device_shared_by"]).max())
    return (f"train time and img/s of {names} were measured on a GPU shared by up to {most} jobs at once: "
            "they time the contention too, not the device alone")


def add_run_stats(rows: pd.DataFrame, histories: pd.DataFrame, target: float | None,
                  rates: pd.Series | None = None) -> pd.DataFrame:
    """Per-epoch figures, averaged over each row's runs: images/s (warm-up excluded; `rates`, the
    logged summary, where a run has it, else from `histories`), time to target."""
    rows = rows.copy()
    per_run = pd.DataFrame(index=pd.Index(sorted({r for ids in rows["run_ids"] for r in ids}), name="run_id"))
    from_history = hist.mean_excluding_warmup(histories, "images_per_s")
    per_run["images_per_s"] = from_history if rates is None else rates.combine_first(from_history)
    if target is not None:
        per_run = per_run.join(hist.time_to_target(histories, target))

    # One row per (row, run) so the per-row means are a single groupby, not a loop over rows.
    pairs = rows["run_ids"].explode().dropna().rename("run_id").to_frame().join(per_run, on="run_id")
    by_row = pairs.groupby(level=0)
    rows["images_per_s"] = by_row["images_per_s"].mean()
    if target is not None:
        rows["target_epoch"] = by_row["target_epoch"].mean()
        rows["target_time_s"] = by_row["target_time_s"].mean()
        rows["target_reached"] = by_row["target_epoch"].count().reindex(rows.index, fill_value=0)
    return rows


def with_run_stats(client, rows: pd.DataFrame, runs: pd.DataFrame, target: float | None) -> pd.DataFrame:
    """`add_run_stats`, reading what it needs: a run's logged `steady_images_per_s` where it has one,
    its per-epoch images/s only where not (a request per run and key on a tracking server) and, with
    `target`, the val_acc and elapsed_s curves."""
    listed = [r for ids in rows["run_ids"] for r in ids]
    rates = hist.logged_rates(runs[runs["run_id"].isin(listed)])
    histories = rq.load_histories(client, [r for r in listed if r not in rates.index], ["images_per_s"])
    if target is not None:
        histories = pd.concat([histories, rq.load_histories(client, listed, ["val_acc", "elapsed_s"])],
                              ignore_index=True)
    return add_run_stats(rows, histories, target, rates)


# -- loading --------------------------------------------------------------------------------------


def dataset_order(name: str) -> tuple[int, str]:
    """Real CIFAR-10 first, other real data (subsets, other folders) next, generated data last."""
    if is_real_cifar10(name):
        return (0, name)
    if name == SYNTHETIC or name.startswith(SYNTHETIC + "["):
        return (3, name)
    return (2 if not name else 1, name)


def describe_filters(query: Query, with_data: bool = True) -> str:
    parts = [f"--sweep {query.sweep}" if query.sweep else "", f"--model {query.model}" if query.model else "",
             f"--data {query.data}" if query.data and with_data else ""]
    parts += [f"--tag {k}={v}" for k, v in query.tags.items()]
    return " ".join(p for p in parts if p)


def title(board: Board) -> str:
    q = board.query
    filters = describe_filters(q, with_data=False)
    scope = f"{q.experiment}" + (f" / {filters}" if filters else "")
    return f"Leaderboard: {scope}, data {board.dataset or '(not recorded)'}, by {q.by}"


def sweep_run_ids(client, runs: pd.DataFrame, sweep: str) -> list[str]:
    """Runs the sweep's parent lists in its summary: a relaunch that skipped every finished job has
    no child runs of its own, only the earlier runs it found (the leaderboard still shows them)."""
    ids: list[str] = []
    for parent in rq.sweep_parent_rows(runs, sweep)["run_id"]:
        text = lookup.read_text_or_none(client, parent, SWEEP_SUMMARY)
        try:
            records = json.loads(text) if text else []
        except ValueError:
            records = []
        ids += [r["run_id"] for r in records if isinstance(r, dict) and r.get("run_id")]
        ids.append(parent)  # its own id: children point to it
    return ids


def selected_runs(client, query: Query) -> pd.DataFrame:
    """The experiment's runs that the query's filters keep, sweep parents left out."""
    runs = rq.load_runs(client, rq.experiment_ids(client, [query.experiment]))
    if runs.empty:
        raise rq.StoreError(f"experiment {query.experiment!r} has no runs yet")
    extra = sweep_run_ids(client, runs, query.sweep) if query.sweep else []
    kept = rq.filter_runs(rq.drop_sweep_parents(runs), query.sweep, query.model, query.tags, sweep_run_ids=extra)
    if kept.empty:
        raise rq.StoreError(f"no run of experiment {query.experiment!r} matches {describe_filters(query)}")
    if query.data:
        datasets = rq.dataset_column(kept)
        if not (datasets == query.data).any():
            known = sorted({d for d in datasets if d}, key=dataset_order)
            raise rq.StoreError(f"no run on data {query.data!r}; datasets of these runs: "
                                + (", ".join(known) or "(none recorded)"))
        kept = kept[datasets == query.data]
    if f"metrics.{query.by}" not in kept.columns:
        known = sorted(c[len("metrics."):] for c in kept.columns if c.startswith("metrics."))
        raise rq.StoreError(f"no run has a metric {query.by!r}; metrics in these runs: {', '.join(known)}")
    return kept


def _board(client, query: Query, runs: pd.DataFrame, dataset: str) -> Board | None:
    rows = rank_runs(runs, query.by, query.order, query.fold, query.all_status, query.top)
    if rows.empty:
        return None
    n_listed = sum(len(ids) for ids in rows["run_ids"])
    return Board(with_run_stats(client, rows, runs, query.target), query, n_listed, dataset,
                 unlisted={} if query.all_status else unlisted_statuses(runs))


def unlisted_statuses(runs: pd.DataFrame) -> dict[str, int]:
    """{status: count} of the runs that are not FINISHED (a board ranks only those), most first."""
    others = runs["status"].fillna("(none)").astype(str)
    return others[others != FINISHED].value_counts().to_dict()


def _boards(query: Query, first_only: bool) -> list[Board]:
    client = open_store(query.tracking_uri)
    runs = selected_runs(client, query)
    datasets = rq.dataset_column(runs)
    names = sorted(set(datasets), key=dataset_order)
    boards = []
    for name in names:
        board = _board(client, query, runs[datasets == name], name)
        if board is not None:
            boards.append(board)
            if first_only:
                board.other_datasets = tuple(n for n in names if n != name)
                break
    if not boards:
        statuses = runs["status"].value_counts().to_dict()
        raise rq.StoreError(
            f"none of the {len(runs)} runs is FINISHED ({', '.join(f'{k} {v}' for k, v in statuses.items())}); "
            "--all-status lists them"
        )
    return boards


def build_all(query: Query) -> list[Board]:
    """One board per dataset (the one `query.data` names, or every one with a ranked row), in
    `dataset_order`; per-epoch histories are read for the shown rows only."""
    return _boards(query, first_only=False)


def build(query: Query) -> Board:
    """The board of `query.data`, or else of the first dataset in `dataset_order` that has a ranked
    row (real CIFAR-10 when there is such a run); `Board.other_datasets` names the others."""
    return _boards(query, first_only=True)[0]
