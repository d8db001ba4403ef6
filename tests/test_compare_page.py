"""AppTest of the Compare methods page and of the Train form for every method."""
from __future__ import annotations

import json

import pytest
import yaml
from streamlit.testing.v1 import AppTest

from conftest import ROOT
from core import runs
from core.compare.spec import MethodComparisonSpec
from core.runs.status import RunStatus, write_status
from core.train.methods import METHODS, hidden_fields

pytestmark = pytest.mark.slow
COMPARE = str(ROOT / "app_pages" / "compare.py")
TRAIN = str(ROOT / "app_pages" / "train.py")


def test_compare_form_builds_the_spec_and_a_finished_comparison_shows_table_charts_and_exports(workspace, tiny_llama_dir):
    at = AppTest.from_file(COMPARE, default_timeout=120)
    at.session_state["active_model"] = {"kind": "local", "ref": str(tiny_llama_dir)}
    at.run()
    assert not at.exception
    assert at.multiselect(key="cmp_methods").value == ["lora", "dora", "ia3", "prompt_tuning", "prefix_tuning", "partial", "full"]
    at.multiselect(key="cmp_methods").set_value(["lora", "ia3"])
    at.number_input(key="cmp_form_max_steps").set_value(5)
    at.number_input(key="cmp_lr_ia3").set_value(0.02)
    at.run()
    assert not at.error, [e.value for e in at.error]
    spec = yaml.safe_load(next(c.value for c in at.code if "kind: method_comparison" in c.value))
    assert spec["methods"] == ["lora", "ia3"] and spec["max_steps"] == 5 and spec["learning_rates"] == {"ia3": 0.02}
    assert spec["model"] == {"kind": "local", "ref": str(tiny_llama_dir)}
    assert any("4 runs: 2 × 5 training steps, one evaluation of all of them, one feature-extraction baseline" in c.value
               for c in at.caption)

    run_dir = runs.create_run(MethodComparisonSpec(methods=["lora", "ia3"]))
    rows = [{"method": "lora", "label": "LoRA", "state": "succeeded", "trainable_params": 4_884_480, "trainable_share": 0.035,
             "peak_memory_bytes": 2e9, "task_score": 41.7, "general_score": 30.0},
            {"method": "ia3", "label": "(IA)³", "state": "succeeded", "trainable_params": 138_240, "trainable_share": 0.001,
             "peak_memory_bytes": 1.5e9, "task_score": 20.0, "general_score": 31.0}]
    runs.result_path(run_dir).write_text(json.dumps({"rows": rows, "base": {"task_score": 5.0}, "notes": ["same seed"]}))
    write_status(run_dir, RunStatus(state="succeeded", kind="method_comparison"))
    at.session_state["cmp_run"] = str(run_dir)
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["Method"]) == ["LoRA", "(IA)³"] and list(table["Chapter says"]) == ["above ~0.1-1 %", "above ~0.01 %"]
    assert len(at.get("plotly_chart")) == 2
    assert [b.label for b in at.get("download_button")] == ["Download the table (CSV)", "Download everything (JSON)"]


@pytest.mark.parametrize("method", list(METHODS))
def test_train_form_shows_each_methods_own_fields(workspace, tiny_llama_dir, method):
    at = AppTest.from_file(TRAIN, default_timeout=180)
    at.session_state["active_model"] = {"kind": "local", "ref": str(tiny_llama_dir)}
    at.session_state["train_form_method"] = method
    at.run()
    assert not at.exception
    keys = {w.key for w in [*at.number_input, *at.text_input, *at.selectbox, *at.checkbox] if w.key}
    for name in METHODS[method].fields:
        assert f"train_form_{name}" in keys, f"{method}: its field {name} is on the form"
    for name in hidden_fields(method):
        assert f"train_form_{name}" not in keys, f"{method}: {name} belongs to another method"
    assert any(METHODS[method].label in c.value for c in at.caption)
    errors = [e.value for e in at.error]
    if method == "bitfit":
        assert any("BitFit trains only bias terms" in e for e in errors), "the tiny Llama has no biases: pre-flight refuses"
        assert at.button(key="train_start").disabled
    elif method == "qlora":
        pass  # may be refused where bitsandbytes 4-bit is unusable; either way it says so
    else:
        assert not errors, errors
        preview = yaml.safe_load(next(c.value for c in at.code if "kind: train" in c.value))
        assert preview["method"] == method
