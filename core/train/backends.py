"""Training backends, in order: Unsloth kernels when usable, else transformers + PEFT + TRL (always there).

Ordered dispatch, first available wins, the plain one last. A backend that cannot run says why in one
sentence, which the job logs and the Train page shows as a note — a missing accelerator is never a crash.

Unsloth is only ever imported inside the training worker, first, before transformers / TRL (its import
patches them). Nothing here imports it at module import. When Unsloth fails to import or to load the model, the
run goes on with the next backend in a fresh process (FallBack; core.train.supervisor.relaunch_with_fallback),
never in the process Unsloth has already patched.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from core.models import load_model, resolve_model_path
from core.runs.errors import is_out_of_memory
from core.train.distributed import in_launched_process, needs_quant_storage
from core.train.methods import attach_method, peft_config
from core.train.spec import TrainSpec

NF4_KWARGS = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}


@dataclass
class Precision:
    load_dtype: str  # dtype of the base weights
    bf16: bool  # Trainer mixed precision flags
    fp16: bool
    compute_dtype: str  # QLoRA compute dtype


def cpu_bf16_autocast(wanted: str, bf16_supported: bool) -> bool:
    """On a CPU: fp32 weights, and the step under bf16 autocast where the CPU computes bf16 natively (about 1.4x
    faster). The Train job's rule, which the distill job shares so that every student gets the same compute."""
    return wanted in ("auto", "bf16") and bf16_supported


def choose_precision(spec: TrainSpec, device: str, bf16_supported: bool) -> Precision:
    wanted = spec.precision
    if device == "cpu":
        # the Trainer's bf16 flag with use_cpu; QLoRA's 4-bit CPU kernels stay in fp32.
        autocast = cpu_bf16_autocast(wanted, bf16_supported) and spec.method != "qlora"
        return Precision("float32", autocast, False, "float32")
    if wanted == "fp32" or (wanted == "auto" and device not in ("cuda",)):
        return Precision("float32", False, False, "float32")
    if wanted == "fp16" or (wanted == "auto" and not bf16_supported):
        # fp16 AMP needs fp32 master weights for anything trained in full; adapters are upcast by PEFT anyway.
        trains_base_weights = spec.method in ("full", "partial", "bitfit")
        return Precision("float32" if trains_base_weights else "float16", False, True, "float16")
    return Precision("bfloat16", True, False, "bfloat16")


class Backend:
    name = "base"

    def unavailable_reason(self, spec: TrainSpec, hardware: Any) -> str | None:
        """None when this backend can run the spec here; else one sentence why not."""
        raise NotImplementedError

    def load(self, spec: TrainSpec, hardware: Any) -> tuple[Any, Any]:
        """(model ready for training — adapters attached unless full fine-tuning —, tokenizer)."""
        raise NotImplementedError


class UnslothBackend(Backend):
    name = "unsloth"

    def unavailable_reason(self, spec: TrainSpec, hardware: Any) -> str | None:
        if spec.backend == "hf":
            return "the spec asks for the hf backend"
        if hardware.device != "cuda":
            return "Unsloth needs a CUDA GPU"
        if not hardware.unsloth:
            return "Unsloth is not installed (pip install -r requirements-gpu.txt in a separate GPU venv)"
        if spec.method == "dora":
            return "Unsloth does not train DoRA adapters"
        if spec.method not in ("lora", "rslora", "qlora", "full"):
            return f"Unsloth trains LoRA / QLoRA / full fine-tunes, not {spec.method}"
        if spec.model_source.kind == "gguf":
            return "Unsloth loads Hugging Face folders, not .gguf files"
        if spec.objective != "sft":
            return (f"objective {spec.objective} runs on the hf backend "
                    "(TRL's preference trainers on the PEFT model; Unsloth's patched ones are not wired)")
        if spec.init_adapter:
            return "continuing from an adapter (init_adapter) loads it trainable through PEFT on the hf backend"
        if spec.distributed_strategy != "ddp":
            return ("Unsloth's documented multi-GPU path is DDP (accelerate launch / torchrun, one model copy per GPU); "
                    "FSDP and DeepSpeed run on the hf backend")
        return None

    def load(self, spec: TrainSpec, hardware: Any) -> tuple[Any, Any]:
        import unsloth  # noqa: F401 - must come before transformers / trl are used: it patches them
        from unsloth import FastLanguageModel

        # Unsloth's own loader is the only way to get its patched model; the path still comes from core.models.
        source = spec.model_source
        precision = choose_precision(spec, "cuda", hardware.bf16)
        import torch

        # One model per GPU under DDP (Unsloth's DDP guide): each rank loads onto the GPU it pinned.
        placement = {"device_map": {"": torch.cuda.current_device()}} if in_launched_process() else {}
        model, tokenizer = FastLanguageModel.from_pretrained(
            **placement,
            model_name=resolve_model_path(source),
            max_seq_length=spec.max_length,
            dtype=_torch_dtype(precision.load_dtype),
            load_in_4bit=spec.method == "qlora",
            full_finetuning=spec.method == "full",
            trust_remote_code=source.trust_remote_code,
        )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if spec.method == "full":
            return model, tokenizer
        # Unsloth wants explicit names: "all-linear" becomes the linear layers this model really has
        # (q_proj ... down_proj for Llama, qkv_proj / gate_up_proj for Phi-3's fused projections, ...).
        targets = linear_layer_names(model) if spec.target_modules == ["all-linear"] else list(spec.target_modules)
        model = FastLanguageModel.get_peft_model(
            model,
            r=spec.lora_r,
            lora_alpha=spec.lora_alpha,
            lora_dropout=spec.lora_dropout,
            target_modules=targets,
            bias="none",
            use_gradient_checkpointing="unsloth" if spec.gradient_checkpointing else False,
            random_state=spec.seed,
            use_rslora=spec.method == "rslora",
            max_seq_length=spec.max_length,
        )
        return model, tokenizer


class HFBackend(Backend):
    """transformers + PEFT (+ bitsandbytes 4-bit for QLoRA); the model comes from core.models.load_model."""

    name = "hf"

    def unavailable_reason(self, spec: TrainSpec, hardware: Any) -> str | None:
        if spec.backend == "unsloth":
            return "the spec asks for the unsloth backend"
        if spec.method == "qlora" and not hardware.bnb_4bit:
            return "QLoRA needs bitsandbytes 4-bit, which is not usable here (pip install bitsandbytes>=0.45)"
        if spec.method == "qlora" and spec.model_source.kind == "gguf":
            return "QLoRA quantizes a Hugging Face folder on load; a .gguf file cannot be re-quantized — use the LoRA method"
        return None

    def load(self, spec: TrainSpec, hardware: Any) -> tuple[Any, Any]:
        import torch

        torch.manual_seed(spec.seed)
        precision = choose_precision(spec, hardware.device, hardware.bf16)
        quantization = None
        if spec.method == "qlora":
            from transformers import BitsAndBytesConfig

            compute = _torch_dtype(precision.compute_dtype)
            # FSDP / ZeRO-3 flatten and shard the 4-bit weights: PEFT's recipe stores them in the compute dtype.
            storage = {"bnb_4bit_quant_storage": compute} if needs_quant_storage(spec) else {}
            quantization = BitsAndBytesConfig(**NF4_KWARGS, bnb_4bit_compute_dtype=compute, **storage)
        loaded = load_model(spec.model_source, device=hardware.device, dtype=precision.load_dtype,
                            quantization_config=quantization, for_training=True)
        model, tokenizer = loaded.model, loaded.tokenizer
        model.config.use_cache = False
        if spec.method == "qlora":
            keep_4bit_layers_trainable(model)
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=spec.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        if spec.method == "prompt_tuning" and spec.prompt_init_text.strip() and spec.model_source.kind == "gguf":
            raise ValueError("prompt_init_text: text initialisation reads a Hugging Face tokenizer folder; a .gguf source has none")
        tokenizer_path = resolve_model_path(spec.model_source) if spec.model_source.kind != "gguf" else None
        return attach_method(model, spec, tokenizer_path), tokenizer


def linear_layer_names(model: Any) -> list[str]:
    """The distinct names of the model's linear layers (4-bit ones too), the output head left out."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and module is not head and name}
    return sorted(names - {"lm_head", "output", "embed_out", "score"})


def tokenizer_differences(encoded_with: Any, trains_with: Any) -> list[str]:
    """Where the tokenizer the rows were encoded with and the one the model trains with disagree (vocabulary, pad /
    BOS / EOS ids): Unsloth's loader returns its own tokenizer, which can fix or add tokens."""
    differences = []
    if len(encoded_with) != len(trains_with):
        differences.append(f"vocabulary size {len(encoded_with)} vs {len(trains_with)}")
    elif encoded_with.get_vocab() != trains_with.get_vocab():
        differences.append("the same vocabulary size but different token ids")
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        ours, theirs = getattr(encoded_with, name, None), getattr(trains_with, name, None)
        if ours != theirs:
            differences.append(f"{name} {ours} vs {theirs}")
    return differences


FALLBACK_ENV = "WORKBENCH_BACKEND_FALLBACK"  # JSON {backend, from, reason, failed_pid, attempt} of a fallback relaunch


class FallBack(Exception):  # noqa: N818 - an instruction to the job, not an error
    """Unsloth failed in this process: the run must go on with `backend` in a fresh process. Unsloth's import has
    already rebound transformers' Llama forwards here (its pre_patch), and a half-loaded model may hold GPU memory,
    so the job relaunches itself (core.train.supervisor.relaunch_with_fallback) instead of loading again here."""

    def __init__(self, backend: str, reason: str):
        super().__init__(f"{reason}: relaunching with the {backend} backend in a fresh process")
        self.backend, self.reason = backend, reason


def activate(backend: Backend, spec: TrainSpec, hardware: Any) -> tuple[Backend, list[str]]:
    """Import the backend's accelerator now, first in the process (Unsloth patches transformers / TRL on import).
    If the import fails, raises FallBack naming the next backend that can run (ValueError if none may)."""
    if backend.name != "unsloth":
        return backend, []
    try:
        import unsloth  # noqa: F401 - first, before transformers / TRL / PEFT are used in this process
    except Exception as exc:  # noqa: BLE001 - any import / patch failure (no GPU found, version clash) falls back
        why = f"Unsloth could not be imported ({type(exc).__name__}: {_first_line(exc)})"
    else:
        return backend, []
    raise FallBack(fall_back(spec, hardware, why).name, why)


def load_with_fallback(backend: Backend, spec: TrainSpec, hardware: Any) -> tuple[Any, Any, Backend, list[str]]:
    """backend.load, except that an Unsloth failure while loading / patching the model raises FallBack like
    `activate` (outside the except block, so nothing of the failed load stays referenced by the exception)."""
    try:
        model, tokenizer = backend.load(spec, hardware)
        return model, tokenizer, backend, []
    except Exception as exc:  # noqa: BLE001
        if backend.name != "unsloth" or is_out_of_memory(exc):
            raise
        why = f"Unsloth failed to load or patch the model ({type(exc).__name__}: {_first_line(exc)})"
    raise FallBack(fall_back(spec, hardware, why).name, why)


def fall_back(spec: TrainSpec, hardware: Any, why: str) -> Backend:
    """The backend that takes over from a failed Unsloth (ValueError when the spec forbids it or none can run)."""
    if spec.backend == "unsloth":
        raise ValueError(f"backend: {why}; the spec asks for unsloth only — set backend to auto to fall back to hf")
    for backend in BACKENDS:
        if backend.name != "unsloth" and backend.unavailable_reason(spec, hardware) is None:
            return backend
    raise ValueError(f"backend: {why}, and no other backend can run this spec")


def fallback_from_env() -> dict | None:
    """The fallback this process was relaunched for (FALLBACK_ENV), or None."""
    text = os.environ.get(FALLBACK_ENV)
    return json.loads(text) if text else None


def fallback_backend(fallback: dict) -> tuple[Backend, list[str]]:
    """In the relaunched process: the backend named by the fallback, and the note for the log and the run card."""
    backend = next(b for b in BACKENDS if b.name == fallback["backend"])
    return backend, [f"{fallback['reason']}: trained with the {backend.name} backend instead, in a fresh process "
                     f"(process {os.getpid()}, attempt {fallback['attempt']}; "
                     f"the {fallback['from']} attempt was process {fallback['failed_pid']})"]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def lora_config(spec: TrainSpec) -> Any:
    return peft_config(spec)


def keep_4bit_layers_trainable(model: Any) -> int:
    """bitsandbytes on an AVX512-BF16 CPU repacks a Linear4bit's weight for fast inference the first time it
    runs in eval mode without grad (an eval loss, a generate). The repacked path has no autograd, so from then
    on gradients stop flowing through that layer and LoRA training silently stalls. Switch the repacking off."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def _torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


BACKENDS: list[Backend] = [UnslothBackend(), HFBackend()]


def choose_backend(spec: TrainSpec, hardware: Any) -> tuple[Backend, list[str]]:
    """The first backend that can run the spec, and notes on the ones skipped. Raises ValueError if none can."""
    notes = []
    for backend in BACKENDS:
        reason = backend.unavailable_reason(spec, hardware)
        if reason is None:
            return backend, notes
        if spec.backend in ("auto", backend.name):
            notes.append(f"{backend.name} backend not used: {reason}")
    raise ValueError(f"backend: no training backend can run this spec here ({'; '.join(notes)})")
