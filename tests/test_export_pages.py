"""AppTest of the Export and Runs pages (a real export run, its checks on the page, the card, the comparison) and of
the Chat page with a GGUF export answering through llama.cpp beside its torch model."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from jobs_inline import jobs_inline_fixture  # noqa: F401 - a fixture
from streamlit.testing.v1 import AppTest
from test_runs_card import _data, _train

from core import runs
from core.export import gguf_convert

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def page(name: str, **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app_pages" / f"{name}.py"), default_timeout=120)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def test_export_page_without_runs_says_what_to_do(workspace):
    at = page("export")
    assert any("No finished train" in i.value for i in at.info)


def test_export_page_runs_an_export_and_shows_its_checks(workspace, tiny_llama_dir, tmp_path, jobs_inline):
    train_dir = _train(tiny_llama_dir, _data(tmp_path), name="page-run")
    at = page("export")
    assert at.selectbox(key="export_source").value.startswith(train_dir.name)
    at.multiselect(key="export_formats").set_value(["adapter", "gguf_f16", "modelfile", "recipes"]).run()
    at.button(key="export_start").click().run()
    assert not at.exception, at.exception
    run_dir = Path(at.session_state["export_run"])
    status = runs.wait(run_dir, timeout=300)
    assert status.state == "succeeded", status.error + runs.log_tail(run_dir)
    at.run()
    assert not at.exception, at.exception
    assert any(m.label == "Checks" and "0 failed" in m.value for m in at.metric)
    checks = at.dataframe[1].value
    assert {"greedy text vs torch", "tokenizer matches", "Modelfile template"} <= set(checks["check"])
    assert set(checks["outcome"]) <= {"✅ pass", "⚠️ pass, with a warning"}, "pass / fail in words, not by an emoji alone"
    assert {b.label for b in at.get("download_button")} >= {"⬇️ Modelfile", "⬇️ axolotl.yaml", "⬇️ spec.yaml"}
    assert any(b.label == "💬 Chat with it (llama.cpp)" for b in at.button)


def test_runs_page_card_lineage_and_comparison(workspace, tiny_llama_dir, tmp_path):
    data = _data(tmp_path)
    first = _train(tiny_llama_dir, data, name="lr-high", learning_rate=1e-2)
    second = _train(tiny_llama_dir, data, name="lr-low", learning_rate=3e-3)
    at = page("runs")
    assert {r for r in at.dataframe[0].value["run"]} == {first.name, second.name}
    assert at.get("graphviz_chart"), "the lineage graph is drawn"
    assert any("Training hyperparameters" in m.value for m in at.markdown)
    at.selectbox(key="runs_pick").set_value(first.name).run()
    assert not at.exception
    at.button(key="runs_write_card").click().run()
    assert (first / "card.json").is_file() and (first / "README.md").is_file()
    front = yaml.safe_load((first / "README.md").read_text().split("---")[1])
    assert front["base_model"] == str(tiny_llama_dir)  # a local base is named by its folder (ModelSource.hub_name)
    at.text_input(key="runs_artifact").set_value(str(second / "adapter" / "adapter_config.json")).run()
    assert at.selectbox(key="runs_pick").value == second.name  # an artifact reopens its run
    assert at.multiselect(key="runs_compare").value == [second.name, first.name]
    assert at.get("plotly_chart"), "the curves are overlaid"
    diff = at.dataframe[1].value
    assert list(diff["field"]) == ["learning_rate"]


def test_chat_page_puts_the_gguf_beside_its_torch_model(workspace, tiny_llama_dir, tmp_path):
    gguf = tmp_path / "tiny-F16.gguf"
    gguf_convert.convert(tiny_llama_dir, gguf, "f16")
    at = page("chat", active_model={"kind": "local", "ref": str(tiny_llama_dir)}, chat_gguf=str(gguf))
    assert [sb.value for sb in at.selectbox if sb.label == "Variant"] == ["Active model", "GGUF export (llama.cpp)"]
    assert [c.value for c in at.caption if c.value.startswith("backend")] == ["backend: torch (transformers)", "backend: llama.cpp"]
    at.chat_input(key="chat_prompt").set_value("Hello there").run()
    deadline = time.time() + 120
    while at.session_state["chat_streams"] and time.time() < deadline:
        time.sleep(0.2)
        at.run()
    assert not at.session_state.get("chat_errors"), at.session_state["chat_errors"]
    histories = at.session_state["chat_histories"]
    for column in (0, 1):
        answer = histories[column][1]
        assert answer["stats"]["new_tokens"] > 0 and answer["stats"]["tokens_per_s"], answer
    assert sum("tok/s" in c.value for c in at.caption) == 2  # tokens/s of both backends
