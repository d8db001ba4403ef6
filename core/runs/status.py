"""status.json: the one record of a job's state. Written atomically by the worker, read by any page.

The reader never trusts a non-final state blindly: a worker that stopped writing heartbeats (kill -9,
power loss, the OOM killer) is reported as failed, with the most likely reason.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from core.workspace import atomic_write_json, read_json

STATUS_FILE = "status.json"
SPEC_FILE = "spec.yaml"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "worker.log"

ACTIVE_STATES = ("queued", "running", "stopping")
FINAL_STATES = ("succeeded", "failed", "stopped")
STATES = ("created",) + ACTIVE_STATES + FINAL_STATES
HEARTBEAT_SECONDS = 2.0
STALE_AFTER_SECONDS = 30.0


@dataclass
class RunStatus:
    state: str = "created"
    kind: str = ""
    pid: int | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat: float | None = None
    exit_code: int | None = None
    progress: float = 0.0
    message: str = ""
    error: str = ""  # one human sentence when failed
    result: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0  # launches of this run folder (first run + resumes)

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"unknown run state {self.state!r}")

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def elapsed(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or self.heartbeat or time.time()) - self.started_at

    def as_dict(self) -> dict:
        return asdict(self)


def write_status(run_dir: str | Path, status: RunStatus) -> None:
    atomic_write_json(Path(run_dir) / STATUS_FILE, status.as_dict())


def read_raw_status(run_dir: str | Path) -> RunStatus | None:
    data = read_json(Path(run_dir) / STATUS_FILE)
    if not isinstance(data, dict):
        return None
    known = {k: v for k, v in data.items() if k in RunStatus.__dataclass_fields__}
    try:
        return RunStatus(**known)
    except (TypeError, ValueError):
        return None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) still answers kill(0).
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_status(run_dir: str | Path, now: float | None = None) -> RunStatus:
    """The status as a user should see it: a silent worker is a failed worker, never 'running' forever."""
    status = read_raw_status(run_dir) or RunStatus()
    if not status.is_active:
        return status
    now = now or time.time()
    beat = status.heartbeat or status.created_at
    if pid_alive(status.pid) and now - beat < STALE_AFTER_SECONDS:
        return status
    if status.pid and not pid_alive(status.pid):
        why = "The worker process ended without recording a result (killed, e.g. by the system's out-of-memory killer or kill -9)."
    else:
        why = f"The worker stopped sending heartbeats {now - beat:.0f} s ago (it hung or the machine lost power)."
    return replace(status, state="failed", error=why + " See the log tail below.", finished_at=beat)
