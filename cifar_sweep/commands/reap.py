"""`cifar-sweep-reap`: mark runs KILLED whose process died without ending them (SIGKILL, power loss).

A live process always ends its own run (FINISHED, FAILED or KILLED), so a RUNNING run is stale when
its recorded process is gone: on this host we check the pid (and that it is still a Python process,
against pid reuse); for runs of other hosts we go by the heartbeat the loop refreshes every epoch.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from cifar_sweep.config.paths import default_tracking_uri


@dataclass(frozen=True)
class Stale:
    run_id: str
    name: str
    reason: str


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # a recycled pid running something else is not our run
        return b"python" in cmdline.read_bytes()
    return True


def find_stale(client: MlflowClient, stale_after_s: float, host: str | None = None) -> list[Stale]:
    host = host or socket.gethostname()
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    if not experiments:
        return []
    found = []
    runs = client.search_runs(experiments, "attributes.status = 'RUNNING'", max_results=50000)
    for run in runs:
        tags = run.data.tags
        if tags.get("sweep_parent") == "true":
            continue  # a sweep's parent is ended by its sweep process
        beat = float(tags.get("heartbeat", run.info.start_time / 1000))
        age = time.time() - beat
        if tags.get("host") == host and tags.get("pid", "").isdigit():
            if not pid_alive(int(tags["pid"])):
                found.append(Stale(run.info.run_id, run.info.run_name, f"process {tags['pid']} on {host} is gone"))
        elif age > stale_after_s:
            found.append(Stale(run.info.run_id, run.info.run_name, f"no heartbeat for {age / 60:.0f} min"))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cifar-sweep-reap", description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: the project's SQLite store)")
    parser.add_argument("--stale-minutes", type=float, default=120.0,
                        help="runs of other hosts count as dead after this long without a heartbeat")
    parser.add_argument("--dry-run", action="store_true", help="list what would be marked, change nothing")
    args = parser.parse_args(argv)
    client = MlflowClient(tracking_uri=args.tracking_uri or default_tracking_uri())
    stale = find_stale(client, args.stale_minutes * 60)
    for item in stale:
        print(f"{'would mark' if args.dry_run else 'marked'} KILLED: {item.run_id} {item.name!r}: {item.reason}")
        if not args.dry_run:
            client.set_tag(item.run_id, "failure_reason", f"reaped: {item.reason}")
            client.set_terminated(item.run_id, "KILLED")
    if not stale:
        print("no stale RUNNING runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
