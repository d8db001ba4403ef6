"""The `distill_compare` job: sequence-level, logit and on-policy distillation of the same student at a matched
compute budget, each optionally with replay, scored by the forgetting report against the teacher.

Matched budget: every student starts from the same weights (the teacher keeping every n-th layer) and takes the
same number of optimizer steps of the same batch size and max_length, at the same peak learning rate and the same
precision (the Train job's rule: bf16 autocast over fp32 weights where the hardware computes bf16); what differs is
what it learns from. Sequence-level also pays for the teacher's answers (timed separately).

Per student: task score, general score and general-text perplexity (core.evaluate, the teacher as the reference),
teacher-student agreement on the held-out prompts (the share of answers identical to the teacher's greedy
answer, and their mean ROUGE-L), and wall time. The sub-jobs run in-process in sub-folders of the run, each a
readable run of its own kind (teacher_answers / train / distill / evaluate).
"""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from core.distill.data import DEMO_EVAL
from core.distill.job import STUDENT_DIR
from core.distill.job import run as run_distill
from core.distill.sequence import run as run_answers
from core.distill.sequence import save_shallow_student
from core.distill.spec import VARIANT_LABELS, DistillCompareSpec
from core.models import ModelLoadError, ModelSource, load_model
from core.runs.jobs import JobContext, JobError, read_result
from core.scorers import rouge_l_f1
from core.train.job import MODEL_DIR
from core.train.job import run as run_train
from core.transform_eval import evaluate_variants, model_scores

INIT_DIR = "student_init"
ANSWERS_DIR = "teacher_answers"
EVAL_DIR = "eval"
TIMINGS_FILE = "timings.json"
TEACHER = "teacher"
UNTRAINED = "student before distillation"
COLUMNS = ("student", "variant", "replay", "task_score", "general_score", "general_perplexity", "agreement", "agreement_rouge_l",
           "task_gain", "general_vs_teacher", "steps", "rows_seen", "teacher_s", "train_s", "wall_s")
DEFINITIONS = {
    "task_score": "Task score on the held-out task rows (points, 0-100): JSON field accuracy for JSON answers, ROUGE-L otherwise.",
    "general_score": "General multiple-choice acc_norm (points), the forgetting report's general score.",
    "general_perplexity": "Perplexity on the shipped general texts (lower is better).",
    "agreement": "Share of the held-out prompts (%) on which the student's greedy answer is identical to the teacher's.",
    "agreement_rouge_l": "Mean ROUGE-L F1 (0-100) between the student's and the teacher's greedy answers.",
    "task_gain": "Task score minus that of the student before distillation (points).",
    "general_vs_teacher": "General score minus the teacher's (points); within −3 counts as kept.",
    "budget": "Every student: the same starting weights, optimizer steps, batch size, max_length, peak learning rate and precision.",
    "wall_s": "Seconds to make the student: the teacher's answers (sequence-level only) plus training.",
}


def student_label(variant: str, fraction: float) -> str:
    return VARIANT_LABELS[variant] + (f" + {fraction:.0%} replay" if fraction > 0 else "")


def student_folder(variant: str, fraction: float) -> str:
    return f"students/{variant}-replay{round(fraction * 100):02d}"


# ---------------------------------------------------------------- the job


def run(ctx: JobContext) -> dict:
    spec: DistillCompareSpec = ctx.spec
    timings = ctx.read_json(TIMINGS_FILE) or {}  # seconds per piece of work, summed over attempts (a stopped run resumes)
    init = timed(ctx, timings, "student_init", make_student, ctx, spec)
    students = spec.students()
    span = 0.75 / len(students)
    answers: dict | None = None
    made: list[dict] = []
    for n, (variant, fraction) in enumerate(students):
        if ctx.stop_requested:
            break
        low, label = 0.05 + n * span, student_label(variant, fraction)
        if variant == "sequence":
            if answers is None:
                answers = timed(ctx, timings, TEACHER, teacher_answers, ctx, spec, (low, low + span / 3))
                if answers is None:
                    break
            folder = timed(ctx, timings, label, train_on_answers, ctx, spec, init, answers["dataset_dir"], fraction,
                           (low + span / 3, low + span))
        else:
            folder = timed(ctx, timings, label, distill, ctx, spec, init, variant, fraction, (low, low + span))
        if folder is None:  # stopped part-way: the next attempt continues this student
            break
        teacher_s = timings.get(TEACHER, 0.0) if variant == "sequence" else 0.0
        made.append({"student": label, "variant": variant, "replay": fraction, "folder": str(folder), "steps": spec.steps,
                     "rows_seen": spec.steps * spec.batch_size, "teacher_s": round(teacher_s, 1),
                     "train_s": round(timings[label], 1), "wall_s": round(timings[label] + teacher_s, 1)})
    if ctx.stop_requested or len(made) < len(students):
        return {"note": f"stopped with {len(made)} of {len(students)} students made; start it again to continue"}
    report = timed(ctx, timings, "evaluation", score, ctx, spec, init, made)
    table = comparison_table(report, made)
    result = {"table": table, "definitions": DEFINITIONS, "report_path": str(ctx.run_dir / EVAL_DIR / "report.json"),
              "teacher": spec.teacher_source.label, "budget": {k: getattr(spec, k) for k in ("steps", "batch_size", "max_length",
                                                                                              "learning_rate")},
              "wall_seconds": round(sum(timings.values()), 1), "timings": timings, "replay": replay_summary(table)}
    ctx.write_result(result)
    return {"students": len(made), "wall_seconds": result["wall_seconds"],
            "best_task": max((r for r in table if r["variant"] in VARIANT_LABELS), key=lambda r: r["task_score"] or 0)["student"]}


def timed(ctx: JobContext, timings: dict, key: str, work: Any, *args: Any) -> Any:
    """work(*args), with its seconds added to timings[key] (kept on disk across attempts)."""
    tick = time.time()
    try:
        return work(*args)
    finally:
        timings[key] = round(timings.get(key, 0.0) + time.time() - tick, 2)
        ctx.write_json(TIMINGS_FILE, timings)


def make_student(ctx: JobContext, spec: DistillCompareSpec) -> Path:
    """The starting student, saved once: the teacher (adapter merged) keeping every n-th layer."""
    target = ctx.run_dir / INIT_DIR
    if (target / ".complete").is_file():
        return target
    ctx.progress(0.01, "making the student from the teacher's layers")
    try:
        teacher = load_model(spec.teacher_source)
    except ModelLoadError as exc:
        raise JobError(str(exc)) from None
    path = save_shallow_student(teacher, spec.layer_stride, target)
    del teacher
    return path


def _data_fields(spec: DistillCompareSpec) -> dict:
    return {"data": spec.data, "dataset_path": spec.dataset_path, "max_rows": spec.max_rows}


def teacher_answers(ctx: JobContext, spec: DistillCompareSpec, span: tuple[float, float]) -> dict | None:
    sub_spec = {"kind": "teacher_answers", "teacher": spec.teacher, **_data_fields(spec), "decoding": "greedy",
                "max_new_tokens": spec.answer_tokens, "output_name": f"{ctx.run_dir.name}-teacher-answers",
                **({"keep_unfinished": True, "json_only": "no"} if spec.keep_all_answers else {})}
    result = read_result(ctx.run_dir / ANSWERS_DIR, "teacher_answers")
    if result and Path(result["dataset_dir"]).is_dir():
        return result
    result = run_answers(ctx.child(ANSWERS_DIR, sub_spec, span, "teacher answers"))
    return result if "dataset_dir" in result else None  # None: stopped before the dataset was written


def train_on_answers(ctx: JobContext, spec: DistillCompareSpec, init: Path, dataset: str, fraction: float,
                     span: tuple[float, float]) -> Path:
    """Sequence-level: the ordinary Train job, full fine-tuning of the student on the teacher's answers."""
    folder = student_folder("sequence", fraction)
    card = read_result(ctx.run_dir / folder, "train") or {}
    if card.get("state") == "succeeded" and (card.get("final_metrics") or {}).get("global_step", 0) >= spec.steps:
        return ctx.run_dir / folder / MODEL_DIR
    sub_spec = {"kind": "train", "model": {"kind": "local", "ref": str(init)}, "dataset": dataset, "method": "full",
                "max_steps": spec.steps, "batch_size": spec.batch_size, "learning_rate": spec.learning_rate,
                "lr_scheduler": "cosine", "max_length": spec.max_length, "eval_fraction": 0.0, "save_steps": spec.steps,
                "save_total_limit": 1, "seed": spec.seed, "replay_fraction": fraction, "replay_dataset": spec.replay_dataset,
                "replay_answered_by": spec.teacher, **_replay_answer_fields(spec)}  # the student rehearses the teacher's general answers
    run_train(ctx.child(folder, sub_spec, span, student_label("sequence", fraction)))
    return None if ctx.stop_requested else ctx.run_dir / folder / MODEL_DIR


def _replay_answer_fields(spec: DistillCompareSpec) -> dict:
    """How a teacher other than the embedded model answers the general prompts for replay: as it answers the task's."""
    return {"replay_max_new_tokens": spec.answer_tokens, "replay_keep_unfinished": spec.keep_all_answers}


def distill(ctx: JobContext, spec: DistillCompareSpec, init: Path, method: str, fraction: float, span: tuple[float, float]) -> Path:
    folder = student_folder(method, fraction)
    if (read_result(ctx.run_dir / folder, "distill") or {}).get("steps_done", 0) >= spec.steps:
        return ctx.run_dir / folder / STUDENT_DIR
    sub_spec = {"kind": "distill", "method": method, "teacher": spec.teacher, "student": "model",
                "student_model": {"kind": "local", "ref": str(init)}, **_data_fields(spec), "steps": spec.steps,
                "batch_size": spec.batch_size, "learning_rate": spec.learning_rate, "max_length": spec.max_length,
                "temperature": spec.temperature, "alpha": spec.alpha, "gkd_lambda": spec.gkd_lambda, "gkd_beta": spec.gkd_beta,
                "gkd_temperature": spec.gkd_temperature, "max_new_tokens": spec.max_new_tokens, "replay_fraction": fraction,
                "replay_dataset": spec.replay_dataset, **_replay_answer_fields(spec), "seed": spec.seed, "evaluate": False,
                "eval_dataset": spec.eval_dataset or str(DEMO_EVAL)}  # every variant trains on the same rows (none split off)
    run_distill(ctx.child(folder, sub_spec, span, student_label(method, fraction)))
    return None if ctx.stop_requested else ctx.run_dir / folder / STUDENT_DIR


def score(ctx: JobContext, spec: DistillCompareSpec, init: Path, made: list[dict]) -> dict:
    variants = [(UNTRAINED, ModelSource("local", str(init)))] + [(m["student"], ModelSource("local", m["folder"])) for m in made]
    report = evaluate_variants(spec.teacher_source, variants, ctx, rows=spec.eval_rows, progress_span=(0.8, 1.0), subdir=EVAL_DIR,
                               task_dataset=spec.eval_dataset, reuse=True)  # started again, the students it scored are the same
    if not report:
        raise JobError("the evaluation of the students did not finish")
    return report


# ---------------------------------------------------------------- the table


def agreement(report: dict, label: str, reference: str) -> tuple[float | None, float | None]:
    """(% of held-out prompts answered exactly as the reference did, mean ROUGE-L × 100) from the report's answers."""
    pairs = [(e["answers"][label], e["answers"][reference]) for e in report.get("examples", []) if label in e.get("answers", {})]
    if not pairs:
        return None, None
    exact = 100.0 * sum(a.strip() == b.strip() for a, b in pairs) / len(pairs)
    return round(exact, 1), round(100.0 * sum(rouge_l_f1(a, b) for a, b in pairs) / len(pairs), 1)


def comparison_table(report: dict, made: list[dict]) -> list[dict]:
    """One row per model: the teacher, the student before distillation, then every distilled student."""
    reference = report["models"][0]["label"]
    points = lambda v: None if v is None else round(v, 1)  # noqa: E731 - the report's scores are points already
    teacher, untrained = model_scores(report, reference), model_scores(report, UNTRAINED)
    rows = []
    for info in [{"student": TEACHER, "variant": TEACHER, "replay": 0.0}, {"student": UNTRAINED, "variant": "none", "replay": 0.0}] + made:
        label = reference if info["student"] == TEACHER else info["student"]
        scores = model_scores(report, label)
        exact, rouge = agreement(report, label, reference) if label != reference else (100.0, 100.0)
        row = {"student": info["student"], "variant": info["variant"], "replay": info["replay"],
               "task_score": points(scores.get("task_score")), "general_score": points(scores.get("general_score")),
               "general_perplexity": _round(scores.get("general_perplexity"), 2), "agreement": exact, "agreement_rouge_l": rouge,
               "task_gain": _diff(points(scores.get("task_score")), points(untrained.get("task_score"))),
               "general_vs_teacher": _diff(points(scores.get("general_score")), points(teacher.get("general_score")))}
        row.update({k: info.get(k) for k in ("steps", "rows_seen", "teacher_s", "train_s", "wall_s")})
        rows.append(row)
    return rows


def replay_summary(table: list[dict], points: float = 3.0) -> list[dict]:
    """For every student trained with replay: is its general score within `points` of the teacher's, and does it keep
    the task gain of the same variant without replay (at least 90 % of it)? keeps_task_gain is None where that
    variant gained nothing on the task to keep (or a score is missing)."""
    plain = {r["variant"]: r for r in table if r["replay"] == 0 and r["variant"] in VARIANT_LABELS}
    out = []
    for row in table:
        if row["replay"] > 0 and row["variant"] in plain:
            base_gain = plain[row["variant"]]["task_gain"]
            gained = row["task_gain"] is not None and base_gain is not None and base_gain > 0
            keeps_task = row["task_gain"] >= 0.9 * base_gain if gained else None
            general_ok = row["general_vs_teacher"] is not None and row["general_vs_teacher"] >= -points
            out.append({"student": row["student"], "general_within_3_points": general_ok, "keeps_task_gain": keeps_task,
                        "general_vs_teacher": row["general_vs_teacher"], "task_gain": row["task_gain"],
                        "task_gain_without_replay": base_gain})
    return out


def _kept(keeps_task_gain: bool | None) -> str:
    return "no gain to keep" if keeps_task_gain is None else ("kept" if keeps_task_gain else "lost")


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 1)


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f}"


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


# ---------------------------------------------------------------- chart and exports (pure data → figure / text)


def comparison_figure(table: list[dict]) -> Any:
    """Task score, general score and agreement per model, grouped bars."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for key, name in (("task_score", "task score"), ("general_score", "general score"), ("agreement_rouge_l", "agreement (ROUGE-L)")):
        fig.add_bar(name=name, x=[r["student"] for r in table], y=[r[key] for r in table])
    fig.update_layout(barmode="group", title="What each student kept: task, general ability, agreement with the teacher",
                      yaxis_title="points (0-100)", legend_title_text="")
    return fig


def table_csv(table: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def table_markdown(result: dict) -> str:
    table = result["table"]
    lines = [f"# Distillation variants: teacher {result.get('teacher', '')}", "",
             "Budget per student: " + ", ".join(f"{k} {v}" for k, v in result.get("budget", {}).items()), "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join("—" if r.get(c) is None else str(r.get(c)) for c in COLUMNS) + " |" for r in table]
    if result.get("replay"):
        lines += ["", "## Replay", ""]
        lines += [f"- {r['student']}: general {_signed(r['general_vs_teacher'])} points vs the teacher "
                  f"({'within' if r['general_within_3_points'] else 'outside'} 3), task gain {r['task_gain']} "
                  f"({_kept(r['keeps_task_gain'])}; {r['task_gain_without_replay']} without replay)" for r in result["replay"]]
    lines += ["", "## Definitions", ""] + [f"- **{k}**: {v}" for k, v in result.get("definitions", {}).items()]
    return "\n".join(lines) + "\n"


def table_json(result: dict) -> str:
    return json.dumps(result, indent=2)
