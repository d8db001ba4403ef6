"""core.runs.eta for the jobs issue 29 item 7 left: Resume (a stopped run's own pace), RAG index and RAFT (corpus
bytes), Prune, Export (parameters converted) and Compare. The fits are checked on constructed finished-run summaries
(no job runs); the Train page's Resume / Train-more line and the Export page's line before Start by AppTest."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from core import runs
from core.runs import RunSummary
from core.runs.eta import estimate, job_size, own_pace, source_bytes
from core.runs.status import RunStatus, write_status
from core.train.trainer import resume_estimate_spec


def _summary(kind: str, spec: dict, seconds: float, result: dict | None = None, state: str = "succeeded") -> RunSummary:
    now = time.time()
    status = RunStatus(state=state, kind=kind, started_at=now - seconds, finished_at=now, result=result or {})
    return RunSummary(f"{kind}-{len(spec)}-{seconds}", Path("/nonexistent"), kind, kind, status, {"kind": kind, **spec})


def _line(units_seconds: list[tuple[float, float]]) -> tuple[float, float]:
    """The least-squares line through (units, seconds) points, computed here independently of eta.predict."""
    n = len(units_seconds)
    mx, my = sum(u for u, _ in units_seconds) / n, sum(s for _, s in units_seconds) / n
    slope = sum((u - mx) * (s - my) for u, s in units_seconds) / sum((u - mx) ** 2 for u, _ in units_seconds)
    return my - slope * mx, slope


# ---------------------------------------------------------------- export: parameters converted, across models

EXPORT = {"formats": ["merged", "gguf_f16"], "quantize": [], "merged_dtype": "float16", "validate": True, "verify_only": False}


def test_export_is_fitted_on_parameters_across_models_and_formats_are_a_variant():
    finished = [_summary("export", {**EXPORT, "source_run": "/runs/a"}, 20 + 1e-6 * 4e6, {"parameters": 4_000_000}),
                _summary("export", {**EXPORT, "source_run": "/runs/b"}, 20 + 1e-6 * 1.6e7, {"parameters": 16_000_000}),
                _summary("export", {**EXPORT, "formats": ["adapter"], "source_run": "/runs/c"}, 999, {"parameters": 8_000_000}),
                _summary("export", {**EXPORT, "verify_only": True, "source_run": "/runs/d"}, 999, {"parameters": 8_000_000}),
                _summary("export", {**EXPORT, "source_run": "/runs/e"}, 999)]  # an export from before `parameters`: no size
    fixed, slope = _line([(4e6, 20 + 4.0), (1.6e7, 20 + 16.0)])
    found = estimate("export", {**EXPORT, "source_run": "/runs/new"}, finished, rows=134_515_008)
    assert [m.units for m in found.measured] == [4e6, 1.6e7], "other formats, a verify-only relaunch and a size-less run are not compared"
    assert found.seconds == pytest.approx(fixed + slope * 134_515_008)
    assert "parameters converted" in found.text and "2 finished export runs" in found.text
    assert estimate("export", {**EXPORT, "source_run": "/runs/new"}, finished).units is None, "the page must count the parameters"


def test_a_spec_yaml_that_leaves_fields_out_is_compared_with_their_defaults():
    # measured: a hand-written spec (kind, model, formats) exported the embedded model twice, and the second got no
    # estimate, because the page's full spec (merged_dtype, validate, ... at their defaults) did not match the short one
    short = _summary("export", {"model": {"kind": "embedded"}, "formats": EXPORT["formats"]}, 40, {"parameters": 1000})
    found = estimate("export", {**EXPORT, "model": {"kind": "embedded"}}, [short], rows=2000)
    assert len(found.measured) == 1 and found.seconds == pytest.approx(80, rel=0.01)
    assert not estimate("export", {**EXPORT, "validate": False}, [short], rows=2000).measured, "a field set otherwise still differs"


def test_the_export_job_records_the_parameters_it_converted(workspace, tiny_llama_dir):
    from inprocess import run_succeeded

    from core.export.source import source_parameters

    source = runs.create_run_from_dict({"kind": "prune", "model": {"kind": "local", "ref": str(tiny_llama_dir)}, "evaluate": False})
    shutil.copytree(tiny_llama_dir, source / "pruned")
    write_status(source, RunStatus(state="succeeded", kind="prune", started_at=time.time() - 5, finished_at=time.time()))
    counted = source_parameters(str(source))
    assert counted and counted > 1000
    run_dir = run_succeeded({"kind": "export", "source_run": str(source), "formats": ["recipes"]})
    assert runs.read_status(run_dir).result["parameters"] == counted, "the job records what the page counts"
    (again,) = [m for m in estimate("export", runs.read_spec_dict(run_dir), runs.list_runs(), rows=counted).measured]
    assert again.units == counted


# ---------------------------------------------------------------- rag index / raft: bytes of documents

def test_rag_index_is_fitted_on_corpus_bytes_and_a_reused_index_is_not_a_measurement(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("x" * 3000)
    (docs / "b.txt").write_text("y" * 1000)
    assert source_bytes(str(docs)) == 4000 and source_bytes(str(docs / "a.md")) == 3000 and source_bytes("") == 0
    assert source_bytes("assets/handbook/docs") > 0, "a relative path is tried in the repository (the demo handbook)"
    spec = {"chunk_tokens": 128, "overlap": 16, "questions": ""}
    finished = [_summary("rag_index", {**spec, "documents": "/gone/one"}, 5 + 0.01 * 1000, {"corpus_bytes": 1000}),
                _summary("rag_index", {**spec, "documents": "/gone/two"}, 5 + 0.01 * 3000, {"corpus_bytes": 3000}),
                _summary("rag_index", {**spec, "documents": "/gone/three"}, 0.5, {"corpus_bytes": 9000, "index_reused": True})]
    found = estimate("rag_index", {**spec, "documents": str(docs)}, finished)
    assert found.units == 4000 and len(found.measured) == 2
    assert found.seconds == pytest.approx(5 + 0.01 * 4000)


def test_raft_compares_only_the_same_question_source_and_model(tmp_path):
    (tmp_path / "doc.txt").write_text("z" * 2000)
    model = {"kind": "embedded"}
    base = {"model": model, "question_model": {}, "questions": "q.jsonl", "max_chunks": 0, "max_new_tokens": 96, "chunk_tokens": 128,
            "k": 4}
    finished = [_summary("raft", {**base, "question_source": "file", "documents": "/d1"}, 8, {"corpus_bytes": 1000}),
                _summary("raft", {**base, "question_source": "generate", "documents": "/d2"}, 400, {"corpus_bytes": 1000}),
                _summary("raft", {**base, "question_source": "file", "model": {"kind": "hub", "ref": "x/y"}, "documents": "/d3"}, 80,
                         {"corpus_bytes": 1000})]
    found = estimate("raft", {**base, "question_source": "file", "documents": str(tmp_path / "doc.txt")}, finished)
    assert [m.seconds for m in found.measured] == pytest.approx([8], abs=0.1)
    assert found.seconds == pytest.approx(8 * 2000 / 1000, rel=0.02), "one size: the rate, times the bytes"


# ---------------------------------------------------------------- prune and compare

def test_prune_counts_the_rows_scored_before_and_after():
    model = {"kind": "embedded"}
    assert job_size("prune", {"evaluate": True, "eval_rows": 20}) == 41
    assert job_size("prune", {"evaluate": False, "eval_rows": 20}) == 1
    finished = [_summary("prune", {"model": model, "mode": "unstructured", "evaluate": True, "eval_rows": 5}, 10 + 2 * 11),
                _summary("prune", {"model": model, "mode": "unstructured", "evaluate": True, "eval_rows": 20}, 10 + 2 * 41),
                _summary("prune", {"model": model, "mode": "heads", "evaluate": True, "eval_rows": 20}, 999)]
    found = estimate("prune", {"model": model, "mode": "unstructured", "evaluate": True, "eval_rows": 40}, finished)
    assert len(found.measured) == 2 and found.seconds == pytest.approx(10 + 2 * 81)


def test_compare_counts_every_methods_training_and_every_models_scoring():
    spec = {"model": {"kind": "embedded"}, "max_length": 256, "methods": ["lora", "dora"], "max_steps": 10, "batch_size": 4,
            "task_samples": 6, "max_new_tokens": 10, "general_samples": 8, "mc_samples": 40}
    per_method_training, per_model_scoring = 10 * 4, 6 * 10 + 8 + 40
    assert job_size("method_comparison", spec) == 2 * per_method_training + 3 * per_model_scoring
    three = {**spec, "methods": ["lora", "dora", "ia3"]}
    finished = [_summary("method_comparison", spec, 100.0)]
    found = estimate("method_comparison", three, finished)
    assert found.seconds == pytest.approx(100.0 * job_size("method_comparison", three) / job_size("method_comparison", spec), rel=0.01)


# ---------------------------------------------------------------- resume: the run's own pace

def _checkpoint(run_dir: Path, step: int) -> None:
    """A complete checkpoint as core.train.trainer.checkpoints recognises one (its trainer_state.json; no weights needed here)."""
    folder = run_dir / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def _stopped_train_run(folder: Path, segments: list[list[dict]], run_seconds: float, checkpoint: int, max_steps: int = 0) -> Path:
    """A train run folder as a Stop leaves it: metrics.jsonl with one `event: start` row per launch, status.json, checkpoints."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for seg in segments for r in seg))
    _checkpoint(folder, checkpoint)
    (folder / "spec.yaml").write_text(f"kind: train\nmax_steps: {max_steps}\n")
    now = time.time()
    last = 30.0
    write_status(folder, RunStatus(state="stopped", kind="train", started_at=now - last, finished_at=now, attempts=len(segments),
                                   earlier_seconds=run_seconds - last))
    return folder


def test_resume_is_predicted_from_the_runs_own_seconds_per_step_and_launch_cost(tmp_path):
    first = [{"event": "start", "step": 0, "total_steps": 20}, {"step": 2, "elapsed_s": 5.0}, {"step": 6, "elapsed_s": 15.0}]
    second = [{"event": "start", "step": 4, "total_steps": 20}, {"step": 6, "elapsed_s": 4.0}, {"step": 8, "elapsed_s": 8.5}]
    run_dir = _stopped_train_run(tmp_path / "run", [first, second], run_seconds=15 + 8.5 + 2 * 12, checkpoint=8)
    per_step, outside = (15 + 8.5) / (6 + 4), 12.0
    assert own_pace({"run_dir": str(run_dir)}) == pytest.approx((per_step, outside))
    spec = resume_estimate_spec(run_dir)
    assert spec["from_step"] == 8 and spec["run_dir"] == str(run_dir)
    found = estimate("resume", spec, [])
    assert found.units == 20 - 8, "an epoch run: the total its launches logged, less the checkpoint it restarts from"
    assert found.seconds == pytest.approx(outside + per_step * 12)
    assert found.text.startswith("⏱️ About") and "12 training steps left" in found.text and "this run's own 2.35 s per step" in found.text
    more = estimate("resume", resume_estimate_spec(run_dir, 30), [])
    assert more.units == 30 and more.seconds == pytest.approx(outside + per_step * 30)


def test_resume_without_a_timed_step_or_with_nothing_left_says_so(tmp_path):
    quiet = _stopped_train_run(tmp_path / "quiet", [[{"event": "start", "step": 0, "total_steps": 10}]], 20, checkpoint=0, max_steps=10)
    assert estimate("resume", resume_estimate_spec(quiet), []).text == "No time estimate: this run has not logged a timed step yet."
    rows = [{"event": "start", "step": 0, "total_steps": 4}, {"step": 4, "elapsed_s": 8.0}]
    done = _stopped_train_run(tmp_path / "done", [rows], 20, checkpoint=4, max_steps=4)
    assert "already holds every step" in estimate("resume", resume_estimate_spec(done), []).text


# ---------------------------------------------------------------- the lines on the pages (AppTest)

def _captions(at) -> list[str]:
    return [c.value for c in at.caption]


def test_train_page_shows_the_resume_and_train_more_estimates(workspace, tiny_llama_dir):
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT
    from pages_common import TRAIN_RUN

    run_dir = runs.create_run_from_dict({"kind": "train", "model": {"kind": "local", "ref": str(tiny_llama_dir)}, "max_steps": 10})
    rows = [{"event": "start", "step": 0, "total_steps": 10}, {"step": 4, "elapsed_s": 10.0}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _checkpoint(run_dir, 4)
    now = time.time()
    write_status(run_dir, RunStatus(state="stopped", kind="train", started_at=now - 30, finished_at=now, attempts=1))
    at = AppTest.from_file(str(ROOT / "app_pages" / "train.py"), default_timeout=180)
    at.session_state[TRAIN_RUN] = str(run_dir)
    at.run()
    assert not at.exception, at.exception
    lines = [c for c in _captions(at) if "this run's own" in c]
    # 2.5 s per step over 4 steps, 30 - 10 = 20 s outside the steps: 6 steps left -> 35 s; 20 more steps -> 70 s
    assert lines == ["⏱️ About 35 s on this machine (6 training steps left; this run's own 2.50 s per step + 20 s to load and save).",
                     "⏱️ About 70 s on this machine (20 training steps left; this run's own 2.50 s per step + 20 s to load and save)."]
    assert at.button(key="train_resume") is not None


def test_export_page_shows_the_estimate_before_export(workspace, tiny_llama_dir):
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT
    from core.export.source import source_parameters

    source = runs.create_run_from_dict({"kind": "prune", "model": {"kind": "local", "ref": str(tiny_llama_dir)}, "evaluate": False})
    shutil.copytree(tiny_llama_dir, source / "pruned")
    write_status(source, RunStatus(state="succeeded", kind="prune", started_at=time.time() - 5, finished_at=time.time()))
    at = AppTest.from_file(str(ROOT / "app_pages" / "export.py"), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    assert any(c.startswith("First export job") for c in _captions(at)), _captions(at)
    parameters = source_parameters(str(source))
    spec = {"source_run": str(source), "formats": at.multiselect(key="export_formats").value, "quantize": [], "merged_dtype": "float16",
            "validate": True, "verify_only": False}
    earlier = runs.create_run_from_dict({"kind": "export", **spec})  # an export of half as many parameters took 30 s
    write_status(earlier, RunStatus(state="succeeded", kind="export", started_at=time.time() - 30, finished_at=time.time(),
                                    result={"parameters": parameters // 2}))
    at.run()
    line = next(c for c in _captions(at) if c.startswith("⏱️ About"))
    assert line.startswith(f"⏱️ About 60 s on this machine ({parameters:,} parameters converted"), line
