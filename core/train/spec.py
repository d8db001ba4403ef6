"""The training run spec: one dataclass that is the YAML file, the CLI and the Train page's form.

Every field carries its help text, limits and form group in `metadata`; `__post_init__` checks them
(`core.runs.spec.check_limits`) and the rules between fields, with messages that name the field.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from core.data.formats import resolve_data_path
from core.data.masking import POLICIES, REASONING_MODES
from core.data.preference import sniff_preference_format
from core.models import ModelSource
from core.rewards import RewardSpec
from core.runs.card import source_run_of
from core.runs.jobs import read_spec_dict
from core.runs.spec import RunSpec, meta
from core.runs.status import read_status
from core.train.methods import DPO_LOSS_TYPES, GRPO_LOSS_TYPES, LORA_FIELDS, merge_refusal, method_info
from core.train.methods import METHODS as METHOD_TABLE
from core.train.methods import OBJECTIVES as OBJECTIVE_TABLE
from core.train.tracking import TRACKERS
from core.workspace import runs_dir

METHODS: tuple[str, ...] = tuple(METHOD_TABLE)
OBJECTIVES: tuple[str, ...] = tuple(OBJECTIVE_TABLE)
SCHEDULERS: tuple[str, ...] = ("linear", "cosine", "constant", "constant_with_warmup")
BACKENDS: tuple[str, ...] = ("auto", "unsloth", "hf")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
DEMO_DATASET = "assets/demo/train.jsonl"
# GRPO's default rewards on the demo tickets: the reply is one JSON object, and its urgency is the reference's.
DEFAULT_REWARDS: dict = {"rewards": [{"name": "json_valid", "params": {}, "weight": 1.0},
                                     {"name": "field_match", "params": {"field": "urgency"}, "weight": 1.0}], "allow_user_code": False}
GRPO_BETA = 0.0  # TRL 1.16's GRPOConfig default: no reference model (the Train form starts GRPO there)
_FAULT = re.compile(r"^(error|oom|kill)@(\d+)(?::(\d+))?$")
# Distribution (beyond one process): see core.train.distributed for what each choice turns into.
DISTRIBUTED_STRATEGIES: tuple[str, ...] = ("ddp", "fsdp", "deepspeed")
LAUNCHERS: tuple[str, ...] = ("torchrun", "accelerate")
FSDP_SHARDINGS: tuple[str, ...] = ("full_shard", "shard_grad_op")
FSDP_WRAP_POLICIES: tuple[str, ...] = ("transformer_layer", "size")
ZERO_STAGES: tuple[int, ...] = (1, 2, 3)
ZERO_OFFLOADS: tuple[str, ...] = ("none", "optimizer", "optimizer_and_params")


@dataclass
class TrainSpec(RunSpec):
    kind: ClassVar[str] = "train"

    # ---------------------------------------------------------------- what
    name: str = field(default="", metadata=meta("A short name for the run folder (optional)."))
    model: dict = field(
        default_factory=lambda: {"kind": "embedded"},
        metadata=meta("The base model, as a core.models source: {kind: embedded|local|hub|gguf, ref: path or id}.", "model"),
    )
    dataset: str = field(
        default=DEMO_DATASET,
        metadata=meta("Training data: a JSONL / JSON / CSV / Parquet file or a workspace dataset folder "
                       "(messages, ShareGPT, Alpaca, prompt/completion or text rows).", "data"),
    )
    eval_dataset: str = field(
        default="",
        metadata=meta("Held-out data for the eval loss (a file like `dataset`). "
                       "Empty: hold out `eval_fraction` of the training rows.", "data"),
    )
    eval_fraction: float = field(
        default=0.1,
        metadata=meta("Share of the training rows held out for the eval loss when no eval dataset is given (0 = no eval).",
                      "data", min=0.0, max=0.5),
    )
    masking_policy: str = field(
        default="all_assistant",
        metadata=meta("Which tokens are trained (label != -100): every assistant turn, only the last one, everything after "
                       "the prompt, or every token. The Template page shows the result token by token.", "data", choices=POLICIES),
    )
    train_eot: bool = field(
        default=True,
        metadata=meta("Train the end-of-turn marker after each trained assistant turn (without it the model never learns to stop).",
                      "data", advanced=True),
    )
    reasoning: str = field(
        default="train",
        metadata=meta("Reasoning (<think> blocks) in the rows: train it with the answer, mask it (context the answer is trained "
                       "after), or strip it before rendering. Strip also turns the template's enable_thinking off, and chat / "
                       "evaluate prompts follow the same setting. The Template page shows and lints it.", "data", choices=REASONING_MODES),
    )
    chat_template: str = field(
        default="",
        metadata=meta("Chat template: a shipped template name (e.g. chatml), a .jinja file, or empty for the tokenizer's own.",
                      "data", advanced=True),
    )
    max_length: int = field(
        default=512,
        metadata=meta("Longest sequence in tokens; longer rows are cut (the pre-flight counts them). Drives activation memory.",
                      "data", min=16, max=131072),
    )
    packing: bool = field(
        default=False,
        metadata=meta("Pack several short rows into one max_length sequence (each row still attends only to itself): "
                       "fewer pad tokens, faster.", "data"),
    )

    # ---------------------------------------------------------------- replay (general data mixed in against forgetting)
    replay_fraction: float = field(
        default=0.0,
        metadata=meta("Replay: share of the training rows that are general rows mixed in against forgetting (0.1 = one general "
                       "row per nine task rows; exact, recorded in the run card). 0 = off.", "replay", min=0.0, max=0.9),
    )
    replay_dataset: str = field(
        default="general",
        metadata=meta("Where the replay rows come from: 'general' = the shipped general instructions answered by this run's own base "
                       "model (the embedded model's answers ship in assets/general/replay.jsonl; any other base answers them once, "
                       "as the run's first stage, cached in the workspace for later runs), or a JSONL / JSON / CSV / Parquet file or "
                       "dataset folder of your own.", "replay", advanced=True),
    )
    replay_answered_by: dict = field(
        default_factory=dict,
        metadata=meta("Replay 'general': the model whose own answers to the general prompts are replayed, as a model source "
                      "{kind, ref, adapter} (empty = this run's base model; distillation names the teacher).", "replay", advanced=True),
    )
    replay_max_new_tokens: int = field(
        default=256,
        metadata=meta("Replay 'general' on a base other than the embedded model: longest answer the base writes per general prompt.",
                      "replay", advanced=True, min=1, max=4096),
    )
    replay_prompts: int = field(
        default=0,
        metadata=meta("Replay 'general' on another base: how many of the general prompts it answers (0 = all of them).",
                      "replay", advanced=True, min=0, max=100_000),
    )
    replay_keep_unfinished: bool = field(
        default=False,
        metadata=meta("Replay 'general' on another base: keep answers cut at replay_max_new_tokens (dropped by default: the model "
                      "would learn never to stop).", "replay", advanced=True),
    )

    # ---------------------------------------------------------------- method
    method: str = field(
        default="lora",
        metadata=meta("; ".join(f"{m.name}: {m.summary}" for m in METHOD_TABLE.values()) + ". The Compare methods page "
                       "measures them side by side on this model and data.", "method", choices=METHODS),
    )
    lora_r: int = field(default=16, metadata=meta("LoRA rank: adapter capacity (and size).", "method", min=1, max=1024))
    lora_alpha: int = field(default=32, metadata=meta("LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) for rslora).",
                                                      "method", min=1, max=4096))
    lora_dropout: float = field(default=0.05, metadata=meta("Dropout on the adapter input.", "method", min=0.0, max=0.9))
    target_modules: list = field(
        default_factory=lambda: ["all-linear"],
        metadata=meta("Layers that get adapters (LoRA family, LoHa, LoKr): "
                       "'all-linear' or names such as q_proj, v_proj (comma separated).", "method"),
    )

    # ---------------------------------------------------------------- PEFT family: (IA)³, prompt / prefix tuning, BitFit, partial
    # (issue 16)
    # (IA)³ and BitFit need no fields of their own: (IA)³ scales PEFT's default layers of the architecture,
    # BitFit trains every bias. LoHa / LoKr read lora_r, lora_alpha, lora_dropout and target_modules above.
    num_virtual_tokens: int = field(
        default=20,
        metadata=meta("Prompt / prefix tuning: learned virtual tokens put before every input (more = more capacity, "
                       "longer sequences).", "method", min=1, max=512),
    )
    prompt_init_text: str = field(
        default="",
        metadata=meta("Prompt tuning: start the virtual tokens from this text's token embeddings (repeated to fill them), "
                       "e.g. the task instruction; empty = random start.", "method"),
    )
    frozen_layers: int = field(
        default=0,
        metadata=meta("Partial fine-tuning: the bottom N decoder layers and the embeddings stay frozen; the layers above, the "
                       "final norm and an untied lm_head train. 0 = the bottom half.", "method", min=0, max=1024),
    )

    # ---------------------------------------------------------------- objective (SFT, or preference tuning from pairs: issue 27)
    objective: str = field(
        default="sft",
        metadata=meta("; ".join(f"{o.name}: {o.summary}" for o in OBJECTIVE_TABLE.values()) + ". Every objective but sft reads a "
                       "preference file (prompt / chosen / rejected pairs; KTO also prompt / completion / label rows).", "objective",
                       choices=OBJECTIVES),
    )
    init_adapter: str = field(
        default="",
        metadata=meta("Continue from an earlier run: its run id or an adapter folder. Training starts from that adapter (e.g. DPO "
                       "after SFT, the usual order), and for DPO / KTO it is also the reference. Empty = a fresh adapter.", "objective"),
    )
    beta: float = field(
        default=0.1,
        metadata=meta("DPO / KTO: how far the model may move from the reference (lower = further); ORPO: weight of the odds-ratio "
                       "term (lambda); SimPO: reward scale (its paper uses 2.0-2.5); GRPO: weight of the KL to the starting model "
                       "(0 = no reference model, TRL's default; DeepSeek-R1 used 0.001).", "objective", min=0.0, max=100.0),
    )
    dpo_loss_type: str = field(
        default="sigmoid",
        metadata=meta("DPO loss: sigmoid (the paper's), ipo (squared, against over-fitting near-deterministic pairs), hinge, robust "
                       "(noisy labels, with label_smoothing), apo_zero / apo_down (anchored), and TRL's others.", "objective",
                       choices=DPO_LOSS_TYPES),
    )
    label_smoothing: float = field(
        default=0.0,
        metadata=meta("DPO (sigmoid / robust) and SimPO: the share of pairs assumed mislabelled (conservative DPO); 0 = trust every label.",
                       "objective", min=0.0, max=0.49),
    )
    sft_weight: float = field(
        default=0.0,
        metadata=meta("DPO: weight of the SFT loss on the chosen answers mixed into the DPO loss (TRL loss_type [..., 'sft']). A little "
                       "(0.1-1) stops the drift where both chosen and rejected rewards fall. 0 = pure DPO.",
                       "objective", min=0.0, max=100.0),
    )
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata=meta("DPO / KTO: score every row with the reference once before training instead of at every step (less compute "
                       "per step; the reference then needs no memory while training).", "objective", advanced=True),
    )
    desirable_weight: float = field(
        default=1.0,
        metadata=meta("KTO: loss weight of desirable answers (raise it when they are fewer than the undesirable ones).", "objective",
                       min=0.0, max=100.0),
    )
    undesirable_weight: float = field(
        default=1.0,
        metadata=meta("KTO: loss weight of undesirable answers.", "objective", min=0.0, max=100.0),
    )
    simpo_gamma: float = field(
        default=0.5,
        metadata=meta("SimPO: the target reward margin between chosen and rejected (gamma).", "objective", min=0.0, max=100.0),
    )

    # ---------------------------------------------------------------- GRPO: rewards on sampled completions (issue 28 item 4)
    rewards: dict = field(
        default_factory=lambda: {"rewards": [dict(r, params=dict(r["params"])) for r in DEFAULT_REWARDS["rewards"]],
                                 "allow_user_code": False},
        metadata=meta("GRPO: the rewards each completion is scored with, as core.rewards reads them: {rewards: [{name, params, "
                      "weight}], allow_user_code}. The reference each reward compares with is the dataset row's assistant "
                      "answer (the Rewards page tries them).", "objective"),
    )
    num_generations: int = field(
        default=4,
        metadata=meta("GRPO: completions sampled per prompt (the group). Advantages are each reward minus its group's mean: a "
                      "group that all scores the same teaches nothing. batch_size x gradient_accumulation must be a multiple.",
                      "objective", min=2, max=256),
    )
    max_completion_length: int = field(
        default=96,  # a demo ticket's JSON answer is ~40 tokens; its prompt (~130) + 96 fits the CPU demo's max_length 256
        metadata=meta("GRPO: longest completion sampled, in tokens (a longer one is cut and counts in the clipped ratio). The "
                      "prompt plus this must fit max_length.", "objective", min=1, max=32768),
    )
    temperature: float = field(
        default=1.0,
        metadata=meta("GRPO: sampling temperature of the completions (lower = the group agrees more, so less signal).",
                      "objective", min=0.05, max=5.0),
    )
    grpo_loss_type: str = field(
        default="dapo",
        metadata=meta("GRPO loss (TRL's): dapo (default: tokens of the whole batch normalise, no length bias), grpo (per "
                      "sequence: favours short right answers), dr_grpo (a constant: max_completion_length), bnpo (the local "
                      "batch's tokens), cispo, sapo, vespo.", "objective", advanced=True, choices=GRPO_LOSS_TYPES),
    )
    completions_every: int = field(
        default=5,
        metadata=meta("GRPO: every N steps append the sampled completions with their rewards to completions.jsonl in the run "
                      "folder (the Train page shows the newest). 0 = never.", "objective", advanced=True, min=0, max=1_000_000),
    )

    # ---------------------------------------------------------------- schedule
    learning_rate: float = field(default=2e-4, metadata=meta("Peak learning rate.", "schedule", min=1e-8, max=1.0))
    lr_scheduler: str = field(default="linear", metadata=meta("Learning-rate schedule after warmup.", "schedule", choices=SCHEDULERS))
    warmup_ratio: float = field(default=0.03, metadata=meta("Share of the steps spent warming the learning rate up from 0.",
                                                            "schedule", min=0.0, max=0.5))
    num_epochs: float = field(default=1.0, metadata=meta("Passes over the training rows (ignored when max_steps > 0).",
                                                         "schedule", min=0.0, max=1000.0))
    max_steps: int = field(default=0, metadata=meta("Optimizer steps to run; 0 = run num_epochs.", "schedule", min=0, max=10_000_000))
    batch_size: int = field(default=4, metadata=meta("Rows per device per forward pass. Drives activation memory.",
                                                     "schedule", min=1, max=4096))
    gradient_accumulation: int = field(
        default=1, metadata=meta("Forward passes per optimizer step (effective batch = batch_size x this).", "schedule", min=1, max=4096)
    )
    weight_decay: float = field(default=0.0, metadata=meta("AdamW weight decay.", "schedule", advanced=True, min=0.0, max=1.0))
    max_grad_norm: float = field(default=1.0, metadata=meta("Gradient clipping norm (0 = off).",
                                                            "schedule", advanced=True, min=0.0, max=1000.0))
    seed: int = field(default=42, metadata=meta("Seed for adapter init, data order and the eval split.",
                                                "schedule", advanced=True, min=0, max=2**31 - 1))

    # ---------------------------------------------------------------- system
    gradient_checkpointing: bool = field(
        default=False, metadata=meta("Recompute activations in the backward pass: much less memory, ~30% slower.", "system")
    )
    backend: str = field(
        default="auto",
        metadata=meta("auto: Unsloth kernels when installed on a CUDA GPU, else transformers + PEFT + TRL; unsloth / hf force one.",
                      "system", choices=BACKENDS),
    )
    precision: str = field(
        default="auto",
        metadata=meta("Compute precision. auto: bf16 where the GPU supports it, else fp16 on GPU; on CPU fp32 weights, with bf16 "
                      "autocast where the CPU computes bf16 natively (avx512_bf16 / AMX).", "system", advanced=True, choices=PRECISIONS),
    )
    logging_steps: int = field(default=1, metadata=meta("Write a metrics row every N optimizer steps.",
                                                        "system", advanced=True, min=1, max=100000))
    eval_steps: int = field(
        default=0, metadata=meta("Evaluate every N steps (0 = only before and after training).",
                                 "system", advanced=True, min=0, max=10_000_000)
    )
    eval_on_start: bool = field(
        default=True, metadata=meta("Measure the eval loss before the first step, so the curve shows where training started.",
                                    "system", advanced=True)
    )
    save_steps: int = field(default=50, metadata=meta("Save a resumable checkpoint every N steps (one is always saved at the end).",
                                                      "system", advanced=True, min=1, max=10_000_000))
    save_total_limit: int = field(default=2, metadata=meta("Checkpoints kept on disk (older ones are deleted).",
                                                           "system", advanced=True, min=1, max=1000))
    merge_after: bool = field(
        default=False, metadata=meta("Also save the base model with the adapter merged in (under merged/), e.g. for export.", "system")
    )

    # ---------------------------------------------------------------- distribution (more than one process / node)
    # One process per GPU (or CPU processes sharing the cores), started by torchrun or accelerate launch; rank 0
    # writes the run folder. 1 process with ddp is the plain single-process run.
    processes_per_node: int = field(
        default=1,
        metadata=meta("Training processes on each node: one per GPU (on a CPU-only machine: CPU processes sharing the cores, "
                       "gloo backend). The effective batch is batch_size x gradient_accumulation x processes x nodes.",
                       "distribution", min=1, max=64),
    )
    num_nodes: int = field(
        default=1,
        metadata=meta("Machines taking part. Above 1 the run is started on every node with the generated torchrun, Slurm or "
                       "Ray files (the run folder must then be on a filesystem every node shares).", "distribution", min=1, max=1024),
    )
    distributed_strategy: str = field(
        default="ddp",
        metadata=meta("ddp: a full copy of the model per device, gradients all-reduced; fsdp: PyTorch FSDP2 shards weights, "
                       "gradients and optimizer states (CUDA only); deepspeed: DeepSpeed ZeRO stage 1/2/3 (CUDA only).",
                       "distribution", choices=DISTRIBUTED_STRATEGIES),
    )
    launcher: str = field(
        default="torchrun",
        metadata=meta("What starts the processes: torchrun, or accelerate launch with the accelerate config generated from "
                       "this spec (both are written into the run folder's launch/).", "distribution", choices=LAUNCHERS),
    )
    fsdp_sharding: str = field(
        default="full_shard",
        metadata=meta("FSDP: full_shard keeps only a shard of every weight between uses (ZeRO-3-like); shard_grad_op keeps "
                       "gathered weights from forward to backward (ZeRO-2-like, less communication).", "distribution",
                       advanced=True, choices=FSDP_SHARDINGS),
    )
    fsdp_cpu_offload: bool = field(
        default=False,
        metadata=meta("FSDP: keep the sharded weights, gradients and optimizer states in CPU memory (slower, far less GPU memory).",
                       "distribution", advanced=True),
    )
    fsdp_wrap_policy: str = field(
        default="transformer_layer",
        metadata=meta("FSDP: what one shard unit is: each decoder layer (transformer_layer), or blocks of at least "
                       "fsdp_min_params parameters (size).", "distribution", advanced=True, choices=FSDP_WRAP_POLICIES),
    )
    fsdp_min_params: int = field(
        default=100_000_000,
        metadata=meta("FSDP with the size wrap policy: parameters per shard unit.", "distribution", advanced=True, min=1, max=10**12),
    )
    zero_stage: int = field(
        default=2,
        metadata=meta("DeepSpeed ZeRO stage: 1 shards optimizer states, 2 also gradients, 3 also the weights.", "distribution",
                       advanced=True, choices=ZERO_STAGES),
    )
    zero_offload: str = field(
        default="none",
        metadata=meta("DeepSpeed: move optimizer states (ZeRO-Offload) or optimizer states and weights (ZeRO-Infinity, "
                       "stage 3 only) to CPU memory.", "distribution", advanced=True, choices=ZERO_OFFLOADS),
    )
    rendezvous_host: str = field(
        default="",
        metadata=meta("Multi-node: the address of node 0 that every node can reach (torchrun --master_addr). Not needed on one node.",
                       "distribution", advanced=True),
    )
    rendezvous_port: int = field(
        default=29500,
        metadata=meta("Multi-node: the TCP port on node 0 for the rendezvous (torchrun --master_port).", "distribution",
                       advanced=True, min=1024, max=65535),
    )

    # ---------------------------------------------------------------- tracking (experiment trackers, issue 13)
    report_to: list = field(
        default_factory=list,
        metadata=meta("Also log the run to these trackers, offline in the run folder: tensorboard, trackio, mlflow, wandb "
                       "(those installed; a missing one is a note). Empty = only the workbench's own metrics.", "system", advanced=True),
    )
    fault_injection: str = field(
        default="",
        metadata=meta("For tests only: 'error@N' raises an error, 'oom@N' a simulated CUDA out-of-memory error and 'kill@N' a "
                       "SIGKILL at step N; ':R' after N limits it to rank R (e.g. kill@2:1).", "debug", advanced=True),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_model()
        if not str(self.dataset).strip():
            raise ValueError("dataset: choose a training data file or folder")
        if self.replay_fraction > 0 and not str(self.replay_dataset).strip():
            raise ValueError("replay_dataset: name the replay data ('general' for the shipped set, or a file)")
        if self.replay_answered_by:
            try:
                ModelSource.from_dict(self.replay_answered_by)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"replay_answered_by: {exc}") from None
        if self.max_steps == 0 and self.num_epochs <= 0:
            raise ValueError("num_epochs: must be above 0 when max_steps is 0 (set one of them)")
        if set(LORA_FIELDS) <= set(method_info(self.method).fields):
            if not self.target_modules or not all(isinstance(m, str) and m.strip() for m in self.target_modules):
                raise ValueError("target_modules: name at least one layer, or 'all-linear'")
            if "all-linear" in self.target_modules and len(self.target_modules) > 1:
                raise ValueError("target_modules: 'all-linear' already covers every linear layer; list names or 'all-linear', not both")
        if self.method == "qlora" and self.precision == "fp32" and self.backend == "unsloth":
            raise ValueError("precision: Unsloth QLoRA computes in bf16 / fp16, not fp32")
        if self.merge_after and merge_refusal(self.method):
            raise ValueError(f"merge_after: {merge_refusal(self.method)}")
        if self.prompt_init_text.strip() and self.method != "prompt_tuning":
            raise ValueError("prompt_init_text: only prompt tuning starts from a text; clear it or choose method prompt_tuning")
        unknown = [t for t in self.report_to if t not in TRACKERS]
        if unknown:
            raise ValueError(f"report_to: unknown tracker(s) {', '.join(unknown)} (choose from {', '.join(TRACKERS)})")
        if self.fault_injection and not _FAULT.match(self.fault_injection):
            raise ValueError("fault_injection: expected 'error@N', 'oom@N' or 'kill@N' (N = the step), "
                             "optionally ':R' for one rank, or empty")
        self._check_distribution()
        self._check_objective()

    def _check_objective(self) -> None:
        """Rules of the objective fields; the dataset's shape is checked here when the file exists (the job checks it again)."""
        info = OBJECTIVE_TABLE[self.objective]
        if self.init_adapter.strip():
            if not self.uses_adapter:
                raise ValueError(f"init_adapter: continues a PEFT adapter, and method {self.method} trains the model's own weights; "
                                 "choose a LoRA-family method or clear init_adapter")
            self.init_adapter = str(resolve_init_adapter(self.init_adapter))  # a run id becomes its adapter path (the lineage reads it)
        self.rewards = self._checked_rewards()
        if info.data == "sft":
            return
        for name, reason in (("packing", "packs SFT rows"), ("replay_fraction", "mixes SFT rows")):
            if getattr(self, name):
                raise ValueError(f"{name}: {reason}; objective {self.objective} trains on preference pairs (turn it off)")
        if info.data == "prompts":
            return self._check_grpo()
        if self.precompute_ref_log_probs and not info.reference:
            raise ValueError(f"precompute_ref_log_probs: objective {self.objective} has no reference model")
        if self.uses_launcher:
            raise ValueError(f"objective: {self.objective} runs in one process here (distributed preference tuning is not wired yet)")
        fmt = self.preference_format()
        if fmt is None:
            return
        if fmt == "none":
            raise ValueError(f"dataset: objective {self.objective} needs preference data (prompt / chosen / rejected pairs"
                             f"{', or prompt / completion / label rows' if info.data == 'pairs_or_unpaired' else ''}); "
                             f"{self.dataset} has none")
        if fmt == "unpaired" and info.data == "pairs":
            raise ValueError(f"dataset: objective {self.objective} needs chosen / rejected pairs; {self.dataset} holds unpaired "
                             "prompt / completion / label rows, which only objective kto trains on")

    def _checked_rewards(self) -> dict:
        """rewards as core.rewards.RewardSpec reads it (a bare list is accepted), with every parameter filled in and checked."""
        try:
            return RewardSpec.from_dict(self.rewards).to_dict()
        except ValueError as exc:
            text = str(exc)
            raise ValueError(text if text.startswith("rewards") else f"rewards: {text}") from None

    def reward_spec(self):
        """The rewards as a core.rewards.RewardSpec (GRPO's reward functions are built from it)."""
        return RewardSpec.from_dict(self.rewards)

    def _check_grpo(self) -> None:
        """GRPO's rules: whole groups in a batch, room for the prompt, the user's code only when allowed."""
        rows = self.batch_size * self.gradient_accumulation
        if rows % self.num_generations:
            raise ValueError(f"num_generations: GRPO trains whole groups, so batch_size x gradient_accumulation ({self.batch_size} x "
                             f"{self.gradient_accumulation} = {rows} completions) must be a multiple of num_generations "
                             f"({self.num_generations}); e.g. batch_size {self.num_generations}")
        if self.max_completion_length >= self.max_length:
            raise ValueError(f"max_completion_length: {self.max_completion_length} leaves no room for the prompt within max_length "
                             f"{self.max_length} (the prompt and the completion share it); raise max_length or lower it")
        if self.precompute_ref_log_probs:
            raise ValueError("precompute_ref_log_probs: GRPO scores its own fresh samples at every step; there is nothing to precompute")
        spec = self.reward_spec()
        code = [i.name for i in spec.rewards if i.name == "python"]
        if code and not spec.allow_user_code:
            raise ValueError("rewards: the python reward runs your own code; it is refused unless you allow it (tick 'This code may "
                             "run on my machine', rewards.allow_user_code: true) or remove it")

    def preference_format(self) -> str | None:
        """"preference" / "unpaired" / "none" for the dataset file, or None when it cannot be read here (yet)."""
        path = resolve_data_path(self.dataset)
        if path.is_dir() and (path / "data.jsonl").is_file():
            path = path / "data.jsonl"
        if not path.is_file():
            return None
        try:
            return sniff_preference_format(path) or "none"
        except (OSError, ValueError):
            return None

    @property
    def init_adapter_path(self) -> Path | None:
        return Path(self.init_adapter) if self.init_adapter.strip() else None

    def waits_for(self) -> list[Path]:
        """Runs that must succeed before this one trains: the train run whose adapter init_adapter continues. The worker
        waits for one still unfinished, `queued` and without the exclusive lock (core.runs.worker), and fails if it ends otherwise."""
        run = init_adapter_run(self.init_adapter) if self.init_adapter.strip() else None
        return [run] if run is not None else []

    def _check_distribution(self) -> None:
        """Rules between the distribution fields that hold on any machine (core.train.distributed checks the hardware)."""
        if self.fsdp_cpu_offload and self.distributed_strategy != "fsdp":
            raise ValueError("fsdp_cpu_offload: applies only with distributed_strategy fsdp")
        if self.zero_offload != "none" and self.distributed_strategy != "deepspeed":
            raise ValueError("zero_offload: applies only with distributed_strategy deepspeed")
        if self.zero_offload == "optimizer_and_params" and self.zero_stage != 3:
            raise ValueError("zero_offload: weights can be offloaded only with zero_stage 3 (stages 1 and 2 keep every weight on "
                             "each GPU); choose 'optimizer' or zero_stage 3")
        if self.fault_rank is not None and self.fault_rank >= self.world_size:
            raise ValueError(f"fault_injection: rank {self.fault_rank} does not exist in a run of {self.world_size} processes")

    def _check_model(self) -> None:
        if not isinstance(self.model, dict):
            raise ValueError(f"model: expected a mapping like {{kind: embedded}}, got {self.model!r}")
        try:
            source = ModelSource.from_dict(self.model)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model: {exc}") from None
        if source.adapter:
            raise ValueError("model: training on top of an adapter is not supported; merge it first (Merge page) or choose the base model")

    # ---------------------------------------------------------------- helpers
    @property
    def model_source(self):
        return ModelSource.from_dict(self.model)

    @property
    def replay_model_source(self):
        """Whose answers replay 'general' rehearses: replay_answered_by, else the base model."""
        return ModelSource.from_dict(self.replay_answered_by) if self.replay_answered_by else self.model_source

    @property
    def uses_adapter(self) -> bool:
        """The result is a PEFT adapter folder (else a full model folder: full, partial, BitFit)."""
        return method_info(self.method).peft

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.gradient_accumulation

    @property
    def world_size(self) -> int:
        return self.processes_per_node * self.num_nodes

    @property
    def global_batch(self) -> int:
        """Rows per optimizer step over every process."""
        return self.effective_batch * self.world_size

    @property
    def uses_launcher(self) -> bool:
        """True when the worker starts torchrun / accelerate launch instead of training in its own process."""
        return self.world_size > 1 or self.distributed_strategy != "ddp"

    def fault(self) -> tuple[str, int] | None:
        match = _FAULT.match(self.fault_injection or "")
        return (match.group(1), int(match.group(2))) if match else None

    @property
    def fault_rank(self) -> int | None:
        """The one rank a fault is injected on ('kill@2:1' → 1), or None for every rank."""
        match = _FAULT.match(self.fault_injection or "")
        return int(match.group(3)) if match and match.group(3) is not None else None


def resolve_init_adapter(text: str) -> Path:
    """init_adapter as typed: a run id (its adapter/ folder), a run folder, or an adapter folder; ValueError naming it."""
    text = str(text).strip()
    candidates = [Path(text).expanduser()]
    if "/" not in text:
        candidates.insert(0, runs_dir() / text)
    for path in candidates:
        for folder in (path / "adapter", path):
            if (folder / "adapter_config.json").is_file():
                return folder.resolve()
    run = init_adapter_run(text)
    if run is not None:  # a train run of this workspace that has not written its adapter yet (the SFT of an SFT -> DPO chain)
        status = read_status(run)
        if not status.is_final:
            return (run / "adapter").resolve()  # the worker waits for the run to succeed (TrainSpec.waits_for)
        raise ValueError(f"init_adapter: run {run.name} ended {status.state} without an adapter"
                         + (f" ({status.error})" if status.error else "") + "; resume it or choose another run")
    raise ValueError(f"init_adapter: {text!r} is neither a run with an adapter nor an adapter folder (no adapter_config.json)")


def init_adapter_run(text: str) -> Path | None:
    """The train run folder of this workspace that init_adapter names (its id, its folder or its adapter/ path), or None."""
    text = str(text).strip()
    run_id = text if text and "/" not in text else source_run_of(text) if text else None
    folder = runs_dir() / run_id if run_id else None
    if folder is None or not (folder / "spec.yaml").is_file():
        return None
    try:
        return folder if read_spec_dict(folder).get("kind") == "train" else None
    except (OSError, ValueError):
        return None


# The one-click CPU demo (bench/demo_run.py): 12 steps of 8 demo rows at lr 1e-3 take the held-out JSON validity
# of the embedded 135M model from 0 to 100 % (the forgetting report's figure), in about two minutes on 2 cores
# under bf16 autocast; more steps only add minutes.
CPU_DEMO_STEPS = 12
CPU_DEMO_LEARNING_RATE = 1e-3


def hardware_defaults(hardware: Any, base: TrainSpec | None = None) -> TrainSpec:
    """A spec sized to this machine: a few-minute LoRA on CPU; a full epoch pass with checkpointing on a GPU."""
    base = base or TrainSpec()
    if getattr(hardware, "device", "cpu") == "cuda":
        return replace(base, batch_size=8, num_epochs=3.0, max_steps=0, gradient_checkpointing=True, eval_steps=20, logging_steps=5,
                       save_steps=100)
    # The demo rows are 148-174 tokens: max_length 256 keeps the memory estimate (which assumes full-length
    # batches) honest without cutting any row.
    return replace(base, batch_size=8, max_length=256, max_steps=CPU_DEMO_STEPS, learning_rate=CPU_DEMO_LEARNING_RATE, logging_steps=1,
                   eval_steps=0, save_steps=50)
