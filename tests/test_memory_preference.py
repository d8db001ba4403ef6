"""core.memory for preference tuning (issue 27): what DPO / KTO / ORPO / SimPO add to the estimate, held to what TRL 1.16
does (its constants, its defaults) and, for DPO, to the peak a real train job measures (within 10 %, as
bench/memory_calibration.py holds the SFT methods)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import ROOT
from core import memory
from core.memory import MemorySpec, estimate, preset_arch

TOLERANCE = 0.10  # issue 12's rule for the SFT methods (bench/memory_calibration.py), here for DPO


def _spec(**changes) -> MemorySpec:
    fields = dict(method="lora", precision="fp32", device="cpu", batch_size=4, seq_len=256)
    fields.update(changes)
    return MemorySpec(preset_arch("SmolLM2 135M"), **fields)


# --------------------------------------------------------------------------- the parts, against TRL 1.16


def test_the_objectives_are_the_train_specs_and_trl_s_constants_are_the_estimators():
    from trl import DPOConfig, KTOConfig
    from trl.experimental.cpo import CPOConfig
    from trl.experimental.orpo import ORPOConfig
    from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    from core.train.methods import OBJECTIVES

    assert memory.OBJECTIVES == tuple(OBJECTIVES)
    assert (memory.estimator.FUSED_HEAD_TOKENS, memory.estimator.FUSED_HEAD_VOCAB) == (TOKEN_CHUNK_SIZE, _CHUNKED_LOGPROB_CHUNK_SIZE)
    # every preference trainer turns dropout off, so lora_dropout keeps no masks there
    assert all(config.__dataclass_fields__["disable_dropout"].default for config in (DPOConfig, KTOConfig, ORPOConfig, CPOConfig))


def test_pairs_double_the_activations_and_orpo_simpo_keep_full_logits_without_a_reference():
    sft, double = _spec(), _spec(batch_size=8)
    for objective in ("orpo", "simpo"):
        est = estimate(_spec(objective=objective))
        assert est.breakdown["activations"] == estimate(double).breakdown["activations"], "chosen + rejected = 2 x batch_size rows"
        # full logits of both answers; ORPO's NLL of the chosen half keeps its own log-softmax (4 bytes on half the rows)
        extra = memory.estimator.ORPO_NLL_BYTES_PER_ELEMENT if objective == "orpo" else 0
        per_element = memory.LOGIT_BYTES_PER_ELEMENT
        assert est.breakdown["logits"] == pytest.approx(estimate(double).breakdown["logits"] * (per_element + extra) / per_element)
        assert estimate(double).breakdown["logits"] == 2 * estimate(sft).breakdown["logits"]
        assert est.breakdown["reference"] == 0 and memory.REFERENCE_PHASE not in est.phases
        assert est.objective_parts["pairs: x2 activations"] == est.breakdown["activations"] - estimate(sft).breakdown["activations"]
    kto = estimate(_spec(objective="kto"))
    per_token_copy = preset_arch("SmolLM2 135M").hidden_size * 4  # the hidden states TRL's chunked head keeps (fp32 here)
    assert kto.breakdown["activations"] == pytest.approx(estimate(sft).breakdown["activations"] + 4 * 256 * per_token_copy)


def test_dpo_and_kto_use_the_chunked_head_and_a_reference_forward_on_top_of_the_activations():
    dpo = estimate(_spec(objective="dpo"))
    # TRL's chunked head builds no full logits: one tile of at most 4096 positions, so its cost stops growing with the
    # batch (only the hidden states' gradient does); on a GPU (Triton, in place) it is far below ORPO's full logits.
    # On a CPU the torch fold's fp32 temporaries make a tile cost more than the logits it replaces, up to that cap.
    arch = preset_arch("SmolLM2 135M")
    long, longer = (estimate(_spec(objective="dpo", seq_len=n, batch_size=8)).breakdown["logits"] for n in (1024, 2048))
    assert longer - long == pytest.approx(8 * 2 * 1024 * arch.hidden_size * 4)
    gpu = dict(device="cuda", precision="mixed")
    assert estimate(_spec(objective="dpo", **gpu)).breakdown["logits"] < estimate(_spec(objective="orpo", **gpu)).breakdown["logits"] / 5
    ref = dpo.phases[memory.REFERENCE_PHASE]
    assert ref["activations"] == dpo.phases[memory.PHASES[0]]["activations"] and ref["logits"] == 0
    assert ref["reference"] - dpo.breakdown["reference"] == dpo.objective_parts["reference forward"] > 0
    assert dpo.total_bytes == max(sum(p.values()) for p in dpo.phases.values()) == sum(dpo.breakdown.values())
    # the PEFT reference: a frozen "ref" copy of the adapter, no second model
    assert dpo.objective_parts["reference adapter copy"] == dpo.trainable_params * 4
    # the note the pre-flight and the run card show names the parts
    assert dpo.note.startswith("DPO · LoRA") and "pairs: x2 activations" in dpo.note and "reference forward" in dpo.note
    # precomputed reference log-probs: no reference forward while training, a pass before it instead
    pre = estimate(_spec(objective="dpo", precompute_ref_log_probs=True))
    assert memory.REFERENCE_PHASE not in pre.phases and pre.objective_parts["reference forward"] == 0
    assert 0 < pre.objective_parts["precompute pass (before training)"] < pre.total_bytes


def test_a_full_fine_tune_s_reference_is_a_second_copy_of_the_weights_unless_precomputed():
    arch = preset_arch("SmolLM2 135M")
    full = estimate(_spec(method="full", objective="dpo"))
    assert full.breakdown["reference"] >= arch.total_params * 4 and full.objective_parts["reference weights"] == arch.total_params * 4
    gpu = estimate(_spec(method="full", objective="dpo", device="cuda", precision="bf16"))
    assert gpu.objective_parts["reference weights"] == arch.total_params * 2, "TRL loads the reference in the model's dtype"
    assert estimate(_spec(method="full", objective="dpo", precompute_ref_log_probs=True)).objective_parts["reference weights"] == 0
    assert estimate(_spec(method="full", objective="orpo")).breakdown["reference"] == 0


def test_lora_dropout_costs_nothing_under_a_preference_trainer():
    with_dropout = _spec(objective="dpo", lora_dropout=0.05)
    assert estimate(with_dropout).breakdown["activations"] == estimate(replace(with_dropout, lora_dropout=0.0)).breakdown["activations"]
    sft = _spec(lora_dropout=0.05)
    assert estimate(sft).breakdown["activations"] > estimate(replace(sft, lora_dropout=0.0)).breakdown["activations"]


def test_per_device_estimates_keep_the_reference_phase():
    from core.memory.distributed import Distribution, estimate_per_device

    spec = _spec(objective="dpo", device="cuda", precision="mixed", batch_size=2, seq_len=4096)
    per_device = estimate_per_device(spec, Distribution("ddp", 2, 1))
    assert memory.REFERENCE_PHASE in per_device.phases
    assert per_device.total_bytes == max(sum(p.values()) for p in per_device.phases.values())


def test_the_train_spec_s_objective_reaches_the_estimate(tiny_llama_dir):
    from core.hardware import HardwareInfo
    from core.train.preflight import DataCheck, memory_estimate, memory_spec_from_train_spec, run_preflight
    from core.train.spec import TrainSpec

    cpu = HardwareInfo("cpu", "CPU", 0, 16.0, 8.0, False, 2, 16.0, False, False)
    spec = TrainSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, dataset=str(ROOT / "assets" / "demo" / "pairs_train.jsonl"),
                     objective="dpo", precompute_ref_log_probs=True)
    mem = memory_spec_from_train_spec(spec, cpu)
    assert mem.objective == "dpo" and mem.precompute_ref_log_probs
    est, note = memory_estimate(replace(spec, precompute_ref_log_probs=False), cpu, backend="hf", seq_len=100)
    assert est.spec.seq_len == 100 and memory.REFERENCE_PHASE in est.phases
    assert "pairs: x2 activations" in note and "reference forward" in note
    report = run_preflight(replace(spec, precompute_ref_log_probs=False), cpu, data=DataCheck(rows=6, sequences=6, longest=100))
    assert report.memory_parts == est.objective_parts and report.memory_note == note


# --------------------------------------------------------------------------- predicted vs measured: a real DPO job


def _long_pairs(path: Path, n: int = 12) -> Path:
    """Short prompts, two answers that both run past max_length: every batch is 2 x batch_size x max_length tokens."""
    words = "the ticket says the device restarts when the update finishes and the customer wants a replacement soon".split()
    answer = lambda i: " ".join(words[(i + k) % len(words)] for k in range(300))  # noqa: E731
    rows = [{"prompt": [{"role": "user", "content": f"Summarise ticket {i}."}], "chosen": [{"role": "assistant", "content": answer(i)}],
             "rejected": [{"role": "assistant", "content": answer(i + 5)}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_dpo_estimate_is_within_10_percent_of_the_measured_job(workspace, tiny_llama_dir, tmp_path):
    """The worker process the Start button launches, on the tiny Llama with the embedded tokenizer (49,152 entries, so the
    chunked head is most of the peak); its run card records the pre-flight's estimate and the measured peak (VmHWM)."""
    from core import runs
    from core.train.spec import TrainSpec

    spec = TrainSpec(name="dpo-memory", model={"kind": "local", "ref": str(tiny_llama_dir)},
                     dataset=str(_long_pairs(tmp_path / "pairs.jsonl")),
                     objective="dpo", method="lora", batch_size=4, max_length=128, max_steps=2, eval_fraction=0.0, eval_on_start=False,
                     learning_rate=5e-5, warmup_ratio=0.0, save_steps=10_000, logging_steps=1, lora_r=8, lora_alpha=16, precision="fp32")
    run_dir = runs.create_run(spec)
    runs.launch(run_dir)
    status = runs.wait(run_dir, timeout=600)
    assert status.state == "succeeded", runs.log_tail(run_dir)
    card = runs.read_result(run_dir)
    predicted, measured = card["predicted_memory_bytes"], card["peak_memory_bytes"]
    assert abs(predicted - measured) <= TOLERANCE * measured, (predicted, measured, card["predicted_memory_note"])
    as_sft = memory.estimate_for_model(str(tiny_llama_dir), method="lora", device="cpu", lora_r=8, batch_size=4, seq_len=128)
    print(f"DPO job: predicted {predicted / 1e6:.1f} MB, measured {measured / 1e6:.1f} MB; "
          f"SFT estimate {as_sft.measurable_bytes / 1e6:.1f} MB")
    assert abs(as_sft.measurable_bytes - measured) > TOLERANCE * measured, "the SFT estimate of the same batch would not hold this run"
