"""core.runs.eta: a job's size, this machine's measurements from finished runs, the prediction, the 'machine busy' note."""
from __future__ import annotations

import time

import pytest

from core import runs
from core.runs.eta import Measurement, duration_text, estimate, job_size, machine_busy, measurements, predict
from core.runs.status import RunStatus, write_status


def _m(units: float, seconds: float) -> Measurement:
    return Measurement("r", units, seconds)


def test_two_sizes_give_the_fixed_part_and_the_rate():
    measured = [_m(100, 30 + 0.5 * 100), _m(400, 30 + 0.5 * 400), _m(200, 30 + 0.5 * 200)]
    assert predict(1000, measured) == pytest.approx(30 + 0.5 * 1000)


def test_one_size_gives_a_rate_and_nothing_gives_none():
    assert predict(300, [_m(100, 20)]) == pytest.approx(60)
    assert predict(300, [_m(100, 20), _m(100, 40)]) == pytest.approx(90), "the median rate of equal sizes"
    assert predict(300, []) is None
    assert predict(0, [_m(100, 20)]) is None


def test_where_the_size_made_no_difference_the_duration_is_the_median_one():
    # measured on this machine: a baseline of 2 rows took 171.8 s and one of 4 rows 166.2 s (loading dominates);
    # a rate would have predicted 510 s for 8 rows, which took 165.9 s
    measured = [_m(96, 171.8), _m(192, 166.2)]
    assert predict(384, measured) == pytest.approx((171.8 + 166.2) / 2)


def test_a_line_through_a_negative_fixed_part_falls_back_to_the_median_rate():
    measured = [_m(100, 10), _m(200, 30)]  # the line would say -10 s + 0.2 s per unit
    assert predict(100, measured) == pytest.approx(100 * (0.1 + 0.15) / 2), "the median of 0.1 and 0.15 s per unit"


def test_sizes_follow_the_spec_and_the_counted_rows():
    train = {"batch_size": 2, "gradient_accumulation": 3, "max_steps": 5, "objective": "sft"}
    assert job_size("train", train) == 30
    epochs = {**train, "max_steps": 0, "num_epochs": 2}
    assert job_size("train", epochs) is None, "an epoch run needs the counted rows"
    assert job_size("train", epochs, rows=12) == 4 * 6, "ceil(12 * 2 / 6) = 4 steps of 6 sequences"
    assert job_size("train", epochs, result={"global_step": 7}) == 42, "a finished run: the steps it took"
    assert job_size("baseline", {"n": 4, "shots": [0, 3], "max_new_tokens": 10}) == 80
    assert job_size("baseline", {"n": 4, "shots": [0, 3], "max_new_tokens": 10, "documents": "docs/"}) == 120
    assert job_size("answer_loss", {}, rows=300) == 300 and job_size("answer_loss", {}) is None
    assert job_size("merge", {"sweep": [0, 0.5, 1], "evaluate": False}) == 3
    assert job_size("export", {}) is None, "a kind without a size: no estimate"


def _finished(kind: str, spec: dict, seconds: float, result: dict | None = None):
    run_dir = runs.create_run_from_dict({"kind": kind, **spec})
    now = time.time()
    write_status(run_dir, RunStatus(state="succeeded", kind=kind, started_at=now - seconds, finished_at=now, result=result or {}))
    return run_dir


def test_estimate_from_this_workspaces_finished_runs_of_the_same_model(workspace, tmp_path):
    model = {"kind": "local", "ref": str(tmp_path / "some-model")}  # only named: nothing is loaded
    spec = {"model": model, "eval_dataset": "assets/demo/eval.jsonl", "max_new_tokens": 10}
    first = estimate("baseline", {**spec, "n": 8, "shots": [0, 3]}, runs.list_runs())
    assert first.seconds is None and "no estimate yet" in first.text
    _finished("baseline", {**spec, "n": 2}, seconds=10 + 2 * 2 * 10 * 0.1)  # 40 units -> 14 s
    _finished("baseline", {**spec, "n": 4}, seconds=10 + 4 * 2 * 10 * 0.1)  # 80 units -> 18 s
    _finished("baseline", {**spec, "model": {"kind": "embedded"}, "n": 4}, seconds=999)  # another model: not compared
    failed = runs.create_run_from_dict({"kind": "baseline", **spec, "n": 8})
    write_status(failed, RunStatus(state="failed", kind="baseline", started_at=time.time() - 1, finished_at=time.time()))
    found = estimate("baseline", {**spec, "n": 8, "shots": [0, 3]}, runs.list_runs())
    assert len(found.measured) == 2
    assert found.seconds == pytest.approx(10 + 160 * 0.1, rel=0.02)
    assert found.text.startswith("⏱️ About 25 s on this machine") and "2 finished baseline runs" in found.text


def test_a_resumed_run_is_measured_over_all_its_launches(workspace):
    spec = {"model": {"kind": "embedded"}, "n": 4}
    run_dir = _finished("baseline", spec, seconds=10)
    status = runs.read_status(run_dir)
    status.earlier_seconds = 30.0  # a first launch that ran 30 s before Stop
    write_status(run_dir, status)
    (only,) = measurements("baseline", spec, runs.list_runs())
    assert only.seconds == pytest.approx(40, abs=0.1)


def test_machine_busy_counts_other_programs_not_our_own_jobs():
    assert machine_busy(0, load=0.3, cores=2) is None
    assert machine_busy(1, load=2.2, cores=2) is None, "our own running job explains the load"
    note = machine_busy(0, load=3.1, cores=2)
    assert note and note.startswith("Machine busy: load 3.1 on 2 cores") and "3.1 of it from other programs" in note
    assert "1.1 of it" in machine_busy(1, load=3.1, cores=2)


def test_duration_text():
    assert duration_text(12) == "10 s" and duration_text(89) == "90 s"
    assert duration_text(600) == "10 min" and duration_text(7200) == "2.0 h"


# ---------------------------------------------------------------- the estimate line before Start (AppTest)

def _captions(at) -> list[str]:
    return [c.value for c in at.caption]


def test_decide_baseline_shows_the_estimate_before_measure(workspace, tiny_llama_dir):
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT
    from core.models import ModelSource

    model = ModelSource("local", str(tiny_llama_dir)).as_dict()
    at = AppTest.from_file(str(ROOT / "app_pages" / "decide.py"), default_timeout=120)
    at.session_state["active_model"] = model
    at.run()
    assert not at.exception, at.exception
    assert any(c.startswith("First baseline job") and "no estimate yet" in c for c in _captions(at)), _captions(at)
    # a finished measurement of half the rows on this model: 8 rows x 3 conditions x 96 tokens take twice its 30 s
    _finished("baseline", {"model": model, "eval_dataset": "assets/handbook/questions.jsonl", "n": 4, "max_new_tokens": 96,
                           "documents": "assets/handbook/docs"}, seconds=30)
    at.run()
    assert any(c.startswith("⏱️ About 60 s on this machine") for c in _captions(at)), _captions(at)
    assert not at.button(key="decide_run_baseline").disabled


def test_a_recipe_handed_to_train_shows_its_time_estimate(workspace, tiny_llama_dir):
    import yaml
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT
    from pages_common import TRAIN_RECIPE

    at = AppTest.from_file(str(ROOT / "app_pages" / "train.py"), default_timeout=180)
    at.session_state["active_model"] = {"kind": "local", "ref": str(tiny_llama_dir)}
    at.session_state[TRAIN_RECIPE] = {"max_steps": 4, "batch_size": 2, "max_length": 128}  # what send_recipe_to_train leaves
    at.run()
    deadline = time.time() + 120
    while any("checking the data" in i.value for i in at.info) and time.time() < deadline:  # the background data check
        time.sleep(0.5)
        at.run()
    assert not at.exception, at.exception
    assert any(c.startswith("First train job") for c in _captions(at)), _captions(at)
    sent = yaml.safe_load(next(c.value for c in at.code if "kind: train" in c.value))
    _finished("train", {k: v for k, v in sent.items() if k != "kind"}, seconds=40, result={"global_step": 2})  # half the steps
    at.run()
    line = next(c for c in _captions(at) if c.startswith("⏱️ About"))
    assert line.startswith("⏱️ About 80 s on this machine (8 training sequences"), line
