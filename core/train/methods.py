"""The training methods, as data: the seed chapter's PEFT table plus LoRA's variants and full fine-tuning.

Each method says what it trains, which spec fields it reads (the Train page shows only those), whether its
result is a PEFT adapter or a full model folder, whether it can be merged into the weights, and a learning
rate that works for it (prompt / prefix tuning and (IA)³ want far larger rates than full fine-tuning).

The PEFT configs are built here and nowhere else; BitFit and partial fine-tuning are plain `requires_grad`
choices on the loaded model (PEFT has no such tuner). Every PEFT call of the workbench's training lives in
`core.train` (this module and `core.train.backends`), because those APIs move monthly.

Not here, on purpose: bottleneck adapters (Houlsby / Pfeiffer). The `adapters` library that implements them
(1.3.0) pins transformers ~= 4.57 and cannot load beside our transformers 5.x; PEFT has no bottleneck tuner.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.memory import arch_from_source, bias_params
from core.models import ModelLoadError, apply_adapter, module_names

LORA_FIELDS = ("lora_r", "lora_alpha", "lora_dropout", "target_modules")


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    summary: str  # one line: what trains
    fields: tuple[str, ...] = ()  # method-specific TrainSpec fields this method reads
    peft: bool = True  # the result is a PEFT adapter folder (else a full model folder)
    mergeable: bool = True  # can be folded into the base weights (merge_and_unload)
    learning_rate: float = 2e-4  # a rate that works for this method on a small model
    paper: str = ""
    merge_note: str = ""  # why it cannot be merged, when it cannot


_PROMPT_MERGE = ("{label} cannot be merged into the weights: it adds learned virtual tokens in front of every input, "
                 "not a change to any weight matrix. Use it as an adapter on top of the base model (Chat and Evaluate load it that way).")

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("lora", "LoRA", "low-rank A·B updates beside the targeted linear layers", LORA_FIELDS,
           paper="https://arxiv.org/abs/2106.09685"),
    Method("dora", "DoRA", "LoRA plus a learned magnitude per output (weight-decomposed)", LORA_FIELDS,
           paper="https://arxiv.org/abs/2402.09353"),
    Method("rslora", "rsLoRA", "LoRA scaled by alpha / sqrt(r), stable at high ranks", LORA_FIELDS,
           paper="https://arxiv.org/abs/2312.03732"),
    Method("qlora", "QLoRA", "LoRA on a 4-bit NF4 base (double quantization): least memory", LORA_FIELDS,
           paper="https://arxiv.org/abs/2305.14314"),
    Method("loha", "LoHa", "Hadamard product of two low-rank products per targeted layer", LORA_FIELDS,
           paper="https://arxiv.org/abs/2108.06098"),
    Method("lokr", "LoKr", "Kronecker product of a small full factor and a low-rank factor per targeted layer", LORA_FIELDS,
           paper="https://arxiv.org/abs/2309.14859"),
    Method("ia3", "(IA)³", "one learned scaling vector on keys, values and the feed-forward input of every layer", (),
           learning_rate=1e-2, paper="https://arxiv.org/abs/2205.05638"),
    Method("prompt_tuning", "Prompt tuning", "learned virtual-token embeddings prepended to every input",
           ("num_virtual_tokens", "prompt_init_text"), mergeable=False, learning_rate=3e-2,
           paper="https://arxiv.org/abs/2104.08691", merge_note=_PROMPT_MERGE.format(label="Prompt tuning")),
    Method("prefix_tuning", "Prefix tuning", "learned key/value prefixes in the attention of every layer",
           ("num_virtual_tokens",), mergeable=False, learning_rate=1e-2,
           paper="https://arxiv.org/abs/2101.00190", merge_note=_PROMPT_MERGE.format(label="Prefix tuning")),
    Method("bitfit", "BitFit", "only the bias terms of the linear layers (refused for models without biases)", (),
           peft=False, learning_rate=1e-3, paper="https://arxiv.org/abs/2106.10199"),
    Method("partial", "Partial fine-tuning", "the top layers in full, the bottom N layers and the embeddings frozen",
           ("frozen_layers",), peft=False, learning_rate=5e-5, paper="https://arxiv.org/abs/1411.1792"),
    Method("full", "Full fine-tuning", "every weight", (), peft=False, learning_rate=5e-5),
)}

LORA_FAMILY = ("lora", "dora", "rslora", "qlora")
METHOD_FIELDS = tuple(dict.fromkeys(f for m in METHODS.values() for f in m.fields))
PEFT_TARGETED = tuple(m.name for m in METHODS.values() if "target_modules" in m.fields)  # methods PEFT places by module name


def method_info(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"method: {name!r} is not one of {', '.join(METHODS)}") from None


def hidden_fields(method: str) -> tuple[str, ...]:
    """Method-specific fields the chosen method does not read (the Train page hides them)."""
    used = set(method_info(method).fields)
    return tuple(f for f in METHOD_FIELDS if f not in used)


def merge_refusal(method: str) -> str | None:
    """Why a result of this method cannot be merged into the base weights, or None when it can."""
    info = METHODS.get(method)
    return info.merge_note if info is not None and not info.mergeable else None


def adapter_merge_refusal(adapter_dir: Any) -> str | None:
    """The same, read from an adapter folder's adapter_config.json (for Merge / export of any adapter)."""
    path = Path(adapter_dir) / "adapter_config.json"
    try:
        peft_type = str(json.loads(path.read_text()).get("peft_type", "")).upper()
    except (OSError, ValueError):
        return None
    names = {"PROMPT_TUNING": "prompt_tuning", "PREFIX_TUNING": "prefix_tuning", "P_TUNING": "prompt_tuning"}
    return merge_refusal(names[peft_type]) if peft_type in names else None


# ---------------------------------------------------------------- refusals that need the model's config


def method_refusal(spec: Any, arch: Any) -> str | None:
    """Why `spec.method` cannot train this architecture (a core.memory.ModelArch), or None."""
    if spec.method == "bitfit" and bias_params(arch) == 0:
        return (f"method: BitFit trains only bias terms, and {arch.name} ({arch.model_type}) has none in its linear layers "
                "(Llama-family models are built without biases). Choose (IA)³ for a similarly tiny trainable set, or a "
                "model with biases such as Qwen2.")
    if spec.method == "partial" and spec.frozen_layers >= arch.num_layers:
        return (f"frozen_layers: {spec.frozen_layers} would freeze all {arch.num_layers} layers of {arch.name}; "
                f"choose 1-{arch.num_layers - 1} (0 = the bottom half)")
    if spec.method == "ia3" and arch.fused_qkv:
        return f"method: (IA)³ has no default target layers for {arch.model_type}'s fused qkv_proj; choose LoRA"
    return None


def target_modules_refusal(targets: list[str], names: tuple[str, ...]) -> str | None:
    """PEFT matches a `target_modules` entry against a module's name or its last dotted parts; an entry that matches
    nothing makes PEFT fail after the model is loaded: say so now, with the names it could have meant."""
    if list(targets) == ["all-linear"]:
        return None
    missing = [t for t in targets if not any(name == t or name.endswith(f".{t}") for name in names)]
    if not missing:
        return None
    leaves = sorted({name.rsplit(".", 1)[-1] for name in names if "." in name and not name.rsplit(".", 1)[-1].isdigit()})
    return (f"target_modules: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not a module of this model; "
            f"its module names end in: {', '.join(leaves)} (or use all-linear)")


def method_refusal_for(spec: Any) -> str | None:
    """The same for a TrainSpec, from its model's config only (never the weights)."""
    try:
        arch = arch_from_source(spec.model_source)
    except (ModelLoadError, ValueError, OSError):
        return None  # no config to judge by: loading the model says what is wrong
    refusal = method_refusal(spec, arch)
    if refusal is None and spec.method in PEFT_TARGETED:
        try:
            refusal = target_modules_refusal(list(spec.target_modules or ["all-linear"]), module_names(spec.model_source))
        except Exception:  # noqa: BLE001 - a model transformers cannot build from its config alone: loading will say why
            return None
    return refusal


# ---------------------------------------------------------------- building the trainable model


def peft_config(spec: Any, tokenizer_path: str | None = None) -> Any:
    """The PEFT config of a PEFT method (LoRA family included)."""
    import peft

    targets = "all-linear" if list(spec.target_modules) == ["all-linear"] else list(spec.target_modules)
    method = spec.method
    if method in LORA_FAMILY:
        return peft.LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout, target_modules=targets,
                               use_dora=method == "dora", use_rslora=method == "rslora", bias="none", task_type="CAUSAL_LM")
    if method == "loha":
        return peft.LoHaConfig(r=spec.lora_r, alpha=spec.lora_alpha, module_dropout=spec.lora_dropout, target_modules=targets,
                               task_type="CAUSAL_LM")
    if method == "lokr":
        return peft.LoKrConfig(r=spec.lora_r, alpha=spec.lora_alpha, module_dropout=spec.lora_dropout, target_modules=targets,
                               task_type="CAUSAL_LM")
    if method == "ia3":
        return peft.IA3Config(task_type="CAUSAL_LM")  # PEFT's per-architecture targets (core.memory.ia3_targets mirrors them)
    if method == "prompt_tuning":
        text = spec.prompt_init_text.strip()
        if text and not tokenizer_path:
            raise ValueError("prompt_init_text: text initialisation needs a Hugging Face tokenizer folder (not a .gguf file)")
        init = dict(prompt_tuning_init="TEXT", prompt_tuning_init_text=text, tokenizer_name_or_path=tokenizer_path) if text else {}
        return peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=spec.num_virtual_tokens, **init)
    if method == "prefix_tuning":
        return peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=spec.num_virtual_tokens)
    raise ValueError(f"method: {method!r} is not a PEFT method")


def attach_method(model: Any, spec: Any, tokenizer_path: str | None = None) -> Any:
    """The model ready to train with `spec.method`: wrapped by PEFT, or with requires_grad set (BitFit, partial, full)."""
    if method_info(spec.method).peft:
        init = getattr(spec, "init_adapter_path", None)
        if init is not None:  # continue an earlier run: its adapter, loaded trainable, is the start (and DPO's reference)
            try:
                return apply_adapter(model, init, trainable=True)
            except ModelLoadError as exc:
                raise ValueError(f"init_adapter: {exc}") from None
        from peft import get_peft_model

        return get_peft_model(model, peft_config(spec, tokenizer_path))
    for param in model.parameters():
        param.requires_grad_(spec.method == "full")
    if spec.method == "bitfit":
        biases = [p for name, p in model.named_parameters() if name.endswith(".bias")]
        if not biases:
            raise ValueError(f"method: BitFit trains only bias terms, and this {type(model).__name__} has none")
        for param in biases:
            param.requires_grad_(True)
    elif spec.method == "partial":
        _unfreeze_top_layers(model, spec.frozen_layers)
    return model


def _unfreeze_top_layers(model: Any, frozen_layers: int) -> None:
    decoder = model.get_decoder()
    layers = decoder.layers
    frozen = frozen_layers or len(layers) // 2
    if not 0 < frozen < len(layers):
        raise ValueError(f"frozen_layers: {frozen} is not between 1 and {len(layers) - 1} for a {len(layers)}-layer model")
    for layer in list(layers)[frozen:]:
        layer.requires_grad_(True)
    decoder.norm.requires_grad_(True)
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:  # a tied head is the frozen embedding
        head.requires_grad_(True)


def trainable_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters as PEFT counts them (get_nb_trainable_parameters), or by requires_grad."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    params = {id(p): p for p in model.parameters()}.values()  # tied weights once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# ---------------------------------------------------------------- objectives (what the loss is: SFT or preference tuning, issue 27)


@dataclass(frozen=True)
class Objective:
    name: str
    label: str
    summary: str
    fields: tuple[str, ...] = ()  # objective-specific TrainSpec fields it reads (the Train page shows only those)
    data: str = "sft"  # "sft" rows, "pairs" (chosen / rejected), "pairs_or_unpaired" (KTO: pairs are unpaired), or "prompts" (GRPO)
    reference: bool = False  # scores against a frozen reference (with PEFT: the model with the adapter as it started)
    metrics: tuple[str, ...] = ()  # TRL's metric keys this objective logs (beside loss / learning rate / grad norm)
    paper: str = ""


# TRL 1.16 DPOConfig.loss_type choices ('sft' is mixed in through sft_weight, not chosen alone).
DPO_LOSS_TYPES: tuple[str, ...] = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                                   "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm")
# TRL 1.16 GRPOConfig.loss_type choices ('luspo' needs sequence-level importance sampling, not offered here).
GRPO_LOSS_TYPES: tuple[str, ...] = ("dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo", "vespo")
# TRL's GRPO logs (beside loss): reward, reward_std and rewards/<label>/mean|std per reward (their labels vary), the share of
# groups whose completions all scored the same (no signal), completion lengths, clipped (cut at max_completion_length) share,
# entropy, the clip ratios of the policy ratio, and kl when beta > 0.
GRPO_METRICS = ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "completions/clipped_ratio", "entropy")
_PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected")

OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("sft", "SFT", "supervised fine-tuning: next-token loss on the trained (masked-in) tokens"),
    Objective("dpo", "DPO", "direct preference optimisation: raise chosen over rejected relative to the starting model",
              ("beta", "dpo_loss_type", "label_smoothing", "sft_weight", "precompute_ref_log_probs"), data="pairs", reference=True,
              metrics=_PAIR_METRICS, paper="https://arxiv.org/abs/2305.18290"),
    Objective("kto", "KTO", "Kahneman-Tversky optimisation from answers labelled desirable / undesirable (pairs are split into both)",
              ("beta", "desirable_weight", "undesirable_weight", "precompute_ref_log_probs"), data="pairs_or_unpaired", reference=True,
              metrics=("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected", "kl"),
              paper="https://arxiv.org/abs/2402.01306"),
    Objective("orpo", "ORPO", "SFT on chosen plus an odds-ratio penalty on rejected: no reference model", ("beta",), data="pairs",
              metrics=_PAIR_METRICS, paper="https://arxiv.org/abs/2403.07691"),
    Objective("simpo", "SimPO", "length-normalised preference margin with a target gap gamma: no reference model (TRL's CPO loss 'simpo')",
              ("beta", "simpo_gamma", "label_smoothing"), data="pairs", metrics=_PAIR_METRICS, paper="https://arxiv.org/abs/2405.14734"),
    Objective("grpo", "GRPO", "group relative policy optimisation: sample a group of completions per prompt, score them with the "
              "rewards, and raise the ones above their group's mean (TRL's GRPOTrainer; beta 0 = no reference model)",
              ("beta", "rewards", "num_generations", "max_completion_length", "temperature", "grpo_loss_type", "completions_every"),
              data="prompts", metrics=GRPO_METRICS, paper="https://arxiv.org/abs/2402.03300"),
)}
OBJECTIVE_FIELDS = tuple(dict.fromkeys(f for o in OBJECTIVES.values() for f in o.fields))


def objective_info(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"objective: unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def hidden_objective_fields(objective: str) -> tuple[str, ...]:
    """Objective-specific fields the chosen objective does not read (the Train page hides them)."""
    used = set(OBJECTIVES[objective].fields) if objective in OBJECTIVES else set()
    return tuple(f for f in OBJECTIVE_FIELDS if f not in used)


# Preference objectives move a model that already answers well: their usual rates are about a tenth of SFT's for the
# same method (TRL's DPOConfig defaults to 1e-6 for full fine-tuning; LoRA DPO recipes use 5e-6 .. 5e-5).
PREFERENCE_RATE_FACTOR = 0.1
RATE_WARN_ABOVE = 10.0  # times the usual rate
RATE_WARN_BELOW = 0.01


def learning_rate_warning(method: str, objective: str, learning_rate: float) -> str | None:
    """A word when the rate is far from what usually works for this method and objective (the spec allows it)."""
    usual = method_info(method).learning_rate * (PREFERENCE_RATE_FACTOR if objective != "sft" else 1.0)
    what = f"{method_info(method).label}" + (f" with {objective_info(objective).label}" if objective != "sft" else "")
    if learning_rate > usual * RATE_WARN_ABOVE:
        return (f"learning_rate {learning_rate:g} is {learning_rate / usual:.0f}× what usually works for {what} ({usual:g}): "
                "the loss is likely to diverge")
    if learning_rate < usual * RATE_WARN_BELOW:
        return (f"learning_rate {learning_rate:g} is {usual / learning_rate:.0f}× below what usually works for {what} ({usual:g}): "
                "the run may change nothing")
    return None
