"""Does an estimate fit: common GPUs (memory as the driver reports it) and this machine."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.memory.estimator import GB, GIB, MemoryEstimate

# --------------------------------------------------------------------------- GPUs


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: float
    note: str = ""


# Memory as the driver reports it (nvidia-smi MiB), or unified memory for Apple chips.
COMMON_GPUS: tuple[GPU, ...] = (
    GPU("NVIDIA T4 (16 GB)", 15_360 * 2**20),
    GPU("NVIDIA A10 (24 GB)", 23_028 * 2**20),
    GPU("NVIDIA L4 (24 GB)", 23_034 * 2**20),
    GPU("NVIDIA RTX 3090 (24 GB)", 24_576 * 2**20),
    GPU("NVIDIA RTX 4090 (24 GB)", 24_564 * 2**20),
    GPU("NVIDIA A100 (40 GB)", 40_960 * 2**20),
    GPU("NVIDIA A100 (80 GB)", 81_920 * 2**20),
    GPU("NVIDIA H100 (80 GB)", 81_559 * 2**20),
    GPU("NVIDIA H200 (141 GB)", 143_771 * 2**20),
    GPU("Apple M-series, 16 GB unified", 16 * GIB * 0.70, "about 70% of unified memory is available to the GPU"),
    GPU("Apple M-series, 32 GB unified", 32 * GIB * 0.70, "about 70% of unified memory is available to the GPU"),
    GPU("Apple M-series, 64 GB unified", 64 * GIB * 0.75, "about 75% of unified memory is available to the GPU"),
    GPU("Apple M-series, 128 GB unified", 128 * GIB * 0.75, "about 75% of unified memory is available to the GPU"),
)


def fit_label(total_bytes: float, capacity_bytes: float | None) -> str:
    if not capacity_bytes:
        return "unknown"
    share = total_bytes / capacity_bytes
    if share <= 0.9:
        return "fits"
    if share <= 1.0:
        return "tight"
    return "does not fit"


def fit_table(estimate_: MemoryEstimate, hardware: Any = None) -> list[dict]:
    """One row per GPU (the detected device first): memory, share used, fits / tight / does not fit."""
    rows = []
    if (mine := this_machine_row(estimate_, hardware)) is not None:
        rows.append(mine)
    for gpu in COMMON_GPUS:
        rows.append({"gpu": gpu.name, "memory_gb": round(gpu.memory_bytes / GB, 1),
                     "used": round(estimate_.total_bytes / gpu.memory_bytes, 3),
                     "verdict": fit_label(estimate_.total_bytes, gpu.memory_bytes)})
    return rows


def this_machine_row(estimate_: MemoryEstimate, hardware: Any) -> dict | None:
    """This machine's row of the fit table. An estimate for another kind of device (cuda on a machine without a GPU)
    is not compared with this machine's memory: the row says so and points to the table of GPUs."""
    if hardware is None or not getattr(hardware, "total_memory_gb", None):
        return None
    label = f"This machine: {hardware.device_name}" + (" (system RAM)" if hardware.device == "cpu" else "")
    device = getattr(estimate_.spec, "device", hardware.device)
    if device != hardware.device:
        verdict = f"no {device.upper() if device == 'cuda' else device} device here: see the GPUs below"
        return {"gpu": label, "memory_gb": round(hardware.total_memory_gb, 1), "used": None, "verdict": verdict}
    capacity = hardware.total_memory_gb * GB
    return {"gpu": label, "memory_gb": round(capacity / GB, 1), "used": round(estimate_.total_bytes / capacity, 3),
            "verdict": fit_label(estimate_.total_bytes, capacity)}
