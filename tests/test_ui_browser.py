"""`cifar-ui` as a person meets it: Debian's Chromium, headless, driven by Playwright, no click.

A small sweep on data=synthetic (2 jobs, 2 epochs) and one run on another dataset (a two-class
subset of the synthetic images, 1 epoch), then `cifar-ui` on loopback. The link it prints must land
on the training-runs table with the ranking readable in the page's text: best_val_acc as exact
decimals, the model names, the dataset names, jobs (not the sweep's parent) first. A run page must
show its misclassified grid with a step control that steps through the epochs. Screenshots go to
the test's temporary folder (printed; run pytest with -s to see where).
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
from conftest import run_cli

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (scripts/install.sh test installs it)", allow_module_level=True)

EPOCHS = 2
LIGHT = ["diagnostics.embedding=false", "diagnostics.pr_curves=false", "diagnostics.confusion=false"]
SWEEP = ["-m", "data=synthetic", "model=logreg,mlp", f"trainer.epochs={EPOCHS}", *LIGHT]
SUBSET = ["data=synthetic", "data.classes=[cat,dog]", "data.val_size=100", "model=logreg", "trainer.epochs=1", *LIGHT]
READY_TIMEOUT_S = 240
SETTLE_MS = 20_000  # the single-page app's first paint on a busy 2-core machine


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(home, MlflowClient, experiment, jobs, parent) after the sweep and the two-class run."""
    from mlflow.tracking import MlflowClient

    home = tmp_path_factory.mktemp("browser_home")
    for args in (SWEEP, SUBSET):
        res = run_cli(args, home, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{home / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cifar_sweep")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sweep_parent") == "true"]
    jobs = [r for r in runs if r.data.tags.get("sweep_parent") != "true"]
    assert len(jobs) == 3 and {r.info.status for r in jobs} == {"FINISHED"}
    return home, client, exp, jobs, parent


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


def test_link_lands_on_the_ranked_training_runs_table(ui, store, browser, tmp_path):
    link, _ = ui
    home, client, exp, jobs, parent = store
    context, page = _page(browser)
    try:
        page.goto(link)
        page.get_by_text("matching runs").wait_for(timeout=120_000)
        page.wait_for_timeout(3000)  # the shared view's columns and groups settle after the first rows
        _shot(page, tmp_path, "landing.png")
        text = page.inner_text("body")
        assert f"/#/experiments/{exp.experiment_id}/runs?" in page.url  # the runs tab, not traces or overview
        assert "Sort: best_val_acc" in text and "Group by: dataset" in text
        # Without a click: every job's best_val_acc as MLflow stores it, an exact short decimal.
        for job in jobs:
            value = job.data.metrics["best_val_acc"]
            assert re.fullmatch(r"0\.\d{1,4}|1\.0?", repr(value)), value
            assert repr(value) in text.split("\n"), (repr(value), text[:3000])
        cells = [c.strip() for c in page.locator("[role=gridcell]").all_inner_texts()]
        assert {"logreg", "mlp"} <= set(cells)  # the model column, not just the run names
        assert "Group: synthetic" in text and "Group: synthetic[cat,dog]" in text  # the dataset names
        datasets = {job.data.tags["dataset"]: job.data.tags["dataset_digest"] for job in jobs}
        for name, digest in datasets.items():
            assert f"{name} ({digest})" in text  # the Datasets column
        # The first rows are jobs: run names in the order the grid shows them.
        names = [n.strip() for n in page.locator("[role=row] a").all_inner_texts() if n.strip()]
        assert names and names[0].startswith("[synthetic"), names
        job_names = {j.info.run_name for j in jobs}
        assert [n for n in names[:3]] and all(any(j.startswith(n.rstrip("…").rstrip(".")) for j in job_names)
                                              for n in names[:3]), names
        assert not any(parent.info.run_name.startswith(n.rstrip("…")) for n in names), names  # folded away
        assert "Additional runs" in text
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


def test_run_page_steps_through_the_misclassified_grids(ui, store, browser, tmp_path):
    link, _ = ui
    _, client, exp, jobs, _ = store
    job = next(j for j in jobs if j.data.params.get("trainer.epochs") == str(EPOCHS))
    base = link.split("/#/")[0]
    context, page = _page(browser)
    try:
        page.goto(f"{base}/#/experiments/{exp.experiment_id}/runs/{job.info.run_id}/model-metrics"
                  "?workflowType=machine_learning")
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
    """The browser's requests above (hundreds) leave no access-log line: only cifar-ui's own three."""
    _, log_path = ui
    out = log_path.read_text()
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[0].startswith("cifar-ui: starting MLflow on ")
    assert lines[1].startswith("MLflow UI: http://127.0.0.1:") and "Ctrl-C to stop" in lines[2]
    assert len(lines) == 3, lines
