"""`cifar-sweep-reap`: mark runs KILLED whose process died without ending them (SIGKILL, power loss).

A live process always ends its own run (FINISHED, FAILED or KILLED), so a RUNNING run is stale when
its recorded process is gone: on this host we check the pid (and that it is still a Python process,
against pid reuse); for runs of other hosts we go by the heartbeat the loop refreshes every epoch.
A sweep's parent run is checked the same way, against the process that launched the sweep.
A run whose process failed but could not write that (a full disk) is marked FAILED with its reason.
Finding and marking are `tracking.reaping`'s; this is the command line around them.
"""

from __future__ import annotations

import argparse
import sys

from cifar_sweep.commands import shell
from cifar_sweep.tracking.reaping import find_stale, reap
from cifar_sweep.tracking.store import open_store

PROG = "cifar-sweep-reap"


@shell.guarded(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    shell.add_store_options(parser, experiment=False)
    parser.add_argument("--stale-minutes", type=float, default=120.0,
                        help="runs of other hosts count as dead after this long without a heartbeat")
    parser.add_argument("--dry-run", action="store_true", help="list what would be marked, change nothing")
    args = parser.parse_args(argv)
    # An existing store only: opening a mistyped path would create an empty one and report
    # "no stale runs", which reads as good news.
    client = open_store(args.tracking_uri)
    stale = find_stale(client, args.stale_minutes * 60)
    for item in stale:
        print(f"{'would mark' if args.dry_run else 'marked'} {item.status}: {item.run_id} {item.name!r}: {item.reason}")
        if not args.dry_run:
            reap(client, item)
    if not stale:
        print("no stale RUNNING runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
