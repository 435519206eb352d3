"""`cifar-leaderboard`: rank an experiment's runs by best validation accuracy, seeds folded.

Never imports torch (directly or through cifar_sweep): it must answer in a second on a laptop
without a GPU stack. The ranking is `analysis.ranking`; how the board looks is `board_view`.
`--reported` and `--reproduction` show the write-up presets (`analysis.reported`,
`analysis.reproduction`; their looks: `board_view`, `reproduction_view`). A folded row shows the
95% interval of its mean and whether its gap to the leader is within seed noise (Welch's t-test);
`--tag-runs` also writes those verdicts as tags on the runs, where MLflow's runs table shows them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cifar_sweep.analysis import reported, reproduction
from cifar_sweep.analysis.ranking import DEFAULT_METRIC, Board, Query, build, build_all, run_tags
from cifar_sweep.commands import formats as tf
from cifar_sweep.commands import reproduction_view, shell
from cifar_sweep.commands.board_view import render, render_boards, render_reported
from cifar_sweep.config.paths import default_tracking_uri
from cifar_sweep.tracking.store import open_store

__all__ = ["Board", "Query", "build", "build_all", "main", "parser", "query_from_args", "render", "render_boards",
           "run_tags", "tag_runs"]

PROG = "cifar-leaderboard"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Rank FINISHED runs by best validation accuracy; repeats differing only by seed fold "
                    "into mean ± std (per device and thread count), with the 95%% t-interval of the mean and "
                    "Welch's t-test against the leader (p >= 0.05: within noise of the leader). One board per "
                    "dataset, real CIFAR-10 first: runs on different data are never ranked together.",
        epilog="--tag-runs writes each ranked run's rank, within_noise_of_leader and val_acc_ci95 as MLflow tags, "
               "so that the MLflow UI (cifar-ui) can show them as columns of the runs table.",
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
    p.add_argument("--tag-runs", action="store_true",
                   help="also set tags rank, within_noise_of_leader (leader/true/false/untested) and val_acc_ci95 "
                        "(<metric>_ci95 with --by) on the runs of every ranked row, for the MLflow UI; the ranks "
                        "are those of this board, its filters included")
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
    if args.tag_runs and (args.reported or args.reproduction):
        raise shell.BadOption("--tag-runs writes the ranks of the leaderboard",
                              hint="; run it without --reported and --reproduction")
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
    if args.tag_runs:
        tag_runs(boards, args.tracking_uri)
    return 0


def tag_runs(boards: list[Board], tracking_uri: str | None) -> int:
    """Write `ranking.run_tags` of every board on its runs through the store's client; the count."""
    client = open_store(tracking_uri)
    tagged = 0
    for board in boards:
        for run_id, tags in run_tags(board).items():
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
            tagged += 1
    print(f"{PROG}: tagged {tagged} runs with rank, within_noise_of_leader and the interval", file=sys.stderr)
    return tagged


if __name__ == "__main__":
    raise SystemExit(main())
