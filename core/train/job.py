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
from pathlib import Path
from typing import Any

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
    distribution_refusal,
    in_launched_process,
    strategy_label,
)
from core.train.grpo import build_grpo_trainer
from core.train.methods import method_refusal_for, trainable_counts
from core.train.preflight import predict_memory
from core.train.spec import TrainSpec
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


def run(ctx: JobContext) -> dict:
    started = time.time()
    spec: TrainSpec = ctx.spec
    from core.hardware import detect

    hardware = detect()
    if spec.uses_launcher and not in_launched_process():
        from core.train.supervisor import supervise

        _replay_answers(spec, ctx)  # the ranks find the base model's replay answers cached
        return supervise(ctx, spec, hardware)  # this worker starts torchrun / accelerate and watches the ranks
    rank = getattr(ctx, "rank", None) or RankInfo()
    refusal = distribution_refusal(spec, hardware, launching_here=False) if spec.uses_launcher else None
    if refusal:
        raise JobError(refusal)
    fallback = fallback_from_env()  # this process is the fresh one a failed Unsloth attempt relaunched
    try:
        if fallback:
            backend, notes = fallback_backend(fallback)
        else:
            backend, notes = choose_backend(spec, hardware)
            activate(backend, spec, hardware)  # imports Unsloth first; FallBack if it cannot
    except ValueError as exc:
        raise JobError(str(exc)) from None
    except FallBack as exc:
        return _relaunch(ctx, spec, hardware, exc)
    notes += _dropout_notes(spec, backend)
    for note in notes:
        ctx.log.info(note)
    ctx.log.info("backend: %s on %s", backend.name, hardware.summary)
    refusal = method_refusal_for(spec)
    if refusal:
        raise JobError(refusal)

    if hardware.device == "cpu" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        from core.runs.allocator import tune_cpu_allocator

        tune_cpu_allocator()  # peak RSS then follows live tensors, so it can be compared with the estimate
    import_training_stack()
    probe = MemoryProbe(hardware.device)
    replay_answers = _replay_answers(spec, ctx)
    if ctx.stop_requested:
        return {"global_step": 0, "note": "stopped before training started"}
    ctx.progress(0.0, "tokenizing the data")
    data, data_tokenizer = _prepare(spec, ctx)
    if ctx.stop_requested:
        return {"global_step": 0, "note": "stopped before training started"}

    from core.download import ensure_weights

    ensure_weights(ctx, [spec.model_source])  # a Hub model not in the cache yet: its download is this run's first stage
    ctx.progress(0.0, "loading the model")
    try:
        model, tokenizer, backend, load_notes = load_with_fallback(backend, spec, hardware)
    except ValueError as exc:  # a method that cannot train this model, named by its field; a forced backend that failed
        raise JobError(str(exc)) from None
    except FallBack as exc:
        del data, data_tokenizer
        return _relaunch(ctx, spec, hardware, exc)
    trainable, total = trainable_counts(model)
    ctx.log.info("method %s: %s of %s parameters trainable (%.4f%%)", spec.method, f"{trainable:,}", f"{total:,}", 100 * trainable / max(1, total))
    notes += load_notes
    differences = tokenizer_differences(data_tokenizer, tokenizer)
    if differences:  # the rows must be the ids this model trains on: encode them again with its tokenizer
        notes.append(f"the {backend.name} loader's tokenizer differs from the one the rows were encoded with "
                     f"({'; '.join(differences)}): the data was encoded again with the model's tokenizer")
        data = _encode(spec, ctx, tokenizer)
    for note in notes[len(notes) - len(load_notes) - bool(differences):]:
        ctx.log.info(note)
    ctx.write_json(BACKEND_FILE, {"backend": backend.name, "notes": notes})  # the Train page shows it while running
    precision = choose_precision(spec, hardware.device, hardware.bf16)
    resume = latest_checkpoint(ctx.run_dir)
    counter = TokenCounter()
    callback = make_callback(ctx, spec, probe, counter)
    trackers, tracker_env, tracker_notes = resolve_trackers(spec.report_to, ctx.run_dir, spec.name or ctx.run_dir.name)
    os.environ.update(tracker_env)  # read by transformers' tracker callbacks when the trainer is built
    for note in tracker_notes:
        ctx.log.warning(note)
    if spec.objective == "sft":
        trainer = build_trainer(spec, ctx.run_dir, model, tokenizer, data, device=hardware.device,
                                bf16=precision.bf16, fp16=precision.fp16, callbacks=[callback], counter=counter,
                                backend=backend.name, report_to=trackers)
    elif spec.objective == "grpo":  # prompts sampled and scored by the rewards (core.train.grpo)
        ctx.progress(0.0, "preparing grpo (the rewards and the sampler)")
        trainer = build_grpo_trainer(spec, ctx.run_dir, model, tokenizer, data, device=hardware.device, bf16=precision.bf16,
                                     fp16=precision.fp16, callbacks=[callback], counter=counter, report_to=trackers)
        ctx.log.info("grpo: %d completions per prompt, reference model: %s", spec.num_generations, trainer.workbench_reference)
    else:
        ctx.progress(0.0, f"preparing {spec.objective} (TRL tokenises the pairs)")
        trainer = build_preference_trainer(spec, ctx.run_dir, model, tokenizer, data, device=hardware.device, bf16=precision.bf16,
                                           fp16=precision.fp16, callbacks=[callback], counter=counter, report_to=trackers)
    previous = (ctx.read_result() or {}) if resume else {}  # the card of the attempt this one continues
    eval_start = _starting_eval(trainer, spec, data, resume, ctx)
    if resume:
        ctx.log.info("resuming from %s", resume)
        eval_start = (previous.get("final_metrics") or {}).get("eval_loss_start")
    train_started = time.time()
    try:
        if resume and 0 < trainer.args.max_steps <= checkpoint_step(resume):
            _restore_finished(trainer, resume, ctx)
            output = None
        else:
            output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except Exception as exc:  # noqa: BLE001 - an OOM gets the spec's numbers; anything else goes up as is
        if is_out_of_memory(exc):
            step = trainer.state.global_step
            raise JobError(
                f"{explain_failure(exc)} (It ran out at step {step + 1} training {spec.method} with batch_size "
                f"{spec.batch_size}, gradient_accumulation {spec.gradient_accumulation}, max_length {spec.max_length}, "
                f"gradient checkpointing {'on' if spec.gradient_checkpointing else 'off'}.)"
            ) from exc
        raise
    train_seconds = time.time() - train_started
    stopped = ctx.stop_requested
    eval_end = None
    if data.eval is not None and not stopped:
        ctx.progress(1.0, "measuring the eval loss")
        eval_end = trainer.evaluate().get("eval_loss")

    ctx.progress(1.0, "saving")
    if rank.distributed:
        outputs = _save_outputs_distributed(spec, ctx.run_dir, trainer, tokenizer, data, rank)
    else:
        outputs = _save_outputs(spec, ctx.run_dir, trainer.model, tokenizer, data)
    tokens, supervised = all_ranks_sum([counter.tokens, counter.supervised])
    peaks = all_ranks_gather(probe.peak())
    if not rank.is_main:
        return {"rank": rank.rank, "global_step": int(trainer.state.global_step)}
    whole_run = whole_run_figures(read_all_metrics(ctx.run_dir / METRICS_FILE))
    card = {
        "spec": spec_to_dict(spec),
        "state": "stopped" if stopped else "succeeded",
        "objective": spec.objective,
        "parent": _parent(spec),
        "data": data.manifest(),
        "data_notes": data.notes,
        "chat_template": data.template_choice,
        "inference": data.inference,  # the system prompt / template / reasoning to answer with (Chat, Ollama, the GGUF check)
        "replay_answers": replay_answers,
        "backend": backend.name,
        "backend_notes": notes,
        "process": {"pid": os.getpid(), "attempt": fallback["attempt"] if fallback else 1, "fallback_from": fallback},
        "backend_label": (f"{backend.name} (fallback from {fallback['from']}: {fallback['reason']}), process {os.getpid()}/attempt {fallback['attempt']}"
                          if fallback else f"{backend.name}, process {os.getpid()}/attempt 1"),
        "tracking": {"report_to": trackers, "notes": tracker_notes},
        "device": hardware.device,
        "hardware": hardware.summary,
        "precision": precision.__dict__,
        "resumed_from_step": checkpoint_step(resume),
        "final_metrics": _final_metrics(trainer, callback, output, eval_start, eval_end, whole_run),
        # run-level figures cover every segment of a Stop / Resume run (metrics.jsonl), not only this attempt
        "tokens_per_s": whole_run["tokens_per_s"] or (round(tokens / train_seconds, 2) if train_seconds > 0 else 0.0),
        "tokens_per_s_this_attempt": round(tokens / train_seconds, 2) if train_seconds > 0 else 0.0,
        "tokens_trained": whole_run["tokens"],
        "segments": whole_run["segments"],
        "supervised_tokens_per_s": round(supervised / train_seconds, 2) if train_seconds > 0 else 0.0,
        "tokens_trained_this_attempt": int(tokens),
        "train_seconds": round(train_seconds, 2),
        "total_train_seconds": round(train_seconds + float(previous.get("total_train_seconds") or 0.0), 2),
        "wall_time_s": round(time.time() - started, 2),
        "peak_memory_bytes": probe.peak(),
        **_predicted(spec, hardware, backend.name, data.train.longest),
        **_distribution_card(spec, rank, peaks),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share": trainable / max(1, total),
        "artifact_bytes": folder_bytes(outputs.get("adapter") or outputs.get("model")),
        "outputs": outputs,
        "versions": _versions(backend.name),
    }
    del trainer, model
    _free_memory()
    if spec.merge_after and spec.uses_adapter and not stopped:
        ctx.progress(1.0, "merging the adapter into the base model")
        card["outputs"]["merged"] = str(merge_adapter(spec, Path(outputs["adapter"]), ctx.run_dir / MERGED_DIR, data.chat_template))
    ctx.write_result(card)
    final = card["final_metrics"]
    return {
        "global_step": final["global_step"],
        "final_loss": final.get("loss"),
        "eval_loss": final.get("eval_loss"),
        "tokens_per_s": card["tokens_per_s"],
        "peak_memory_bytes": card["peak_memory_bytes"],
        **{k: v for k, v in outputs.items() if k != "checkpoint"},
    }


def _parent(spec: TrainSpec) -> dict | None:
    """The run (or adapter folder) this run continued from (init_adapter); core.runs.card draws the link from the spec's path."""
    if spec.init_adapter_path is None:
        return None
    from core.runs.card import source_run_of

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
    from core.data.replay import SHIPPED, missing_answers_message, needs_answers, prepare_answers, uses_shipped_answers

    model = spec.replay_model_source
    if spec.replay_fraction <= 0 or spec.replay_dataset.strip() != SHIPPED or uses_shipped_answers(model):
        return None
    if in_launched_process() and needs_answers(spec.replay_dataset, model):
        raise JobError(missing_answers_message(model) + " (a launched rank does not generate them: its launcher does, first)")
    from core.download import ensure_weights

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
    from core.models import ModelLoadError, load_tokenizer

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
    from core.train.supervisor import relaunch_with_fallback

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
    from core.data.masking import REASONING_TOKENIZER_KEY

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
        outputs["adapter"] = str(atomic_write_dir(run_dir / ADAPTER_DIR, lambda tmp: (model.save_pretrained(tmp, selected_adapters=selected),
                                                                                      tokenizer.save_pretrained(tmp))))
    else:
        from core.models import save_model

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
    from core.models import load_model, merge_adapter_weights, save_model

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
    from importlib.metadata import PackageNotFoundError, version

    names = ["torch", "transformers", "trl", "peft", "bitsandbytes"] + (["unsloth"] if backend == "unsloth" else [])
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
