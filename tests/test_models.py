"""core.models: every source loads, every failure names its file and reason."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.models import ModelLoadError, ModelSource, load_model, load_tokenizer, resolve_model_path


def test_import_core_without_streamlit(monkeypatch):
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['streamlit'] = None\n"
        "import core, core.models, core.hardware, core.workspace, core.chat, core.generation, core.runs\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.slow
def test_embedded_model_knows_paris(embedded_dir):
    from core.generation import GenerationSettings, generate_text

    loaded = load_model(ModelSource())
    assert loaded.info.parameters == 134_515_008
    assert loaded.info.has_chat_template
    answer = generate_text(loaded, [{"role": "user", "content": "What is the capital of France?"}],
                           GenerationSettings(temperature=0.0, max_new_tokens=24))
    assert "Paris" in answer


@pytest.mark.slow
def test_cached_embedded_load_is_fast(embedded_dir):
    start = time.perf_counter()
    load_model(ModelSource())
    assert time.perf_counter() - start < 15  # generous for a loaded CI box; ~1 s measured


def test_tiny_model_loads_with_info(tiny_llama_dir):
    loaded = load_model(ModelSource("local", str(tiny_llama_dir)))
    assert loaded.info.source == "local"
    assert loaded.info.context_length == 512
    assert loaded.info.dtype == "float32"
    assert loaded.info.parameters == sum(p.numel() for p in loaded.model.parameters())


def test_adapter_on_top(tiny_llama_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    base = load_model(ModelSource("local", str(tiny_llama_dir)), for_training=True).model
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    plain = load_model(ModelSource("local", str(tiny_llama_dir)))
    adapted = load_model(ModelSource("local", str(tiny_llama_dir), adapter=str(tmp_path / "adapter")))
    assert adapted.info.adapter.endswith("adapter")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert not torch.allclose(plain.model(ids).logits, adapted.model(ids).logits)


def test_missing_path():
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(ModelSource("local", "/nonexistent/model"))


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model_path(ModelSource("local", str(tmp_path)))


def test_adapter_folder_given_as_model(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="PEFT adapter"):
        resolve_model_path(ModelSource("local", str(tmp_path)))


def test_corrupt_safetensors(tiny_llama_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_model(ModelSource("local", str(broken)))


def test_bad_gguf(tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"NOTGGUF" + b"\0" * 100)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_model(ModelSource("gguf", str(fake)))


def test_truncated_gguf(tmp_path):
    fake = tmp_path / "trunc.gguf"
    fake.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
    with pytest.raises(ModelLoadError, match="Could not read GGUF"):
        load_model(ModelSource("gguf", str(fake)))


def test_missing_adapter_config(tiny_llama_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="adapter_config.json"):
        load_model(ModelSource("local", str(tiny_llama_dir), adapter=str(tmp_path)))


def test_unreachable_hub_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="unreachable"):
        load_tokenizer(ModelSource("hub", "someone/not-a-cached-model"))
    assert time.perf_counter() - start < 10


def test_source_parse_and_roundtrip():
    assert ModelSource.parse("").kind == "embedded"
    assert ModelSource.parse("x/y.gguf").kind == "gguf"
    assert ModelSource.parse("Qwen/Qwen2.5-0.5B").kind == "hub"
    src = ModelSource("hub", "a/b", adapter="/x")
    assert ModelSource.from_dict(src.as_dict()) == src
    with pytest.raises(ValueError):
        ModelSource("local", "")
