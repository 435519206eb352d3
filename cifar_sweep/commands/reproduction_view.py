"""How the reproduction looks: the Markdown report (REPRODUCE.md), or its main table in any format.

The rows are `analysis.reproduction`'s (one dict per write-up preset, as reproduce.json keeps them);
`cifar-leaderboard --reproduction` and `benchmarks/reproduce.py` both print through here, so the
report a user asks of a store and the committed one are one text.
"""

from __future__ import annotations

import math
import statistics

import pandas as pd

from cifar_sweep.analysis.reproduction import PRESETS
from cifar_sweep.commands import formats as tf

COLUMNS = ["preset", "write-up", "network", "epochs", "reported", "measured test acc %", "best epoch %", "seeds",
           "wall / run", "train img/s", "verdict"]
NUMERIC = {"epochs", "measured test acc %", "best epoch %", "seeds", "wall / run", "train img/s"}
CSV_COLUMNS = ["preset", "writeup", "network", "model", "epochs", "reported", "reported_acc", "test_acc", "test_acc_std",
               "n", "best_epoch_acc", "train_time_s", "run_wall_s", "images_per_s", "verdict"]
EXPLAINED = [
    "Test accuracy on the JPEG copy of CIFAR-10 (`data=folder`, the default), mean ± std over the seeds run;",
    "wall time is one run's, start to end (data load, training, final test, diagnostics, artifacts);",
    "img/s is training images per second, the first epoch left out, as on `cifar-leaderboard`.",
    "The presets validate on the test split (`data.val_size=0`), as the write-ups did: \"best epoch\" is the",
    "highest per-epoch test accuracy (what a write-up watching its validation curve saw), the measured",
    "figure is the last epoch's, and the verdict judges the measured figure. On a shared machine",
    "the times and images/s also measure the neighbours (see the load average above).",
]


def measured_cell(r: dict) -> str:
    if r["n"]:
        return tf.pct(r["test_acc"], r["test_acc_std"], r["n"]) + (" †" if r.get("carried_from") else "")
    if r.get("epochs_done"):
        return f"({tf.pct(r['last_epoch_acc'])} after epoch {r['epochs_done']} of {r['epochs']})"
    return tf.MISSING


def cells(r: dict) -> list[str]:
    """The main table's cells of one row, in `COLUMNS` order."""
    epochs = (tf.MISSING if r["epochs"] is None else str(r["epochs"])) + (" (shortened)" if r["shortened"] else "")
    return [r["preset"], r["writeup"], r["network"], epochs, r["reported"], measured_cell(r),
            tf.pct(r.get("best_epoch_acc", math.nan)), str(r["n"]), tf.duration(r["run_wall_s"]),
            tf.number(r["images_per_s"], ",.0f"), r["verdict"]]


def pattern(per_class: dict[str, float]) -> str:
    """The per-class pattern in words: which classes the network predicts and which it never gets."""
    ranked = sorted(per_class.items(), key=lambda kv: -kv[1])
    zero = [c for c, v in ranked if v < 0.02]
    high = [f"{c} {100 * v:.0f}%" for c, v in ranked if v >= 0.5]
    spread = f"from {100 * ranked[-1][1]:.0f}% ({ranked[-1][0]}) to {100 * ranked[0][1]:.0f}% ({ranked[0][0]})"
    parts = [f"Per-class accuracy runs {spread}"]
    if high:
        parts.append(f"at or above 50%: {', '.join(high)}")
    if zero:
        parts.append(f"near 0% (under 2%): {', '.join(zero)}")
    return "; ".join(parts) + "."


def carried_note(results: list[dict], home: str = "") -> list[str]:
    lines, origins = [], {}
    for r in results:
        if r.get("carried_from"):
            origins.setdefault(r["carried_from"]["written"], (r["carried_from"], []))[1].append(r["preset"])
    for written, (origin, names) in origins.items():
        # A wiped /tmp store recreated at the same path is still another store: say so.
        where = ("at this same path, since removed" if origin["store"] == home else origin["store"])
        lines += [f"† measured in an earlier store ({where}; its report written {written}): "
                  f"this store has no run of {', '.join(f'`{n}`' for n in names)}, so those rows are "
                  "carried from the previous `reproduce.json`. The commands run against that store:",
                  "", "```bash", *origin["commands"], "```", ""]
    return lines


def _md_row(values: list[str]) -> str:
    return "| " + " | ".join(tf.clean_text(v).replace("|", "\\|") for v in values) + " |"


def per_class_table(r: dict) -> list[str]:
    classes = list(r["per_class"])
    reported = PRESETS[r["preset"]].per_class
    seeds = f", mean of {r['n']} seeds" if r["n"] > 1 else ""
    lines = ["", f"### `{r['preset']}` per class (test accuracy %{seeds})", "",
             "| class | " + " | ".join(classes) + " | mean |", "| --- |" + " ---: |" * (len(classes) + 1)]
    if reported:
        lines.append("| write-up | " + " | ".join(str(reported.get(c, tf.MISSING)) for c in classes)
                     + f" | {statistics.fmean(reported.values()):.1f} |")
    lines.append("| measured | " + " | ".join(f"{100 * r['per_class'][c]:.1f}" for c in classes)
                 + f" | {100 * statistics.fmean(r['per_class'].values()):.1f} |")
    return lines + ["", pattern(r["per_class"])]


def curve_section(r: dict) -> list[str]:
    curve = ", ".join(f"{100 * v:.1f}" for v in r["test_acc_by_epoch"])
    sentence = f"{curve} (%)"
    if r.get("target"):
        t = r.get("time_to_target_s")
        reached = (f"first >= {100 * r['target']:.0f}% after epoch {int(r['epoch_to_target']) + 1}, "
                   f"{tf.duration(t)} into the run") if t == t else f"never reached {100 * r['target']:.0f}%"
        sentence += f"; {reached}; final {tf.pct(r['test_acc'])}%."
    if r.get("full_run_estimate_s"):
        sentence += (f"; shortened schedule ({', '.join(r['shortened'])}); a full run of the recipe "
                     f"would take about {tf.duration(r['full_run_estimate_s'])} here at this run's speed.")
    return ["", f"### `{r['preset']}` test accuracy after each epoch", "", sentence]


def markdown(results: list[dict], source: str, commands: list[str] = (), quick: bool = False, home: str = "") -> str:
    """The whole report: `source` says where the figures come from (a sentence), `commands` what
    was run against the store, `home` the store's folder (to tell a carried row's store apart)."""
    lines = ["# Every write-up reproduced" + (" (smoke check: --quick)" if quick else ""), "", source, ""]
    if commands:
        lines += ["Commands run against this store (a relaunch skips the jobs that already FINISHED):", "",
                  "```bash", *commands, "```", ""]
    lines += [*EXPLAINED, "", *carried_note(results, home),
              "| " + " | ".join(COLUMNS) + " |",
              "| " + " | ".join("---:" if c in NUMERIC else "---" for c in COLUMNS) + " |"]
    lines += [_md_row([f"`{r['preset']}`", *cells(r)[1:]]) for r in results]
    notes = [(r["preset"], PRESETS[r["preset"]].note) for r in results if PRESETS[r["preset"]].note]
    if notes:
        lines += ["", "## How each preset follows its write-up", ""]
        lines += [f"- `{name}`: {note}" for name, note in notes]
    for r in results:
        if PRESETS[r["preset"]].show_per_class and r["per_class"]:
            lines += per_class_table(r)
        if r["test_acc_by_epoch"] and (r.get("target") or r["shortened"] or not r["n"]):
            lines += curve_section(r)
    return "\n".join(lines) + "\n"


def render(results: list[dict], fmt: str, source: str) -> str:
    """`cifar-leaderboard --reproduction` in one of `formats.FORMATS`: the report (md), the main
    table (table, html), or the raw figures (csv)."""
    if fmt == "md":
        return markdown(results, source)
    if fmt == "csv":
        return tf.csv_text(pd.DataFrame([{c: r.get(c) for c in CSV_COLUMNS} for r in results], columns=CSV_COLUMNS))
    shown = pd.DataFrame([cells(r) for r in results], columns=COLUMNS)
    text = tf.render_display(shown, fmt, NUMERIC, title="Every write-up reproduced")
    return f"{source}\n{text}" if fmt == "table" else text
