"""Launching the repeats of `cifar-compare-devices --repeats N`: N seeds on setups A and B, each run its
own `cifar-sweep` process, interleaved A, B, A, B so that a slow minute of the machine falls on both
sides; the run ids come back for the comparison to read exactly those runs.

Separate processes (not one sweep) because a timing run must not share its process, threads or
warm caches with the other side's run.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import time

from cifar_sweep.commands import shell

RUN_ID = re.compile(r"MLflow run ([0-9a-f]{32})")
# Keys the comparison sets for each run itself: the seed is the repeat, the store is the command's.
OWN_KEYS = {"seed": "--seed sets the first seed", "resume": "every repeat starts fresh (resume=false)",
            "tracking.uri": "use --tracking-uri", "tracking.experiment": "use --experiment"}


class RepeatFailed(shell.CifarSweepError, RuntimeError):
    """A launched run did not finish: the comparison of the others would not be the one asked for."""


def check_overrides(job: list[str], a: list[str], b: list[str]) -> None:
    if not a or not b:
        raise shell.BadOption("--repeats needs both setups", hint=": e.g. --a trainer.threads=1 --b trainer.threads=2")
    for item in (*job, *a, *b):
        key = item.split("=", 1)[0].lstrip("+~")
        if item.startswith("-") or "=" not in item:
            raise shell.BadOption(f"{item!r} is not a cifar-sweep override (key=value)",
                                  hint="; the comparison launches single runs itself, without -m")
        if key in OWN_KEYS:
            raise shell.BadOption(f"{item!r}: the comparison sets {key} itself", hint=f"; {OWN_KEYS[key]}")
    if sorted(a) == sorted(b):
        raise shell.BadOption("--a and --b name the same setup", hint="; give them different devices or thread counts")


def _quoted(value: str) -> str:
    return value if re.fullmatch(r"[\w./:@+-]+", value) else "'" + value.replace("'", "\\'") + "'"


def failure_line(output: str) -> str:
    """The line of a failed run's output that says why: its own one-line error, else a traceback's
    last line, else Hydra's first (Hydra ends with a hint about HYDRA_FULL_ERROR, not the reason)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    own = [line for line in lines if line.startswith("cifar-sweep: ")]
    if own:
        return own[-1][len("cifar-sweep: "):]
    if any(line.startswith("Traceback") for line in lines):
        return lines[-1]
    reasons = [line for line in lines if "HYDRA_FULL_ERROR" not in line]
    return reasons[0] if reasons else "no output"


def launch_repeats(n: int, job: list[str], a: list[str], b: list[str], experiment: str,
                   tracking_uri: str | None = None, first_seed: int = 0, log=sys.stderr,
                   prog: str = "cifar-compare-devices") -> tuple[list[str], list[str]]:
    """N seeds, each run on A then on B as its own `cifar-sweep` process (interleaved: drift of the
    machine falls on both sides); the run ids of A's and of B's runs."""
    store = [f"tracking.experiment={_quoted(experiment)}"] + ([f"tracking.uri={tracking_uri}"] if tracking_uri else [])
    ids: dict[str, list[str]] = {"A": [], "B": []}
    for k, (seed, (side, overrides)) in enumerate(itertools.product(range(first_seed, first_seed + n),
                                                                    (("A", a), ("B", b))), start=1):
        args = [*job, *overrides, f"seed={seed}", "resume=false", *store]
        print(f"{prog}: run {k}/{2 * n} ({side}, seed {seed}): cifar-sweep {' '.join(args)}", file=log, flush=True)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "cifar_sweep.train", *args], capture_output=True, text=True)
        found = RUN_ID.findall(done.stdout + done.stderr)
        if done.returncode != 0 or not found:
            raise RepeatFailed(f"run {k}/{2 * n} ({side}, seed {seed}) failed (exit {done.returncode}): "
                               f"{failure_line(done.stderr or done.stdout)}",
                               hint=f"; run `cifar-sweep {' '.join(args)}` alone to see its whole output")
        ids[side].append(found[0])
        print(f"{prog}: run {k}/{2 * n} done in {time.perf_counter() - started:.0f} s: {found[0][:8]}",
              file=log, flush=True)
    return ids["A"], ids["B"]
