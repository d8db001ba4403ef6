"""One run state everywhere (29 item 5): run-level figures over every Stop / Resume segment, the run header reading the
state the live panel reads, and "📊 Evaluate it" opening its own run's report."""
from __future__ import annotations

import time

import pytest

from core import runs
from core.runs.metrics import append_metrics, read_all_metrics, run_segments, whole_run_figures
from core.runs.status import RunStatus, read_status, write_status
from core.train.live import live_summary, runs_table


def _two_segments(path) -> None:
    """A run stopped after step 4 (checkpoint at step 3) and resumed: step 4 is trained and logged again."""
    append_metrics(path, {"event": "start", "step": 0, "total_steps": 6, "resumed_from": 0})
    for step, loss in ((1, 4.0), (2, 3.0), (3, 2.0), (4, 1.5)):
        append_metrics(path, {"step": step, "loss": loss, "tokens_seen": 100 * step, "elapsed_s": 10.0 * step, "tokens_per_s": 10.0})
    append_metrics(path, {"event": "start", "step": 3, "total_steps": 6, "resumed_from": 3})
    for n, (step, loss) in enumerate(((4, 1.0), (5, 1.0), (6, 0.5)), start=1):
        append_metrics(path, {"step": step, "loss": loss, "tokens_seen": 300 * n, "elapsed_s": 5.0 * n, "tokens_per_s": 60.0})


def test_whole_run_figures_cover_both_segments(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _two_segments(path)
    rows = read_all_metrics(path)
    assert [len(s) for s in run_segments(rows)] == [5, 4]
    figures = whole_run_figures(rows)
    assert figures["segments"] == 2 and figures["logged_steps"] == 6
    assert figures["mean_loss"] == pytest.approx((4 + 3 + 2 + 1.0 + 1 + 0.5) / 6), "step 4 once, its resumed value"
    assert figures["tokens"] == 400 + 900 and figures["train_seconds"] == 40 + 15
    assert figures["tokens_per_s"] == pytest.approx(1300 / 55, abs=0.01)
    assert live_summary(rows).tokens_per_s == pytest.approx(1300 / 55, abs=0.01), "the Train page's tile: not the last segment's 60"


def test_duration_is_every_launch_of_the_run(workspace):
    run_dir = runs.create_run_from_dict({"kind": "selftest"}, name="probe")
    now = time.time()
    write_status(run_dir, RunStatus(state="stopped", kind="selftest", started_at=now - 100, finished_at=now - 60))
    carried = read_status(run_dir).next_launch()
    assert carried.earlier_seconds == pytest.approx(40) and carried.started_at is None and carried.run_seconds == pytest.approx(40)
    carried.state, carried.started_at, carried.finished_at = "succeeded", now - 20, now
    write_status(run_dir, carried)
    assert read_status(run_dir).run_seconds == pytest.approx(60)
    (row,) = runs_table(runs.list_runs("selftest"))
    assert row["duration"] == "60 s" and row["status"] == "✅ succeeded"
