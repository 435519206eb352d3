"""Tracking overhead: one short run with tracking on, and the same run without the tracker, in one process.

    .venv/bin/python benchmarks/bench_tracking.py [--quick] [--epochs 3] [--repeats 2] [--model cnn_simple]

ON:  `cifar_sweep.train.train(cfg)` (the entry point's function, config composed by Hydra's compose
     API): an MLflow run in a fresh SQLite store, params, model summary, per-epoch metrics, a
     resume checkpoint and a misclassified-image grid per epoch, the final diagnostics and the
     checkpoint artifact.
OFF: the very same run without the tracker: `cifar_sweep.assembly.assemble_run` (the one build of
     a run: data, model, batches, optimizer, schedule, scaler, compile, weight average) and its
     epochs (`run_epochs`, a resume checkpoint each), plus the final test evaluation; no MLflow,
     no grid, no printed lines.
The two alternate (ON, OFF, ON, OFF, ...); medians are reported. Three views of the overhead:
  per epoch   inside the ON run: the seconds between two epochs' evaluations that are neither
              training nor evaluation (checkpoint, metrics, heartbeat, grid, printing), as a share
              of the epoch's training time; this is the figure the target is about;
  whole run   ON wall minus OFF wall, in percent of OFF's training time (adds the one-off costs:
              run start, params, summary, final diagnostics and artifacts);
  parts       each per-epoch piece timed alone on the run's own objects (median of 5 calls).
Writes benchmarks/results/tracking.json. Target: at most 3% of training time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import _common as common

TARGET_PCT = 3.0


def compose(overrides: list[str]):
    """conf/train.yaml with the overrides, as `cifar-sweep` composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cifar_sweep.config import paths, schema  # noqa: F401  schema: the typed config blocks

    paths.register_resolvers()

    with initialize_config_dir(config_dir=str(common.ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def run_on(cfg) -> float:
    from cifar_sweep.train import train

    start = time.perf_counter()
    train(cfg)
    return time.perf_counter() - start


def run_off(cfg, home: Path) -> dict:
    """The very same run without the tracker: `assemble_run` (the build the entry point uses) and its
    epochs with a checkpoint each, as a run writes them, then the final test evaluation."""
    from cifar_sweep.assembly import assemble_run
    from cifar_sweep.training.device import setup_hardware
    from cifar_sweep.training.loop import timing_summary

    start = time.perf_counter()
    hw = setup_hardware(cfg.trainer.device, cfg.trainer.precision, cfg.trainer.threads)
    run = assemble_run(cfg, hw)
    run.run_epochs(home / "off_ckpt", lambda h: run.trainee.state(h, "off", {}), lambda *epoch: False)
    run.test_set().evaluate(run.trainee.eval_model, hw)
    timing = timing_summary(run.history)
    # images/s as on the leaderboard: the first epoch (warm-up) left out where there are more.
    return {"wall_s": time.perf_counter() - start, "train_s": timing.train_s,
            "images_per_s": statistics.fmean(h["images_per_s"] for h in run.history[1:] or run.history)}


def time_parts(cfg, home: Path) -> dict:
    """Each per-epoch piece of the ON loop alone (median of 5 calls), and the once-per-run pieces once,
    on the objects `assemble_run` builds for this config."""
    from omegaconf import OmegaConf

    from cifar_sweep.analysis.diagnostics import log_test_diagnostics
    from cifar_sweep.analysis.figures import misclassified_grid
    from cifar_sweep.assembly import assemble_run
    from cifar_sweep.models.summary import model_summary
    from cifar_sweep.tracking.epoch_log import log_misclassified_grid
    from cifar_sweep.tracking.run import RunTracker
    from cifar_sweep.training import checkpoint as ckpt
    from cifar_sweep.training.device import setup_hardware
    from cifar_sweep.training.resume import RunIdentity

    hw = setup_hardware(cfg.trainer.device, cfg.trainer.precision, cfg.trainer.threads)
    run = assemble_run(cfg, hw)
    model, images, classes, tiles = run.trainee.eval_model, run.bundle.val.images, run.bundle.classes, cfg.tracking.grid_tiles
    val = run.val.evaluate(model, hw)
    test_set = run.test_set()
    test = test_set.evaluate(model, hw)
    tracker = RunTracker.start(cfg.tracking.uri, "bench_tracking_parts", "parts", {})
    history = [{"train_loss": 1.0, "val_acc": val.acc, "elapsed_s": 1.0, "epoch_time_s": 1.0}]
    metrics = {k: 1.0 for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s",
                                "images_per_s", "eval_time_s", "elapsed_s")}
    identity = RunIdentity.of(OmegaConf.to_container(cfg, resolve=True), str(hw.device), home, "bench",
                              hw.precision).record()  # once per run
    # One-off pieces of a run (once each, as a run pays them, imports included).
    once = {
        "once: model summary (torchinfo)": lambda: model_summary(run.model),
        "once: final diagnostics (PR curves, confusion, tables, embedding)": lambda: log_test_diagnostics(
            tracker, model, test, test_set.images, classes, run.standardize, hw, OmegaConf.to_object(cfg.diagnostics)),
        "once: checkpoint artifact": lambda: tracker.log_weights(model),
    }
    parts = {
        "checkpoint state + save": lambda: ckpt.save(home / "parts_ckpt", run.trainee.state(history, tracker.run_id,
                                                                                          identity)),
        "log_metrics (9 metrics)": lambda: tracker.log_metrics(metrics, step=0),
        "heartbeat tag": lambda: tracker.set_tags({"heartbeat": round(time.time(), 1)}),
        "misclassified grid: draw": lambda: misclassified_grid(images, val.labels, val.probs, classes, tiles),
        "misclassified grid: draw + log": lambda: log_misclassified_grid(tracker, images, val, classes, tiles, 999),
    }
    out = {}
    for name, fn in once.items():
        t = time.perf_counter()
        fn()
        out[name] = time.perf_counter() - t
    for name, fn in parts.items():
        fn()  # first call: imports (matplotlib, PIL) and caches, paid once per run
        times = []
        for _ in range(5):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        out[name] = statistics.median(times)
    tracker.finish()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat of 2 short epochs")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default="cnn_simple")
    parser.add_argument("--threads", type=int, default=None, help="trainer.threads (default: every core)")
    parser.add_argument("--device", default="cpu", help="trainer.device (cpu, cuda)")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    epochs = 2 if args.quick else args.epochs

    info = common.machine()
    print(common.describe(info))
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        home = Path(tmp)
        os.environ["CIFAR_SWEEP_HOME"] = str(home)
        os.environ["CIFAR_SWEEP_DATA"] = str(common.DEFAULT_ARCHIVE)
        setup = common.prepare_home(home)
        overrides = [f"model={args.model}", "data=folder", f"trainer.epochs={epochs}", "trainer.progress=false",
                     "tracking.experiment=bench_tracking", "resume=false",
                     "data.augment.crop_padding=4", "data.augment.flip=true", f"trainer.device={args.device}"]
        if args.quick:
            overrides.append("trainer.limit_train_batches=60")
        if args.threads:
            overrides.append(f"trainer.threads={args.threads}")
        cfg = compose(overrides)
        print("config: " + " ".join(overrides))

        on, off, per_epoch = [], [], []
        for rep in range(repeats):
            wall = run_on(cfg)
            m = common.last_run_metrics(home, "bench_tracking")
            trains, evals, elapsed = m["epoch_time_s"], m["eval_time_s"], m["elapsed_s"]
            # Between two epochs' evaluations: what is neither training nor evaluation.
            gaps = [elapsed[e] - elapsed[e - 1] - trains[e] - evals[e] for e in range(1, len(elapsed))]
            per_epoch.append({"gap_s": gaps, "train_s": trains[1:], "eval_s": evals[1:]})
            on.append({"wall_s": wall, "train_s": m["summary"]["train_time_s"]})
            off.append(run_off(cfg, home))
            print(f"  repeat {rep + 1}/{repeats}: ON {wall:.1f} s (training {on[-1]['train_s']:.1f} s), "
                  f"OFF {off[-1]['wall_s']:.1f} s (training {off[-1]['train_s']:.1f} s); per-epoch gaps "
                  + ", ".join(f"{g:.2f}" for g in gaps) + " s", flush=True)
        parts = time_parts(cfg, home)

    gap = common.median([g for p in per_epoch for g in p["gap_s"]])
    epoch_train = common.median([t for p in per_epoch for t in p["train_s"]])
    epoch_eval = common.median([t for p in per_epoch for t in p["eval_s"]])
    per_epoch_pct = 100 * gap / epoch_train
    on_wall, off_wall = common.median([r["wall_s"] for r in on]), common.median([r["wall_s"] for r in off])
    off_train = common.median([r["train_s"] for r in off])
    whole_pct = 100 * (on_wall - off_wall) / off_train
    parts_sum = parts["checkpoint state + save"] + parts["log_metrics (9 metrics)"] + parts["heartbeat tag"] \
        + parts["misclassified grid: draw + log"]

    flops = common.training_flops_per_image(common.build_model(args.model))
    peak = common.matmul_peak(args.device, "bf16")
    off_rate = common.median([r["images_per_s"] for r in off])
    print(f"\ntraining throughput (OFF runs) {off_rate:,.0f} img/s = "
          f"{common.fraction_of_peak(off_rate, flops, peak):.0%} of peak ({common.peak_line([peak])}; "
          f"{flops / 1e6:.1f} MFLOP per training image)")
    print()
    print(common.table(["per epoch (median)", "seconds", "% of training"], [
        ("training", epoch_train, 100.0), ("evaluation (val split)", epoch_eval, 100 * epoch_eval / epoch_train),
        ("tracking gap in the ON run", gap, per_epoch_pct),
        ("  parts timed alone, sum", parts_sum, 100 * parts_sum / epoch_train),
        *[(f"    {k}", v, 100 * v / epoch_train) for k, v in parts.items() if not k.startswith("once")],
    ]))
    print()
    print(common.table(["once per run (not per epoch)", "seconds"], [(k[6:], v) for k, v in parts.items() if k.startswith("once")]))
    print()
    print(common.table(["whole run (median)", "seconds"], [
        ("ON: train(cfg), tracking on", on_wall), ("OFF: the same run, no tracker", off_wall), ("OFF training time", off_train),
        ("ON - OFF", on_wall - off_wall)]))
    met = per_epoch_pct <= TARGET_PCT
    print(f"per-epoch tracking overhead {per_epoch_pct:.1f}% of training time (target <= {TARGET_PCT:g}%: "
          f"{'met' if met else 'MISSED'}); whole run incl. one-off start/end work {whole_pct:.1f}%")
    common.write_result("tracking_quick" if args.quick else "tracking", {
        "machine": info, "config": overrides, "setup_untimed": setup, "repeats": repeats,
        "per_epoch": {"train_s": epoch_train, "eval_s": epoch_eval, "gap_s": gap, "overhead_pct": round(per_epoch_pct, 2),
                      "raw": per_epoch},
        "parts_s": parts, "whole_run": {"on_wall_s": on, "off": off, "overhead_pct_of_training": round(whole_pct, 2)},
        "target_pct": TARGET_PCT, "met": met, "peak": peak, "training_flops_per_image": flops,
        "fraction_of_peak_off": round(common.fraction_of_peak(off_rate, flops, peak), 3),
    })


if __name__ == "__main__":
    main()
