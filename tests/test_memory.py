"""core.memory: the worked numbers, exact parameter counts, the activation model against autograd, calibration."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from core import memory
from core.memory import GB, MemorySpec, estimate, estimate_for_model, preset_arch

# --------------------------------------------------------------------------- the worked numbers


def test_full_finetune_of_7b_with_mixed_precision_adam_is_112_gb():
    state = memory.model_state_bytes(7e9, precision="mixed", optimizer="adamw")
    assert state == {"weights": 14 * GB, "gradients": 14 * GB, "master_weights": 28 * GB, "optimizer_states": 56 * GB}
    assert sum(state.values()) == 112 * GB


def test_estimate_uses_the_same_16_bytes_per_parameter_for_a_real_7b_model():
    arch = preset_arch("Mistral-7B v0.1")
    est = estimate(MemorySpec(arch, method="full", precision="mixed", optimizer="adamw", batch_size=1, seq_len=256,
                              gradient_checkpointing=True, grad_accumulation=4))
    n = arch.total_params
    assert est.trainable_params == n
    assert est.breakdown["weights"] == 2 * n and est.breakdown["gradients"] == 2 * n
    assert est.breakdown["master_weights"] == 4 * n and est.breakdown["optimizer_states"] == 8 * n
    assert any("GB = 1e9 bytes" in a for a in est.assumptions)


def test_lora_on_a_4096_square_matrix_at_rank_8():
    assert memory.lora_params(4096, 4096, 8) == 65_536
    assert 4096 * 4096 == 16_777_216
    arch = memory.ModelArch("square", "llama", 4096, 11008, 1, 32, 32, 128, 32000, False)
    spec = MemorySpec(arch, method="lora", lora_r=8, lora_targets=("q_proj",))
    assert memory.trainable_params(spec) == 65_536


def test_70b_weights_in_fp32_fp16_int8_nf4():
    n = 70e9
    assert memory.weight_bytes(n, "fp32") == 280 * GB
    assert memory.weight_bytes(n, "fp16") == 140 * GB
    assert memory.weight_bytes(n, "int8") == 70 * GB
    nf4 = memory.weight_bytes(n, "nf4")
    assert nf4 == pytest.approx(n * (0.5 + (8 / 64 + 32 / (64 * 256)) / 8))
    assert memory.NF4_CONSTANT_BITS_DOUBLE_QUANT == pytest.approx(0.127, abs=5e-4)
    assert 35 * GB < nf4 < 36.2 * GB
    assert memory.weight_bytes(n, "nf4", double_quant=False) == pytest.approx(n * (0.5 + 0.5 / 8))


# --------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("name, published", [
    ("Llama-3.1 8B", 8.03e9), ("Qwen2.5 7B", 7.62e9), ("Mistral-7B v0.1", 7.24e9), ("SmolLM2 135M", 134.5e6),
])
def test_preset_parameter_counts_match_the_published_ones(name, published):
    assert preset_arch(name).total_params == pytest.approx(published, rel=0.005)


def test_every_preset_is_within_one_percent_of_its_model_card():
    presets = memory.list_presets()
    assert len(presets) >= 19
    for preset in presets:
        arch = preset_arch(preset["id"])
        assert arch.total_params == pytest.approx(preset["published_params"], rel=0.01), preset["name"]


def test_smollm2_135m_count_is_exact_and_split_into_parts():
    counts = preset_arch("HuggingFaceTB/SmolLM2-135M").param_counts()
    assert counts["total"] == 134_515_008
    assert counts["lm_head"] == 0 and counts["embedding"] == 49152 * 576
    assert counts["attention"] == 30 * (576 * 576 * 2 + 576 * 192 * 2)  # GQA: 3 kv heads of 64
    assert counts["mlp"] == 30 * 3 * 576 * 1536


def _tiny_configs():
    from transformers import Gemma2Config, LlamaConfig, Phi3Config, Qwen2Config

    common = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    return [
        LlamaConfig(**common, tie_word_embeddings=True),
        LlamaConfig(**common, tie_word_embeddings=False, attention_bias=True, mlp_bias=True),
        Qwen2Config(**common, tie_word_embeddings=False),
        Gemma2Config(**common, head_dim=32, tie_word_embeddings=True),
        Phi3Config(**{**common, "num_key_value_heads": 4}, tie_word_embeddings=False, pad_token_id=0),
    ]


@pytest.mark.parametrize("index", range(5))
def test_counts_from_config_equal_the_instantiated_model(index):
    from transformers import AutoModelForCausalLM

    config = _tiny_configs()[index]
    model = AutoModelForCausalLM.from_config(config)
    assert memory.arch_from_config(config).total_params == sum(p.numel() for p in model.parameters()), config.model_type


@pytest.mark.parametrize("name", ["Llama-3.2 1B", "Qwen2.5 0.5B", "Mistral-7B v0.3", "Gemma-2 2B", "Phi-3-mini 4k"])
def test_preset_counts_equal_the_real_architecture_on_the_meta_device(name):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    preset = next(p for p in memory.list_presets() if p["name"] == name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**preset["config"]))
    assert preset_arch(name).total_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("method, targets", [("lora", "all-linear"), ("lora", ("q_proj", "v_proj")), ("dora", "all-linear")])
def test_trainable_count_equals_peft(method, targets):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = _tiny_configs()[2]  # Qwen2: biased q/k/v
    model = get_peft_model(AutoModelForCausalLM.from_config(config),
                           LoraConfig(r=4, target_modules=targets if isinstance(targets, str) else list(targets),
                                      use_dora=method == "dora"))
    spec = MemorySpec(memory.arch_from_config(config), method=method, lora_r=4, lora_targets=targets)
    assert memory.trainable_params(spec) == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_local_folder_config_is_read(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from core.models import ModelSource

    est = estimate_for_model(ModelSource("local", str(tiny_llama_dir)), method="full", device="cpu")
    assert est.spec.model.hidden_size == 64 and est.spec.model.num_layers == 2 and est.spec.precision == "fp32"
    real = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)  # tied embeddings: parameters() yields them once
    assert est.total_params == sum(p.numel() for p in real.parameters()) == est.trainable_params
    assert estimate_for_model(str(tiny_llama_dir), device="cpu").spec.model.total_params == est.total_params


# --------------------------------------------------------------------------- activations against autograd


def _saved_bytes(config, method: str, targets, batch: int, seq: int) -> int:
    """Bytes of the distinct non-parameter tensors autograd keeps after one forward with a padded batch."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, target_modules=targets, lora_dropout=0.0))
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(0, config.vocab_size, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, : seq // 8] = 0
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, attention_mask=mask, labels=ids)
    return sum(v for k, v in seen.items() if k not in params)


@pytest.mark.parametrize("method, targets", [("full", "all-linear"), ("lora", "all-linear"), ("lora", ["q_proj", "v_proj"])])
def test_layer_activation_model_matches_what_autograd_saves(method, targets):
    from transformers import LlamaConfig

    batch, seq = 2, 64
    configs = [LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=320, num_hidden_layers=n,
                           num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True) for n in (1, 3)]
    measured_per_layer = (_saved_bytes(configs[1], method, targets, batch, seq) - _saved_bytes(configs[0], method, targets, batch, seq)) / 2
    spec = MemorySpec(memory.arch_from_config(configs[0]), method=method, precision="fp32", device="cpu", lora_r=8,
                      lora_targets=targets if isinstance(targets, str) else tuple(targets), batch_size=batch, seq_len=seq)
    predicted_per_layer = memory.layer_activation_bytes_per_token(spec) * batch * seq
    assert predicted_per_layer == pytest.approx(measured_per_layer, rel=0.02)


# --------------------------------------------------------------------------- monotonic behaviour


def _spec(**kw) -> MemorySpec:
    base = dict(method="lora", precision="mixed", batch_size=2, seq_len=1024, device="cuda")
    base.update(kw)
    return MemorySpec(preset_arch("Llama-3.1 8B"), **base)


def test_higher_rank_needs_more_memory():
    totals = [estimate(_spec(lora_r=r)).total_bytes for r in (8, 16, 64, 256)]
    assert totals == sorted(totals) and len(set(totals)) == 4
    trainable = [estimate(_spec(lora_r=r)).trainable_params for r in (8, 16)]
    assert trainable[1] == 2 * trainable[0]


def test_checkpointing_shrinks_activations():
    plain, ckpt = estimate(_spec()), estimate(_spec(gradient_checkpointing=True))
    assert ckpt.breakdown["activations"] < plain.breakdown["activations"] / 5
    assert ckpt.total_bytes < plain.total_bytes


def test_qlora_below_lora_below_full():
    for batch in (1, 4):
        results = memory.compare_methods(_spec(batch_size=batch, gradient_checkpointing=True))
        assert results["qlora"].total_bytes < results["lora"].total_bytes < results["full"].total_bytes


def test_more_tokens_flash_attention_chunked_loss_and_8bit_adam():
    assert estimate(_spec(seq_len=2048)).total_bytes > estimate(_spec(seq_len=1024)).total_bytes
    assert (estimate(_spec(attention="eager")).breakdown["activations"] > estimate(_spec()).breakdown["activations"]
            > estimate(_spec(attention="flash_attention_2")).breakdown["activations"])
    assert estimate(_spec(chunked_loss=True)).breakdown["logits"] < estimate(_spec()).breakdown["logits"] / 10
    full = dict(method="full", gradient_checkpointing=True, batch_size=1)
    assert (estimate(_spec(optimizer="adamw_8bit", **full)).breakdown["optimizer_states"]
            < estimate(_spec(**full)).breakdown["optimizer_states"] / 3)
    assert (estimate(_spec(optimizer="sgd", **full)).breakdown["optimizer_states"]
            == estimate(_spec(**full)).breakdown["optimizer_states"] / 2)


def test_breakdown_sums_to_total_and_peak_is_the_larger_phase():
    est = estimate(_spec(method="full", precision="bf16", batch_size=8, seq_len=4096))
    assert sum(est.breakdown.values()) == est.total_bytes
    assert est.total_bytes == max(sum(p.values()) for p in est.phases.values())
    assert est.phases["optimizer step"]["activations"] == 0 and est.phases["forward/backward"]["gradients"] == 0
    assert est.tensor_bytes == est.total_bytes - est.runtime_bytes and est.measurable_bytes == est.tensor_bytes


def test_cpu_mode_is_fp32_without_cuda_context():
    est = estimate_for_model("SmolLM2 135M", method="lora", device="cpu", batch_size=4, seq_len=128)
    assert est.spec.precision == "fp32" and est.runtime_bytes == memory.CPU_RUNTIME_BYTES
    assert est.measurable_bytes == est.total_bytes
    assert est.breakdown["weights"] >= 4 * 134_515_008
    with pytest.raises(ValueError, match="fp32"):
        MemorySpec(preset_arch("SmolLM2 135M"), precision="mixed", device="cpu")


def test_cpu_allocator_switch_applies_on_glibc():
    import platform

    from core.runs.allocator import CPU_ALLOCATOR_ENV, tune_cpu_allocator

    applied = tune_cpu_allocator()
    if platform.libc_ver()[0] == "glibc":
        assert applied is True
    assert CPU_ALLOCATOR_ENV == {"MALLOC_MMAP_THRESHOLD_": "65536"}


def test_bad_inputs_get_specific_messages():
    arch = preset_arch("Phi-3-mini 4k")
    with pytest.raises(ValueError, match="q_proj.*qkv_proj"):
        MemorySpec(arch, lora_targets=("q_proj",))
    assert memory.trainable_params(MemorySpec(arch, lora_targets=("qkv_proj",), lora_r=8)) == 32 * 8 * (3072 + 3 * 3072)
    with pytest.raises(ValueError, match="method"):
        MemorySpec(arch, method="prefix")
    with pytest.raises(ValueError, match="batch_size"):
        MemorySpec(arch, batch_size=0)
    with pytest.raises(TypeError, match="unknown options"):
        estimate_for_model(arch, batch=4)
    with pytest.raises(KeyError, match="no model preset"):
        preset_arch("GPT-5")
    with pytest.raises(ValueError, match="lacks hidden_size"):
        memory.arch_from_config({"model_type": "llama", "vocab_size": 10})


def test_estimate_for_model_shortcuts():
    est = estimate_for_model("meta-llama/Llama-3.1-8B", method="qlora", device="cuda", flash_attention=True, gradient_checkpointing=True,
                             target_modules=["q_proj", "v_proj"], lora_r=16, batch_size=2, seq_len=2048)
    assert est.spec.attention == "flash_attention_2" and est.spec.lora_targets == ("q_proj", "v_proj")
    assert est.trainable_params == 32 * 16 * ((4096 + 4096) + (4096 + 1024))
    assert 5 * GB < est.total_bytes < 24 * GB  # QLoRA of an 8B model fits a 24 GB card
    json.dumps(est.as_dict())


def test_inference_memory_is_weights_plus_kv_cache():
    parts = memory.inference_estimate("Llama-3.1 8B", weight_format="bf16", batch_size=1, context_len=8192)
    assert parts["kv_cache"] == 2 * 32 * 8 * 128 * 8192 * 2  # 128 KiB per token
    assert parts["weights"] == 2 * preset_arch("Llama-3.1 8B").total_params
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    assert memory.inference_estimate("Llama-3.1 8B", weight_format="nf4")["weights"] < parts["weights"] / 2.5


def test_fit_table_lists_this_machine_and_common_gpus():
    from core.hardware import HardwareInfo

    est = estimate_for_model("Llama-3.1 8B", method="qlora", device="cuda", gradient_checkpointing=True, seq_len=1024)
    hardware = HardwareInfo("cuda", "Test GPU", 1, 24.0, 23.0, True, 8, 64.0, True, False)
    rows = memory.fit_table(est, hardware)
    assert rows[0]["gpu"].startswith("This machine: Test GPU")
    verdicts = {r["gpu"]: r["verdict"] for r in rows}
    assert verdicts["NVIDIA T4 (16 GB)"] == "fits" and verdicts["NVIDIA H200 (141 GB)"] == "fits"
    full = estimate(replace(est.spec, method="full", precision="mixed"))
    assert {r["gpu"]: r["verdict"] for r in memory.fit_table(full)}["NVIDIA A100 (80 GB)"] == "does not fit"
    assert memory.fit_label(95, 100) == "tight" and memory.fit_label(10, None) == "unknown"


def test_estimate_for_a_train_spec(tiny_llama_dir):
    from core.hardware import HardwareInfo
    from core.train.preflight import estimate_for_spec, memory_spec_from_train_spec
    from core.train.spec import TrainSpec

    cpu = HardwareInfo("cpu", "CPU", 0, 16.0, 8.0, False, 2, 16.0, False, False)
    spec = TrainSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, method="rslora", batch_size=2, max_length=128)
    est = estimate_for_spec(spec, cpu)
    assert est.spec.method == "lora" and est.spec.precision == "fp32" and est.spec.seq_len == 128 and est.total_bytes > 0
    gpu = HardwareInfo("cuda", "GPU", 1, 24.0, 23.0, True, 8, 64.0, True, False)
    assert memory_spec_from_train_spec(replace(spec, method="full"), gpu, est.spec.model).precision == "bf16"


# --------------------------------------------------------------------------- calibration from past runs


def _card(run_dir, **card):
    run_dir.mkdir(parents=True)
    (run_dir / "spec.yaml").write_text("kind: train\n")
    (run_dir / "training.json").write_text(json.dumps(card))


def test_past_runs_are_read_and_bad_cards_skipped(tmp_path):
    _card(tmp_path / "run-a", peak_memory_bytes=1_200, predicted_memory_bytes=1_000, device="cpu", spec={"method": "lora"})
    _card(tmp_path / "run-b", peak_memory_bytes=900, predicted_memory_bytes=1_000, device="cpu", spec={})
    _card(tmp_path / "run-c", peak_memory_bytes=3_000, predicted_memory_bytes=1_000, device="cuda")
    _card(tmp_path / "run-d", state="failed")  # no memory fields
    _card(tmp_path / "run-e", peak_memory_bytes=0, predicted_memory_bytes=1_000, device="cpu")
    _card(tmp_path / "run-f", peak_memory_bytes="lots", predicted_memory_bytes=1_000, device="cpu")
    (tmp_path / "run-g").mkdir()
    (tmp_path / "run-g" / "training.json").write_text("{not json")
    points = memory.past_run_calibration(tmp_path)
    assert [p.run_id for p in points] == ["run-a", "run-b", "run-c"]
    assert points[0].ratio == pytest.approx(1.2) and points[0].spec == {"method": "lora"}
    assert memory.past_run_calibration(tmp_path / "missing") == []


def test_a_run_from_before_the_rename_is_still_read(tmp_path):
    """Train runs used to write their result as run_card.json (beside every run's lineage card.json): still read."""
    from core.runs.jobs import read_result, result_path

    old = tmp_path / "run-old"
    old.mkdir()
    (old / "spec.yaml").write_text("kind: train\n")
    (old / "run_card.json").write_text(json.dumps({"peak_memory_bytes": 1_100, "predicted_memory_bytes": 1_000, "device": "cpu"}))
    assert result_path(old).name == "run_card.json" and read_result(old)["peak_memory_bytes"] == 1_100
    assert [p.run_id for p in memory.past_run_calibration(tmp_path)] == ["run-old"]
    _card(tmp_path / "run-new", peak_memory_bytes=900, predicted_memory_bytes=1_000, device="cpu")
    assert result_path(tmp_path / "run-new").name == "training.json"
    assert [p.run_id for p in memory.past_run_calibration(tmp_path)] == ["run-new", "run-old"]


def test_correction_factor_is_the_bounded_median_per_device(tmp_path):
    point = memory.CalibrationPoint
    points = [point("a", "cpu", 100, 110), point("b", "cpu", 100, 130), point("c", "cpu", 100, 120), point("d", "cuda", 100, 500)]
    assert memory.correction_factor(points, "cpu") == pytest.approx(1.2)
    assert memory.correction_factor(points, "cuda") == 2.0  # 5x is clamped to the upper bound
    assert memory.correction_factor([point("e", "cuda", 100, 10)], "cuda") == 0.5
    assert memory.correction_factor(points, "mps") == 1.0
    est = estimate_for_model("SmolLM2 135M", device="cpu")
    assert memory.corrected_total(est, 1.2) == round(est.total_bytes * 1.2)


def test_cpu_autocast_keeps_fp32_state_and_16_bit_activations():
    """The CPU job's bf16 autocast (core.train.backends) over fp32 weights: same weights, gradients and optimizer
    states as fp32, 16-bit activations, plus the bf16 copy of every linear weight autograd keeps for backward."""
    arch = preset_arch("SmolLM2 135M")
    fp32 = estimate(MemorySpec(arch, method="lora", precision="fp32", device="cpu", batch_size=8, seq_len=256))
    auto = estimate(MemorySpec(arch, method="lora", precision="autocast", device="cpu", batch_size=8, seq_len=256))
    for part in ("weights", "gradients", "optimizer_states"):
        assert auto.phases["optimizer step"][part] == fp32.phases["optimizer step"][part], part
    copies = memory.autocast_weight_copies(auto.spec)
    linears = sum(l.in_features * l.out_features for l in arch.layer_linears()) * arch.num_layers
    assert copies == 2 * linears and memory.autocast_weight_copies(fp32.spec) == 0
    assert auto.breakdown["activations"] - copies < 0.8 * fp32.breakdown["activations"]  # 16-bit saved tensors (RMSNorm stays fp32)
    with pytest.raises(ValueError, match="autocast"):
        MemorySpec(arch, precision="bf16", device="cpu")


def test_the_train_spec_on_a_bf16_cpu_is_estimated_as_the_job_runs_it(tiny_llama_dir):
    from core.hardware import HardwareInfo
    from core.train.backends import choose_precision
    from core.train.preflight import memory_spec_from_train_spec
    from core.train.spec import TrainSpec

    spec = TrainSpec(model={"kind": "local", "ref": str(tiny_llama_dir)})
    bf16_cpu = HardwareInfo("cpu", "CPU", 0, 16.0, 8.0, True, 2, 16.0, False, False)
    plain_cpu = replace(bf16_cpu, bf16=False)
    assert choose_precision(spec, "cpu", True).bf16 and not choose_precision(spec, "cpu", False).bf16
    assert not choose_precision(replace(spec, precision="fp32"), "cpu", True).bf16
    assert memory_spec_from_train_spec(spec, bf16_cpu).precision == "autocast"
    assert memory_spec_from_train_spec(spec, plain_cpu).precision == "fp32"
    assert memory_spec_from_train_spec(replace(spec, precision="fp32"), bf16_cpu).precision == "fp32"


def test_lora_dropout_keeps_each_adapters_own_input_and_mask():
    """Measured on the real CPU job (bench/memory_calibration.py): with lora_dropout > 0 every adapter keeps its own
    dropped-out input (16-bit under autocast) and dropout's fp32 noise tensor; on a GPU the fused kernel keeps a bool mask."""
    arch = preset_arch("SmolLM2 135M")
    base = MemorySpec(arch, method="lora", precision="autocast", device="cpu", batch_size=4, seq_len=128)
    tokens = 4 * 128
    inputs = sum(l.in_features for l in base.targeted_linears()) * arch.num_layers
    shared = (2 * arch.hidden_size + arch.q_dim + arch.intermediate_size) * arch.num_layers  # q/k/v and gate/up each share one input
    with_dropout = replace(base, lora_dropout=0.05)
    assert memory.activation_bytes(with_dropout) - memory.activation_bytes(base) == pytest.approx(tokens * ((2 + 4) * inputs - 2 * shared))
    gpu = replace(with_dropout, device="cuda", precision="mixed")
    assert (memory.activation_bytes(gpu) - memory.activation_bytes(replace(gpu, lora_dropout=0.0))
            == pytest.approx(tokens * ((2 + 1) * inputs - 2 * shared)))


def test_loha_and_lokr_keep_a_16_bit_input_copy_per_layer_under_autocast():
    arch = preset_arch("SmolLM2 135M")
    for method in ("loha", "lokr"):
        auto = MemorySpec(arch, method=method, precision="autocast", device="cpu", batch_size=4, seq_len=128)
        per_token = memory.layer_activation_bytes_per_token(auto) - memory.layer_activation_bytes_per_token(replace(auto, method="ia3"))
        copies = 2 * sum(l.in_features for l in auto.targeted_linears())
        assert per_token >= copies, method  # F.linear(x, ΔW) keeps its own cast input in every targeted layer
