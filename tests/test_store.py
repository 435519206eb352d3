"""The store: both read paths agree, creation is safe under concurrency, bad files are refused in one line."""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from cifar_sweep.errors import CifarSweepError
from cifar_sweep.tracking import fast_sql, queries
from cifar_sweep.tracking.run import RunTracker
from cifar_sweep.tracking.store import StoreDamaged, StoreError, ensure_experiment, lock_path, open_store

KEYS = ["val_acc", "lr", "train_loss"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A store built only through MlflowClient: messy runs, a NaN metric, histories, a deleted run."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=(root / "artifacts").as_uri())
    other = client.create_experiment("other")
    ids = []
    t0 = 1_700_000_000_000
    for i in range(6):
        run = client.create_run(exp, run_name=None if i == 3 else f"run {i}", start_time=t0 + 1000 * (i // 2),
                                tags={"model": f"m{i % 2}"})
        rid = run.info.run_id
        params = [Param("seed", str(i)), Param("optimizer.lr", "0.1")] + ([Param("only_some", "x")] if i % 3 == 0 else [])
        tags = [RunTag("config_hash", f"h{i % 2}")] + ([RunTag("sweep_parent", "true")] if i == 5 else [])
        metrics = [Metric(k, v, t0 + s, s) for s in range(3)
                   for k, v in (("val_acc", 0.1 * (s + i)), ("lr", 0.1 / (s + 1)))]
        metrics.append(Metric("val_acc", 0.99, t0 + 10, 1))  # the same step logged again (a resumed epoch)
        metrics.append(Metric("best_val_acc", math.nan if i == 2 else 0.5 + 0.01 * i, t0, 0))
        client.log_batch(rid, metrics=metrics, params=params, tags=tags)
        if i != 4:
            client.set_terminated(rid, "FINISHED" if i % 2 == 0 else "FAILED")
        ids.append(rid)
    client.delete_run(ids[1])  # deleted runs are in neither frame
    client.create_run(other, run_name="elsewhere")
    return uri, exp, ids


def test_both_paths_return_equal_frames(built):
    uri, exp, ids = built
    client = open_store(uri)
    assert fast_sql.load_runs(client, [exp]) is not None  # the fast path really ran
    fast, slow = queries.load_runs(client, [exp]), queries.load_runs_paged(client, [exp])
    assert len(fast) == 5 and ids[1] not in set(fast["run_id"])
    assert list(fast.columns) == list(slow.columns)
    pd.testing.assert_frame_equal(fast, slow, check_dtype=False)
    nan_row = fast[fast["run_id"] == ids[2]].iloc[0]
    assert math.isnan(nan_row["metrics.best_val_acc"])
    assert fast.loc[fast["run_id"] == ids[0], "metrics.best_val_acc"].iloc[0] == 0.5


def test_both_paths_return_equal_histories(built, monkeypatch):
    uri, exp, ids = built
    client = open_store(uri)
    assert fast_sql.load_histories(client, ids, KEYS) is not None
    fast = queries.load_histories(client, ids + ids[:1], KEYS)
    monkeypatch.setenv(fast_sql.NO_FAST_PATH_ENV, "1")
    assert fast_sql.load_histories(client, ids, KEYS) is None
    slow = queries.load_histories(client, ids + ids[:1], KEYS)
    pd.testing.assert_frame_equal(fast, slow, check_dtype=False)
    first = fast[(fast["run_id"] == ids[0]) & (fast["key"] == "val_acc")]
    assert list(first["step"]) == [0, 1, 2] and first["value"].iloc[1] == 0.99  # the later value counts
    assert queries.load_histories(client, [], KEYS).empty


def test_fast_path_stands_aside_on_an_untested_mlflow(built, monkeypatch):
    uri, exp, _ = built
    client = open_store(uri)
    monkeypatch.setattr(fast_sql, "TESTED_MLFLOW", ((0, 1),))
    assert fast_sql.load_runs(client, [exp]) is None
    assert len(queries.load_runs(client, [exp])) == 5


_CREATE = """
import sys, time
from cifar_sweep.tracking.run import RunTracker
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
tracker = RunTracker.start(sys.argv[1], "race", "job", {})
tracker.log_metrics({"val_acc": 0.5}, step=0)
tracker.finish()
"""


def test_two_processes_create_a_new_store_at_once(tmp_path):
    db = tmp_path / "new" / "mlflow.db"
    uri = f"sqlite:///{db}"
    start = time.time() + 4  # both interpreters are up (imports done) before either opens the store
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    procs = [subprocess.Popen([sys.executable, "-c", _CREATE, uri, str(start)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert [rc for rc, _ in results] == [0, 0], [err[-2000:] for _, err in results]
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not [t for t in tables if t.startswith("_alembic_tmp_")]
    client = open_store(uri)
    runs = queries.load_runs(client, queries.experiment_ids(client, ["race"]))
    assert sorted(runs["status"]) == ["FINISHED", "FINISHED"]
    assert lock_path(db).parent == db.parent


def _one_line_naming(error: BaseException, path) -> None:
    text = str(error)
    assert "\n" not in text and str(path) in text, text


def test_garbage_file_is_refused_naming_it(tmp_path, capsys):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(4096))
    uri = f"sqlite:///{garbage}"
    for create in (False, True):
        with pytest.raises(StoreDamaged, match="not a SQLite database") as err:
            open_store(uri, create=create)
        _one_line_naming(err.value, garbage)
    with pytest.raises(StoreDamaged) as err:
        RunTracker.start(uri, "e", "x", {})
    _one_line_naming(err.value, garbage)
    from cifar_sweep.commands import reap

    assert reap.main(["--tracking-uri", uri]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(garbage) in lines[0], lines


def test_missing_store_is_refused_never_created(tmp_path, capsys):
    missing = tmp_path / "typo" / "mlflow.db"
    uri = f"sqlite:///{missing}"
    with pytest.raises(StoreError, match="no MLflow store at") as err:
        open_store(uri)
    _one_line_naming(err.value, missing)
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(StoreError, match="the file is empty"):
        open_store(f"sqlite:///{empty}")
    from cifar_sweep.commands import reap

    assert reap.main(["--tracking-uri", uri]) == 1
    assert "no MLflow store at" in capsys.readouterr().err
    assert not missing.exists() and not missing.parent.exists()


def test_without_a_uri_the_door_opens_the_project_store(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_SWEEP_HOME", str(tmp_path / "home"))
    db = (tmp_path / "home" / "runs" / "mlflow.db").resolve()
    with pytest.raises(CifarSweepError, match="no MLflow store at") as err:  # the one base commands catch
        open_store()
    _one_line_naming(err.value, db)
    assert isinstance(err.value, StoreError) and not db.exists()
    client = open_store(create=True)
    assert client.tracking_uri == f"sqlite:///{db}" and db.is_file() and lock_path(db).exists()
    assert open_store().search_experiments()  # MLflow's Default experiment: the new store reads


@pytest.fixture
def damaged_copy(built, tmp_path):
    """A copy of the built store, for tests that break it."""
    src = built[0][len("sqlite:///"):]
    db = tmp_path / "copy.db"
    shutil.copy(src, db)
    return db


def test_half_migrated_store_is_refused_with_the_fix(damaged_copy):
    with sqlite3.connect(damaged_copy) as conn:
        conn.execute("CREATE TABLE _alembic_tmp_latest_metrics (x INTEGER)")
    for create in (False, True):
        with pytest.raises(StoreDamaged, match="half-migrated") as err:
            open_store(f"sqlite:///{damaged_copy}", create=create)
        _one_line_naming(err.value, damaged_copy)
        assert "DROP TABLE _alembic_tmp_latest_metrics" in str(err.value) and "mlflow db upgrade" in str(err.value)


def test_old_schema_is_refused_with_the_fix(damaged_copy):
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    scripts = ScriptDirectory.from_config(_get_alembic_config(f"sqlite:///{damaged_copy}"))
    older = scripts.get_revision(scripts.get_current_head()).down_revision  # the test may know MLflow's insides
    older = older[0] if isinstance(older, tuple) else older
    with sqlite3.connect(damaged_copy) as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (older,))
    with pytest.raises(StoreDamaged, match="is older than MLflow") as err:
        ensure_experiment(f"sqlite:///{damaged_copy}", "e")
    _one_line_naming(err.value, damaged_copy)
    assert f"mlflow db upgrade sqlite:///{damaged_copy}" in str(err.value)
    with sqlite3.connect(damaged_copy) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    with pytest.raises(StoreDamaged, match="newer MLflow"):
        open_store(f"sqlite:///{damaged_copy}")
