"""AppTest of the Decide page: scenarios through the widgets, the recipe hand-off, the quick baseline."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "app_pages" / "decide.py")


def _app() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.run()
    assert not at.exception
    return at


def _headline(at: AppTest) -> str:
    return next(s.value for s in at.success if s.value.startswith("**Recommendation"))


def test_monthly_facts_recommend_rag(workspace):
    at = _app()
    at.multiselect(key="decide_gaps").set_value(["knowledge"]).run()
    at.select_slider(key="decide_changes").set_value("monthly").run()
    assert not at.exception
    assert "retrieval (RAG)" in _headline(at)
    assert any("change monthly" in e.label or "RAG" in e.label for e in at.expander)


def test_json_format_held_most_of_the_time_recommends_lora_and_sends_the_recipe(workspace):
    at = _app()
    at.multiselect(key="decide_gaps").set_value(["behaviour"]).run()
    at.number_input(key="decide_rows").set_value(1000).run()
    at.checkbox(key="decide_known").check().run()
    at.slider(key="decide_success").set_value(0.8).run()
    at.selectbox(key="decide_model").set_value("Llama-3.2 1B").run()
    assert "Fine-tune with LoRA" in _headline(at)
    at.button(key="decide_to_train").click().run()
    recipe = at.session_state["train_recipe"]
    assert recipe["method"] == "lora" and recipe["learning_rate"] == 2e-4 and recipe["target_modules"] == ["all-linear"]
    assert set(recipe) >= {"lora_r", "lora_alpha", "num_epochs", "batch_size", "max_length", "gradient_checkpointing"}


def test_rare_edge_case_recommends_prompting(workspace):
    at = _app()
    at.multiselect(key="decide_gaps").set_value(["steering"]).run()
    at.slider(key="decide_failure").set_value(0.01).run()
    at.number_input(key="decide_rows").set_value(20).run()
    assert "Prompting is enough" in _headline(at)


@pytest.mark.skipif(not (ROOT / "assets" / "demo" / "eval.jsonl").is_file(), reason="demo eval set not built")
def test_quick_baseline_on_the_demo_eval_set(workspace, tiny_llama_dir):
    at = AppTest.from_file(PAGE, default_timeout=300)
    at.session_state["active_model"] = {"kind": "local", "ref": str(tiny_llama_dir)}
    at.run()
    at.slider(key="decide_n").set_value(1).run()
    at.slider(key="decide_max_new").set_value(8).run()
    at.button(key="decide_run_baseline").click().run()
    assert not at.exception and not at.error
    baseline = at.session_state["decide_baseline"]
    assert baseline["scorer"] == "json_field_accuracy" and baseline["n"] == 1 and set(baseline["scores"]) == {0, 3}
    assert all(0.0 <= v <= 1.0 for v in baseline["scores"].values())
    labels = [m.label for m in at.metric]
    assert "0-shot json field accuracy" in labels and "3-shot json field accuracy" in labels
    assert at.checkbox(key="decide_known").value is True  # the measured score feeds the questionnaire
