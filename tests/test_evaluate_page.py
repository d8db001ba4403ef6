"""AppTest of the Evaluate page: the form, launching a real evaluation job from it, and the finished report."""
from __future__ import annotations

from inprocess import work_here
from streamlit.testing.v1 import AppTest
from test_evaluate import make_adapter

from conftest import ROOT
from core import runs

PAGE = str(ROOT / "app_pages" / "evaluate.py")


def _page(tiny_llama_dir) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["active_model"] = {"kind": "local", "ref": str(tiny_llama_dir)}
    return at


def test_form_without_runs_and_adapter_preselected_from_the_train_page(workspace, tiny_llama_dir, tmp_path):
    at = _page(tiny_llama_dir)
    at.run()
    assert not at.exception
    assert at.title[0].value.startswith("📊 Evaluate")
    launch = at.button(key="eval_launch")
    assert launch.disabled  # no fine-tuned variant chosen yet
    assert at.number_input(key="eval_task_samples").value == 12
    assert at.number_input(key="eval_forgetting_threshold").value == 3.0
    assert any("No evaluate runs yet" in i.value for i in at.info)

    at = _page(tiny_llama_dir)
    at.session_state["eval_adapter"] = str(tmp_path / "some-adapter")
    at.run()
    assert at.text_input(key="eval_adapter_path").value == str(tmp_path / "some-adapter")
    assert not at.button(key="eval_launch").disabled


def _finished_train_run(tiny_llama_dir) -> tuple[str, str]:
    """A training run folder as the train job leaves it: spec naming the model, status succeeded, adapter/."""
    from core.runs.status import RunStatus, write_status

    run_dir = runs.create_run_from_dict({"kind": "train", "name": "tiny", "model": {"kind": "local", "ref": str(tiny_llama_dir)}})
    make_adapter(tiny_llama_dir, run_dir / "adapter", random_weights=True)
    write_status(run_dir, RunStatus(state="succeeded", kind="train", progress=1.0))
    return run_dir.name, str(run_dir / "adapter")


def test_launch_from_the_page_then_reattach_to_the_report(workspace, tiny_llama_dir):
    train_id, adapter = _finished_train_run(tiny_llama_dir)
    at = _page(tiny_llama_dir)
    at.session_state["eval_adapter"] = adapter  # what the Train page hands over
    at.run()
    assert at.multiselect(key="eval_adapters").value == [f"{train_id} (succeeded)"]
    for name, value in (("task_samples", 3), ("general_samples", 3), ("mc_samples", 4), ("max_new_tokens", 6), ("bootstrap_samples", 100)):
        at.number_input(key=f"eval_{name}").set_value(value)
    at.text_input(key="eval_lm_tasks").set_value("hellaswag")
    at.run()
    assert any("lm-eval" in i.value and "not installed" in i.value for i in at.info)
    at.button(key="eval_launch").click()
    at.run(timeout=60)
    assert not at.exception
    (run,) = runs.list_runs("evaluate")
    spec = run.spec
    assert spec["variants"] == [{"label": train_id, "model": {"kind": "local", "ref": str(tiny_llama_dir), "adapter": adapter}}]
    assert spec["task_samples"] == 3
    assert at.query_params["eval_run"] == [run.run_id] or at.query_params["eval_run"] == run.run_id
    status = runs.wait(run.path, timeout=300)
    assert status.state == "succeeded", (status.error, runs.log_tail(run.path))

    # a fresh session (a browser reload) with the run in the URL shows the finished report
    fresh = _page(tiny_llama_dir)
    fresh.query_params["eval_run"] = run.run_id
    fresh.run()
    assert not fresh.exception
    boxes = [b.value for b in (*fresh.success, *fresh.warning, *fresh.error)]
    assert any(f"{train_id}:" in text and any(v in text for v in ("improved", "no effect", "forgetting")) for text in boxes), boxes
    assert len(fresh.get("plotly_chart")) >= 3
    assert any("Task score" in str(df.value) for df in fresh.dataframe)
    labels = [d.proto.label for d in fresh.get("download_button")]
    assert labels == ["⬇ Markdown", "⬇ HTML", "⬇ JSON"]
    assert any("lm-eval: skipped" in i.value for i in fresh.info)


def test_forgetting_advice_retrains_the_same_run_with_replay_in_one_click(workspace, tiny_llama_dir):
    """The verdict's one-click advice opens the Train page on the run's own spec with replay on (issue 17)."""
    import json

    from core.evaluate.stats import Interval
    from core.evaluate.verdict import decide
    from core.runs import read_result, result_path

    train_id, adapter = _finished_train_run(tiny_llama_dir)
    run_dir = runs.create_run_from_dict({"kind": "evaluate", "base": {"kind": "local", "ref": str(tiny_llama_dir)},
                                         "variants": [{"label": train_id, "model": {"adapter": adapter}}], "task_samples": 2,
                                         "general_samples": 2, "mc_samples": 2, "max_new_tokens": 4, "bootstrap_samples": 0})
    work_here(run_dir)  # the worker's code in this process: the worker process is not what this tests
    assert runs.read_status(run_dir).state == "succeeded", runs.log_tail(run_dir)
    report = read_result(run_dir, "evaluate")
    forgot = decide(train_id, Interval(20.0, 20.0, 20.0, 2), Interval(-12.0, -12.0, -12.0, 2), None)  # what a real forgetting run gets
    assert forgot.verdict == "forgetting" and forgot.actions[0]["spec_updates"] == {"replay_fraction": 0.2}
    report["verdicts"] = [forgot.as_dict()]
    result_path(run_dir, "evaluate").write_text(json.dumps(report))

    at = _page(tiny_llama_dir)
    at.query_params["eval_run"] = run_dir.name
    at.run()
    assert not at.exception, at.exception
    at.button(key=f"eval_action_{train_id}_0").click().run()
    recipe = at.session_state["train_recipe"]
    assert recipe["replay_fraction"] == 0.2 and recipe["name"].endswith("-replay")
    assert at.session_state["active_model"] == {"kind": "local", "ref": str(tiny_llama_dir)}
    assert at.session_state["train_recipe_origin"][0] == recipe
