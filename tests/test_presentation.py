"""Presentation (issue 29 item 9): what a table shows a user says pass / fail in words beside its mark, uses words for
its column names and rounds its numbers. The functions the pages draw their tables from are tested directly."""
from __future__ import annotations

from pathlib import Path

from core.export.results import artifact_rows, check_rows, checks_summary
from core.memory.distributed import fits_matrix


def _result() -> dict:
    checks = [{"name": "tokenizer matches", "passed": True, "summary": "same ids"},
              {"name": "greedy text vs torch", "passed": False, "summary": "2 of 4 prompts differ"},
              {"name": "top-1 agreement", "passed": True, "warning": "margins moved", "summary": "96.9 %"}]
    return {"artifacts": [{"kind": "gguf_q8_0", "path": "/w/runs/x/model-q8_0.gguf", "size_bytes": 144_812_345, "seconds": 1.8372615,
                           "checks": checks}]}


def test_export_checks_say_pass_or_fail_in_words():
    rows = check_rows(_result())
    assert [r["outcome"] for r in rows] == ["✅ pass", "❌ fail", "⚠️ pass, with a warning"]
    assert all(k.strip() for row in rows for k in row), "every column has a name"
    (artifact,) = artifact_rows(_result())
    assert artifact["checks"] == "❌ 1 failed · ✅ 2 passed" and artifact["file"] == "model-q8_0.gguf" and artifact["seconds"] == 1.8
    assert checks_summary([]) == "not checked"


def test_the_gpu_table_says_fits_in_words():
    rows = [{"gpus": 1, "strategy": "DDP", "per_device_gb": 96.04, "verdict": "does not fit"},
            {"gpus": 1, "strategy": "ZeRO-3", "per_device_gb": 70.2, "verdict": "tight"},
            {"gpus": 2, "strategy": "DDP", "per_device_gb": 50.0, "verdict": "fits"}]
    table = fits_matrix(rows)
    assert table[0] == {"GPUs": 1, "DDP": "96.0 GB ❌ too big", "ZeRO-3": "70.2 GB ⚠️ tight"}
    assert table[1]["DDP"] == "50.0 GB ✅ fits"


def test_the_decontamination_table_uses_words_and_a_percentage():
    from core.data.decontam import Benchmark, decontaminate

    leak = "a farmer has seventeen sheep and all but nine run away so how many sheep are left in the field today"
    rows = [{"messages": [{"role": "user", "content": f"Please answer: {leak}"}, {"role": "assistant", "content": "9"}]}] + \
        [{"messages": [{"role": "user", "content": f"unrelated question {i}"}, {"role": "assistant", "content": "ok"}]} for i in range(6)]
    (report,) = decontaminate(rows, [Benchmark("riddles", [leak], ["riddles/0"])]).reports
    row = report.table_row()
    assert row["contaminated rows"] == 1 and row["share"] == "14.29 %" and row["rule"] == "13-gram any overlap (GPT-3)"
    assert not [k for k in row if "_" in k], "no snake_case column names"


def test_bitsandbytes_cpu_kernel_line_is_said_once_as_what_it_means():
    """bitsandbytes logs "Failed to load CPU gemm_4bit_forward…" on every avx512-bf16 CPU: in worker.log it reads as a
    failure. The worker rephrases it (core.runs.errors.quiet_known_noise) into one note, once."""
    import logging

    from core.runs.errors import quiet_known_noise

    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")  # the logger bitsandbytes writes it with
    logger.addHandler(handler)
    try:
        quiet_known_noise()
        quiet_known_noise()  # idempotent
        for _ in range(2):
            logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
                           "`pip install kernels` and the kernels >= 0.11.1", "No module named 'kernels'")
        logger.warning("another bitsandbytes warning")
    finally:
        logger.removeHandler(handler)
    messages = [(r.levelname, r.getMessage()) for r in seen]
    assert len(messages) == 2 and messages[1] == ("WARNING", "another bitsandbytes warning"), messages
    level, text = messages[0]
    assert level == "INFO" and "Failed to load" not in text and "Nothing to fix" in text


def test_tables_show_paths_relative_to_the_workspace(workspace):
    from core.runs.side_by_side import spec_diff
    from core.workspace import display_path

    adapter = workspace / "runs" / "20261207-101010-train" / "adapter"
    assert display_path(adapter) == "runs/20261207-101010-train/adapter"
    assert display_path(Path(__file__).resolve().parents[1] / "assets" / "demo" / "train.jsonl") == "assets/demo/train.jsonl"
    assert display_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert display_path("/elsewhere/data.jsonl") == "/elsewhere/data.jsonl"
    rows = spec_diff({"a": {"init_adapter": str(adapter), "lr": 1e-3}, "b": {"init_adapter": "", "lr": 1e-3}})
    assert rows == [{"field": "init_adapter", "a": "runs/20261207-101010-train/adapter", "b": ""}]
