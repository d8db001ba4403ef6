"""The merge job: pre-flight, fold adapters into their bases, merge with mergekit, score.

With `sweep` set it merges once per λ between the base (0) and the fine-tuned model (1) and scores
each point, so the Merge page can draw the learning-vs-forgetting curve; a relaunch skips points done.
"""
from __future__ import annotations

import shutil
import time

from core.download import ensure_weights
from core.merge.config import build_config, point_folder_name, resolve_inputs, to_yaml
from core.merge.engine import MERGE_YAML, adapter_target, merge_adapter_into_base, run_mergekit
from core.merge.preflight import check_merge
from core.merge.spec import MergeSpec
from core.models import ModelSource, model_file_size
from core.runs.jobs import JobContext, JobError
from core.transform_eval import evaluate_variants, model_scores, score_against, summary, task_data_for
from core.workspace import atomic_write_text

MERGED_DIR = "merged"
SWEEP_DIR = "sweep"
SWEEP_FILE = "sweep.json"


def run(ctx: JobContext) -> dict:
    spec: MergeSpec = ctx.spec

    ensure_weights(ctx, [spec.base_source, *spec.model_sources()])  # Hub models not in the cache yet: first stage
    ctx.progress(0.01, "pre-flight: configs and weight headers")
    report = check_merge(spec, ctx.run_dir)
    ctx.write_json("preflight.json", report.as_dict())
    for note in report.notes:
        ctx.log.info("pre-flight note: %s", note)
    if not report.ok:
        more = f" (and {len(report.problems) - 1} more problem(s), see preflight.json)" if len(report.problems) > 1 else ""
        raise JobError(report.problems[0] + more)

    task = _task(spec) if spec.evaluate else None
    ctx.progress(0.05, "preparing inputs")
    inputs_dir = ctx.run_dir / "inputs"
    inputs = resolve_inputs(spec, lambda source: merge_adapter_into_base(source, adapter_target(inputs_dir, source)))
    if spec.sweep:
        return run_sweep(ctx, spec, inputs, task)
    config = build_config(spec, inputs)
    atomic_write_text(ctx.path(MERGE_YAML), to_yaml(config))
    ctx.progress(0.15, f"merging ({spec.method_info.pretty_name})")
    merged = ctx.run_dir / MERGED_DIR
    seconds = run_mergekit(config, merged, seed=spec.seed)
    ctx.metrics(stage="merge", merge_seconds=seconds)
    result = {"method": spec.method, "model_dir": str(merged), "merge_seconds": round(seconds, 3),
              "size_bytes": model_file_size(merged), "parameters": report.facts.get("parameters")}
    if task is not None:
        result["task_dataset"] = task.as_dict()
    ctx.write_result(result)
    if spec.evaluate and not ctx.stop_requested:
        ctx.progress(0.5, "scoring the merged model against the base")
        result["evaluation"] = score_against(spec.reference_source, ModelSource("local", str(merged)), ctx, task=task,
                                             rows=spec.eval_rows, progress_span=(0.5, 1.0), label="merged")
        ctx.write_result(result)
    return {k: v for k, v in result.items() if k != "evaluation"} | _headline(result.get("evaluation"))


def _task(spec: MergeSpec):
    """The task rows of the verdict (core.transform_eval.task_data_for): chosen, else the fine-tuned inputs' run data."""
    try:
        return task_data_for(spec.task_dataset, [*spec.model_sources(), spec.base_source])
    except ValueError as exc:
        raise JobError(f"task_dataset: {exc}") from None


def run_sweep(ctx: JobContext, spec: MergeSpec, inputs, task=None) -> dict:
    """Merge every λ first, then score them all in one forgetting report (the base is evaluated once);
    each model the report finishes becomes a live metrics row (λ, task score, general score)."""
    points: dict[float, dict] = {}
    merge_share = 0.35 if spec.evaluate else 0.95
    for index, lam in enumerate(spec.sweep):
        if ctx.stop_requested:
            break
        ctx.progress(0.05 + merge_share * index / len(spec.sweep), f"λ = {lam:g}: merging ({index + 1}/{len(spec.sweep)})")
        folder = ctx.run_dir / SWEEP_DIR / point_folder_name(lam)
        if (folder / MERGE_YAML).is_file():  # done by an earlier attempt of this run
            merge_seconds = None
        else:
            merge_seconds = round(run_mergekit(build_config(spec, inputs, lam), folder, seed=spec.seed), 3)
        points[lam] = {"point": index, "lambda": lam, "merge_seconds": merge_seconds, "model_dir": str(folder)}
        ctx.metrics(stage="merge", **points[lam])
    if spec.evaluate and not ctx.stop_requested and points:
        _score_sweep(ctx, spec, points, (0.05 + merge_share, 1.0), task)
    if not spec.keep_sweep_models:
        for point in points.values():
            shutil.rmtree(point["model_dir"], ignore_errors=True)
            point["model_dir"] = ""
    ordered = sorted(points.values(), key=lambda p: p["lambda"])
    scored_on = {"task_dataset": task.as_dict()} if task is not None else {}
    ctx.write_json(SWEEP_FILE, {"method": spec.method, "points": ordered, **scored_on})
    return {"method": spec.method, "sweep_points": len(ordered), "best_lambda": best_point(ordered), **scored_on}


def _score_sweep(ctx: JobContext, spec: MergeSpec, points: dict[float, dict], span: tuple[float, float], task) -> None:
    # λ = 0 is the base itself (mergekit reproduces it): it takes the base's scores instead of a second evaluation.
    labels = {f"λ={lam:g}": lam for lam in points if lam != 0.0}
    variants = [(label, ModelSource("local", points[lam]["model_dir"])) for label, lam in labels.items()]

    def live_row(row: dict) -> None:
        lam = 0.0 if row.get("model") == "base" else labels.get(row.get("model"))
        if lam is None or lam not in points:
            return
        scores = {"task_score": _points(row.get("task_score")), "general_score": _points(row.get("general_mc_acc_norm"))}
        points[lam].update(scores)
        ctx.metrics(stage="score", **points[lam])

    started = time.perf_counter()
    report = evaluate_variants(spec.reference_source, variants, ctx, rows=spec.eval_rows, progress_span=span, on_model=live_row,
                               task_dataset=task.path)
    for lam, point in points.items():
        label = "base" if lam == 0.0 else f"λ={lam:g}"
        point.update(model_scores(report, label))
        if lam != 0.0:
            point["verdict"] = summary(report, label).get("verdict", "")
    ctx.log.info("sweep scored in %.0f s", time.perf_counter() - started)


def _points(fraction: float | None) -> float | None:
    return None if fraction is None else round(100 * float(fraction), 2)


def best_point(points: list[dict], forgetting_points: float = 3.0) -> float | None:
    """The λ with the highest task score among the points whose general score stays within `forgetting_points`
    of the base's (the forgetting report's threshold), else the highest task score overall. None without scores."""
    scored = [p for p in points if p.get("task_score") is not None and p.get("general_score") is not None]
    if not scored:
        return None
    base = min(scored, key=lambda p: p["lambda"])["general_score"]
    keeps_general = [p for p in scored if p["general_score"] >= base - forgetting_points]
    return max(keeps_general or scored, key=lambda p: (p["task_score"], p["general_score"]))["lambda"]


def _headline(evaluation: dict | None) -> dict:
    if not evaluation:
        return {}
    return {k: evaluation[k] for k in ("verdict", "task_score", "general_score", "reference_task_score",
                                        "reference_general_score") if k in evaluation}
