"""GPU seats for a sweep's parallel jobs: round robin through lock files, never two jobs on one seat,
an explicit `cuda:N` left as given, hidden GPUs warned about, and `hydra/launcher=local` (submitit's
local executor) showing each job the GPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cifar_sweep.sweeps import gpu_slots
from cifar_sweep.sweeps.gpu_slots import GpuSlot, claim_gpu_slot


def _job(folder: Path, device: str = "auto", gpus=("0", "1"), env=None) -> tuple[subprocess.Popen, dict]:
    """A job process that claims its seat, says which, and holds it until killed."""
    code = (
        "import json, os, sys, time; from pathlib import Path; from cifar_sweep.sweeps.gpu_slots import claim_gpu_slot\n"
        f"slot = claim_gpu_slot(Path({str(folder)!r}), {device!r}, {list(gpus)!r})\n"
        "print(json.dumps({'gpu': slot and slot.gpu, 'seat': slot and slot.seat, 'shared': slot and slot.shared_by(),\n"
        "                  'visible': os.environ.get('CUDA_VISIBLE_DEVICES')}), flush=True)\n"
        "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None})
    return proc, json.loads(proc.stdout.readline())


def _stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()


def test_seats_go_round_robin_and_a_freed_seat_is_taken_again(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": None}
    jobs = [_job(tmp_path, env=env) for _ in range(4)]
    try:
        seats = [(said["gpu"], said["seat"]) for _, said in jobs]
        assert seats == [("0", 0), ("1", 0), ("0", 1), ("1", 1)]  # every GPU's first seat before any second one
        assert [said["visible"] for _, said in jobs] == ["0", "1", "0", "1"]  # each job sees its own GPU only
        assert [said["shared"] for _, said in jobs] == [1, 1, 2, 2]  # holders on that GPU when each had claimed
        assert GpuSlot(tmp_path, "0", 0).shared_by() == 2
        _stop(jobs[0][0])  # a job ends (or is killed): its seat is free for the next one
        again, said = _job(tmp_path, env=env)
        jobs.append((again, said))
        assert (said["gpu"], said["seat"]) == ("0", 0)
    finally:
        _stop(*(proc for proc, _ in jobs))


def test_an_explicit_device_index_is_not_renumbered(tmp_path):
    proc, said = _job(tmp_path, device="cuda:1", env={"CUDA_VISIBLE_DEVICES": None})
    try:
        # Its seat is on GPU 1, and it still sees both GPUs: narrowing to "1" would make cuda:1 not exist.
        assert (said["gpu"], said["seat"], said["visible"]) == ("1", 0, None)
        other, said = _job(tmp_path, env={"CUDA_VISIBLE_DEVICES": None})
        assert (said["gpu"], said["visible"]) == ("0", "0")  # the free GPU, as its seat 0 is free
        _stop(other)
    finally:
        _stop(proc)


def test_a_cpu_job_takes_no_seat_and_one_gpu_is_counted_not_narrowed(tmp_path, monkeypatch):
    assert claim_gpu_slot(tmp_path, "cpu", ["0", "1"]) is None and not list(tmp_path.glob("*.lock"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    proc, said = _job(tmp_path, gpus=("0",), env={"CUDA_VISIBLE_DEVICES": None})
    try:
        assert (said["gpu"], said["seat"], said["visible"]) == ("0", 0, None)
    finally:
        _stop(proc)


def test_a_process_keeps_its_seat_for_its_next_job(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    first = claim_gpu_slot(tmp_path, "auto", ["0", "1"])
    try:
        assert first is not None and os.environ["CUDA_VISIBLE_DEVICES"] == first.gpu
        # CUDA read CUDA_VISIBLE_DEVICES at its first use: a joblib worker's next job must stay there.
        assert claim_gpu_slot(tmp_path, "auto", ["0", "1"]) == first == gpu_slots.held_slot(tmp_path)
    finally:
        for path in tmp_path.glob("*.lock"):
            path.unlink()  # the descriptor stays open until this test process exits; the file name is gone


def test_visible_gpus_read_cuda_visible_devices_as_cuda_does():
    assert gpu_slots.visible_gpus({}, gpus=2) == ["0", "1"]
    assert gpu_slots.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, gpus=2) == []
    assert gpu_slots.visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}, gpus=4) == ["2", "3"]
    assert gpu_slots.visible_gpus({"CUDA_VISIBLE_DEVICES": "1,,3"}, gpus=4) == ["1"]


def _job_config(launcher: dict, device: str = "auto"):
    return OmegaConf.create({"trainer": {"device": device}, "hydra": {"launcher": launcher}})


def test_a_job_with_its_gpus_hidden_on_a_gpu_machine_is_warned_about(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(gpu_slots, "count_gpus", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # what submitit's gpus_per_node=null does to every job
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    assert gpu_slots.claim_job_gpu(_job_config({"gpus_per_node": None}), tmp_path) is None
    assert "CUDA is hidden from this job (CUDA_VISIBLE_DEVICES is empty) although this machine has 2 GPU(s): " \
           "trainer.device=auto trains on the CPU" in caplog.text
    caplog.clear()
    assert gpu_slots.claim_job_gpu(_job_config({}, device="cpu"), tmp_path) is None
    assert "hidden" not in caplog.text  # a CPU job asked for the CPU
    monkeypatch.setattr(gpu_slots, "count_gpus", lambda: 0)
    gpu_slots.claim_job_gpu(_job_config({}), tmp_path)
    assert "hidden" not in caplog.text  # no GPU to hide


def test_sequential_and_slurm_jobs_claim_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_slots, "count_gpus", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert gpu_slots.claim_job_gpu(_job_config({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}),
                                   tmp_path) is None
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert gpu_slots.claim_job_gpu(_job_config({"n_jobs": 2}), tmp_path) is None
    assert not list(tmp_path.glob("*.lock")) and "CUDA_VISIBLE_DEVICES" not in os.environ


@pytest.mark.parametrize("visible, line", [(None, "unset CUDA_VISIBLE_DEVICES"),
                                           ("2,3", "export CUDA_VISIBLE_DEVICES=2,3"),
                                           ("", "export CUDA_VISIBLE_DEVICES=''")])
def test_the_local_launcher_gives_each_job_the_gpus_of_the_launching_process(compose_cfg, monkeypatch, visible, line):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    gpu_slots.register_resolvers()
    cfg = compose_cfg(["hydra/launcher=local"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("submitit_launcher.LocalLauncher")
    # submitit sets the job's CUDA_VISIBLE_DEVICES from gpus_per_node; the setup line, run after, decides.
    assert launcher["setup"] == [line]
    plugin = OmegaConf.structured(__import__("hydra_plugins.hydra_submitit_launcher.config",
                                             fromlist=["LocalQueueConf"]).LocalQueueConf)
    assert set(plugin) <= set(launcher)  # every key of the plugin's own config, none lost


def test_a_sweep_job_reads_how_many_jobs_share_its_gpu(tmp_path):
    from cifar_sweep.sweeps.job import SweepJob
    from cifar_sweep.sweeps.records import state_dir

    folder = state_dir(tmp_path) / gpu_slots.SLOTS_DIR
    other, _ = _job(folder, env={"CUDA_VISIBLE_DEVICES": None}, gpus=("0",))
    try:
        job = SweepJob(tmp_path, 1, (), str(tmp_path), "sqlite:///x.db", None, None)
        assert job.device_shared_by("cuda:0") is None  # this process holds no seat
        mine = claim_gpu_slot(folder, "auto", ["0"])
        assert (mine.gpu, mine.seat) == ("0", 1)
        assert job.device_shared_by("cuda:0") == 2 and job.device_shared_by("cpu") is None
    finally:
        _stop(other)
        for path in folder.glob("*.lock"):
            path.unlink()


@pytest.mark.slow
@pytest.mark.cli
def test_the_local_launcher_gives_each_job_the_gpus_it_was_launched_with(tmp_path):
    """The sweep end to end: submitit would hide every GPU; the launcher's setup line gives them back."""
    from helpers import run_cli

    res = run_cli(["-m", "hydra/launcher=local", "data=synthetic", "data.n_train=128", "data.val_size=32",
                   "data.n_test=32", "model=logreg", "trainer.epochs=1", "trainer.threads=1", "trainer.progress=false",
                   "seed=0,1"], tmp_path, env_extra={"CUDA_VISIBLE_DEVICES": "3"})
    assert res.returncode == 0, res.stderr[-3000:]
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / "multirun").glob("*/*/.submitit/*/*_log.out"))
    # Both jobs saw GPU 3 (not "" as submitit sets, nor "0"); one seat each, round robin on the one GPU.
    assert "GPU 3, seat 0 of this sweep's jobs on it" in logs and "GPU 3, seat 1 of this sweep's jobs on it" in logs
    assert "CUDA is hidden" not in logs
