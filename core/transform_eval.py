"""Score the output of a merge / prune / distill job with the forgetting report (core.evaluate).

The evaluate job itself runs in-process, inside the calling job, on a sub-folder of the run (`<run>/eval/`),
so its result file (the evaluate kind's, from the job registry) is the one the Evaluate page reads. Its progress maps onto a slice of the
calling job's progress bar, and each model it finishes can be forwarded as a live metrics row.

Which task rows a verdict is about (`task_data_for`): the dataset the user chose; else the data of the run the
model came from (a train run's eval_dataset or training data, a distill run's held-out rows, a merge / prune
run's own task data); else the built-in demo ticket task, said so in the result.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from core.data.formats import resolve_data_path
from core.evaluate.job import run as run_evaluation
from core.evaluate.report import metric_table
from core.evaluate.task import TaskDataError, load_task
from core.models import ModelSource
from core.runs.card import source_run_of
from core.runs.jobs import JobContext, parse_spec, read_result, read_spec_dict, result_path
from core.runs.spec import spec_to_dict, write_spec
from core.workspace import REPO_ROOT, runs_dir

EVAL_DIR = "eval"
GENERAL_SCORE = "general_mc_acc_norm"
DEMO_TASK = REPO_ROOT / "assets" / "demo" / "eval.jsonl"  # the evaluate job's default task (core.evaluate.spec)
DEMO_TRAIN = REPO_ROOT / "assets" / "demo" / "train.jsonl"
TASK_DATA_HELP = ("Task rows the verdict is scored on (JSONL / JSON / CSV / Parquet file or dataset folder; the last assistant turn "
                  "is the reference). Empty: the data of the run the model came from when it is known, else the built-in demo "
                  "ticket task.")


@dataclass(frozen=True)
class TaskData:
    """The task rows a verdict is scored on, and why those."""

    path: str  # absolute, as the evaluate job's task_dataset
    origin: str  # "chosen" | "run" | "held_out" | "demo"
    note: str  # one sentence for the page

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_dataset(text: str) -> Path:
    """A dataset path as typed (core.data.formats.resolve_data_path: absolute, from the working folder, or from the
    repository), made absolute so that the evaluate job reads the same file."""
    return resolve_data_path(text.strip()).resolve()


def demo_task(reason: str) -> TaskData:
    return TaskData(str(DEMO_TASK), "demo", f"the built-in demo ticket task ({reason})")


def task_data_for(chosen: str, sources: Iterable[ModelSource | None]) -> TaskData:
    """The chosen dataset; else the task data of the first source's run (the fine-tuned inputs first); else the demo."""
    if str(chosen or "").strip():
        path = resolve_dataset(chosen)
        if not path.exists():
            raise ValueError(f"task dataset not found: {chosen}")
        return TaskData(str(path), "chosen", f"your dataset {chosen}")
    for source in sources:
        found = run_task_data(source) if source is not None else None
        if found is not None:
            return found
    return demo_task("no task dataset chosen and no training run known for the model")


def run_task_data(source: ModelSource) -> TaskData | None:
    """The task data of the run a model (or its adapter) was made by, or None when it came from no run or its data
    has no conversation ending in an answer."""
    for artifact in (source.adapter, source.ref if source.kind == "local" else ""):
        run_id = source_run_of(artifact) if artifact else None
        if not run_id:
            continue
        run_dir = runs_dir() / run_id
        try:
            spec = read_spec_dict(run_dir)
        except (FileNotFoundError, ValueError):
            continue
        found = _task_of_run(run_id, run_dir, spec)
        if found is None:
            continue
        try:
            load_task(found.path, 1, 0)
        except TaskDataError as exc:
            return demo_task(f"run {run_id}'s data cannot be scored as a task: {exc}")
        return found
    return None


def _task_of_run(run_id: str, run_dir: Path, spec: dict) -> TaskData | None:
    kind = spec.get("kind")
    result = read_result(run_dir, kind, default=None) or {}
    recorded = (result.get("task_dataset") or {}) if isinstance(result, dict) else {}
    if recorded.get("path"):  # a merge / prune / distill run: what its own verdict was scored on
        return TaskData(recorded["path"], "run", f"the task data of run {run_id}: {recorded.get('note', recorded['path'])}")
    if kind != "train":
        return None
    if str(spec.get("eval_dataset") or "").strip():
        return TaskData(str(resolve_dataset(spec["eval_dataset"])), "run", f"the eval dataset of training run {run_id}")
    if not str(spec.get("dataset") or "").strip():
        return None
    data = resolve_dataset(spec["dataset"])
    if data == DEMO_TRAIN.resolve():
        return TaskData(str(DEMO_TASK), "run", f"training run {run_id} learnt the demo ticket task: its held-out rows")
    return TaskData(str(data), "run", f"the training data of run {run_id} (rows it learnt from, so the task score shows what it "
                    "learnt rather than how it generalises)")


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
                      on_model: Callable[[dict], None] | None = None, task_dataset: str = "", reuse: bool = False) -> dict:
    """Run core.evaluate's job on `reference` (as the base) and the variants; returns its report dict. reuse: a report
    that `subdir` already holds from the same evaluate spec is returned instead (a job started again on models it made
    before and kept)."""
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
    done = sub.read_result(default={}) if reuse else {}
    if done and done.get("spec") == spec_to_dict(sub.spec):
        ctx.log.info("scoring: the report in %s/ is of the same models and settings; kept", subdir)
        return done
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


def score_against(reference: ModelSource, candidate: ModelSource, ctx: JobContext, *, task: TaskData, rows: int = 20,
                  progress_span: tuple[float, float] = (0.0, 1.0), label: str = "candidate") -> dict:
    """The forgetting report of one candidate against its reference (labelled `base` there) on `task`'s rows,
    summarised (see `summary`), with the task data it was scored on."""
    report = evaluate_variants(reference, [(label, candidate)], ctx, rows=rows, progress_span=progress_span, task_dataset=task.path)
    out = summary(report, label)
    if out:
        out["report_path"] = str(result_path(ctx.run_dir / EVAL_DIR, "evaluate"))
        out["task_dataset"] = task.as_dict()
    return out

