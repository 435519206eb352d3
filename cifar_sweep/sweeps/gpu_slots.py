"""Which GPU each of a sweep's parallel jobs trains on, and how many jobs share it.

Launchers that run several jobs at once on this machine (joblib's `hydra/launcher=parallel`, and
submitit's local executor through `hydra/launcher=local`, which shows every job the GPUs) would
otherwise put every job on cuda:0. Each such job claims a seat: the file `gpu<ID>.<K>.lock` in the sweep's state
folder, held by an flock until the job's process exits (the claim lives in the kernel, not in a
module variable, and a killed job frees its seat). Seats are tried seat by seat across the GPUs,
seat 0 of every GPU before seat 1 of any: jobs spread evenly over the GPUs (round robin), and no
two live jobs ever hold one seat. The job then sees only its GPU (CUDA_VISIBLE_DEVICES), except
where its config names a device index itself (`trainer.device=cuda:1`): that index stays as given,
and the seat is taken on that GPU, so the count of jobs on it is still right.

More jobs than GPUs share GPUs, and their epoch times measure the contention too: the run tags
`device_shared_by` (the seats held on its GPU, its own included), and the device comparison and
the leaderboard say so next to their timings.

Torch-free: the claim must happen before anything in the job process initialises CUDA, which reads
CUDA_VISIBLE_DEVICES once.
"""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("cifar_sweep")

SLOTS_DIR = "gpu_slots"  # inside the sweep's state folder (records.state_dir)
MAX_SEATS = 64  # per GPU: more jobs at once than any machine here runs


def count_gpus() -> int:
    """NVIDIA GPUs on this machine, counted without touching CUDA (which reads CUDA_VISIBLE_DEVICES only
    once): the driver's list, or where a container hides /proc/driver, the GPUs' device files."""
    try:
        return len(list(Path("/proc/driver/nvidia/gpus").iterdir()))
    except OSError:
        return sum(1 for path in Path("/dev").glob("nvidia*") if path.name[len("nvidia"):].isdigit())


def visible_gpus(environ: dict[str, str] | None = None, gpus: int | None = None) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (indices or UUIDs).

    Unset: every GPU of the machine. Empty: none (CUDA is hidden). CUDA itself stops at the first
    entry it cannot use; so does this, at the first empty one.
    """
    env = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" not in env:
        return [str(i) for i in range(count_gpus() if gpus is None else gpus)]
    names = []
    for name in env["CUDA_VISIBLE_DEVICES"].split(","):
        if not name.strip():
            break
        names.append(name.strip())
    return names


def gpu_env_line() -> str:
    """The shell line conf/hydra/launcher/local.yaml runs before each job (submitit's `setup`): the
    GPUs this process sees, given back to the job. submitit's local executor sets the job's
    CUDA_VISIBLE_DEVICES from gpus_per_node (null: "", every GPU hidden; N: "0,...,N-1", whatever
    this process was restricted to); this line puts back exactly what the sweep was launched with."""
    import shlex

    if "CUDA_VISIBLE_DEVICES" not in os.environ:
        return "unset CUDA_VISIBLE_DEVICES"
    return f"export CUDA_VISIBLE_DEVICES={shlex.quote(os.environ['CUDA_VISIBLE_DEVICES'])}"


def register_resolvers() -> None:
    """The `cs_gpu_env` resolver conf/hydra/launcher/local.yaml uses (resolved in the launching process)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("cs_gpu_env", gpu_env_line, replace=True)


@dataclass(frozen=True)
class GpuSlot:
    """One job's seat on one GPU of a sweep."""

    folder: Path
    gpu: str  # the GPU's name in the launching process's CUDA_VISIBLE_DEVICES (an index or a UUID)
    seat: int

    def shared_by(self) -> int:
        """Jobs holding a seat on this GPU now, this one included."""
        return sum(_held(path) for path in self.folder.glob(f"gpu{_safe(self.gpu)}.*.lock"))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _held(path: Path) -> bool:
    """Whether a live process holds this seat (a brief trial lock: released at once when free)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the trial lock
    return False


def _take(path: Path) -> bool:
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return True  # fd deliberately left open: closing it would release the seat


def requested_index(device: Any) -> int | None:
    """N of `trainer.device=cuda:N`; None for auto, cuda, cpu, mps."""
    text = str(device or "").strip().lower()
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    return None


def claim_gpu_slot(folder: Path, device: Any = "auto", gpus: list[str] | None = None) -> GpuSlot | None:
    """Take a seat on a GPU for this job's process and pin the process to that GPU.

    `device` is the job's trainer.device: `cpu`/`mps` take no seat; `cuda:N` takes its seat on GPU N
    and leaves CUDA_VISIBLE_DEVICES alone (narrowing it would renumber N); `auto`/`cuda` take the
    first free seat round robin and then see only that GPU. A process that already holds a seat
    (a joblib worker's second job) keeps it: CUDA may be initialised already, with that GPU.
    """
    kind = str(device or "auto").strip().lower().split(":")[0]
    if kind not in ("auto", "cuda"):
        return None
    folder.mkdir(parents=True, exist_ok=True)
    held = held_slot(folder)
    if held is not None:
        return held
    gpus = visible_gpus() if gpus is None else gpus
    index = requested_index(device)
    if index is not None:
        if index >= len(gpus):
            return None  # the run itself says which devices exist
        candidates = [gpus[index]]
    else:
        candidates = gpus
    if not candidates:
        return None
    for seat in range(MAX_SEATS):
        for gpu in candidates:
            if _take(folder / f"gpu{_safe(gpu)}.{seat}.lock"):
                slot = GpuSlot(folder, gpu, seat)
                if index is None and len(gpus) > 1:
                    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
                log.info("GPU %s, seat %d of this sweep's jobs on it%s", gpu, seat,
                         f" (CUDA_VISIBLE_DEVICES={gpu})" if index is None and len(gpus) > 1 else "")
                return slot
    log.warning("no free GPU seat in %s (over %d jobs per GPU); this job's GPU is not counted", folder, MAX_SEATS)
    return None


def held_slot(folder: Path) -> GpuSlot | None:
    """The seat this process holds in `folder`, if any."""
    pid = str(os.getpid())
    for path in sorted(Path(folder).glob("gpu*.*.lock")):
        try:
            owner = path.read_text().strip()
        except OSError:
            continue
        if owner == pid and _held(path):
            name, seat = path.name[len("gpu"):-len(".lock")].rsplit(".", 1)
            return GpuSlot(Path(folder), name, int(seat))
    return None


def runs_jobs_in_parallel(config: Any) -> bool:
    """Whether this job's launcher runs several jobs at once on this machine: joblib (n_jobs) or
    submitit's local executor. Sequential jobs and SLURM's (which assigns GPUs itself) need no seat."""
    from omegaconf import OmegaConf

    if "SLURM_JOB_ID" in os.environ:
        return False
    return (OmegaConf.select(config, "hydra.launcher.n_jobs") is not None
            or os.environ.get("SUBMITIT_EXECUTOR") == "local")


def claim_job_gpu(config: Any, folder: Path) -> GpuSlot | None:
    """For a job of a multirun (the sweep callback's `on_job_start`, before the run touches CUDA):
    warn when CUDA is hidden from it on a machine with GPUs, and claim its GPU seat where its
    launcher runs jobs in parallel."""
    from omegaconf import OmegaConf

    device = OmegaConf.select(config, "trainer.device", default="auto")
    machine = count_gpus()
    if machine and not visible_gpus() and str(device).split(":")[0] in ("auto", "cuda"):
        log.warning(
            "CUDA is hidden from this job (CUDA_VISIBLE_DEVICES is empty) although this machine has %d GPU(s): "
            "trainer.device=%s %s. Instead of hydra/launcher=submitit_local use hydra/launcher=local (the same "
            "launcher, each job on a GPU), or set hydra.launcher.gpus_per_node; elsewhere unset CUDA_VISIBLE_DEVICES.",
            machine, device, "trains on the CPU" if device == "auto" else "will fail")
        return None
    if not runs_jobs_in_parallel(config):
        return None
    return claim_gpu_slot(folder, device)
