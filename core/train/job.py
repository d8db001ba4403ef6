"""The "train" job: `python -m core.runs.worker runs/<id>` with a TrainSpec in spec.yaml.

Order of work: validate the spec, pick the backend (importing Unsloth first when it wins), tokenize and
lint the data (refuse before any model is loaded if nothing would be trained), load the model, measure the
starting eval loss, train (resuming from the newest checkpoint of this run folder if there is one), then
save the adapter (or full model), the optional merged model and the run card.
"""
from __future__ import annotations

import gc
import os
import shutil
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import core.hardware
from core.data.masking import REASONING_TOKENIZER_KEY
from core.data.replay import SHIPPED, missing_answers_message, needs_answers, prepare_answers, uses_shipped_answers
from core.download import ensure_weights
from core.models import ModelLoadError, load_model, load_tokenizer, merge_adapter_weights, save_model
from core.runs.allocator import tune_cpu_allocator
from core.runs.card import source_run_of
from core.runs.errors import explain_failure, is_out_of_memory
from core.runs.jobs import JobContext, JobError
from core.runs.metrics import read_all_metrics, whole_run_figures
from core.runs.spec import spec_to_dict
from core.runs.status import METRICS_FILE
from core.train.backends import (
    FallBack,
    activate,
    choose_backend,
    choose_precision,
    fallback_backend,
    fallback_from_env,
    load_with_fallback,
    tokenizer_differences,
)
from core.train.data import DataError, PreparedData, prepare_data
from core.train.distributed import (
    RankInfo,
    all_ranks_gather,
    all_ranks_sum,
    barrier,
    in_launched_process,
    strategy_label,
)
from core.train.grpo import build_grpo_trainer
from core.train.methods import trainable_counts
from core.train.preflight import predict_memory, training_refusal
from core.train.spec import TrainSpec
from core.train.supervisor import relaunch_with_fallback, supervise
from core.train.tracking import resolve as resolve_trackers
from core.train.trainer import (
    MemoryProbe,
    TokenCounter,
    build_preference_trainer,
    build_trainer,
    checkpoint_step,
    import_training_stack,
    latest_checkpoint,
    make_callback,
)
from core.workspace import atomic_write_dir, folder_bytes

ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
MERGED_DIR = "merged"
BACKEND_FILE = "backend.json"


@dataclass
class Training:
    """What the steps of one training attempt hand to each other, in the order they fill it."""

    ctx: JobContext
    spec: TrainSpec
    hardware: Any
    rank: RankInfo
    started: float = field(default_factory=time.time)
    fallback: dict | None = None  # this process is the fresh one a failed Unsloth attempt relaunched
    backend: Any = None
    notes: list[str] = field(default_factory=list)
    probe: MemoryProbe | None = None
    replay_answers: dict | None = None
    data: PreparedData | None = None
    data_tokenizer: Any = None
    model: Any = None
    tokenizer: Any = None
    trainable: int = 0
    total: int = 0
    precision: Any = None
    resume: Path | None = None
    counter: TokenCounter = field(default_factory=TokenCounter)
    callback: Any = None
    trackers: list[str] = field(default_factory=list)
    tracker_notes: list[str] = field(default_factory=list)
    trainer: Any = None
    previous: dict = field(default_factory=dict)  # the card of the attempt this one continues
    eval_start: float | None = None
    eval_end: float | None = None
    output: Any = None
    train_seconds: float = 0.0
    stopped: bool = False
    outputs: dict = field(default_factory=dict)
    tokens: int = 0  # summed over every rank
    supervised: int = 0
    peaks: list = field(default_factory=list)  # each rank's peak memory


STOPPED_BEFORE_TRAINING = {"global_step": 0, "note": "stopped before training started"}


def run(ctx: JobContext) -> dict:
    """setup → data → load → trainer → train → save → card (+ merge); each step is a function below, in that order."""
    spec: TrainSpec = ctx.spec
    hardware = core.hardware.detect()
    if spec.uses_launcher and not in_launched_process():
        _replay_answers(spec, ctx)  # the ranks find the base model's replay answers cached
        return supervise(ctx, spec, hardware)  # this worker starts torchrun / accelerate and watches the ranks
    t = Training(ctx, spec, hardware, rank=ctx.rank or RankInfo())
    try:
        _setup(t)
        if ctx.stop_requested:
            return dict(STOPPED_BEFORE_TRAINING)
        _prepare_data(t)
        if ctx.stop_requested:
            return dict(STOPPED_BEFORE_TRAINING)
        _load(t)
    except FallBack as exc:
        t.data = t.data_tokenizer = None
        return _relaunch(ctx, spec, hardware, exc)
    _build_trainer(t)
    _train(t)
    _save(t)
    _tally(t)
    if not t.rank.is_main:
        return {"rank": t.rank.rank, "global_step": int(t.trainer.state.global_step)}
    card = _card(t)
    t.trainer = t.model = None
    _free_memory()
    if spec.merge_after and spec.uses_adapter and not t.stopped:
        ctx.progress(1.0, "merging the adapter into the base model")
        card["outputs"]["merged"] = str(merge_adapter(spec, Path(t.outputs["adapter"]), ctx.run_dir / MERGED_DIR, t.data.chat_template))
    ctx.write_result(card)
    final = card["final_metrics"]
    return {
        "global_step": final["global_step"],
        "final_loss": final.get("loss"),
        "eval_loss": final.get("eval_loss"),
        "tokens_per_s": card["tokens_per_s"],
        "peak_memory_bytes": card["peak_memory_bytes"],
        **{k: v for k, v in t.outputs.items() if k != "checkpoint"},
    }


def _setup(t: Training) -> None:
    """Refusals, the backend (Unsloth imported first when it wins; FallBack when it cannot), the allocator, the
    training stack's imports, and the base model's replay answers."""
    spec, hardware, ctx = t.spec, t.hardware, t.ctx
    refusal = training_refusal(spec, hardware, launching_here=False)
    if refusal:
        raise JobError(refusal)
    t.fallback = fallback_from_env()
    try:
        if t.fallback:
            t.backend, t.notes = fallback_backend(t.fallback)
        else:
            t.backend, t.notes = choose_backend(spec, hardware)
            activate(t.backend, spec, hardware)
    except ValueError as exc:
        raise JobError(str(exc)) from None
    t.notes += _dropout_notes(spec, t.backend)
    for note in t.notes:
        ctx.log.info(note)
    ctx.log.info("backend: %s on %s", t.backend.name, hardware.summary)
    if hardware.device == "cpu" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        tune_cpu_allocator()  # peak RSS then follows live tensors, so it can be compared with the estimate
    import_training_stack()
    t.probe = MemoryProbe(hardware.device)
    t.replay_answers = _replay_answers(spec, ctx)


def _prepare_data(t: Training) -> None:
    t.ctx.progress(0.0, "tokenizing the data")
    t.data, t.data_tokenizer = _prepare(t.spec, t.ctx)


def _load(t: Training) -> None:
    """The weights (a Hub model's download is this run's first stage), the model wrapped for its method, and the rows
    encoded again when the loader's tokenizer differs from the one they were encoded with."""
    spec, ctx = t.spec, t.ctx
    ensure_weights(ctx, [spec.model_source])
    ctx.progress(0.0, "loading the model")
    try:
        t.model, t.tokenizer, t.backend, load_notes = load_with_fallback(t.backend, spec, t.hardware)
    except ValueError as exc:  # a method that cannot train this model, named by its field; a forced backend that failed
        raise JobError(str(exc)) from None
    t.trainable, t.total = trainable_counts(t.model)
    ctx.log.info("method %s: %s of %s parameters trainable (%.4f%%)", spec.method, f"{t.trainable:,}", f"{t.total:,}",
                 100 * t.trainable / max(1, t.total))
    new_notes = list(load_notes)
    differences = tokenizer_differences(t.data_tokenizer, t.tokenizer)
    if differences:  # the rows must be the ids this model trains on: encode them again with its tokenizer
        new_notes.append(f"the {t.backend.name} loader's tokenizer differs from the one the rows were encoded with "
                         f"({'; '.join(differences)}): the data was encoded again with the model's tokenizer")
        t.data = _encode(spec, ctx, t.tokenizer)
    for note in new_notes:
        ctx.log.info(note)
    t.notes += new_notes
    ctx.write_json(BACKEND_FILE, {"backend": t.backend.name, "notes": t.notes})  # the Train page shows it while running


def _build_trainer(t: Training) -> None:
    """Precision, the checkpoint to resume from, trackers, and the objective's trainer (SFT, GRPO or a preference one)."""
    spec, ctx, hardware = t.spec, t.ctx, t.hardware
    t.precision = choose_precision(spec, hardware.device, hardware.bf16)
    t.resume = latest_checkpoint(ctx.run_dir)
    t.callback = make_callback(ctx, spec, t.probe, t.counter)
    t.trackers, tracker_env, t.tracker_notes = resolve_trackers(spec.report_to, ctx.run_dir, spec.name or ctx.run_dir.name)
    os.environ.update(tracker_env)  # read by transformers' tracker callbacks when the trainer is built
    for note in t.tracker_notes:
        ctx.log.warning(note)
    common = dict(device=hardware.device, bf16=t.precision.bf16, fp16=t.precision.fp16, callbacks=[t.callback], counter=t.counter,
                  report_to=t.trackers)
    if spec.objective == "sft":
        t.trainer = build_trainer(spec, ctx.run_dir, t.model, t.tokenizer, t.data, backend=t.backend.name, **common)
    elif spec.objective == "grpo":  # prompts sampled and scored by the rewards (core.train.grpo)
        ctx.progress(0.0, "preparing grpo (the rewards and the sampler)")
        t.trainer = build_grpo_trainer(spec, ctx.run_dir, t.model, t.tokenizer, t.data, **common)
        ctx.log.info("grpo: %d completions per prompt, reference model: %s", spec.num_generations, t.trainer.workbench_reference)
    else:
        ctx.progress(0.0, f"preparing {spec.objective} (TRL tokenises the pairs)")
        t.trainer = build_preference_trainer(spec, ctx.run_dir, t.model, t.tokenizer, t.data, **common)
    t.previous = (ctx.read_result() or {}) if t.resume else {}


def _train(t: Training) -> None:
    """The starting eval loss, the steps (resumed from the newest checkpoint), an OOM explained with the spec's numbers,
    and the eval loss at the end."""
    spec, ctx, trainer, resume = t.spec, t.ctx, t.trainer, t.resume
    t.eval_start = _starting_eval(trainer, spec, t.data, resume, ctx)
    if resume:
        ctx.log.info("resuming from %s", resume)
        t.eval_start = (t.previous.get("final_metrics") or {}).get("eval_loss_start")
    train_started = time.time()
    try:
        if resume and 0 < trainer.args.max_steps <= checkpoint_step(resume):
            _restore_finished(trainer, resume, ctx)
            t.output = None
        else:
            t.output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except Exception as exc:  # noqa: BLE001 - an OOM gets the spec's numbers; anything else goes up as is
        if is_out_of_memory(exc):
            raise JobError(
                f"{explain_failure(exc)} (It ran out at step {trainer.state.global_step + 1} training {spec.method} with batch_size "
                f"{spec.batch_size}, gradient_accumulation {spec.gradient_accumulation}, max_length {spec.max_length}, "
                f"gradient checkpointing {'on' if spec.gradient_checkpointing else 'off'}.)"
            ) from exc
        raise
    t.train_seconds = time.time() - train_started
    t.stopped = ctx.stop_requested
    if t.data.eval is not None and not t.stopped:
        ctx.progress(1.0, "measuring the eval loss")
        t.eval_end = trainer.evaluate().get("eval_loss")


def _save(t: Training) -> None:
    t.ctx.progress(1.0, "saving")
    if t.rank.distributed:
        t.outputs = _save_outputs_distributed(t.spec, t.ctx.run_dir, t.trainer, t.tokenizer, t.data, t.rank)
    else:
        t.outputs = _save_outputs(t.spec, t.ctx.run_dir, t.trainer.model, t.tokenizer, t.data)


def _tally(t: Training) -> None:
    """Tokens summed and peaks gathered over the ranks: every rank takes part (collectives), rank 0 writes the card."""
    t.tokens, t.supervised = all_ranks_sum([t.counter.tokens, t.counter.supervised])
    t.peaks = all_ranks_gather(t.probe.peak())


def _card(t: Training) -> dict:
    """The run's result file (training.json): what ran, on what, how fast, how much memory, and what it produced."""
    spec, fallback, backend = t.spec, t.fallback, t.backend
    tokens, supervised, peaks = t.tokens, t.supervised, t.peaks
    seconds = t.train_seconds
    whole_run = whole_run_figures(read_all_metrics(t.ctx.run_dir / METRICS_FILE))
    return {
        "spec": spec_to_dict(spec),
        "state": "stopped" if t.stopped else "succeeded",
        "objective": spec.objective,
        "parent": _parent(spec),
        "data": t.data.manifest(),
        "data_notes": t.data.notes,
        "chat_template": t.data.template_choice,
        "inference": t.data.inference,  # the system prompt / template / reasoning to answer with (Chat, Ollama, the GGUF check)
        "replay_answers": t.replay_answers,
        "backend": backend.name,
        "backend_notes": t.notes,
        "process": {"pid": os.getpid(), "attempt": fallback["attempt"] if fallback else 1, "fallback_from": fallback},
        "backend_label": (f"{backend.name} (fallback from {fallback['from']}: {fallback['reason']}), process {os.getpid()}/attempt "
                          f"{fallback['attempt']}" if fallback else f"{backend.name}, process {os.getpid()}/attempt 1"),
        "tracking": {"report_to": t.trackers, "notes": t.tracker_notes},
        "device": t.hardware.device,
        "hardware": t.hardware.summary,
        "precision": t.precision.__dict__,
        "resumed_from_step": checkpoint_step(t.resume),
        "final_metrics": _final_metrics(t.trainer, t.callback, t.output, t.eval_start, t.eval_end, whole_run),
        # run-level figures cover every segment of a Stop / Resume run (metrics.jsonl), not only this attempt
        "tokens_per_s": whole_run["tokens_per_s"] or (round(tokens / seconds, 2) if seconds > 0 else 0.0),
        "tokens_per_s_this_attempt": round(tokens / seconds, 2) if seconds > 0 else 0.0,
        "tokens_trained": whole_run["tokens"],
        "segments": whole_run["segments"],
        "supervised_tokens_per_s": round(supervised / seconds, 2) if seconds > 0 else 0.0,
        "tokens_trained_this_attempt": int(tokens),
        "train_seconds": round(seconds, 2),
        "total_train_seconds": round(seconds + float(t.previous.get("total_train_seconds") or 0.0), 2),
        "wall_time_s": round(time.time() - t.started, 2),
        "peak_memory_bytes": t.probe.peak(),
        **_predicted(spec, t.hardware, backend.name, t.data.train.longest),
        **_distribution_card(spec, t.rank, peaks),
        "trainable_params": t.trainable,
        "total_params": t.total,
        "trainable_share": t.trainable / max(1, t.total),
        "artifact_bytes": folder_bytes(t.outputs.get("adapter") or t.outputs.get("model")),
        "outputs": t.outputs,
        "versions": _versions(backend.name),
    }


def _parent(spec: TrainSpec) -> dict | None:
    """The run (or adapter folder) this run continued from (init_adapter); core.runs.card draws the link from the spec's path."""
    if spec.init_adapter_path is None:
        return None
    return {"run_id": source_run_of(spec.init_adapter_path), "adapter": str(spec.init_adapter_path)}


def _distribution_card(spec: TrainSpec, rank: RankInfo, peaks: list[float]) -> dict:
    if not spec.uses_launcher:
        return {}
    return {"distribution": {"world_size": rank.world_size, "processes_per_node": spec.processes_per_node,
                             "num_nodes": spec.num_nodes, "strategy": strategy_label(spec), "launcher": spec.launcher,
                             "global_batch": spec.global_batch, "peak_memory_bytes_per_rank": [int(p) for p in peaks]}}


def _replay_answers(spec: TrainSpec, ctx: JobContext) -> dict | None:
    """Replay 'general' on a base other than the embedded model replays that base's own answers: reused from the
    workspace cache, else written now as this run's first stage (core.data.replay.ensure_answers)."""
    model = spec.replay_model_source
    if spec.replay_fraction <= 0 or spec.replay_dataset.strip() != SHIPPED or uses_shipped_answers(model):
        return None
    if in_launched_process() and needs_answers(spec.replay_dataset, model):
        raise JobError(missing_answers_message(model) + " (a launched rank does not generate them: its launcher does, first)")
    ensure_weights(ctx, [model])  # the answers are keyed by the weights: fetch them before answering
    answers = prepare_answers(ctx, spec.replay_dataset, model, max_new_tokens=spec.replay_max_new_tokens, prompts=spec.replay_prompts,
                              keep_unfinished=spec.replay_keep_unfinished) or {}
    gc.collect()
    if answers.get("generated"):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the answering copy of the model is gone before the training copy loads
    return answers


def _prepare(spec: TrainSpec, ctx: JobContext) -> tuple[PreparedData, Any]:
    try:
        tokenizer = load_tokenizer(spec.model_source)
    except ModelLoadError as exc:
        raise JobError(str(exc)) from None
    return _encode(spec, ctx, tokenizer), tokenizer


def _relaunch(ctx: JobContext, spec: TrainSpec, hardware: Any, fallback: FallBack) -> dict:
    """Unsloth failed in this process: train in a fresh one with the fallback backend (never in this patched one)."""
    if in_launched_process():  # a rank of torchrun / accelerate: the launcher owns the processes, not this job
        raise JobError(f"{fallback.reason} in a multi-process run, whose ranks cannot be relaunched one by one: "
                       f"set backend to {fallback.backend} to train it without Unsloth")
    _free_memory()
    return relaunch_with_fallback(ctx, spec, hardware, fallback.backend, fallback.reason)


def _dropout_notes(spec: TrainSpec, backend: Any) -> list[str]:
    if backend.name == "unsloth" and spec.uses_adapter and spec.lora_dropout > 0:
        return [f"lora_dropout {spec.lora_dropout} turns Unsloth's fast LoRA kernels off (0 keeps them on)"]
    return []


def _encode(spec: TrainSpec, ctx: JobContext, tokenizer: Any) -> PreparedData:
    try:
        data = prepare_data(spec, tokenizer)
    except DataError as exc:
        raise JobError(str(exc)) from None
    manifest = data.manifest()
    ctx.log.info("data: %d training rows (%d tokens, %d trained), %d eval rows", manifest["train_rows"],
                 manifest["train_tokens"], manifest["trained_tokens"], manifest["eval_rows"])
    for note in data.notes:
        ctx.log.info("data: %s", note)
    for issue in data.lint.warnings:
        ctx.log.warning("lint: %s (%d rows)", issue.message, issue.count)
    return data


def _starting_eval(trainer: Any, spec: TrainSpec, data: PreparedData, resume: Path | None, ctx: JobContext) -> float | None:
    """The eval loss before the first step (not again on a resume): where the curve starts."""
    if data.eval is None or not spec.eval_on_start or resume is not None:
        return None
    ctx.progress(0.0, "measuring the starting eval loss")
    return trainer.evaluate().get("eval_loss")


def _restore_finished(trainer: Any, checkpoint: Path, ctx: JobContext) -> None:
    """Every step was done before the attempt ended (killed while saving): the checkpoint's weights are the result.
    transformers' resume would train one step more (it skips the batches already seen, runs the next one, and only
    then checks max_steps), so the checkpoint is loaded instead of resumed."""
    from transformers import TrainerState

    ctx.log.info("%s holds every step (max_steps %d): loading it instead of resuming", checkpoint.name, trainer.args.max_steps)
    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))


def _final_metrics(trainer: Any, callback: Any, output: Any, eval_start: float | None, eval_end: float | None, whole_run: dict) -> dict:
    last = callback.last_row
    segment_mean = (output.metrics or {}).get("train_loss") if output is not None else None
    metrics = {
        "global_step": int(trainer.state.global_step),
        "epoch": round(float(trainer.state.epoch or 0.0), 4),
        "loss": last.get("loss"),
        # the mean over every logged step of the run (all its segments); the trainer's own covers this attempt only
        "train_loss_mean": whole_run["mean_loss"] if whole_run["mean_loss"] is not None else segment_mean,
        "eval_loss_start": eval_start,
        "eval_loss": eval_end if eval_end is not None else callback.last_eval.get("eval_loss"),
    }
    return metrics


def _render_like_training(tokenizer: Any, spec: TrainSpec, chat_template: str | None) -> None:
    """The saved tokenizer carries the training's chat template and reasoning setting (core.data.masking reads it back),
    so chat / evaluate render prompts the way training rendered the rows."""
    if chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.init_kwargs[REASONING_TOKENIZER_KEY] = spec.reasoning


def _save_outputs(spec: TrainSpec, run_dir: Path, model: Any, tokenizer: Any, data: PreparedData) -> dict:
    _render_like_training(tokenizer, spec, data.chat_template)
    outputs: dict[str, str] = {}
    newest = latest_checkpoint(run_dir)
    if newest:
        outputs["checkpoint"] = str(newest)
    if spec.uses_adapter:
        # Only the trained adapter: a preference trainer adds a frozen "ref" copy beside it to score the reference with.
        selected = ["default"] if len(getattr(model, "peft_config", {}) or {}) > 1 and "default" in model.peft_config else None
        outputs["adapter"] = str(atomic_write_dir(run_dir / ADAPTER_DIR,
                                                  lambda tmp: (model.save_pretrained(tmp, selected_adapters=selected),
                                                               tokenizer.save_pretrained(tmp))))
    else:
        outputs["model"] = str(save_model(model, tokenizer, run_dir / MODEL_DIR))
    return outputs


def _save_outputs_distributed(spec: TrainSpec, run_dir: Path, trainer: Any, tokenizer: Any, data: PreparedData, rank: RankInfo) -> dict:
    """Every rank takes part in trainer.save_model (FSDP / ZeRO-3 gather the shards); rank 0 writes the folder and
    swaps it into place, so the result is never half-written."""
    _render_like_training(tokenizer, spec, data.chat_template)
    name = ADAPTER_DIR if spec.uses_adapter else MODEL_DIR
    target, tmp = run_dir / name, run_dir / f".{name}.saving"
    if rank.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    trainer.save_model(str(tmp))
    barrier()
    outputs: dict[str, str] = {}
    if rank.is_main:
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        newest = latest_checkpoint(run_dir)
        if newest:
            outputs["checkpoint"] = str(newest)
    outputs["adapter" if spec.uses_adapter else "model"] = str(target)
    barrier()
    return outputs


def merge_adapter(spec: TrainSpec, adapter_dir: Path, target: Path, chat_template: str | None = None) -> Path:
    """Base model (reloaded unquantized) + adapter, merged into plain weights and saved under `target`."""
    loaded = load_model(spec.model_source.with_adapter(adapter_dir))
    merged = merge_adapter_weights(loaded.model, adapter_dir)
    _render_like_training(loaded.tokenizer, spec, chat_template)
    return save_model(merged, loaded.tokenizer, target)


def _predicted(spec: TrainSpec, hardware: Any, backend: str, longest: int) -> dict:
    """The pre-flight's estimate for the backend actually used (after any fallback) and the batches this run really
    had (padded to its longest row at most)."""
    predicted, note = predict_memory(spec, hardware, backend, longest or None)
    return {"predicted_memory_bytes": predicted, "predicted_memory_note": note}


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _versions(backend: str) -> dict:
    names = ["torch", "transformers", "trl", "peft", "bitsandbytes"] + (["unsloth"] if backend == "unsloth" else [])
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
