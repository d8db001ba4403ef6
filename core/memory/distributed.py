"""Memory per device when training runs on several GPUs: how DDP, DeepSpeed ZeRO-1/2/3 and FSDP divide the
model state, from the one-device estimate of `core.memory.estimate` (activations and logits stay per device:
each device runs its own micro-batch).

With Ψ trainable parameters on N devices, mixed precision and AdamW (2 B 16-bit weights, 2 B 16-bit gradients,
4 B fp32 master copy, 8 B Adam moments; DeepSpeed also keeps a 4 B fp32 copy of each gradient partition):

| strategy | per device (model state) | source |
|---|---|---|
| DDP | 2Ψ + 2Ψ + 12Ψ, plus DDP's gradient buckets (another 2Ψ) | every rank holds a full copy |
| ZeRO-1 | 2Ψ + 2Ψ + 16Ψ/N | optimizer states (with master and fp32 gradients) partitioned |
| ZeRO-2 | 2Ψ + 18Ψ/N | + gradients partitioned; = DeepSpeed's `estimate_zero2_model_states_mem_needs` |
| ZeRO-3 | 18Ψ/N + 4·L | + weights partitioned; L = the largest layer, gathered with its gradients (1) |
| FSDP full_shard | 16Ψ/N + the gathered units | weights, gradients and optimizer sharded (2) |
| FSDP shard_grad_op | 16Ψ/N + every weight gathered from forward to backward | like ZeRO-2 for communication |

(1) = DeepSpeed's `estimate_zero3_model_states_mem_needs`.
(2) One decoder layer (and its prefetched neighbour) gathered at a time; the root unit (embedding, lm_head) for the
whole pass.

Offload: ZeRO-Offload moves the optimizer partition (master, moments, fp32 gradients; stage 2 also the 16-bit
gradient partition) to CPU memory; ZeRO-3 can move the weight partition too; FSDP's CPU offload moves every
shard. CPU memory per node = the offloaded bytes of its ranks × 1.5 (DeepSpeed's `additional_buffer_factor`).
Frozen weights (LoRA / QLoRA bases) are divided only by the strategies that shard weights (ZeRO-3, FSDP).
References: Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models" (§5, Fig. 1);
DeepSpeed `deepspeed/runtime/zero/stage_1_and_2.py` and `stage3.py` estimators (checked against ours in tests).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from core.memory.estimator import (
    GB,
    PHASES,
    REFERENCE_PHASE,
    MemoryEstimate,
    MemorySpec,
    estimate,
    model_state_bytes_per_param,
    trainable_params,
)
from core.memory.fits import COMMON_GPUS, fit_label

STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp_full_shard", "fsdp_shard_grad_op")
STRATEGY_LABELS = {"ddp": "DDP", "zero1": "ZeRO-1", "zero2": "ZeRO-2", "zero3": "ZeRO-3",
                   "fsdp_full_shard": "FSDP full_shard", "fsdp_shard_grad_op": "FSDP shard_grad_op"}
HOST_BUFFER_FACTOR = 1.5  # DeepSpeed's additional_buffer_factor for CPU memory
GPU_COUNTS = (1, 2, 4, 8, 16, 32, 64)
GPUS_PER_NODE = 8


@dataclass(frozen=True)
class Distribution:
    """How the training is spread: strategy, devices, offload."""

    strategy: str = "ddp"
    gpus_per_node: int = 1
    nodes: int = 1
    offload_optimizer: bool = False  # ZeRO-Offload; FSDP's CPU offload sets both flags
    offload_params: bool = False  # ZeRO-3 / FSDP full_shard only

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"distribution: strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.gpus_per_node < 1 or self.nodes < 1:
            raise ValueError("distribution: gpus_per_node and nodes must be at least 1")
        if self.offload_params and self.strategy in ("ddp", "zero1", "zero2"):
            raise ValueError(f"distribution: {STRATEGY_LABELS[self.strategy]} keeps every weight on each device; "
                             "only ZeRO-3 and FSDP offload weights")
        if self.offload_optimizer and self.strategy == "ddp":
            raise ValueError("distribution: DDP has no optimizer offload (use ZeRO or FSDP)")
        if self.strategy.startswith("fsdp") and self.offload_optimizer != self.offload_params:
            raise ValueError("distribution: FSDP's CPU offload moves weights, gradients and optimizer states together")

    @property
    def world_size(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def label(self) -> str:
        offload = " + optimizer offload" if self.offload_optimizer and not self.offload_params else ""
        offload = " + CPU offload" if self.offload_params else offload
        return f"{STRATEGY_LABELS[self.strategy]}{offload}"


@dataclass
class DeviceEstimate:
    """Peak memory of ONE device of a multi-device run, split like MemoryEstimate, plus CPU memory per node."""

    single: MemoryEstimate
    distribution: Distribution
    breakdown: dict[str, int]
    phases: dict[str, dict[str, int]]
    peak_phase: str
    model_state_bytes: int  # persistent states + the gathered working set: DeepSpeed's estimators' quantity
    host_bytes_per_node: int
    assumptions: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(self.breakdown.values())

    @property
    def total_gb(self) -> float:
        return self.total_bytes / GB

    @property
    def measurable_bytes(self) -> int:
        """What one rank's memory probe sees (as MemoryEstimate.measurable_bytes: no CUDA context on a GPU)."""
        return self.total_bytes - (self.single.runtime_bytes if self.single.spec.device == "cuda" else 0)

    @property
    def note(self) -> str:
        return f"{self.single.note.split(':')[0]}, {self.distribution.label} on {self.distribution.world_size} device(s): " \
               f"{self.total_bytes / GB:.2f} GB per device ({self.peak_phase})"

    def fits(self, capacity_bytes: float | None, headroom: float = 0.0) -> bool | None:
        return None if not capacity_bytes else self.total_bytes <= capacity_bytes * (1 - headroom)

    def as_dict(self) -> dict:
        return {"distribution": self.distribution.__dict__ | {"label": self.distribution.label}, "breakdown": dict(self.breakdown),
                "total_bytes": self.total_bytes, "peak_phase": self.peak_phase, "model_state_bytes": self.model_state_bytes,
                "host_bytes_per_node": self.host_bytes_per_node, "assumptions": list(self.assumptions)}


def largest_layer_params(spec: MemorySpec) -> int:
    """The largest single module's own parameters (DeepSpeed's `model_to_params` rule): for LLMs usually the
    embedding (vocabulary × hidden), else the biggest linear layer."""
    arch = spec.model
    linear = max(layer.in_features * layer.out_features for layer in arch.layer_linears())
    return max(arch.vocab_size * arch.hidden_size, linear)


def decoder_layer_params(spec: MemorySpec) -> int:
    arch = spec.model
    counts = arch.param_counts()
    return (counts["attention"] + counts["mlp"]) // arch.num_layers + arch.norms_per_layer * arch.hidden_size


def estimate_per_device(spec: MemorySpec, dist: Distribution) -> DeviceEstimate:
    """Peak memory of one device for `spec` trained as `dist` describes."""
    single = estimate(spec)
    n, arch, compute = dist.world_size, spec.model, spec.compute_bytes
    trainable = trainable_params(spec)
    per = model_state_bytes_per_param(spec.precision, spec.optimizer)
    fwd, step = single.phases[PHASES[0]], single.phases[PHASES[1]]
    all_weights = float(step["weights"])  # frozen base + trainable working weights
    grads, master, optimizer = float(step["gradients"]), float(step["master_weights"]), float(step["optimizer_states"])
    # DeepSpeed keeps an fp32 copy of each gradient partition for its optimizer (mixed precision).
    fp32_grads = 4.0 * trainable if dist.strategy.startswith("zero") and spec.precision != "fp32" else 0.0
    s = dist.strategy
    shards_weights = s in ("zero3", "fsdp_full_shard", "fsdp_shard_grad_op")
    weights = all_weights / n if shards_weights else all_weights
    # 16-bit gradients that live through backward (and across micro-batches when accumulating):
    transient = {"ddp": grads, "zero1": grads, "zero2": grads / n, "zero3": 0.0}.get(s, grads / n)
    persistent = fp32_grads / n  # allocated once by DeepSpeed, alive in every phase
    m, o = (master, optimizer) if s == "ddp" else (master / n, optimizer / n)
    gathered = 0.0  # weights (and gradients) gathered only while a layer computes
    buckets = grads if s == "ddp" else 0.0  # DDP's flat all-reduce buckets: a second copy of the gradients
    host = 0.0
    notes = [f"{dist.label} on {n} device(s) ({dist.gpus_per_node} per node × {dist.nodes} node(s)); activations and logits "
             f"are per device (its own micro-batch of {spec.batch_size} × {spec.seq_len} tokens)."]
    if s == "ddp":
        notes.append(f"DDP: a full copy of weights, gradients and optimizer states on every device, plus DDP's gradient buckets "
                     f"({buckets / GB:.2f} GB, the copy the all-reduce works on).")
    elif s in ("zero1", "zero2"):
        notes.append(f"{STRATEGY_LABELS[s]}: fp32 master weights, Adam moments and fp32 gradients divided by {n}"
                     + (", the 16-bit gradients too" if s == "zero2" else "; every device keeps all 16-bit gradients") + ".")
    elif s == "zero3":
        layer = largest_layer_params(spec)
        gathered = 4.0 * layer  # DeepSpeed: the largest layer's 16-bit weights and gradients, 4 bytes per parameter
        notes.append(f"ZeRO-3: weights, gradients and optimizer states divided by {n}; the largest layer ({layer / 1e6:.0f} M "
                     "parameters) is gathered with its gradients while it computes.")
    else:
        counts = arch.param_counts()
        layer = decoder_layer_params(spec) * compute
        if s == "fsdp_full_shard":
            root = (counts["embedding"] + counts["lm_head"] + arch.hidden_size) * compute
            gathered = root + 3 * layer  # root unit for the pass, current + prefetched layer, one layer's unsharded gradients
            how = ("one decoder layer and its prefetched neighbour gathered at a time (plus one layer's gradients before "
                   "reduce-scatter), the root unit (embedding, lm_head) for the whole pass")
        else:
            gathered = arch.total_params * compute
            how = "every weight stays gathered from its forward to its backward (reshard_after_forward off)"
        notes.append(f"FSDP2 ({s.removeprefix('fsdp_')}): weights, gradients and optimizer states sharded over {n} devices; {how}.")
    if dist.offload_optimizer:
        host += m + o + persistent + (transient if s == "zero2" or s.startswith("fsdp") else 0.0)
        m = o = persistent = 0.0
        transient = transient if s in ("zero1", "zero3") else 0.0
        notes.append("Offload: the optimizer partition (master weights, moments, fp32 gradients) lives in CPU memory and is "
                     "updated there (ZeRO-Offload / FSDP CPU offload).")
    if dist.offload_params:
        host += weights
        weights = 0.0
        notes.append("Offload: the weight partition lives in CPU memory and is fetched layer by layer.")

    def phase(base: dict, grads_now: float, computing: bool) -> dict[str, int]:
        out = dict(base, weights=weights + (gathered if computing else 0.0), gradients=grads_now, master_weights=m,
                   optimizer_states=o, overhead=base["overhead"] + buckets)
        return {k: int(round(v)) for k, v in out.items()}

    accumulating = spec.grad_accumulation > 1
    phases = {PHASES[0]: phase(fwd, persistent + (transient if accumulating else 0.0), True),
              PHASES[1]: phase(step, persistent + transient, False)}
    if REFERENCE_PHASE in single.phases:  # DPO / KTO: the no-grad reference forward on top of the policy's activations
        phases[REFERENCE_PHASE] = phase(single.phases[REFERENCE_PHASE], persistent + (transient if accumulating else 0.0), True)
    peak_phase = max(phases, key=lambda p: sum(phases[p].values()))
    model_state = weights + transient + persistent + m + o + (gathered if s == "zero3" else 0.0)
    if s.startswith("zero") and spec.precision != "fp32":
        notes.append("DeepSpeed's accounting (mixed precision): 16-bit weights 2 B, 16-bit gradients 2 B, fp32 gradients 4 B, "
                     "fp32 master weights 4 B and Adam moments 8 B per trainable parameter.")
    if host:
        notes.append(f"CPU memory per node: {host / GB:.2f} GB per rank × {dist.gpus_per_node} rank(s) × "
                     f"{HOST_BUFFER_FACTOR} for buffers.")
    if spec.method != "full" and not shards_weights:
        notes.append(f"The frozen base ({(all_weights - trainable * per['weights']) / GB:.2f} GB) is copied to every device: "
                     "only ZeRO-3 and FSDP divide it.")
    return DeviceEstimate(single=single, distribution=dist, breakdown=phases[peak_phase], phases=phases, peak_phase=peak_phase,
                          model_state_bytes=int(round(model_state)),
                          host_bytes_per_node=int(round(host * dist.gpus_per_node * HOST_BUFFER_FACTOR)), assumptions=notes)


def standard_distributions(gpus: int, per_node: int = GPUS_PER_NODE) -> list[Distribution]:
    """The strategies the Budget page compares at a GPU count (nodes of `per_node` GPUs above that)."""
    gpus_per_node, nodes = (gpus, 1) if gpus <= per_node else (per_node, -(-gpus // per_node))
    made = dict(gpus_per_node=gpus_per_node, nodes=nodes)
    return [Distribution("ddp", **made), Distribution("zero1", **made), Distribution("zero2", **made), Distribution("zero3", **made),
            Distribution("zero3", offload_optimizer=True, offload_params=True, **made),
            Distribution("fsdp_full_shard", **made), Distribution("fsdp_shard_grad_op", **made),
            Distribution("fsdp_full_shard", offload_optimizer=True, offload_params=True, **made)]


def fits_by_gpu_count(spec: MemorySpec, capacity_bytes: float, counts: Iterable[int] = GPU_COUNTS) -> list[dict]:
    """One row per (GPU count, strategy): per-device GB, share of the GPU, verdict, CPU GB per node."""
    rows = []
    for gpus in counts:
        for dist in standard_distributions(gpus):
            est = estimate_per_device(spec, dist)
            rows.append({"gpus": gpus, "strategy": dist.label, "per_device_gb": round(est.total_bytes / GB, 2),
                         "used": round(est.total_bytes / capacity_bytes, 3), "verdict": fit_label(est.total_bytes, capacity_bytes),
                         "cpu_gb_per_node": round(est.host_bytes_per_node / GB, 1)})
    return rows


def fewest_gpus(rows: list[dict]) -> dict[str, int | None]:
    """For each strategy, the smallest GPU count whose row fits (None when no count in the table does)."""
    best: dict[str, int | None] = {}
    for row in rows:
        best.setdefault(row["strategy"], None)
        if row["verdict"] == "fits" and best[row["strategy"]] is None:
            best[row["strategy"]] = row["gpus"]
    return best


VERDICT_MARKS = {"fits": "✅ fits", "tight": "⚠️ tight", "does not fit": "❌ too big", "unknown": ""}  # the mark and a word


def fits_matrix(rows: list[dict]) -> list[dict]:
    """fits_by_gpu_count rows as one row per GPU count and one column per strategy: "12.3 GB ✅ fits"."""
    table: dict[int, dict] = {}
    for row in rows:
        cells = table.setdefault(row["gpus"], {"GPUs": row["gpus"]})
        cells[row["strategy"]] = f"{row['per_device_gb']:.1f} GB {VERDICT_MARKS[row['verdict']]}".strip()
    return [table[gpus] for gpus in sorted(table)]


def distribution_from_train_spec(spec: Any) -> Distribution:
    """The Distribution a TrainSpec's distribution section describes."""
    per_node, nodes = int(getattr(spec, "processes_per_node", 1)), int(getattr(spec, "num_nodes", 1))
    strategy = getattr(spec, "distributed_strategy", "ddp")
    if strategy == "fsdp":
        offload = bool(getattr(spec, "fsdp_cpu_offload", False))
        return Distribution(f"fsdp_{spec.fsdp_sharding}", per_node, nodes, offload_optimizer=offload, offload_params=offload)
    if strategy == "deepspeed":
        offload = getattr(spec, "zero_offload", "none")
        return Distribution(f"zero{spec.zero_stage}", per_node, nodes, offload_optimizer=offload != "none",
                            offload_params=offload == "optimizer_and_params")
    return Distribution("ddp", per_node, nodes)


def gpu_capacity(name: str) -> float:
    for gpu in COMMON_GPUS:
        if gpu.name == name:
            return gpu.memory_bytes
    raise KeyError(f"unknown GPU {name!r}; choose one of {', '.join(g.name for g in COMMON_GPUS)}")
