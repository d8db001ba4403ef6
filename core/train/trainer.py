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
from core.runs.jobs import read_spec_dict
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


def resume_estimate_spec(run_dir: str | Path, more_steps: int = 0) -> dict:
    """What core.runs.eta's `resume` estimate reads: the run folder (its own pace is in its metrics), the step of its
    newest checkpoint (where a resume restarts) and its step target: the spec's, or `more_steps` past that checkpoint
    ("train N more", the target core.train.continue_updates sets)."""
    done = checkpoint_step(latest_checkpoint(Path(run_dir)))
    target = {"max_steps": done + int(more_steps)} if more_steps else {}
    return {**read_spec_dict(run_dir), "run_dir": str(run_dir), "from_step": done, **target}


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

    def add_preference(self, inputs: dict) -> None:
        """A preference batch: every attention-masked token is a real token; the scored (completion) ones are supervised."""
        for key, value in inputs.items():
            if key.endswith("attention_mask") and hasattr(value, "sum"):
                self.tokens += int(value.sum())
            elif key.endswith("completion_mask") and hasattr(value, "sum"):
                self.supervised += int(value.sum())

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
            rank = ctx.rank  # None: the only process of the run
            self.distributed = bool(rank and rank.distributed)
            self.fault = spec.fault() if spec.fault_rank in (None, rank.rank if rank else 0) else None
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

                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB "
                                                 f"(simulated by fault_injection at step {step})")
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
                evaluated = objective_metrics({k.removeprefix("eval_"): v for k, v in logs.items() if k.startswith("eval_")})
                self.last_eval = {**base, "eval_loss": float(logs["eval_loss"]), **{f"eval_{k}": v for k, v in evaluated.items()}}
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
            row.update(objective_metrics(logs))
            if self.distributed:
                row["rank_tokens_per_s"] = round(counter.tokens / elapsed, 2) if elapsed > 0 else 0.0
            self.last_row = row
            ctx.metrics(**row)

    return WorkbenchCallback()


PAIR_ACCURACY = "pair_accuracy"  # eval only: the share of all eval pairs whose chosen reward beats the rejected one
PREFERENCE_METRIC_PREFIXES = ("rewards/", "logps/", "logits/", "log_odds")
PREFERENCE_METRIC_KEYS = ("kl", "nll_loss", PAIR_ACCURACY)
# GRPO's (core.train.grpo): the reward and its std, rewards/<label>/mean|std (the prefix above), the zero-std share,
# completion lengths, the policy ratio's clip ratios, the entropy of the sampled tokens and the rewards' error shares.
GRPO_METRIC_PREFIXES = ("completions/", "clip_ratio/", "reward_errors/")
GRPO_METRIC_KEYS = ("reward", "reward_std", "frac_reward_zero_std", "entropy")


def objective_metrics(logs: dict) -> dict:
    """TRL's own metrics of a preference objective (rewards/*, logps/*, logits/*, KTO's kl, ORPO's nll_loss / log_odds_*)
    or of GRPO (those above, recognised by its "reward"), passed through into the metrics row under TRL's names; SFT logs
    none of them."""
    grpo = "reward" in logs
    prefixes = PREFERENCE_METRIC_PREFIXES + (GRPO_METRIC_PREFIXES if grpo else ())
    keys = PREFERENCE_METRIC_KEYS + (GRPO_METRIC_KEYS if grpo else ())
    return {k: _float(v) for k, v in logs.items() if isinstance(k, str) and (k.startswith(prefixes) or k in keys)}


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

    return SFTConfig(
        **_common_arguments(spec, run_dir, device=device, bf16=bf16, fp16=fp16, has_eval=has_eval, report_to=report_to),
        remove_unused_columns=False,  # keep position_ids of packed rows
        dataset_kwargs={"skip_prepare_dataset": True},  # already tokenized and masked by core.data.masking
        max_length=spec.max_length,
        packing=False,  # packing, when asked, is done by core.train.data (same labels, position ids per row)
    )


def _common_arguments(spec: TrainSpec, run_dir: Path, *, device: str, bf16: bool, fp16: bool, has_eval: bool,
                      report_to: list[str] | None = None) -> dict:
    """The transformers TrainingArguments every objective shares (SFT and the preference trainers)."""
    evaluate_during = has_eval and spec.eval_steps > 0
    return dict(
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


# ---------------------------------------------------------------- preference objectives (issue 27)


def preference_arguments(spec: TrainSpec, run_dir: Path, *, device: str, bf16: bool, fp16: bool, has_eval: bool,
                         report_to: list[str] | None = None) -> Any:
    """DPOConfig / KTOConfig / ORPOConfig / CPOConfig (SimPO) from the spec's objective fields."""
    common = _common_arguments(spec, run_dir, device=device, bf16=bf16, fp16=fp16, has_eval=has_eval, report_to=report_to)
    common["max_length"] = spec.max_length
    if spec.objective == "dpo":
        from trl import DPOConfig

        losses, weights = [spec.dpo_loss_type], [1.0]
        if spec.sft_weight > 0:  # the chosen answers' NLL beside the preference loss: keeps the chosen reward from falling too
            losses, weights = losses + ["sft"], weights + [spec.sft_weight]
        return DPOConfig(**common, beta=spec.beta, loss_type=losses, loss_weights=weights, label_smoothing=spec.label_smoothing,
                         precompute_ref_log_probs=spec.precompute_ref_log_probs)
    if spec.objective == "kto":
        from trl import KTOConfig

        return KTOConfig(**common, beta=spec.beta, desirable_weight=spec.desirable_weight, undesirable_weight=spec.undesirable_weight,
                         precompute_ref_log_probs=spec.precompute_ref_log_probs)
    if spec.objective == "orpo":
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig(**common, beta=spec.beta)
    if spec.objective == "simpo":
        from trl.experimental.cpo import CPOConfig

        # SimPO is CPO's loss_type "simpo" with cpo_alpha 0 (no NLL term), as TRL documents it.
        return CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, beta=spec.beta, simpo_gamma=spec.simpo_gamma,
                         label_smoothing=spec.label_smoothing)
    raise ValueError(f"objective: {spec.objective!r} is not a preference objective")


def build_preference_trainer(spec: TrainSpec, run_dir: Path, model: Any, tokenizer: Any, data: PreparedData, *,
                             device: str, bf16: bool, fp16: bool, callbacks: list, counter: TokenCounter | None = None,
                             report_to: list[str] | None = None) -> Any:
    """The TRL preference trainer for spec.objective on the already-wrapped (PEFT / full) model.

    The rows go to TRL in its conversational form ({prompt, chosen, rejected} or {prompt, completion, label} message
    lists) and TRL tokenises them: its preference trainers build prompt / chosen / rejected ids and masks of their own
    (DPOTrainer re-tokenises every row, with no skip_prepare_dataset, and scores the tokens after the shared prompt), so
    our masking's input_ids / labels cannot be handed over. What keeps it the Template page's view: the tokenizer
    carries the run's chat template (core.train.data.choose_chat_template), so TRL renders the same text, and the answer
    tokens it scores are those encode_pair trains (the last assistant turn and its end-of-turn). With a PEFT model and no
    ref_model, TRL scores the reference with a frozen copy of the adapter as it started (the base when the adapter is
    fresh, the SFT adapter when continuing): no second model."""
    counter = counter or TokenCounter()
    if data.chat_template:
        tokenizer.chat_template = data.chat_template
    args = preference_arguments(spec, run_dir, device=device, bf16=bf16, fp16=fp16, has_eval=data.eval is not None, report_to=report_to)
    if spec.objective == "dpo":
        from trl import DPOTrainer as Base
    elif spec.objective == "kto":
        from trl import KTOTrainer as Base
    elif spec.objective == "orpo":
        from trl.experimental.orpo import ORPOTrainer as Base
    else:
        from trl.experimental.cpo import CPOTrainer as Base

    tally = PairTally()

    class WorkbenchPreferenceTrainer(Base):
        """Counts the tokens of every batch it trains on (for tokens/s), and logs eval_pair_accuracy at each eval."""

        eval_pair_tally = tally

        def training_step(self, *args, **kwargs):
            inputs = args[1] if len(args) > 1 else kwargs["inputs"]
            counter.add_preference(inputs)
            return super().training_step(*args, **kwargs)

        def evaluation_loop(self, *args, **kwargs):
            tally.reset()
            return super().evaluation_loop(*args, **kwargs)

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            store = _eval_accuracy_store(self)
            before = len(store) if store is not None else 0
            result = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
            store = _eval_accuracy_store(self)
            if store is not None and len(store) > before:
                tally.add(float(store[-1]), _pairs_in(inputs))
            return result

        def log(self, logs, *args, **kwargs):
            if "eval_loss" in logs and tally.pairs:
                logs[f"eval_{PAIR_ACCURACY}"] = tally.accuracy
                tally.reset()
            return super().log(logs, *args, **kwargs)

    kwargs: dict = {"ref_model": None} if spec.objective in ("dpo", "kto") else {}
    return WorkbenchPreferenceTrainer(
        model=model,
        args=args,
        train_dataset=to_hf_dataset(data.train.features),
        eval_dataset=to_hf_dataset(data.eval.features) if data.eval else None,
        processing_class=tokenizer,
        callbacks=callbacks,
        **kwargs,
    )


@dataclass
class PairTally:
    """Correct pairs over all pairs of one evaluation. TRL 1.16 logs eval_rewards/accuracies as the mean of the per-batch
    means (DPOTrainer.log averages self._metrics["eval"]; ORPO / CPO average their stored metrics the same way), which
    over-weights a short last batch: 5 eval pairs at batch size 2 weigh the last pair 1/3, not 1/5. A batch's mean over
    its n pairs of 0 / 1 verdicts is k / n, so round(mean * n) recovers its k exactly (one process: preference runs are
    refused under a launcher, see TrainSpec)."""

    correct: int = 0
    pairs: int = 0

    def add(self, batch_mean: float, pairs: int) -> None:
        self.correct += round(batch_mean * pairs)
        self.pairs += pairs

    def reset(self) -> None:
        self.correct = self.pairs = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.pairs if self.pairs else 0.0


def _eval_accuracy_store(trainer: Any) -> list | None:
    """The list TRL appends each eval batch's reward accuracy to: DPO's _metrics, ORPO / CPO's _stored_metrics."""
    metrics = getattr(trainer, "_metrics", None)
    if isinstance(metrics, dict) and "eval" in metrics:
        return metrics["eval"].get("rewards/accuracies")
    stored = getattr(trainer, "_stored_metrics", None)
    if isinstance(stored, dict) and "eval" in stored:
        return stored["eval"].get("eval_rewards/accuracies")
    return None


def _pairs_in(inputs: dict) -> int:
    """Pairs in one preference batch: ORPO / CPO carry chosen_input_ids; DPO stacks [chosen; rejected] in input_ids."""
    if "chosen_input_ids" in inputs:
        return len(inputs["chosen_input_ids"])
    return len(inputs["input_ids"]) // 2
