"""On-policy distillation through TRL's GKD trainer (`trl.experimental.gkd`, Agarwal et al., 2024).

On each step, with probability λ (`lmbda`) the student writes its own answers to the batch's prompts (sampled at
`temperature`) and the teacher scores every token of them; otherwise the step uses the dataset's answers. The
loss is the generalised Jensen-Shannon divergence between the two next-token distributions (β: 0 = forward KL,
1 = reverse KL), on the answer tokens only. TRL computes it at T = 1 (its `temperature` is only the sampling one).

Every TRL call of on-policy distillation is here (those APIs move monthly). The batches come from our collator:
the masks are core.data.masking's (labels = -100 outside the trained answers), and the prompt that the student
continues is the chat template's inference prompt, left-padded as generation needs.
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from core.data.masking import IGNORE_INDEX

OUTPUT_DIR = "gkd"


def _gkd() -> Any:
    """trl.experimental.gkd, imported on purpose (its "experimental" warning silenced: the pin is in requirements.txt)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental import gkd

    return gkd


@dataclass(frozen=True)
class GKDSettings:
    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    lmbda: float
    beta: float
    temperature: float
    max_new_tokens: int
    max_length: int
    seed: int
    bf16: bool = False  # bf16 autocast over fp32 weights (the Train job's rule, core.distill.job.bf16_autocast)
    gradient_checkpointing: bool = False


@dataclass
class GKDCollator:
    """Right-padded input_ids / labels / attention_mask (the dataset's answers) and the left-padded prompt."""

    pad_token_id: int

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        prompt_width = max(len(e["prompt_ids"]) for e in examples)

        def right(key: str, value: int) -> Any:
            return torch.tensor([list(e[key]) + [value] * (width - len(e[key])) for e in examples], dtype=torch.long)

        return {
            "input_ids": right("input_ids", self.pad_token_id),
            "labels": right("labels", IGNORE_INDEX),
            "attention_mask": torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in examples]),
            "prompts": torch.tensor([[self.pad_token_id] * (prompt_width - len(e["prompt_ids"])) + list(e["prompt_ids"])
                                     for e in examples]),
            "prompt_attention_mask": torch.tensor([[0] * (prompt_width - len(e["prompt_ids"])) + [1] * len(e["prompt_ids"])
                                                   for e in examples]),
        }


def generalized_jsd(student_logits: Any, teacher_logits: Any, labels: Any, beta: float, num_items_in_batch: Any = None) -> Any:
    """TRL's generalised JSD on already shifted logits (batch, seq, vocab), averaged over the labelled positions (or
    summed and divided by num_items_in_batch, as TRL does when given it). Only those positions go to TRL (the same
    number, and the same gradient): TRL masks after computing its vocabulary-wide terms at every position, padding and
    prompts included (~25 s for 8 held-out rows on a CPU; half of each training step's time)."""
    mask = labels != IGNORE_INDEX
    return _gkd().GKDTrainer.generalized_jsd_loss(student_logits[mask], teacher_logits[mask], beta=beta,
                                                  num_items_in_batch=num_items_in_batch)


def gkd_config(settings: GKDSettings, output_dir: Path, device: str) -> Any:
    return _gkd().GKDConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=settings.batch_size,
        max_steps=settings.steps,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=settings.warmup_steps,
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="no",  # the distill job saves the student itself
        seed=settings.seed,
        data_seed=settings.seed,
        lmbda=settings.lmbda,
        beta=settings.beta,
        temperature=settings.temperature,
        max_new_tokens=settings.max_new_tokens,
        max_length=settings.max_length,
        use_cpu=device == "cpu",
        bf16=settings.bf16,
        # TRL's SFTConfig (GKDConfig's parent) turns checkpointing on by default, and GKD then generates the student's
        # answers without a KV cache: 0.3 s per token on the embedded half-depth student instead of ~0.03 s.
        gradient_checkpointing=settings.gradient_checkpointing,
        fp16=False,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataset_kwargs={"skip_prepare_dataset": True},  # tokenized and masked by core.data.masking
    )


def train_on_policy(student: Any, teacher: Any, tokenizer: Any, features: list[dict], settings: GKDSettings, *,
                    run_dir: Path, device: str, on_step: Callable[[dict], None], should_stop: Callable[[], bool]) -> dict:
    """Train `student` in place with GKD; on_step gets one metrics row per optimizer step. Returns the totals."""
    from datasets import Dataset
    from transformers import TrainerCallback

    GKDTrainer = _gkd().GKDTrainer  # noqa: N806 - the class, named as TRL names it

    counts = {"on_policy_steps": 0, "generated_tokens": 0, "tokens": 0}

    class WorkbenchGKD(GKDTrainer):
        def generate_on_policy_outputs(self, model, inputs, generation_config):  # noqa: D102 - counts, then TRL's own
            ids, mask, labels = GKDTrainer.generate_on_policy_outputs(model, inputs, generation_config)
            counts["on_policy_steps"] += 1
            counts["generated_tokens"] += int((labels != IGNORE_INDEX).sum())
            return ids, mask, labels

        def compute_loss(self, model, inputs, *args, **kwargs):
            counts["tokens"] += int(inputs["attention_mask"].sum())
            return super().compute_loss(model, inputs, *args, **kwargs)

        @staticmethod
        def generalized_jsd_loss(student_logits, teacher_logits, labels=None, beta=0.5, temperature=1.0, reduction="batchmean",
                                 num_items_in_batch=None):  # TRL's loss on the labelled positions only (generalized_jsd)
            if labels is None or temperature != 1.0 or reduction != "batchmean":
                return GKDTrainer.generalized_jsd_loss(student_logits, teacher_logits, labels, beta, temperature, reduction,
                                                       num_items_in_batch)
            return generalized_jsd(student_logits, teacher_logits, labels, beta, num_items_in_batch)

    class Report(TrainerCallback):
        started = time.time()
        on_policy_before = 0
        was_on_policy = False

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.time()

        def on_step_begin(self, args, state, control, **kwargs):
            self.on_policy_before = counts["on_policy_steps"]

        def on_step_end(self, args, state, control, **kwargs):
            self.was_on_policy = counts["on_policy_steps"] > self.on_policy_before
            if should_stop():
                control.should_training_stop = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                elapsed = time.time() - self.started
                on_step({"step": state.global_step, "loss": float(logs["loss"]), "lr": float(logs.get("learning_rate", 0.0)),
                         "grad_norm": float(logs["grad_norm"]) if logs.get("grad_norm") is not None else None,
                         "on_policy": self.was_on_policy, "on_policy_steps": counts["on_policy_steps"],
                         "tokens_per_s": round(counts["tokens"] / elapsed, 2) if elapsed > 0 else 0.0})

    random.seed(settings.seed)  # GKD draws "student answers this step?" from Python's random
    student.config.use_cache = True
    trainer = WorkbenchGKD(
        model=student,
        teacher_model=teacher,
        args=gkd_config(settings, Path(run_dir) / OUTPUT_DIR, device),
        train_dataset=Dataset.from_list([{k: f[k] for k in ("input_ids", "labels", "prompt_ids")} for f in features]),
        processing_class=tokenizer,
        data_collator=GKDCollator(pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        callbacks=[Report()],
    )
    trainer.train()
    return {"steps_done": int(trainer.state.global_step), **counts}
