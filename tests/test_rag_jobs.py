"""The RAG / RAFT jobs end to end through the worker's code (in this process: the worker process is not what these test):
index + recall, the RAFT builder (file questions and generated ones), and the RAFT evaluation on a tiny model with real
PEFT adapters."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from inprocess import run_in_process

from core.rag.evaluation import CONDITIONS
from core.rag.spec import RaftEvalSpec, RaftSpec, RagIndexSpec
from core.runs import read_status
from core.runs.jobs import read_result

pytestmark = pytest.mark.slow


def make_adapter(base_dir: Path, folder: Path, *, trained: bool, seed: int) -> Path:
    """A LoRA adapter on the tiny model: random A and B (a model that differs from the base), or B = 0 (no effect)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=not trained))
    peft.save_pretrained(folder)
    return folder


def test_index_job_measures_recall_for_each_mode(workspace):
    run_dir, status = run_in_process(RagIndexSpec(top_k=5))
    assert status.state == "succeeded", status.error
    result = read_result(run_dir)
    assert result["index"]["chunks"] == 79 and result["questions"]["with_gold"] == 150
    for mode in ("dense", "bm25", "hybrid"):
        assert result["retrieval"][mode]["recall@5"] >= 0.97 and result["retrieval"][mode]["n"] == 150
    again, status = run_in_process(RagIndexSpec(top_k=5, questions=""))
    assert status.state == "succeeded" and read_result(again)["folder"] == result["folder"]


def test_raft_builder_writes_a_chat_dataset_the_train_and_template_pages_read(workspace, tiny_llama_dir):
    from core.data.formats import list_workspace_datasets, load_dataset_file

    spec = RaftSpec(name="hb-raft", model={"kind": "local", "ref": str(tiny_llama_dir)}, k=3, distractor_only_fraction=0.3, seed=5)
    run_dir, status = run_in_process(spec)
    assert status.state == "succeeded", status.error
    folder = workspace / "datasets" / "hb-raft"
    manifest = json.loads((folder / "manifest.json").read_text())
    raft = manifest["raft"]
    assert manifest["schema"] == "workbench.dataset/1" and manifest["rows"] == 120 and raft["heldout_questions"] == 30
    assert raft["k"] == 3 and raft["distractor_only_fraction"] == 0.3 and raft["distractors"] == "hard" and raft["distractor_only"] == 36
    assert raft["corpus"]["sha256"] and raft["questions"]["sha256"] and raft["index"]["chunks"] == 79
    assert raft["tokens"]["longest"] > raft["tokens"]["mean"] > 100
    loaded = load_dataset_file(folder)
    assert loaded.detected_format == "messages" and len(loaded.rows) == 120 and loaded.report.n_invalid == 0
    assert {"hb-raft", "hb-raft-sft"} <= set(list_workspace_datasets())
    sft = load_dataset_file(workspace / "datasets" / "hb-raft-sft")
    assert len(sft.rows) == 120 and [m["role"] for m in sft.rows[0]["messages"]] == ["user", "assistant"]
    held = [json.loads(line) for line in (folder / "heldout.jsonl").read_text().splitlines()]
    trained_questions = {r["question"] for r in map(json.loads, (folder / "raft.jsonl").read_text().splitlines())}
    assert len(held) == 30 and not {q["question"] for q in held} & trained_questions
    _, again = run_in_process(spec)
    assert again.state == "failed" and "already exists" in again.error


def test_raft_builder_with_generated_questions_reports_what_it_rejected(workspace, tiny_llama_dir):
    # the set is built for the embedded model (its tokenizer); the questions are written by the model the user picked
    writer = {"kind": "local", "ref": str(tiny_llama_dir)}
    spec = RaftSpec(name="gen", question_source="generate", question_model=writer, max_chunks=3, max_new_tokens=12, also_sft=False)
    assert spec.question_source_model.ref == str(tiny_llama_dir) and RaftSpec(model=writer).question_source_model.ref == str(tiny_llama_dir)
    run_dir, status = run_in_process(spec)
    assert status.state == "failed" and "no usable questions" in status.error  # a random 2-layer model writes no JSON
    assert "no JSON object" in status.error or "answer not found" in status.error
    log = (run_dir / "worker.log").read_text()
    assert "generated 0 usable questions from 3 chunks" in log and f"writing questions with {tiny_llama_dir.name}" in log, log[-2000:]


def test_raft_evaluation_compares_base_sft_and_raft_under_both_conditions(workspace, tiny_llama_dir, tmp_path):
    _, built = run_in_process(RaftSpec(name="ev", k=3, model={"kind": "local", "ref": str(tiny_llama_dir)}, also_sft=False))
    assert built.state == "succeeded", built.error
    sft = make_adapter(tiny_llama_dir, tmp_path / "sft", trained=True, seed=1)
    raft = make_adapter(tiny_llama_dir, tmp_path / "raft", trained=True, seed=2)
    base = {"kind": "local", "ref": str(tiny_llama_dir)}
    spec = RaftEvalSpec(dataset="ev", base=base, sft_model=str(sft), raft_model=str(raft), samples=4, max_new_tokens=6,
                        bootstrap_samples=50)
    run_dir, status = run_in_process(spec)
    assert status.state == "succeeded", status.error
    report = read_result(run_dir)
    assert report["n"] == 4 and [m["role"] for m in report["models"]] == ["base", "sft", "raft"]
    for model in report["models"]:
        for condition in CONDITIONS:
            assert set(model["metrics"][condition]) == {"accuracy", "quote_from_oracle", "abstention"}
            assert all(0 <= v["low"] <= v["value"] <= v["high"] <= 100 for v in model["metrics"][condition].values())
    assert set(report["comparisons"]) == {"raft-vs-base", "raft-vs-sft", "sft-vs-base"}
    assert report["verdict"]["verdict"] in ("better", "worse", "no clear difference") and report["verdict"]["reasons"]
    assert report["settings"]["k"] == 3 and len(report["examples"]) == 4
    assert set(report["examples"][0]["replies"]["raft"]) == set(CONDITIONS)
    assert read_status(run_dir).result["verdict"] == report["verdict"]["verdict"]
    show_the_report_on_the_page(tiny_llama_dir)

    # the job's two refusals, checked in process (a worker each would cost seconds, not more proof)
    from core.evaluate import scoring
    from core.models import ModelSource
    from core.rag.job import _check_changes_model, _load, resolve_dataset
    from core.runs.jobs import JobError

    base_source = ModelSource.from_dict(base)
    untrained = make_adapter(tiny_llama_dir, tmp_path / "zero", trained=False, seed=3)
    base_loaded = _load(base_source)
    probe = scoring.probe_logits(base_loaded.model, base_loaded.tokenizer)
    with pytest.raises(JobError, match="adapter not applied"):
        _check_changes_model(probe, _load(base_source.with_adapter(str(untrained))), "raft", base_source.with_adapter(str(untrained)))
    _check_changes_model(probe, _load(base_source.with_adapter(str(raft))), "raft", base_source.with_adapter(str(raft)))
    with pytest.raises(JobError, match="dataset not found"):
        resolve_dataset("no-such-set")


def show_the_report_on_the_page(tiny_llama_dir) -> None:
    """The RAG / RAFT page's Evaluate tab opens on the finished report (its AppTest: one eval run serves both)."""
    from test_rag_page import _open

    at = _open(tiny_llama_dir)
    assert at.selectbox(key="raft_eval_dataset").value == "ev"
    assert any(s.label == "RAFT evaluation" for s in at.selectbox)
    tables = [d.value for d in at.dataframe]
    metrics = next(t for t in tables if "quote from oracle" in t.columns)
    assert list(metrics["model"]) == [m for m in ("base + RAG", "SFT + RAG", "RAFT + RAG") for _ in range(2)]
    assert list(metrics["condition"]) == ["oracle + distractors", "distractors only"] * 3
    assert any("Δ accuracy" in t.columns for t in tables)
    headline = [b.value for b in (*at.success, *at.warning, *at.error) if b.value.startswith("**RAFT")]
    assert headline, "no verdict box"
    assert {b.label for b in at.download_button} >= {"⬇ Markdown", "⬇ JSON"}
