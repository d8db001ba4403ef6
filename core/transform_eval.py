"""Score the output of a merge / prune / distill job with the forgetting report (core.evaluate).

The evaluate job itself runs in-process, inside the calling job, on a sub-folder of the run (`<run>/eval/`),
so its result file (the evaluate kind's, from the job registry) is the one the Evaluate page reads. Its progress maps onto a slice of the
calling job's progress bar, and each model it finishes can be forwarded as a live metrics row.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from core.models import ModelSource
from core.runs.jobs import JobContext, parse_spec, result_path
from core.runs.spec import write_spec

EVAL_DIR = "eval"
GENERAL_SCORE = "general_mc_acc_norm"


@dataclass
class _SubContext(JobContext):
    """A JobContext writing into a sub-folder whose metrics rows are also handed to a callback."""

    on_metrics: Callable[[dict], None] | None = field(default=None)

    def metrics(self, **row: Any) -> None:
        super().metrics(**row)
        if self.on_metrics is not None:
            self.on_metrics(row)


def eval_spec(reference: ModelSource, variants: list[tuple[str, ModelSource]], rows: int, name: str, task_dataset: str = "") -> dict:
    """An evaluate-job spec sized by `rows`: task rows = rows, general texts = 2·rows, multiple-choice items = 5·rows."""
    spec = {"kind": "evaluate", "name": name, "base": reference.as_dict(),
            "variants": [{"label": label, "model": source.as_dict()} for label, source in variants],
            "task_samples": rows, "general_samples": 2 * rows, "mc_samples": 5 * rows}
    return {**spec, "task_dataset": task_dataset} if task_dataset else spec


def evaluate_variants(reference: ModelSource, variants: list[tuple[str, ModelSource]], ctx: JobContext, *, rows: int = 20,
                      progress_span: tuple[float, float] = (0.0, 1.0), subdir: str = EVAL_DIR,
                      on_model: Callable[[dict], None] | None = None, task_dataset: str = "") -> dict:
    """Run core.evaluate's job on `reference` (as the base) and the variants; returns its report dict."""
    from core.evaluate.job import run as run_evaluation

    low, high = progress_span
    data = eval_spec(reference, variants, rows, name=f"{ctx.run_dir.name}-{subdir}", task_dataset=task_dataset)
    sub = _SubContext(
        run_dir=ctx.path(subdir, "spec.yaml").parent,
        spec=parse_spec(data),
        spec_data=data,
        log=ctx.log,
        set_progress=lambda fraction, message: ctx.progress(low + (high - low) * fraction, f"scoring: {message}"),
        _stop=lambda: ctx.stop_requested,
        on_metrics=on_model,
    )
    write_spec(sub.run_dir, sub.spec)  # the sub-folder is a readable evaluate run of its own
    run_evaluation(sub)
    return sub.read_result(default={})


def model_scores(report: dict, label: str) -> dict:
    """Task score, general score (MC acc_norm, points) and general perplexity of one model in a report."""
    model = next((m for m in report.get("models", []) if m["label"] == label), None)
    if model is None:
        return {}
    metrics = model["metrics"]
    value = lambda key: (metrics.get(key) or {}).get("value")  # noqa: E731
    return {"task_score": value("task_score"), "general_score": value(GENERAL_SCORE),
            "general_perplexity": value("general_perplexity"), "json_valid": value("json_valid")}


def summary(report: dict, label: str) -> dict:
    """The headline of one variant against the reference: scores, verdict, and the metric table."""
    from core.evaluate.report import metric_table

    if not report:
        return {}
    reference = report["models"][0]["label"]
    verdict = next((v for v in report.get("verdicts", []) if v["label"] == label), {})
    ours, theirs = model_scores(report, label), model_scores(report, reference)
    return {
        "verdict": verdict.get("headline", ""),
        "verdict_kind": verdict.get("verdict", ""),
        **ours,
        **{f"reference_{k}": v for k, v in theirs.items()},
        "table": metric_table(report),
    }


def score_against(reference: ModelSource, candidate: ModelSource, ctx: JobContext, *, rows: int = 20,
                  progress_span: tuple[float, float] = (0.0, 1.0), label: str = "candidate") -> dict:
    """The forgetting report of one candidate against its reference (labelled `base` there), summarised (see `summary`)."""
    report = evaluate_variants(reference, [(label, candidate)], ctx, rows=rows, progress_span=progress_span)
    out = summary(report, label)
    if out:
        out["report_path"] = str(result_path(ctx.run_dir / EVAL_DIR, "evaluate"))
    return out

