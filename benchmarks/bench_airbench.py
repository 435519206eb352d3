"""Time to 90%: the `airbench` preset on the JPEG copy, through the real command line.

    .venv/bin/python benchmarks/bench_airbench.py [--quick] [--epochs N] [--batch-size B] [-- extra overrides]

Runs `python -m cifar_sweep.train experiment=airbench data.val_size=0` (train on all 50,000 images,
validate on the 10,000 test images, as the write-ups did) with CIFAR_SWEEP_HOME in a temporary
folder whose data cache and MLflow store are made first (not timed). Reads the run back from its
store (per epoch: val_acc, here the test split's, and elapsed_s, seconds since the run started: data,
whitening init, training and every epoch's test-time-flip evaluation) and reports the time at which
test accuracy first reached 90%, the final accuracy and the process wall time.
--quick runs 2 epochs (a smoke test of the figures, not the target). Writes benchmarks/results/airbench.json
(airbench_quick.json for --quick). Each epoch's images/s is also a fraction of the machine's peak (a
bf16 matmul in this process, 2048^2 on the CPU, 8192^2 on a GPU, before and after the run) at
airbench's training FLOPs per image (torch.utils.flop_counter).
Targets: on 2 CPU cores 90% within 15 minutes, as short as possible; on an H200 93.5% in under 10 s
of training.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import _common as common

TARGET_ACC, TARGET_S = 0.90, 15 * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs only")
    parser.add_argument("--epochs", type=int, default=None, help="trainer.epochs (default: the preset's)")
    parser.add_argument("--batch-size", type=int, default=None, help="trainer.batch_size (default: the preset's)")
    parser.add_argument("--device", default="cpu", help="trainer.device (cpu, cuda)")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides, e.g. trainer.threads=2")
    args = parser.parse_args()
    import torch

    from cifar_sweep.training.device import cpu_share

    torch.set_num_threads(cpu_share())

    info = common.machine()
    print(common.describe(info))
    overrides = ["experiment=airbench", "data.val_size=0", "tracking.experiment=bench_airbench",
                 f"trainer.device={args.device}"]
    epochs = 2 if args.quick else args.epochs
    if epochs is not None:
        overrides.append(f"trainer.epochs={epochs}")
    if args.batch_size is not None:
        overrides.append(f"trainer.batch_size={args.batch_size}")
    overrides += args.overrides
    flops = common.training_flops_per_image(common.build_model("airbench"))
    peaks = [common.matmul_peak(args.device, "bf16")]
    with tempfile.TemporaryDirectory(prefix="bench-airbench-") as tmp:
        setup = common.prepare_home(Path(tmp))
        run = common.run_cli(overrides, Path(tmp))
    peaks.append(common.matmul_peak(args.device, "bf16"))
    peak = max(peaks, key=lambda p: p["gflops"])
    fractions = [common.fraction_of_peak(x, flops, peak) for x in run["images_per_s"]]

    lines, summary = run["epochs"], run["summary"]
    reached = next((r for r in lines if r["val_acc"] >= TARGET_ACC), None)
    print()
    print(common.table(["epoch", "test acc (flip TTA)", "s since start", "train s", "train img/s", "of peak"],
                       [(r["epoch"], r["val_acc"], r["time"], t, ips, f"{f:.0%}")
                        for r, t, ips, f in zip(lines, run["epoch_time_s"], run["images_per_s"], fractions)]))
    print(f"peak: {common.peak_line(peaks)} (before / after the run); {flops / 1e6:.0f} MFLOP per training image")
    print(f"training {summary['train_time_s']:.1f} s (first epoch {summary['first_epoch_time_s']:.1f} s), "
          f"evaluation {summary['total_eval_time_s']:.1f} s")
    if reached:
        print(f"test accuracy first >= {TARGET_ACC:.0%} after epoch {reached['epoch']}: {reached['time']:.0f} s "
              f"({reached['time'] / 60:.1f} min) since the run started, {reached['wall_s']:.0f} s since the process started")
    else:
        print(f"test accuracy never reached {TARGET_ACC:.0%} (best {summary['best_val_acc']:.4f})")
    print(f"final test accuracy {run['test_acc']}; process wall {run['process_wall_s']:.0f} s")
    met = bool(reached) and reached["time"] <= TARGET_S
    if not args.quick:
        print(f"target: {TARGET_ACC:.0%} within {TARGET_S / 60:.0f} min: {'met' if met else 'MISSED'}")
    common.write_result("airbench_quick" if args.quick else "airbench", {
        "machine": info, "overrides": overrides, "setup_untimed": setup, "epochs": lines,
        **{k: run[k] for k in ("epoch_time_s", "images_per_s", "eval_time_s")}, "timing": {
            k: summary.get(k) for k in ("train_time_s", "first_epoch_time_s", "steady_epoch_time_s", "total_eval_time_s")},
        "peaks": peaks, "training_flops_per_image": flops, "fraction_of_peak": [round(f, 3) for f in fractions],
        "time_to_90_s": reached["time"] if reached else None,
        "time_to_90_process_s": reached["wall_s"] if reached else None,
        "epoch_reaching_90": reached["epoch"] if reached else None,
        "final_test_acc": run["test_acc"], "process_wall_s": run["process_wall_s"],
        "precision": run["tags"].get("precision"), "threads": run["tags"].get("threads"),
        "target": {"acc": TARGET_ACC, "seconds": TARGET_S}, "met": met if not args.quick else None,
    })


if __name__ == "__main__":
    main()
