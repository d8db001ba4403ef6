"""`jobs_inline`: the fixture for AppTest page tests (and jobs that start jobs) whose worker PROCESS is not what they test.
The launch the pages call (pages_common.start_run -> core.runs.launch; relaunch goes through it too), and the one the
method comparison starts its train / evaluate children with, runs the worker in this process,
synchronously (tests/inprocess.work_here, in the AppTest script thread), before the page script goes on: the next
at.run() sees the finished run. Not for tests of the live panel while a job runs, Stop, reattach, or the worker process.
Use: `from jobs_inline import jobs_inline_fixture  # noqa: F401 - a fixture`, then take `jobs_inline` as an argument; it is the
list of run folders run so far. Click Start with at.run(timeout=...) long enough for the job itself."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from inprocess import work_here

import pages_common
from core import runs
from core.compare import job as compare_job


class InlineRuns(list):
    """The run folders run in this process so far; `inline = False` hands later launches to real worker processes again
    (for a test whose later click starts a run it then stops)."""
    inline = True


@pytest.fixture(name="jobs_inline")
def jobs_inline_fixture(monkeypatch) -> InlineRuns:
    ran = InlineRuns()
    real_launch = runs.launch

    def launch_here(run_dir) -> int:
        if not ran.inline:
            return real_launch(run_dir)
        run_dir = Path(run_dir).resolve()
        if not (run_dir / runs.SPEC_FILE).is_file():
            raise FileNotFoundError(f"run {run_dir.name}: {runs.SPEC_FILE} not found in {run_dir}")
        ran.append(run_dir)
        work_here(run_dir)
        return os.getpid()

    monkeypatch.setattr(runs, "launch", launch_here)  # core.runs.relaunch calls it by this name
    monkeypatch.setattr(pages_common, "launch", launch_here)
    monkeypatch.setattr(compare_job, "launch", launch_here)  # its children: a child's log lines reach its parent's log too
    return ran
