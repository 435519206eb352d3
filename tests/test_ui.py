"""`cifar-ui` for real: a small sweep, the MLflow server it starts, its REST API and a headless Chromium.

One module-scoped sweep (2 tiny jobs on data=synthetic, filed under `tracking.experiment=lab`: a
store without the default experiment) and one `cifar-ui` process serve every test here; the
server is always stopped in the fixture's teardown, whatever failed.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import REPO, run_cli
from mlflow.tracking import MlflowClient

from cifar_sweep.commands import ui as cui
from cifar_sweep.commands import ui_views as views
from cifar_sweep.commands.ui import free_port, health

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
READY_TIMEOUT_S = 240  # a cold MLflow start takes ~20 s alone, more while other jobs share the 2 cores
EXPERIMENT = "lab"  # not the default one: cifar-ui must find it by itself
SWEEP = ["-m", "data=synthetic", "model=logreg", "trainer.epochs=1", "seed=0,1", f"tracking.experiment={EXPERIMENT}"]


@pytest.fixture(scope="module")
def swept_home(tmp_path_factory):
    """A project home whose SQLite store holds one finished sweep of 2 jobs; returns (home, job run names)."""
    home = tmp_path_factory.mktemp("ui_home")
    res = run_cli(SWEEP, home, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{home / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], "tags.`mlflow.parentRunId` != ''")
    runs = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    return home, exp.experiment_id, sorted(r.info.run_name for r in runs)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.fixture(scope="module")
def ui(swept_home, tmp_path_factory):
    """`cifar-ui --port <free>` on the swept store, in its own session; yields (base url, its output)."""
    home, _, _ = swept_home
    port = free_port()
    log_path = tmp_path_factory.mktemp("ui_log") / "cifar-ui.log"
    env = {**os.environ, "CIFAR_SWEEP_HOME": str(home)}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cifar_sweep.commands.ui", "--port", str(port)], cwd=home, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    servers: list[int] = []  # the `mlflow server` process(es) cifar-ui started, for the fallback below
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and "Ctrl-C to stop" not in log_path.read_text():
            servers = _children(proc.pid) or servers
            assert proc.poll() is None, f"cifar-ui exited early ({proc.returncode}):\n{log_path.read_text()[-3000:]}"
            time.sleep(0.5)
        out = log_path.read_text()
        assert "Ctrl-C to stop" in out, f"not ready after {READY_TIMEOUT_S} s:\n{out[-3000:]}"
        yield f"http://127.0.0.1:{port}", out, log_path
    finally:
        servers = _children(proc.pid) or servers
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # cifar-ui stops its server's whole process group
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        # Fallback: whatever is still alive of cifar-ui's or the server's process groups.
        for pgid in [proc.pid, *servers]:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        proc.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.cli
def test_ui_prints_the_leaderboard_link(ui, swept_home):
    """The store's only experiment is not the default one: cifar-ui says so and opens it, on the
    leaderboard of its one dataset."""
    url, out, _ = ui
    _, exp_id, _ = swept_home
    assert (f"cifar-ui: no experiment 'cifar_sweep' in this store: showing '{EXPERIMENT}', the one with the "
            "latest run (experiments here: ") in out
    assert (f"MLflow UI: {url}/#/experiments/{exp_id}/runs?viewStateShareKey=cifar_leaderboard.synthetic"
            "&workflowType=machine_learning\n"
            f"  the FINISHED runs of {EXPERIMENT} on synthetic, ranked by best_val_acc, with their sweep\n"
            f"  every run, any status, newest first: {url}/#/experiments/{exp_id}/runs?viewStateShareKey=cifar_all_runs"
            "&workflowType=machine_learning\n") in out
    assert health(url) == "OK"


@pytest.mark.slow
@pytest.mark.cli
def test_ui_stores_the_leaderboard_views_on_the_experiment(ui, swept_home):
    home, exp_id, _ = swept_home
    tags = MlflowClient(f"sqlite:///{home / 'runs' / 'mlflow.db'}").get_experiment(exp_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    views = sorted(k for k in tags if k.startswith("mlflow.sharedViewState."))
    assert views == ["mlflow.sharedViewState.cifar_all_runs", "mlflow.sharedViewState.cifar_leaderboard.synthetic"]
    envelope = json.loads(tags["mlflow.sharedViewState.cifar_leaderboard.synthetic"])
    assert envelope["name"] == "Leaderboard: synthetic" and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])
    assert state["orderByKey"] == "metrics.`best_val_acc`" and state["orderByAsc"] is False
    # One dataset per view, finished runs only: no group order to put a demo above real data, no
    # run still going ranked on its partial figures.
    assert state["searchFilter"] == "tags.dataset = 'synthetic' AND attributes.status = 'FINISHED'"
    assert state["groupBy"] is None
    assert state["selectedColumns"][:4] == ["tags.`model`", "metrics.`best_val_acc`", "metrics.`test_acc`",
                                            "tags.`sweep`"]
    every = json.loads(json.loads(tags["mlflow.sharedViewState.cifar_all_runs"])["state"])
    assert (every["orderByKey"], every["searchFilter"]) == ("attributes.start_time", "")
    assert every["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "dataset"}]
    # The chart view: the sweep's seeds (the one number that differs) against best_val_acc, first;
    # not in the grouped view, where a line stands for a group.
    (chart,) = state["compareRunCharts"]
    assert (chart["type"], chart["selectedParams"], chart["selectedMetrics"]) == ("PARALLEL", ["seed"], ["best_val_acc"])
    assert state["compareRunSections"][0]["uuid"] == chart["metricSectionId"]
    assert every["compareRunCharts"] == []


@pytest.mark.slow
@pytest.mark.cli
def test_each_job_carries_its_sweep_and_a_name_that_leads_with_its_seed(swept_home):
    home, exp_id, names = swept_home
    client = MlflowClient(f"sqlite:///{home / 'runs' / 'mlflow.db'}")
    jobs = [r for r in client.search_runs([exp_id]) if r.data.tags.get("mlflow.parentRunId")]
    sweeps = {r.data.tags["sweep"] for r in jobs}
    assert len(sweeps) == 1 and re.fullmatch(r"\d\d-\d\d \d\d:\d\d:\d\d", sweeps.pop())
    assert names == ["seed=0 [synthetic] logreg adam epochs=1", "seed=1 [synthetic] logreg adam epochs=1"]


@pytest.mark.slow
@pytest.mark.cli
def test_ui_is_quiet(ui):
    """No access log, no start-up notes: requests made above and here add no line to its output."""
    url = ui[0]
    for _ in range(3):
        health(url)
    time.sleep(1.0)
    out = ui[2].read_text()
    assert '"GET /' not in out and "Security middleware" not in out and "Registry store URI" not in out
    lines = [line for line in out.splitlines() if line.strip()]
    assert [line.split(":")[0].split(" of")[0] for line in lines] == [
        "cifar-ui", "cifar-ui", "MLflow UI", "  the FINISHED runs", "  every run, any status, newest first",
        "  (server http"], out


def test_server_command_is_quiet_unless_verbose():
    quiet = cui.server_command("sqlite:////x/mlflow.db", "127.0.0.1", 5000)
    assert quiet[quiet.index("--uvicorn-opts") + 1] == "--log-level warning --no-access-log"
    assert quiet[quiet.index("--registry-store-uri") + 1] == "sqlite:////x/mlflow.db"
    assert "--uvicorn-opts" not in cui.server_command("sqlite:////x/mlflow.db", "127.0.0.1", 5000, verbose=True)
    own = cui.server_command("sqlite:////x/mlflow.db", "127.0.0.1", 5000, extra=["--uvicorn-opts", "--log-level debug"])
    assert own.count("--uvicorn-opts") == 1 and own[-1] == "--log-level debug"  # the user's options win


def test_relay_drops_the_start_notes_only():
    import io

    read, write = os.pipe()
    with os.fdopen(write, "w") as w:
        w.write("[MLflow] Security middleware enabled with default settings (localhost-only). ...\n"
                "ERROR: something broke\n")
    sink = io.StringIO()
    with os.fdopen(read) as r:
        cui.relay_errors(r, sink).join(timeout=10)
    assert sink.getvalue() == "ERROR: something broke\n"


def test_every_link_opens_the_model_training_layout():
    assert views.runs_page("http://h:1", "7", views.view_key("synthetic[cat,dog]")) == (
        "http://h:1/#/experiments/7/runs?viewStateShareKey=cifar_leaderboard.synthetic-cat-dog"
        "&workflowType=machine_learning")
    # No view stored (a server that refused the tag): sorted and filtered by the URL instead.
    assert views.runs_page("http://h:1", "7", None, "cifar10-jpeg") == (
        "http://h:1/#/experiments/7/runs?workflowType=machine_learning&orderByKey=metrics.%60best_val_acc%60"
        "&orderByAsc=false&searchFilter=tags.dataset%20%3D%20%27cifar10-jpeg%27%20AND%20attributes.status%20%3D"
        "%20%27FINISHED%27")
    assert views.run_page("http://h:1", "7", "abc") == "http://h:1/#/experiments/7/runs/abc?workflowType=machine_learning"
    assert views.sweep_page("http://h:1", "7", "2026-12-04/03-41-07") == (
        "http://h:1/#/experiments/7/runs?workflowType=machine_learning&orderByKey=metrics.%60best_val_acc%60"
        "&orderByAsc=false&searchFilter=tags.sweep%20%3D%20%272026-12-04%2F03-41-07%27")


def _rest_run(run_id, dataset, params, best=0.5, status="FINISHED", tags=None):
    """A run as the REST API returns it."""
    return {"info": {"run_id": run_id, "status": status},
            "data": {"params": [{"key": k, "value": str(v)} for k, v in params.items()],
                     "metrics": [{"key": "best_val_acc", "value": best}],
                     "tags": [{"key": k, "value": v} for k, v in {"dataset": dataset, **(tags or {})}.items()]}}


def test_the_parallel_chart_takes_the_numbers_that_differ_among_a_datasets_runs():
    runs = [
        _rest_run("a", "synthetic", {"optimizer.lr": 0.1, "trainer.batch_size": 64, "model._target_": "x.MLP",
                                     "data.mean": "[0.1, 0.2]", "seed": 0}, 0.5),
        _rest_run("b", "synthetic", {"optimizer.lr": 0.01, "trainer.batch_size": 128, "model._target_": "x.CNN",
                                     "data.mean": "[0.3, 0.2]", "seed": 0}, 0.6),
        _rest_run("c", "cifar10-jpeg", {"optimizer.lr": 0.5, "trainer.batch_size": 64, "model._target_": "x.MLP",
                                        "data.mean": "[0.1, 0.2]", "seed": 1}, 0.4),
    ]
    # Text (a model's class) is left out: MLflow refuses it while runs are grouped; so are the data's
    # statistics (a list) and what is the same in every run of the dataset (seed 0).
    assert views.swept_numbers(runs, "synthetic") == ["optimizer.lr", "trainer.batch_size"]
    assert views.swept_numbers(runs) == ["optimizer.lr", "seed", "trainer.batch_size"]
    assert views.swept_numbers(runs, "cifar10-jpeg") == []  # one run: nothing differs
    state = json.loads(json.loads(views.leaderboard_view("synthetic", 0, ["optimizer.lr"]))["state"])
    (chart,) = state["compareRunCharts"]
    assert chart == {**views.parallel_chart(["optimizer.lr"]), "selectedParams": ["optimizer.lr"]}
    assert chart["type"] == "PARALLEL" and chart["showAllRuns"] is True
    assert [s["name"] for s in state["compareRunSections"]][:2] == ["Swept parameters", "Model metrics"]
    bare = json.loads(json.loads(views.leaderboard_view("synthetic", 0))["state"])
    assert bare["compareRunCharts"] == [] and bare["compareRunSections"][0]["name"] == "Model metrics"


def test_leaderboard_links_put_real_cifar10_first():
    lines = views.leaderboard_links("http://h:1", {"experiment_id": "7", "name": "lab"},
                                  views.sorted_datasets(["synthetic", "cifar2", "cifar10-jpeg"]), stored=True)
    assert lines[0] == ("MLflow UI: http://h:1/#/experiments/7/runs?viewStateShareKey=cifar_leaderboard.cifar10-jpeg"
                        "&workflowType=machine_learning")
    assert lines[1] == "  the FINISHED runs of lab on cifar10-jpeg, ranked by best_val_acc, with their sweep"
    assert [line.split(":")[0] for line in lines[2:]] == ["  on cifar2", "  on synthetic",
                                                          "  every run, any status, newest first"]


@pytest.mark.slow
@pytest.mark.cli
def test_ui_binds_loopback_only(ui):
    """No --host given: the server listens on 127.0.0.1 and nothing wider (read from /proc/net/tcp*)."""
    port = int(ui[0].rsplit(":", 1)[1])
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                listening.append(local.rsplit(":", 1)[0])
    assert listening == ["0100007F"], listening  # 127.0.0.1, little-endian hex


@pytest.mark.slow
@pytest.mark.cli
def test_rest_api_returns_the_sweep_runs(ui, swept_home):
    url = ui[0]
    _, exp_id, names = swept_home
    body = json.dumps({"experiment_ids": [exp_id], "max_results": 100}).encode()
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/runs/search", data=body,
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        runs = json.load(resp)["runs"]
    jobs = [r for r in runs if any(t["key"] == "mlflow.parentRunId" for t in r["data"].get("tags", []))]
    assert sorted(r["info"]["run_name"] for r in jobs) == names
    assert {r["info"]["status"] for r in jobs} == {"FINISHED"}
    for run in jobs:
        metrics = {m["key"] for m in run["data"]["metrics"]}
        assert {"val_acc", "best_val_acc", "test_acc"} <= metrics


def _chromium(args: list[str], profile: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Debian's Chromium, headless; in its own session so that a hang kills every helper process too."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-quic", "--no-first-run", "--disable-sync",
           f"--user-data-dir={profile}", "--window-size=1400,1000", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out, err = "", "timed out"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _visible_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return html.unescape(" ".join(re.sub(r"<[^>]+>", " ", dom).split()))


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/install.sh test installs it)")
@pytest.mark.cli
def test_browser_runs_page_lists_the_sweep(ui, swept_home, tmp_path_factory):
    """The React UI in a real browser: the experiment's runs page shows every job of the sweep."""
    url, out, _ = ui
    home, exp_id, names = swept_home
    page = re.search(r"MLflow UI: (\S+)", out).group(1)
    assert page.startswith(f"{url}/#/experiments/{exp_id}/runs")
    work = tmp_path_factory.mktemp("chromium")
    text = ""
    for attempt, budget in enumerate((15000, 30000, 60000)):  # more virtual time if the SPA was slow to fill in
        with tempfile.TemporaryDirectory(dir=work) as profile:
            res = _chromium([f"--virtual-time-budget={budget}", "--dump-dom", page], Path(profile))
        text = _visible_text(res.stdout)
        if all(name in text for name in names):
            break
    missing = [name for name in names if name not in text]
    assert not missing, f"run names {missing} not in the page's DOM; page text: {text[:2000]}"
    assert "matching runs" in text  # the runs table, not an error page

    shot = home / "runs" / "ui_runs_page.png"
    with tempfile.TemporaryDirectory(dir=work) as profile:
        res = _chromium(["--virtual-time-budget=15000", f"--screenshot={shot}", page], Path(profile))
    assert shot.is_file() and shot.stat().st_size > 20_000, res.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (1400, 1000)
    print(f"screenshot of the runs page: {shot}")


@pytest.mark.slow
@pytest.mark.cli
def test_ui_on_a_tracking_server_points_to_it(ui):
    """An http(s) store already serves its own UI: cifar-ui checks it, prints where, starts nothing."""
    url = ui[0]
    res = subprocess.run([sys.executable, "-m", "cifar_sweep.commands.ui", "--tracking-uri", url], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert f"serves the MLflow UI itself: open {url}/" in res.stdout


@pytest.mark.slow
@pytest.mark.cli
def test_ui_port_taken_is_a_clear_error(ui):
    port = ui[0].rsplit(":", 1)[1]
    res = subprocess.run([sys.executable, "-m", "cifar_sweep.commands.ui", "--port", port], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert res.returncode == 1 and f"port {port}" in res.stderr and "taken" in res.stderr
