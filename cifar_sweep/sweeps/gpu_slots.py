"""One GPU per parallel local worker process, where the machine has several."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger("cifar_sweep")


def count_gpus() -> int:
    """NVIDIA GPUs, counted without touching CUDA (which reads CUDA_VISIBLE_DEVICES only once)."""
    try:
        return len(list(Path("/proc/driver/nvidia/gpus").iterdir()))
    except OSError:
        return 0


def claim_gpu_slot(folder: Path, gpus: int | None = None) -> int | None:
    """Pin this worker to a free GPU (CUDA_VISIBLE_DEVICES) for the rest of its life.

    The slot is an flock on `folder/gpu<N>.lock` whose descriptor stays open until the process
    exits, so the claim lives in the kernel, not in a module variable. A process that already has
    CUDA_VISIBLE_DEVICES (its own claim, SLURM's, the user's) keeps it.
    """
    if "CUDA_VISIBLE_DEVICES" in os.environ or "SLURM_JOB_ID" in os.environ:
        return None
    gpus = count_gpus() if gpus is None else gpus
    if gpus < 2:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    for slot in range(gpus):
        fd = os.open(folder / f"gpu{slot}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        break  # fd deliberately left open: closing it would release the slot
    else:
        slot = os.getpid() % gpus  # more workers than GPUs: share, spread by pid
    os.environ["CUDA_VISIBLE_DEVICES"] = str(slot)
    log.info("GPU slot %d (CUDA_VISIBLE_DEVICES=%d) for this worker", slot, slot)
    return slot
