"""One training process of a multi-process run: `python -m core.train.rank <run_dir>`, started by torchrun,
accelerate launch, Slurm (through torchrun) or Ray Train — never by hand in a plain shell.

Every rank runs the same train job (core.train.job.run) on its share of the data. What differs by rank:
- rank 0 appends metrics.jsonl, saves the adapter / model and the run card, and writes ranks/result.json;
- every rank keeps its own log, ranks/rank-<k>.log, and its own record, ranks/rank-<k>.json (state, progress,
  tokens/s, memory, heartbeat), which the Train page shows per rank and the supervisor reads when a rank dies;
- status.json belongs to the workbench worker that launched the ranks on one node (core.train.supervisor);
  without one (multi-node, Slurm, Ray) rank 0 writes it itself.
A stop request (SIGTERM to the worker) reaches the ranks as ranks/stop.request; they agree on it every step,
so every rank stops after the same step and saves. Before any rank has started its step loop (data preparation,
model loading, init_process_group) there is nothing to save and no collective to agree through: the supervisor
ends the launch instead (SIGTERM, which ends a rank at once until its step loop starts).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.runs.errors import explain_failure, format_traceback
from core.runs.jobs import JobContext, parse_spec, read_spec_dict
from core.runs.metrics import append_metrics
from core.runs.status import METRICS_FILE, RunStatus, StatusKeeper, pid_alive, read_raw_status
from core.train.distributed import (
    RESULT_FILE,
    STOP_FILE,
    SUPERVISOR_ENV,
    RankInfo,
    rank_log,
    rank_record_path,
    ranks_dir,
    supervised,
)
from core.train.job import run as run_train
from core.workspace import atomic_write_json

# Fields of a metrics row a rank's own record keeps (its local view: tokens/s of this rank, its device's memory).
RECORDED = ("step", "loss", "rank_tokens_per_s", "tokens_per_s", "peak_memory_bytes", "elapsed_s", "eta_s")
log = logging.getLogger("workbench.rank")


class RankRecord:
    """ranks/rank-<k>.json: this rank's state, written atomically whenever it changes."""

    def __init__(self, run_dir: Path, info: RankInfo, attempt: int):
        self.path = rank_record_path(run_dir, info.rank)
        self.data: dict[str, Any] = {
            "rank": info.rank, "local_rank": info.local_rank, "node_rank": info.node_rank, "world_size": info.world_size,
            "host": socket.gethostname(), "pid": os.getpid(), "attempt": attempt, "state": "running",
            "progress": 0.0, "message": "starting", "started_at": time.time(), "finished_at": None, "error": "",
        }
        self._lock = threading.Lock()
        self.update()

    def update(self, **changes: Any) -> None:
        with self._lock:
            self.data.update(changes)
            self.data["heartbeat"] = time.time()
            atomic_write_json(self.path, self.data)


@dataclass
class RankContext(JobContext):
    """The job context of one rank: only rank 0 appends metrics.jsonl; every rank keeps its own record."""

    rank: RankInfo = field(default_factory=RankInfo)
    record: RankRecord | None = None

    on_training: Any = None  # called once when the trainer's step loop starts (every rank is in the process group then)

    def metrics(self, **row: Any) -> None:
        if self.rank.is_main:
            append_metrics(self.run_dir / METRICS_FILE, row)
        if row.get("event") == "start" and self.record is not None and not self.record.data.get("training"):
            self.record.update(training=True)  # the supervisor reads it: from now on Stop is agreed per step
            if self.on_training is not None:
                self.on_training()
        if self.record is not None and "loss" in row:
            self.record.update(**{key: row[key] for key in RECORDED if key in row})


class StatusOwner(StatusKeeper):
    """status.json for a run no workbench worker supervises (rank 0 of a multi-node / Slurm / Ray run)."""

    def __init__(self, run_dir: Path, kind: str):
        previous = read_raw_status(run_dir)
        super().__init__(run_dir, RunStatus(state="running", kind=kind, pid=os.getpid(), started_at=time.time(), heartbeat=time.time(),
                                            created_at=previous.created_at if previous else time.time(),
                                            attempts=(previous.attempts if previous else 0) + 1, message="started"))
        self.update()
        self.start_beating()

    def finish(self, **changes: Any) -> None:
        self.stop_beating()
        self.update(finished_at=time.time(), **changes)


def _redirect_output(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "ab", buffering=0)
    os.dup2(handle.fileno(), 1)
    os.dup2(handle.fileno(), 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)


def run_rank(run_dir: str | Path) -> int:
    """Run this process's share of the training job in `run_dir`; 0 on success (or stop), 1 on failure."""
    run_dir = Path(run_dir).resolve()
    info = RankInfo.from_env()
    _redirect_output(rank_log(run_dir, info.rank))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format=f"%(asctime)s rank{info.rank} %(levelname)s %(name)s: %(message)s")
    spec_data = read_spec_dict(run_dir)
    spec = parse_spec(spec_data)  # the job registry's spec class, as the worker parses it
    owner = StatusOwner(run_dir, spec_data["kind"]) if info.is_main and not supervised() else None
    attempt = owner.status.attempts if owner else int((read_raw_status(run_dir) or RunStatus()).attempts or 1)
    record = RankRecord(run_dir, info, attempt)
    stop_signals: list[int] = []

    def arm_stop_signal() -> None:
        # Until the step loop starts, SIGTERM keeps its default action (the process ends at once, even while it waits
        # in init_process_group): the supervisor ends a launch stopped before training that way. From the first step
        # on, SIGTERM is a stop request every rank agrees on after the same step.
        if threading.current_thread() is threading.main_thread():  # Ray Train runs the loop in a thread: no handlers there
            signal.signal(signal.SIGTERM, lambda signum, frame: stop_signals.append(signum))  # noqa: ARG005

    def progress(fraction: float, message: str) -> None:
        record.update(progress=fraction, message=message)
        if owner is not None:
            owner.update(progress=fraction, message=message)

    stop_file = ranks_dir(run_dir) / STOP_FILE

    def stop_requested() -> bool:
        # A stop request, or the worker that launched this rank is gone (then stop and save rather than train unwatched).
        return bool(stop_signals) or stop_file.exists() or not _supervisor_alive()

    ctx = RankContext(run_dir=run_dir, spec=spec, spec_data=spec_data, log=logging.getLogger("workbench.train"), set_progress=progress,
                      _stop=stop_requested, rank=info, record=record, on_training=arm_stop_signal)
    log.info("rank %d of %d (local rank %d, node %d) on %s, pid %d", info.rank, info.world_size, info.local_rank,
             info.node_rank, socket.gethostname(), os.getpid())
    try:
        _pin_device(info)
        result = run_train(ctx) or {}
        state = "stopped" if ctx.stop_requested else "succeeded"
        if info.is_main:
            atomic_write_json(ranks_dir(run_dir) / RESULT_FILE, {"state": state, "result": result})
        record.update(state=state, progress=1.0 if state == "succeeded" else record.data["progress"], finished_at=time.time(),
                      message="done" if state == "succeeded" else "stopped")
        if owner is not None:
            owner.finish(state=state, result=result, exit_code=0, progress=1.0 if state == "succeeded" else owner.status.progress,
                         message="done" if state == "succeeded" else "stopped by the user")
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure ends in this rank's record, with the traceback in its log
        log.error("rank %d failed:\n%s", info.rank, format_traceback(exc))
        record.update(state="failed", error=explain_failure(exc), finished_at=time.time(), message="failed")
        if owner is not None:
            owner.finish(state="failed", error=f"rank {info.rank}: {explain_failure(exc)}", exit_code=1, message="failed")
        return 1
    finally:
        _close_process_group()
        sys.stdout.flush()
        sys.stderr.flush()


def _supervisor_alive() -> bool:
    pid = os.environ.get(SUPERVISOR_ENV)
    return not pid or pid_alive(int(pid))


def _pin_device(info: RankInfo) -> None:
    """One GPU per process: make "cuda" mean this rank's GPU for every later .to("cuda")."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank % torch.cuda.device_count())


def _close_process_group() -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - shutting down after a failure must not raise a second one
        pass


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m core.train.rank <run_dir>   (started by torchrun / accelerate launch / Ray Train)", file=sys.stderr)
        return 2
    return run_rank(args[0])


if __name__ == "__main__":
    sys.exit(main())
