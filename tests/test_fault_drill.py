"""Fault drill (issue 25 item 2): every registered job kind is killed (SIGKILL, as kill -9 or the OOM killer would) at
the stages it reports, through the test hook core.workspace.fault_point ($WORKBENCH_FAULT_AT), never after a sleep.
After each kill: the run reads `failed` naming the last stage, nothing half-written is visible, what was complete is
intact, and a restart resumes or retries. Plus: disk full during a save, one run launched twice, an app restart while
three jobs run, a run folder deleted under an open page, corrupted status.json / metrics.jsonl.

Each test records its row of the drill table (kind x fault -> outcome) in .workbench-test/fault-drill/;
`PYTHONPATH=. python tests/test_fault_drill.py` prints the table.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from inprocess import work_here

from core import runs
from core.runs.jobs import JOBS, read_result, result_path
from core.runs.metrics import append_metrics, read_all_metrics
from core.runs.status import METRICS_FILE, STATUS_FILE, read_status
from core.runs.worker import Worker
from core.workspace import FAULT_ENV

ROOT = Path(__file__).resolve().parents[1]
DRILL_DIR = ROOT / ".workbench-test" / "fault-drill"
RUN_FILES = {"spec.yaml", STATUS_FILE, "worker.log", METRICS_FILE, "card.json", "README.md"}


def record(kind: str, fault: str, outcome: str, detail: str = "") -> None:
    """One row of the drill table (outcome: recovered / failed cleanly / lost something)."""
    DRILL_DIR.mkdir(parents=True, exist_ok=True)
    name = "".join(c if c.isalnum() else "-" for c in f"{kind}-{fault}")[:120]
    (DRILL_DIR / f"{name}.json").write_text(json.dumps({"kind": kind, "fault": fault, "outcome": outcome, "detail": detail}))


def chat_rows(n: int = 8) -> str:
    return "".join(json.dumps({"messages": [{"role": "user", "content": f"Which room is meeting M{i:02d} in?"},
                                            {"role": "assistant", "content": f"Meeting M{i:02d} is in room {100 + 7 * i}."}]}) + "\n"
                   for i in range(n))


# Every registered kind: a spec that parses (for the kill at the worker's first stage) and the deeper stages
# drilled by name in the tests below. A new kind without a line here fails test_every_registered_kind_has_a_drill.
def drill_specs(model: Path, data: Path, train_run: Path) -> dict[str, dict]:
    local = {"kind": "local", "ref": str(model)}
    return {
        "train": {"model": local, "dataset": str(data), "max_steps": 2},
        "evaluate": {"base": local, "variants": [{"label": "ft", "model": local}]},
        "merge": {"base": local, "models": [{"source": local, "weight": 1.0}]},
        "prune": {"model": local},
        "distill": {"teacher": local},
        "teacher_answers": {"teacher": local},
        "distill_compare": {},
        "export": {"source_run": str(train_run)},
        "download": {"model": {"kind": "hub", "ref": "org/model"}},
        "feature_extraction": {"model": local},
        "method_comparison": {},
        "curate": {"dataset": str(data), "exact": {}},
        "answer_loss": {"dataset": str(data), "model": local},
        "baseline": {},
        "rag_index": {},
        "raft": {},
        "raft_eval": {"raft_model": str(model)},
        "selftest": {"steps": 3},
        "judge": {"model": local, "baseline": local, "judge": local, "samples": 2, "max_new_tokens": 4},
    }


DEEP_DRILLS = {  # kind -> the stages killed by a real launched worker in this module (the rest: the first stage)
    "selftest": ["step 3/10", "metrics line cut"],
    "train": ["write:adapter (mid-save)"],
    "merge": ["write:merged (mid-write)", "disk full (RLIMIT_FSIZE)"],
    "curate": ["write:curation.json (mid-write)"],
    "export": ["write:<name>-F16.gguf (mid-GGUF)"],
    "evaluate": ["write:report.json (mid-report)"],
    # mid-file: tests/test_hub.py::test_interrupted_download_resumes_where_it_stopped kills the worker once 2 MB are in
    # (a progress condition, not a sleep) and checks the resumed byte range and the blob's hash
    "download": ["mid-file (test_hub.py)"],
}


@pytest.fixture
def drill_inputs(workspace, tmp_path):
    data = tmp_path / "rooms.jsonl"
    data.write_text(chat_rows())
    model = tmp_path / "no-model"  # the first-stage kill happens before any model is read
    model.mkdir()
    train_run = runs.create_run_from_dict({"kind": "train", "dataset": str(data)}, name="export-source")
    return model, data, train_run


def visible_artifacts(run_dir: Path) -> set[str]:
    """Files and folders a reader could take for results (temp files start with a dot)."""
    return {p.name for p in run_dir.iterdir() if not p.name.startswith(".")} - RUN_FILES


def fork_worker(run_dir: Path, fault: str) -> int:
    """A real worker process (forked: the spec modules are imported already, so it costs milliseconds) with the
    fault hook set; it never returns into pytest."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            os.setsid()
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            os.environ[FAULT_ENV] = fault
            code = Worker(run_dir).run()
        finally:
            os._exit(code)
    return pid


def reap(pid: int, timeout: float = 60) -> int:
    """The wait status of a forked worker; a child that hangs is killed and the test fails."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            return code
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"forked worker {pid} did not reach its fault point in {timeout:.0f} s")


def launch_with_fault(run_dir: Path, fault: str | None, monkeypatch) -> int:
    if fault:
        monkeypatch.setenv(FAULT_ENV, fault)
    else:
        monkeypatch.delenv(FAULT_ENV, raising=False)
    try:
        return runs.launch(run_dir)
    finally:
        monkeypatch.delenv(FAULT_ENV, raising=False)


def wait_final(run_dir: Path, timeout: float = 240):
    status = runs.wait(run_dir, timeout=timeout, poll=0.1)
    return status


def assert_killed_at(run_dir: Path, stage: str):
    status = read_status(run_dir)
    assert status.state == "failed", (status.state, status.error, runs.log_tail(run_dir))
    assert "ended without recording a result" in status.error, status.error
    assert f"Last stage it reported: '{stage}" in status.error, status.error
    assert read_status(run_dir).state == "failed", "a second reader sees the same record"
    return status


# ---------------------------------------------------------------- every kind, at its first stage


def test_every_registered_kind_has_a_drill(drill_inputs):
    specs = drill_specs(*drill_inputs)
    assert set(specs) == set(JOBS), f"kinds without a fault-drill entry: {sorted(set(JOBS) - set(specs))}"
    assert set(DEEP_DRILLS) <= set(JOBS)


def test_every_kind_killed_at_its_first_stage_is_failed_naming_it_and_retries(drill_inputs):
    specs = drill_specs(*drill_inputs)
    for job in JOBS.values():
        job.spec_class()  # import before forking
    run_dirs = {kind: runs.create_run_from_dict({"kind": kind, **spec}, name=f"drill-{kind}") for kind, spec in specs.items()}
    for attempt in (1, 2):  # the second is the retry: the dead run is accepted again and killed at the same stage
        for run_dir in run_dirs.values():  # one after the other: concurrent exclusive kinds would only queue on the lock
            pid = fork_worker(run_dir, "started")
            code = reap(pid)
            assert os.WIFSIGNALED(code) and os.WTERMSIG(code) == signal.SIGKILL, f"worker {pid} was not killed at 'started' ({code})"
        for kind, run_dir in run_dirs.items():
            status = assert_killed_at(run_dir, "started")
            assert status.attempts == attempt, (kind, status.attempts)
            assert not result_path(run_dir, kind).exists() and read_result(run_dir, kind) is None, kind
            assert not visible_artifacts(run_dir), (kind, visible_artifacts(run_dir))
    for kind in specs:
        record(kind, "SIGKILL at 'started'", "failed cleanly", "failed naming the stage; no result; a retry is accepted")


# ---------------------------------------------------------------- real launched workers, deeper stages


def test_selftest_killed_mid_step_then_a_cut_metrics_line_then_resumed(workspace, monkeypatch):
    from core.runs.selftest import SelftestSpec

    run_dir = runs.create_run(SelftestSpec(steps=10, step_seconds=0.0))
    launch_with_fault(run_dir, "step 3/10", monkeypatch)
    wait_final(run_dir)
    assert_killed_at(run_dir, "step 3/10")
    assert [r["step"] for r in read_all_metrics(run_dir / METRICS_FILE)] == [1, 2, 3], "rows written before the kill are intact"
    assert json.loads((run_dir / "selftest_state.json").read_text()) == {"step": 3}
    assert read_result(run_dir) is None
    record("selftest", "SIGKILL at 'step 3/10'", "recovered", "resumed from step 3")

    with open(run_dir / METRICS_FILE, "a") as handle:  # a worker killed in the middle of a metrics line
        handle.write('{"step": 4, "lo')
    pid = launch_with_fault(run_dir, None, monkeypatch)
    assert pid
    status = wait_final(run_dir)
    assert status.state == "succeeded", status.error
    assert status.result == {"steps_done": 10, "resumed_from": 3}
    assert status.attempts == 2
    assert [r["step"] for r in read_all_metrics(run_dir / METRICS_FILE)] == list(range(1, 11)), "the cut line costs only itself"
    record("selftest", "metrics line cut mid-write", "recovered", "the cut row is skipped, the next rows are read")


@pytest.fixture
def train_data(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text(chat_rows(12))
    return path


def test_train_killed_mid_save_resumes_from_its_last_checkpoint(workspace, tiny_llama_dir, train_data, monkeypatch):
    """Mid-save: every step done, the checkpoints written, the worker killed between the adapter's temp folder and
    its rename. (Mid-step kills of a train worker: test_train.py's stop / resume / kill test.)"""
    from core.train.spec import TrainSpec

    spec = TrainSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, dataset=str(train_data), max_steps=4, batch_size=2,
                     max_length=64, eval_fraction=0.0, learning_rate=1e-2, warmup_ratio=0.0, lora_r=4, lora_alpha=8, save_steps=2,
                     eval_on_start=False, logging_steps=1)
    run_dir = runs.create_run(spec)
    launch_with_fault(run_dir, "write:adapter", monkeypatch)
    wait_final(run_dir)
    assert_killed_at(run_dir, "saving")
    assert not (run_dir / "adapter").exists(), "a half-saved adapter is never visible"
    assert read_result(run_dir) is None
    assert list(run_dir.glob(".adapter.*.tmp")), "the killed save left its hidden temp folder"
    checkpoint = run_dir / "checkpoints" / "checkpoint-4"
    assert (checkpoint / "trainer_state.json").is_file(), "the checkpoints written before the kill are intact"
    saved = {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()}

    work_here(run_dir)  # the retry needs no kill: in this process, through the same Worker
    status = wait_final(run_dir)
    assert status.state == "succeeded", status.error + runs.log_tail(run_dir)
    assert status.attempts == 2
    card = read_result(run_dir)
    assert card["resumed_from_step"] == 4, "the restart resumed from the last complete checkpoint"
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert not list(run_dir.glob(".adapter.*")), "the retry removed what the killed attempt left behind"
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()} == saved
    starts = [r["resumed_from"] for r in read_all_metrics(run_dir / METRICS_FILE) if r.get("event") == "start"]
    assert starts == [0]  # every step was done: the retry loads checkpoint-4 and saves, it trains nothing
    steps = card["final_metrics"]["global_step"]
    record("train", "SIGKILL mid-save (write:adapter)", "recovered" if steps == 4 else "recovered (+1 step)",
           f"resumed from checkpoint-4, adapter saved once; global_step {steps} of max_steps 4")
    if steps != 4:  # found by this drill (transformers checks max_steps only after a step): core/train/job.py _restore_finished
        pytest.fail(f"resuming from the checkpoint at max_steps trained one step more (global_step {steps})")


def perturbed_copy(model_dir: Path, target: Path) -> Path:
    """The tiny model with every weight nudged: a 'fine-tuned' model that differs from its base."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tuned = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    tuned.save_pretrained(target)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(target)
    return target


def _preexec_fsize(limit: int):
    def apply() -> None:
        os.setsid()
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_merge_killed_mid_write_and_disk_full_keep_the_earlier_merge(workspace, tiny_llama_dir, tmp_path, monkeypatch):
    pytest.importorskip("mergekit")
    from core.merge.spec import MergeSpec

    perturbed_copy(tiny_llama_dir, tmp_path / "tuned")
    spec = MergeSpec.from_dict({"base": {"kind": "local", "ref": str(tiny_llama_dir)}, "evaluate": False,
                                "models": [{"source": {"kind": "local", "ref": str(tmp_path / "tuned")}, "weight": 1.0}]})
    run_dir = runs.create_run(spec)
    work_here(run_dir)  # the earlier, complete merge (in this process: no kill needed)
    assert read_status(run_dir).state == "succeeded", read_status(run_dir).error
    merged = run_dir / "merged"
    before = {p.name: p.read_bytes() for p in merged.iterdir() if p.is_file()}

    launch_with_fault(run_dir, "write:merged", monkeypatch)
    wait_final(run_dir)
    assert_killed_at(run_dir, "merging")
    assert {p.name: p.read_bytes() for p in merged.iterdir() if p.is_file()} == before, "the earlier merge is intact"
    record("merge", "SIGKILL mid-write (write:merged)", "failed cleanly", "earlier merged/ intact")

    # disk full: the worker may write at most 1 MB per file (the merged weights are bigger)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(run_dir / "worker.log", "ab") as log:
        child = subprocess.Popen([sys.executable, "-m", "core.runs.worker", str(run_dir)], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=subprocess.STDOUT, preexec_fn=_preexec_fsize(1_000_000))
    assert child.wait(timeout=240) == 1
    status = read_status(run_dir)
    assert status.state == "failed" and status.error.startswith("Disk full"), status.error
    assert {p.name: p.read_bytes() for p in merged.iterdir() if p.is_file()} == before, "nothing half-written replaced the merge"
    assert visible_artifacts(run_dir) <= {"merged", "merge.yaml", "preflight.json", "result.json", "inputs"}, (
        "the earlier attempt's files only")
    record("merge", "disk full during the save (RLIMIT_FSIZE 1 MB)", "failed cleanly", status.error[:80])


def test_curate_killed_mid_write_of_its_result_leaves_the_dataset_and_retries(workspace, tmp_path, monkeypatch):
    from core.data.curate_job import CurateSpec

    data = tmp_path / "rows.jsonl"
    data.write_text(chat_rows(20) + chat_rows(3))  # three exact duplicates
    original = data.read_bytes()
    run_dir = runs.create_run(CurateSpec(dataset=str(data), exact={}))
    launch_with_fault(run_dir, "write:curation.json", monkeypatch)
    wait_final(run_dir)
    status = read_status(run_dir)
    assert status.state == "failed" and "Last stage it reported" in status.error, status.error
    assert not (run_dir / "curation.json").exists(), "a half-written result is never visible"
    assert data.read_bytes() == original
    work_here(run_dir)  # the retry needs no kill: in this process, through the same Worker
    status = wait_final(run_dir)
    assert status.state == "succeeded", status.error
    assert read_result(run_dir) is not None and data.read_bytes() == original
    record("curate", "SIGKILL mid-write (write:curation.json)", "recovered", "retried; dataset untouched")


def test_export_killed_mid_gguf_shows_no_gguf_and_retries(workspace, tiny_llama_dir, monkeypatch):
    from core.export.spec import ExportSpec

    run_dir = runs.create_run(ExportSpec(name="drill", model={"kind": "local", "ref": str(tiny_llama_dir)},
                                         formats=["gguf_f16"], validate=False))
    launch_with_fault(run_dir, "write:drill-F16.gguf", monkeypatch)  # the tensors are written, the rename is next
    wait_final(run_dir)
    status = read_status(run_dir)
    assert status.state == "failed" and "Last stage it reported" in status.error, status.error
    assert not [p for p in run_dir.rglob("*.gguf") if not p.name.startswith(".")], "a half-written GGUF is never visible"
    assert list(run_dir.rglob(".drill-F16.gguf.partial")), "the kill left the hidden partial file"
    partial = read_result(run_dir)  # the export's progress record: marked not done, listing no GGUF
    assert partial is None or (partial["done"] is False and not [a for a in partial["artifacts"] if a["path"].endswith(".gguf")])
    work_here(run_dir)  # the retry needs no kill: in this process, through the same Worker
    status = wait_final(run_dir)
    assert status.state == "succeeded", status.error + runs.log_tail(run_dir)
    ggufs = [p for p in run_dir.rglob("*.gguf") if not p.name.startswith(".")]
    assert [p.name for p in ggufs] == ["drill-F16.gguf"] and read_result(run_dir)["done"] is True
    assert not list(run_dir.rglob("*.partial"))
    record("export", "SIGKILL mid-GGUF (write:<name>-F16.gguf)", "recovered", "no .gguf visible after the kill; retried")


def test_evaluate_killed_mid_report_shows_no_report_and_retries(workspace, tiny_llama_dir, tmp_path, monkeypatch):
    from test_evaluate import TINY_SIZES

    local = {"kind": "local", "ref": str(tiny_llama_dir)}
    tuned = {"kind": "local", "ref": str(perturbed_copy(tiny_llama_dir, tmp_path / "tuned"))}
    run_dir = runs.create_run_from_dict({"kind": "evaluate", "name": "drill", "base": local,
                                         "variants": [{"label": "fine-tuned", "model": tuned}], **TINY_SIZES})
    launch_with_fault(run_dir, "write:report.json", monkeypatch)
    wait_final(run_dir)
    status = read_status(run_dir)
    assert status.state == "failed" and "Last stage it reported" in status.error, status.error
    assert not (run_dir / "report.json").exists() and read_result(run_dir) is None, "a half-written report is never visible"
    work_here(run_dir)  # the retry needs no kill: in this process, through the same Worker
    status = wait_final(run_dir)
    assert status.state == "succeeded", status.error + runs.log_tail(run_dir)
    assert [m["label"] for m in read_result(run_dir)["models"]] == ["base", "fine-tuned"]
    record("evaluate", "SIGKILL mid-report (write:report.json)", "recovered", "no report visible after the kill; retried")


# ---------------------------------------------------------------- sessions, restarts, deletions, corruption


def test_one_run_launched_from_two_sessions_starts_one_worker_and_tells_the_other(workspace):
    from core.runs.selftest import SelftestSpec

    run_dir = runs.create_run(SelftestSpec(steps=2000, step_seconds=0.02))
    outcomes: list = []
    barrier = threading.Barrier(2)

    def session() -> None:
        barrier.wait()
        try:
            outcomes.append(runs.launch(run_dir))
        except runs.AlreadyActive as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=session) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    pids = [o for o in outcomes if isinstance(o, int)]
    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert len(pids) == 1 and len(refused) == 1, outcomes
    assert "already" in str(refused[0]) and str(pids[0]) in str(refused[0])

    deadline = time.time() + 60
    while read_status(run_dir).state != "running" and time.time() < deadline:  # the first holds the exclusive lock
        time.sleep(0.1)
    other = runs.create_run(SelftestSpec(steps=1, step_seconds=0.0))  # a second exclusive job waits, told for whom
    runs.launch(other)
    deadline = time.time() + 30
    while "held by run" not in read_status(other).message and time.time() < deadline:
        time.sleep(0.1)
    assert read_status(other).state == "queued" and run_dir.name in read_status(other).message
    assert runs.stop(run_dir)
    assert runs.wait(run_dir, timeout=60).state == "stopped"
    assert runs.wait(other, timeout=60).state == "succeeded"
    assert read_status(run_dir).attempts == 1
    record("selftest", "launched twice from two sessions", "recovered", "one worker; the other refused with the pid")


def test_app_restart_while_three_jobs_run_reattaches(workspace):
    from core.runs.selftest import SelftestSpec

    run_dirs = [runs.create_run(SelftestSpec(steps=30, step_seconds=0.05, name=f"r{i}")) for i in range(3)]
    # the "app" that launches them is a process that exits at once (as a restarted Streamlit server does)
    code = "import sys; from core import runs; [runs.launch(p) for p in sys.argv[1:]]"
    subprocess.run([sys.executable, "-c", code, *map(str, run_dirs)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True)
    seen = {r.path: r.status for r in runs.list_runs("selftest")}  # a fresh reader
    assert all(seen[p].is_active or seen[p].state == "succeeded" for p in run_dirs), {p.name: s.state for p, s in seen.items()}
    assert sum(seen[p].is_active for p in run_dirs) >= 2
    for run_dir in run_dirs:
        assert runs.wait(run_dir, timeout=90).state == "succeeded"
    assert {r.status.state for r in runs.list_runs("selftest")} == {"succeeded"}
    record("selftest", "app restarted while three jobs run", "recovered", "a fresh reader saw all three, then finished")


def test_corrupted_status_and_metrics_are_reported_and_skipped(workspace):
    from core.runs.selftest import SelftestSpec

    run_dir = runs.create_run(SelftestSpec())
    (run_dir / STATUS_FILE).write_text('{"state": "running", "pid": 12')  # truncated JSON
    status = read_status(run_dir)
    assert status.state == "failed" and "status.json of this run is unreadable" in status.error
    assert [r.status.state for r in runs.list_runs()] == ["failed"]
    (run_dir / METRICS_FILE).write_bytes(b'{"step": 1}\n{"step": 2, "lo\n7\n\xff\xfe\n{"step": 3}\n{"step": 4')
    assert [r["step"] for r in read_all_metrics(run_dir / METRICS_FILE)] == [1, 3]
    append_metrics(run_dir / METRICS_FILE, {"step": 5})
    assert [r["step"] for r in read_all_metrics(run_dir / METRICS_FILE)] == [1, 3, 5]
    runs.launch(run_dir)  # a corrupted record does not block a relaunch
    assert runs.wait(run_dir, timeout=60).state == "succeeded"
    record("selftest", "corrupted status.json / metrics.jsonl line", "recovered", "reported as failed / skipped; relaunch works")


def test_a_hung_worker_reads_failed_naming_its_last_stage(workspace):
    from core.runs.selftest import SelftestSpec
    from core.runs.status import STALE_AFTER_SECONDS, RunStatus, write_status

    run_dir = runs.create_run(SelftestSpec())
    beat = time.time() - STALE_AFTER_SECONDS - 5
    write_status(run_dir, RunStatus(state="running", kind="selftest", pid=os.getpid(), heartbeat=beat, progress=0.4, message="step 4/10"))
    status = read_status(run_dir)  # alive (this process) but silent
    assert status.state == "failed" and "heartbeats" in status.error and "'step 4/10' (40% done)" in status.error, status.error
    record("selftest", "worker hung (alive, no heartbeat)", "failed cleanly", "failed naming the last stage")


def test_run_folder_deleted_while_its_page_is_open(workspace, monkeypatch):
    import shutil

    from streamlit.testing.v1 import AppTest

    from core.runs.selftest import SelftestSpec

    keep = runs.create_run(SelftestSpec(name="kept"))
    gone = runs.create_run(SelftestSpec(name="gone"))
    at = AppTest.from_file(str(ROOT / "app_pages" / "runs.py"), default_timeout=60)
    at.session_state["runs_pick"] = gone.name
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="runs_pick").value == gone.name
    shutil.rmtree(gone)
    at.run()
    assert not at.exception, at.exception
    assert any(gone.name in w.value and "no longer exists" in w.value for w in at.warning), [w.value for w in at.warning]
    assert at.selectbox(key="runs_pick").value == keep.name

    def watching(run_dir: str) -> None:  # what every job page does with the run it shows (Train, Evaluate, Merge, ...)
        from pathlib import Path

        from pages_common import live_run

        live_run(Path(run_dir), lambda *args: None)

    page = AppTest.from_function(watching, args=(str(gone),), default_timeout=30)
    page.run()
    assert not page.exception, page.exception
    assert any("no longer exists" in w.value for w in page.warning), [w.value for w in page.warning]
    record("(pages)", "run folder deleted while its page is open", "failed cleanly", "a warning names the run; no exception")


if __name__ == "__main__":
    rows = [json.loads(p.read_text()) for p in sorted(DRILL_DIR.glob("*.json"))]
    width = max((len(r["kind"]) for r in rows), default=4)
    for row in rows:
        print(f"{row['kind']:<{width}}  {row['fault']:<48}  {row['outcome']:<15}  {row['detail']}")
