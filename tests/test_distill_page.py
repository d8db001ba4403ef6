"""AppTest of the Distill page: the three variants ("which one when"), the temperature panel on a real model, a
short logit run, the on-policy knobs, a sequence-level teacher dataset handed to the Train page, and a comparison.
The runs a click starts go through the worker's code in this process (jobs_inline): the page's finished view is tested."""
from __future__ import annotations

import json
from pathlib import Path

from jobs_inline import jobs_inline_fixture  # noqa: F401 - a fixture
from streamlit.testing.v1 import AppTest
from test_distill import four_layer_teacher
from test_distill_variants import answering_teacher
from test_merge_page import chart_traces, decode

from core import runs

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "distill.py")


def page(active: Path | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=180)
    if active:
        at.session_state["active_model"] = {"kind": "local", "ref": str(active)}
    at.run()
    assert not at.exception, at.exception
    return at


def finish(at: AppTest, key: str) -> Path:
    run_dir = Path(at.session_state[key])
    status = runs.wait(run_dir, timeout=300)
    assert status.state == "succeeded", status.error + runs.log_tail(run_dir)
    at.run()
    assert not at.exception, at.exception
    return run_dir


def test_the_page_offers_three_variants_with_which_one_when(workspace):
    at = page()
    guide = at.dataframe[0].value
    assert list(guide["variant"]) == ["sequence-level", "logit", "on-policy (GKD)"]
    assert list(guide["tokenizer"]) == ["any", "the teacher's", "the teacher's"]
    assert at.radio(key="distill_variant").options == ["sequence-level", "logit", "on-policy (GKD)"]


def test_temperature_panel_shows_softening_on_the_users_prompt(workspace, tiny_llama_dir):
    at = page(tiny_llama_dir)
    assert any("T²·KL" in c.value for c in at.caption)
    at.text_input(key="distill_prompt").set_value("Which colour is grass?").run()
    at.button(key="distill_show_t").click().run()
    assert not at.exception, at.exception
    traces = chart_traces(at)
    assert [t["name"] for t in traces] == ["T=1", "T=2", "T=4"]
    top_t1, top_t4 = decode(traces[0]["y"])[0], decode(traces[2]["y"])[0]
    assert top_t4 < top_t1  # the top token loses mass as T grows
    table = at.dataframe[1].value
    assert list(table.columns) == ["token", "id", "T=1", "T=2", "T=4"] and table["token"].iloc[-1] == "(all other tokens)"
    assert any("Entropy" in c.value for c in at.caption)


def test_a_short_logit_run_shows_curves_and_sizes(workspace, tmp_path, embedded_tokenizer, jobs_inline):
    teacher = four_layer_teacher(tmp_path / "teacher", embedded_tokenizer)
    at = page(teacher)
    at.radio(key="distill_variant").set_value("logit").run()
    at.number_input(key="distill_steps").set_value(3).run()
    at.number_input(key="distill_batch_size").set_value(1).run()
    at.checkbox(key="distill_evaluate").uncheck().run()
    at.button(key="distill_start").click().run()
    assert not at.exception, at.exception
    finish(at, "distill_run")
    loss_chart = chart_traces(at)
    assert [t["name"] for t in loss_chart] == ["loss", "ce", "kl"]
    assert decode(loss_chart[0]["x"]) == [1, 2, 3]
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["Student parameters"].split()[0]) < float(metrics["Teacher parameters"].split()[0])
    assert "Held-out KL" in metrics
    assert any("teacher layers [0, 2, 3] of 4" in c.value for c in at.caption)
    assert {"💬 Chat with it", "📊 Evaluate it"} <= {b.label for b in at.button}


def test_on_policy_shows_the_gkd_knobs_with_their_help(workspace):
    at = page()
    at.radio(key="distill_variant").set_value("on_policy").run()
    keys = {w.key for w in at.number_input}
    assert {"distill_gkd_lambda", "distill_gkd_beta", "distill_gkd_temperature", "distill_max_new_tokens"} <= keys
    assert not {"distill_temperature", "distill_alpha"} & keys
    assert "share of steps" in at.number_input(key="distill_gkd_lambda").help
    assert "reverse KL" in at.number_input(key="distill_gkd_beta").help
    assert "distill_replay_fraction" in keys


def test_sequence_level_answers_become_a_dataset_for_the_train_page(workspace, tmp_path, embedded_tokenizer, jobs_inline):
    teacher = answering_teacher(tmp_path / "teacher", embedded_tokenizer)
    at = page(teacher)
    at.radio(key="distill_variant").set_value("sequence").run()
    at.number_input(key="distill_seq_max_rows").set_value(4).run()
    at.number_input(key="distill_seq_max_new_tokens").set_value(4).run()
    at.checkbox(key="distill_seq_keep_unfinished").check().run()
    at.selectbox(key="distill_seq_json_only").set_value("no").run()
    at.number_input(key="distill_seq_student_stride").set_value(2).run()
    at.button(key="distill_seq_start").click().run()
    assert not at.exception, at.exception
    run_dir = finish(at, "distill_teacher_answers_run")
    result = json.loads((run_dir / "result.json").read_text())
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Prompts answered"] == "4" and metrics["Rows kept"] == "4"
    answers = next(d.value for d in at.dataframe if "teacher's answer" in d.value.columns)
    assert len(answers) == 4
    at.button(key=f"distill_seq_train_{run_dir.name}").click().run()
    assert at.session_state["train_recipe"]["dataset"] == result["dataset_dir"]
    assert at.session_state["active_model"] == {"kind": "local", "ref": result["student_dir"]}


def test_a_comparison_is_shown_as_a_table_a_chart_and_exports(workspace, tmp_path, embedded_tokenizer, jobs_inline):
    teacher = four_layer_teacher(tmp_path / "teacher", embedded_tokenizer)
    at = page(teacher)
    at.multiselect(key="distill_cmp_variants").set_value(["logit"]).run()
    for key, value in (("distill_cmp_steps", 1), ("distill_cmp_batch_size", 1), ("distill_cmp_eval_rows", 1), ("distill_cmp_max_rows", 4)):
        at.number_input(key=key).set_value(value).run()
    at.button(key="distill_cmp_start").click().run()
    assert not at.exception, at.exception
    finish(at, "distill_compare_run")
    table = next(d.value for d in at.dataframe if "agreement" in d.value.columns)
    assert list(table["student"]) == ["teacher", "student before distillation", "logit"]
    assert {"task_score", "general_score", "general_perplexity", "agreement", "wall_s"} <= set(table.columns)
    assert [t["name"] for t in chart_traces(at)] == ["task score", "general score", "agreement (ROUGE-L)"]
    assert {"⬇ CSV", "⬇ Markdown", "⬇ JSON"} <= {b.label for b in at.get("download_button")}
