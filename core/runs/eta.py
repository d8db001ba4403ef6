"""How long a job will take on this machine, said before it starts, from this machine's own finished runs.

No calibration is invented: every finished (succeeded) run in the workspace is a measurement — its size, read from
its spec.yaml (and its result where the spec leaves the size open, e.g. the steps an epoch run took), against the
time it ran (status.json's `run_seconds`: every launch of the folder, Stop / Resume included). A new job of the same
kind on the same model is predicted from those measurements: with two or more different sizes a straight line
`seconds = fixed + per_unit * size` (the fixed part is loading the model, tokenising, saving), with one a plain rate.
Without a measurement the estimate says so ("first … on this machine: no estimate yet").

A job's size is counted in a unit of its own kind (SIZES): training sequences, generated tokens, scored rows, merge
points, the bytes of a RAG corpus, an exported model's parameters. Only runs of the same kind, the same model and the
same variant (objective, method, formats) are compared, so a measurement of a tiny model never predicts the 135 M one.
Export compares across models instead: its cost grows with the parameters it converts, so its size is them.

Resuming a stopped training run is predicted from that run alone (`resume`): its own seconds per step, read from its
metrics.jsonl, times the steps left after its newest checkpoint, plus what each of its launches spent outside the
steps (loading the model, tokenising, saving) — no other run knows this run's speed as well.

`machine_busy()` says when other programs hold the cores (the 1-minute load average beyond what this workspace's own
running jobs account for), because every estimate assumes the cores are the job's.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Callable

from core.runs.jobs import JOBS
from core.runs.metrics import read_all_metrics, run_segments
from core.runs.status import METRICS_FILE, RunStatus, read_status
from core.workspace import REPO_ROOT

RECENT = 8  # measurements used, newest first: the machine's recent speed, not last year's
LONG_JOB_SECONDS = 20.0  # below this a job needs no estimate to be started with confidence


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _checkpoints(run_dir: str) -> int:
    folder = Path(run_dir) / "checkpoints" if run_dir else None
    return len(list(folder.glob("checkpoint-*"))) if folder and folder.is_dir() else 0


def _train_size(spec: dict, rows: int | None, result: dict) -> float | None:
    per_step = max(1, _int(spec.get("batch_size"), 1)) * max(1, _int(spec.get("gradient_accumulation"), 1))
    steps = _int(result.get("global_step"))
    if not steps:
        steps = _int(spec.get("max_steps"))
    if steps <= 0:  # epochs decide: the rows the page counted
        if not rows:
            return None
        steps = math.ceil(rows * float(spec.get("num_epochs") or 1) / per_step)
    generations = max(1, _int(spec.get("num_generations"), 1)) if spec.get("objective") == "grpo" else 1
    return float(steps * per_step * generations)


def _evaluate_size(spec: dict, rows: int | None, result: dict) -> float:  # noqa: ARG001 - one signature for every kind
    models = 1 + len(spec.get("variants") or []) + _checkpoints(str(spec.get("checkpoints_of") or ""))
    per_model = _int(spec.get("task_samples"), 12) * max(1, _int(spec.get("max_new_tokens"), 48))
    return float(models * (per_model + _int(spec.get("general_samples"), 16) + _int(spec.get("mc_samples"), 60)))


def _baseline_size(spec: dict, rows: int | None, result: dict) -> float:  # noqa: ARG001
    conditions = len(spec.get("shots") or [0, 3]) + (1 if spec.get("documents") else 0)
    return float(_int(spec.get("n"), 8) * conditions * max(1, _int(spec.get("max_new_tokens"), 96)))


def _answer_loss_size(spec: dict, rows: int | None, result: dict) -> float | None:  # noqa: ARG001
    counted = _int(result.get("rows")) or rows
    return float(counted) if counted else None


def _merge_size(spec: dict, rows: int | None, result: dict) -> float:  # noqa: ARG001
    points = max(1, len(spec.get("sweep") or []))
    return float(points * (1 + (_int(spec.get("eval_rows"), 20) if spec.get("evaluate", True) else 0)))


def _distill_size(spec: dict, rows: int | None, result: dict) -> float:  # noqa: ARG001
    trained = _int(spec.get("steps"), 60) * max(1, _int(spec.get("batch_size"), 4))
    return float(trained + (2 * _int(spec.get("eval_rows"), 20) if spec.get("evaluate", True) else 0))


def _teacher_answers_size(spec: dict, rows: int | None, result: dict) -> float:  # noqa: ARG001
    return float(_int(spec.get("max_rows"), 2000) * max(1, _int(spec.get("max_new_tokens"), 128)))


def _judge_size(spec: dict, rows: int | None, result: dict) -> float | None:  # noqa: ARG001
    pairs = _int(result.get("n_pairs")) or _int(spec.get("samples"), 20) or rows
    if not pairs:
        return None
    return float(pairs * 2 * (max(1, _int(spec.get("max_new_tokens"), 48)) + max(1, _int(spec.get("verdict_tokens"), 8))))


def _prune_size(spec: dict, rows: int | None, result: dict) -> float:  # noqa: ARG001
    scored = 2 * _int(spec.get("eval_rows"), 20) if spec.get("evaluate", True) else 0  # the model before and after
    return float(1 + scored)


def _export_size(spec: dict, rows: int | None, result: dict) -> float | None:
    """The parameters the export converts: what the job recorded, else what the page read from the safetensors headers
    (`rows`). A verify-only relaunch re-reads the files instead, so it is a variant of its own."""
    parameters = _int(result.get("parameters")) or _int(rows)
    return float(parameters) if parameters > 0 else None


def _comparison_size(spec: dict, rows: int | None, result: dict) -> float:  # noqa: ARG001
    methods = max(1, len(spec.get("methods") or []))
    trained = _int(spec.get("max_steps"), 20) * max(1, _int(spec.get("batch_size"), 4))
    scored = _int(spec.get("task_samples"), 12) * max(1, _int(spec.get("max_new_tokens"), 48))
    scored += _int(spec.get("general_samples"), 8) + _int(spec.get("mc_samples"), 40)
    return float(methods * trained + (methods + 1) * scored)  # every method trains; the base and each method are scored


def source_bytes(path: str | Path) -> int:
    """Bytes on disk of a document source (a file, or every file under a folder; a relative path is tried in the
    repository too, where the demo handbook ships). 0 when it is absent."""
    found = Path(str(path or "")).expanduser()
    if not str(path or "").strip():
        return 0
    if not found.is_absolute() and not found.exists():
        found = REPO_ROOT / found
    if found.is_file():
        return found.stat().st_size
    return sum(f.stat().st_size for f in found.rglob("*") if f.is_file()) if found.is_dir() else 0


def _corpus_size(spec: dict, rows: int | None, result: dict) -> float | None:  # noqa: ARG001
    if result.get("index_reused"):  # an index an earlier job built: this run timed only the retrieval, not the corpus
        return None
    counted = _int(result.get("corpus_bytes")) or source_bytes(spec.get("documents") or "")
    return float(counted) if counted else None


def _resume_size(spec: dict, rows: int | None, result: dict) -> float | None:  # noqa: ARG001
    """Steps left: the run's step target (its spec, else the total its last launch logged) minus its newest
    checkpoint's step (`from_step`, where a resume restarts)."""
    total = _int(spec.get("max_steps"))
    if total <= 0:
        starts = [r for r in _run_rows(spec) if r.get("event") == "start"]
        total = _int(starts[-1].get("total_steps")) if starts else 0
    left = total - _int(spec.get("from_step"))
    return float(left) if total > 0 and left > 0 else None


def _run_rows(spec: dict) -> list[dict]:
    return read_all_metrics(Path(str(spec.get("run_dir") or "")) / METRICS_FILE) if spec.get("run_dir") else []


def own_pace(spec: dict) -> tuple[float, float] | None:
    """(seconds per step, seconds per launch outside the steps) of the training run at spec["run_dir"], from its own
    metrics.jsonl and status.json; None before it logged a step. Each launch's step time is its last `elapsed_s`
    (counted from its first step) over the steps it advanced; the rest of the run's time, per launch, is the fixed part."""
    steps = seconds = 0.0
    for segment in run_segments(_run_rows(spec)):
        start = next((r for r in segment if r.get("event") == "start"), None)
        timed = [r for r in segment if isinstance(r.get("elapsed_s"), (int, float)) and isinstance(r.get("step"), int)]
        if start is None or not timed:
            continue
        steps += max(r["step"] for r in timed) - _int(start.get("step"))
        seconds += max(r["elapsed_s"] for r in timed)
    if steps <= 0 or seconds <= 0:
        return None
    status = read_status(spec["run_dir"])
    launches = max(1, status.attempts)
    outside = max(0.0, ((status.run_seconds or 0.0) - seconds) / launches) if status.is_final else 0.0
    return seconds / steps, outside


@dataclass(frozen=True)
class Size:
    unit: str  # what one unit is, for the reader
    measure: Callable[[dict, int | None, dict], float | None]  # (spec.yaml mapping, rows the page counted, result) -> units
    model_keys: tuple[str, ...]  # the spec fields naming the model the speed depends on
    variant_keys: tuple[str, ...] = ()  # spec fields that change the cost per unit (objective, method)
    own_run: bool = False  # predicted from the run at spec["run_dir"] alone (own_pace), not from other finished runs


SIZES: dict[str, Size] = {
    "train": Size("training sequences", _train_size, ("model",), ("objective", "method", "max_length")),
    "evaluate": Size("generated tokens and scored texts", _evaluate_size, ("base",)),
    "baseline": Size("generated tokens", _baseline_size, ("model",)),
    "answer_loss": Size("scored rows", _answer_loss_size, ("model",)),
    "merge": Size("merge points (and their scored rows)", _merge_size, ("base", "models"), ("method",)),
    "distill": Size("student sequences", _distill_size, ("teacher", "student_model"), ("method", "student")),
    "judge": Size("answer and verdict tokens", _judge_size, ("model", "baseline", "judge"), ("judge_runtime",)),
    "teacher_answers": Size("answer tokens at most", _teacher_answers_size, ("teacher",), ("data", "dataset_path", "decoding")),
    "prune": Size("scored rows (before and after) and the prune itself", _prune_size, ("model",), ("mode",)),
    "export": Size("parameters converted", _export_size, (), ("formats", "quantize", "merged_dtype", "validate", "verify_only")),
    "method_comparison": Size("training sequences, generated tokens and scored texts", _comparison_size, ("model",), ("max_length",)),
    "rag_index": Size("bytes of documents", _corpus_size, (), ("chunk_tokens", "overlap", "questions")),
    "raft": Size("bytes of documents", _corpus_size, ("model", "question_model"),
                 ("question_source", "questions", "max_chunks", "max_new_tokens", "chunk_tokens", "k")),
    "resume": Size("training steps left", _resume_size, ("run_dir",), own_run=True),
}


def job_size(kind: str, spec: dict, rows: int | None = None, result: dict | None = None) -> float | None:
    """The job's size in its kind's unit (None when it cannot be told, e.g. an epoch run whose rows are not counted)."""
    size = SIZES.get(kind)
    return size.measure(spec, rows, result or {}) if size else None


def speed_key(kind: str, spec: dict) -> str:
    """What must match for one run's speed to predict another's: the kind, the model, the variant. A field the spec
    leaves out counts as its default (a spec.yaml written by hand or by `create_run_from_dict` holds only what it set)."""
    size = SIZES[kind]
    defaults = _spec_defaults(kind)
    picked = {k: spec.get(k, defaults.get(k)) for k in size.model_keys + size.variant_keys}
    return kind + ":" + json.dumps(picked, sort_keys=True, default=str)


def _spec_defaults(kind: str) -> dict:
    """The kind's spec dataclass defaults (read from its fields: nothing is validated or loaded); {} for a pseudo-kind."""
    if kind not in JOBS:
        return {}
    found = {}
    for item in dataclasses.fields(JOBS[kind].spec_class()):
        if item.default is not dataclasses.MISSING:
            found[item.name] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            found[item.name] = item.default_factory()
    return found


@dataclass(frozen=True)
class Measurement:
    run_id: str
    units: float
    seconds: float


def measurement(kind: str, spec: dict, status: RunStatus, run_id: str = "") -> Measurement | None:
    """One finished run as a measurement (None unless it succeeded with a known size and duration)."""
    if status.state != "succeeded" or kind not in SIZES:
        return None
    units, seconds = job_size(kind, spec, result=status.result or {}), status.run_seconds
    if not units or not seconds or seconds <= 0:
        return None
    return Measurement(run_id, float(units), float(seconds))


def measurements(kind: str, spec: dict, summaries: list) -> list[Measurement]:
    """This machine's measurements for a job like `spec`: finished runs (core.runs.RunSummary, newest first) of the
    same kind, model and variant, at most RECENT of them."""
    key = speed_key(kind, spec)
    found = []
    for run in summaries:
        if run.kind != kind or speed_key(kind, run.spec) != key:
            continue
        if (m := measurement(kind, run.spec, run.status, run.run_id)) is not None:
            found.append(m)
        if len(found) >= RECENT:
            break
    return found


def predict(units: float, measured: list[Measurement]) -> float | None:
    """Seconds for a job of `units` from measurements; None without any.

    Two or more different sizes: a least-squares line, fixed + per-unit. When the size made no measurable difference
    (slope <= 0: loading the model and starting the worker dominate, as in a short baseline), the median duration;
    when the line says there is no fixed part (fixed < 0), the median rate. One size only: the median rate (it
    cannot tell the fixed part from the per-unit cost, so a bigger job is over-estimated rather than under-)."""
    if not measured or units <= 0:
        return None
    xs, ys = [m.units for m in measured], [m.seconds for m in measured]
    if len(set(xs)) >= 2:
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
        fixed = mean_y - slope * mean_x
        if slope <= 0:
            return median(ys)
        if fixed >= 0:
            return fixed + slope * units
    return median(y / x for x, y in zip(xs, ys)) * units


@dataclass
class Estimate:
    kind: str
    units: float | None
    seconds: float | None
    measured: list[Measurement] = field(default_factory=list)
    basis: str = ""  # where the figure comes from, when not from other finished runs (a resume: the run's own pace)

    @property
    def text(self) -> str:
        unit = SIZES[self.kind].unit if self.kind in SIZES else "units"
        if self.units is None:
            return "No time estimate: the job's size is not known until its data is read."
        if self.basis:
            return (f"⏱️ About {duration_text(self.seconds)} on this machine ({self.units:,.0f} {unit}; {self.basis})."
                    if self.seconds is not None else f"No time estimate: {self.basis}.")
        if self.seconds is None:
            return (f"First {self.kind} job of this kind and model on this machine: no estimate yet (it is measured when "
                    f"this one finishes, and the next one gets an estimate). Size: {self.units:,.0f} {unit}.")
        runs = len(self.measured)
        return (f"⏱️ About {duration_text(self.seconds)} on this machine ({self.units:,.0f} {unit}; from {runs} finished "
                f"{self.kind} run{'s' if runs != 1 else ''} of this model here).")


def duration_text(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds / 5) * 5):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate(kind: str, spec: dict, summaries: list, rows: int | None = None) -> Estimate:
    """The estimate for a job about to start (`spec`: its spec.yaml mapping; `summaries`: core.runs.list_runs())."""
    units = job_size(kind, spec, rows)
    if kind in SIZES and SIZES[kind].own_run:
        pace = own_pace(spec)
        if pace is None:
            return Estimate(kind, units or 0.0, None, basis="this run has not logged a timed step yet")
        if units is None:
            return Estimate(kind, 0.0, None, basis="its newest checkpoint already holds every step")
        per_step, outside = pace
        return Estimate(kind, units, outside + per_step * units,
                        basis=f"this run's own {per_step:.2f} s per step + {outside:.0f} s to load and save")
    if units is None:
        return Estimate(kind, None, None)
    measured = measurements(kind, spec, summaries)
    return Estimate(kind, units, predict(units, measured), measured)


def machine_busy(own_running: int, load: float | None = None, cores: int | None = None) -> str | None:
    """A note when other programs hold the cores: the 1-minute load average beyond what this workspace's running jobs
    account for (each may use every core) is half the cores or more. None on a quiet machine (or without getloadavg)."""
    cores = cores or os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            return None
    others = load - min(load, own_running * cores)
    if others < max(1.0, cores / 2):
        return None
    return (f"Machine busy: load {load:.1f} on {cores} cores, about {others:.1f} of it from other programs — this job "
            "will take longer than the estimate (the estimate assumes the cores are free).")
