"""Replay 'general' rehearses the run's OWN base model: a base other than the embedded model answers the general
prompts itself (once, cached in the workspace and reused), the run card names the model that answered; only the
embedded model replays the shipped set (its own answers); with no cached set and no way to make one, refusal."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from inprocess import run_in_process

from core import generation
from core.data.replay import PROMPTS_FILE, SHIPPED_FILE, answers_name, cached_answers, needs_answers
from core.models import EMBEDDED_NAME, ModelSource
from core.train.spec import TrainSpec

PROMPTS, NEW_TOKENS = 4, 4


@pytest.fixture(scope="module")
def answering_llama_dir(tmp_path_factory, embedded_tokenizer) -> Path:
    """conftest's tiny Llama with a wide initialisation (std 0.3): at std 0.02 its greedy answers are only newlines, which
    the answers job drops as empty; this one writes words."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = embedded_tokenizer
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, initializer_range=0.3)
    path = tmp_path_factory.mktemp("answering-llama")
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def _run(spec) -> tuple[Path, object]:
    return run_in_process(spec)


def _data(tmp_path: Path) -> Path:
    data = tmp_path / "task.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}]} for w in
            ("red", "blue", "green", "yellow", "black", "white")]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def _spec(model: dict, data: Path, **over) -> TrainSpec:
    fields = dict(model=model, dataset=str(data), max_steps=1, batch_size=4, max_length=64, eval_fraction=0.0, warmup_ratio=0.0,
                  lora_r=4, lora_alpha=8, save_steps=100, eval_on_start=False, chat_template="chatml", replay_fraction=0.4,
                  replay_prompts=PROMPTS, replay_max_new_tokens=NEW_TOKENS, replay_keep_unfinished=True)
    return TrainSpec(**{**fields, **over})


def _encoded(spec: TrainSpec, tokenizer, rows: list[dict]) -> set[tuple[int, ...]]:
    from core.train.data import choose_chat_template, encode_rows

    template, _ = choose_chat_template(spec.chat_template, tokenizer)
    return {tuple(r.input_ids) for r in encode_rows(rows, tokenizer, spec, template) if r is not None}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.slow
def test_a_non_embedded_base_replays_its_own_cached_answers(workspace, answering_llama_dir, embedded_tokenizer, tmp_path, monkeypatch):
    from core.train.data import prepare_data

    calls = []
    real = generation.batch_answers
    monkeypatch.setattr(generation, "batch_answers", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    base = ModelSource("local", str(answering_llama_dir))
    spec = _spec(base.as_dict(), _data(tmp_path))
    assert needs_answers(spec.replay_dataset, base)

    run_dir, status = _run(spec)
    assert status.state == "succeeded", status.error
    assert calls == [PROMPTS]  # the base answered the general prompts once, as the run's first stage
    folder = cached_answers(base)
    assert folder is not None and folder.name == answers_name(base)
    manifest = json.loads((folder / "manifest.json").read_text())
    teacher = manifest["operations"][0]["params"]["teacher"]
    assert manifest["operations"][0]["name"] == "teacher_answers" and teacher["source"]["ref"] == str(answering_llama_dir)
    assert manifest["operations"][0]["params"]["settings"]["max_new_tokens"] == NEW_TOKENS

    card = json.loads((run_dir / "training.json").read_text())
    record = card["data"]["replay"]
    assert record["answered_by"] == base.label and base.label in record["label"] and EMBEDDED_NAME not in record["label"]
    assert Path(record["path"]) == folder / "data.jsonl" and Path(record["path"]) != SHIPPED_FILE
    assert card["replay_answers"]["generated"] is True and record["replay_rows"] > 0

    cached = _rows(folder / "data.jsonl")
    shipped = _rows(SHIPPED_FILE)
    prompts = [line.strip() for line in PROMPTS_FILE.read_text(encoding="utf-8").splitlines() if line.strip()][:PROMPTS]
    assert [r["messages"][0]["content"] for r in cached] == prompts
    shipped_answers = {r["messages"][0]["content"]: r["messages"][-1]["content"] for r in shipped}
    assert all(r["messages"][-1]["content"] != shipped_answers.get(r["messages"][0]["content"]) for r in cached)
    data = prepare_data(spec, embedded_tokenizer)  # the rows the job mixed in (same seed, same cache)
    assert data.manifest()["replay"]["rows_sha256"] == record["rows_sha256"]
    mixed = {tuple(f["input_ids"]) for f in data.train.features[-record["replay_rows"]:]}
    assert mixed <= _encoded(spec, embedded_tokenizer, cached)  # every replayed row is the base's own cached answer
    assert not mixed & _encoded(spec, embedded_tokenizer, shipped)  # and none is the 135M model's

    again, status = _run(_spec(base.as_dict(), _data(tmp_path), name="second"))
    assert status.state == "succeeded", status.error
    assert calls == [PROMPTS]  # reused: no second generation
    card2 = json.loads((again / "training.json").read_text())
    assert card2["replay_answers"]["generated"] is False and card2["data"]["replay"]["sha256"] == record["sha256"]


def test_the_embedded_base_still_replays_the_shipped_set(workspace, embedded_tokenizer, tmp_path):
    from core.train.data import prepare_data

    spec = _spec({"kind": "embedded"}, _data(tmp_path))
    record = prepare_data(spec, embedded_tokenizer).replay
    assert Path(record["path"]) == SHIPPED_FILE and record["answered_by"] == EMBEDDED_NAME
    assert not needs_answers("general", ModelSource("embedded"))


def test_no_cached_answers_and_no_job_to_make_them_is_refused(workspace, tiny_llama_dir, embedded_tokenizer, tmp_path):
    from core.train.data import DataError, prepare_data
    from core.train.preflight import check_data

    spec = _spec({"kind": "local", "ref": str(tiny_llama_dir)}, _data(tmp_path))
    with pytest.raises(DataError, match="135M") as caught:
        prepare_data(spec, embedded_tokenizer)  # never silently the embedded model's answers
    assert ModelSource("local", str(tiny_llama_dir)).label in str(caught.value)
    check = check_data(spec)  # the pre-flight counts on the shipped prompts and says the job answers them first
    assert check.refusal is None and check.replay_rows > 0
    assert "answered by tiny-llama" in check.replay_label and "first stage" in check.replay_label


def test_distillation_replays_the_teachers_answers(workspace, tiny_llama_dir, embedded_tokenizer):
    from core.data.replay import ReplayError
    from core.distill.data import encode_features

    rows = [{"messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]}] * 4
    _, record = encode_features(rows, embedded_tokenizer, max_length=64, replay_fraction=0.5, replay_model=ModelSource("embedded"))
    assert record["answered_by"] == EMBEDDED_NAME
    with pytest.raises(ReplayError, match="135M"):
        encode_features(rows, embedded_tokenizer, max_length=64, replay_fraction=0.5,
                        replay_model=ModelSource("local", str(tiny_llama_dir)))
