"""`cifar-sweep` on a disk that fills up at the Nth checkpoint: a test helper, run as a script.

    python disk_full_helper.py checkpoints|everything N <cifar-sweep overrides...>

From the Nth checkpoint on, every checkpoint write goes to /dev/full, so the kernel itself answers
ENOSPC (a real write error, through torch.save). With `everything`, the MLflow store and the log
files are on that disk too: from then on SQLite refuses every write with its own "database or disk
is full" (raised where the driver runs the statement, so MLflow and SQLAlchemy handle it as they
would a real one), and Hydra's job log file writes to /dev/full.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
from pathlib import Path


def fill_the_disk(everything: bool) -> None:
    if not everything:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def refuse_writes(cursor, statement, parameters, context):
        if not statement.lstrip().upper().startswith(("SELECT", "PRAGMA")):
            raise sqlite3.OperationalError("database or disk is full")

    event.listen(Engine, "do_execute", refuse_writes)
    event.listen(Engine, "do_executemany", refuse_writes)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.stream = open("/dev/full", "w")  # noqa: SIM115  the handler owns it from now on


def main() -> None:
    mode, full_at = sys.argv[1], int(sys.argv[2])
    del sys.argv[1:3]
    from cifar_sweep.training import checkpoint

    real_save = checkpoint.save
    calls = []

    def save(folder: Path, state):
        calls.append(folder)
        if len(calls) == full_at:
            fill_the_disk(mode == "everything")
        if len(calls) >= full_at:
            folder.mkdir(parents=True, exist_ok=True)
            os.symlink("/dev/full", folder / f".last.pt.{os.getpid()}.tmp")
        return real_save(folder, state)

    checkpoint.save = save
    from cifar_sweep.train import main as train_main

    train_main()


if __name__ == "__main__":
    main()
