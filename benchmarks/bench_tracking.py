"""Tracking overhead: one short run with tracking on, and the engine alone, in the same process.

    .venv/bin/python benchmarks/bench_tracking.py [--quick] [--epochs 3] [--repeats 2] [--model cnn_simple]

ON:  `cifar_sweep.train.train(cfg)` (the entry point's function, config composed by Hydra's compose
     API): an MLflow run in a fresh SQLite store, params, model summary, per-epoch metrics, a
     resume checkpoint and a misclassified-image grid per epoch, the final diagnostics and the
     checkpoint artifact.
OFF: the same data, model, optimizer, schedule and epochs through `engine.train_one_epoch` and
     `engine.evaluate` only (no MLflow, no grid, no checkpoint), plus the final test evaluation.
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


def compose(home: Path, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(common.ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def run_on(cfg) -> float:
    from cifar_sweep.train import train

    start = time.perf_counter()
    train(cfg)
    return time.perf_counter() - start


def run_off(cfg) -> dict:
    """The engine alone, built the way the entry point builds it (same seeds, same objects)."""
    import torch
    from hydra.utils import instantiate

    from cifar_sweep.data.augment import Augment
    from cifar_sweep.data.batches import Standardize, TrainBatches
    from cifar_sweep.training.device import setup_hardware
    from cifar_sweep.training.engine import evaluate, train_one_epoch
    from cifar_sweep.data.options import loader_kwargs
    from cifar_sweep.train import seed_everything

    start = time.perf_counter()
    hw = setup_hardware(cfg.trainer.device, cfg.trainer.precision, cfg.trainer.threads)
    seed_everything(cfg.seed)
    bundle = instantiate(loader_kwargs(cfg.data), seed=cfg.seed)
    model = instantiate(cfg.model, num_classes=len(bundle.classes)).to(hw.device, memory_format=torch.channels_last)
    standardize = Standardize(bundle.mean, bundle.std, hw.device, True)
    generator = torch.Generator(device=hw.device).manual_seed(cfg.seed)
    on = lambda split: (split.images.to(hw.device), split.labels.to(hw.device))  # noqa: E731
    (train_x, train_y), val, test = on(bundle.train), on(bundle.val), on(bundle.test)
    batches = TrainBatches(train_x, train_y, cfg.trainer.batch_size, standardize,
                           Augment(**cfg.data.get("augment", {})), generator, limit_batches=cfg.trainer.limit_train_batches)
    optimizer = instantiate(cfg.optimizer)(model)
    scheduler = instantiate(cfg.schedule)(optimizer, total_steps=cfg.trainer.epochs * len(batches))
    train_s, images = [], 0
    for epoch in range(cfg.trainer.epochs):
        stats = train_one_epoch(model, batches, optimizer, scheduler, hw, epoch)
        evaluate(model, *val, cfg.trainer.eval_batch_size, standardize, hw)
        train_s.append(stats.seconds)
        images += stats.images
    evaluate(model, *test, cfg.trainer.eval_batch_size, standardize, hw)
    return {"wall_s": time.perf_counter() - start, "train_s": sum(train_s), "images_per_s": images / sum(train_s)}


def time_parts(cfg, home: Path) -> dict:
    """Each per-epoch piece of the ON loop, alone, on objects like the run's (median of 5 calls)."""
    import torch
    from hydra.utils import instantiate

    from cifar_sweep.training import checkpoint as ckpt
    from cifar_sweep import train as run_stages
    from cifar_sweep.data.options import loader_kwargs
    from cifar_sweep.analysis.diagnostics import log_test_diagnostics
    from cifar_sweep.analysis.figures import misclassified_grid
    from cifar_sweep.training.loop import Trainee
    from cifar_sweep.training.resume import RunIdentity
    from omegaconf import OmegaConf
    from cifar_sweep.data.batches import Standardize
    from cifar_sweep.training.device import setup_hardware
    from cifar_sweep.training.engine import evaluate
    from cifar_sweep.tracking.run import RunTracker

    hw = setup_hardware(cfg.trainer.device, "auto", cfg.trainer.threads)
    bundle = instantiate(loader_kwargs(cfg.data), seed=cfg.seed)
    model = instantiate(cfg.model, num_classes=len(bundle.classes)).to(hw.device, memory_format=torch.channels_last)
    optimizer = instantiate(cfg.optimizer)(model)
    scheduler = instantiate(cfg.schedule)(optimizer, total_steps=100)
    standardize = Standardize(bundle.mean, bundle.std, hw.device, True)
    dev = lambda t: t.to(hw.device)  # noqa: E731
    val = evaluate(model, dev(bundle.val.images), dev(bundle.val.labels), cfg.trainer.eval_batch_size, standardize, hw)
    tracker = RunTracker.start(cfg.tracking.uri, "bench_tracking_parts", "parts", {})
    history = [{"train_loss": 1.0, "val_acc": val.acc, "elapsed_s": 1.0, "epoch_time_s": 1.0}]
    metrics = {k: 1.0 for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s",
                                "images_per_s", "eval_time_s", "elapsed_s")}
    generator = torch.Generator().manual_seed(0)
    folder = home / "parts_ckpt"
    identity = RunIdentity.of(OmegaConf.to_container(cfg, resolve=True), "cpu", home, "bench").record()  # once per run
    trainee = Trainee(model, model, optimizer, scheduler, None, generator)
    parts = {
        "checkpoint state + save": lambda: ckpt.save(folder, trainee.state(history, tracker.run_id, identity)),
        "log_metrics (9 metrics)": lambda: tracker.log_metrics(metrics, step=0),
        "heartbeat tag": lambda: tracker.set_tags({"heartbeat": round(time.time(), 1)}),
        "misclassified grid: draw": lambda: misclassified_grid(bundle.val.images, val.labels, val.probs, bundle.classes,
                                                                    cfg.tracking.grid_tiles),
        "misclassified grid: draw + log": lambda: run_stages.log_misclassified_grid(tracker, bundle.val.images, val, bundle.classes,
                                                                                 cfg.tracking.grid_tiles, 999),
    }
    out = {}
    # One-off pieces of a run (once each, as a run pays them, imports included).
    from cifar_sweep.models.summary import model_summary

    test = evaluate(model, dev(bundle.test.images), dev(bundle.test.labels), cfg.trainer.eval_batch_size, standardize, hw)
    once = {
        "once: model summary (torchinfo)": lambda: model_summary(model),
        "once: final diagnostics (PR curves, confusion, tables, embedding)": lambda: log_test_diagnostics(
            tracker, model, test, dev(bundle.test.images), bundle.classes, standardize, hw,
            OmegaConf.to_object(cfg.diagnostics)),
        "once: checkpoint artifact": lambda: run_stages.log_final_weights(tracker, model),
    }
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
        cfg = compose(home, overrides)
        print("config: " + " ".join(overrides))

        on, off, per_epoch = [], [], []
        for rep in range(repeats):
            wall = run_on(cfg)
            m = common.last_run_metrics(home, "bench_tracking")
            trains, evals, elapsed = m["epoch_time_s"], m["eval_time_s"], m["elapsed_s"]
            # Between two epochs' evaluations: what is neither training nor evaluation.
            gaps = [elapsed[e] - elapsed[e - 1] - trains[e] - evals[e] for e in range(1, len(elapsed))]
            per_epoch.append({"gap_s": gaps, "train_s": trains[1:], "eval_s": evals[1:]})
            on.append({"wall_s": wall, "train_s": sum(trains)})
            off.append(run_off(cfg))
            print(f"  repeat {rep + 1}/{repeats}: ON {wall:.1f} s (training {sum(trains):.1f} s), "
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
        ("ON: train(cfg), tracking on", on_wall), ("OFF: engine alone", off_wall), ("OFF training time", off_train),
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
