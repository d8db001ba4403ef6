"""Preference tuning (issue 27, training slice): DPO / KTO / ORPO / SimPO through the worker on the tiny random Llama,
TRL's metrics in metrics.jsonl, DPO continuing from an SFT run's adapter, and the spec's rules."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from inprocess import run_succeeded, train_rows
from safetensors.torch import load_file

from core import runs
from core.runs.card import lineage, scan
from core.train.methods import OBJECTIVES, hidden_objective_fields
from core.train.spec import TrainSpec

pytestmark = pytest.mark.slow

PAIRS = [("2+2?", "4", "5"), ("Capital of France?", "Paris", "Lyon"), ("Colour of the sky?", "Blue", "Green"),
         ("Opposite of hot?", "Cold", "Warm"), ("3*3?", "9", "6"), ("Ice is?", "Frozen water", "Hot steam")]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    return _write(tmp_path / "pairs.jsonl", [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": c}],
                                             "rejected": [{"role": "assistant", "content": r}]} for q, c, r in PAIRS])


@pytest.fixture
def unpaired_file(tmp_path) -> Path:
    return _write(tmp_path / "kto.jsonl", [{"prompt": q, "completion": a, "label": good}
                                           for q, c, r in PAIRS for a, good in ((c, True), (r, False))])


def _spec(model_dir: Path, data: Path, **changes) -> TrainSpec:
    fields = dict(model={"kind": "local", "ref": str(model_dir)}, dataset=str(data), max_steps=2, batch_size=2, max_length=64,
                  eval_fraction=0.0, learning_rate=1e-2, warmup_ratio=0.0, lora_r=4, lora_alpha=8, save_steps=100,
                  eval_on_start=False, logging_steps=1)
    fields.update(changes)
    return TrainSpec(**fields)


@pytest.mark.parametrize(("objective", "method"), [("dpo", "lora"), ("kto", "lora"), ("orpo", "lora"), ("simpo", "lora"), ("dpo", "full")])
def test_objective_trains_two_steps_and_logs_its_metrics(workspace, tiny_llama_dir, pairs_file, objective, method):
    run_dir = run_succeeded(_spec(tiny_llama_dir, pairs_file, objective=objective, method=method,
                              learning_rate=1e-2 if method == "lora" else 1e-4))
    rows = train_rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    for key in OBJECTIVES[objective].metrics:
        assert all(key in r and r[key] is not None and math.isfinite(r[key]) for r in rows), (key, rows)
    assert all(math.isfinite(r["loss"]) and r["tokens_per_s"] > 0 for r in rows)
    card = runs.read_result(run_dir)
    assert card["objective"] == objective and card["parent"] is None and card["data"]["format"] == "preference"
    assert card["data"]["train_rows"] == (12 if objective == "kto" else 6), "KTO trains each pair as a desirable and an undesirable row"
    if method == "full":  # no adapter to disable: TRL scores the reference with a frozen copy of the model
        assert (run_dir / "model" / "model.safetensors").is_file()
        return
    adapter = run_dir / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "ref").exists(), "only the trained adapter is saved"


def test_kto_on_unpaired_rows_and_dpo_refuses_them(workspace, tiny_llama_dir, unpaired_file):
    run_dir = run_succeeded(_spec(tiny_llama_dir, unpaired_file, objective="kto", desirable_weight=1.5, eval_fraction=0.25,
                                  eval_on_start=True))
    assert all(math.isfinite(r["kl"]) for r in train_rows(run_dir))
    evals = [r for r in runs.read_all_metrics(run_dir / runs.METRICS_FILE) if "eval_loss" in r]
    assert evals and all(math.isfinite(r["eval_kl"]) and "eval_rewards/margins" in r for r in evals), evals
    assert runs.read_result(run_dir)["data"]["format"] == "unpaired"
    with pytest.raises(ValueError, match="dataset: objective dpo needs chosen / rejected pairs"):
        _spec(tiny_llama_dir, unpaired_file, objective="dpo")


def test_dpo_continues_from_an_sft_run(workspace, tiny_llama_dir, tmp_path, pairs_file):
    sft_file = _write(tmp_path / "sft.jsonl", [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": c}]}
                                               for q, c, _ in PAIRS])
    sft_dir = run_succeeded(_spec(tiny_llama_dir, sft_file))
    sft_weights = load_file(str(sft_dir / "adapter" / "adapter_model.safetensors"))

    spec = _spec(tiny_llama_dir, pairs_file, objective="dpo", init_adapter=sft_dir.name, sft_weight=0.5)
    assert spec.init_adapter == str((sft_dir / "adapter").resolve()), "a run id becomes its adapter path"

    # The start weights: the backend's load (what the job trains) is the SFT adapter, trainable.
    from core.hardware import detect
    from core.train.backends import HFBackend

    model, _ = HFBackend().load(spec, detect())
    start = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert {k.replace(".default", "") for k in start} == set(sft_weights)
    for name, value in start.items():
        assert torch.equal(value, sft_weights[name.replace(".default", "")]), name
    assert any(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    del model

    dpo_dir = run_succeeded(spec)
    rows = train_rows(dpo_dir)
    # The reference is the SFT adapter as the run started (not the bare base): before the first update policy == reference.
    assert rows[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-4) and rows[0]["rewards/rejected"] == pytest.approx(0.0, abs=1e-4)
    assert rows[1]["rewards/chosen"] != pytest.approx(0.0, abs=1e-4), "after one update the policy has moved from the reference"
    card = runs.read_result(dpo_dir)
    assert card["parent"] == {"run_id": sft_dir.name, "adapter": spec.init_adapter}
    assert lineage(scan(dpo_dir.parent), dpo_dir.parent).parents[dpo_dir.name] == [sft_dir.name]
    trained = load_file(str(dpo_dir / "adapter" / "adapter_model.safetensors"))
    assert set(trained) == set(sft_weights) and any(not torch.equal(trained[k], sft_weights[k]) for k in trained)


def test_spec_rules(tiny_llama_dir, pairs_file, tmp_path, workspace):
    sft_file = _write(tmp_path / "sft.jsonl", [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}])
    assert _spec(tiny_llama_dir, sft_file).objective == "sft"
    cases = [
        (dict(dataset=str(sft_file), objective="dpo"), "dataset: objective dpo needs preference data"),
        (dict(objective="dpo", packing=True), "packing: packs SFT rows"),
        (dict(objective="kto", replay_fraction=0.1), "replay_fraction"),
        (dict(objective="orpo", precompute_ref_log_probs=True), "precompute_ref_log_probs: objective orpo has no reference"),
        (dict(objective="dpo", dpo_loss_type="sft"), "dpo_loss_type"),
        (dict(objective="dpo", method="full", init_adapter="x"), "init_adapter: continues a PEFT adapter"),
        (dict(objective="dpo", init_adapter="no-such-run"), "init_adapter: 'no-such-run' is neither"),
        (dict(objective="ppo"), "objective"),  # not an objective (grpo is one now: tests/test_grpo.py)
        (dict(objective="dpo", beta=-1.0), "beta"),
    ]
    for changes, message in cases:
        with pytest.raises(ValueError, match=message):
            _spec(tiny_llama_dir, pairs_file, **changes)
    # Unsloth is not wired for preference objectives nor for continuing an adapter: auto picks hf and says why.
    from core.hardware import HardwareInfo
    from core.train.backends import choose_backend

    gpu = HardwareInfo(device="cuda", device_name="GPU", gpu_count=1, total_memory_gb=16.0, free_memory_gb=12.0, bf16=True,
                       cpu_cores=2, system_ram_gb=16.0, bnb_4bit=True, unsloth=True)
    assert choose_backend(_spec(tiny_llama_dir, pairs_file), gpu)[0].name == "unsloth"
    backend, notes = choose_backend(_spec(tiny_llama_dir, pairs_file, objective="dpo"), gpu)
    assert backend.name == "hf" and "objective dpo runs on the hf backend" in notes[0]
    # The form shows each objective's own fields only.
    assert "simpo_gamma" in hidden_objective_fields("dpo") and "sft_weight" not in hidden_objective_fields("dpo")
    assert "desirable_weight" not in hidden_objective_fields("kto") and "beta" in hidden_objective_fields("sft")


def test_train_page_shows_each_objectives_fields_in_its_group(workspace, tiny_llama_dir, pairs_file):
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT

    at = AppTest.from_file(str(ROOT / "app_pages" / "train.py"), default_timeout=180)
    at.session_state["active_model"] = {"kind": "local", "ref": str(tiny_llama_dir)}
    at.run()
    assert at.selectbox(key="train_form_objective").value == "sft"
    keys = {w.key for kind in ("number_input", "selectbox", "text_input") for w in getattr(at, kind)}
    assert "train_form_beta" not in keys and "train_form_init_adapter" in keys, "SFT shows no preference field, only where to start from"
    at.selectbox(key="train_dataset_choice").set_value(at.selectbox(key="train_dataset_choice").options[-1]).run()
    at.text_input(key="train_dataset_path").set_value(str(pairs_file)).run()
    at.selectbox(key="train_form_objective").set_value("dpo").run()
    assert not at.exception and not [e.value for e in at.error]
    shown = {w.key for kind in ("number_input", "selectbox", "checkbox", "toggle") for w in getattr(at, kind)}
    assert {"train_form_beta", "train_form_dpo_loss_type", "train_form_sft_weight", "train_form_label_smoothing"} <= shown
    assert not {"train_form_simpo_gamma", "train_form_desirable_weight"} & shown
    assert any("**Objective**" in m.value for m in at.markdown)
    assert "objective: dpo" in "\n".join(c.value for c in at.code)
