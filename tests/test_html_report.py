"""The HTML report: self-contained, escaped, and rendered by a real headless Chromium."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from datasets_store import datasets_store  # noqa: F401  (module-scoped fixture)
from store_fixtures import seeded_store  # noqa: F401  (module-scoped fixture)

from cifar_sweep.commands import report as hr
from cifar_sweep.analysis import ranking as lb

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-quic", "--no-first-run", "--disable-sync", "--hide-scrollbars",
]
GREEN = (30, 160, 60)  # the seeded runs' last misclassified grid (epoch_002); epoch_000 is red


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def named(self, name: str) -> list[dict]:
        return [attrs for tag, attrs in self.tags if tag == name]


@pytest.fixture(scope="module")
def report(seeded_store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert hr.main(["--tracking-uri", seeded_store.uri, "--all-status", "--out", str(out)]) == 0
    return out


def test_self_contained_and_escaped(report):
    page = report.read_text()
    tags = Tags()
    tags.feed(page)
    names = {tag for tag, _ in tags.tags}
    assert not names & {"script", "link", "iframe", "object", "embed", "base"}
    # Nothing is fetched: every image is inline data, there are no links, no CSS url()/@import.
    assert all(a["src"].startswith("data:image/png;base64,") for a in tags.named("img"))
    assert not [a for _, a in tags.tags if "href" in a]
    assert "url(" not in page and "@import" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page


def test_content(report):
    page = report.read_text()
    tags = Tags()
    tags.feed(page)
    assert len(tags.named("tr")) == 1 + 8  # header + 6 ranked rows + FAILED + KILLED
    # One curve per run of the top rows (the folded row draws its 3 seeds), one legend entry per row.
    assert len(tags.named("polyline")) == 8
    assert page.count('<span class="swatch"') == 6
    # Grids of the top 5 rows: only B and config A's best seed logged one; the last epoch's is shown.
    imgs = tags.named("img")
    assert len(imgs) == 2
    assert page.count("no misclassified grid logged") == 3
    from PIL import Image

    for attrs in imgs:
        png = Image.open(io.BytesIO(base64.b64decode(attrs["src"].split(",", 1)[1]))).convert("RGB")
        assert png.getpixel((5, 5)) == GREEN


def test_unknown_experiment_exits_nonzero(seeded_store, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert hr.main(["--tracking-uri", seeded_store.uri, "--experiment", "nope", "--out", str(out)]) == 1
    assert not out.exists()
    assert capsys.readouterr().err.startswith("cifar-report: no experiment named 'nope'")


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it")
def test_renders_in_headless_chromium(report, tmp_path):
    url = report.resolve().as_uri()
    dom = chromium("--dump-dom", url, profile=tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    tags = Tags()
    tags.feed(dom.stdout)
    assert len(tags.named("tr")) == 9
    assert len(tags.named("img")) == 2 and len(tags.named("polyline")) == 8
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", dom.stdout)
    assert "72.00 ± 2.00" in cells and "&lt;script&gt;alert(1)&lt;/script&gt;" in cells

    shot = tmp_path / "report.png"
    done = chromium(f"--screenshot={shot}", "--window-size=1280,2000", url, profile=tmp_path / "profile-shot")
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2000)
    colours = image.getcolors(maxcolors=1 << 20)
    by_colour = {c: n for n, c in colours}
    # The embedded grids were decoded and painted (two 64x32 green images), and so was a curve.
    assert by_colour.get(GREEN, 0) >= 2 * 64 * 32
    assert by_colour.get((31, 119, 180), 0) > 100  # #1f77b4: the best row's curve and its legend swatch
    assert len(colours) > 50  # not a blank page
    keep = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "report_screenshot.png"
    if keep.parent.is_dir():  # left for a person to look at (git-ignored)
        shutil.copyfile(shot, keep)


def test_report_honours_filters(seeded_store, tmp_path):
    glance: list[str] = []
    page = hr.build_report(lb.Query(tracking_uri=seeded_store.uri, sweep="sw1"), glance=glance)
    board, sweep = page.split("<h2>The sweep at a glance</h2>")
    tags = Tags()
    tags.feed(board)
    assert len(tags.named("tr")) == 2 and len(tags.named("polyline")) == 3
    # The sweep's three finished seeds (its killed job left out): the one swept parameter, seed.
    assert glance[:3] == ["sweep sw1: 4 jobs, 3 finished (1 not FINISHED: left out)", "swept: seed",
                          "importance for best_val_acc (Optuna fANOVA over 3 jobs):"]
    assert "<td>seed</td><td>1.000</td>" in sweep


def test_one_section_per_dataset_and_markers_for_one_epoch(datasets_store):
    page = hr.build_report(lb.Query(tracking_uri=datasets_store.uri))
    titles = re.findall(r"<h2>(Leaderboard: [^<]*)</h2>", page)
    assert [t.split(", by")[0] for t in titles] == [
        "Leaderboard: cifar_sweep, data cifar10-jpeg", "Leaderboard: cifar_sweep, data cifar10-jpeg[cat,dog]",
        "Leaderboard: cifar_sweep, data cifar2", "Leaderboard: cifar_sweep, data synthetic"]
    # Every run logged one epoch: a polyline of one point draws nothing, so each gets a dot.
    tags = Tags()
    tags.feed(page)
    assert len(tags.named("polyline")) == 6
    circles = tags.named("circle")
    assert len(circles) == 6 and all(float(c["r"]) > 0 for c in circles)


def test_curves_of_many_epochs_have_no_markers():
    curves = pd.DataFrame({"run_id": ["r"] * 50, "step": range(50), "val_acc": [0.5 + i / 200 for i in range(50)]})
    svg = hr.svg_curves(curves, {"r": "run r"}, {"r": "#1f77b4"})
    assert svg.count("<polyline") == 1 and "<circle" not in svg
    one = hr.svg_curves(curves.head(1), {"r": "run r"}, {"r": "#1f77b4"})
    assert one.count("<circle") == 1
