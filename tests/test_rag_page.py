"""AppTest of the RAG / RAFT page: index + recall + a live query, build a RAFT set, hand it to Train / Template,
and show a RAFT evaluation report. A click's job runs through the worker's code in this process (jobs_inline): the
finished view is what is tested here."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from jobs_inline import jobs_inline_fixture  # noqa: F401 - a fixture
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
pytestmark = pytest.mark.slow


def _open(tiny_llama_dir) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["active_model"] = {"kind": "local", "ref": str(tiny_llama_dir)}
    at.run()
    at.switch_page("app_pages/rag.py").run()
    assert not at.exception, at.exception
    return at


def _wait(at: AppTest, key: str) -> None:
    from core.runs import wait

    status = wait(Path(at.session_state[key]), timeout=600)
    assert status.state == "succeeded", status.error
    at.run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])


def test_index_tab_measures_recall_and_answers_a_query(workspace, tiny_llama_dir, jobs_inline):
    at = _open(tiny_llama_dir)
    assert at.title[0].value.startswith("📚 RAG / RAFT") and [t.label for t in at.tabs][:3] == [
        "1 · Index & retrieval", "2 · Build a RAFT set", "3 · Evaluate RAFT"]
    assert any(i.value.startswith("Build a RAFT set first") for i in at.info)
    at.button(key="rag_index_start").click().run()
    _wait(at, "rag_index_run")
    recall = at.dataframe[0].value
    assert list(recall["retriever"]) == ["Hybrid (dense + BM25, rank fusion)", "Dense (all-MiniLM-L6-v2)", "BM25 (lexical)"]
    assert (recall["recall@5"] >= 0.97).all() and any("79 chunks" in c.value for c in at.caption)
    at.text_input(key="rag_query").input("What is the hotel cap per night on business trips?").run()
    at.selectbox(key="rag_query_mode").set_value("bm25").run()
    hits = at.dataframe[1].value
    assert len(hits) == 3 and hits["doc_id"].iloc[0] == "policy-travel" and list(hits["rank"]) == [1, 2, 3]


def test_raft_tab_builds_a_set_and_hands_it_to_train_and_template(workspace, tiny_llama_dir, jobs_inline):
    at = _open(tiny_llama_dir)
    at.selectbox(key="raft_form_question_source").set_value("generate").run()
    assert at.selectbox(key="raft_writer_choice").label == "Model that writes the questions"  # only for generated questions
    at.selectbox(key="raft_form_question_source").set_value("file").run()
    assert not [s for s in at.selectbox if s.key == "raft_writer_choice"]
    at.number_input(key="raft_form_k").set_value(3).run()
    at.number_input(key="raft_form_distractor_only_fraction").set_value(0.25).run()
    at.button(key="raft_start").click().run()
    _wait(at, "raft_run")
    saved = next(s.value for s in at.success if s.value.startswith("Saved"))
    assert "**handbook-raft**: 120 examples (30 distractor-only), 30 held-out questions" in saved and "handbook-raft-sft" in saved
    spec = json.loads(json.dumps(__import__("yaml").safe_load((Path(at.session_state["raft_run"]) / "spec.yaml").read_text())))
    assert spec["k"] == 3 and spec["model"]["ref"] == str(tiny_llama_dir)
    at.button(key="raft_train_handbook-raft").click().run()
    recipe = at.session_state["train_recipe"]
    assert at.session_state["train_recipe_origin"] == (recipe, "the RAG / RAFT page's recipe")
    assert (recipe["dataset"] == str(workspace / "datasets" / "handbook-raft") and recipe["max_length"] % 64 == 0
            and recipe["max_length"] >= 256)
    assert not at.exception
    assert at.selectbox(key="train_dataset_choice").value == "Workspace: handbook-raft"  # the Train page opened on it
    assert at.number_input(key="train_form_max_length").value == recipe["max_length"]


# The Evaluate tab's AppTest is test_rag_jobs.show_the_report_on_the_page: it opens the page on the report that
# test_raft_evaluation_compares_base_sft_and_raft_under_both_conditions made (one evaluation run serves both).
