"""Turn an exception from a job into one sentence a user can act on."""
from __future__ import annotations

import errno
import logging
import traceback

from core import hardware
from core.runs.jobs import JobError

OOM_ADVICE = (
    "lower the batch size (raise gradient accumulation to keep the effective batch), lower max_length, "
    "turn on gradient checkpointing, or switch to QLoRA"
)


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except ImportError:
        pass
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "defaultcpuallocator" in text


_DISK_FULL_TEXT = ("no space left on device", "file too large", "disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC / EFBIG / EDQUOT, also when a library (safetensors, numpy) re-raises it as its own error type."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return any(t in text for t in _DISK_FULL_TEXT)


def _memory_facts() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info(0)
            peak = torch.cuda.max_memory_allocated(0)
            return f"the GPU has {total / 1e9:.1f} GB ({free / 1e9:.1f} GB free now; this job peaked at {peak / 1e9:.1f} GB)"
    except Exception:  # noqa: BLE001 - the facts are a courtesy, never a second failure
        pass
    total, free = hardware._system_ram_gb()
    return f"the machine has {total:.1f} GB of RAM ({free:.1f} GB free now)" if total else "memory size unknown"


def explain_failure(exc: BaseException) -> str:
    if isinstance(exc, JobError):
        return str(exc)
    if is_out_of_memory(exc):
        return f"Out of memory: {_memory_facts()}. To fit, {OOM_ADVICE}."
    if is_disk_full(exc):
        where = f" while writing {exc.filename}" if isinstance(exc, OSError) and exc.filename else ""
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        return (f"Disk full{where} ({type(exc).__name__}: {detail}). Free space in the workspace (or move "
                "$WORKBENCH_HOME to a larger disk) and relaunch the run.")
    first_line = (str(exc).strip().splitlines() or [""])[0][:400]
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__


def format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


# Third-party lines that read like failures in worker.log but are not: logger -> (how the line starts, what it means).
# Said once, in words a user can act on, at the level of a note.
KNOWN_NOISE: dict[str, tuple[str, str]] = {
    "bitsandbytes.backends.cpu.ops": (
        "Failed to load CPU gemm_4bit_forward",
        "bitsandbytes: its optional fused CPU kernel for 4-bit layers (from the `kernels` package and the Hub) is not available, "
        "so 4-bit layers run on bitsandbytes' own CPU code: slower, the same results. Nothing to fix.",
    ),
}


class _Rephrase(logging.Filter):
    def __init__(self, starts: str, says: str):
        super().__init__()
        self.starts, self.says, self.said = starts, says, False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.starts):
            return True
        if self.said:
            return False
        self.said = True
        record.msg, record.args, record.levelno, record.levelname = self.says, (), logging.INFO, "INFO"
        return True


def quiet_known_noise() -> None:
    """Rephrase KNOWN_NOISE's lines (once each) in the loggers that write them; idempotent."""
    for name, (starts, says) in KNOWN_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Rephrase) for f in logger.filters):
            logger.addFilter(_Rephrase(starts, says))
