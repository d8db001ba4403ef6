"""core.chat and the Chat page."""
from __future__ import annotations

import json
import time

import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT
from core.chat import transcript_jsonl
from core.generation import GenerationSettings, build_messages, generate_text, start_generation
from core.models import ModelSource, load_model


def test_settings_validation():
    with pytest.raises(ValueError, match="temperature"):
        GenerationSettings(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        GenerationSettings(top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)


def test_system_prompt_prepended_once():
    msgs = build_messages([{"role": "user", "content": "hi"}], GenerationSettings(system_prompt="Be brief."))
    assert msgs[0] == {"role": "system", "content": "Be brief."} and len(msgs) == 2


def test_stream_fills_buffer_and_stats(tiny_llama_dir):
    loaded = load_model(ModelSource("local", str(tiny_llama_dir)))
    stream = start_generation(loaded, [{"role": "user", "content": "Hello"}], GenerationSettings(temperature=0.0, max_new_tokens=12))
    deadline = time.time() + 60
    while not stream.done and time.time() < deadline:
        time.sleep(0.05)
    assert stream.done and not stream.error
    assert stream.stats.new_tokens > 0 and stream.stats.latency_s > 0
    assert stream.stats.time_to_first_token_s is not None


def test_seeded_sampling_reproduces(tiny_llama_dir):
    loaded = load_model(ModelSource("local", str(tiny_llama_dir)))
    settings = GenerationSettings(temperature=1.0, top_p=1.0, max_new_tokens=10, seed=7)
    history = [{"role": "user", "content": "Tell me something"}]
    assert generate_text(loaded, history, settings) == generate_text(loaded, history, settings)


def test_transcript_jsonl():
    text = transcript_jsonl(
        [{"label": "column 1", "model": "m",
          "history": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "stats": {"new_tokens": 1}}]}],
        GenerationSettings(),
    )
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["role"] for r in rows] == ["user", "assistant"]
    assert rows[1]["stats"] == {"new_tokens": 1} and rows[0]["variant"] == "column 1"


def test_chat_page_streams_two_columns(workspace, tiny_llama_dir):
    at = AppTest.from_file(str(ROOT / "app_pages" / "chat.py"), default_timeout=120)
    at.session_state["active_model"] = {"kind": "local", "ref": str(tiny_llama_dir)}
    at.run()
    assert not at.exception
    assert [sb.value for sb in at.selectbox if sb.label == "Variant"] == ["Active model", "Embedded default"]
    at.selectbox(key="chat_1_choice").set_value("Local folder").run()
    at.text_input(key="chat_1_ref").set_value(str(tiny_llama_dir)).run()
    at.chat_input(key="chat_prompt").set_value("Hello there").run()
    assert not at.exception
    deadline = time.time() + 60
    while at.session_state["chat_streams"] and time.time() < deadline:
        time.sleep(0.2)
        at.run()
    histories = at.session_state["chat_histories"]
    assert sorted(histories) == [0, 1]
    for history in histories.values():
        assert [t["role"] for t in history] == ["user", "assistant"]
        assert history[1]["stats"]["new_tokens"] > 0
    assert any("tokens" in c.value for c in at.caption)
