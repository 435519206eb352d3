"""Reads of one run for the commands: a run by id or prefix, its artifacts, its logged text files.

Commands do not import mlflow: they open a store through `store.open_store` and read it through
`queries` (frames of many runs) and here (one run). Every failure a user can fix comes out as a
`StoreError` naming the run and store.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cifar_sweep.tracking.queries import download_artifact
from cifar_sweep.tracking.store import StoreError

# How many candidates an ambiguous prefix lists: enough to pick from, short enough for one line.
SHOWN_MATCHES = 5


def store_failures() -> tuple[type[BaseException], ...]:
    """Errors a broken or unreadable store raises (not a database, locked, wrong schema)."""
    from sqlalchemy.exc import SQLAlchemyError

    return (MlflowException, SQLAlchemyError)


def get_run(client: MlflowClient, ref: str, where: str = "this store"):
    """The run whose id is `ref`, or the only run whose id starts with it (summaries print 8 characters)."""
    ref = ref.strip()
    if not ref:
        raise StoreError("an empty run id")
    try:
        return client.get_run(ref)
    except MlflowException:
        pass  # not a whole id of this store: try it as a prefix
    matches = _runs_with_prefix(client, ref)
    if not matches:
        raise StoreError(f"no run {ref!r} in {where} (neither a run id nor the start of one); "
                         "pass --tracking-uri if the run lives in another store")
    if len(matches) > 1:
        shown = ", ".join(r.info.run_id for r in matches[:SHOWN_MATCHES])
        more = "" if len(matches) <= SHOWN_MATCHES else f" and {len(matches) - SHOWN_MATCHES} more"
        raise StoreError(f"run id prefix {ref!r} is ambiguous in {where}: {shown}{more}; give more characters")
    return matches[0]


def _runs_with_prefix(client: MlflowClient, prefix: str) -> list:
    if any(c in prefix for c in "'\\%"):  # no run id holds these; they would only confuse the filter
        return []
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    if not experiments:
        return []
    found = client.search_runs(experiments, f"attributes.run_id LIKE '{prefix}%'", run_view_type=ViewType.ALL,
                               max_results=SHOWN_MATCHES + 1)
    # `_` is a LIKE wildcard: keep the true prefixes only.
    return [r for r in found if r.info.run_id.startswith(prefix)]


def list_artifacts(client: MlflowClient, run_id: str, folder: str | None = None) -> list[str]:
    """Paths of the run's artifacts in `folder` (empty when it has none or the store cannot list them)."""
    try:
        return [f.path for f in client.list_artifacts(run_id, folder)]
    except (MlflowException, OSError):
        return []


def download(client: MlflowClient, run_id: str, artifact: str, folder: str, hint: str = "") -> str:
    """Local path of one artifact; a missing one is a StoreError that names the run and the artifact."""
    try:
        return download_artifact(client, run_id, artifact, folder)
    except (MlflowException, OSError) as err:
        raise StoreError(f"run {run_id} has no artifact {artifact}{hint}: {_first_line(err)}") from None


def read_text(client: MlflowClient, run_id: str, artifact: str) -> str:
    """A logged text artifact (config.yaml, per_class.csv, ...) as a string."""
    with tempfile.TemporaryDirectory() as tmp:
        return Path(download(client, run_id, artifact, tmp)).read_text(encoding="utf-8")


def read_text_or_none(client: MlflowClient, run_id: str, artifact: str) -> str | None:
    try:
        return read_text(client, run_id, artifact)
    except StoreError:
        return None


def _first_line(err: BaseException) -> str:
    text = getattr(err, "message", None) or str(err)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__

