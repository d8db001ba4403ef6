"""The one-click SFT -> DPO recipe (core.train.recipes): the DPO run names an unfinished SFT run as init_adapter, its worker
waits `queued` without the exclusive lock until that run succeeds (Stop works meanwhile; a parent that ends otherwise
fails it with the reason), the chain trains through the worker, and the Train page's button starts both."""
from __future__ import annotations

import fcntl
import time
from pathlib import Path

import pytest
from inprocess import work_here
from streamlit.testing.v1 import AppTest

from core import runs
from core.runs.worker import LOCK_NAME
from core.train.recipes import DEMO_PAIRS_DATASET, DEMO_SFT_WEIGHT, create_sft_dpo, demo_sft_dpo_specs
from core.train.spec import TrainSpec
from core.workspace import runs_dir

TINY = {"max_steps": 2, "batch_size": 2, "max_length": 256, "eval_fraction": 0.0, "lora_r": 4, "lora_alpha": 8, "save_steps": 100}


def _chain(model: dict, sft_changes: dict | None = None) -> tuple[Path, Path]:
    sft, dpo = demo_sft_dpo_specs(model, None, sft_changes={**TINY, **(sft_changes or {})}, dpo_changes=TINY)
    return create_sft_dpo(sft, dpo)


def _wait_for_message(run_dir: Path, text: str, timeout: float = 90) -> runs.RunStatus:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = runs.read_status(run_dir)
        if text in status.message or status.is_final:
            return status
        time.sleep(0.2)
    raise AssertionError(f"{run_dir.name} never said {text!r}: {runs.read_status(run_dir)}\n{runs.log_tail(run_dir)}")


def _lock_is_free() -> bool:
    with open(runs_dir() / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def test_an_unfinished_train_run_is_a_valid_init_adapter_and_a_finished_one_without_adapter_is_not(workspace):
    sft_dir, dpo_dir = _chain({"kind": "embedded"})
    spec = TrainSpec.from_dict(runs.read_spec_dict(dpo_dir))
    assert spec.objective == "dpo" and spec.dataset == DEMO_PAIRS_DATASET and spec.sft_weight == DEMO_SFT_WEIGHT
    assert spec.init_adapter == str((sft_dir / "adapter").resolve()) and spec.waits_for() == [sft_dir]
    assert TrainSpec.from_dict(runs.read_spec_dict(sft_dir)).max_steps == 2 and spec.max_steps == 2
    assert TrainSpec().waits_for() == []
    runs.stop(sft_dir)  # a created run: "stopped before it started", no adapter
    with pytest.raises(ValueError, match=f"init_adapter: run {sft_dir.name} ended stopped without an adapter"):
        TrainSpec.from_dict(runs.read_spec_dict(dpo_dir))
    with pytest.raises(ValueError, match="neither a run with an adapter"):
        TrainSpec(init_adapter="no-such-run")


def test_a_refused_dpo_spec_leaves_no_half_chain(workspace):
    sft, dpo = demo_sft_dpo_specs({"kind": "embedded"}, None, dpo_changes={"method": "full"})
    with pytest.raises(ValueError, match="init_adapter"):
        create_sft_dpo(sft, dpo)
    assert runs.list_runs() == []


@pytest.mark.slow
def test_the_waiting_dpo_run_holds_no_lock_and_stops_while_waiting(workspace, tiny_llama_dir):
    sft_dir, dpo_dir = _chain({"kind": "local", "ref": str(tiny_llama_dir)})
    runs.launch(dpo_dir)  # its parent is only created: it must wait, not train from a missing adapter
    status = _wait_for_message(dpo_dir, f"waiting for run {sft_dir.name}")
    assert status.state == "queued", (status, runs.log_tail(dpo_dir))
    assert _lock_is_free(), "a run waiting for its parent must leave the exclusive lock to the parent"
    assert runs.stop(dpo_dir)
    final = runs.wait(dpo_dir, timeout=60)
    assert final.state == "stopped" and f"waiting for run {sft_dir.name}" in final.message, final
    assert runs.read_status(sft_dir).state == "created"


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["stopped", "failed"])
def test_a_parent_that_does_not_succeed_fails_the_waiting_run_with_the_reason(workspace, tiny_llama_dir, ending):
    sft_dir, dpo_dir = _chain({"kind": "local", "ref": str(tiny_llama_dir)}, {"fault_injection": "error@1"} if ending == "failed" else None)
    runs.launch(dpo_dir)
    _wait_for_message(dpo_dir, f"waiting for run {sft_dir.name}")
    if ending == "stopped":
        runs.stop(sft_dir)
    else:
        assert work_here(sft_dir).state == "failed"
    final = runs.wait(dpo_dir, timeout=60)
    assert final.state == "failed", final
    assert f"run {sft_dir.name}, which this run continues from, ended {ending}" in final.error, final.error
    if ending == "failed":
        assert runs.read_status(sft_dir).error in final.error, "the parent's own error is the reason given"
    assert not (dpo_dir / "adapter").exists() and not runs.read_all_metrics(dpo_dir / runs.METRICS_FILE)


@pytest.mark.slow
def test_the_chain_trains_sft_then_dpo_from_its_adapter_through_the_worker(workspace, tiny_llama_dir):
    sft_dir, dpo_dir = _chain({"kind": "local", "ref": str(tiny_llama_dir)})
    assert work_here(sft_dir).state == "succeeded"
    status = work_here(dpo_dir)
    assert status.state == "succeeded", (status.error, runs.log_tail(dpo_dir))
    card = runs.read_result(dpo_dir)
    assert card["objective"] == "dpo" and card["parent"]["run_id"] == sft_dir.name
    assert card["data"]["format"] == "preference" and card["data"]["train_rows"] == 200
    rows = [r for r in runs.read_all_metrics(dpo_dir / runs.METRICS_FILE) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2] and all("rewards/margins" in r for r in rows)
    assert (dpo_dir / "adapter" / "adapter_config.json").is_file()


def _recipe_page():
    from app_pages.train_tabs.recipes import render_demo_recipes

    render_demo_recipes()


@pytest.mark.slow
def test_the_button_starts_both_runs_and_the_dpo_run_waits_for_the_sft_run(workspace, tiny_llama_dir):
    at = AppTest.from_function(_recipe_page, default_timeout=60)
    at.session_state["active_model"] = {"kind": "local", "ref": str(tiny_llama_dir)}
    at.run()
    assert not at.exception
    at.button(key="train_chain_start").click().run()
    assert not at.exception, at.exception
    sft_dir, dpo_dir = (Path(p) for p in at.session_state["train_chain_runs"])
    try:
        assert Path(at.session_state["train_run_id"]) == sft_dir and at.query_params["run"] in (sft_dir.name, [sft_dir.name])
        dpo = runs.read_spec_dict(dpo_dir)
        assert dpo["objective"] == "dpo" and dpo["init_adapter"] == str((sft_dir / "adapter").resolve())
        assert runs.read_spec_dict(sft_dir)["model"] == {"kind": "local", "ref": str(tiny_llama_dir)}
        status = _wait_for_message(dpo_dir, f"waiting for run {sft_dir.name}")
        assert status.state == "queued", status
        at.run()
        assert any(f"`{dpo_dir.name}`" in m.value and "waiting for run" in m.value for m in at.markdown)
    finally:  # the second stop interrupts the SFT run at once (nothing here needs its adapter)
        for run_dir in (dpo_dir, sft_dir, sft_dir):
            runs.stop(run_dir)
            time.sleep(0.5)
        for run_dir in (dpo_dir, sft_dir):
            runs.wait(run_dir, timeout=120)
