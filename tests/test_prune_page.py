"""AppTest of the Prune page: mode-dependent form, a real prune run with its heatmap, metrics and speed note."""
from __future__ import annotations

from pathlib import Path

from jobs_inline import jobs_inline_fixture  # noqa: F401 - a fixture
from streamlit.testing.v1 import AppTest
from test_merge_page import chart_traces, decode

from core import runs
from core.prune import MODE_LABELS

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "prune.py")


def page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def test_form_follows_the_mode(workspace):
    at = page()
    assert at.selectbox(key="prune_mode").options == list(MODE_LABELS.values())
    assert at.slider(key="prune_sparsity").value == 0.5
    assert at.radio(key="prune_target").options == ["All linear layers except lm_head", "MLP only", "Attention only",
                                                     "Custom name pattern (regex)"]
    at.radio(key="prune_target").set_value("custom").run()
    assert at.text_input(key="prune_pattern").value == r"mlp\.(gate|up)_proj"
    at.selectbox(key="prune_mode").set_value("semi_structured_2_4").run()
    assert not [s for s in at.slider if s.key == "prune_sparsity"]
    assert any("2 of every 4" in c.value for c in at.caption)
    at.selectbox(key="prune_mode").set_value("mlp_neurons").run()
    assert not [r for r in at.radio if r.key == "prune_target"]
    assert any("saved model is smaller" in c.value for c in at.caption)


def test_a_prune_run_reports_sparsity_size_and_latency(workspace, tiny_llama_dir, jobs_inline):
    at = page()
    at.selectbox(key="prune_model_choice").set_value("Local folder").run()
    at.text_input(key="prune_model_ref").set_value(str(tiny_llama_dir)).run()
    at.checkbox(key="prune_evaluate").uncheck().run()
    at.button(key="prune_start").click().run()
    assert not at.exception, at.exception
    run_dir = Path(at.session_state["prune_run"])
    status = runs.wait(run_dir, timeout=300)
    assert status.state == "succeeded", status.error + runs.log_tail(run_dir)
    at.run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Sparsity reached"] == "50.0%"
    assert "Latency, 32 tokens" in metrics and "Size on disk" in metrics
    assert any("No speed-up expected" in w.value for w in at.warning)
    heatmap = chart_traces(at)[0]
    assert heatmap["type"] == "heatmap" and decode(heatmap["y"]) == ["0", "1"]
    assert set(decode(heatmap["x"])) == {"mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj",
                                         "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"}
    labels = {b.label for b in at.button}
    assert {"💬 Chat with it", "📊 Evaluate it", "Start a short LoRA recovery fine-tune"} <= labels
    pruned_dir = str(run_dir / "pruned")

    jobs_inline.inline = False  # the recovery run is started for real, then stopped
    at.button(key=f"prune_recover_{run_dir.name}").click().run()  # a LoRA recovery run on the pruned folder
    assert not at.exception, at.exception
    train_runs = runs.list_runs("train")
    assert len(train_runs) == 1 and at.session_state["train_run_id"] == str(train_runs[0].path)
    assert train_runs[0].spec["model"] == {"kind": "local", "ref": pruned_dir}
    runs.stop(train_runs[0].path)
    assert runs.wait(train_runs[0].path, timeout=120).is_final


def test_the_task_rows_of_the_verdict_are_a_field_of_the_form(workspace, tiny_llama_dir, room_task):
    at = page()
    field = at.text_input(key="prune_task_dataset")
    assert field.value == "" and "demo ticket task" in field.help and "run the model came from" in field.help
    at.selectbox(key="prune_model_choice").set_value("Local folder").run()
    at.text_input(key="prune_model_ref").set_value(str(tiny_llama_dir)).run()
    at.text_input(key="prune_task_dataset").set_value(str(room_task)).run()
    at.button(key="prune_start").click().run()
    assert not at.exception, at.exception
    run_dir = Path(at.session_state["prune_run"])
    runs.stop(run_dir)
    assert runs.read_spec_dict(run_dir)["task_dataset"] == str(room_task)
    runs.wait(run_dir, timeout=120)
    at.checkbox(key="prune_evaluate").uncheck().run()
    assert not [t for t in at.text_input if t.key == "prune_task_dataset"]  # nothing is scored, so no task rows to choose
