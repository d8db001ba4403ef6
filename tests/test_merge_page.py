"""AppTest of the Merge page: the form is generated from the registry, pre-flight messages, a real merge run."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
from jobs_inline import jobs_inline_fixture  # noqa: F401 - a fixture
from streamlit.testing.v1 import AppTest
from test_merge import make_model

from core import runs
from core.merge import METHODS

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "merge.py")


def decode(value):
    """Plotly JSON stores numeric arrays as {dtype, bdata (base64)}; lists otherwise."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).tolist()
    return list(value)


def chart_traces(at: AppTest, index: int = 0) -> list[dict]:
    return json.loads(at.get("plotly_chart")[index].proto.spec)["data"]


def page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def task_arithmetic_page() -> AppTest:
    at = page()
    at.selectbox(key="merge_method").set_value("task_arithmetic").run()
    at.number_input(key="merge_count").set_value(1).run()
    return at


def choose_local(at: AppTest, key: str, path: Path) -> None:
    at.selectbox(key=f"{key}_choice").set_value("Local folder").run()
    at.text_input(key=f"{key}_ref").set_value(str(path)).run()


def test_method_form_comes_from_the_registry(workspace):
    at = page()
    method = at.selectbox(key="merge_method")
    assert method.options == [m.pretty_name for m in METHODS.values()]
    assert any("Weighted average" in m.value and "arxiv.org/abs/2203.05482" in m.value for m in at.markdown)
    assert at.number_input(key="merge_count").value == 2  # a soup needs two models
    at.selectbox(key="merge_method").set_value("task_arithmetic").run()
    assert any("task vectors" in m.value and "arxiv.org/abs/2212.04089" in m.value for m in at.markdown)
    labels = {s.label for s in at.slider}
    assert {"Weight", "λ (scale)"} <= labels and "Density" not in labels
    at.selectbox(key="merge_method").set_value("ties").run()
    assert {"Weight", "Density", "λ (scale)"} <= {s.label for s in at.slider}
    assert any(c.label == "Normalize" for c in at.checkbox)
    at.radio(key="merge_mode").set_value("Forgetting remedy: sweep base → fine-tuned").run()
    assert at.selectbox(key="merge_method").options == ["Linear / model soup", "SLERP", "Task arithmetic"]
    assert at.text_input(key="merge_sweep").value == "0, 0.25, 0.5, 0.75, 1"
    assert any("No merge runs yet" in i.value for i in at.info)


def test_preflight_refusal_and_yaml_export(workspace, tmp_path):
    base = make_model(tmp_path / "base")
    mistral = make_model(tmp_path / "mistral", arch="mistral")
    at = task_arithmetic_page()
    choose_local(at, "merge_base", base)
    choose_local(at, "merge_m0", mistral)
    at.button(key="merge_preflight").click().run()
    assert not at.exception
    assert any("Different architecture" in e.value for e in at.error)
    at.text_input(key="merge_m0_ref").set_value(str(make_model(tmp_path / "tuned", seed=1))).run()
    assert not at.error  # the refusal belonged to the previous inputs
    at.button(key="merge_preflight").click().run()
    assert any("Pre-flight passed" in s.value for s in at.success)
    assert at.get("download_button")[0].label == "Download mergekit YAML"


def test_start_runs_a_merge_and_shows_the_result(workspace, tmp_path, jobs_inline):
    base = make_model(tmp_path / "base")
    tuned = make_model(tmp_path / "tuned", seed=1)
    at = task_arithmetic_page()
    choose_local(at, "merge_base", base)
    choose_local(at, "merge_m0", tuned)
    at.checkbox(key="merge_evaluate").uncheck().run()
    at.button(key="merge_start").click().run()
    assert not at.exception, at.exception
    assert any("Pre-flight passed" in s.value for s in at.success)
    run_dir = Path(at.session_state["merge_run"])
    status = runs.wait(run_dir, timeout=300)
    assert status.state == "succeeded", status.error + runs.log_tail(run_dir)
    at.run()
    assert not at.exception, at.exception
    assert any("succeeded" in m.value for m in at.markdown)
    assert any(m.label == "Merge time" for m in at.metric)
    assert {b.label for b in at.button} >= {"💬 Chat with it", "📊 Evaluate it"}
    result = runs.read_result(run_dir)
    assert (Path(result["model_dir"]) / "merge.yaml").is_file()
    assert any(b.label == "Download the YAML this merge used" for b in at.get("download_button"))


def test_sweep_run_draws_the_learning_vs_forgetting_curve(workspace, tmp_path):
    run_dir = runs.create_run_from_dict({"kind": "merge", "method": "linear", "models": [{"source": {"kind": "embedded"}}],
                                         "sweep": [0.0, 0.5, 1.0]}, name="sweep")
    from core.runs.status import RunStatus, write_status
    from core.workspace import atomic_write_json

    points = [{"point": i, "lambda": lam, "task_score": task, "general_score": general, "model_dir": str(tmp_path / f"l{lam}")}
              for i, (lam, task, general) in enumerate(((0.0, 10.0, 60.0), (0.5, 70.0, 58.0), (1.0, 90.0, 40.0)))]
    atomic_write_json(run_dir / "sweep.json", {"method": "linear", "points": points})
    write_status(run_dir, RunStatus(state="succeeded", kind="merge", result={"best_lambda": 0.5}))
    at = page()
    trace = chart_traces(at)[0]
    assert decode(trace["x"]) == [60.0, 58.0, 40.0] and decode(trace["y"]) == [10.0, 70.0, 90.0]
    assert decode(trace["text"]) == ["λ=0", "λ=0.5", "λ=1"]
    picker = at.selectbox(key=f"merge_point_{run_dir.name}")
    assert picker.value == 1  # the suggested point keeps the general score and learns the task


def test_the_merge_form_names_the_task_rows_of_its_verdict(workspace):
    at = task_arithmetic_page()
    field = at.text_input(key="merge_task_dataset")
    assert field.value == "" and "demo ticket task" in field.help and "run the merged models came from" in field.help
    at.checkbox(key="merge_evaluate").uncheck().run()
    assert not [t for t in at.text_input if t.key == "merge_task_dataset"]
