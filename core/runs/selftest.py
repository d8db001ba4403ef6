"""A job that exercises the job protocol without a model: steps, metrics, stop, failures.

Used by the tests of the worker and by `python -m core.runs.worker` users who want to check the
job system on a new machine. Spec fields: steps, step_seconds, fail_at (step number), fail_with
("error" | "oom" | "exit").
"""
from __future__ import annotations

import os
import time

from core.runs.jobs import JobContext


def run(ctx: JobContext) -> dict:
    steps = int(ctx.spec.get("steps", 10))
    step_seconds = float(ctx.spec.get("step_seconds", 0.05))
    fail_at = ctx.spec.get("fail_at")
    fail_with = ctx.spec.get("fail_with", "error")
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
    return {"steps_done": step, "resumed_from": start_step}
