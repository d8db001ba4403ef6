"""The job protocol: status transitions, metrics, stop, resume, dead workers, queueing, failures."""
from __future__ import annotations

import os
import signal
import time

import pytest
import yaml

from core import runs
from core.runs.metrics import append_metrics, read_new_metrics
from core.runs.status import RunStatus, read_status, write_status


def _selftest(workspace, **fields):
    return runs.create_run_from_dict({"kind": "selftest", **fields}, name="probe")


def _wait_state(run_dir, states, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = read_status(run_dir)
        if status.state in states:
            return status
        time.sleep(0.05)
    raise AssertionError(f"never reached {states}: {read_status(run_dir)}")


def test_success_writes_status_metrics_and_log(workspace):
    run_dir = _selftest(workspace, steps=5, step_seconds=0.01)
    assert read_status(run_dir).state == "created"
    runs.launch(run_dir)
    final = runs.wait(run_dir, timeout=60)
    assert final.state == "succeeded", final.error
    assert final.exit_code == 0 and final.progress == 1.0
    assert final.result == {"steps_done": 5, "resumed_from": 0}
    rows = runs.read_all_metrics(run_dir / runs.METRICS_FILE)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert "running selftest job" in runs.log_tail(run_dir)


def test_stop_then_resume_continues_from_saved_step(workspace):
    run_dir = _selftest(workspace, steps=400, step_seconds=0.02)
    runs.launch(run_dir)
    _wait_state(run_dir, {"running"})
    time.sleep(0.5)
    assert runs.stop(run_dir)
    stopped = runs.wait(run_dir, timeout=30)
    assert stopped.state == "stopped"
    done = stopped.result["steps_done"]
    assert 0 < done < 400
    runs.relaunch(run_dir, {"steps": done + 5})
    final = runs.wait(run_dir, timeout=60)
    assert final.state == "succeeded"
    assert final.result == {"steps_done": done + 5, "resumed_from": done}
    assert final.attempts == 2
    assert final.earlier_seconds == pytest.approx(stopped.elapsed), "the stopped launch's time is carried into the run"
    assert final.run_seconds == pytest.approx(stopped.elapsed + final.elapsed) and final.run_seconds > final.elapsed
    steps = [r["step"] for r in runs.read_all_metrics(run_dir / runs.METRICS_FILE)]
    assert steps == list(range(1, done + 6))


@pytest.mark.parametrize("fail_with, expected", [("error", "ValueError: injected failure at step 3"), ("oom", "Out of memory")])
def test_failures_end_as_failed_with_message(workspace, fail_with, expected):
    run_dir = _selftest(workspace, steps=10, step_seconds=0.01, fail_at=3, fail_with=fail_with)
    runs.launch(run_dir)
    final = runs.wait(run_dir, timeout=60)
    assert final.state == "failed"
    assert expected in final.error
    assert "Traceback" in runs.log_tail(run_dir)
    if fail_with == "oom":
        assert "gradient checkpointing" in final.error and "QLoRA" in final.error


def test_killed_worker_is_detected_and_recorded_failed_once(workspace):
    from core.runs.status import read_raw_status

    run_dir = _selftest(workspace, steps=1000, step_seconds=0.05)
    pid = runs.launch(run_dir)
    _wait_state(run_dir, {"running"})
    os.kill(pid, signal.SIGKILL)
    status = _wait_state(run_dir, {"failed"}, timeout=15)
    assert "ended without recording a result" in status.error
    on_disk = read_raw_status(run_dir)  # the first reader wrote it down: status.json no longer says running
    assert on_disk.state == "failed" and on_disk.error == status.error and on_disk.pid == pid
    written = (run_dir / "status.json").stat().st_mtime_ns
    time.sleep(0.05)
    assert read_status(run_dir).state == "failed" and (run_dir / "status.json").stat().st_mtime_ns == written  # once


def test_a_finished_worker_leaves_no_zombie(workspace):
    from core.runs.status import read_raw_status

    run_dir = _selftest(workspace, steps=1, step_seconds=0.0)
    pid = runs.launch(run_dir)
    deadline = time.time() + 30
    while not read_raw_status(run_dir).is_final and time.time() < deadline:  # raw reads: nothing here reaps
        time.sleep(0.05)
    while os.path.exists(f"/proc/{pid}") and time.time() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}"), open(f"/proc/{pid}/stat").read()  # reaped, not <defunct>


def test_stale_heartbeat_is_failed(workspace, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_status(run_dir, RunStatus(state="running", kind="train", pid=os.getpid(), heartbeat=time.time() - 120))
    status = read_status(run_dir)
    assert status.state == "failed" and "heartbeats" in status.error


def test_second_job_waits_queued(workspace):
    first = _selftest(workspace, steps=60, step_seconds=0.05)
    second = _selftest(workspace, steps=2, step_seconds=0.01)
    runs.launch(first)
    _wait_state(first, {"running"})
    runs.launch(second)
    time.sleep(1.0)
    assert read_status(second).state == "queued"
    assert read_status(first).state == "running"
    assert runs.wait(first, 60).state == "succeeded"
    assert runs.wait(second, 60).state == "succeeded"


def test_stop_while_queued(workspace):
    first = _selftest(workspace, steps=60, step_seconds=0.05)
    second = _selftest(workspace, steps=2)
    runs.launch(first)
    _wait_state(first, {"running"})
    runs.launch(second)
    _wait_state(second, {"queued"})
    time.sleep(0.5)
    runs.stop(second)
    assert runs.wait(second, 30).state == "stopped"
    runs.stop(first)
    assert runs.wait(first, 30).state == "stopped"


def _hand_written_run(spec_text: str):
    run_dir = _selftest(None, steps=1)
    (run_dir / "spec.yaml").write_text(spec_text)  # as a user editing spec.yaml by hand would
    return run_dir


@pytest.mark.parametrize("spec_text, expected", [
    ("kind: bogus\n", "unknown job kind 'bogus'; known kinds: train, evaluate"),
    ("kind: selftest\nsteps: 2\nstpes: 3\n", "spec.yaml (selftest): unknown field(s) in SelftestSpec: stpes"),
    ("kind: selftest\nfail_with: segfault\n", "fail_with: 'segfault' is not one of error, oom, exit"),
    ("kind: selftest\nsteps: -1\n", "steps: -1 is below the minimum 0"),
])
def test_an_invalid_spec_fails_the_run_one_way_naming_the_field(workspace, spec_text, expected):
    run_dir = _hand_written_run(spec_text)
    runs.launch(run_dir)
    final = runs.wait(run_dir, 30)
    assert final.state == "failed" and expected in final.error, final.error
    assert final.exit_code == 2 and final.message == "invalid spec"
    assert final.kind  # the status keeps the run's kind and creation time
    assert not (run_dir / "result.json").exists() and not (run_dir / runs.METRICS_FILE).exists()
    assert "invalid spec" in runs.log_tail(run_dir)


def test_creating_or_updating_a_run_with_a_bad_spec_is_refused_before_anything_is_written(workspace):
    with pytest.raises(runs.InvalidSpec, match="unknown job kind"):
        runs.create_run_from_dict({"kind": "bogus"})
    with pytest.raises(runs.InvalidSpec, match="fine-tuned variant"):
        runs.create_run_from_dict({"kind": "evaluate"})
    assert runs.list_runs() == []
    run_dir = _selftest(workspace, steps=1)
    before = (run_dir / "spec.yaml").read_text()
    with pytest.raises(runs.InvalidSpec, match="steps: expected int"):
        runs.relaunch(run_dir, {"steps": "many"})
    assert (run_dir / "spec.yaml").read_text() == before and read_status(run_dir).state == "created"


def test_every_registered_kind_names_its_spec_run_function_and_result_file():
    for name, job in runs.JOBS.items():
        cls = job.spec_class()
        assert cls.kind == name and callable(job.run_function()), name
        assert job.result_file.endswith(".json") and "/" not in job.result_file
        assert callable(cls.from_dict)


def test_the_result_file_is_written_and_read_through_the_registry(workspace):
    run_dir = _selftest(workspace, steps=2, step_seconds=0.0)
    assert runs.read_result(run_dir) is None
    runs.launch(run_dir)
    assert runs.wait(run_dir, 60).state == "succeeded"
    assert runs.result_path(run_dir) == run_dir / runs.JOBS["selftest"].result_file
    assert runs.read_result(run_dir) == {"steps_done": 2, "resumed_from": 0}


def test_a_job_function_gets_the_parsed_spec(workspace, tmp_path):
    from core.runs.jobs import JobContext
    from core.runs.selftest import SelftestSpec, run

    ctx = JobContext.in_process(tmp_path / "run", {"kind": "selftest", "steps": "3", "step_seconds": 0})
    assert ctx.spec == SelftestSpec(steps=3, step_seconds=0.0) and ctx.spec_data["kind"] == "selftest"
    assert run(ctx) == {"steps_done": 3, "resumed_from": 0} == ctx.read_result()


def test_list_runs_and_command(workspace, tiny_llama_dir):
    a = _selftest(workspace, steps=1)
    runs.create_run_from_dict({"kind": "evaluate", "variants": [{"label": "x", "model": {"kind": "local", "ref": str(tiny_llama_dir)}}]},
                              name="other")
    assert {r.kind for r in runs.list_runs()} == {"selftest", "evaluate"}
    assert [r.path for r in runs.list_runs("selftest")] == [a]
    assert runs.run_command(a).startswith("python -m core.runs.worker")
    assert yaml.safe_load((a / "spec.yaml").read_text())["kind"] == "selftest"


def test_metrics_tail_reads_only_complete_new_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    append_metrics(path, {"step": 1})
    rows, offset = read_new_metrics(path, 0)
    assert [r["step"] for r in rows] == [1]
    with open(path, "a") as handle:
        handle.write('{"step": 2}\n{"step": 3')  # a half-written line
    rows, offset2 = read_new_metrics(path, offset)
    assert [r["step"] for r in rows] == [2]
    with open(path, "a") as handle:
        handle.write("}\n")
    rows, _ = read_new_metrics(path, offset2)
    assert [r["step"] for r in rows] == [3]


def test_readme_lists_the_registered_job_kinds():
    """README's table of job kinds is the registry's own (python -m core.runs.jobs prints it)."""
    from conftest import ROOT
    from core.runs.jobs import jobs_markdown

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.split("<!-- jobs -->\n")[1].split("\n<!-- /jobs -->")[0] == jobs_markdown()


def test_what_a_kind_produces_is_said_once_by_the_registry(workspace):
    """The card's artifacts, the export's sources and the Export page's choices all read JobKind.outputs / model_output."""
    from core.export.results import export_sources
    from core.runs.card import build_card
    from core.runs.jobs import JOBS, model_kinds
    from core.runs.status import RunStatus, write_status

    assert model_kinds() == ("train", "merge", "prune", "distill")
    assert all(job.model_output in job.outputs for job in JOBS.values() if job.model_output)
    run_dir = runs.create_run_from_dict({"kind": "prune", "model": {"kind": "embedded"}})
    (run_dir / "pruned").mkdir()
    write_status(run_dir, RunStatus(kind="prune", state="succeeded"))
    card = build_card(run_dir.name)
    assert [a["name"] for a in card["artifacts"]] == ["pruned"]
    assert str(run_dir) in export_sources().values()


def test_every_job_spec_is_a_run_spec_and_round_trips_its_defaults():
    """One base (core.runs.spec.RunSpec) gives every job's spec from_dict / to_dict and the limit check."""
    from core.runs.jobs import JOBS
    from core.runs.spec import RunSpec

    for job in JOBS.values():
        cls = job.spec_class()
        assert issubclass(cls, RunSpec) and cls.kind == job.name, job.name
    spec = JOBS["prune"].spec_class().from_dict({"sparsity": "0.25"})
    assert spec.to_dict()["kind"] == "prune" and spec.sparsity == 0.25
    with pytest.raises(ValueError, match="sparsity"):
        JOBS["prune"].spec_class().from_dict({"sparsity": 5})
