"""The workbench worker watching the processes it launched for a multi-process run on one node.

The worker (core.runs.worker: status.json, the exclusive lock, Stop) calls `supervise` instead of training in its
own process: it writes launch/ from the spec, starts torchrun / accelerate launch in a process group of its own,
relays rank 0's progress into status.json, turns Stop into ranks/stop.request (every rank stops after the same
step and saves), and when the launcher exits non-zero fails the run with the rank that died first and its log tail.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from core.download import ensure_weights
from core.runs.jobs import JobContext, JobError
from core.runs.metrics import tail_text
from core.runs.status import LOG_FILE
from core.train.backends import FALLBACK_ENV
from core.train.distributed import (
    RESULT_FILE,
    STOP_FILE,
    SUPERVISOR_ENV,
    distribution_notes,
    free_port,
    rank_log,
    rank_record_path,
    ranks_dir,
    read_rank_records,
    strategy_label,
)
from core.train.launchers import launch_argv, launch_command, one_node_env, write_launch_files
from core.train.preflight import training_refusal
from core.train.spec import TrainSpec
from core.workspace import REPO_ROOT, atomic_write_json, child_env, read_json

POLL_SECONDS = 0.5
TERMINATE_GRACE_SECONDS = 30
# torchrun's (torch.distributed.elastic) failure report: "Root Cause (first observed failure): ... rank : 1 (local_rank: 1)
# ... exitcode : -9 (pid: 123)". accelerate launch runs the same elastic agent, so its report reads the same.
_ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):.*?rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\).*?exitcode\s*:\s*(-?\d+)",
                         re.DOTALL)


def supervise(ctx: JobContext, spec: TrainSpec, hardware: Any) -> dict:
    refusal = training_refusal(spec, hardware)
    if refusal:
        raise JobError(refusal)
    run_dir = Path(ctx.run_dir)
    ensure_weights(ctx, [spec.model_source])  # once, here: the ranks then all find the weights in the cache
    write_launch_files(spec, run_dir, hardware, port=free_port())
    _clear_previous_attempt(run_dir)
    for note in distribution_notes(spec, hardware):
        ctx.log.info(note)
    log_offset = attempt_log_offset(run_dir)  # worker.log accumulates across attempts: the diagnosis reads only this one
    ctx.log.info("launching: %s", launch_command(spec, run_dir))
    ctx.progress(0.0, f"starting {spec.world_size} processes ({spec.launcher}, {strategy_label(spec)})")
    started = time.time()
    proc = subprocess.Popen(launch_argv(spec, run_dir), cwd=REPO_ROOT, env=_rank_env(spec, hardware), stdin=subprocess.DEVNULL,
                            start_new_session=True)  # its own group: Stop's SIGTERM to the worker's group must not reach it
    try:
        ended_early = _watch(ctx, proc, run_dir)
    except BaseException:
        _terminate(proc)
        raise
    if ended_early:
        _mark_unfinished_ranks(run_dir, "stopped")
        ctx.log.info("stopped before any rank started training, %.1f s after the stop request", time.time() - ended_early)
        return {"global_step": 0, "note": "stopped before training started", "world_size": spec.world_size,
                "strategy": strategy_label(spec), "launcher": spec.launcher}
    if proc.returncode != 0:
        raise JobError(_failure(run_dir, spec, proc.returncode, log_offset))
    outcome = read_json(ranks_dir(run_dir) / RESULT_FILE) or {}
    if "result" not in outcome:
        raise JobError(f"The {spec.launcher} launcher exited without rank 0's result: see the rank logs in {ranks_dir(run_dir)}.")
    ctx.log.info("all %d processes finished in %.0f s", spec.world_size, time.time() - started)
    return {**outcome["result"], "world_size": spec.world_size, "strategy": strategy_label(spec), "launcher": spec.launcher}


def relaunch_with_fallback(ctx: JobContext, spec: TrainSpec, hardware: Any, backend: str, reason: str) -> dict:
    """The run again, with `backend`, in a fresh process: `python -m core.train.rank <run_dir>` (one process, rank 0 of
    1) with FALLBACK_ENV saying why, watched like a launch (progress, Stop, its record and log under ranks/). This
    worker keeps status.json; the fresh process writes the metrics and the run card, which names both processes."""
    run_dir = Path(ctx.run_dir)
    _clear_previous_attempt(run_dir)
    fallback = {"backend": backend, "from": "unsloth", "reason": reason, "failed_pid": os.getpid(), "attempt": 2}
    env = child_env()
    env[SUPERVISOR_ENV] = str(os.getpid())
    env[FALLBACK_ENV] = json.dumps(fallback)
    ctx.log.warning("%s: this process (%d) has Unsloth's patches loaded, so the run starts again with the %s backend in a "
                    "fresh process", reason, os.getpid(), backend)
    ctx.progress(0.0, f"starting again with the {backend} backend (Unsloth failed)")
    proc = subprocess.Popen([sys.executable, "-m", "core.train.rank", str(run_dir)], cwd=REPO_ROOT, env=env,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    ctx.log.info("%s attempt: process %d, its log is %s", backend, proc.pid, rank_log(run_dir, 0))
    try:
        ended_early = _watch(ctx, proc, run_dir)
    except BaseException:
        _terminate(proc)
        raise
    if ended_early:
        _mark_unfinished_ranks(run_dir, "stopped")
        return {"global_step": 0, "note": "stopped before training started", "fallback": fallback}
    outcome = read_json(ranks_dir(run_dir) / RESULT_FILE) or {}
    if proc.returncode != 0 or "result" not in outcome:
        record = next(iter(read_rank_records(run_dir)), None) or {}
        tail = tail_text(rank_log(run_dir, 0), 4000) or "(it wrote no log)"
        with open(run_dir / LOG_FILE, "a", encoding="utf-8") as handle:
            handle.write(f"\n===== the {backend} attempt (process {proc.pid}): last lines of {rank_log(run_dir, 0)} =====\n{tail}\n")
        raise JobError(f"{reason}; the {backend} attempt that took over (process {proc.pid}) "
                       + (f"failed: {record['error']}" if record.get("error") else _exit_text(proc.returncode)))
    return {**outcome["result"], "fallback": fallback, "process": proc.pid}


def _rank_env(spec: TrainSpec, hardware: Any) -> dict:
    env = child_env()
    env[SUPERVISOR_ENV] = str(os.getpid())
    env.update(one_node_env(spec))  # the c10d store and the collectives on loopback only
    if getattr(hardware, "device", "cpu") == "cpu":
        # The cores are shared by the ranks: one process per core beats every process spinning on all of them.
        env["OMP_NUM_THREADS"] = str(max(1, int(getattr(hardware, "cpu_cores", 1) or 1) // spec.processes_per_node))
    return env


def _clear_previous_attempt(run_dir: Path) -> None:
    """A resumed run starts its ranks afresh: drop the last attempt's records, result and stop request (logs are kept,
    each attempt appends to rank-<k>.log)."""
    folder = ranks_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for path in [*folder.glob("rank-*.json"), folder / RESULT_FILE, folder / STOP_FILE]:
        path.unlink(missing_ok=True)


def _watch(ctx: JobContext, proc: subprocess.Popen, run_dir: Path) -> float | None:
    """Relay rank 0's progress until the launcher exits; on Stop before any rank trains, end the launch and return
    the time of the stop request (else None)."""
    stop_file = ranks_dir(run_dir) / STOP_FILE
    shown = None
    while proc.poll() is None:
        records = read_rank_records(run_dir)
        if ctx.stop_requested and not stop_file.exists():
            stop_file.touch()
            if not any(r.get("training") for r in records):
                # No rank is in its step loop: ranks wait in init_process_group for peers that saw the stop file and
                # left (up to ddp_timeout). Nothing is trained yet, so nothing is lost: end the whole launch now.
                asked = time.time()
                ctx.log.info("stop requested before any rank started training: ending the %d processes now", len(records) or 1)
                _terminate(proc)
                return asked
            ctx.log.info("stop requested: asking every rank to stop after the current step and save")
        main = next((r for r in records if r.get("rank") == 0), None)
        if main and (main.get("progress"), main.get("message")) != shown:
            shown = (main.get("progress"), main.get("message"))
            ctx.progress(float(main.get("progress") or 0.0), str(main.get("message") or ""))
        time.sleep(POLL_SECONDS)


def _mark_unfinished_ranks(run_dir: Path, state: str) -> None:
    """Ranks the supervisor ended before they could record it: their records say so (the Train page shows them)."""
    for record in read_rank_records(run_dir):
        if record.get("state") == "running":
            atomic_write_json(rank_record_path(run_dir, record["rank"]),
                              {**record, "state": state, "message": state, "finished_at": time.time()})


def _terminate(proc: subprocess.Popen) -> None:
    """SIGTERM to the launcher's group (it shuts its ranks down), SIGKILL after the grace period."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(TERMINATE_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def attempt_log_offset(run_dir: Path) -> int:
    """Where this attempt's part of worker.log starts (its size now; the log is append-only)."""
    try:
        return (Path(run_dir) / LOG_FILE).stat().st_size
    except FileNotFoundError:
        return 0


def attempt_log(run_dir: Path, offset: int, limit: int = 200_000) -> str:
    """The last `limit` bytes of worker.log written since `offset` (this attempt's launcher output), never earlier ones."""
    path = Path(run_dir) / LOG_FILE
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(offset, size - limit) if size >= offset else 0)  # a log shorter than the offset was replaced
            return handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def root_cause(launcher_output: str) -> tuple[int, int] | None:
    """(rank, exit code) of the first failure torchrun / accelerate reported, or None."""
    matches = _ROOT_CAUSE.findall(launcher_output or "")
    return (int(matches[-1][0]), int(matches[-1][1])) if matches else None


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        extra = " (the out-of-memory killer or kill -9)" if name == "SIGKILL" else ""
        return f"was killed by {name}{extra}"
    return f"exited with code {code}"


def dead_rank(records: list[dict], world_size: int, reported: tuple[int, int] | None) -> tuple[int, dict | None, int | None]:
    """The rank to blame: the launcher's root cause, else a rank that never wrote a record or died without a final
    state, else the first rank that recorded a failure."""
    by_rank = {r["rank"]: r for r in records}
    if reported is not None:
        return reported[0], by_rank.get(reported[0]), reported[1]
    missing = [k for k in range(world_size) if k not in by_rank]
    if missing:
        return missing[0], None, None
    unfinished = [r for r in records if r.get("state") == "running"]
    if unfinished:
        return unfinished[0]["rank"], unfinished[0], None
    failed = sorted((r for r in records if r.get("state") == "failed"), key=lambda r: r.get("finished_at") or 0)
    if failed:
        return failed[0]["rank"], failed[0], None
    return 0, by_rank.get(0), None


def _failure(run_dir: Path, spec: TrainSpec, returncode: int, log_offset: int = 0) -> str:
    """One sentence for status.json naming the rank that died; its log tail is appended to worker.log (the page shows it).
    Only this attempt's launcher output (from `log_offset`) is searched for the root cause: an earlier attempt's
    report further up the same log names a rank of a process group that no longer exists."""
    worker_log = run_dir / LOG_FILE
    rank, record, code = dead_rank(read_rank_records(run_dir), spec.world_size, root_cause(attempt_log(run_dir, log_offset)))
    if record is not None and record.get("state") == "failed" and record.get("error"):
        how = f"failed: {record['error']}"
    elif record is None:
        how = f"{_exit_text(code)} before it started training"
    else:
        how = _exit_text(code)
    step = str((record or {}).get("message") or "").split(" · ")[0]
    where = f" after {step}" if step.startswith("step") else ""
    tail = tail_text(rank_log(run_dir, rank), 4000) or "(the rank wrote no log)"
    with open(worker_log, "a", encoding="utf-8") as handle:
        handle.write(f"\n===== rank {rank} of {spec.world_size}: last lines of {rank_log(run_dir, rank)} =====\n{tail}\n")
    return (f"Rank {rank} of {spec.world_size} {how}{where}, so the {spec.launcher} launcher stopped the other ranks "
            f"(launcher exit code {returncode}). Its log tail is below; every rank's log is in {ranks_dir(run_dir)}.")
