"""One run state everywhere (29 item 5): run-level figures over every Stop / Resume segment, the run header reading the
state the live panel reads, and "📊 Evaluate it" opening its own run's report."""
from __future__ import annotations

import json
import os
import time

import pytest

from core import runs
from core.runs.metrics import append_metrics, read_all_metrics, run_segments, whole_run_figures
from core.runs.status import RunStatus, read_status, write_status
from core.train.live import live_summary, runs_table


def _two_segments(path) -> None:
    """A run stopped after step 4 (checkpoint at step 3) and resumed: step 4 is trained and logged again."""
    append_metrics(path, {"step": 0, "eval_loss": 5.0, "elapsed_s": 0.5})  # eval on start: logged before the start row
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
    assert [len(s) for s in run_segments(rows)] == [6, 4], "the eval-on-start row belongs to the first launch"
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


# ---------------------------------------------------------------- pages (AppTest)

def _running_train_run(tiny_llama_dir):
    """A training run as its worker leaves it mid-run: status.json `running` (this process stands in for the worker, so
    the pid is alive and the heartbeat fresh), two logged steps."""
    run_dir = runs.create_run_from_dict({"kind": "train", "name": "live", "model": {"kind": "local", "ref": str(tiny_llama_dir)},
                                         "max_steps": 5})
    now = time.time()
    write_status(run_dir, RunStatus(state="running", kind="train", pid=os.getpid(), started_at=now - 5, heartbeat=now,
                                    progress=0.4, message="step 2/5", attempts=1))
    append_metrics(run_dir / runs.METRICS_FILE, {"event": "start", "step": 0, "total_steps": 5, "resumed_from": 0})
    for step in (1, 2):
        append_metrics(run_dir / runs.METRICS_FILE, {"step": step, "loss": 3.0 / step, "tokens_seen": 50 * step, "elapsed_s": 2.0 * step})
    return run_dir


def test_the_train_header_shows_the_state_the_live_panel_reads(workspace, tiny_llama_dir):
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT

    run_dir = _running_train_run(tiny_llama_dir)
    at = AppTest.from_file(str(ROOT / "app_pages" / "train.py"), default_timeout=180)
    at.session_state["active_model"] = {"kind": "local", "ref": str(tiny_llama_dir)}
    at.session_state["train_run_id"] = str(run_dir)
    at.query_params["run"] = run_dir.name
    at.run()
    assert not at.exception, at.exception
    header = next(c.value for c in at.caption if c.value.startswith("Headless:"))
    assert "state ⏳ running" in header, header
    assert any(m.value.startswith("**⏳ running**") for m in at.markdown), "the live status line"
    assert "queued" not in header
    assert at.dataframe[-1].value["status"].tolist() == ["⏳ running"], "the runs table under the picker"

    status = read_status(run_dir)  # the worker moves on: the next render shows the new state in all three places
    status.state, status.message = "stopping", "stopping after the current step"
    write_status(run_dir, status)
    at.run()
    header = next(c.value for c in at.caption if c.value.startswith("Headless:"))
    assert "state ⏳ stopping" in header and at.dataframe[-1].value["status"].tolist() == ["⏳ stopping"]


def _train_run_with_adapter(tiny_llama_dir, name: str):
    run_dir = runs.create_run_from_dict({"kind": "train", "name": name, "model": {"kind": "local", "ref": str(tiny_llama_dir)}})
    (run_dir / "adapter").mkdir()
    (run_dir / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    write_status(run_dir, RunStatus(state="succeeded", kind="train", progress=1.0, started_at=time.time() - 9, finished_at=time.time()))
    return run_dir


def test_evaluate_it_opens_its_own_runs_report_not_the_previous_one(workspace, tiny_llama_dir):
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT
    from pages_common import EVAL_HANDOFF

    first, second = _train_run_with_adapter(tiny_llama_dir, "first"), _train_run_with_adapter(tiny_llama_dir, "second")
    evaluation = runs.create_run_from_dict({"kind": "evaluate", "base": {"kind": "local", "ref": str(tiny_llama_dir)},
                                            "variants": [{"label": "first", "model": {"adapter": str(first / "adapter")}}]})
    write_status(evaluation, RunStatus(state="succeeded", kind="evaluate", progress=1.0))

    def evaluate_page(handed_over) -> AppTest:
        at = AppTest.from_file(str(ROOT / "app_pages" / "evaluate.py"), default_timeout=120)
        at.session_state["active_model"] = {"kind": "local", "ref": str(tiny_llama_dir)}
        at.session_state["eval_run"] = str(evaluation)  # the report this session looked at before
        at.session_state["eval_adapter"] = at.session_state[EVAL_HANDOFF] = str(handed_over / "adapter")  # "📊 Evaluate it"
        return at.run()

    at = evaluate_page(second)
    assert not at.exception, at.exception
    assert any(f"No evaluation of run {second.name} yet" in i.value for i in at.info), [i.value for i in at.info]
    assert "Evaluation run" not in [s.label for s in at.selectbox], "the first run's report is not shown as the second's"
    assert at.multiselect(key="eval_adapters").value == [f"{second.name} (succeeded)"], "the form is ready for the second"

    at = evaluate_page(first)
    assert not any("No evaluation of" in i.value for i in at.info)
    assert next(s for s in at.selectbox if s.label == "Evaluation run").value == str(evaluation), "its own report"


def test_the_evaluate_button_hands_over_its_model(workspace, tmp_path):
    from streamlit.testing.v1 import AppTest

    def page(folder: str) -> None:
        from pages_common import send_model_buttons

        send_model_buttons(folder, "probe")

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    at = AppTest.from_function(page, args=(str(tmp_path / "adapter"),), default_timeout=60).run()
    at.button(key="probe_to_eval").click().run()
    from pages_common import EVAL_HANDOFF

    assert at.session_state[EVAL_HANDOFF] == str(tmp_path / "adapter") == at.session_state["eval_adapter"]
