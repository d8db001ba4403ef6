"""The one "create a run and execute its worker in this process" helper of the tests: the worker's own code path
(`Worker(run_dir).run()`) minus the interpreter start-up, with the SIGTERM handler the worker installs put back."""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from core import runs
from core.runs.status import RunStatus, read_status
from core.runs.worker import Worker


def run_in_process(spec: Any) -> tuple[Path, RunStatus]:
    """spec: a spec object or a spec dict. Returns the run folder and its final status."""
    run_dir = runs.create_run_from_dict(spec) if isinstance(spec, dict) else runs.create_run(spec)
    return run_dir, work_here(run_dir)


def work_here(run_dir: Path) -> RunStatus:
    """The worker of an existing run folder, in this process. Returns its final status."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        Worker(run_dir).run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return read_status(run_dir)


def run_succeeded(spec: Any) -> Path:
    """run_in_process, asserting the run succeeded (the worker log's tail in the message when it did not)."""
    run_dir, status = run_in_process(spec)
    assert status.state == "succeeded", (status.error, (run_dir / "worker.log").read_text()[-3000:])
    return run_dir


def train_rows(run_dir: Path) -> list[dict]:
    """The training steps' rows of a run's metrics.jsonl (those with a loss)."""
    return [r for r in runs.read_all_metrics(run_dir / runs.METRICS_FILE) if "loss" in r]
