"""Build the TRL trainer from a spec, and the callback that turns its events into the run's metrics.

Every TRL / transformers Trainer call of the workbench lives here (those APIs move monthly). The dataset
arrives already tokenized by `core.train.data` and is given to `SFTTrainer` with `skip_prepare_dataset`
and our padding collator, so the labels the model sees are exactly the masking module's.
"""
from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.data.masking import IGNORE_INDEX
from core.train.data import PadCollator, PreparedData, to_hf_dataset
from core.train.distributed import all_ranks_sum, any_rank, trainer_distribution_kwargs
from core.train.spec import TrainSpec
from core.train.tracking import PROJECT as TRACKER_PROJECT

CHECKPOINTS = "checkpoints"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


# ---------------------------------------------------------------- checkpoints


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete HF Trainer checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    found = []
    for path in root.glob("checkpoint-*") if root.is_dir() else []:
        match = _CHECKPOINT.match(path.name)
        if match and (path / "trainer_state.json").is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def checkpoint_step(path: Path | None) -> int:
    match = _CHECKPOINT.match(path.name) if path else None
    return int(match.group(1)) if match else 0


# ---------------------------------------------------------------- measurements


def _proc_status_bytes(key: str) -> int:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> None:
    """Start VmHWM again from the current resident size (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def import_training_stack() -> None:
    """Import transformers / PEFT / TRL / datasets before the memory baseline: their import is not training memory."""
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401
    from trl import SFTConfig, SFTTrainer  # noqa: F401 - TRL's lazy module imports the trainer here


class MemoryProbe:
    """Peak memory of the training: CUDA max allocated, or on CPU the process high-water mark (VmHWM)
    above the resident size measured before the model was loaded."""

    def __init__(self, device: str):
        self.device = device
        self.baseline = 0
        if device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            _reset_peak_rss()
            self.baseline = _proc_status_bytes("VmRSS")

    def peak(self) -> int:
        if self.device == "cuda":
            import torch

            return int(torch.cuda.max_memory_allocated())
        return max(0, _proc_status_bytes("VmHWM") - self.baseline)


@dataclass
class TokenCounter:
    """Tokens that went through training_step this session: all real tokens, and those with a label."""

    tokens: int = 0
    supervised: int = 0

    def add(self, inputs: dict) -> None:
        labels = inputs["labels"]
        self.supervised += int((labels != IGNORE_INDEX).sum())
        if "packed_seq_lengths" in inputs:  # one flattened row without padding (Unsloth's packed form)
            self.tokens += int(inputs["packed_seq_lengths"].sum())
        elif "attention_mask" in inputs:
            self.tokens += int(inputs["attention_mask"].sum())
        elif "position_ids" in inputs:  # packed rows: padding sits after the last position > 0 of each row
            moving = inputs["position_ids"] > 0
            width = moving.shape[1]
            last = width - 1 - moving.flip(-1).int().argmax(-1)
            self.tokens += int(((last + 1) * moving.any(-1)).sum())
        else:
            self.tokens += int(inputs["input_ids"].numel())


# ---------------------------------------------------------------- callback


def _trainer_callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


def make_callback(ctx: Any, spec: TrainSpec, probe: MemoryProbe, counter: TokenCounter) -> Any:
    """The TrainerCallback that writes metrics rows, honours Stop, forces the final checkpoint and injects faults."""

    class WorkbenchCallback(_trainer_callback_base()):
        def __init__(self) -> None:
            self.started = time.time()
            self.first_step = 0
            rank = getattr(getattr(ctx, "rank", None), "rank", 0)
            self.distributed = getattr(getattr(ctx, "rank", None), "distributed", False)
            self.fault = spec.fault() if spec.fault_rank in (None, rank) else None
            self.last_row: dict = {}
            self.last_eval: dict = {}
            self.rows_written = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.time()
            self.first_step = state.global_step
            ctx.metrics(event="start", step=state.global_step, total_steps=state.max_steps,
                        epochs=float(args.num_train_epochs), resumed_from=state.global_step)
            ctx.progress(state.global_step / max(1, state.max_steps), f"step {state.global_step}/{state.max_steps}")

        def on_step_begin(self, args, state, control, **kwargs):
            if self.fault and state.global_step + 1 == self.fault[1]:
                kind, step = self.fault
                if kind == "kill":
                    ctx.log.info("fault_injection: SIGKILL at step %d", step)
                    os.kill(os.getpid(), signal.SIGKILL)
                if kind == "oom":
                    import torch

                    raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB (simulated by fault_injection at step {step})")
                raise RuntimeError(f"injected failure at step {step} (fault_injection)")

        def on_step_end(self, args, state, control, **kwargs):
            if any_rank(ctx.stop_requested):  # every rank must stop after the same step (the save is collective)
                ctx.log.info("stop requested: saving a checkpoint at step %d", state.global_step)
                control.should_training_stop = True
                control.should_save = True
            if state.global_step >= state.max_steps:
                control.should_save = True  # the final checkpoint, so "train N more" can continue from it
            eta = self.eta(state)
            message = f"step {state.global_step}/{state.max_steps}" + (f" · ETA {eta:.0f} s" if eta is not None else "")
            ctx.progress(state.global_step / max(1, state.max_steps), message)
            return control

        def eta(self, state) -> float | None:
            done = state.global_step - self.first_step
            if done <= 0:
                return None
            return (time.time() - self.started) / done * max(0, state.max_steps - state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            elapsed = time.time() - self.started
            base = {"step": state.global_step, "epoch": round(float(logs.get("epoch", state.epoch or 0.0)), 4)}
            if "eval_loss" in logs:
                self.last_eval = {**base, "eval_loss": float(logs["eval_loss"])}
                ctx.metrics(**self.last_eval, elapsed_s=round(elapsed, 2))
                return
            if "loss" not in logs:
                return  # the end-of-training summary; the run card has it
            tokens, supervised = all_ranks_sum([counter.tokens, counter.supervised])  # every rank logs the same steps
            row = {
                **base,
                "loss": float(logs["loss"]),
                "learning_rate": float(logs.get("learning_rate", 0.0)),
                "grad_norm": _float(logs.get("grad_norm")),
                "mean_token_accuracy": _float(logs.get("mean_token_accuracy")),
                "tokens_per_s": round(tokens / elapsed, 2) if elapsed > 0 else 0.0,
                "supervised_tokens_per_s": round(supervised / elapsed, 2) if elapsed > 0 else 0.0,
                "tokens_seen": int(tokens),
                "peak_memory_bytes": probe.peak(),
                "elapsed_s": round(elapsed, 2),
                "eta_s": _round(self.eta(state)),
            }
            if self.distributed:
                row["rank_tokens_per_s"] = round(counter.tokens / elapsed, 2) if elapsed > 0 else 0.0
            self.last_row = row
            ctx.metrics(**row)

    return WorkbenchCallback()


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# ---------------------------------------------------------------- trainer


def training_arguments(spec: TrainSpec, run_dir: Path, *, device: str, bf16: bool, fp16: bool, has_eval: bool,
                       report_to: list[str] | None = None) -> Any:
    from trl import SFTConfig

    evaluate_during = has_eval and spec.eval_steps > 0
    return SFTConfig(
        output_dir=str(Path(run_dir) / CHECKPOINTS),
        per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation,
        learning_rate=spec.learning_rate,
        lr_scheduler_type=spec.lr_scheduler,
        warmup_steps=spec.warmup_ratio,  # a float in [0, 1) is a share of the total steps
        num_train_epochs=spec.num_epochs,
        max_steps=spec.max_steps if spec.max_steps > 0 else -1,
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm,
        logging_strategy="steps",
        logging_steps=spec.logging_steps,
        eval_strategy="steps" if evaluate_during else "no",
        eval_steps=spec.eval_steps if evaluate_during else None,
        eval_on_start=False,  # the job measures the starting eval loss itself, once, not on every resume
        save_strategy="steps",
        save_steps=spec.save_steps,
        save_total_limit=spec.save_total_limit,
        seed=spec.seed,
        data_seed=spec.seed,
        gradient_checkpointing=spec.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=bf16,
        fp16=fp16,
        use_cpu=device == "cpu",
        report_to=list(report_to) if report_to else "none",  # resolved by core.train.tracking (installed ones only)
        project=TRACKER_PROJECT,  # transformers' TrackioCallback calls trackio.init(project=args.project)
        disable_tqdm=True,
        remove_unused_columns=False,  # keep position_ids of packed rows
        dataset_kwargs={"skip_prepare_dataset": True},  # already tokenized and masked by core.data.masking
        max_length=spec.max_length,
        packing=False,  # packing, when asked, is done by core.train.data (same labels, position ids per row)
        dataloader_num_workers=0,
        dataloader_pin_memory=device == "cuda",
        **trainer_distribution_kwargs(spec, device),  # ddp backend, FSDP2 / DeepSpeed config for launched ranks
    )


def model_loss_instead_of_trl(device: str) -> bool:
    """Off CUDA the job uses the model's own loss instead of TRL's fused LM head. TRL 1.15's fused head needs a
    Triton kernel; TRL 1.16 folds it in plain torch off CUDA, a whole 4096-token x 32768-vocabulary tile at a time
    with about five fp32 copies of the tile alive at once (bench/memory_calibration.py measured the job 24 % above
    its estimate that way). The model's loss holds the logits once (12 bytes per element, what core.memory
    counts); TRL's per-step entropy / token accuracy are not logged then."""
    return device != "cuda"


def build_trainer(spec: TrainSpec, run_dir: Path, model: Any, tokenizer: Any, data: PreparedData, *,
                  device: str, bf16: bool, fp16: bool, callbacks: list, counter: TokenCounter | None = None,
                  backend: str = "hf", report_to: list[str] | None = None) -> Any:
    from trl import SFTTrainer

    counter = counter or TokenCounter()
    plain_loss = model_loss_instead_of_trl(device)

    class WorkbenchTrainer(SFTTrainer):
        """SFTTrainer that counts the tokens of every batch it trains on (for tokens/s)."""

        def training_step(self, *args, **kwargs):
            inputs = args[1] if len(args) > 1 else kwargs["inputs"]
            counter.add(inputs)
            return super().training_step(*args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not plain_loss:
                return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            # The model's own causal-LM loss on the same labels (transformers' Trainer.compute_loss, the class TRL
            # extends): see model_loss_instead_of_trl for when.
            from transformers import Trainer

            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    args = training_arguments(spec, run_dir, device=device, bf16=bf16, fp16=fp16, has_eval=data.eval is not None, report_to=report_to)
    return WorkbenchTrainer(
        model=model,
        args=args,
        train_dataset=to_hf_dataset(data.train.features),
        eval_dataset=to_hf_dataset(data.eval.features) if data.eval else None,
        processing_class=tokenizer,
        data_collator=PadCollator(pad_token_id=tokenizer.pad_token_id, flatten_packed=backend == "unsloth"),
        callbacks=callbacks,
    )
