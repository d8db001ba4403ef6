"""GRPO on verifiable rewards (issue 28 item 4): TRL 1.16's GRPOTrainer built from a TrainSpec.

What it is: for each prompt the model samples `num_generations` completions (the group); every completion is scored by
the spec's rewards (core.rewards: JSON valid, field match, ...; their weighted sum is the reward); a completion's
advantage is its reward minus its group's mean (scaled by the group's std); the policy-gradient loss (TRL's loss_type,
`dapo` by default) raises the completions above their group's mean. beta 0 (TRL's default) keeps no reference model;
beta > 0 adds the KL to the starting model (with PEFT: the adapter as it started, a frozen copy TRL keeps beside it).

The model arrives loaded and wrapped exactly as for the other objectives (core.train.backends: LoRA / QLoRA / full,
init_adapter continuing an SFT run), the prompts from core.train.data.prepare_prompt_data ({prompt: messages,
reference}), the reward functions from core.rewards.trl_reward_functions. Every `completions_every` steps the sampled
completions of the newest generation batch are appended, with each reward and the advantage, to completions.jsonl in the
run folder (append-only JSON lines, the same writer as metrics.jsonl; the Train page shows the newest step's).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from core.data.masking import template_kwargs_for
from core.rewards import completion_text, trl_reward_functions
from core.runs.metrics import append_metrics, read_all_metrics
from core.train.data import PreparedData, to_hf_dataset
from core.train.spec import TrainSpec
from core.train.trainer import TokenCounter, _common_arguments

COMPLETIONS_FILE = "completions.jsonl"
PROMPT_CHARS = 400  # the completions table keeps the end of each prompt (its last user turn), not every system prompt


def grpo_arguments(spec: TrainSpec, run_dir: Path, *, device: str, bf16: bool, fp16: bool, report_to: list[str] | None = None,
                   reward_weights: list[float] | None = None) -> Any:
    """GRPOConfig from the spec: the shared training arguments plus the group, the sampling and the loss."""
    from trl import GRPOConfig

    common = _common_arguments(spec, run_dir, device=device, bf16=bf16, fp16=fp16, has_eval=False, report_to=report_to)
    return GRPOConfig(
        **common,
        beta=spec.beta,
        loss_type=spec.grpo_loss_type,
        num_generations=spec.num_generations,
        max_completion_length=spec.max_completion_length,
        temperature=spec.temperature,
        reward_weights=reward_weights,
        chat_template_kwargs=template_kwargs_for(spec.reasoning),  # thinking on / off for reasoning templates (strip = off)
        log_completions=False,  # TRL's table goes to parquet / rich / wandb; ours is completions.jsonl (see the trainer's log)
    )


def build_grpo_trainer(spec: TrainSpec, run_dir: Path, model: Any, tokenizer: Any, data: PreparedData, *, device: str, bf16: bool,
                       fp16: bool, callbacks: list, counter: TokenCounter | None = None, report_to: list[str] | None = None) -> Any:
    """The GRPOTrainer on the already-wrapped (PEFT / full) model; its reward functions are the spec's rewards."""
    from trl import GRPOTrainer

    counter = counter or TokenCounter()
    if data.chat_template:
        tokenizer.chat_template = data.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    funcs, weights = trl_reward_functions(spec.reward_spec(), count_tokens=count_tokens)
    args = grpo_arguments(spec, run_dir, device=device, bf16=bf16, fp16=fp16, report_to=report_to, reward_weights=weights)
    table = CompletionsTable(Path(run_dir) / COMPLETIONS_FILE, spec.completions_every, [f.__name__ for f in funcs], weights)

    class WorkbenchGRPOTrainer(GRPOTrainer):
        """Counts the prompt and completion tokens of every batch it trains on (for tokens/s), and appends the sampled
        completions with their rewards to completions.jsonl every completions_every steps."""

        def _prepare_inputs(self, generation_batch):
            inputs = super()._prepare_inputs(generation_batch)
            if self.model.training:
                completion = int(inputs["completion_mask"].sum())
                counter.tokens += int(inputs["prompt_mask"].sum()) + completion
                counter.supervised += completion
            return inputs

        def log(self, logs, start_time=None):
            training = self.model.training
            super().log(logs, start_time)
            if training and "loss" in logs and self.accelerator.is_main_process:
                table.maybe_write(self.state.global_step, self._logs)

    trainer = WorkbenchGRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=to_hf_dataset(data.train.features),
                                   processing_class=tokenizer, callbacks=callbacks)
    trainer.workbench_reference = "none" if spec.beta == 0 else ("frozen copy of the starting adapter" if hasattr(model, "peft_config")
                                                                 else "a second copy of the model")
    return trainer


class CompletionsTable:
    """completions.jsonl: one JSON line per sampled completion of a logged step, every `every` steps (and at step 1, so the
    first samples are there to compare with): step, prompt (its last user turn), completion, the weighted reward, each
    reward, the advantage and any reward's error on it."""

    def __init__(self, path: Path, every: int, labels: list[str], weights: list[float]):
        self.path, self.every, self.labels, self.weights = Path(path), int(every), labels, weights
        self.written_steps: set[int] = set()

    def due(self, step: int) -> bool:
        return self.every > 0 and step not in self.written_steps and (step == 1 or step % self.every == 0)

    def maybe_write(self, step: int, logs: dict) -> int:
        """Append the newest generation batch (TRL's trainer._logs) when `step` is due; the rows written."""
        if not self.due(step):
            return 0
        rows = completion_rows(step, logs, self.labels, self.weights)
        for row in rows:
            append_metrics(self.path, row)
        self.written_steps.add(step)
        return len(rows)


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def prompt_text(prompt: Any) -> str:
    """A prompt as the table shows it: the last user turn of a conversation (a plain prompt as is), cut to PROMPT_CHARS."""
    if isinstance(prompt, list):
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        prompt = users[-1] if users else (prompt[-1].get("content") if prompt and isinstance(prompt[-1], dict) else "")
    text = str(prompt or "")
    return text if len(text) <= PROMPT_CHARS else "…" + text[-PROMPT_CHARS:]


def completion_rows(step: int, logs: dict, labels: list[str], weights: list[float]) -> list[dict]:
    """The table rows of TRL's buffered logs (prompt, completion, rewards per function, advantages, extra columns)."""
    prompts, completions = list(logs.get("prompt") or []), list(logs.get("completion") or [])
    rewards = {label: list((logs.get("rewards") or {}).get(label) or []) for label in labels}
    advantages = list(logs.get("advantages") or [])
    extra = {k: list(v) for k, v in (logs.get("extra") or {}).items()}
    rows = []
    for i, completion in enumerate(completions):
        parts = {label: _finite(values[i]) if i < len(values) else None for label, values in rewards.items()}
        known = [(w, parts[label]) for label, w in zip(labels, weights) if parts[label] is not None]
        errors = {k: v[i] for k, v in extra.items() if i < len(v) and v[i]}
        rows.append({
            "step": step,
            "prompt": prompt_text(prompts[i] if i < len(prompts) else ""),
            "completion": completion_text(completion),
            "reward": sum(w * v for w, v in known) if known else None,
            "rewards": parts,
            "advantage": _finite(advantages[i]) if i < len(advantages) else None,
            **({"errors": errors} if errors else {}),
        })
    return rows


def read_completions(run_dir: Path, step: int | None = None) -> list[dict]:
    """completions.jsonl rows of a run: those of `step`, or of the newest step written (empty when there are none)."""
    rows = [r for r in read_all_metrics(Path(run_dir) / COMPLETIONS_FILE) if "completion" in r]
    if not rows:
        return []
    wanted = step if step is not None else max(int(r.get("step", 0)) for r in rows)
    return [r for r in rows if int(r.get("step", 0)) == wanted]
