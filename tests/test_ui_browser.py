"""`cifar-ui` as a person meets it: Debian's Chromium, headless, driven by Playwright, no click.

The store: a small sweep on data=synthetic (model=logreg,mlp, 2 epochs), a sweep of learning rate
and batch size on a two-class subset of the synthetic images (its chart view draws them in parallel
coordinates against best_val_acc), one run under the real copy's name (`cifar10-jpeg`: a tiny image
tree of that name stands in for the 19 MB archive, so it learns little and ranks below the demo's
figures, as real data does), and one run left RUNNING with figures above every other (as a run whose
process hangs or died at its very end). Then `cifar-ui` on loopback. The link it prints must land on
the real-data leaderboard; each dataset's link on its own ranking of finished runs with their sweep;
a run page, opened by its link, in the model-training layout, with its misclassified grid stepping
through the epochs. Screenshots go to the test's temporary folder (printed; run pytest with -s).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from data_trees import make_tree
from helpers import run_cli

from cifar_sweep.commands import ui as cui
from cifar_sweep.commands import ui_views as views

pytestmark = [pytest.mark.slow, pytest.mark.cli]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (scripts/install.sh test installs it)", allow_module_level=True)

EPOCHS = 2
LIGHT = ["diagnostics.embedding=false", "diagnostics.pr_curves=false", "diagnostics.confusion=false"]
SWEEP = ["-m", "data=synthetic", "model=logreg,mlp", f"trainer.epochs={EPOCHS}", *LIGHT]
SUBSET = ["-m", "data=synthetic", "data.classes=[cat,dog]", "data.val_size=100", "model=logreg", "trainer.epochs=1",
          "optimizer.lr=0.03,0.001", "trainer.batch_size=32,128", *LIGHT]
REAL_NAMED = ["data=folder", "data.val_size=4", "model=logreg", "trainer.epochs=1", *LIGHT]  # + data.root
READY_TIMEOUT_S = 240
SETTLE_MS = 20_000  # the single-page app's first paint on a busy 2-core machine


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(home, MlflowClient, experiment, jobs, parent, real run, running run) of the store described above."""
    from mlflow.tracking import MlflowClient

    home = tmp_path_factory.mktemp("browser_home")
    make_tree(home / "cifar10-jpeg", n_train=8, n_test=4)
    for args in (SWEEP, SUBSET, [*REAL_NAMED, f"data.root={home / 'cifar10-jpeg'}"]):
        res = run_cli(args, home, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{home / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cifar_sweep")
    running = client.create_run(exp.experiment_id, run_name="zz still running",
                                tags={"dataset": "synthetic", "model": "mlp"})
    client.log_metric(running.info.run_id, "best_val_acc", 0.999)
    runs = client.search_runs([exp.experiment_id])
    parents = sorted((r for r in runs if r.data.tags.get("sweep_parent") == "true"), key=lambda r: r.info.start_time)
    parent = parents[0]  # the model sweep; the subset's sweep came second
    jobs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    (real,) = [r for r in runs if r.data.tags.get("dataset") == "cifar10-jpeg"]
    assert len(jobs) == 2 and {r.info.status for r in [*jobs, real]} == {"FINISHED"}
    return home, client, exp, jobs, parent, real, running


@pytest.fixture(scope="module")
def ui(store, tmp_path_factory):
    """`cifar-ui --port <free>` on the store; yields (the link it printed, the file its output goes to)."""
    from cifar_sweep.commands.ui import free_port

    home = store[0]
    log_path = tmp_path_factory.mktemp("browser_ui") / "cifar-ui.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cifar_sweep.commands.ui", "--port", str(free_port())],
                                cwd=home, env={**os.environ, "CIFAR_SWEEP_HOME": str(home)}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and "Ctrl-C to stop" not in log_path.read_text():
            assert proc.poll() is None, f"cifar-ui exited early:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.5)
        out = log_path.read_text()
        link = re.search(r"MLflow UI: (\S+)", out)
        assert link and "Ctrl-C to stop" in out, f"not ready after {READY_TIMEOUT_S} s:\n{out[-3000:]}"
        yield link.group(1), log_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # cifar-ui stops its server's whole process group
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield chromium
        finally:
            chromium.close()


def _page(browser, width=1500, height=1000):
    context = browser.new_context(viewport={"width": width, "height": height})  # a fresh profile, as a new user's
    return context, context.new_page()


def _shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot: {path}")
    return path


def _link(log_path: Path, label: str) -> str:
    """The link on the line of cifar-ui's output that starts with `label` (`  on synthetic:`)."""
    found = re.search(rf"^{re.escape(label)} (\S+)$", log_path.read_text(), re.M)
    assert found, log_path.read_text()
    return found.group(1)


def _runs_table(browser, link: str, tmp_path: Path, shot: str):
    """Open `link` in a fresh profile; (page text, run names in the order the grid shows them, cells)."""
    context, page = _page(browser)
    try:
        page.goto(link)
        page.get_by_text("matching run").wait_for(timeout=120_000)  # "1 matching run", "2 matching runs"
        page.wait_for_timeout(3000)  # the shared view's columns settle after the first rows
        _shot(page, tmp_path, shot)
        names = [n.strip() for n in page.locator("[role=row] a").all_inner_texts() if n.strip()]
        cells = [c.strip() for c in page.locator("[role=gridcell]").all_inner_texts()]
        return page.inner_text("body"), names, cells, page.url
    finally:
        context.close()


def test_link_lands_on_the_real_data_leaderboard(ui, store, browser, tmp_path):
    """The demo's 90% would head a table grouped by dataset: the link opens real CIFAR-10's own ranking."""
    link, _ = ui
    _, _, exp, jobs, _, real, _ = store
    text, names, cells, url = _runs_table(browser, link, tmp_path, "landing.png")
    assert f"/#/experiments/{exp.experiment_id}/runs?" in url  # the runs tab, not traces or overview
    assert "Sort: best_val_acc" in text and "Group by:" not in text
    assert "1 matching run\n" in text, text[:3000]
    assert names == [real.info.run_name], names
    assert repr(real.data.metrics["best_val_acc"]) in text.split("\n")
    assert not any(job.info.run_name in text for job in jobs)


def test_each_dataset_ranks_its_finished_runs_with_their_sweep(ui, store, browser, tmp_path):
    _, log_path = ui
    _, _, _, jobs, parent, _, running = store
    text, names, cells, _ = _runs_table(browser, _link(log_path, "  on synthetic:"), tmp_path, "synthetic.png")
    assert "2 matching runs" in text, text[:3000]
    # The sweep's jobs, best first; not the RUNNING run, whose 0.999 would top them; not the parent.
    ranked = sorted(jobs, key=lambda j: -j.data.metrics["best_val_acc"])
    assert names == [j.info.run_name for j in ranked], names
    assert not any(n.startswith("zz still running") for n in names)
    # Names lead with what differs between the jobs (the model), whole in the wider name column.
    assert sorted(n.split()[0] for n in names) == ["logreg", "mlp"]
    # Without a click: every job's best_val_acc as MLflow stores it, an exact short decimal.
    for job in jobs:
        value = job.data.metrics["best_val_acc"]
        assert re.fullmatch(r"0\.\d{1,4}|1\.0?", repr(value)), value
        assert repr(value) in text.split("\n"), (repr(value), text[:3000])
    assert {"logreg", "mlp"} <= set(cells)  # the model column
    (sweep,) = {j.data.tags["sweep"] for j in jobs}
    assert cells.count(sweep) == 2, cells  # the sweep column: which sweep each job belongs to


def test_every_run_view_shows_the_run_still_going(ui, store, browser, tmp_path):
    _, log_path = ui
    text, names, _, _ = _runs_table(browser, _link(log_path, "  every run, any status, newest first:"), tmp_path,
                                    "all_runs.png")
    assert "Group by: dataset" in text and "Group: cifar10-jpeg" in text and "Group: synthetic[cat,dog]" in text
    assert "zz still running" in names, names


def test_saved_views_menu_lists_a_leaderboard_per_dataset(ui, browser, tmp_path):
    link, _ = ui
    context, page = _page(browser)
    try:
        page.goto(link)
        page.get_by_text("matching run").wait_for(timeout=120_000)
        page.get_by_role("button", name="Leaderboard: cifar10-jpeg").first.click()
        page.get_by_text("SAVED VIEWS", exact=False).first.wait_for(timeout=30_000)
        _shot(page, tmp_path, "saved_views.png")
        text = page.inner_text("body")
        for view in ("Leaderboard: synthetic", "Leaderboard: synthetic[cat,dog]", "All runs, newest first"):
            assert view in text, text[:3000]
    finally:
        context.close()


def test_a_sweep_link_lists_its_jobs(ui, store, browser, tmp_path):
    link, _ = ui
    _, _, exp, jobs, _, _, _ = store
    (sweep,) = {j.data.tags["sweep"] for j in jobs}
    text, names, _, _ = _runs_table(browser, views.sweep_page(link.split("/#/")[0], exp.experiment_id, sweep),
                                    tmp_path, "sweep.png")
    assert "2 matching runs" in text and sorted(names) == sorted(j.info.run_name for j in jobs), names


def test_a_run_link_opens_the_model_training_layout(ui, store, browser, tmp_path):
    """A run page opened by URL in a fresh browser: the link the project prints keeps the training
    layout (without `workflowType` the app switches to GenAI: "Evaluations", "Judges")."""
    link, _ = ui
    _, _, exp, _, _, real, _ = store
    context, page = _page(browser)
    try:
        page.goto(views.run_page(link.split("/#/")[0], exp.experiment_id, real.info.run_id))
        page.get_by_text("About this run").first.wait_for(timeout=120_000)
        page.wait_for_timeout(2000)
        _shot(page, tmp_path, "run_page.png")
        text = page.inner_text("body")
        assert real.info.run_name in text and "Model registry" in text
        assert "Evaluation runs" not in text and "Judges" not in text, text[:2000]
    finally:
        context.close()


def test_chart_view_opens_on_the_curves(ui, browser, tmp_path):
    link, _ = ui
    context, page = _page(browser)
    try:
        page.goto(link + "&compareRunsMode=CHART")
        page.get_by_text("Model metrics").first.wait_for(timeout=120_000)
        page.wait_for_timeout(3000)
        _shot(page, tmp_path, "charts.png")
        text = page.inner_text("body")
        sections = [s for s in ("Model metrics", "class_acc", "System metrics") if s in text]
        assert sections and sections[0] == "Model metrics", sections
        assert text.index("Model metrics") < text.index("class_acc") if "class_acc" in text else True
    finally:
        context.close()


def test_chart_view_draws_the_sweep_in_parallel_coordinates(ui, browser, tmp_path):
    """The subset's leaderboard, chart view: its own first section, one wide card of learning rate and
    batch size (the numbers that differ among its runs) against best_val_acc, every run drawn."""
    _, log_path = ui
    context, page = _page(browser)
    try:
        page.goto(_link(log_path, "  on synthetic[cat,dog]:") + "&compareRunsMode=CHART")
        page.get_by_text("Swept parameters").first.wait_for(timeout=120_000)
        page.get_by_text("Parallel Coordinates").first.wait_for(timeout=60_000)
        page.wait_for_timeout(3000)  # plotly draws its axes after the card
        shot = _shot(page, tmp_path, "parallel_coordinates.png")
        text = page.inner_text("body")
        assert text.index("Swept parameters") < text.index("Model metrics")
        assert "Showing all runs" in text and "4 matching runs" in text, text[:3000]
        axes = [t.strip() for t in page.locator("svg text.label").all_text_contents()]  # plotly's axis titles
        assert axes == ["optimizer.lr", "trainer.batch_size", "best_val_acc"], axes
        if os.environ.get("CIFAR_SWEEP_SAVE_SCREENSHOT"):  # the picture in benchmarks/results/
            shutil.copy(shot, os.environ["CIFAR_SWEEP_SAVE_SCREENSHOT"])
    finally:
        context.close()


def test_run_page_steps_through_the_misclassified_grids(ui, store, browser, tmp_path):
    link, _ = ui
    _, client, exp, jobs, _, _, _ = store
    job = next(j for j in jobs if j.data.params.get("trainer.epochs") == str(EPOCHS))
    base = link.split("/#/")[0]
    context, page = _page(browser)
    try:
        page.goto(views.run_page(base, exp.experiment_id, job.info.run_id).replace("?", "/model-metrics?"))
        page.get_by_text("Model metrics").first.wait_for(timeout=120_000)
        grid = page.locator("img[src*='misclassified']")
        for _ in range(40):  # the charts below the fold are drawn once scrolled to (a wheel, not a click)
            if grid.count():
                break
            page.mouse.move(600, 600)
            page.mouse.wheel(0, 700)
            page.wait_for_timeout(500)
        assert grid.count(), page.inner_text("body")[:3000]
        grid.first.scroll_into_view_if_needed()
        page.wait_for_function("() => { const i = document.querySelector(\"img[src*='misclassified']\");"
                               " return i && i.complete && i.naturalWidth > 0; }", timeout=60_000)
        assert "step%2B0%2B" in grid.first.get_attribute("src")
        slider = page.locator("[role=slider]").first
        assert (slider.get_attribute("aria-valuemin"), slider.get_attribute("aria-valuemax")) == ("0", str(EPOCHS - 1))
        _shot(page, tmp_path, "run_page_step0.png")
        slider.focus()
        page.keyboard.press("ArrowRight")  # the step control moves the card to the next epoch's grid
        page.wait_for_function("() => { const i = document.querySelector(\"img[src*='misclassified']\");"
                               " return i && i.src.includes('step%2B1%2B') && i.complete && i.naturalWidth > 0; }",
                               timeout=60_000)
        _shot(page, tmp_path, "run_page_step1.png")
    finally:
        context.close()


def test_ui_output_is_quiet(ui):
    """The browser's requests above (hundreds) leave no access-log line: only cifar-ui's own lines,
    the real data's leaderboard first, then each other dataset's, then every run."""
    _, log_path = ui
    out = log_path.read_text()
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[0].startswith("cifar-ui: starting MLflow on ")
    assert lines[1].startswith("MLflow UI: http://127.0.0.1:") and "cifar_leaderboard.cifar10-jpeg&" in lines[1]
    assert lines[2] == "  the FINISHED runs of cifar_sweep on cifar10-jpeg, ranked by best_val_acc, with their sweep"
    assert [line.split(": http")[0] for line in lines[3:6]] == [
        "  on synthetic", "  on synthetic[cat,dog]", "  every run, any status, newest first"]
    assert "Ctrl-C to stop" in lines[6] and len(lines) == 7, lines
