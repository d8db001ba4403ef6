"""AppTest of the Distill page: the temperature panel on a real model, and a short real distillation run."""
from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest
from test_distill import four_layer_teacher
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
    table = at.dataframe[0].value
    assert list(table.columns) == ["token", "id", "T=1", "T=2", "T=4"] and table["token"].iloc[-1] == "(all other tokens)"
    assert any("Entropy" in c.value for c in at.caption)


def test_a_short_distillation_run_shows_curves_and_sizes(workspace, tmp_path, embedded_tokenizer):
    teacher = four_layer_teacher(tmp_path / "teacher", embedded_tokenizer)
    at = page(teacher)
    at.number_input(key="distill_steps").set_value(3).run()
    at.number_input(key="distill_batch").set_value(1).run()
    at.checkbox(key="distill_evaluate").uncheck().run()
    at.button(key="distill_start").click().run()
    assert not at.exception, at.exception
    run_dir = Path(at.session_state["distill_run"])
    status = runs.wait(run_dir, timeout=300)
    assert status.state == "succeeded", status.error + runs.log_tail(run_dir)
    at.run()
    assert not at.exception, at.exception
    loss_chart = chart_traces(at)
    assert [t["name"] for t in loss_chart] == ["loss", "ce", "kl"]
    assert decode(loss_chart[0]["x"]) == [1, 2, 3]
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["Student parameters"].split()[0]) < float(metrics["Teacher parameters"].split()[0])
    assert any("teacher layers [0, 2, 3] of 4" in c.value for c in at.caption)
    assert {"💬 Chat with it", "📊 Evaluate it"} <= {b.label for b in at.button}
