"""Device, precision and thread choices, resolved once per run and logged.

Policy: never fall back silently. `trainer.device=cuda` on a machine without CUDA is an error that
lists what is available; `auto` is the only value that chooses.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import platform
from dataclasses import dataclass
from functools import lru_cache

import torch

from cifar_sweep.errors import CifarSweepError
from cifar_sweep.training import machine
from cifar_sweep.training.machine import PRECISIONS

log = logging.getLogger(__name__)


class HardwareChoiceError(CifarSweepError, ValueError):
    """A trainer.device, trainer.precision or trainer.threads this machine cannot run; the message
    names what it has."""

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Steps between the training loop's host reads on an accelerator. Each read waits for the queued
# kernels, so the host stops running ahead; rare enough to cost nothing, often enough that a
# diverging run stops within a fraction of an epoch.
ACCELERATOR_CHECK_EVERY = 25


@dataclass(frozen=True)
class Hardware:
    device: torch.device
    precision: str  # resolved: fp32 | tf32 | bf16 | fp16
    threads: int
    name: str

    def autocast(self):
        """Mixed-precision context for forward passes; a no-op in fp32 and tf32 (fp32 tensors)."""
        if self.precision not in _DTYPES:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

    @property
    def check_every(self) -> int:
        """Steps between host reads of the loop's running sums: every step on a CPU (a read is
        free there, and a bad loss stops the run at once), a few dozen on an accelerator."""
        return 1 if self.device.type == "cpu" else ACCELERATOR_CHECK_EVERY

    def synchronize(self) -> None:
        """Wait for queued kernels: a clock read before this would time the launch, not the work."""
        if self.device.type == "cuda":
            with self.intended_sync():
                torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    @contextlib.contextmanager
    def intended_sync(self):
        """Marks the loop's own, deliberate host reads (periodic checks, epoch ends, timing).

        Under `torch.cuda.set_sync_debug_mode("error")` every other synchronisation raises, which
        is how the GPU tests prove that a training step never waits for the device.
        """
        if self.device.type != "cuda":
            yield
            return
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(0)
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(mode)


def available_devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def resolve_device(name: str) -> torch.device:
    name = str(name).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise HardwareChoiceError(f"trainer.device={name!r} is not a device name; use one of auto, {', '.join(available_devices())}") from err
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0) if torch.cuda.is_available() else device
    if str(device) not in available_devices():
        raise HardwareChoiceError(
            f"trainer.device={name!r} is not available on this machine (available: {', '.join(available_devices())}). "
            "Choose one of those or trainer.device=auto; cifar_sweep never falls back silently."
        )
    return device


def cpu_has_fast_bf16() -> bool:
    """Whether bf16 matmuls and convolutions beat fp32 on this CPU (what precision=auto follows).

    AMX (`amx_bf16`) always does. AVX-512 BF16 alone does on AMD (Zen 4/5 run the bf16 dot
    product at twice the fp32 FMA rate: a 2048^2 matmul at about 740 GFLOP/s on 2 cores), but not
    on an Intel core that has it without AMX (Cooper Lake, or a VM that hides AMX): measured on
    2 cores of a Xeon model 207 that way, a 2048^2 bf16 matmul ran at 68 GFLOP/s per core against
    135 in fp32, and resnet_seed's training step was 1.3x faster in fp32 (channels-last).
    """
    flags = machine.cpu_flags()
    if "amx_bf16" in flags:
        return True
    return "avx512_bf16" in flags and machine.cpu_vendor() == "AuthenticAMD"


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether this GPU computes in bf16 itself (Ampere and later), not by emulating it in fp32,
    which is slower than fp16 with a grad scaler. Asked of the run's own device, not of device 0."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(name: str, device: torch.device) -> str:
    name = str(name).strip().lower()
    if name not in PRECISIONS:
        raise HardwareChoiceError(f"trainer.precision={name!r} is not one of {', '.join(PRECISIONS)}")
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise HardwareChoiceError("trainer.precision=fp16 is not supported on the CPU; use bf16 or fp32")
        if name == "tf32" and device.type != "cuda":
            raise HardwareChoiceError(f"trainer.precision=tf32 is a CUDA mode; on {device.type} use fp32 or bf16")
        return name
    if device.type == "cuda":
        return "bf16" if cuda_has_native_bf16(device) else "fp16"
    if device.type == "cpu" and cpu_has_fast_bf16():
        return "bf16"
    return "fp32"


def apply_precision(hw: Hardware) -> None:
    """Set how fp32 matrix products and convolutions compute, so a run's precision tag says what it did.

    On CUDA, cuDNN convolutions use TF32 unless told otherwise (torch's default), so an `fp32` run
    would not be one. `tf32` allows TF32 in both (fp32 tensors, 10-bit mantissa products); every
    other precision keeps fp32 strict, so the only reduced precision of a bf16 or fp16 run is its
    autocast's. Process-wide (torch has no per-device switch); through the flags torch.compile
    reads too (`torch.get_float32_matmul_precision`, `cudnn.allow_tf32`), never mixing them with
    the newer per-backend `fp32_precision` settings, which torch refuses to read back when mixed.
    """
    if hw.device.type != "cuda":
        return  # the CPU's fp32 is strict already; torch has no TF32 there
    tf32 = hw.precision == "tf32"
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32


def cpu_share() -> int:
    """Cores this process may run on (affinity-aware: a job pinned to 2 cores sees 2)."""
    return machine.cores()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return machine.cpu_model()


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Blocks up to this size come from the reusable heap; larger ones (a whole dataset) are still mmapped.
_MMAP_THRESHOLD = 256 * 2**20
_TRIM_THRESHOLD = 2**31 - 1


@lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Stop glibc from handing freed activation memory back to the OS after every step (CPU training).

    By default glibc serves big blocks (a batch's activations: several MB each) with mmap and unmaps
    them on free, or trims the heap top; every training step then touches fresh pages, and the kernel
    faults and zeroes each one: 20,000 page faults per step of resnet_seed here, 15-35% of the step
    time on a VM (what jemalloc/tcmalloc fix when preloaded). Raising the mmap and trim thresholds
    makes the heap keep and reuse those blocks. Process-wide and idempotent; False where the C
    library has no mallopt (musl, macOS, Windows), where nothing changes.
    """
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    done = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    if not done:
        log.warning("mallopt refused the allocator thresholds; CPU training steps may page-fault")
    return done


def setup_hardware(device: str, precision: str, threads: int | None) -> Hardware:
    """Resolve the trainer.* choices and apply the thread count and the precision to this process."""
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if dev.type == "cpu":
        keep_freed_memory()
    elif dev.type == "cuda":
        # Every step has the same shapes: cuDNN times its algorithms once per shape (in the first
        # epoch, which is reported apart) and keeps the fastest.
        torch.backends.cudnn.benchmark = True
    if threads is not None:
        if int(threads) < 1:
            raise HardwareChoiceError(f"trainer.threads={threads} must be a positive integer or null")
        torch.set_num_threads(int(threads))
    else:
        torch.set_num_threads(cpu_share())
    hw = Hardware(device=dev, precision=prec, threads=torch.get_num_threads(), name=device_name(dev))
    apply_precision(hw)
    return hw
