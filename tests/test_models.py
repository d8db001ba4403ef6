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


def test_repeated_tokenizer_loads_are_independent_and_a_changed_file_is_re_read(tiny_llama_dir, tmp_path, monkeypatch):
    import json
    import shutil

    from transformers import AutoTokenizer

    from core import models

    folder = tmp_path / "tok"
    folder.mkdir()
    for path in tiny_llama_dir.iterdir():
        if path.is_file() and not path.name.endswith(".safetensors"):
            shutil.copy(path, folder / path.name)
    reads = []
    real = AutoTokenizer.from_pretrained
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    source = ModelSource("local", str(folder))
    first, second = load_tokenizer(source), load_tokenizer(source)
    assert len(reads) == 1 and first is not second and first.backend_tokenizer is not second.backend_tokenizer
    text = "Hello there <|im_end|> général"
    assert second(text)["input_ids"] == first(text)["input_ids"] and second.pad_token == first.pad_token
    first.chat_template, first.pad_token = "{{ 'changed' }}", "<|im_start|>"
    first.add_tokens(["zzqqxx-new-token"])
    third = load_tokenizer(source)
    assert len(reads) == 1  # still from the cache, and none of the changes to `first` leaked into it
    for other in (second, third):
        assert other.chat_template != first.chat_template and other.pad_token != first.pad_token
        assert len(other) == len(first) - 1 and other.convert_tokens_to_ids("zzqqxx-new-token") != first.convert_tokens_to_ids(
            "zzqqxx-new-token")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["model_max_length"] = 12345
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    changed = load_tokenizer(source)
    assert len(reads) == 2 and changed.model_max_length == 12345
    models.tokenizer_from_folder(folder, trust_remote_code=False)  # the default spelled out: the same cached entry
    assert len(reads) == 2
