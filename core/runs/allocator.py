"""The C allocator switch for CPU jobs, set where jobs run (the train job calls it before any tensor exists).

glibc keeps freed medium-sized blocks in its heap instead of returning them to the OS, so a CPU training
process's RSS grows past its live tensors (measured +35% to +100% of activation bytes on the embedded model).
A fixed mmap threshold makes large blocks come from mmap and go back on free; CPU training jobs should run
with this environment (it costs a page fault per fresh block, a few percent of step time).
"""
from __future__ import annotations

import ctypes

CPU_ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h


def tune_cpu_allocator(threshold: int = 65536) -> bool:
    """Inside an already running process, the same as CPU_ALLOCATOR_ENV: fix glibc's mmap threshold so
    freed blocks above it go back to the OS. Call it at the start of a CPU training job; False (no change)
    where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False
