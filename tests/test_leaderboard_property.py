"""The leaderboard on stores other tools could have logged: random, messy, built through MlflowClient.

A seeded generator (reproducible, no extra dependency) builds a few stores whose runs miss random
tags, params and metrics, carry NaN and infinite values, every run status, repeated seeds and odd
names. Whatever it draws, the leaderboard (library and command line) must not raise, must rank
FINISHED runs only unless told otherwise, and must put NaN last.
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cifar_sweep.analysis import ranking
from cifar_sweep.commands import leaderboard as lb

REPO = Path(__file__).resolve().parents[1]
STATUSES = ["FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED"]
NAMES = ["", "42", "3.14", "nan", "ünïcødé ✓", "名前", "a\nb", "=1+2", "<b>x</b>", "tab\tname", "  "]
VALUES = [0.1, 0.5, 0.9, 0.0, 1.0, math.nan, math.inf, -math.inf]
STORES = 3
RUNS_PER_STORE = 24


def _maybe(rng: random.Random, p: float = 0.6) -> bool:
    return rng.random() < p


def build_store(root: Path, seed: int) -> tuple[str, dict[str, str]]:
    """A store with RUNS_PER_STORE random runs; returns its URI and each run's status by id."""
    rng = random.Random(seed)
    uri = f"sqlite:///{root / f'prop{seed}.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("cifar_sweep")
    statuses = {}
    for i in range(RUNS_PER_STORE):
        tags = {}
        if _maybe(rng):
            tags["model"] = rng.choice(["cnn", "mlp", "42", "ünï"])
        if _maybe(rng):
            tags["config_hash"] = rng.choice(["h1", "h2", "h3"])  # few hashes: folding happens
        for key, choices in (("device", ["cpu", "cuda:0"]), ("threads", ["1", "2"]), ("optimizer", ["sgd"]),
                             ("schedule", ["cosine"]), ("n_params", ["1000", "x", "1e6"]),
                             ("reported_acc", ["0.9", "nan"]), ("failure_reason", ["boom\nline two"])):
            if _maybe(rng, 0.4):
                tags[key] = rng.choice(choices)
        run = client.create_run(exp, run_name=rng.choice(NAMES) or None, tags=tags)
        rid = run.info.run_id
        params = {"seed": rng.choice(["0", "0", "1", "2", "x"]), "optimizer.lr": rng.choice(["0.1", "abc"]),
                  "trainer.epochs": rng.choice(["3", "2.5", "many"]), "trainer.threads": "2"}
        for key, value in params.items():
            if _maybe(rng, 0.5):
                client.log_param(rid, key, value)
        for key in ("best_val_acc", "test_acc", "train_time_s", "images_per_s", "val_acc"):
            if _maybe(rng):
                client.log_metric(rid, key, rng.choice(VALUES), step=0)
        status = rng.choice(STATUSES)
        if status == "SCHEDULED":
            client.update_run(rid, status="SCHEDULED")
        elif status != "RUNNING":
            client.set_terminated(rid, status)
        statuses[rid] = status
    return uri, statuses


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("property_stores")
    return [build_store(root, seed) for seed in range(STORES)]


def _check_board(board: ranking.Board, statuses: dict[str, str], by: str, all_status: bool) -> None:
    rows = board.rows
    ranked = rows[rows["rank"].notna()]
    for ids in ranked["run_ids"]:
        assert ids and all(statuses[r] == "FINISHED" for r in ids)
    if not all_status:
        assert len(ranked) == len(rows)
    values = pd.to_numeric(ranked[by], errors="coerce")
    assert not values.isin([math.inf, -math.inf]).any()
    missing = values.isna().tolist()
    assert missing == sorted(missing), "NaN rows must come after every ranked value"
    # Folded rows count each seed once.
    for ids, n in zip(rows["run_ids"], rows["n"]):
        assert n == len(ids)
    # Intervals exist exactly where two or more seeds have a finite value, and hold the mean; a test
    # against the leader gives a p in [0, 1] and the verdict that p says, or nothing at all.
    for k, (_, row) in enumerate(ranked.iterrows()):
        finite = [v for v in row["by_values"] if math.isfinite(v)]
        if len(finite) >= 2:
            assert row["ci_low"] - 1e-9 <= row[by] <= row["ci_high"] + 1e-9
        else:
            assert math.isnan(row["ci_low"]) and math.isnan(row["ci_high"])
        p = row["p_vs_leader"]
        if k == 0 or math.isnan(p):
            assert pd.isna(row["within_noise"])
        else:
            assert 0 <= p <= 1 and bool(row["within_noise"]) == (p >= 0.05)
    for fmt in ("table", "md", "csv", "html"):
        assert isinstance(lb.render(board, fmt), str)


@pytest.mark.parametrize("by", ["best_val_acc", "train_time_s"])
@pytest.mark.parametrize("all_status", [False, True])
@pytest.mark.parametrize("fold", [True, False])
def test_library_never_raises_and_ranks_finished_only(stores, by, all_status, fold):
    built = 0
    for uri, statuses in stores:
        query = ranking.Query(tracking_uri=uri, by=by, all_status=all_status, fold=fold)
        try:
            board = ranking.build(query)
        except ranking.rq.StoreError as error:  # a clear refusal (no FINISHED run, no such metric) is fine
            assert "FINISHED" in str(error) or "metric" in str(error)
            continue
        _check_board(board, statuses, by, all_status)
        built += 1
    assert built, "the generator should give at least one store a board"


def test_repeated_seed_counts_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'seeds.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("cifar_sweep")
    for i, seed in enumerate([0, 0, 1, 2]):  # logged by hand: no threads, device or run name
        run = client.create_run(exp, tags={"model": "m", "config_hash": "h"})
        client.log_param(run.info.run_id, "seed", seed)
        client.log_metric(run.info.run_id, "best_val_acc", 0.5 + i / 100)
        client.set_terminated(run.info.run_id, "FINISHED")
    rows = ranking.build(ranking.Query(tracking_uri=uri)).rows
    assert list(rows["n"]) == [3]
    assert rows["best_val_acc"].iloc[0] == pytest.approx(0.52)  # the rerun of seed 0 replaced the first
    assert "—" in lb.render(ranking.build(ranking.Query(tracking_uri=uri)), "table")


@pytest.mark.cli
def test_cli_never_traces(stores):
    # One call per store (each start imports pandas and mlflow), each with other options.
    options = ([], ["--all-status", "--format", "csv"], ["--no-fold", "--format", "html", "--by", "train_time_s"])
    for (uri, _), extra in zip(stores, options):
        done = subprocess.run([sys.executable, "-m", "cifar_sweep.commands.leaderboard", "--tracking-uri", uri,
                               *extra], capture_output=True, text=True, timeout=120, cwd=REPO)
        assert "Traceback" not in done.stderr, done.stderr
        assert done.returncode == 0 or done.stderr.startswith("cifar-leaderboard: ")
