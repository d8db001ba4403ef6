"""The training-memory estimator: bytes per parameter, the MemorySpec, activations, logits and the peak.

and the process's peak RSS; see bench/memory_calibration.py):
- model state per trainable parameter: weights + gradients + fp32 master copy (mixed precision only) +
  optimizer states; frozen parameters cost only their weights (NF4 for QLoRA's quantized linear layers);
- activations: the tensors autograd saves per token and layer (residual stream and RMSNorm internals in fp32,
  q/k/v/attention output, the gated MLP's four intermediate tensors, LoRA's rank-r outputs), or only the
  layer inputs plus one recomputed layer with gradient checkpointing;
- logits: 12 bytes per (token, vocabulary entry) at the start of backward (fp32 log-probs saved by the loss,
  plus the fp32 gradient buffers of the loss and log-softmax backward);
- gradients are freed after each optimizer step (`zero_grad(set_to_none=True)`), so the peak is the larger of
  two moments: *forward/backward* (activations and logits alive, no gradients yet unless gradients
  accumulate across micro-batches) and *optimizer step* (all gradients alive, activations freed);
- preference objectives (`objective`, TRL 1.16's trainers): DPO / ORPO / SimPO run chosen and rejected as one batch
  of 2 x batch_size rows (activations x2); DPO / KTO score log-probs through TRL's chunked log-prob head (no full
  logits: one tile of at most 4096 tokens x 32768 vocabulary entries at a time) and run a no-grad reference forward
  while the policy's activations are alive (a third candidate peak, *reference forward*); a full fine-tune's
  reference is a second copy of the weights, a PEFT model's a frozen "ref" copy of the adapter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterable, Mapping

from core import hardware
from core.memory.architecture import _KNOWN_TYPES, LinearShape, ModelArch, resolve_arch
from core.runs.allocator import CPU_ALLOCATOR_ENV
from core.runs.spec import check_limits, meta

_ALLOCATOR_SETTING = ", ".join(f"{k}={v}" for k, v in CPU_ALLOCATOR_ENV.items())

GB = 1e9  # decimal gigabyte, the unit of every "GB" this module prints
GIB = 2**30

LORA_METHODS = ("lora", "dora", "qlora")
# The rest of the seed chapter's PEFT table (see "PEFT family" below): low-rank relatives, learned scaling
# vectors, virtual tokens, bias-only and top-layers-only training.
PEFT_FAMILY_METHODS = ("loha", "lokr", "ia3", "prompt_tuning", "prefix_tuning", "bitfit", "partial")
METHODS = ("full", *LORA_METHODS, *PEFT_FAMILY_METHODS)
PRECISIONS = ("fp32", "mixed", "bf16", "autocast")
FP32_WEIGHT_PRECISIONS = ("fp32", "autocast")  # weights, gradients and optimizer states stay fp32
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw", "sgd")
ATTENTIONS = ("flash_attention_2", "sdpa", "eager")
DEVICES = ("cuda", "cpu", "mps")
WEIGHT_FORMATS = ("fp32", "fp16", "bf16", "int8", "nf4")
COMPONENTS = ("weights", "gradients", "master_weights", "optimizer_states", "activations", "logits", "overhead", "reference")
PHASES = ("forward/backward", "optimizer step")  # the two candidate peaks of every run
REFERENCE_PHASE = "reference forward"  # the third, of DPO / KTO scoring the reference while the policy's activations live

# Preference objectives (issue 27) and GRPO (issue 28) as TRL 1.16 trains them (core.train.methods.OBJECTIVES names the same six).
OBJECTIVES = ("sft", "dpo", "kto", "orpo", "simpo", "grpo")
OBJECTIVE_LABELS = {"sft": "SFT", "dpo": "DPO", "kto": "KTO", "orpo": "ORPO", "simpo": "SimPO", "grpo": "GRPO"}
GENERATION_PHASE = "generation"  # GRPO's fourth candidate peak: sampling the completions (KV cache), and the reference's no-grad pass
PAIRED_OBJECTIVES = ("dpo", "orpo", "simpo")  # chosen and rejected concatenated into one batch of 2 x batch_size rows
REFERENCE_OBJECTIVES = ("dpo", "kto")  # a frozen reference scored by a no-grad forward (ORPO / SimPO have none)
FUSED_HEAD_OBJECTIVES = ("dpo", "kto", "grpo")  # log-probs through trl's add_fused_lm_head: the (tokens x vocab) logits never exist
FUSED_HEAD_TOKENS = 4096  # trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE: tokens per projection tile
FUSED_HEAD_VOCAB = 32768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE: vocabulary entries per tile
# Without Triton (CPU) the tile is folded in torch ops: fp32 temporaries of the tile's size alive at once in the
# backward fold (y, z, log p, p, grad, the target mask as float, its difference with p, the product; bool mask beside)
# and in the forward fold (the scaled tile, z - max, its exp). Triton (CUDA) folds the tile in place.
FUSED_HEAD_BACKWARD_TILES = 7
FUSED_HEAD_FORWARD_TILES = 3
# ORPO's NLL of the chosen answers runs cross-entropy on their own copy of the logits (trl.experimental.orpo:
# concatenated_forward), whose log-softmax is kept for backward: 4 bytes on half the rows = 2 per element of the batch.
ORPO_NLL_BYTES_PER_ELEMENT = 2

METHOD_LABELS = {"full": "Full fine-tune", "lora": "LoRA", "dora": "DoRA", "qlora": "QLoRA (NF4 + double quant)",
                 "loha": "LoHa", "lokr": "LoKr", "ia3": "(IA)³", "prompt_tuning": "Prompt tuning", "prefix_tuning": "Prefix tuning",
                 "bitfit": "BitFit (biases only)", "partial": "Partial fine-tune (top layers)"}
PRECISION_LABELS = {"fp32": "fp32", "mixed": "mixed bf16/fp16 + fp32 master weights", "bf16": "pure bf16",
                    "autocast": "bf16 autocast over fp32 weights"}
OPTIMIZER_LABELS = {"adamw": "AdamW", "adamw_8bit": "8-bit AdamW", "paged_adamw": "paged AdamW", "sgd": "SGD (momentum)"}

# NF4: 4-bit codes (0.5 B/param) + one absmax per 64 weights. Double quantization stores those absmax values
# as 8-bit codes with one fp32 constant per 256 of them: 8/64 + 32/(64*256) = 0.127 bits per parameter
# (0.5 bits per parameter without double quantization).
NF4_BLOCK = 64
NF4_DQ_BLOCK = 256
NF4_CONSTANT_BITS_DOUBLE_QUANT = 8 / NF4_BLOCK + 32 / (NF4_BLOCK * NF4_DQ_BLOCK)
NF4_CONSTANT_BITS_SINGLE = 32 / NF4_BLOCK

# bitsandbytes 8-bit optimizers: 1 byte per state with one fp32 absmax per 256 values; tensors smaller than
# 4096 elements keep 32-bit states.
BNB_8BIT_BLOCK = 256
BNB_8BIT_MIN_SIZE = 4096

LOGIT_BYTES_PER_ELEMENT = 12  # fp32 log-probs saved by the loss + two fp32 gradient buffers in backward
CPU_RUNTIME_BYTES = 90_000_000  # autograd graph, oneDNN / OpenMP buffers: RSS above live tensors, measured 78-102 MB (bench)
CUDA_CONTEXT_BYTES = 750_000_000  # CUDA context + cuBLAS workspace (typically 0.4-0.9 GB with torch 2.x)
CUDA_ALLOCATOR_SLACK = 0.10  # caching-allocator fragmentation, as a share of activations + logits


# --------------------------------------------------------------------------- bytes per parameter


def weight_bytes_per_param(fmt: str, double_quant: bool = True) -> float:
    """Bytes per parameter of stored weights: fp32 4, fp16/bf16 2, int8 1, NF4 0.5 + quantization constants."""
    if fmt == "fp32":
        return 4.0
    if fmt in ("fp16", "bf16"):
        return 2.0
    if fmt == "int8":
        return 1.0
    if fmt == "nf4":
        return 0.5 + (NF4_CONSTANT_BITS_DOUBLE_QUANT if double_quant else NF4_CONSTANT_BITS_SINGLE) / 8
    raise ValueError(f"weight format must be one of {WEIGHT_FORMATS}, got {fmt!r}")


def weight_bytes(n_params: int | float, fmt: str, double_quant: bool = True) -> float:
    """70e9 params → 280 / 140 / 70 / ~36 GB in fp32 / fp16 / int8 / NF4 + double quant."""
    return n_params * weight_bytes_per_param(fmt, double_quant)


def lora_params(in_features: int, out_features: int, rank: int) -> int:
    """LoRA adds A (r × in) and B (out × r): a 4096 × 4096 matrix at rank 8 gets 65,536 against 16.8 M."""
    return rank * (in_features + out_features)


def model_state_bytes_per_param(precision: str, optimizer: str) -> dict[str, float]:
    """Bytes per *trainable* parameter of weights, gradients, fp32 master weights and optimizer states.

    mixed + AdamW = 2 + 2 + 4 + 8 = 16 B/param (7B → 14 + 14 + 28 + 56 = 112 GB); fp32 + AdamW = 4 + 4 + 0 + 8;
    pure bf16 + AdamW = 2 + 2 + 0 + 4 (the states take the parameters' dtype).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    working = 4.0 if precision in FP32_WEIGHT_PRECISIONS else 2.0
    state_dtype = 2.0 if precision == "bf16" else 4.0
    return {
        "weights": working,
        "gradients": working,
        "master_weights": 4.0 if precision == "mixed" else 0.0,
        "optimizer_states": optimizer_bytes_per_param(optimizer, state_dtype),
    }


def optimizer_bytes_per_param(optimizer: str, state_dtype_bytes: float = 4.0, tensor_numel: int | None = None) -> float:
    if optimizer in ("adamw", "paged_adamw"):
        return 2 * state_dtype_bytes
    if optimizer == "adamw_8bit":
        if tensor_numel is not None and tensor_numel < BNB_8BIT_MIN_SIZE:
            return 8.0
        return 2 * (1 + 4 / BNB_8BIT_BLOCK)
    if optimizer == "sgd":
        return state_dtype_bytes
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")


def model_state_bytes(n_params: int | float, precision: str = "mixed", optimizer: str = "adamw") -> dict[str, float]:
    """Model state of a fully trained model of n_params: the practitioners' worked example."""
    per = model_state_bytes_per_param(precision, optimizer)
    return {key: n_params * value for key, value in per.items()}


# --------------------------------------------------------------------------- the spec


@dataclass
class MemorySpec:
    model: ModelArch = field(metadata=meta("Architecture (from a config, a local folder, the Hub or a preset)."))
    method: str = field(default="lora", metadata=meta("full, lora, dora, qlora (NF4 base + double quantization), "
                                                       "or one of the PEFT family: "
                                                       "loha, lokr, ia3, prompt_tuning, prefix_tuning, bitfit, partial.", choices=METHODS))
    precision: str = field(default="mixed", metadata=meta("fp32, mixed (16-bit compute + fp32 master weights), bf16 (pure), "
                                                           "or autocast (bf16 compute over fp32 weights, "
                                                           "torch.autocast as the CPU trainer uses it).", choices=PRECISIONS))
    optimizer: str = field(default="adamw", metadata=meta("adamw, adamw_8bit, paged_adamw or sgd (with momentum).", choices=OPTIMIZERS))
    lora_r: int = field(default=16, metadata=meta("LoRA rank r.", min=1))
    lora_targets: str | tuple[str, ...] = field(default="all-linear",
                                                metadata=meta("'all-linear' or module names such as ('q_proj', 'v_proj')."))
    batch_size: int = field(default=1, metadata=meta("Sequences per micro-batch.", min=1))
    seq_len: int = field(default=512, metadata=meta("Tokens per sequence (padded length).", min=1))
    gradient_checkpointing: bool = field(default=False, metadata=meta("Recompute each layer in backward; keep only layer inputs."))
    attention: str = field(default="sdpa", metadata=meta("flash_attention_2, sdpa (padded batches repeat K/V for GQA) "
                                                          "or eager (T×T scores).", choices=ATTENTIONS))
    chunked_loss: bool = field(default=False, metadata=meta("Fused linear + cross-entropy in chunks (Liger / Unsloth): "
                                                             "full logits never exist."))
    grad_accumulation: int = field(default=1, metadata=meta("Micro-batches per optimizer step; >1 keeps gradients alive during forward.",
                                                             min=1))
    device: str = field(default="cuda", metadata=meta("cuda, cpu (fp32, no CUDA context) or mps.", choices=DEVICES))
    double_quant: bool = field(default=True, metadata=meta("QLoRA: quantize the NF4 block constants too "
                                                            "(0.127 instead of 0.5 bits/param)."))
    kbit_upcast: bool = field(default=True, metadata=meta("QLoRA: PEFT's prepare_model_for_kbit_training upcasts embeddings, "
                                                           "lm_head and norms to fp32 (Unsloth does not)."))
    lora_dropout: float = field(default=0.0, metadata=meta("LoRA / DoRA / QLoRA: dropout on each adapter's input; "
                                                            "above 0 every adapter keeps "
                                                           "its own dropped-out input and mask for backward.", min=0.0, max=1.0))
    num_virtual_tokens: int = field(default=20, metadata=meta("Prompt / prefix tuning: learned virtual tokens.", min=1))
    frozen_layers: int = field(default=0, metadata=meta("Partial fine-tuning: bottom decoder layers kept frozen (0 = the bottom half)."))
    objective: str = field(default="sft", metadata=meta("sft, or a preference objective: dpo / orpo / simpo "
                                                          "(chosen and rejected in one batch of "
                                                          "2 x batch_size rows), kto (one answer per row, plus a KL batch); "
                                                          "seq_len is then the "
                                                          "pair's length (prompt + the longer answer).", choices=OBJECTIVES))
    precompute_ref_log_probs: bool = field(default=False, metadata=meta("DPO / KTO: the reference's log-probs computed in one pass before "
                                                                         "training, so no reference forward runs during it."))
    completion_len: int = field(default=0, metadata=meta("GRPO: the longest sampled completion (max_completion_length); "
                                                          "seq_len is then the "
                                                          "prompt plus it. The loss's logits cover only the completion.", min=0))
    beta: float = field(default=0.0, metadata=meta("GRPO: the KL weight; above 0 a reference scores every sampled completion "
                                                    "(TRL's default "
                                                    "0 keeps none).", min=0.0))

    def __post_init__(self) -> None:
        for name in ("lora_r", "batch_size", "seq_len", "grad_accumulation", "num_virtual_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"memory spec: {name} must be a positive integer, got {value!r}")
        try:
            check_limits(self)
        except ValueError as exc:
            raise ValueError(f"memory spec: {exc}") from None
        if self.device == "cpu" and self.precision not in FP32_WEIGHT_PRECISIONS:
            raise ValueError("memory spec: CPU training keeps fp32 weights here; choose precision 'fp32' or 'autocast' for device 'cpu'")
        if isinstance(self.lora_targets, str) and "," in self.lora_targets:
            self.lora_targets = tuple(name.strip() for name in self.lora_targets.split(",") if name.strip())
        if isinstance(self.lora_targets, list):
            self.lora_targets = tuple(self.lora_targets)
        if self.method in TARGETED_METHODS:
            self.targeted_linears()  # validates the names
        if self.objective == "grpo" and not 0 < self.completion_len < self.seq_len:
            raise ValueError(f"memory spec: GRPO's completion_len must be between 1 and seq_len - 1 (seq_len is the prompt plus the "
                             f"completion), got {self.completion_len} with seq_len {self.seq_len}")
        if self.method == "partial" and not 0 <= self.frozen_layers < self.model.num_layers:
            raise ValueError(f"memory spec: frozen_layers must be between 0 and {self.model.num_layers - 1} for {self.model.name} "
                             f"({self.model.num_layers} layers), got {self.frozen_layers}")

    @property
    def is_lora(self) -> bool:
        return self.method in ("lora", "dora", "qlora")

    @property
    def compute_bytes(self) -> int:
        return 4 if self.precision == "fp32" else 2

    @property
    def sequences_per_row(self) -> int:
        """Sequences one row puts through the model with gradients: 2 for a pair (chosen + rejected), else 1."""
        return 2 if self.objective in PAIRED_OBJECTIVES else 1

    @property
    def effective_lora_dropout(self) -> float:
        """TRL's preference trainers turn every dropout off (DPO / KTO / ORPO / CPO configs: disable_dropout=True); GRPOConfig
        keeps it (disable_dropout=False)."""
        return self.lora_dropout if self.objective in ("sft", "grpo") else 0.0

    @property
    def uses_reference(self) -> bool:
        """A reference model scores the rows: DPO / KTO always, GRPO when beta > 0."""
        return self.objective in REFERENCE_OBJECTIVES or (self.objective == "grpo" and self.beta > 0)

    @property
    def runs_reference_forward(self) -> bool:
        return self.uses_reference and not self.precompute_ref_log_probs

    @property
    def generation_rows(self) -> int:
        """GRPO: completions sampled at once per device (TRL's generation batch: batch_size x steps_per_generation, which is
        gradient_accumulation by default), whole groups of num_generations."""
        return self.batch_size * self.grad_accumulation if self.objective == "grpo" else 0

    def targeted_linears(self) -> tuple[LinearShape, ...]:
        linears = self.model.layer_linears()
        if self.method not in TARGETED_METHODS or self.lora_targets in ("all-linear", ("all-linear",)):
            return linears
        wanted = (self.lora_targets,) if isinstance(self.lora_targets, str) else tuple(self.lora_targets)
        unknown = [name for name in wanted if name not in self.model.linear_names]
        if unknown or not wanted:
            raise ValueError(f"LoRA targets {unknown or wanted} are not linear layers of {self.model.name}; "
                             f"choose from {self.model.linear_names} or 'all-linear'")
        return tuple(linear for linear in linears if linear.name in wanted)

    def as_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["model"] = self.model.as_dict()
        data["lora_targets"] = self.lora_targets if isinstance(self.lora_targets, str) else list(self.lora_targets)
        return data


@dataclass
class MemoryEstimate:
    spec: MemorySpec
    breakdown: dict[str, int]  # bytes per component at the peak moment; sums to total_bytes
    total_bytes: int
    peak_phase: str
    phases: dict[str, dict[str, int]]  # component bytes at each of the two candidate peak moments
    total_params: int
    trainable_params: int
    runtime_bytes: int  # CUDA context + allocator slack inside "overhead": invisible to max_memory_allocated
    assumptions: list[str]
    objective_parts: dict[str, int] = field(default_factory=dict)  # what a preference objective adds, by name

    @property
    def tensor_bytes(self) -> int:
        """The peak of live tensors: comparable with torch.cuda.max_memory_allocated()."""
        return self.total_bytes - self.runtime_bytes

    @property
    def measurable_bytes(self) -> int:
        """What a run's memory probe sees: live tensors on CUDA (max_memory_allocated has no context), the
        whole process on CPU (RSS includes the runtime). Run cards record this as predicted_memory_bytes."""
        return self.tensor_bytes if self.spec.device == "cuda" else self.total_bytes

    @property
    def note(self) -> str:
        s = self.spec
        text = (f"{METHOD_LABELS[s.method]}, {PRECISION_LABELS[s.precision]}, {OPTIMIZER_LABELS[s.optimizer]}, "
                f"batch {s.batch_size} × {s.seq_len} tokens on {s.device}: {self.total_bytes / GB:.2f} GB peak ({self.peak_phase})")
        if s.objective == "sft":
            return text
        parts = ", ".join(f"{name} {value / GB:.2f} GB" for name, value in self.objective_parts.items())
        return f"{OBJECTIVE_LABELS[s.objective]} · {text}; {parts}"

    @property
    def total_gb(self) -> float:
        return self.total_bytes / GB

    def fits(self, capacity_bytes: float | None, headroom: float = 0.0) -> bool | None:
        if not capacity_bytes:
            return None
        return self.total_bytes <= capacity_bytes * (1 - headroom)

    def as_dict(self) -> dict:
        return {
            "spec": self.spec.as_dict(),
            "breakdown": dict(self.breakdown),
            "total_bytes": self.total_bytes,
            "peak_phase": self.peak_phase,
            "phases": {k: dict(v) for k, v in self.phases.items()},
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "tensor_bytes": self.tensor_bytes,
            "assumptions": list(self.assumptions),
            "objective_parts": dict(self.objective_parts),
        }


# --------------------------------------------------------------------------- the estimator


def trainable_params(spec: MemorySpec) -> int:
    """Full: every parameter. LoRA: r·(in+out) per targeted linear per layer; DoRA adds one magnitude per output."""
    if spec.method == "full":
        return spec.model.total_params
    if spec.method in PEFT_FAMILY_METHODS:
        return sum(peft_family_tensor_sizes(spec))
    per_layer = 0
    for linear in spec.targeted_linears():
        per_layer += lora_params(linear.in_features, linear.out_features, spec.lora_r)
        if spec.method == "dora":
            per_layer += linear.out_features
    return per_layer * spec.model.num_layers


def _frozen_weight_bytes(spec: MemorySpec) -> tuple[float, list[str]]:
    arch, notes = spec.model, []
    base_bytes = 4.0 if spec.precision in FP32_WEIGHT_PRECISIONS else 2.0
    counts = arch.param_counts()
    if spec.method != "qlora":
        return counts["total"] * base_bytes, notes  # (partial / BitFit train a part of these: see estimate())
    linear_params = sum(l.in_features * l.out_features for l in arch.layer_linears()) * arch.num_layers
    rest = counts["total"] - linear_params
    rest_bytes = 4.0 if spec.kbit_upcast else base_bytes
    how = "upcast to fp32 by prepare_model_for_kbit_training" if spec.kbit_upcast else f"kept {int(base_bytes)}-byte"
    notes.append(
        f"QLoRA: the decoder's linear weights ({linear_params / 1e9:.2f} B params) are NF4 at "
        f"{weight_bytes_per_param('nf4', spec.double_quant):.4f} B/param "
        f"(0.5 + {NF4_CONSTANT_BITS_DOUBLE_QUANT if spec.double_quant else NF4_CONSTANT_BITS_SINGLE:.3f} bits of constants); "
        f"embeddings, lm_head, norms and biases ({rest / 1e9:.2f} B params) are {how}."
    )
    return linear_params * weight_bytes_per_param("nf4", spec.double_quant) + rest * rest_bytes, notes


# --------------------------------------------------------------------------- PEFT family (issue 16)
# Trainable tensors of the chapter's other PEFT methods, element for element what PEFT (or, for BitFit and
# partial fine-tuning, requires_grad) trains: tests compare the sums with PeftModel.get_nb_trainable_parameters.

TARGETED_METHODS = (*LORA_METHODS, "loha", "lokr")  # methods whose `lora_targets` choose the layers
# PEFT's default (IA)³ targets per architecture (peft.utils.constants): scaled outputs, and the feed-forward
# layers whose *input* is scaled.
_IA3_OUTPUTS = {"llama": ("k_proj", "v_proj"), "mistral": ("k_proj", "v_proj")}
_IA3_OUTPUTS_DEFAULT = ("q_proj", "v_proj")  # qwen2/3, gemma 1-3
_IA3_FEEDFORWARD = ("down_proj",)


def ia3_targets(arch: ModelArch) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """((layers whose output (IA)³ scales), (feed-forward layers whose input it scales)) for this architecture."""
    if arch.fused_qkv:
        raise ValueError(f"{arch.name}: (IA)³ has no default targets for fused qkv_proj layers ({arch.model_type})")
    outputs = _IA3_OUTPUTS.get(arch.model_type, _IA3_OUTPUTS["llama"] if arch.model_type not in _KNOWN_TYPES else _IA3_OUTPUTS_DEFAULT)
    return outputs, _IA3_FEEDFORWARD


def frozen_layer_count(spec: MemorySpec) -> int:
    """Partial fine-tuning: how many bottom layers stay frozen (frozen_layers, or half the layers for 0)."""
    return spec.frozen_layers or spec.model.num_layers // 2


def bias_params(arch: ModelArch) -> int:
    """Every bias of the decoder's linear layers (BitFit's trainable set); 0 for Llama-style models."""
    return sum(l.out_features for l in arch.layer_linears() if l.bias) * arch.num_layers


def _lokr_factor(dimension: int) -> tuple[int, int]:
    """PEFT's LoKr `factorization(dimension, -1)`: the divisor pair closest to the square root, smaller first."""
    best = (1, dimension)
    for m in range(1, math.isqrt(dimension) + 1):
        if dimension % m == 0:
            best = (m, dimension // m)
    return best


def _lokr_tensor_sizes(linear: LinearShape, rank: int) -> list[int]:
    in_m, in_n = _lokr_factor(linear.in_features)
    out_l, out_k = _lokr_factor(linear.out_features)
    sizes = [out_l * in_m]  # w1, kept whole (decompose_both off)
    if rank < max(out_k, in_n) / 2:
        return sizes + [out_k * rank, rank * in_n]  # w2 as a rank-r product
    return sizes + [out_k * in_n]


def peft_family_tensor_sizes(spec: MemorySpec) -> list[int]:
    """Element count of every trainable tensor of a PEFT-family method."""
    arch, method = spec.model, spec.method
    layers = arch.num_layers
    if method == "loha":  # two Hadamard-multiplied rank-r products per layer
        return [n for l in spec.targeted_linears() for n in (l.out_features * spec.lora_r, spec.lora_r * l.in_features) * 2] * layers
    if method == "lokr":
        return [n for l in spec.targeted_linears() for n in _lokr_tensor_sizes(l, spec.lora_r)] * layers
    if method == "ia3":
        outputs, inputs = ia3_targets(arch)
        shapes = {l.name: l for l in arch.layer_linears()}
        return ([shapes[n].out_features for n in outputs] + [shapes[n].in_features for n in inputs]) * layers
    if method == "prompt_tuning":
        return [spec.num_virtual_tokens * arch.hidden_size]
    if method == "prefix_tuning":  # a key and a value per virtual token and layer (at the KV heads' width)
        return [spec.num_virtual_tokens * layers * 2 * arch.kv_dim]
    if method == "bitfit":
        return [l.out_features for l in arch.layer_linears() if l.bias] * layers
    if method == "partial":
        trained = arch.num_layers - frozen_layer_count(spec)
        per_layer = ([l.in_features * l.out_features for l in arch.layer_linears()]
                     + [l.out_features for l in arch.layer_linears() if l.bias])
        per_layer += [arch.hidden_size] * arch.norms_per_layer + ([arch.head_dim] * 2 if arch.qk_norm else [])
        head = [] if arch.tie_word_embeddings else [arch.vocab_size * arch.hidden_size]  # tied: the head is the frozen embedding
        return per_layer * trained + [arch.hidden_size] + head
    raise ValueError(f"not a PEFT-family method: {method!r}")


def trained_seq_len(spec: MemorySpec) -> int:
    """Positions the model computes per sequence: prompt tuning prepends its virtual tokens to the input."""
    return spec.seq_len + (spec.num_virtual_tokens if spec.method == "prompt_tuning" else 0)


def materialised_delta_bytes(spec: MemorySpec) -> float:
    """LoHa / LoKr build each targeted layer's whole weight update (out × in) in the forward pass and keep it for
    backward (F.linear saves it): a per-layer cost that does not depend on the batch."""
    if spec.method not in ("loha", "lokr"):
        return 0.0
    return spec.compute_bytes * sum(l.in_features * l.out_features for l in spec.targeted_linears()) * spec.model.num_layers


def peft_family_sentence(spec: MemorySpec) -> str:
    arch = spec.model
    if spec.method in ("loha", "lokr"):
        return (f"rank-{spec.lora_r} {'Hadamard' if spec.method == 'loha' else 'Kronecker'} factors per targeted layer; each layer's whole "
                f"update ΔW is built in the forward pass and kept for backward ({materialised_delta_bytes(spec) / GB:.3f} GB).")
    if spec.method == "ia3":
        outputs, inputs = ia3_targets(arch)
        return f"one learned scaling vector on the outputs of {', '.join(outputs)} and the input of {', '.join(inputs)} in every layer."
    if spec.method == "prompt_tuning":
        return (f"{spec.num_virtual_tokens} learned input embeddings prepended to every sequence "
                f"(activations for {trained_seq_len(spec)} positions).")
    if spec.method == "prefix_tuning":
        return f"{spec.num_virtual_tokens} learned key/value pairs per layer prepended to the attention of every sequence."
    if spec.method == "bitfit":
        return f"only the {bias_params(arch):,} bias terms train; gradients still flow through every layer."
    frozen = frozen_layer_count(spec)
    return (f"the bottom {frozen} of {arch.num_layers} layers and the embeddings stay frozen, "
            f"so autograd keeps nothing below layer {frozen}; "
            f"the top {arch.num_layers - frozen} layers and the final norm"
            f"{'' if arch.tie_word_embeddings else ' and the lm_head'} train in full.")


def _trainable_tensor_sizes(spec: MemorySpec) -> list[int]:
    """Element count of every trainable tensor (what per-tensor optimizer rules and temporaries depend on)."""
    arch = spec.model
    if spec.method == "full":
        per_layer = [l.in_features * l.out_features for l in arch.layer_linears()]
        per_layer += [l.out_features for l in arch.layer_linears() if l.bias]
        per_layer += [arch.hidden_size] * arch.norms_per_layer + ([arch.head_dim] * 2 if arch.qk_norm else [])
        heads = [arch.vocab_size * arch.hidden_size] * (1 if arch.tie_word_embeddings else 2)
        return per_layer * arch.num_layers + heads + [arch.hidden_size]
    if spec.method in PEFT_FAMILY_METHODS:
        return peft_family_tensor_sizes(spec)
    per_layer = []
    for linear in spec.targeted_linears():
        per_layer += [spec.lora_r * linear.in_features, spec.lora_r * linear.out_features]
        per_layer += [linear.out_features] if spec.method == "dora" else []
    return per_layer * arch.num_layers


def _optimizer_bytes(spec: MemorySpec, trainable: int) -> float:
    state_dtype = 2.0 if spec.precision == "bf16" else 4.0
    if spec.optimizer != "adamw_8bit":
        return trainable * optimizer_bytes_per_param(spec.optimizer, state_dtype)
    return sum(n * optimizer_bytes_per_param("adamw_8bit", state_dtype, n) for n in _trainable_tensor_sizes(spec))


def _consumed(names: Iterable[str], targeted: set[str], full: bool) -> bool:
    return full or any(name in targeted for name in names)


def layer_activation_bytes_per_token(spec: MemorySpec) -> float:
    """Bytes autograd keeps per token for one decoder layer (no checkpointing).

    Measured exactly on CPU fp32 with saved-tensor hooks (Llama layer, full and LoRA, any targets); 16-bit
    numbers scale the same tensors by 2 bytes, with RMSNorm's fp32 upcast kept at 4.
    """
    arch, b, f = spec.model, spec.compute_bytes, 4
    h, i, q, kv, T = arch.hidden_size, arch.intermediate_size, arch.q_dim, arch.kv_dim, spec.seq_len
    full = spec.method in ("full", "partial")  # partial: called for its trained (top) layers only
    targeted = {l.name for l in spec.targeted_linears()} if full or spec.method in TARGETED_METHODS else set()
    total = 0.0
    # The two pre-norms feed linear layers; Gemma's post-norms feed the residual stream only.
    consumers = [("q_proj", "k_proj", "v_proj", "qkv_proj"), ("gate_proj", "up_proj", "gate_up_proj")] + [()] * (arch.norms_per_layer - 2)
    for names in consumers:
        total += f * h  # the fp32 input kept by pow / mul
        if full:
            total += b * h  # normalised input kept by the trainable weight's multiply
        if names and _consumed(names, targeted, full):
            total += b * h  # the norm's output, kept by the linear layers that read it
    T = T + (spec.num_virtual_tokens if spec.method in ("prompt_tuning", "prefix_tuning") else 0)  # keys include the virtual tokens
    repeated_kv = spec.attention in ("sdpa", "eager")  # K/V expanded to every query head (padded batches)
    total += b * (2 * q + 2 * (q if repeated_kv else kv))  # rotated q, k, v and the attention output
    total += 4 * arch.num_heads  # log-sum-exp per head (flash / SDPA kernels)
    if spec.attention == "sdpa":
        total += 4 * T  # the padding mask row SDPA keeps per query
    if spec.attention == "eager":
        total += arch.num_heads * T * (4 + (b if b != 4 else 0))  # fp32 softmax (+ its 16-bit cast)
        if _consumed(("o_proj",), targeted, full):
            total += b * q  # the contiguous copy o_proj keeps
    if arch.qk_norm:
        total += (f + b) * (q + kv)
    total += 3 * b * i  # gate, up, act(gate)
    if _consumed(("down_proj",), targeted, full):
        total += b * i  # act(gate) * up, kept by down_proj
    if spec.is_lora:
        # PEFT keeps adapters in fp32: pure-bf16 inputs are cast to fp32 for them, autocast casts them back to
        # 16-bit; each cast copy of a distinct input is kept for the adapter's gradient.
        lora_out_bytes = {"fp32": 4, "mixed": 2, "bf16": 4, "autocast": 2}[spec.precision]
        cast_bytes = {"fp32": 0, "mixed": 2, "bf16": 4, "autocast": 2}[spec.precision]
        total += len(targeted) * spec.lora_r * lora_out_bytes  # lora_A outputs
        if spec.effective_lora_dropout > 0:
            # Each adapter drops out its own copy of the input: lora_A keeps that copy (16-bit under autocast / mixed,
            # fp32 otherwise) and dropout keeps its mask: an fp32 noise tensor on CPU, a bool mask in the fused GPU kernel.
            kept_input = {"fp32": 4, "mixed": 2, "bf16": 4, "autocast": 2}[spec.precision]
            mask = 4 if spec.device == "cpu" else 1
            total += (kept_input + mask) * sum(l.in_features for l in spec.targeted_linears())
        else:
            distinct_inputs = (h if targeted & {"q_proj", "k_proj", "v_proj", "qkv_proj"} else 0) + (q if "o_proj" in targeted else 0)
            distinct_inputs += (h if targeted & {"gate_proj", "up_proj", "gate_up_proj"} else 0) + (i if "down_proj" in targeted else 0)
            total += cast_bytes * distinct_inputs
        if spec.method == "dora":
            total += sum(2 * b * l.out_features for l in spec.targeted_linears())  # base and LoRA results kept for the magnitude scaling
    if spec.method in ("loha", "lokr") and spec.precision in ("mixed", "autocast"):
        # The update runs as F.linear(x, ΔW) per targeted layer: each casts its own 16-bit copy of the input and keeps
        # it for ΔW's gradient (measured on the CPU job: -12 % without this).
        total += 2 * sum(l.in_features for l in spec.targeted_linears())
    if spec.method == "ia3":
        outputs, inputs = ia3_targets(arch)
        shapes = {l.name: l for l in arch.layer_linears()}
        total += b * sum(shapes[n].out_features for n in outputs) + b * sum(shapes[n].in_features for n in inputs)  # kept for l's gradient
    return total


def _head_activation_bytes_per_token(spec: MemorySpec) -> float:
    arch, b = spec.model, spec.compute_bytes
    total = 4 * arch.hidden_size  # final norm input
    if spec.method in ("full", "partial"):
        total += 2 * b * arch.hidden_size  # normalised input and output kept for the trainable norm and lm_head
    if spec.objective in FUSED_HEAD_OBJECTIVES:
        total += b * arch.hidden_size  # the flattened copy of the last hidden states TRL's chunked head keeps for backward
    return total


def activation_bytes(spec: MemorySpec, sequences_per_row: int | None = None) -> float:
    """Bytes autograd keeps through backward: batch_size x sequences_per_row sequences (2 for a pair) of trained_seq_len."""
    rows = spec.batch_size * (spec.sequences_per_row if sequences_per_row is None else sequences_per_row)
    tokens = rows * trained_seq_len(spec)
    per_layer = layer_activation_bytes_per_token(spec)
    head = _head_activation_bytes_per_token(spec)
    # Partial fine-tuning: nothing below the lowest trained layer needs a gradient, so autograd keeps nothing there.
    layers = spec.model.num_layers - (frozen_layer_count(spec) if spec.method == "partial" else 0)
    deltas = materialised_delta_bytes(spec)
    casts = autocast_weight_copies(spec)
    if spec.gradient_checkpointing:
        checkpoints = layers * spec.model.hidden_size * spec.compute_bytes
        return tokens * (checkpoints + per_layer + head) + (deltas + casts) / spec.model.num_layers  # layer inputs + one layer recomputed
    return tokens * (layers * per_layer + head) + deltas + casts


def autocast_weight_copies(spec: MemorySpec) -> float:
    """Autocast over fp32 weights casts each linear weight to bf16 in the forward pass, and autograd keeps that
    copy until backward has passed the layer (it computes the input's gradient): 2 bytes per linear weight of
    every layer the gradient flows through. Independent of the batch."""
    if spec.precision != "autocast":
        return 0.0
    layers = spec.model.num_layers - (frozen_layer_count(spec) if spec.method == "partial" else 0)
    return 2.0 * sum(l.in_features * l.out_features for l in spec.model.layer_linears()) * layers


def logits_bytes(spec: MemorySpec) -> float:
    """The loss head's memory at the start of backward: full logits (12 bytes per token and vocabulary entry) for SFT /
    ORPO / SimPO; for DPO / KTO, the backward of TRL's chunked log-prob head (`fused_head_bytes`)."""
    if spec.objective in FUSED_HEAD_OBJECTIVES:
        return fused_head_bytes(spec, backward=True)
    arch = spec.model
    tokens = spec.batch_size * spec.sequences_per_row * trained_seq_len(spec)
    per_element = LOGIT_BYTES_PER_ELEMENT + (8 if arch.final_logit_softcapping else 0)
    if spec.objective == "orpo":  # the chosen half's NLL term keeps its own fp32 log-softmax: 4 bytes on half the rows
        per_element += ORPO_NLL_BYTES_PER_ELEMENT
    if spec.chunked_loss:
        chunks = max(1, math.ceil(arch.vocab_size / arch.hidden_size))
        tokens = math.ceil(tokens / chunks)
    return tokens * arch.vocab_size * per_element


def fused_head_bytes(spec: MemorySpec, backward: bool = True, rows: int | None = None) -> float:
    """TRL 1.16's chunked log-prob head (`add_fused_lm_head`, `trl.kernels.chunked_logprob`) over `rows` sequences
    (default: the batch, x2 for pairs): the (tokens x vocabulary) logits never exist; one projection tile of at most
    4096 positions x 32768 vocabulary entries (compute dtype) is reused, and on a CPU (no Triton) the torch fold keeps
    fp32 temporaries of the tile's size. Backward adds the fp32 gradient of the hidden states (and of the head's weight
    when it trains); forward keeps a flattened copy of the hidden states. Every position is counted: on CUDA TRL scores
    only the positions with a label (the answer), so there this is an upper bound."""
    arch = spec.model
    rows = spec.batch_size * spec.sequences_per_row if rows is None else rows
    positions = rows * max(1, trained_seq_len(spec) - 1)  # every position but the last has a next-token label
    if spec.objective == "grpo" and spec.device == "cuda":  # Triton scores only the labelled (completion) positions
        positions = rows * spec.completion_len
    tile = min(positions, FUSED_HEAD_TOKENS) * min(arch.vocab_size, FUSED_HEAD_VOCAB)
    b = spec.compute_bytes
    total = tile * b
    if spec.device != "cuda":
        total += 4 * tile * (FUSED_HEAD_BACKWARD_TILES if backward else FUSED_HEAD_FORWARD_TILES) + (4 * tile if b != 4 else 0)
        total += tile if backward else 0  # the bool target mask
    if not backward:
        return total + positions * arch.hidden_size * b
    total += positions * arch.hidden_size * 4
    if spec.method == "full" or (spec.method == "partial" and not arch.tie_word_embeddings):
        total += arch.vocab_size * arch.hidden_size * 4  # fp32 accumulator of the head's weight gradient
    return total


def reference_forward_bytes(spec: MemorySpec) -> float:
    """The no-grad reference forward (DPO / KTO, when not precomputed): it runs after the policy's forward, so its
    working set sits on top of the policy's activations. Nothing is kept: the larger of one layer's tensors and the
    chunked head's forward over the reference batch (the pair's 2 x batch_size rows; KTO scores its rows and the KL
    rows one after the other)."""
    if not spec.runs_reference_forward:
        return 0.0
    arch, b = spec.model, spec.compute_bytes
    rows = spec.batch_size * spec.sequences_per_row
    tokens = rows * trained_seq_len(spec)
    layer = tokens * (3 * arch.intermediate_size + 3 * arch.hidden_size) * b  # MLP and residual tensors of one layer
    return max(layer, fused_head_bytes(spec, backward=False, rows=rows) + tokens * arch.hidden_size * b)


def reference_weight_bytes(spec: MemorySpec) -> float:
    """What the reference holds for the whole run. PEFT: TRL 1.16 adds a frozen "ref" adapter, a copy of the adapter as
    it starts (the reference forward runs with it). Full / partial / BitFit (no adapter): TRL loads a second copy of
    the model from its folder (create_model_from_path, in the model's dtype), unless the log-probs are precomputed."""
    if not spec.uses_reference:
        return 0.0
    if spec.method in ("full", "partial", "bitfit"):
        if spec.precompute_ref_log_probs:
            return 0.0
        return spec.model.total_params * (4.0 if spec.precision in FP32_WEIGHT_PRECISIONS else 2.0)
    return trainable_params(spec) * model_state_bytes_per_param(spec.precision, spec.optimizer)["weights"]


def generation_kv_bytes(spec: MemorySpec) -> float:
    """GRPO's sampling: the KV cache of every completion sampled at once (generation_rows sequences of prompt + completion,
    seq_len): 2 (K, V) x layers x kv heads x head dim per token, in the weights' dtype (generation runs outside autocast)."""
    if spec.objective != "grpo":
        return 0.0
    arch = spec.model
    b = 4 if spec.precision in FP32_WEIGHT_PRECISIONS else 2
    return 2.0 * arch.num_layers * arch.num_kv_heads * arch.head_dim * b * spec.generation_rows * spec.seq_len


def generation_working_bytes(spec: MemorySpec) -> float:
    """Beside the KV cache while sampling: the prefill's largest layer tensors over every prompt, or one decoding step's
    last-position logits and their sampling probabilities (fp32), whichever is larger."""
    if spec.objective != "grpo":
        return 0.0
    arch = spec.model
    b = 4 if spec.precision in FP32_WEIGHT_PRECISIONS else 2
    prompt = spec.seq_len - spec.completion_len
    prefill = spec.generation_rows * prompt * (3 * arch.intermediate_size + 3 * arch.hidden_size) * b
    return max(prefill, 2 * 4 * spec.generation_rows * arch.vocab_size)


def _largest_trainable_tensor(spec: MemorySpec) -> int:
    sizes = _trainable_tensor_sizes(spec)
    return max(sizes) if sizes else 0


def estimate(spec: MemorySpec) -> MemoryEstimate:
    """Peak training memory for `spec`, split into components, with the sentences that explain it."""
    arch = spec.model
    total_params = arch.total_params
    trainable = trainable_params(spec)
    per = model_state_bytes_per_param(spec.precision, spec.optimizer)
    notes: list[str] = [f"GB = 1e9 bytes. {arch.name}: {total_params / 1e9:.3f} B parameters, "
                        f"{trainable:,} trainable ({100 * trainable / total_params:.3f}%)."]
    notes += list(arch.notes)

    if spec.method == "full":
        weights = trainable * per["weights"]
    elif spec.method in ("partial", "bitfit"):  # the trained parameters are part of the model, not added to it
        weights, _ = _frozen_weight_bytes(spec)
    else:
        frozen, qnotes = _frozen_weight_bytes(spec)
        weights = frozen + trainable * per["weights"]
        notes += qnotes
    gradients = trainable * per["gradients"]
    master = trainable * per["master_weights"]
    optimizer = _optimizer_bytes(spec, trainable)
    activations = activation_bytes(spec)
    logits = logits_bytes(spec)

    if spec.device == "cuda":
        runtime = CUDA_CONTEXT_BYTES + CUDA_ALLOCATOR_SLACK * (activations + logits)
        optimizer_temp = 0.0  # fused AdamW (the transformers default) updates in place
        notes.append(f"Overhead on CUDA: {CUDA_CONTEXT_BYTES / GB:.2f} GB for the CUDA context and cuBLAS workspace plus "
                     f"{CUDA_ALLOCATOR_SLACK:.0%} of activations for caching-allocator fragmentation.")
    elif spec.device == "mps":
        runtime = CUDA_ALLOCATOR_SLACK * (activations + logits)
        optimizer_temp = 2 * 4 * _largest_trainable_tensor(spec)
        notes.append("MPS shares the Mac's unified memory with the system: macOS lets the GPU use roughly 65-75% of it.")
    else:
        runtime = CPU_RUNTIME_BYTES
        optimizer_temp = 2 * 4 * _largest_trainable_tensor(spec)  # single-tensor AdamW: sqrt and divide temporaries
        notes.append(
            "CPU mode: everything in fp32, no CUDA context; overhead = the autograd graph and runtime buffers "
            f"(~{CPU_RUNTIME_BYTES / 1e6:.0f} MB) or AdamW's temporaries for the largest tensor. "
            "The C allocator's default settings can add 35-100% of the activation bytes to the process RSS; "
            f"the train job avoids that with core.runs.allocator.tune_cpu_allocator() ({_ALLOCATOR_SETTING})."
        )
    transient = 0.0
    if spec.method == "qlora":
        largest = max(l.in_features * l.out_features for l in arch.layer_linears())
        transient = largest * spec.compute_bytes  # one linear weight dequantized at a time
    if spec.method == "dora":
        largest = max(l.in_features * l.out_features for l in spec.targeted_linears())
        transient += 2 * largest * spec.compute_bytes  # W + BA materialised for the weight norm
        notes.append("DoRA materialises W + BA of one layer at a time to take its column norms.")

    grads_in_forward = gradients if spec.grad_accumulation > 1 else 0.0
    reference_weights = reference_weight_bytes(spec)
    fwd = {"weights": weights, "gradients": grads_in_forward, "master_weights": master, "optimizer_states": optimizer,
           "activations": activations, "logits": logits, "overhead": runtime + transient, "reference": reference_weights}
    step = {"weights": weights, "gradients": gradients, "master_weights": master, "optimizer_states": optimizer,
            "activations": 0.0, "logits": 0.0, "overhead": runtime + optimizer_temp, "reference": reference_weights}
    candidates = {PHASES[0]: fwd, PHASES[1]: step}
    reference_forward = reference_forward_bytes(spec)
    if spec.objective == "grpo":  # sampling (and the reference's pass) before the step's forward: no activations, no gradients
        sampling = generation_kv_bytes(spec) + generation_working_bytes(spec)
        candidates[GENERATION_PHASE] = dict(step, gradients=0.0, overhead=runtime + transient,
                                            activations=max(sampling, reference_forward))
    elif spec.runs_reference_forward:  # after the policy's forward, before its backward: no head gradient yet
        candidates[REFERENCE_PHASE] = dict(fwd, logits=0.0, reference=reference_weights + reference_forward)
    phases = {name: {k: int(round(v)) for k, v in parts.items()} for name, parts in candidates.items()}
    peak_phase = max(phases, key=lambda p: sum(phases[p].values()))
    breakdown = phases[peak_phase]
    total = sum(breakdown.values())

    notes.append(_state_sentence(spec, per))
    notes.append(
        "Gradients are freed after every optimizer step, so activations and all gradients are never alive together; "
        f"the peak is the larger of the forward/backward moment ({sum(phases[PHASES[0]].values()) / GB:.2f} GB) "
        f"and the optimizer step ({sum(phases[PHASES[1]].values()) / GB:.2f} GB)."
        if spec.grad_accumulation == 1 else
        f"Gradient accumulation ({spec.grad_accumulation} micro-batches) keeps all gradients alive while activations build up."
    )
    notes.append(_activation_sentence(spec, activations, logits))
    parts: dict[str, int] = {}
    if spec.objective != "sft":
        parts = objective_parts(spec, activations, logits, reference_weights, reference_forward, weights)
        notes.append(_objective_sentence(spec, parts))
    if spec.optimizer == "paged_adamw":
        notes.append("Paged AdamW keeps the same 32-bit states but lets them page out to CPU memory under pressure, "
                     "so spikes do not crash; counted here as resident.")
    if spec.optimizer == "adamw_8bit":
        notes.append(f"8-bit AdamW: 1 byte per state with one fp32 scale per {BNB_8BIT_BLOCK} values; "
                     f"tensors under {BNB_8BIT_MIN_SIZE} elements keep 32-bit states.")
    if spec.precision == "mixed":
        notes.append("Mixed precision is counted as 16-bit working weights and gradients plus an fp32 master copy (DeepSpeed style); "
                     "torch autocast over fp32 weights keeps fp32 gradients instead (+2 B per trainable parameter).")
    return MemoryEstimate(
        spec=spec, breakdown=breakdown, total_bytes=total, peak_phase=peak_phase, phases=phases,
        total_params=total_params, trainable_params=trainable, runtime_bytes=int(round(runtime)), assumptions=notes,
        objective_parts=parts,
    )


def objective_parts(spec: MemorySpec, activations: float, logits: float, reference_weights: float, reference_forward: float,
                    weights: float) -> dict[str, int]:
    """What a preference objective adds, by the names the Budget page and the pre-flight show."""
    parts: dict[str, float] = {}
    if spec.objective == "grpo":
        parts["generation KV cache"] = generation_kv_bytes(spec)
        parts["generation working set"] = generation_working_bytes(spec)
        parts["chunked log-prob head"] = logits
        if spec.uses_reference:
            parts["reference forward"] = reference_forward
            parts["reference weights" if spec.method in ("full", "partial", "bitfit") else "reference adapter copy"] = reference_weights
        return {name: int(round(value)) for name, value in parts.items()}
    if spec.sequences_per_row == 2:
        parts["pairs: x2 activations"] = activations - activation_bytes(spec, sequences_per_row=1)
    if spec.objective in FUSED_HEAD_OBJECTIVES:
        parts["chunked log-prob head"] = logits
    else:
        parts["logits of both answers" if spec.sequences_per_row == 2 else "logits"] = logits
    if spec.objective in REFERENCE_OBJECTIVES:
        parts["reference forward"] = reference_forward
        parts["reference weights" if spec.method in ("full", "partial", "bitfit") else "reference adapter copy"] = reference_weights
        if spec.precompute_ref_log_probs:  # one no-grad pass before the first step: no optimizer states, no activations yet
            saved = replace(spec, precompute_ref_log_probs=False)
            parts["precompute pass (before training)"] = weights + reference_forward_bytes(saved)
    return {name: int(round(value)) for name, value in parts.items()}


def _objective_sentence(spec: MemorySpec, parts: Mapping[str, int]) -> str:
    label = OBJECTIVE_LABELS[spec.objective]
    listed = "; ".join(f"{name}: {value / GB:.3f} GB" for name, value in parts.items())
    if spec.objective == "grpo":
        how = (f"GRPO first samples {spec.generation_rows} completions at once (whole groups; batch_size x gradient_accumulation) of up "
               f"to {spec.completion_len} tokens after the prompt: their KV cache of {spec.seq_len} tokens each is the "
               f"'{GENERATION_PHASE}' candidate peak, before the step's forward. It then trains on {spec.batch_size} completions per "
               f"micro-batch through TRL's chunked log-prob head (the full logits never exist; one tile of at most {FUSED_HEAD_TOKENS} "
               f"positions x {FUSED_HEAD_VOCAB} vocabulary entries at a time, the completion positions only on CUDA)")
        how += (f"; with beta {spec.beta:g} a reference scores them without gradients after sampling" if spec.uses_reference
                else "; beta 0: no reference model")
        return f"{how}. {listed}."
    if spec.objective in PAIRED_OBJECTIVES:
        how = f"{label} puts chosen and rejected through the model as one batch of {2 * spec.batch_size} rows (TRL concatenates them)"
    else:
        how = f"{label} trains one answer per row and first scores a KL batch of mismatched answers without gradients (below the peak)"
    if spec.lora_dropout > 0 and spec.is_lora:
        how += " (TRL turns dropout off for preference training, so lora_dropout keeps no masks)"
    if spec.objective in FUSED_HEAD_OBJECTIVES:
        how += ("; TRL's chunked log-prob head never builds the full logits (one tile of at most "
                f"{FUSED_HEAD_TOKENS} positions x {FUSED_HEAD_VOCAB} vocabulary entries at a time)")
    else:
        how += "; TRL's experimental ORPO / CPO trainers build the full logits of both answers"
    if spec.objective in REFERENCE_OBJECTIVES:
        if spec.precompute_ref_log_probs:
            how += "; the reference log-probs are precomputed in one pass before training, so no reference forward runs during it"
        else:
            how += (f"; the reference forward runs without gradients while the policy's activations are alive (the '{REFERENCE_PHASE}' "
                    "candidate peak)")
        how += (". The reference is a second copy of the model's weights" if spec.method in ("full", "partial", "bitfit")
                and not spec.precompute_ref_log_probs else ". With an adapter the reference is the model with a frozen 'ref' copy of it"
                if spec.method not in ("full", "partial", "bitfit") else ". The reference needs no weights of its own")
    else:
        how += f". {label} has no reference model"
    return f"{how}. {listed}."


def _state_sentence(spec: MemorySpec, per: dict[str, float]) -> str:
    parts = (f"weights {per['weights']:g} + gradients {per['gradients']:g} + master {per['master_weights']:g} "
             f"+ optimizer {per['optimizer_states']:g}")
    if spec.method == "full":
        return (f"Every parameter is trained: {parts} = {sum(per.values()):g} bytes per parameter "
                f"({PRECISION_LABELS[spec.precision]}, {OPTIMIZER_LABELS[spec.optimizer]}).")
    base = "NF4" if spec.method == "qlora" else ("fp32" if spec.precision in FP32_WEIGHT_PRECISIONS else "16-bit")
    if spec.method in PEFT_FAMILY_METHODS:
        return (f"{METHOD_LABELS[spec.method]}: {peft_family_sentence(spec)} The rest is frozen ({base} weights only); "
                f"each trained parameter costs {parts} bytes.")
    return (f"The base model is frozen ({base} weights only, no gradients or optimizer states); "
            f"the adapter parameters cost {parts} bytes each.")


def _activation_sentence(spec: MemorySpec, activations: float, logits: float) -> str:
    rows = spec.batch_size * spec.sequences_per_row
    tokens = rows * spec.seq_len
    how = ("gradient checkpointing keeps each layer's input and recomputes one layer at a time" if spec.gradient_checkpointing
           else "every layer's saved tensors stay until backward reaches it")
    loss = ("chunked loss computes the logits a slice of tokens at a time" if spec.chunked_loss
            else f"{LOGIT_BYTES_PER_ELEMENT} bytes per token per vocabulary entry")
    if spec.objective in FUSED_HEAD_OBJECTIVES:
        loss = "TRL's chunked log-prob head, one tile at a time"
    return (f"Activations for {tokens:,} tokens ({rows} × {spec.seq_len}): {activations / GB:.2f} GB "
            f"({how}; attention: {spec.attention}). "
            f"Logits: {logits / GB:.2f} GB ({loss}).")


def estimate_for_model(config_or_preset: Any, method: str = "lora", **options: Any) -> MemoryEstimate:
    """The estimator from anything that names a model, for the Train page's pre-flight check.

    `config_or_preset`: a transformers config, a config.json dict, a preset id / name ("Llama-3.1 8B"), a
    local folder or Hub id string, a `core.models.ModelSource` or a `ModelArch`. `options` are `MemorySpec`
    fields (precision, optimizer, lora_r, lora_targets, batch_size, seq_len, gradient_checkpointing,
    attention, chunked_loss, grad_accumulation, device, double_quant) plus two shortcuts:
    `flash_attention=True` (→ attention="flash_attention_2") and `target_modules` (→ lora_targets).
    The device defaults to the detected one (`core.hardware.detect()`), with fp32 on CPU.

        est = estimate_for_model("Qwen2.5 7B", method="qlora", lora_r=16, batch_size=2, seq_len=2048)
        est.total_bytes, est.breakdown, est.fits(24e9)
    """
    arch = resolve_arch(config_or_preset)
    options = dict(options)
    if "flash_attention" in options:
        flash = options.pop("flash_attention")
        options.setdefault("attention", "flash_attention_2" if flash else "sdpa")
    if "target_modules" in options:
        options["lora_targets"] = options.pop("target_modules")
    if "device" not in options:
        options["device"] = detected_device()
    if options["device"] == "cpu":
        options.setdefault("precision", "fp32")
    unknown = set(options) - {f.name for f in fields(MemorySpec)}
    if unknown:
        raise TypeError(f"estimate_for_model got unknown options {sorted(unknown)}")
    return estimate(MemorySpec(model=arch, method=method, **options))



def detected_device() -> str:
    return hardware.detect().device


def breakdown_rows(estimates: Mapping[str, MemoryEstimate], phases: bool = False) -> list[dict]:
    """Long-form rows {label, component, gb} for a stacked bar chart: one bar per estimate (its peak), or one
    bar per phase of each estimate when `phases` is true (DPO / KTO have a third: the reference forward)."""
    rows = []
    for label, est in estimates.items():
        bars = {f"{label} · {phase}": parts for phase, parts in est.phases.items()} if phases else {label: est.breakdown}
        for bar, parts in bars.items():
            rows += [{"label": bar, "component": name.replace("_", " "), "gb": parts[name] / GB} for name in COMPONENTS]
    return rows


def compare_methods(spec: MemorySpec, methods: Iterable[str] = ("full", "lora", "qlora")) -> dict[str, MemoryEstimate]:
    return {m: estimate(replace(spec, method=m)) for m in methods}


# --------------------------------------------------------------------------- inference


def kv_cache_bytes(arch: ModelArch, batch_size: int, context_len: int, kv_bytes: float = 2.0) -> float:
    """K and V for every layer: 2 · layers · kv_heads · head_dim · tokens · bytes."""
    return 2 * arch.num_layers * arch.kv_dim * batch_size * context_len * kv_bytes


def inference_estimate(model: Any, weight_format: str = "bf16", batch_size: int = 1, context_len: int = 4096,
                       kv_bytes: float = 2.0, device: str = "cuda") -> dict[str, float]:
    """Generation memory: weights + KV cache + the prefill's largest intermediate + runtime."""
    arch = resolve_arch(model)
    weights = weight_bytes(arch.total_params, weight_format)
    if weight_format == "nf4":  # embeddings and lm_head stay 16-bit
        head = arch.param_counts()["embedding"] + arch.param_counts()["lm_head"]
        weights += head * (2.0 - weight_bytes_per_param("nf4"))
    kv = kv_cache_bytes(arch, batch_size, context_len, kv_bytes)
    act_bytes = 4 if weight_format == "fp32" else 2
    activations = (batch_size * context_len * (2 * arch.intermediate_size + 2 * arch.hidden_size) * act_bytes
                   + batch_size * arch.vocab_size * 4)
    runtime = CUDA_CONTEXT_BYTES if device == "cuda" else CPU_RUNTIME_BYTES
    parts = {"weights": weights, "kv_cache": kv, "activations": activations, "overhead": runtime}
    parts["total"] = sum(parts.values())
    return parts
