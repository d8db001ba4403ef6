"""A run as a recipe other tools reproduce: our spec.yaml, a mergekit YAML for merges, an Axolotl YAML for
training runs. Axolotl gets the fields that map one to one; the rest are listed in the file as not mapped,
so nothing is silently dropped."""
from __future__ import annotations

from typing import Any

import yaml

# TrainSpec field -> Axolotl key (same meaning, same units)
AXOLOTL_SAME = {
    "lora_r": "lora_r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout", "max_length": "sequence_len",
    "packing": "sample_packing", "learning_rate": "learning_rate", "lr_scheduler": "lr_scheduler",
    "warmup_ratio": "warmup_ratio", "num_epochs": "num_epochs", "batch_size": "micro_batch_size",
    "gradient_accumulation": "gradient_accumulation_steps", "weight_decay": "weight_decay",
    "max_grad_norm": "max_grad_norm", "seed": "seed", "gradient_checkpointing": "gradient_checkpointing",
    "logging_steps": "logging_steps", "save_steps": "save_steps", "save_total_limit": "save_total_limit",
    "eval_fraction": "val_set_size",
}
# Fields that are ours alone (no Axolotl counterpart): listed in the file as not mapped.
_OURS_ONLY = {"name", "backend", "fault_injection", "eval_on_start", "merge_after", "precision", "report_to"}
_DATASET_TYPES = {  # our detected format -> Axolotl dataset entry
    "messages": {"type": "chat_template", "field_messages": "messages"},
    "sharegpt": {"type": "chat_template", "field_messages": "conversations",
                 "message_property_mappings": {"role": "from", "content": "value"}},
    "alpaca": {"type": "alpaca"},
    "prompt_completion": {"type": "input_output"},
    "text": {"type": "completion"},
}


# Preference objectives (issue 27): TrainSpec fields -> Axolotl's RLHF keys (TRL underneath both). A preference run
# exported without them would be an SFT recipe on a pairs file.
_PREFERENCE_FIELDS = ("objective", "beta", "dpo_loss_type", "sft_weight", "desirable_weight", "undesirable_weight", "simpo_gamma",
                      "init_adapter")


def _preference(spec: dict, config: dict, notes: list[str]) -> dict:
    """Axolotl's rl keys for a preference run, and its pair dataset entry; notes what does not map one to one."""
    objective = spec["objective"]
    loss = spec.get("dpo_loss_type", "sigmoid")
    config["rl"] = "ipo" if objective == "dpo" and loss == "ipo" else objective
    if objective == "dpo" and loss not in ("sigmoid", "ipo"):
        notes.append(f"dpo_loss_type {loss}: not mapped (Axolotl's rl dpo trains the sigmoid loss, rl ipo the ipo loss)")
    if objective == "orpo":
        config["orpo_alpha"] = spec.get("beta", 0.1)  # ORPO's lambda: TRL's ORPOConfig.beta, Axolotl's orpo_alpha
    else:
        config["rl_beta"] = spec.get("beta", 0.1)
    if objective == "dpo" and spec.get("sft_weight"):
        config["rpo_alpha"] = spec["sft_weight"]  # the chosen answers' NLL weight beside the DPO loss
    if objective == "kto":
        config["kto_desirable_weight"] = spec.get("desirable_weight", 1.0)
        config["kto_undesirable_weight"] = spec.get("undesirable_weight", 1.0)
    if objective == "simpo":
        config["simpo_gamma"] = spec.get("simpo_gamma", 0.5)
        config["cpo_alpha"] = 0.0  # pure SimPO, as the workbench trains it (TRL's default 1.0 is CPO-SimPO)
    if spec.get("init_adapter"):
        config["lora_model_dir"] = str(spec["init_adapter"])  # continue the adapter this run started from (e.g. its SFT run)
    notes.append("pairs: Axolotl's chat_template.default reads `chosen` / `rejected` as one message each; the workbench's "
                 "normal form holds a one-message list per side (flatten each to its message)")
    return {"type": "chat_template.default", "field_messages": "prompt", "field_chosen": "chosen", "field_rejected": "rejected"}


def spec_yaml(spec: dict) -> str:
    header = "# Reproduce headless:  python -m core.runs.worker <run folder containing this file as spec.yaml>\n"
    return header + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)


def axolotl_config(spec: dict, *, base_model: str, data_format: str | None, chat_template: str | None) -> tuple[dict, list[str]]:
    """(Axolotl config, notes on what did not map) for a TrainSpec dict."""
    config: dict[str, Any] = {"base_model": base_model, "tokenizer_type": "AutoTokenizer"}
    notes: list[str] = []
    method = spec.get("method", "lora")
    if method == "full":
        config["adapter"] = None
    else:
        config["adapter"] = "qlora" if method == "qlora" else "lora"
        if method == "qlora":
            config["load_in_4bit"] = True
        if method == "dora":
            config["peft_use_dora"] = True
        if method == "rslora":
            config["peft_use_rslora"] = True
        targets = spec.get("target_modules") or ["all-linear"]
        if targets == ["all-linear"]:
            config["lora_target_linear"] = True
        else:
            config["lora_target_modules"] = list(targets)
    for ours, theirs in AXOLOTL_SAME.items():
        if ours in spec and not (method == "full" and ours.startswith("lora_")):
            config[theirs] = spec[ours]
    if spec.get("max_steps"):
        config["max_steps"] = spec["max_steps"]
    if spec.get("eval_steps"):
        config["eval_steps"] = spec["eval_steps"]
    precision = spec.get("precision", "auto")
    if precision in ("bf16", "fp16"):
        config[precision] = True
    elif precision == "auto":
        config["bf16"] = "auto"
    preference = spec.get("objective", "sft") != "sft"
    dataset_type = (_preference(spec, config, notes) if preference
                    else _DATASET_TYPES.get(data_format or "messages", {"type": "chat_template"}))
    dataset = {"path": str(spec.get("dataset", "")), **dataset_type}
    policy = spec.get("masking_policy", "all_assistant")
    if dataset["type"] == "chat_template":
        dataset["roles_to_train"] = ["assistant"]
        dataset["train_on_eos"] = "turn" if spec.get("train_eot", True) else "none"
        if policy == "last_assistant":
            dataset["train_on_eos"] = "last" if spec.get("train_eot", True) else "none"
            notes.append("masking_policy last_assistant: Axolotl has no exact 'last assistant turn only' switch; "
                         "mark earlier turns with `train: false` per message to match")
    if policy == "everything" and not preference:
        config["train_on_inputs"] = True
    config["datasets"] = [dataset]
    if spec.get("eval_dataset"):
        config["test_datasets"] = [{"path": str(spec["eval_dataset"]), **{k: v for k, v in dataset.items() if k != "path"}}]
        config.pop("val_set_size", None)
    if chat_template:
        config["chat_template"] = "jinja"
        config["chat_template_jinja"] = chat_template
    else:
        config["chat_template"] = "tokenizer_default"
    config["optimizer"] = "adamw_torch"
    config["output_dir"] = "./outputs/" + (spec.get("name") or "run")
    for key in sorted(set(spec) - set(AXOLOTL_SAME) - _OURS_ONLY - {
            "kind", "model", "dataset", "eval_dataset", "method", "target_modules", "max_steps", "eval_steps",
            "masking_policy", "train_eot", "chat_template", *_PREFERENCE_FIELDS}):
        notes.append(f"{key}: not mapped (no Axolotl equivalent)")
    for key in sorted(_OURS_ONLY & set(spec)):
        if spec.get(key) not in ("", None, False, [], "auto"):
            notes.append(f"{key} = {spec[key]!r}: workbench-only, not mapped")
    return config, notes


def axolotl_yaml(spec: dict, *, base_model: str, data_format: str | None, chat_template: str | None) -> str:
    config, notes = axolotl_config(spec, base_model=base_model, data_format=data_format, chat_template=chat_template)
    header = ["# Axolotl config exported by the Post-Training Workbench", "# run:  axolotl train this.yaml"]
    header += [f"# NOT MAPPED — {note}" for note in notes] or ["# every field of the run spec mapped"]
    return "\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
