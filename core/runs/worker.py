"""The job worker: `python -m core.runs.worker <run_dir>`.

Started by the UI in a new process session (or by hand from a terminal, headless). Reads spec.yaml and
parses it once into the kind's spec dataclass (an invalid spec fails the run here, naming the field), waits
for the exclusive lock as `queued`, runs the job as `running`, and records the end in
status.json: succeeded / stopped / failed (with one human sentence; the traceback goes to worker.log).
SIGTERM asks the job to finish its step and save; a second SIGTERM interrupts it.
"""
from __future__ import annotations

import argparse
import fcntl
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from core.runs.card import refresh_lineage
from core.runs.errors import explain_failure, format_traceback, quiet_known_noise
from core.runs.jobs import InvalidSpec, JobContext, JobError, JobStopped, job_kind, kind_names, read_spec_dict
from core.runs.status import LOG_FILE, RunStatus, StatusKeeper, read_raw_status, read_status, status_lock, write_status
from core.workspace import fault_point

LOCK_NAME = ".exclusive-job.lock"
log = logging.getLogger("workbench.worker")


class Worker:
    def __init__(self, run_dir: Path, spec_data: dict | None = None):
        self.run_dir = Path(run_dir)
        self.spec_data = spec_data if spec_data is not None else read_spec_dict(self.run_dir)
        self.job = job_kind(self.spec_data["kind"])
        self.spec = self.job.parse_spec(self.spec_data)
        previous = read_raw_status(run_dir)
        self.keeper = StatusKeeper(self.run_dir, RunStatus(
            state="queued",
            kind=self.job.name,
            pid=os.getpid(),
            created_at=previous.created_at if previous else time.time(),
            heartbeat=time.time(),
            attempts=(previous.attempts if previous else 0) + 1,
            # the earlier launches' time: added by launch(), or here when the worker is started by hand (a headless resume)
            earlier_seconds=previous.next_launch().earlier_seconds if previous else 0.0,
            message="waiting for the exclusive job lock",
        ))
        self._stop_requests = 0
        self._lock_handle = None
        self._waiting_for = ""

    # ---------------------------------------------------------------- status
    @property
    def status(self) -> RunStatus:
        return self.keeper.status

    def update(self, **changes) -> None:
        self.keeper.update(**changes)
        if "message" in changes:  # a stage the run reports: where the fault drill may kill the worker (test hook)
            fault_point(str(changes["message"]))

    # ---------------------------------------------------------------- signals
    def _on_sigterm(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self._stop_requests += 1
        if self._stop_requests == 1:
            log.info("stop requested (SIGTERM): finishing the current step, then saving")
            if self.status.state in ("running", "queued"):
                self.update(state="stopping", message="stopping after the current step")
        else:
            raise JobStopped("stopped at once on a second stop request")

    @property
    def stop_requested(self) -> bool:
        return self._stop_requests > 0

    # ---------------------------------------------------------------- runs this one starts from
    def _wait_for_runs(self) -> bool:
        """The spec's `waits_for()` runs (DPO launched with the SFT run it continues) must finish first: wait `queued`,
        without the exclusive lock (they need it). False if stopped while waiting; JobError when one that was still
        unfinished ends otherwise than succeeded. One already finished when this run starts is the spec check's business."""
        for parent in getattr(self.spec, "waits_for", lambda: [])():
            waited, told = False, ""
            while not (status := read_status(parent)).is_final:
                if self.stop_requested:
                    return False
                waited = True
                if status.state != told:
                    told = status.state
                    self._waiting_for = f"waiting for run {parent.name} ({status.state}) to succeed"
                    self.update(message=self._waiting_for)
                time.sleep(0.5)
            if waited and status.state != "succeeded":
                reason = f": {status.error}" if status.error else f" ({status.message})" if status.message else ""
                raise JobError(f"run {parent.name}, which this run continues from, ended {status.state}{reason}; "
                               "nothing was trained here (resume or rerun it, then relaunch this run)")
        return True

    # ---------------------------------------------------------------- lock
    def _wait_for_lock(self) -> bool:
        """Take the workspace-wide lock for heavy jobs; stay `queued` meanwhile. False if stopped while waiting."""
        if not self.job.exclusive:
            return True
        path = self.run_dir.parent / LOCK_NAME
        self._lock_handle = open(path, "a+")
        told = ""
        while True:
            try:
                fcntl.flock(self._lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock_handle.seek(0)
                self._lock_handle.truncate()
                self._lock_handle.write(self.run_dir.name)  # who holds it, for the runs queued behind
                self._lock_handle.flush()
                return True
            except BlockingIOError:
                if self.stop_requested:
                    return False
                holder = path.read_text(errors="replace").strip()
                if holder and holder != told:
                    told = holder
                    self.update(message=f"waiting for the exclusive job lock (held by run {holder})")
                time.sleep(0.5)

    # ---------------------------------------------------------------- run
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        with status_lock(self.run_dir):  # after launch() has written `queued` with this pid, never before it
            write_status(self.run_dir, self.status)
        self.keeper.start_beating()
        try:
            waiting = self._wait_for_runs()
            if not waiting or not self._wait_for_lock():
                self.update(state="stopped", message="stopped while queued" + ("" if waiting else f" ({self._waiting_for})"),
                            finished_at=time.time(), exit_code=0)
                return 0
            _sweep_leftovers(self.run_dir)
            self.update(state="stopping" if self.stop_requested else "running", started_at=time.time(), message="started", error="")
            log.info("running %s job in %s (attempt %d)", self.job.name, self.run_dir, self.status.attempts)
            ctx = JobContext(
                run_dir=self.run_dir,
                spec=self.spec,
                spec_data=self.spec_data,
                log=logging.getLogger(f"workbench.{self.job.name}"),
                set_progress=lambda fraction, message: self.update(progress=fraction, message=message),
                _stop=lambda: self.stop_requested,
            )
            result = self.job.run_function()(ctx) or {}
            final = "stopped" if self.stop_requested else "succeeded"
            self.update(state=final, result=result, finished_at=time.time(), exit_code=0,
                        progress=1.0 if final == "succeeded" else self.status.progress,
                        message="stopped by the user" if final == "stopped" else "done")
            log.info("%s", final)
            return 0
        except JobStopped:
            self.update(state="stopped", finished_at=time.time(), exit_code=0, message="stopped by the user (interrupted)")
            return 0
        except BaseException as exc:  # noqa: BLE001 - every failure must end in status.json
            log.error("job failed:\n%s", format_traceback(exc))
            self.update(state="failed", error=explain_failure(exc), finished_at=time.time(), exit_code=1, message="failed")
            return 1
        finally:
            self.keeper.stop_beating()
            self._release_lock()
            _refresh_cards(self.run_dir)

    def _release_lock(self) -> None:
        """Free the exclusive lock now (not when the process exits), so a worker run in-process can be followed by another."""
        if self._lock_handle is not None:
            self._lock_handle.close()  # closing the descriptor releases the flock
            self._lock_handle = None


LEFTOVER_SUFFIXES = (".tmp", ".partial", ".old")  # the hidden temp names of core.workspace's atomic writes, merges, GGUF


def _sweep_leftovers(run_dir: Path) -> None:
    """Remove what an earlier attempt killed mid-write left behind: hidden `.<name>.….tmp / .partial / .old` files and
    folders in the run folder. Never visible as results, but a killed merge or model save leaves gigabytes there. Safe:
    one worker per run folder (launch() holds the run's lock; exclusive jobs also hold the workspace lock)."""
    for path in sorted(run_dir.rglob(".*"), key=lambda p: len(p.parts)):
        if not path.name.endswith(LEFTOVER_SUFFIXES) or not path.exists():
            continue
        log.info("removing %s, left by an attempt that was killed mid-write", path.relative_to(run_dir))
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _refresh_cards(run_dir: Path) -> None:
    """card.json / README.md of this run and of the runs it came from (their lineage grew); never fails the job."""
    try:
        refresh_lineage(run_dir)
    except Exception as exc:  # noqa: BLE001 - a card is a summary: the job's own result stands without it
        log.warning("could not write the run card: %s", exc)


def _redirect_output(run_dir: Path) -> None:
    """Everything the job prints lands in worker.log; from a terminal it is also shown there."""
    log_file = open(run_dir / LOG_FILE, "ab", buffering=0)
    if not sys.stderr.isatty():
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        return
    terminal = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)

    def tee() -> None:
        while chunk := os.read(read_end, 65536):
            log_file.write(chunk)
            os.write(terminal, chunk)

    threading.Thread(target=tee, name="log-tee", daemon=True).start()


def _refuse(run_dir: Path, exc: Exception) -> int:
    """The one way an invalid spec ends: `failed` with the message naming the field, nothing run."""
    log.error("invalid spec: %s", exc)
    previous = read_raw_status(run_dir) or RunStatus()
    previous.state, previous.error, previous.pid, previous.exit_code = "failed", str(exc), os.getpid(), 2
    previous.finished_at = previous.heartbeat = time.time()
    previous.message = "invalid spec"
    write_status(run_dir, previous)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"Run one workbench job ({kind_names()}) headless.")
    parser.add_argument("run_dir", type=Path, help="run folder containing spec.yaml")
    args = parser.parse_args(argv)
    run_dir = args.run_dir.resolve()
    if not (run_dir / "spec.yaml").is_file():
        print(f"error: {run_dir / 'spec.yaml'} not found", file=sys.stderr)
        return 2
    _redirect_output(run_dir)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    quiet_known_noise()  # e.g. bitsandbytes' "Failed to load CPU gemm_4bit_forward…": said once, as what it means
    try:
        spec_data = read_spec_dict(run_dir)
        worker = Worker(run_dir, spec_data)
    except (InvalidSpec, ValueError, FileNotFoundError) as exc:
        return _refuse(run_dir, exc)
    code = worker.run()
    sys.stdout.flush()
    sys.stderr.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
