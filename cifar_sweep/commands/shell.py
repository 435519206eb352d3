"""The small shell every command shares: store options, run filters, output, run ids, errors as one line.

A command is a parser built from these pieces and a body wrapped by `guarded`: a problem the user
can fix (no store, unknown experiment or run, bad input, a file that cannot be written) is printed as
one line `<command>: <message>` with exit status 1, never as a traceback.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from cifar_sweep.commands import formats as tf
from cifar_sweep.errors import CifarSweepError
from cifar_sweep.tracking import lookup
from cifar_sweep.tracking.queries import DEFAULT_EXPERIMENT, parse_tag_filters

# Files a command reads or writes: a wrong path is the user's to fix, not a crash to trace.
_PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class BadOption(CifarSweepError, ValueError):
    """An option value argparse accepts but the command cannot use (`--top 0`)."""


# -- options --------------------------------------------------------------------------------------


def add_store_options(parser: argparse.ArgumentParser, experiment: bool = True) -> None:
    parser.add_argument("--tracking-uri", help="MLflow store (default: sqlite:///<project>/runs/mlflow.db)")
    if experiment:
        parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                            help="experiment name (default: %(default)s)")


def add_run_filters(parser: argparse.ArgumentParser, sweep: bool = True, tags: bool = True,
                    data: bool = False) -> None:
    """The store options and the run filters of the reporting commands, with one wording.

    `data`: the command keys on the dataset (`--data NAME`; without it, one board per dataset).
    """
    add_store_options(parser)
    if sweep:
        parser.add_argument("--sweep", help="only runs of this sweep: its parent run id (or the 8 characters "
                                            "the summary prints) or its sweep_id tag")
    parser.add_argument("--model", help="only runs of this model (the model tag, e.g. cnn_simple)")
    if data:
        parser.add_argument("--data", metavar="NAME",
                            help="only runs on this dataset (the dataset tag: cifar10-jpeg, cifar2, synthetic, ...); "
                                 "default: each dataset apart, real CIFAR-10 first")
    if tags:
        parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                            help="only runs with this tag value (repeatable)")


def add_output(parser: argparse.ArgumentParser, formats: bool = True) -> None:
    if formats:
        parser.add_argument("--format", choices=tf.FORMATS, default="table")
    parser.add_argument("--out", type=Path, help="write to this file instead of standard output")


def parse_tags(items: Iterable[str]) -> dict[str, str]:
    return parse_tag_filters(items)


# -- output ---------------------------------------------------------------------------------------


def emit(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)


# -- runs -----------------------------------------------------------------------------------------


def resolve_run(client, ref: str, uri: str = "this store"):
    """A run by its id or an unambiguous prefix of one (the 8 characters summaries print)."""
    return lookup.get_run(client, ref, uri)


# -- errors ---------------------------------------------------------------------------------------


def expected_errors() -> tuple[type[BaseException], ...]:
    # DataError is a ValueError; ValueError also covers bad values argparse let through.
    return (CifarSweepError, ValueError, *_PATH_ERRORS, *lookup.store_failures())


def one_line(error: BaseException) -> str:
    if isinstance(error, CifarSweepError):
        return error.one_line()
    text = (getattr(error, "message", None) or str(error)).strip()
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.strerror}: {error.filename}"
    return text.splitlines()[0] if text else type(error).__name__


def guarded(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Wrap a command's main: an expected error is one line on stderr and exit status 1."""
    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except expected_errors() as error:
                print(f"{prog}: {one_line(error)}", file=sys.stderr)
                return 1
        return run
    return wrap
