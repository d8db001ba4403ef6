"""status.json: the one record of a job's state. Written atomically by the worker, read by any page.

The reader never trusts a non-final state blindly: a worker whose process is gone (kill -9, the OOM
killer, a crash) is recorded as failed in status.json by the first reader that finds it (under a lock, so
once); a worker that is alive but silent (hung) is shown as failed without touching the file.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

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
    earlier_seconds: float = 0.0  # time the earlier launches of this run folder ran (Stop / Resume, Train more)

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

    @property
    def run_seconds(self) -> float | None:
        """How long the whole run has run: every launch of its folder, not only the latest (None before any ran)."""
        if self.started_at is None and not self.earlier_seconds:
            return None
        return self.earlier_seconds + (self.elapsed or 0.0)

    def next_launch(self) -> RunStatus:
        """This status carried into a new launch of the same folder: the time the finished launch ran is added to
        earlier_seconds and its start is cleared (the worker sets the new one when it starts running)."""
        done = self.elapsed if self.is_final and self.started_at is not None else None
        return replace(self, earlier_seconds=self.earlier_seconds + max(0.0, done or 0.0), started_at=None, finished_at=None)

    def as_dict(self) -> dict:
        return asdict(self)


STATE_ICONS = {"created": "•", "queued": "🕒", "running": "⏳", "stopping": "⏳", "succeeded": "✅", "failed": "❌", "stopped": "⏹️"}


def state_label(status: RunStatus) -> str:
    """A run's state as every page shows it (the run header, the run pickers and tables, the live status line): one
    function, fed by one read_status() per render, so no two places can disagree."""
    return f"{STATE_ICONS.get(status.state, '•')} {status.state}"


def write_status(run_dir: str | Path, status: RunStatus) -> None:
    atomic_write_json(Path(run_dir) / STATUS_FILE, status.as_dict())


class StatusKeeper:
    """status.json kept by the one process that owns a run (the worker, or rank 0 of a run nobody supervises): every
    update is written atomically with a fresh heartbeat, and a heartbeat thread rewrites it every HEARTBEAT_SECONDS
    until `stop_beating()`, so readers can tell a silent process from a working one."""

    def __init__(self, run_dir: str | Path, status: RunStatus):
        self.run_dir = Path(run_dir)
        self.status = status
        self._lock = threading.RLock()  # re-entrant: a SIGTERM handler may update from the thread already writing
        self._done = threading.Event()

    def update(self, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self.status, key, value)
            self.status.heartbeat = time.time()
            write_status(self.run_dir, self.status)

    def start_beating(self) -> None:
        threading.Thread(target=self._beat, name="heartbeat", daemon=True).start()

    def stop_beating(self) -> None:
        self._done.set()

    def _beat(self) -> None:
        while not self._done.wait(HEARTBEAT_SECONDS):
            self.update()


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
    if not pid or not isinstance(pid, int):
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


DEAD_WORKER = ("The worker process ended without recording a result (killed, e.g. by the system's out-of-memory "
               "killer or kill -9). See the log tail below.")
_STATUS_LOCK = ".status.lock"


def last_stage(status: RunStatus) -> str:
    """The last stage a worker reported (its status message and progress), for the error of a worker that died."""
    stage = status.message.strip() or status.state
    return f"{stage!r} ({status.progress:.0%} done)" if status.progress else repr(stage)


@contextlib.contextmanager
def status_lock(run_dir: str | Path) -> Iterator[None]:
    """The run's status lock: held while a launch starts a worker, while a worker writes its first status and while
    a reader records a dead worker, so none of them overwrites the others. (flock: not re-entrant, even in one process.)"""
    with open(Path(run_dir) / _STATUS_LOCK, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def read_status(run_dir: str | Path, now: float | None = None) -> RunStatus:
    """The status as a user should see it: a silent worker is a failed worker, never 'running' forever."""
    status = read_raw_status(run_dir)
    if status is None:
        if (Path(run_dir) / STATUS_FILE).is_file():  # only a hand edit or a broken disk does this (writes are atomic)
            return RunStatus(state="failed", error=f"{STATUS_FILE} of this run is unreadable (corrupted or not a status record); "
                                                   "relaunch the run or delete its folder.", message=f"{STATUS_FILE} unreadable")
        return RunStatus()
    if not status.is_active:
        return status
    now = now or time.time()
    beat = status.heartbeat if isinstance(status.heartbeat, (int, float)) else status.created_at
    alive = pid_alive(status.pid)
    if alive and now - beat < STALE_AFTER_SECONDS:
        return status
    if status.pid and not alive:
        return record_dead_worker(run_dir, status)
    why = (f"The worker stopped sending heartbeats {now - beat:.0f} s ago, at {last_stage(status)} (it hung or the "
           "machine lost power). See the log tail below.")
    return replace(status, state="failed", error=why, finished_at=beat)


def record_dead_worker(run_dir: str | Path, seen: RunStatus) -> RunStatus:
    """Write `failed` for a run whose worker process is gone, once: under the run's status lock the file is
    read again, and only a run still active with the same dead pid is changed. The error names the last stage
    the worker reported (it could not write its own end)."""
    run_dir = Path(run_dir)
    try:
        with status_lock(run_dir):
            current = read_raw_status(run_dir) or seen
            if not current.is_active or current.pid != seen.pid or pid_alive(current.pid):
                return current
            failed = replace(current, state="failed", error=f"{DEAD_WORKER} Last stage it reported: {last_stage(current)}.",
                             message=f"the worker process died at {last_stage(current)}",
                             finished_at=current.heartbeat or current.created_at)
            write_status(run_dir, failed)
            return failed
    except FileNotFoundError:  # the run folder was deleted meanwhile: nothing to record, nothing to crash on
        return replace(seen, state="failed", error=f"The run folder {run_dir} no longer exists.", message="run folder deleted")
