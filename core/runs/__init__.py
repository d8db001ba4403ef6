"""Jobs: the UI writes runs/<id>/spec.yaml and starts `python -m core.runs.worker runs/<id>` in a new
process session. The worker owns status.json / metrics.jsonl / worker.log; the UI only reads them, so a
refresh, a second tab or an app restart reattaches to the same run.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.runs.jobs import JOBS, InvalidSpec, job_kind, kind_names, parse_spec, read_result, read_spec_dict, result_path
from core.runs.metrics import read_all_metrics, read_new_metrics, tail_text
from core.runs.spec import spec_to_dict, spec_to_yaml, write_spec
from core.runs.status import (
    LOG_FILE,
    METRICS_FILE,
    SPEC_FILE,
    RunStatus,
    pid_alive,
    read_raw_status,
    read_status,
    status_lock,
    write_status,
)
from core.workspace import REPO_ROOT, atomic_write_text, child_env, runs_dir, safe_name

__all__ = [
    "RunStatus", "RunSummary", "create_run", "launch", "stop", "relaunch", "list_runs", "read_status",
    "read_new_metrics", "read_all_metrics", "log_tail", "run_command", "spec_to_yaml", "read_spec_dict",
    "METRICS_FILE", "LOG_FILE", "SPEC_FILE", "JOBS", "InvalidSpec", "job_kind", "kind_names", "parse_spec", "spec_to_dict",
    "read_result", "result_path",
    "create_run_from_dict", "wait", "AlreadyActive",
]



@dataclass
class RunSummary:
    run_id: str
    path: Path
    kind: str
    name: str
    status: RunStatus
    spec: dict[str, Any] = field(default_factory=dict)


def new_run_dir(kind: str, name: str = "") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{safe_name(kind)}" + (f"-{safe_name(name, max_len=40)}" if name else "")
    path = runs_dir() / base
    suffix = 1
    while path.exists():
        suffix += 1
        path = runs_dir() / f"{base}-{suffix}"
    path.mkdir(parents=True)
    return path


def create_run(spec: Any, name: str = "") -> Path:
    """A run folder with spec.yaml and a `created` status; nothing runs until launch()."""
    kind = job_kind(getattr(type(spec), "kind", "")).name  # InvalidSpec for a class that is not a registered job
    run_dir = new_run_dir(kind, name or getattr(spec, "name", "") or "")
    write_spec(run_dir, spec)
    write_status(run_dir, RunStatus(state="created", kind=kind))
    return run_dir


def create_run_from_dict(data: dict, name: str = "") -> Path:
    """The same from a spec.yaml mapping (checked through the registry first: InvalidSpec names the field)."""
    parse_spec(data)
    run_dir = new_run_dir(data["kind"], name or data.get("name", ""))
    atomic_write_text(run_dir / SPEC_FILE, yaml.safe_dump(data, sort_keys=False))
    write_status(run_dir, RunStatus(state="created", kind=data["kind"]))
    return run_dir


def _reap_when_done(child: subprocess.Popen) -> None:
    """Wait for the worker in a daemon thread, so it is reaped the moment it exits (no <defunct> zombie)."""
    threading.Thread(target=child.wait, name=f"reap-{child.pid}", daemon=True).start()


class AlreadyActive(RuntimeError):
    """launch() of a run whose worker is still alive (a second browser tab, a double click): nothing is started."""


def launch(run_dir: str | Path) -> int:
    """Start the worker in a new process session (no shell); returns its pid. Under the run's status lock, so two
    sessions launching one run at once start one worker; the other gets AlreadyActive saying which pid runs it."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / SPEC_FILE).is_file():
        raise FileNotFoundError(f"run {run_dir.name}: {SPEC_FILE} not found in {run_dir} (was the run folder deleted?)")
    read_status(run_dir)  # records a dead worker as failed first (that takes the lock itself)
    env = child_env()
    with status_lock(run_dir):
        current = read_raw_status(run_dir)
        if current is not None and current.is_active and pid_alive(current.pid):
            raise AlreadyActive(f"run {run_dir.name} is already {current.state} (worker pid {current.pid}, "
                                f"{current.message or 'started'}); it was started from another tab or session — "
                                "watch it or stop it first")
        with open(run_dir / LOG_FILE, "ab") as log_file:
            child = subprocess.Popen(
                [sys.executable, "-m", "core.runs.worker", str(run_dir)],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _reap_when_done(child)
        previous = current.next_launch() if current is not None else RunStatus(kind=read_spec_dict(run_dir)["kind"])
        previous.state, previous.pid, previous.heartbeat, previous.error = "queued", child.pid, time.time(), ""
        previous.message = "starting the worker"
        write_status(run_dir, previous)  # the worker writes its own status only after this (it takes the same lock)
    return child.pid


def stop(run_dir: str | Path) -> bool:
    """SIGTERM to the worker's process group: it finishes the step, saves, and records `stopped`."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    if status.state == "created":
        status.state, status.finished_at, status.message = "stopped", time.time(), "stopped before it started"
        write_status(run_dir, status)
        return True
    if not status.is_active or not status.pid:
        return False
    try:
        os.killpg(os.getpgid(status.pid), signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def relaunch(run_dir: str | Path, spec_updates: dict | None = None) -> int:
    """Resume a stopped / failed run, or continue a finished one with changed fields ("train N more")."""
    run_dir = Path(run_dir)
    if spec_updates:
        data = read_spec_dict(run_dir)
        data.update(spec_updates)
        parse_spec(data)  # a bad update is refused here, before the run folder changes
        atomic_write_text(run_dir / SPEC_FILE, yaml.safe_dump(data, sort_keys=False))
    return launch(run_dir)


def load_summary(run_dir: Path) -> RunSummary | None:
    try:
        spec = read_spec_dict(run_dir)
    except (FileNotFoundError, ValueError):
        return None
    return RunSummary(
        run_id=run_dir.name,
        path=run_dir,
        kind=spec.get("kind", ""),
        name=str(spec.get("name") or run_dir.name),
        status=read_status(run_dir),
        spec=spec,
    )


def list_runs(kind: str | None = None, root: Path | None = None) -> list[RunSummary]:
    root = root or runs_dir()
    runs = [s for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") for s in [load_summary(d)] if s]
    if kind:
        runs = [r for r in runs if r.kind == kind]
    return sorted(runs, key=lambda r: r.status.created_at, reverse=True)


def log_tail(run_dir: str | Path, max_bytes: int = 6000) -> str:
    return tail_text(Path(run_dir) / LOG_FILE, max_bytes)


def run_command(run_dir: str | Path) -> str:
    return f"python -m core.runs.worker {Path(run_dir)}"


def wait(run_dir: str | Path, timeout: float = 600, poll: float = 0.2) -> RunStatus:
    """Block until the run reaches a final state (for scripts and tests)."""
    deadline = time.time() + timeout
    while True:
        status = read_status(run_dir)
        if status.is_final:
            return status
        if time.time() > deadline:
            raise TimeoutError(f"run {Path(run_dir).name} still {status.state} after {timeout:.0f} s")
        time.sleep(poll)
