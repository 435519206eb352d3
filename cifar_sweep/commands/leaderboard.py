"""`cifar-leaderboard`: rank an experiment's runs by best validation accuracy, seeds folded.

Never imports torch (directly or through cifar_sweep): it must answer in a second on a laptop
without a GPU stack. The ranking is `analysis.ranking`; how the board looks is `board_view`.
`--reported` and `--reproduction` show the write-up presets (`analysis.reported`,
`analysis.reproduction`; their looks: `board_view`, `reproduction_view`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cifar_sweep.analysis import reported, reproduction
from cifar_sweep.analysis.ranking import DEFAULT_METRIC, Board, Query, build, build_all
from cifar_sweep.commands import formats as tf
from cifar_sweep.commands import reproduction_view, shell
from cifar_sweep.commands.board_view import render, render_boards, render_reported
from cifar_sweep.config.paths import default_tracking_uri

__all__ = ["Board", "Query", "build", "build_all", "main", "parser", "query_from_args", "render", "render_boards"]

PROG = "cifar-leaderboard"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Rank FINISHED runs by best validation accuracy; repeats differing only by seed fold "
                    "into mean ± std (per device and thread count). One board per dataset, real CIFAR-10 "
                    "first: runs on different data are never ranked together.",
    )
    shell.add_run_filters(p, data=True)
    p.add_argument("--by", default=DEFAULT_METRIC, metavar="METRIC", help="metric to rank by (default: %(default)s)")
    p.add_argument("--order", choices=("auto", "asc", "desc"), default="auto",
                   help="auto: ascending for losses and times, else descending")
    p.add_argument("--top", type=int, metavar="N", help="show the N best rows")
    p.add_argument("--all-status", action="store_true",
                   help="after the ranked rows, list FAILED/KILLED/RUNNING runs with their reason")
    p.add_argument("--no-fold", action="store_true", help="one row per run, seeds not folded")
    p.add_argument("--target", type=float, metavar="ACC",
                   help="add the epoch (0-based, as logged) and wall time (elapsed_s) at which val_acc first "
                        "reached ACC (a fraction, e.g. 0.9); folded rows show means over the runs that reached it")
    p.add_argument("--reported", action="store_true",
                   help="only the write-up presets, one row each: reported beside measured test accuracy "
                        "and the gap in points")
    p.add_argument("--reproduction", action="store_true",
                   help="every write-up preset with a verdict on its reproduction: with --format md the whole "
                        "report benchmarks/reproduce.py writes (per-class tables, curves, notes), "
                        "else its main table")
    p.add_argument("--format", choices=tf.FORMATS, default="table")
    p.add_argument("--out", type=Path, help="write to this file instead of standard output")
    return p


def query_from_args(args: argparse.Namespace) -> Query:
    if args.top is not None and args.top < 1:
        raise shell.BadOption("--top wants a positive number")
    if args.target is not None and not 0 < args.target <= 1:
        raise shell.BadOption(f"--target is an accuracy fraction in (0, 1], got {args.target}")
    return Query(
        tracking_uri=args.tracking_uri, experiment=args.experiment, sweep=args.sweep, model=args.model,
        tags=shell.parse_tags(args.tag), by=args.by, order=args.order, top=args.top,
        all_status=args.all_status, fold=not args.no_fold, target=args.target, data=args.data,
    )


@shell.guarded(PROG)
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.reported and args.reproduction:
        raise shell.BadOption("--reported and --reproduction are two views of the write-ups: pass one of them")
    if args.reported:
        rows, n_runs = reported.build(query_from_args(args))
        shell.emit(render_reported(rows, n_runs, args.format), args.out)
        return 0
    if args.reproduction:
        query = query_from_args(args)
        source = f"Read from {query.tracking_uri or default_tracking_uri()}, experiment `{query.experiment}`."
        shell.emit(reproduction_view.render(reproduction.measure(query), args.format, source), args.out)
        return 0
    boards = build_all(query_from_args(args))
    shell.emit(render_boards(boards, args.format), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
