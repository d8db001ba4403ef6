"""Memory first: an export is refused before any model is loaded when this machine cannot hold what it loads.

The export merges and validates in the run's own 16-bit dtype (bf16 / fp16 as trained; fp32 only when the run was
fp32, or when the GPU lacks bf16), on the GPU when one is present and has room, and holds one full copy of the
model at a time (the merged model is freed before it is loaded back). What it needs is read from the safetensors
headers alone (core.merge.preflight's reader: no tensor is loaded): every tensor's elements × the bytes of the
dtype it is loaded in, plus the adapter's files.

- On the CPU the whole copy lives in RAM.
- On the GPU the weights stream shard by shard onto the device (core.models.load_model(stream_to_device=True)):
  RAM holds about one shard at a time, the GPU the whole copy.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core import hardware
from core.merge.preflight import NAME_BYTES, safetensors_header
from core.runs.jobs import read_result
from core.workspace import folder_bytes

MARGIN = 1.15  # headroom over the header figure (loader buffers, logits, allocator slack)
OVERHEAD_BYTES = 512 * 1024**2  # python, torch and the tokenizer themselves
COPIES = 1  # full copies of the model held at once (load → merge in place → save → free → load back)
PRECISION_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
HEADER_DTYPES = {"BF16": "bfloat16", "F16": "float16"}


@dataclass
class MemoryPlan:
    dtype: str  # the dtype the model is loaded, merged and validated in
    device: str  # "cuda" or "cpu"
    parameters: int
    weight_bytes: int  # one copy at `dtype`, from the headers
    copies: int
    ram_needed_bytes: int
    ram_available_bytes: int | None
    gpu_needed_bytes: int = 0
    gpu_free_bytes: int | None = None
    dtype_reason: str = ""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def problem(self) -> str | None:
        """A sentence with the figures and the way out when RAM is short, else None."""
        if self.ram_available_bytes is None or self.ram_needed_bytes <= self.ram_available_bytes:
            return None
        short = self.ram_needed_bytes - self.ram_available_bytes
        where = "streamed onto the GPU" if self.device == "cuda" else f"{self.copies} copy of the model in RAM"
        return (f"Not enough RAM for this export: it needs about {_gb(self.ram_needed_bytes)} ({_gb(self.weight_bytes)} of weights in "
                f"{self.dtype}, {where}, + margin) and only {_gb(self.ram_available_bytes)} is available. Free about {_gb(short)} "
                "(close other programs or stop other jobs), or export on a machine with more RAM, or export the adapter only "
                "(formats: adapter, recipes), which loads no model.")


def available_ram_bytes() -> int | None:
    """RAM available now (MemAvailable), the one figure the export's check reads."""
    free_gb = hardware._system_ram_gb()[1]
    return int(free_gb * 1e9) if free_gb is not None else None


def header_parameters(folder: str | Path) -> tuple[int, dict[str, int], int]:
    """(elements, stored bytes per header dtype, largest shard's elements) of a folder's safetensors, from headers only."""
    total, by_dtype, largest = 0, {}, 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        shard = 0
        for info in safetensors_header(path).values():
            n = math.prod(info["shape"])
            shard += n
            by_dtype[info["dtype"]] = by_dtype.get(info["dtype"], 0) + n
        total += shard
        largest = max(largest, shard)
    return total, by_dtype, largest


def stored_dtype(folder: str | Path) -> str | None:
    """The 16-bit dtype most of a folder's weights are stored in, or None (fp32 or unknown)."""
    _, by_dtype, _ = header_parameters(folder)
    if not by_dtype:
        return None
    most = max(by_dtype, key=by_dtype.get)
    return HEADER_DTYPES.get(most)


def run_dtype(precision_field: str, card_precision: dict) -> tuple[str | None, str]:
    """(the dtype a training run computed in, why): what its card recorded (core.train.backends.Precision), else
    its spec's precision; (None, "") when neither says."""
    if card_precision.get("bf16") or card_precision.get("load_dtype") == "bfloat16":
        return "bfloat16", "the run trained in bf16"
    if card_precision.get("fp16") or card_precision.get("load_dtype") == "float16":
        return "float16", "the run trained in fp16"
    if card_precision:
        return "float32", "the run trained in fp32"
    if precision_field in PRECISION_DTYPES:
        return PRECISION_DTYPES[precision_field], f"the run's precision is {precision_field}"
    return None, ""


def choose_dtype(wanted: str | None, why: str, device: str, bf16_supported: bool) -> tuple[str, str]:
    """The dtype to merge and validate in: the run's own 16-bit type, fp32 only when it was fp32 or the GPU lacks bf16."""
    if wanted is None:
        return "float32", "the weights are stored in fp32"
    if wanted == "bfloat16" and device == "cuda" and not bf16_supported:
        return "float32", f"{why}, but this GPU has no bf16 (fp16 could overflow bf16 weights)"
    return wanted, why


def plan_memory(base_dir: str | Path, adapter_dir: str | Path | None, wanted: str | None, why: str, hardware) -> MemoryPlan:
    """What the export's merge + validation needs, and where it will run (see the module docstring)."""
    parameters, _, largest = header_parameters(base_dir)
    cuda = getattr(hardware, "device", "cpu") == "cuda"
    dtype, reason = choose_dtype(wanted, why, "cuda" if cuda else "cpu", bool(getattr(hardware, "bf16", False)))
    per = NAME_BYTES[dtype]
    weight_bytes = parameters * per + folder_bytes(Path(adapter_dir) if adapter_dir else None)
    available = available_ram_bytes()
    notes: list[str] = []
    if cuda:
        gpu_needed = int(weight_bytes * MARGIN)
        gpu_free = int((getattr(hardware, "free_memory_gb", None) or 0) * 1e9) or None
        if gpu_free is None or gpu_needed <= gpu_free:
            ram = int(largest * per * MARGIN) + OVERHEAD_BYTES
            return MemoryPlan(dtype, "cuda", parameters, weight_bytes, COPIES, ram, available, gpu_needed, gpu_free, reason)
        notes.append(f"the GPU has {_gb(gpu_free)} free and the model needs about {_gb(gpu_needed)}: merging on the CPU")
    ram = int(COPIES * weight_bytes * MARGIN) + OVERHEAD_BYTES
    return MemoryPlan(dtype, "cpu", parameters, weight_bytes, COPIES, ram, available, dtype_reason=reason, notes=notes)


def card_precision(run_dir: Path | None) -> dict:
    """The precision a train run's card recorded ({} when there is none)."""
    if run_dir is None:
        return {}
    return (read_result(run_dir, "train", {}) or {}).get("precision") or {}


def _gb(n: int | float) -> str:
    return f"{n / 1e9:.2f} GB"
