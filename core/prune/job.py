"""The prune job: measure, prune, save a real model (masks folded in), reload it, measure again, score."""
from __future__ import annotations

import time
from pathlib import Path

from core.models import ModelSource, load_model, merge_adapter_weights, model_file_size, resolve_model_path, save_model
from core.prune.measure import generation_latency, speed_note
from core.prune.methods import PruneError, count_parameters, layer_sparsity_table, overall_sparsity, prune_model
from core.prune.spec import PruneSpec
from core.runs.jobs import JobContext, JobError
from core.runs.spec import spec_to_dict
from core.train.spec import CPU_DEMO_STEPS, TrainSpec
from core.transform_eval import score_against, task_data_for

PRUNED_DIR = "pruned"


def source_size_bytes(source: ModelSource) -> int | None:
    try:
        return model_file_size(resolve_model_path(source.with_adapter("")))
    except Exception:  # noqa: BLE001 - a size we cannot read is shown as unknown, not a failure
        return None


def run(ctx: JobContext) -> dict:
    spec: PruneSpec = ctx.spec
    task = None
    if spec.evaluate:  # the task rows of the verdict: chosen, else the model's training run's data, else the demo
        try:
            task = task_data_for(spec.task_dataset, [spec.source])
        except ValueError as exc:
            raise JobError(f"task_dataset: {exc}") from None
    ctx.progress(0.02, f"loading {spec.source.label}")
    loaded = load_model(spec.source)
    model = loaded.model
    if spec.source.adapter:
        model = merge_adapter_weights(model, spec.source.adapter)  # prune the fine-tuned weights, not the adapter
    params_before, nonzero_before = count_parameters(model)
    ctx.progress(0.08, "timing a fixed generation before pruning")
    before = generation_latency(model, loaded.tokenizer, spec.latency_prompt, spec.latency_tokens)
    ctx.metrics(stage="latency_before", seconds=before.seconds, tokens_per_s=before.tokens_per_s)

    ctx.progress(0.2, f"pruning: {spec.mode} at {spec.sparsity:.0%}")
    started = time.perf_counter()
    try:
        rows = prune_model(model, spec.mode, spec.sparsity, target=spec.target, pattern=spec.pattern, norm=spec.norm)
    except PruneError as exc:
        raise JobError(f"Cannot prune this model that way: {exc}") from None
    prune_seconds = time.perf_counter() - started
    table = layer_sparsity_table(rows)
    for row in table:
        ctx.metrics(stage="prune", layer=row["layer"], module=row["module"], sparsity=row["sparsity"])
    pruned_dir = save_model(model, loaded.tokenizer, ctx.run_dir / PRUNED_DIR)
    del model, loaded

    ctx.progress(0.4, "reloading the pruned model and timing it")
    reloaded = load_model(ModelSource("local", str(pruned_dir)))
    params_after, nonzero_after = count_parameters(reloaded.model)
    after = generation_latency(reloaded.model, reloaded.tokenizer, spec.latency_prompt, spec.latency_tokens)
    ctx.metrics(stage="latency_after", seconds=after.seconds, tokens_per_s=after.tokens_per_s)
    del reloaded
    report = {
        "mode": spec.mode,
        "target": spec.target if spec.zeroes_only else "decoder layers",
        "requested_sparsity": spec.sparsity,
        "achieved_sparsity": round(overall_sparsity(rows), 6),
        "layers": table,
        "physically_smaller": not spec.zeroes_only,
        "parameters_before": params_before,
        "parameters_after": params_after,
        "nonzero_before": nonzero_before,
        "nonzero_after": nonzero_after,
        "size_before_bytes": source_size_bytes(spec.source),
        "size_after_bytes": model_file_size(pruned_dir),
        "latency_before": before.as_dict(),
        "latency_after": after.as_dict(),
        "speed_note": speed_note(spec.mode, before, after),
        "prune_seconds": round(prune_seconds, 3),
        "pruned_dir": str(pruned_dir),
    }
    if task is not None:
        report["task_dataset"] = task.as_dict()
    ctx.write_result(report)
    if spec.evaluate and not ctx.stop_requested:
        ctx.progress(0.5, "scoring before and after with the forgetting report")
        report["evaluation"] = score_against(spec.source, ModelSource("local", str(pruned_dir)), ctx, task=task, rows=spec.eval_rows,
                                             progress_span=(0.5, 1.0), label="pruned")
        ctx.write_result(report)
    return {k: report[k] for k in ("mode", "achieved_sparsity", "parameters_before", "parameters_after", "size_before_bytes",
                                   "size_after_bytes", "pruned_dir")} | {
        "latency_before_s": round(before.seconds, 3), "latency_after_s": round(after.seconds, 3)}


def recovery_train_spec(pruned_dir: str | Path, *, name: str = "", steps: int | None = None) -> dict:
    """A train run spec (LoRA on the pruned folder) for a short recovery fine-tune; create_run_from_dict runs it.

    Note: merging the recovery adapter back into the weights fills the pruned zeros again; keep the adapter
    separate (or re-prune after merging) to keep the sparsity.
    """
    name = name or f"recover-{Path(pruned_dir).parent.name}"[:60]
    model = {"kind": "local", "ref": str(pruned_dir)}
    return spec_to_dict(TrainSpec(name=name, model=model, max_steps=steps if steps is not None else CPU_DEMO_STEPS))
