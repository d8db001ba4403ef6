"""The export's memory: refused before any load when RAM is short (with the figures), the estimate read from the
safetensors headers at the load dtype, and a bf16 run merged and validated in bf16 (not fp32)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from inprocess import run_in_process

from core.export import memory
from core.export.spec import ExportSpec
from core.runs.status import read_status
from core.runs.worker import Worker


def _run(spec) -> tuple[Path, object]:
    return run_in_process(spec)


def test_export_is_refused_before_any_load_when_ram_is_short(workspace, tiny_llama_dir, monkeypatch):
    import core.models

    loads = []
    real_load = core.models.load_model
    monkeypatch.setattr(core.models, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    monkeypatch.setattr("core.hardware._system_ram_gb", lambda: (32.0, 0.05))  # 50 MB available
    spec = ExportSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, formats=["merged", "gguf_f16"])
    run_dir, status = _run(spec)
    plan = json.loads((run_dir / "memory_plan.json").read_text())
    assert status.state == "failed"
    assert "Not enough RAM" in status.error
    assert f"{plan['ram_needed_bytes'] / 1e9:.2f} GB" in status.error and "0.05 GB is available" in status.error
    assert "export the adapter only" in status.error
    assert loads == [] and not (run_dir / "export").exists()


def test_enough_ram_lets_the_same_export_through_and_its_verification_checks_ram_too(workspace, tiny_llama_dir, monkeypatch):
    import yaml

    monkeypatch.setattr("core.hardware._system_ram_gb", lambda: (32.0, 30.0))
    run_dir, status = _run(ExportSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, formats=["merged", "gguf_f16"],
                                      validation_prompts=2, compare_tokens=4))
    assert status.state == "succeeded", status.error
    result = json.loads((run_dir / "export.json").read_text())
    assert result["merge"]["dtype"] == "float32" and result["merge"]["validated_in"] == "float32"  # stored in fp32, loaded so

    monkeypatch.setattr("core.hardware._system_ram_gb", lambda: (32.0, 0.05))
    spec = yaml.safe_load((run_dir / "spec.yaml").read_text())
    (run_dir / "spec.yaml").write_text(yaml.safe_dump({**spec, "verify_only": True}))
    Worker(run_dir).run()  # verify_only loads the reference model: refused first, the same way
    status = read_status(run_dir)
    assert status.state == "failed" and "Not enough RAM" in status.error and "0.05 GB is available" in status.error


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_estimate_from_headers_is_the_loaded_weights_bytes(tiny_llama_dir, dtype):
    from core.models import ModelSource, load_model

    cpu = SimpleNamespace(device="cpu", bf16=False, free_memory_gb=None)
    plan = memory.plan_memory(tiny_llama_dir, None, dtype, "test", cpu)
    loaded = load_model(ModelSource("local", str(tiny_llama_dir)), device="cpu", dtype=dtype)
    actual = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    assert plan.dtype == dtype and plan.device == "cpu"
    assert abs(plan.weight_bytes - actual) / actual < 0.03
    assert plan.ram_needed_bytes >= plan.weight_bytes  # one full copy on the CPU, plus margin


def test_on_a_gpu_ram_holds_a_shard_and_the_gpu_the_model(tiny_llama_dir):
    gpu = SimpleNamespace(device="cuda", bf16=False, free_memory_gb=80.0)
    plan = memory.plan_memory(tiny_llama_dir, None, "bfloat16", "the run trained in bf16", gpu)
    assert plan.device == "cuda" and plan.dtype == "float32"  # a GPU without bf16: fp32, said why
    assert "no bf16" in plan.dtype_reason
    small = SimpleNamespace(device="cuda", bf16=True, free_memory_gb=1e-6)
    fallback = memory.plan_memory(tiny_llama_dir, None, "bfloat16", "the run trained in bf16", small)
    assert fallback.device == "cpu" and fallback.dtype == "bfloat16" and "merging on the CPU" in fallback.notes[0]


def test_run_dtype_reads_the_card_before_the_spec():
    assert memory.run_dtype("auto", {"load_dtype": "bfloat16", "bf16": True, "fp16": False})[0] == "bfloat16"
    assert memory.run_dtype("auto", {"load_dtype": "float16", "bf16": False, "fp16": True})[0] == "float16"
    assert memory.run_dtype("bf16", {"load_dtype": "float32", "bf16": False, "fp16": False})[0] == "float32"  # what ran
    assert memory.run_dtype("fp16", {}) == ("float16", "the run's precision is fp16")
    assert memory.run_dtype("auto", {}) == (None, "")


@pytest.mark.slow
def test_a_bf16_run_is_merged_and_validated_in_bf16(workspace, tiny_llama_dir, tmp_path, monkeypatch):
    """A run that trained in bf16 (here: a CPU that computes bf16, as on a GPU box) is merged in bf16, not fp32."""
    from core import hardware
    from core.train.spec import TrainSpec

    bf16_cpu = dataclasses.replace(hardware.detect(), bf16=True)
    monkeypatch.setattr(hardware, "detect", lambda: bf16_cpu)
    data = tmp_path / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}]} for w in
            ("red", "blue", "green", "yellow")]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = TrainSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, dataset=str(data), max_steps=1, batch_size=4, max_length=64,
                      eval_fraction=0.0, learning_rate=5e-2, warmup_ratio=0.0, lora_r=4, lora_alpha=8, save_steps=100,
                      eval_on_start=False, chat_template="chatml", precision="bf16", name="bf16-run")
    train_dir, status = _run(train)
    assert status.state == "succeeded", status.error
    assert json.loads((train_dir / "training.json").read_text())["precision"]["bf16"] is True
    run_dir, status = _run(ExportSpec(source_run=str(train_dir), formats=["merged"], validation_prompts=2))
    result = json.loads((run_dir / "export.json").read_text())
    assert status.state == "succeeded", status.error
    assert result["merge"]["dtype"] == "bfloat16" and result["merge"]["device"] == "cpu"
    merged = next(a for a in result["artifacts"] if a["kind"] == "merged")
    assert merged["merged_in"]["dtype"] == "bfloat16" and merged["dtype"] == "float16"
    assert all(c["passed"] for c in merged["checks"]), merged["checks"]
