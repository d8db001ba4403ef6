"""How long a job will take on this machine, said before it starts, from this machine's own finished runs.

No calibration is invented: every finished (succeeded) run in the workspace is a measurement — its size, read from
its spec.yaml (and its result where the spec leaves the size open, e.g. the steps an epoch run took), against the
time it ran (status.json's `run_seconds`: every launch of the folder, Stop / Resume included). A new job of the same
kind on the same model is predicted from those measurements: with two or more different sizes a straight line
`seconds = fixed + per_unit * size` (the fixed part is loading the model, tokenising, saving), with one a plain rate.
Without a measurement the estimate says so ("first … on this machine: no estimate yet").

A job's size is counted in a unit of its own kind (SIZES): training sequences, generated tokens, scored rows, merge
points. Only runs of the same kind, the same model and the same variant (objective, method) are compared, so a
measurement of a tiny model never predicts the 135 M one.

`machine_busy()` says when other programs hold the cores (the 1-minute load average beyond what this workspace's own
running jobs account for), because every estimate assumes the cores are the job's.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Callable

from core.runs.status import RunStatus

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


@dataclass(frozen=True)
class Size:
    unit: str  # what one unit is, for the reader
    measure: Callable[[dict, int | None, dict], float | None]  # (spec.yaml mapping, rows the page counted, result) -> units
    model_keys: tuple[str, ...]  # the spec fields naming the model the speed depends on
    variant_keys: tuple[str, ...] = ()  # spec fields that change the cost per unit (objective, method)


SIZES: dict[str, Size] = {
    "train": Size("training sequences", _train_size, ("model",), ("objective", "method", "max_length")),
    "evaluate": Size("generated tokens and scored texts", _evaluate_size, ("base",)),
    "baseline": Size("generated tokens", _baseline_size, ("model",)),
    "answer_loss": Size("scored rows", _answer_loss_size, ("model",)),
    "merge": Size("merge points (and their scored rows)", _merge_size, ("base", "models"), ("method",)),
    "distill": Size("student sequences", _distill_size, ("teacher", "student_model"), ("method", "student")),
    "judge": Size("answer and verdict tokens", _judge_size, ("model", "baseline", "judge"), ("judge_runtime",)),
    "teacher_answers": Size("answer tokens at most", _teacher_answers_size, ("teacher",), ("data", "dataset_path", "decoding")),
}


def job_size(kind: str, spec: dict, rows: int | None = None, result: dict | None = None) -> float | None:
    """The job's size in its kind's unit (None when it cannot be told, e.g. an epoch run whose rows are not counted)."""
    size = SIZES.get(kind)
    return size.measure(spec, rows, result or {}) if size else None


def speed_key(kind: str, spec: dict) -> str:
    """What must match for one run's speed to predict another's: the kind, the model, the variant."""
    size = SIZES[kind]
    picked = {k: spec.get(k) for k in size.model_keys + size.variant_keys}
    return kind + ":" + json.dumps(picked, sort_keys=True, default=str)


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

    @property
    def text(self) -> str:
        unit = SIZES[self.kind].unit if self.kind in SIZES else "units"
        if self.units is None:
            return "No time estimate: the job's size is not known until its data is read."
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
