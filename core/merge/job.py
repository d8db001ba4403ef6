"""The merge job: pre-flight, fold adapters into their bases, merge with mergekit, score.

With `sweep` set it merges once per λ between the base (0) and the fine-tuned model (1) and scores
each point, so the Merge page can draw the learning-vs-forgetting curve; a relaunch skips points done.
"""
from __future__ import annotations

import shutil
import time

from core.merge.config import build_config, point_folder_name, resolve_inputs, to_yaml
from core.merge.engine import MERGE_YAML, adapter_target, merge_adapter_into_base, run_mergekit
from core.merge.preflight import check_merge
from core.merge.spec import MergeSpec
from core.models import ModelSource, model_file_size
from core.runs.jobs import JobContext, JobError
from core.workspace import atomic_write_text

MERGED_DIR = "merged"
SWEEP_DIR = "sweep"
SWEEP_FILE = "sweep.json"


def run(ctx: JobContext) -> dict:
    try:
        spec = MergeSpec.from_dict(ctx.spec)
    except ValueError as exc:
        raise JobError(f"The merge spec is invalid: {exc}") from None
    ctx.progress(0.01, "pre-flight: configs and weight headers")
    report = check_merge(spec, ctx.run_dir)
    ctx.write_json("preflight.json", report.as_dict())
    for note in report.notes:
        ctx.log.info("pre-flight note: %s", note)
    if not report.ok:
        more = f" (and {len(report.problems) - 1} more problem(s), see preflight.json)" if len(report.problems) > 1 else ""
        raise JobError(report.problems[0] + more)

    ctx.progress(0.05, "preparing inputs")
    inputs_dir = ctx.run_dir / "inputs"
    inputs = resolve_inputs(spec, lambda source: merge_adapter_into_base(source, adapter_target(inputs_dir, source)))
    if spec.sweep:
        return run_sweep(ctx, spec, inputs)
    config = build_config(spec, inputs)
    atomic_write_text(ctx.path(MERGE_YAML), to_yaml(config))
    ctx.progress(0.15, f"merging ({spec.method_info.pretty_name})")
    merged = ctx.run_dir / MERGED_DIR
    seconds = run_mergekit(config, merged, seed=spec.seed)
    ctx.metrics(stage="merge", merge_seconds=seconds)
    result = {"method": spec.method, "model_dir": str(merged), "merge_seconds": round(seconds, 3),
              "size_bytes": model_file_size(merged), "parameters": report.facts.get("parameters")}
    ctx.write_json("result.json", result)
    if spec.evaluate and not ctx.stop_requested:
        from core.transform_eval import score_against

        ctx.progress(0.5, "scoring the merged model against the base")
        result["evaluation"] = score_against(spec.reference_source, ModelSource("local", str(merged)), ctx,
                                             rows=spec.eval_rows, progress_span=(0.5, 1.0), labels=("base", "merged"))
        ctx.write_json("result.json", result)
    return {k: v for k, v in result.items() if k != "evaluation"} | _headline(result.get("evaluation"))


def run_sweep(ctx: JobContext, spec: MergeSpec, inputs) -> dict:
    """One merge + one evaluation per λ; each finished point is a metrics row and is kept in sweep.json."""
    done = {p["lambda"]: p for p in (ctx.read_json(SWEEP_FILE) or {}).get("points", [])}
    points = []
    reference_cache: dict = {}
    for index, lam in enumerate(spec.sweep):
        if ctx.stop_requested:
            break
        if lam in done:
            points.append(done[lam])
            continue
        fraction = index / len(spec.sweep)
        ctx.progress(0.05 + 0.95 * fraction, f"λ = {lam:g}: merging ({index + 1}/{len(spec.sweep)})")
        folder = ctx.run_dir / SWEEP_DIR / point_folder_name(lam)
        config = build_config(spec, inputs, lam)
        merge_seconds = run_mergekit(config, folder, seed=spec.seed)
        point = {"point": index, "lambda": lam, "merge_seconds": round(merge_seconds, 3), "model_dir": str(folder)}
        if spec.evaluate:
            from core.transform_eval import score_against

            started = time.perf_counter()
            span = (0.05 + 0.95 * fraction, 0.05 + 0.95 * (index + 1) / len(spec.sweep))
            ctx.progress(span[0], f"λ = {lam:g}: scoring")
            evaluation = score_against(spec.reference_source, ModelSource("local", str(folder)), ctx, rows=spec.eval_rows,
                                       progress_span=span, labels=("base", f"λ={lam:g}"), reference_cache=reference_cache)
            point.update(_headline(evaluation), eval_seconds=round(time.perf_counter() - started, 2))
        if not spec.keep_sweep_models:
            shutil.rmtree(folder, ignore_errors=True)
            point["model_dir"] = ""
        ctx.metrics(**point)
        points.append(point)
        ctx.write_json(SWEEP_FILE, {"method": spec.method, "points": sorted(points, key=lambda p: p["lambda"])})
    return {"method": spec.method, "sweep_points": len(points), "best_lambda": best_point(points)}


def best_point(points: list[dict]) -> float | None:
    """The λ with the highest task score among the points whose general score is no worse than the base's
    (within 2 %), else the highest task score overall. None without scores."""
    scored = [p for p in points if p.get("task_score") is not None and p.get("general_score") is not None]
    if not scored:
        return None
    base = min(scored, key=lambda p: p["lambda"])["general_score"]
    keeps_general = [p for p in scored if p["general_score"] >= base - 0.02 * abs(base)]
    return max(keeps_general or scored, key=lambda p: (p["task_score"], p["general_score"]))["lambda"]


def _headline(evaluation: dict | None) -> dict:
    if not evaluation:
        return {}
    return {k: evaluation[k] for k in ("verdict", "task_score", "general_score", "reference_task_score",
                                        "reference_general_score") if k in evaluation}
