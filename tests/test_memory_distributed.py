"""Per-device memory: DDP, ZeRO-1/2/3 and FSDP divide the model state as they define, and ZeRO-2 / ZeRO-3 match
DeepSpeed's own estimator functions (requirements-dev.txt installs DeepSpeed; it imports on a CPU)."""
from __future__ import annotations

import pytest
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

from core.memory import GB, PHASES, MemorySpec, estimate, preset_arch
from core.memory.distributed import (
    Distribution,
    distribution_from_train_spec,
    estimate_per_device,
    fewest_gpus,
    fits_by_gpu_count,
    largest_layer_params,
)
from core.train.spec import TrainSpec

LAYOUTS = [(1, 1), (2, 1), (4, 1), (8, 1), (8, 2), (8, 4)]  # (GPUs per node, nodes)


@pytest.fixture(scope="module")
def full_8b() -> MemorySpec:
    """Full fine-tuning, mixed precision + AdamW: the setting DeepSpeed's estimators assume."""
    return MemorySpec(preset_arch("Llama-3.1 8B"), method="full", precision="mixed", batch_size=1, seq_len=2048,
                      gradient_checkpointing=True, device="cuda")


def _states(spec, strategy, per_node, nodes, **offload) -> int:
    return estimate_per_device(spec, Distribution(strategy, per_node, nodes, **offload)).model_state_bytes


@pytest.mark.parametrize("per_node, nodes", LAYOUTS)
def test_zero2_matches_deepspeeds_estimator(full_8b, per_node, nodes):
    params = full_8b.model.total_params
    _, gpu = estimate_zero2_model_states_mem_needs(params, per_node, nodes, cpu_offload=False)
    assert _states(full_8b, "zero2", per_node, nodes) == gpu
    _, gpu_offload = estimate_zero2_model_states_mem_needs(params, per_node, nodes, cpu_offload=True)
    assert _states(full_8b, "zero2", per_node, nodes, offload_optimizer=True) == gpu_offload


@pytest.mark.parametrize("per_node, nodes", LAYOUTS)
def test_zero3_matches_deepspeeds_estimator_with_and_without_offload(full_8b, per_node, nodes):
    params, layer = full_8b.model.total_params, largest_layer_params(full_8b)
    assert layer == full_8b.model.vocab_size * full_8b.model.hidden_size, "the embedding is Llama-8B's largest module"
    cases = [(dict(), dict(cpu_offload=False)),
             (dict(offload_optimizer=True), dict(cpu_offload=True, cpu_offload_params=False)),
             (dict(offload_optimizer=True, offload_params=True), dict(cpu_offload=True, cpu_offload_params=True))]
    for ours, theirs in cases:
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(params, layer, per_node, nodes, **theirs)
        est = estimate_per_device(full_8b, Distribution("zero3", per_node, nodes, **ours))
        assert est.model_state_bytes == gpu, (ours, est.model_state_bytes, gpu)
        if ours:  # DeepSpeed's CPU figure per node (zero.Init loading) is the offloaded partitions x 1.5
            assert est.host_bytes_per_node == pytest.approx(cpu, rel=1e-9)


def test_zero1_keeps_every_16bit_gradient_unlike_deepspeeds_shared_stage_1_2_estimator(full_8b):
    """DeepSpeed has one estimator for stages 1 and 2; stage 1 does not partition the 16-bit gradients (2 B each)."""
    params = full_8b.model.total_params
    for per_node, nodes in LAYOUTS:
        n = per_node * nodes
        _, stage_2 = estimate_zero2_model_states_mem_needs(params, per_node, nodes, cpu_offload=False)
        assert _states(full_8b, "zero1", per_node, nodes) == pytest.approx(stage_2 + 2 * params * (1 - 1 / n), abs=2)


def test_the_zero_paper_example_divides_as_published():
    """ZeRO paper, Fig. 1: Ψ = 7.5 B, N = 64, K = 12: baseline 120 GB, P_os 31.4 GB, P_os+g 16.6 GB, P_os+g+p 1.9 GB
    (16-bit weights and gradients plus 12 B of optimizer state; DeepSpeed's implementation adds 4 B of fp32
    gradients to the partition, which the paper's K leaves out)."""
    psi, n = 7.5e9, 64
    assert (2 + 2 + 12) * psi / 1e9 == 120
    assert round((2 + 2 + 12 / n) * psi / 1e9, 1) == 31.4
    assert round((2 + 14 / n) * psi / 1e9, 1) == 16.6
    assert round(16 / n * psi / 1e9, 1) == 1.9
    arch = preset_arch("Llama-3.1 8B")
    spec = MemorySpec(arch, method="full", precision="mixed", device="cuda")
    p = arch.total_params
    one = estimate_per_device(spec, Distribution("zero2", 8, 8)).model_state_bytes
    assert one == pytest.approx(2 * p + 18 * p / 64, abs=2), "our ZeRO-2: the paper's division with DeepSpeed's K = 16 + 2"


def test_ddp_is_the_single_device_estimate_plus_its_gradient_buckets(full_8b):
    single = estimate(full_8b)
    for gpus in (1, 2, 8):
        ddp = estimate_per_device(full_8b, Distribution("ddp", gpus, 1))
        grads = single.phases[PHASES[1]]["gradients"]
        assert ddp.total_bytes == single.total_bytes + grads, "DDP divides nothing: only the bucket copy is added"
        assert ddp.breakdown["activations"] == single.breakdown["activations"]


def test_each_strategy_divides_what_it_shards(full_8b):
    one = {s: estimate_per_device(full_8b, Distribution(s, 1, 1)) for s in ("zero1", "zero2", "zero3", "fsdp_full_shard")}
    eight = {s: estimate_per_device(full_8b, Distribution(s, 8, 1)) for s in one}
    step = PHASES[1]
    for s in one:
        assert eight[s].phases[step]["optimizer_states"] * 8 == pytest.approx(one[s].phases[step]["optimizer_states"], abs=8)
        assert eight[s].phases[step]["master_weights"] * 8 == pytest.approx(one[s].phases[step]["master_weights"], abs=8)
    assert eight["zero1"].phases[step]["weights"] == one["zero1"].phases[step]["weights"], "ZeRO-1 keeps every weight"
    assert eight["zero2"].phases[step]["weights"] == one["zero2"].phases[step]["weights"], "ZeRO-2 keeps every weight"
    assert eight["zero3"].phases[step]["weights"] * 8 == pytest.approx(one["zero3"].phases[step]["weights"], abs=8)
    assert eight["fsdp_full_shard"].phases[step]["weights"] * 8 == pytest.approx(one["fsdp_full_shard"].phases[step]["weights"], abs=8)
    assert eight["zero1"].phases[step]["gradients"] > eight["zero2"].phases[step]["gradients"], "ZeRO-2 also divides gradients"
    totals = [eight[s].total_bytes for s in ("zero1", "zero2", "zero3")]
    assert totals == sorted(totals, reverse=True), "each ZeRO stage needs less per device than the one before"
    shard_grad_op = estimate_per_device(full_8b, Distribution("fsdp_shard_grad_op", 8, 1))
    assert shard_grad_op.phases[PHASES[0]]["weights"] > eight["fsdp_full_shard"].phases[PHASES[0]]["weights"], \
        "shard_grad_op keeps the gathered weights from forward to backward"


def test_offload_moves_the_states_to_cpu_memory(full_8b):
    on_gpu = estimate_per_device(full_8b, Distribution("fsdp_full_shard", 1, 1))
    offloaded = estimate_per_device(full_8b, Distribution("fsdp_full_shard", 1, 1, offload_optimizer=True, offload_params=True))
    assert offloaded.total_bytes < on_gpu.total_bytes / 4 and offloaded.host_bytes_per_node > 100 * GB
    assert offloaded.breakdown["optimizer_states"] == 0 and on_gpu.host_bytes_per_node == 0
    with pytest.raises(ValueError, match="keeps every weight on each device"):
        Distribution("zero2", 8, 1, offload_params=True)


def test_lora_base_is_divided_only_by_strategies_that_shard_weights():
    spec = MemorySpec(preset_arch("Llama-3.1 8B"), method="lora", precision="mixed", device="cuda")
    single = estimate(spec)
    zero2 = estimate_per_device(spec, Distribution("zero2", 8, 1))
    zero3 = estimate_per_device(spec, Distribution("zero3", 8, 1))
    assert zero2.phases[PHASES[1]]["weights"] == single.phases[PHASES[1]]["weights"]
    assert zero3.phases[PHASES[1]]["weights"] == pytest.approx(single.phases[PHASES[1]]["weights"] / 8, abs=8)
    assert any("copied to every device" in note for note in zero2.assumptions)


def test_fits_table_per_gpu_count_finds_the_fewest_gpus(full_8b):
    h100 = 81_559 * 2**20
    rows = fits_by_gpu_count(full_8b, h100, counts=(1, 2, 4, 8, 16))
    assert {r["gpus"] for r in rows} == {1, 2, 4, 8, 16} and {"DDP", "ZeRO-3", "FSDP full_shard"} <= {r["strategy"] for r in rows}
    fewest = fewest_gpus(rows)
    assert fewest["DDP"] is None, "a full 8B fine-tune never fits one 80 GB GPU per copy"
    assert fewest["ZeRO-3"] is not None and fewest["ZeRO-3"] <= 4
    assert fewest["ZeRO-3 + CPU offload"] == 1, "with everything offloaded one H100 holds the working set"
    row = next(r for r in rows if r["gpus"] == 16 and r["strategy"] == "ZeRO-3")
    assert row["per_device_gb"] == pytest.approx(estimate_per_device(full_8b, Distribution("zero3", 8, 2)).total_bytes / GB, abs=0.01)


def test_the_train_spec_distribution_maps_to_the_estimator():
    assert distribution_from_train_spec(TrainSpec(processes_per_node=4)) == Distribution("ddp", 4, 1)
    zero = TrainSpec(processes_per_node=8, num_nodes=2, distributed_strategy="deepspeed", zero_stage=3, zero_offload="optimizer")
    assert distribution_from_train_spec(zero) == Distribution("zero3", 8, 2, offload_optimizer=True)
    fsdp = TrainSpec(processes_per_node=2, distributed_strategy="fsdp", fsdp_sharding="shard_grad_op", fsdp_cpu_offload=True)
    assert distribution_from_train_spec(fsdp) == Distribution("fsdp_shard_grad_op", 2, 1, offload_optimizer=True, offload_params=True)
