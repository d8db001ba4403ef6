"""AppTest of the Decide page: scenarios through the widgets, the recipe hand-off, the quick baseline."""
from __future__ import annotations

from pathlib import Path

from jobs_inline import jobs_inline_fixture  # noqa: F401 - a fixture
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
    # Issue 29 item 2: the form is what will run. The CPU demo's step cap used to stay and silently cut the epochs.
    train = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app_pages" / "train.py"), default_timeout=180)
    train.session_state["train_recipe"] = recipe
    train.session_state["train_recipe_origin"] = (recipe, "the Decide page's recipe")
    train.run()
    assert not train.exception
    assert train.number_input(key="train_form_max_steps").value == 0, "0 = run num_epochs"
    assert train.number_input(key="train_form_num_epochs").value == recipe["num_epochs"]


def test_rare_edge_case_recommends_prompting(workspace):
    at = _app()
    at.multiselect(key="decide_gaps").set_value(["steering"]).run()
    at.slider(key="decide_failure").set_value(0.01).run()
    at.number_input(key="decide_rows").set_value(20).run()
    assert "Prompting is enough" in _headline(at)


def test_baseline_runs_as_a_job_and_measures_rag_beside_prompting(workspace, tiny_llama_dir, jobs_inline):
    from core.runs import wait

    at = AppTest.from_file(PAGE, default_timeout=300)
    at.session_state["active_model"] = {"kind": "local", "ref": str(tiny_llama_dir)}
    at.run()
    assert at.radio(key="decide_eval_origin").value.startswith("Demo: handbook")
    at.slider(key="decide_n").set_value(2).run()
    at.slider(key="decide_max_new").set_value(8).run()
    at.button(key="decide_run_baseline").click().run()
    assert not at.exception and not at.error
    run_dir = Path(at.session_state["decide_baseline_run"])
    assert (run_dir / "spec.yaml").is_file() and jobs_inline == [run_dir.resolve()]  # the click's run (in this process here)
    status = wait(run_dir, timeout=600)
    assert status.state == "succeeded", status.error
    at.run()
    assert not at.exception and not at.error
    labels = [m.label for m in at.metric]
    assert "zero-shot prompting" in labels and "3-shot prompting" in labels
    assert any(label.startswith("RAG with the base model (hybrid top-3") for label in labels), labels
    rows_scored = next(m for m in at.metric if m.label == "Rows scored")
    assert not rows_scored.delta and any(" · measured in " in c.value for c in at.caption), "a duration is no delta pill"
    assert at.checkbox(key="decide_known").value is True  # the measured scores feed the questionnaire
    assert set(at.session_state["decide_measured"]) == {"0-shot", "3-shot", "rag"}
    assert any(n.value.startswith("Measured on your eval rows: 0-shot") for n in at.caption), [c.value for c in at.caption]


def test_tickets_have_no_documents_so_no_rag_condition(workspace):
    at = _app()
    at.radio(key="decide_eval_origin").set_value("Demo: support tickets (a format gap)").run()
    assert not at.exception
    docs = next(r for r in at.radio if r.label == "Documents for the RAG condition")
    assert docs.value == "No documents (no RAG)"
