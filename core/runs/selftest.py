"""A job that exercises the job protocol without a model: steps, metrics, stop, failures.

Used by the tests of the worker and by `python -m core.runs.worker` users who want to check the
job system on a new machine.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import ClassVar

from core.runs.jobs import JobContext
from core.runs.spec import RunSpec, meta

FAILURES = ("error", "oom", "exit")


@dataclass
class SelftestSpec(RunSpec):
    kind: ClassVar[str] = "selftest"

    name: str = field(default="", metadata=meta("A label for the run folder."))
    steps: int = field(default=10, metadata=meta("Steps to run.", min=0, max=1_000_000))
    step_seconds: float = field(default=0.05, metadata=meta("Seconds each step sleeps.", min=0.0, max=3600.0))
    fail_at: int | None = field(default=None, metadata=meta("Fail at this step (empty: never).", min=1))
    fail_with: str = field(default="error", metadata=meta("How it fails: an exception, an out-of-memory error, or a hard exit.",
                                                          choices=FAILURES))

    def __post_init__(self) -> None:
        super().__post_init__()


def run(ctx: JobContext) -> dict:
    spec: SelftestSpec = ctx.spec
    steps, step_seconds, fail_at, fail_with = spec.steps, spec.step_seconds, spec.fail_at, spec.fail_with
    start_step = int((ctx.read_json("selftest_state.json") or {}).get("step", 0))
    step = start_step
    while step < steps:
        if ctx.stop_requested:
            ctx.log.info("stop requested: saving at step %d", step)
            break
        time.sleep(step_seconds)
        step += 1
        if fail_at is not None and step == int(fail_at):
            if fail_with == "oom":
                import torch

                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            if fail_with == "exit":
                os._exit(137)
            raise ValueError(f"injected failure at step {step}")
        ctx.metrics(step=step, loss=1.0 / step)
        ctx.write_json("selftest_state.json", {"step": step})
        ctx.progress(step / steps, f"step {step}/{steps}")
    result = {"steps_done": step, "resumed_from": start_step}
    ctx.write_result(result)
    return result
