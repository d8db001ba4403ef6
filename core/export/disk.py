"""Disk space first: an export is refused before anything is written when the disk cannot hold it."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

# bytes per parameter of each artifact (Q8_0: 34 bytes per 32 weights; K-quants from llama.cpp's own tables)
BYTES_PER_PARAMETER = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0, "gguf_f16": 2.0, "gguf_q8_0": 34 / 32,
                       "Q2_K": 0.33, "Q3_K_M": 0.49, "Q4_0": 0.57, "Q4_K_S": 0.58, "Q4_K_M": 0.61, "Q5_0": 0.69,
                       "Q5_K_S": 0.69, "Q5_K_M": 0.71, "Q6_K": 0.83}
MARGIN = 1.10
RESERVE_BYTES = 256 * 1024**2  # never fill the disk to the last byte


def safetensors_parameters(folder: Path) -> int:
    """Parameters of a model folder from its safetensors headers alone."""
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                total += math.prod(handle.get_slice(name).get_shape())
    return total


def estimate_bytes(parameters: int, formats: list[str], quantize: list[str], merged_dtype: str, adapter_bytes: int,
                   needs_merged_copy: bool, needs_f16_copy: bool) -> dict[str, int]:
    """Bytes each planned artifact will take (temporary ones included: they exist at the same time)."""
    plan: dict[str, int] = {}
    if "adapter" in formats:
        plan["adapter"] = adapter_bytes
    if "merged" in formats or needs_merged_copy:
        plan["merged" if "merged" in formats else "merged (temporary)"] = int(parameters * BYTES_PER_PARAMETER[merged_dtype])
    for name in ("gguf_f16", "gguf_q8_0"):
        if name in formats:
            plan[name] = int(parameters * BYTES_PER_PARAMETER[name])
    if needs_f16_copy:
        plan["gguf_f16 (temporary)"] = int(parameters * BYTES_PER_PARAMETER["gguf_f16"])
    for qtype in quantize:
        plan[qtype] = int(parameters * BYTES_PER_PARAMETER[qtype])
    return plan


def space_problem(target: Path, needed: int) -> str | None:
    """A sentence when `target`'s disk has less free space than `needed` (+ margin), else None."""
    target = Path(target)
    probe = target if target.exists() else target.parent
    free = shutil.disk_usage(probe).free
    required = int(needed * MARGIN) + RESERVE_BYTES
    if free >= required:
        return None
    return (f"Not enough disk space for this export: it needs about {required / 1e9:.2f} GB in {probe} and only "
            f"{free / 1e9:.2f} GB are free. Choose fewer formats (or a smaller quantisation), or free some space.")
