"""The Train page (AppTest): generated form, pre-flight, YAML preview, Start launches a real tiny run,
the live panel reads it back, a refresh reattaches through ?run=<id>, and a failed run shows its error."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from streamlit.testing.v1 import AppTest

from conftest import ROOT
from core import runs
from core.runs.status import RunStatus, write_status

pytestmark = pytest.mark.slow
PAGE = str(ROOT / "app_pages" / "train.py")


def _page(tiny_llama_dir) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["active_model"] = {"kind": "local", "ref": str(tiny_llama_dir)}
    return at


def _preflight_settled(at: AppTest, timeout: float = 120.0) -> AppTest:
    """Rerun until the background data check has answered (the page waits DATA_CHECK_WAIT_S for it, then shows
    "checking the data…" and reruns itself in the browser; on a loaded machine the demo's 300 rows take longer)."""
    deadline = time.time() + timeout
    while any("checking the data" in i.value for i in at.info) and time.time() < deadline:
        time.sleep(0.5)
        at.run()
    return at


def _data(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Say {w}"}, {"role": "assistant", "content": w}]}
            for w in ("yes", "no", "maybe", "never")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_form_preflight_preview_start_and_live_panel(workspace, tiny_llama_dir, tmp_path):
    at = _page(tiny_llama_dir)
    _preflight_settled(at.run())
    assert not at.exception
    assert at.selectbox(key="train_form_method").value == "lora"
    from core.train.spec import CPU_DEMO_STEPS

    assert at.number_input(key="train_form_max_steps").value == CPU_DEMO_STEPS, "CPU defaults: the few-minute demo run"
    assert at.selectbox(key="train_dataset_choice").value.startswith("Demo")
    assert any(e.label.startswith("Advanced") for e in at.expander)
    labels = {m.label: m.value for m in at.metric}
    assert int(labels["Training rows"]) == 270, "demo: 300 rows, 10% held out"
    assert any("kind: train" in c.value for c in at.code), "the YAML preview shows the spec"

    at.selectbox(key="train_dataset_choice").set_value("File or folder path…").run()
    at.text_input(key="train_dataset_path").set_value(str(_data(tmp_path))).run()
    for key, value in {"max_steps": 2, "batch_size": 2, "max_length": 64, "lora_r": 4, "save_steps": 100}.items():
        at.number_input(key=f"train_form_{key}").set_value(value)
    at.number_input(key="train_form_eval_fraction").set_value(0.25)
    _preflight_settled(at.run())
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert {m.label: m.value for m in at.metric}["Training rows"] == "3"
    preview = yaml.safe_load(next(c.value for c in at.code if "kind: train" in c.value))
    assert preview["max_steps"] == 2 and preview["model"] == {"kind": "local", "ref": str(tiny_llama_dir)}

    at.button(key="train_start").click().run()
    run_dir = Path(at.session_state["train_run_id"])  # the run folder, as every page keeps it
    run_id = run_dir.name
    assert run_dir.parent == workspace / "runs" and at.query_params["run"] in ([run_id], run_id)
    assert (run_dir / "spec.yaml").is_file()
    assert yaml.safe_load((run_dir / "spec.yaml").read_text())["dataset"] == str(tmp_path / "qa.jsonl")
    assert runs.wait(run_dir, timeout=240).state == "succeeded", runs.log_tail(run_dir)

    fresh = _page(tiny_llama_dir)  # a browser refresh: only the URL knows the run
    fresh.query_params["run"] = run_id
    fresh.run()
    assert not fresh.exception
    assert any(run_id in s.value for s in fresh.subheader)
    assert {m.label for m in fresh.metric} >= {"Train loss", "Eval loss", "Tokens / s"}
    assert fresh.button(key="train_to_chat") and fresh.button(key="train_more")
    assert "succeeded" in str(fresh.dataframe[0].value["status"].tolist())


def test_failed_run_shows_its_error_and_log(workspace, tiny_llama_dir):
    from core.train import TrainSpec

    run_dir = runs.create_run(TrainSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}))
    (run_dir / runs.LOG_FILE).write_text("Traceback (most recent call last):\nValueError: the real cause\n")
    write_status(run_dir, RunStatus(state="failed", kind="train", error="ValueError: the real cause", finished_at=time.time()))
    at = _page(tiny_llama_dir)
    at.session_state["train_run_id"] = run_dir.name
    at.run()
    assert not at.exception
    assert any("the real cause" in e.value for e in at.error)
    assert any("Traceback" in c.value for c in at.code)
    assert at.button(key="train_resume")


def test_recipe_from_decide_prefills_the_form(workspace, tiny_llama_dir):
    at = _page(tiny_llama_dir)
    at.session_state["train_recipe"] = {"method": "qlora", "lora_r": 32, "not_a_field": 1}
    at.run()
    assert not at.exception
    assert at.selectbox(key="train_form_method").value == "qlora"
    assert at.number_input(key="train_form_lora_r").value == 32


def test_processes_field_launch_command_refusal_and_per_rank_progress(workspace, tiny_llama_dir, tmp_path):
    from core.hardware import detect

    at = _page(tiny_llama_dir)
    at.run()
    field = at.number_input(key="train_form_processes_per_node")
    assert field.value == 1 and f"1 to {detect().cpu_cores}" in field.help, "sized to the cores found (no GPU here)"
    assert "CPU cores" in field.help
    at.number_input(key="train_form_processes_per_node").set_value(detect().cpu_cores + 1).run()
    assert any(e.value.startswith("processes_per_node must be at most") for e in at.error), "the form's own limit, beside the field"
    assert not [b for b in at.button if b.key == "train_start"]
    at.selectbox(key="train_dataset_choice").set_value("File or folder path…").run()
    at.text_input(key="train_dataset_path").set_value(str(_data(tmp_path))).run()
    for key, value in {"max_steps": 2, "batch_size": 1, "max_length": 64, "lora_r": 4, "save_steps": 100, "processes_per_node": 2}.items():
        at.number_input(key=f"train_form_{key}").set_value(value)
    at.number_input(key="train_form_eval_fraction").set_value(0.0)
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    codes = [c.value for c in at.code]
    assert any(c.startswith("torchrun --standalone --nnodes 1 --nproc_per_node 2 -m core.train.rank") for c in codes)
    assert any("distributed_type: MULTI_GPU" in c for c in codes) and any("#SBATCH --nodes=1" in c for c in codes)
    assert any("2 process(es)" in c.value for c in at.caption), "the pre-flight says how the run is spread"

    at.selectbox(key="train_form_distributed_strategy").set_value("fsdp").run()
    assert any("FSDP needs CUDA GPUs" in e.value for e in at.error) and at.button(key="train_start").disabled
    at.selectbox(key="train_form_distributed_strategy").set_value("ddp").run()
    assert not at.button(key="train_start").disabled

    at.button(key="train_start").click().run()
    run_dir = workspace / "runs" / at.session_state["train_run_id"]
    assert runs.wait(run_dir, timeout=300).state == "succeeded", runs.log_tail(run_dir)
    fresh = _page(tiny_llama_dir)
    fresh.query_params["run"] = run_dir.name
    fresh.run()
    assert not fresh.exception
    ranks = next(df.value for df in fresh.dataframe if "rank" in df.value.columns)
    assert list(ranks["rank"]) == [0, 1] and set(ranks["state"]) == {"succeeded"} and list(ranks["progress"]) == [1.0, 1.0]


def test_editing_a_training_only_field_does_not_tokenize_the_data_again(workspace, tiny_llama_dir, tmp_path, monkeypatch):
    import core.train.data

    calls = []
    real = core.train.data.prepare_data
    monkeypatch.setattr(core.train.data, "prepare_data",
                        lambda spec, tokenizer, **kwargs: calls.append(spec.learning_rate) or real(spec, tokenizer, **kwargs))
    at = _page(tiny_llama_dir)
    at.run()
    at.selectbox(key="train_dataset_choice").set_value("File or folder path…").run()
    _preflight_settled(at.text_input(key="train_dataset_path").set_value(str(_data(tmp_path))).run())
    assert {m.label: m.value for m in at.metric}["Training rows"] == "3"  # one of the four rows is held out for the eval loss
    before = len(calls)
    at.number_input(key="train_form_learning_rate").set_value(1e-3).run()  # the spec changed, its data did not
    at.number_input(key="train_form_max_steps").set_value(5).run()
    assert not at.exception and len(calls) == before, calls
    assert {m.label: m.value for m in at.metric}["Steps"] == "5"
    _preflight_settled(at.number_input(key="train_form_max_length").set_value(32).run())  # this one changes the tokens
    assert len(calls) == before + 1


def test_replay_is_part_of_the_form_and_the_preflight_counts_it(workspace, tiny_llama_dir):
    """Replay (issue 17): the form's replay share mixes general rows in, and the pre-flight says how many."""
    at = _page(tiny_llama_dir)
    at.run()
    assert at.number_input(key="train_form_replay_fraction").value == 0.0
    assert "forgetting" in at.number_input(key="train_form_replay_fraction").help
    _preflight_settled(at.number_input(key="train_form_replay_fraction").set_value(0.25).run())
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert int({m.label: m.value for m in at.metric}["Training rows"]) == 270 + 90  # 90 / 360 = 25 %
    assert any("90 of the training rows are general replay rows (25.0%)" in c.value for c in at.caption)
    preview = yaml.safe_load(next(c.value for c in at.code if "kind: train" in c.value))
    assert preview["replay_fraction"] == 0.25 and preview["replay_dataset"] == "general"


@pytest.mark.parametrize(("field", "value"), [("learning_rate", 10.0), ("batch_size", 100000), ("max_length", 1)])
def test_an_out_of_range_value_is_refused_where_it_is_typed_and_nothing_can_start(workspace, tiny_llama_dir, field, value):
    """The form is the spec: the value stays as typed, the field says why it cannot run, and Start is gone (the
    browser's own min / max used to keep the old value in the spec while showing the new one)."""
    at = _page(tiny_llama_dir)
    at.run()
    assert at.button(key="train_start") is not None
    at.number_input(key=f"train_form_{field}").set_value(value).run()
    assert not at.exception
    assert at.number_input(key=f"train_form_{field}").value == value
    errors = [e.value for e in at.error]
    assert any(e.startswith(f"{field} must be") and "will not run" in e for e in errors), errors
    assert not [b for b in at.button if b.key == "train_start"], "Start is not offered for a spec that cannot run"
    assert not any("kind: train" in c.value for c in at.code), "no YAML preview of a spec that is not the form's"


def test_a_learning_rate_far_from_the_methods_usual_range_gets_a_word(workspace, tiny_llama_dir):
    at = _page(tiny_llama_dir)
    at.run()
    assert not any("learning_rate" in w.value for w in at.warning)
    at.number_input(key="train_form_learning_rate").set_value(1.0).run()
    warning = next(w.value for w in at.warning if w.value.startswith("learning_rate 1 is"))
    assert "what usually works for LoRA (0.0002)" in warning and "diverge" in warning
    assert at.button(key="train_start") is not None, "a warning, not a refusal: the spec allows it"


def test_predicted_memory_above_what_is_free_blocks_start_until_the_user_confirms(workspace, tiny_llama_dir, monkeypatch):
    monkeypatch.setattr("core.train.preflight.available_memory_bytes", lambda hardware: 1024)
    at = _page(tiny_llama_dir)
    at.run()
    assert any("exceeds the" in w.value for w in at.warning)
    assert at.button(key="train_start").disabled
    at.checkbox(key="train_confirm_memory").check().run()
    assert not at.button(key="train_start").disabled
