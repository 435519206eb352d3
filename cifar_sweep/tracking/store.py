"""The tracking store: where a URI points, creating or upgrading it once, and opening it to read.

Creating a SQLite store runs MLflow's schema migrations, which are not safe when two processes run
them at once: the loser leaves `_alembic_tmp_*` tables behind and every later open of the file
fails. So every open of a SQLite store here goes through one file lock beside the database, and the
file is looked at with plain sqlite3 before MLflow sees it: a file that is not a database, a
half-migrated store and one that needs `mlflow db upgrade` are refused in one line naming the file
and the fix, instead of an alembic traceback (or a silent migration of someone's old store).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cifar_sweep.config.paths import default_tracking_uri
from cifar_sweep.errors import CifarSweepError

SQLITE_PREFIX = "sqlite:///"
LOCK_SUFFIX = ".lock"
# Creating a store takes seconds; a sweep's jobs starting together queue behind each other briefly.
LOCK_TIMEOUT_S = 120.0
_SQLITE_MAGIC = b"SQLite format 3\x00"
# Alembic's batch migrations on SQLite copy a table through `_alembic_tmp_<name>`; a leftover one
# means a migration stopped half-way.
_ALEMBIC_TMP = "_alembic_tmp_"


class StoreError(CifarSweepError, RuntimeError):
    """A problem the user must fix (no store, unknown experiment, nothing matches): printed, not traced."""


class TrackingUnavailable(StoreError):
    """The store cannot be reached or written: raised at start-up, before any training."""


class StoreDamaged(TrackingUnavailable):
    """The file is there but is no usable MLflow store: not a database, half-migrated, or too old."""


# -- where a URI points ---------------------------------------------------------------------------


def sqlite_path(uri: str) -> Path | None:
    """The database file of a SQLite store URI, or None for any other store."""
    return Path(uri[len(SQLITE_PREFIX):]) if uri.startswith(SQLITE_PREFIX) else None


def artifact_root_for(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside the database, under runs/artifacts.

    MLflow's own default for a database store is `./mlartifacts` relative to the *current*
    directory, which scatters a sweep's files across Hydra's job folders. A server keeps its own
    artifact root, so we leave it alone.
    """
    db = sqlite_path(uri)
    return None if db is None else (db.parent / "artifacts").resolve().as_uri()


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + LOCK_SUFFIX)


# -- before training: can we write there at all ---------------------------------------------------


def preflight(uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds with a clear message when the store is unusable.

    MLflow's own client retries an unreachable server for minutes with backoff; a job should not
    train for an hour and then lose its results, nor hang before saying why.
    """
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            reply = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
        except requests.RequestException as err:
            raise TrackingUnavailable(
                f"tracking server {uri} is unreachable ({type(err).__name__}). Start it (scripts/tracking_server.sh) "
                "or point tracking.uri (--tracking-uri) at a reachable server or at sqlite:///<path>/mlflow.db"
            ) from err
        if reply.status_code != 200:
            raise TrackingUnavailable(f"tracking server {uri} answered /health with HTTP {reply.status_code}")
        return
    db = sqlite_path(uri)
    if db is None:
        return
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrackingUnavailable(f"cannot create the folder of the tracking store {db}: {err}") from err
    target = db if db.exists() else db.parent
    if not os.access(target, os.W_OK):
        raise TrackingUnavailable(f"the tracking store {db} is read-only; make it writable or set tracking.uri")


# -- opening: the lock and the checks -------------------------------------------------------------


@contextlib.contextmanager
def _store_lock(db: Path, required: bool) -> Iterator[None]:
    """Hold the store's lock; a reader in a read-only folder (no lock file possible) goes without.

    Nobody can be creating a store where no file can be written, so reading it unlocked is safe.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path(db)), timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise TrackingUnavailable(
            f"waited {LOCK_TIMEOUT_S:.0f} s for {lock.lock_file}: another process is creating or upgrading "
            f"the store {db}; retry when it is done"
        ) from None
    except OSError as err:
        if required:
            raise TrackingUnavailable(f"cannot lock the tracking store {db} ({err.strerror or err}); "
                                      "make its folder writable or set tracking.uri") from None
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _unreadable(db: Path, why: str) -> str:
    # One wording for every store a reader or a run refuses, so the file is always named the same way.
    return f"cannot read the MLflow store {SQLITE_PREFIX}{db}: {why}"


def check_sqlite_file(db: Path) -> None:
    """Refuse, in one line naming the file and the fix, a file MLflow could not use or would break."""
    if db.is_dir():
        raise StoreDamaged(_unreadable(db, "it is a folder; point the tracking URI at a .db file"))
    with open(db, "rb") as fh:
        head = fh.read(len(_SQLITE_MAGIC))
    if not head:
        return  # an empty file is an empty database to SQLite: MLflow creates the tables in it
    if head != _SQLITE_MAGIC:
        raise StoreDamaged(_unreadable(db, "the file is not a SQLite database; point the tracking URI at an "
                                           "MLflow .db file, or move the file away"))
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = None
            if "alembic_version" in tables:
                row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
                version = row[0] if row else None
    except sqlite3.DatabaseError as err:
        raise StoreDamaged(_unreadable(db, f"a damaged SQLite database ({err}); restore it from a backup "
                                           "or move it away")) from None
    leftovers = sorted(t for t in tables if t.startswith(_ALEMBIC_TMP))
    if leftovers:
        drops = "; ".join(f"DROP TABLE {t}" for t in leftovers)
        raise StoreDamaged(_unreadable(
            db, f"it is half-migrated (an interrupted schema upgrade left {', '.join(leftovers)}); back it up, "
            f"drop those tables (sqlite3 {db} '{drops}') and run `mlflow db upgrade {SQLITE_PREFIX}{db}`, "
            "or delete the file if it holds no runs yet"))
    if version is not None:
        _check_schema_version(db, version)


@functools.lru_cache(maxsize=1)
def _schema_revisions() -> tuple[str, frozenset[str]]:
    """(head, every revision) of this MLflow's migrations: read once per process, they never change."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    scripts = ScriptDirectory.from_config(_get_alembic_config("sqlite://"))
    return scripts.get_current_head(), frozenset(r.revision for r in scripts.walk_revisions())


def _check_schema_version(db: Path, version: str) -> None:
    """An old schema is refused before MLflow opens it (MLflow would migrate it unasked, unbacked up)."""
    try:
        head, known = _schema_revisions()
    except Exception:  # MLflow reorganised its migrations: its own schema check still runs on open
        return
    if version == head:
        return
    import mlflow

    if version in known:
        raise StoreDamaged(_unreadable(
            db, f"its schema ({version}) is older than MLflow {mlflow.__version__} uses; back it up, then run "
            f"`mlflow db upgrade {SQLITE_PREFIX}{db}`"))
    raise StoreDamaged(_unreadable(
        db, f"it was written by a newer MLflow than {mlflow.__version__} (schema {version}); install that "
        "MLflow version, or point the tracking URI at another store"))


def _open_error(uri: str, db: Path | None, err: BaseException) -> TrackingUnavailable:
    text = (getattr(err, "message", None) or str(err)).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    status = err.get_http_status_code() if isinstance(err, MlflowException) else None
    if db is None and status in (401, 403):
        why = "no or wrong credentials" if status == 401 else "this account may not read it"
        return TrackingUnavailable(f"the tracking server {uri} refused the login (HTTP {status}, {why}); export "
                                   "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD of an account on it")
    if db is None:
        return TrackingUnavailable(f"cannot read the MLflow store {uri}: {first[:300]}")
    if "out-of-date database schema" in text:
        return StoreDamaged(_unreadable(db, "its schema needs an upgrade; back it up, then run "
                                            f"`mlflow db upgrade {SQLITE_PREFIX}{db}`"))
    return TrackingUnavailable(_unreadable(db, f"{first[:300]}; check the file, or point the tracking URI "
                                               "at another store"))


def open_store(uri: str | None = None, *, create: bool = False) -> MlflowClient:
    """A client on a checked store, opened now: the one way into a store, for every reader and run.

    `uri` None is the project's own store (runs/mlflow.db; `client.tracking_uri` says which). Without
    `create` (every reader) a missing SQLite file is refused, never created; with it (a run or a sweep
    starting) a new store is created, once, under the lock.

    Servers and other databases are left to their owner (a server migrates its own database, and a
    file lock here would not reach another machine anyway); they are asked for one experiment, so an
    unusable one is refused here, in one line, like a SQLite file.
    """
    uri = uri or default_tracking_uri()
    db = sqlite_path(uri)
    if db is None or create:
        # One line in seconds: a server that is down (not MLflow's minutes of retries), a SQLite store
        # its writer cannot write (its folder is made here when missing).
        preflight(uri)
    if db is None:
        return _first_contact(uri, None)
    if not create and not db.is_file():
        raise StoreError(f"no MLflow store at {db}: train something first (cifar-sweep) or pass --tracking-uri")
    if not create and db.stat().st_size == 0:
        raise StoreError(f"no MLflow store at {db} (the file is empty): train something first (cifar-sweep) "
                         "or pass --tracking-uri")
    with _store_lock(db, required=create):
        if db.exists():
            check_sqlite_file(db)
        return _first_contact(uri, db)


def _first_contact(uri: str, db: Path | None) -> MlflowClient:
    """A client that has read the store once. Making it builds MLflow's store object, which creates
    or verifies the schema (on the first call in older MLflow versions, hence the read): for SQLite
    that must happen inside the lock. MLflow then keeps that object per URI for the process."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    except (MlflowException, SQLAlchemyError, sqlite3.Error, OSError) as err:
        raise _open_error(uri, db, err) from None
    return client


# MLflow 3's UI reads this experiment tag to choose between its GenAI pages (traces, sessions) and its
# model-training pages (the runs table, metric charts). Values the UI writes itself when it guesses
# end in `_inferred` (or say it could not guess): ours replaces those, never a kind a user chose.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
_GUESSED_KINDS = ("_inferred", "no_inferred_type")


def needs_kind_tag(tags: dict[str, str]) -> bool:
    kind = tags.get(EXPERIMENT_KIND_TAG)
    return not kind or kind.endswith(_GUESSED_KINDS)


def mark_model_training(client: MlflowClient, experiment) -> None:
    """Tag an experiment as a model-training one once (a store from before that tag, or a guess)."""
    if needs_kind_tag(dict(experiment.tags or {})):
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)


def ensure_experiment(uri: str, name: str, client: MlflowClient | None = None) -> str:
    """Create the store (once, under its lock) and the experiment if needed; return its id.

    The experiment is a model-training one to MLflow's UI: created with that kind, or tagged so on
    first use when an older version created it. Safe when several processes race: the loser of a
    concurrent create reads the winner's id.
    `client`: one `open_store(uri, create=True)` already gave, to skip a second check.
    """
    client = client or open_store(uri, create=True)
    try:
        found = client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage != "active":
                raise ValueError(f"tracking.experiment={name!r} is deleted in {uri}; "
                                 "restore it in the MLflow UI or choose another name")
            mark_model_training(client, found)
            return found.experiment_id
        try:
            return client.create_experiment(name, artifact_location=artifact_root_for(uri),
                                            tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
        except MlflowException:
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id
    except MlflowException as err:
        raise TrackingUnavailable(f"the tracking store {uri} cannot be used: {str(err)[:300]}") from err
