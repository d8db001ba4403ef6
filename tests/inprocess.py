"""The one "create a run and execute its worker in this process" helper of the tests: the worker's own code path
(`Worker(run_dir).run()`) minus the interpreter start-up, with the SIGTERM handler the worker installs put back."""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path
from typing import Any
from unittest import mock

from core import runs
from core.runs import worker as worker_module
from core.runs.jobs import InvalidSpec
from core.runs.status import LOG_FILE, RunStatus, read_status
from core.runs.worker import Worker

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # the format worker.main() logs with


def run_in_process(spec: Any) -> tuple[Path, RunStatus]:
    """spec: a spec object or a spec dict. Returns the run folder and its final status."""
    run_dir = runs.create_run_from_dict(spec) if isinstance(spec, dict) else runs.create_run(spec)
    return run_dir, work_here(run_dir)


class _NoSignals:
    """What the worker module sees as `signal` off the main thread (an AppTest script thread): Python refuses a handler
    there, and no SIGTERM reaches an in-process job anyway (Stop is tested with real worker processes)."""
    SIGTERM = signal.SIGTERM

    @staticmethod
    def signal(signum, handler):  # noqa: ARG004 - signal.signal's signature
        return None


@contextlib.contextmanager
def _logging_to_worker_log(run_dir: Path):
    """The job's log lines go to the run's worker.log at INFO, as worker.main() sends them (tests and pages read it)."""
    handler = logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    if level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def work_here(run_dir: Path) -> RunStatus:
    """The worker of an existing run folder, in this process (the main thread or an AppTest script thread). Returns its
    final status."""
    run_dir = Path(run_dir)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if in_main else None
    no_signals = contextlib.nullcontext() if in_main else mock.patch.object(worker_module, "signal", _NoSignals)
    try:
        with no_signals, _logging_to_worker_log(run_dir):
            try:
                worker = Worker(run_dir)
            except (InvalidSpec, ValueError, FileNotFoundError) as exc:
                worker_module._refuse(run_dir, exc)  # as worker.main() ends an invalid spec: failed, naming the field
            else:
                worker.run()
    finally:
        if in_main:
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
