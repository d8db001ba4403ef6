"""The job registry: kind -> (spec class, run function, result file). One table; everything else reads it.

A job function takes a JobContext whose `spec` is already the parsed spec dataclass (the worker parses
spec.yaml once, through the registry) and returns a small JSON-able summary for status.json. Its full
result goes to the kind's result file (`ctx.write_result`), which pages read through `read_result`.
Spec classes and run functions are named as "module:attribute" strings and imported only when used, so
reading the table imports neither torch nor the jobs' libraries.

To add a job kind: write its spec dataclass (fields with `core.runs.spec.meta`) and its `run(ctx)`, then
add one `JobKind` line to JOBS below.
"""
from __future__ import annotations

import importlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from core.runs.metrics import append_metrics
from core.runs.spec import load_yaml, spec_to_dict, write_spec
from core.runs.status import METRICS_FILE, SPEC_FILE
from core.workspace import atomic_write_json


@dataclass(frozen=True)
class JobKind:
    name: str
    spec: str  # "module:Class", the spec dataclass (has a `kind` ClassVar equal to `name`)
    run: str  # "module:function", called with a JobContext
    result_file: str  # the job's full result, written with ctx.write_result and read with read_result
    exclusive: bool = True  # holds the accelerator (on CPU: every core): one exclusive job at a time
    title: str = ""
    outputs: tuple[str, ...] = ()  # what a user takes away, under the run folder (model folders, reports), in order
    model_output: str = ""  # the one of `outputs` that holds a whole model (config.json + weights), if any
    legacy_result_files: tuple[str, ...] = ()  # what older workbenches named the result file (still read, never written)

    def spec_class(self) -> type:
        return _import(self.spec)

    def run_function(self) -> Callable[[JobContext], dict | None]:
        return _import(self.run)

    def parse_spec(self, data: dict) -> Any:
        """The spec dataclass from a spec.yaml mapping; InvalidSpec names the field that is wrong."""
        cls = self.spec_class()
        try:
            return cls.from_dict({k: v for k, v in dict(data or {}).items() if k != "kind"})
        except (TypeError, ValueError) as exc:
            raise InvalidSpec(f"{SPEC_FILE} ({self.name}): {exc}") from None


JOBS: dict[str, JobKind] = {job.name: job for job in (
    JobKind("train", "core.train.spec:TrainSpec", "core.train.job:run", "training.json", title="Training run",
            outputs=("adapter", "model", "merged"), legacy_result_files=("run_card.json",)),
    JobKind("evaluate", "core.evaluate.spec:EvalSpec", "core.evaluate.job:run", "report.json", title="Forgetting report",
            outputs=("report.json",)),
    JobKind("merge", "core.merge.spec:MergeSpec", "core.merge.job:run", "result.json", title="Merge",
            outputs=("merged", "sweep"), model_output="merged"),
    JobKind("prune", "core.prune.spec:PruneSpec", "core.prune.job:run", "result.json", title="Prune",
            outputs=("pruned",), model_output="pruned"),
    JobKind("distill", "core.distill.spec:DistillSpec", "core.distill.job:run", "result.json", title="Distillation",
            outputs=("student",), model_output="student"),
    JobKind("teacher_answers", "core.distill.spec:TeacherAnswersSpec", "core.distill.sequence:run", "result.json",
            title="Teacher answers (sequence-level distillation)"),
    # runs its teacher-answers / train / distill / evaluate children in its own process, so it holds the lock itself
    JobKind("distill_compare", "core.distill.spec:DistillCompareSpec", "core.distill.compare:run", "result.json",
            title="Distillation variants compared"),
    JobKind("export", "core.export.spec:ExportSpec", "core.export.job:run", "export.json", title="Export", outputs=("export",)),
    JobKind("download", "core.download.spec:DownloadSpec", "core.download.job:run", "download.json", exclusive=False,
            title="Model download"),
    JobKind("feature_extraction", "core.compare.spec:FeatureExtractionSpec", "core.compare.job:run_feature_extraction",
            "features.json", title="Feature-extraction baseline"),
    # an orchestrator: its train / evaluate children take the exclusive lock in turn
    JobKind("method_comparison", "core.compare.spec:MethodComparisonSpec", "core.compare.job:run_comparison",
            "comparison.json", exclusive=False, title="Method comparison"),
    # the Data page's heavy curation (de-duplication, decontamination, audit, diversity); CPU only, never queued behind training
    JobKind("curate", "core.data.curate_job:CurateSpec", "core.data.curate_job:run", "curation.json", exclusive=False, title="Curation"),
    JobKind("answer_loss", "core.evaluate.answer_loss:AnswerLossSpec", "core.evaluate.answer_loss:run", "answer_loss.json",
            title="Answer loss"),
    JobKind("judge", "core.evaluate.judge_job:JudgeSpec", "core.evaluate.judge_job:run", "judge.json", title="Pairwise judge (win rate)"),
    JobKind("baseline", "core.decide:BaselineSpec", "core.decide:run_baseline", "baseline.json", title="Decide baseline"),
    JobKind("rag_index", "core.rag.spec:RagIndexSpec", "core.rag.job:run_index", "retrieval.json", exclusive=False,
            title="RAG index + retrieval recall"),
    JobKind("raft", "core.rag.spec:RaftSpec", "core.rag.job:run_raft", "raft_build.json", title="RAFT dataset"),
    JobKind("raft_eval", "core.rag.spec:RaftEvalSpec", "core.rag.job:run_raft_eval", "raft_report.json", title="RAFT evaluation"),
    JobKind("selftest", "core.runs.selftest:SelftestSpec", "core.runs.selftest:run", "result.json", title="Job-system self-test"),
)}


class JobError(RuntimeError):
    """A failure the job can explain in one human sentence (shown as the run's error)."""


class InvalidSpec(JobError, ValueError):
    """spec.yaml does not describe a valid job (unknown kind, unknown field, value out of range)."""


class JobStopped(Exception):
    """Raised when a second stop request arrives while the job ignores the first."""


def _import(target: str) -> Any:
    module_name, attribute = target.split(":")
    return getattr(importlib.import_module(module_name), attribute)


def job_kind(kind: str) -> JobKind:
    try:
        return JOBS[kind]
    except KeyError:
        raise InvalidSpec(f"unknown job kind {kind!r}; known kinds: {', '.join(JOBS)}") from None


def model_kinds() -> tuple[str, ...]:
    """The kinds whose finished runs hold a model to evaluate, export or chat with (train: its adapter or model)."""
    return ("train", *(job.name for job in JOBS.values() if job.model_output))


def jobs_markdown() -> str:
    """The registry as README's table of job kinds (README carries it between `<!-- jobs -->` markers; a test
    checks it is current)."""
    lines = ["| kind | what | result file | runs on the accelerator |", "|---|---|---|---|"]
    lines += [f"| `{job.name}` | {job.title} | `{job.result_file}` | {'yes, one at a time' if job.exclusive else 'no'} |"
              for job in JOBS.values()]
    return "\n".join(lines)


def kind_names() -> str:
    return ", ".join(JOBS)


def parse_spec(data: dict) -> Any:
    """The spec dataclass of a spec.yaml mapping, chosen by its `kind`."""
    if not isinstance(data, dict) or not data.get("kind"):
        raise InvalidSpec(f"{SPEC_FILE} needs a `kind` ({kind_names()})")
    return job_kind(str(data["kind"])).parse_spec(data)


def read_spec_dict(run_dir: str | Path) -> dict:
    path = Path(run_dir) / SPEC_FILE
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: is this a run folder?") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or "kind" not in data:
        raise ValueError(f"{path} must be a mapping with a 'kind' field ({kind_names()})")
    return data


def result_path(run_dir: str | Path, kind: str | None = None) -> Path:
    """Where a run's result file lives (its kind is read from spec.yaml when not given)."""
    run_dir = Path(run_dir)
    if kind is None:
        kind = read_spec_dict(run_dir)["kind"]
    job = job_kind(kind)
    path = run_dir / job.result_file
    if not path.exists():
        path = next((run_dir / name for name in job.legacy_result_files if (run_dir / name).exists()), path)
    return path


def read_result(run_dir: str | Path, kind: str | None = None, default: Any = None) -> Any:
    """A run's result file as JSON (None / `default` while it has not been written)."""
    try:
        return json.loads(result_path(run_dir, kind).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return default


@dataclass
class JobContext:
    run_dir: Path
    spec: Any  # the parsed spec dataclass
    log: logging.Logger
    set_progress: Callable[[float, str], None]
    _stop: Callable[[], bool]
    spec_data: dict = field(default_factory=dict)  # spec.yaml as written (kind included), for run cards
    started: float = field(default_factory=time.time)
    # which process of a multi-process training run this is (core.train.distributed.RankInfo); None: the only one
    rank: Any = None

    @classmethod
    def in_process(cls, run_dir: str | Path, spec: Any, *, log: logging.Logger | None = None,
                   set_progress: Callable[[float, str], None] | None = None,
                   stop: Callable[[], bool] | None = None) -> JobContext:
        """A context for running a job function in this process (a job inside a job, tests, benchmarks):
        `spec` is a spec dataclass or a spec.yaml mapping, parsed through the registry like the worker does."""
        parsed = parse_spec(spec) if isinstance(spec, dict) else spec
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        return cls(run_dir=run_dir, spec=parsed, spec_data=spec_to_dict(parsed),
                   log=log or logging.getLogger(f"workbench.{type(parsed).kind}"),
                   set_progress=set_progress or (lambda fraction, message: None), _stop=stop or (lambda: False))

    @property
    def kind(self) -> str:
        return type(self.spec).kind

    @property
    def stop_requested(self) -> bool:
        return self._stop()

    def metrics(self, **row: Any) -> None:
        append_metrics(self.run_dir / METRICS_FILE, row)

    def progress(self, fraction: float, message: str = "") -> None:
        self.set_progress(max(0.0, min(1.0, float(fraction))), message)

    def path(self, *parts: str) -> Path:
        path = self.run_dir.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_json(self, name: str, obj: Any) -> Path:
        return atomic_write_json(self.path(name), obj)

    def result_path(self) -> Path:
        return result_path(self.run_dir, self.kind)

    def write_result(self, obj: Any) -> Path:
        """The job's full result, in the file the registry names for its kind."""
        return self.write_json(job_kind(self.kind).result_file, obj)

    def child(self, subdir: str, spec: dict, span: tuple[float, float] = (0.0, 1.0), label: str = "") -> JobContext:
        """A context for a job run inside this one, in `<run>/<subdir>/` (a readable run of its own kind, with its
        spec.yaml, metrics and result file): its progress maps onto `span` of this job's bar, and a stop of this job
        stops it too."""
        low, high = span
        prefix = f"{label}: " if label else ""
        sub = JobContext.in_process(self.path(subdir, SPEC_FILE).parent, spec, log=self.log, stop=self._stop,
                                    set_progress=lambda fraction, message: self.progress(low + (high - low) * fraction, prefix + message))
        write_spec(sub.run_dir, sub.spec)
        return sub

    def read_json(self, name: str, default: Any = None) -> Any:
        try:
            return json.loads((self.run_dir / name).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return default

    def read_result(self, default: Any = None) -> Any:
        return read_result(self.run_dir, self.kind, default)


if __name__ == "__main__":  # `python -m core.runs.jobs`: the table README carries
    print(jobs_markdown())
