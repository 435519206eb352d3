"""The records a sweep leaves in its folder: one small JSON file per job, and the summary made of them.

Each job writes its own record (`<sweep dir>/.cifar_sweep/jobs/<num>.json`) when its run starts and
when it ends; any launcher's process can, since the sweep folder is shared. The callback reads
them at the end and checks them against the child runs.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_DIR = ".cifar_sweep"  # inside the sweep dir: parent.json, jobs/<num>.json, gpu slot locks
COMMAND = "cifar-sweep"
FAILURES = ("FAILED", "KILLED", "MISSING")
NOT_RUN = "NOT_RUN"


def state_dir(sweep_dir: str | os.PathLike) -> Path:
    return Path(sweep_dir) / STATE_DIR


# Set by `cifar-rerun` for the run it launches: that run's `rerun_of` tag (the run it repeats).
RERUN_OF_ENV = "CIFAR_SWEEP_RERUN_OF"


def command_line(overrides: list[str], multirun: bool = False) -> str:
    """The `cifar-sweep ...` line that runs these overrides: every run's `command` tag, the failed
    jobs of a sweep summary and `cifar-rerun --dry-run` all print it from here."""
    return " ".join([COMMAND, *(["-m"] if multirun else []), *(shlex.quote(o) for o in overrides)])


@dataclass
class JobRecord:
    job_num: int
    overrides: list[str]
    status: str  # RUNNING | FINISHED | FAILED | KILLED | SKIPPED | PRUNED | MISSING | NOT_RUN
    best_val_acc: float | None = None
    run_id: str | None = None
    error: str | None = None
    output_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status in FAILURES


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)  # atomic: a reader never sees half a record


def write_record(sweep_dir: str | os.PathLike, record: JobRecord) -> None:
    write_json(state_dir(sweep_dir) / "jobs" / f"{record.job_num}.json", asdict(record))


def read_record(sweep_dir: str | os.PathLike, job_num: int) -> JobRecord | None:
    return _load(state_dir(sweep_dir) / "jobs" / f"{job_num}.json")


def _load(path: Path) -> JobRecord | None:
    try:
        return JobRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def read_job_records(sweep_dir: str | os.PathLike) -> dict[int, JobRecord]:
    records = {}
    for path in sorted((state_dir(sweep_dir) / "jobs").glob("*.json")):
        record = _load(path)
        if record is not None:
            records[record.job_num] = record
    return records


def summary_text(records: list[JobRecord], parent_run_id: str | None, interrupted: bool = False) -> str:
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    head = ", ".join(f"{n} {s.lower().replace('_', ' ')}" for s, n in counts.items()) or "no jobs"
    lines = [
        "",
        f"sweep summary{' (interrupted)' if interrupted else ''}: {len(records)} jobs: {head}; parent run {parent_run_id}",
        f"{'job':<4} {'status':<9} {'best_val_acc':>12}  {'run':<8}  overrides",
    ]
    for r in records:
        acc = f"{r.best_val_acc:.4f}" if r.best_val_acc is not None else "-"
        lines.append(f"{r.job_num:<4} {r.status:<9} {acc:>12}  {(r.run_id or '-')[:8]:<8}  {' '.join(r.overrides)}")
    failed = [r for r in records if r.failed]
    if failed:
        lines.append("")
        lines.append("failed jobs (rerun one alone with the command below it):")
        for r in failed:
            lines.append(f"  #{r.job_num} {r.status}: {r.error or ''}".rstrip())
            if r.overrides:
                lines.append(f"    {command_line(r.overrides)}")
    if failed or any(r.status == NOT_RUN for r in records):
        lines.append("or relaunch the whole sweep: jobs already FINISHED are skipped:")
        lines.append(f"  {COMMAND} {' '.join(shlex.quote(a) for a in sys.argv[1:])}")
    return "\n".join(lines)
