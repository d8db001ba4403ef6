"""The job kinds the worker can run: name -> "module:function" (imported only inside the worker).

A job function takes a JobContext and returns a small JSON-able result dict. It reports through the
context (metrics, progress, log) and checks `ctx.stop_requested` between steps.
"""
from __future__ import annotations

import importlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from core.runs.metrics import append_metrics
from core.runs.status import METRICS_FILE

JOB_KINDS: dict[str, str] = {
    "train": "core.train.job:run",
    "evaluate": "core.evaluate.job:run",
    "merge": "core.merge.job:run",
    "prune": "core.prune.job:run",
    "distill": "core.distill.job:run",
    "download": "core.download.job:run",
    "feature_extraction": "core.compare.job:run_feature_extraction",
    "method_comparison": "core.compare.job:run_comparison",  # an orchestrator: its train / evaluate children take the lock
    "selftest": "core.runs.selftest:run",
}

# Kinds that hold the accelerator (or, on CPU, all cores): one at a time per workspace.
EXCLUSIVE_KINDS = {"train", "evaluate", "merge", "prune", "distill", "selftest", "feature_extraction"}


class JobError(RuntimeError):
    """A failure the job can explain in one human sentence (shown as the run's error)."""


class JobStopped(Exception):
    """Raised when a second stop request arrives while the job ignores the first."""


def resolve_job(kind: str) -> Callable[["JobContext"], dict | None]:
    if kind not in JOB_KINDS:
        raise JobError(f"unknown job kind {kind!r}; known kinds: {', '.join(JOB_KINDS)}")
    module_name, func_name = JOB_KINDS[kind].split(":")
    return getattr(importlib.import_module(module_name), func_name)


@dataclass
class JobContext:
    run_dir: Path
    spec: dict[str, Any]
    log: logging.Logger
    set_progress: Callable[[float, str], None]
    _stop: Callable[[], bool]
    started: float = field(default_factory=time.time)

    @property
    def stop_requested(self) -> bool:
        return self._stop()

    def metrics(self, **row: Any) -> None:
        append_metrics(self.run_dir / METRICS_FILE, row)

    def progress(self, fraction: float, message: str = "") -> None:
        self.set_progress(max(0.0, min(1.0, float(fraction))), message)

    def path(self, *parts: str) -> Path:
        path = self.run_dir.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_json(self, name: str, obj: Any) -> Path:
        from core.workspace import atomic_write_json

        return atomic_write_json(self.path(name), obj)

    def read_json(self, name: str, default: Any = None) -> Any:
        try:
            return json.loads((self.run_dir / name).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return default
