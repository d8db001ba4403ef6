"""Sequence-level distillation (Kim & Rush, 2016): the teacher writes the answers, the student imitates them.

The `teacher_answers` job: the teacher (any loadable model + adapter) answers the prompts of a dataset on the
one generation path (`core.generation.batch_answers`), greedy or sampled; unfinished, empty and (for
JSON tasks) non-JSON answers are dropped as curation operations; the rows are written as a workspace dataset
with a manifest (teacher, decoding settings, hashes) by `core.data.curate.export_curated`. The ordinary Train
job then trains any student on it with any method: the data is text, so the student's tokenizer can differ.

A row's prompt is every message before its last assistant turn (a row ending in a user turn is all prompt);
only that last answer is rewritten, earlier turns are kept as they are.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from core import generation, scorers
from core.data.curate import MANIFEST_FILE, CurationOperation, DatasetSource, curated_dataset_dir, export_curated
from core.data.formats import DatasetLoadError, load_dataset_file
from core.distill.data import DEMO_TRAIN, prompt_messages
from core.distill.spec import TeacherAnswersSpec
from core.distill.student import shallow_student
from core.models import ModelLoadError, load_model, merge_adapter_weights, save_model
from core.runs.jobs import JobContext, JobError
from core.train.data import data_file, file_sha256
from core.workspace import read_json

STUDENT_DIR = "student"


def reference_answer(messages: list[dict]) -> str | None:
    return messages[-1]["content"] if messages and messages[-1].get("role") == "assistant" else None


def teacher_record(spec: TeacherAnswersSpec) -> dict:
    """Who answered: the source, and the adapter's weights hash when there is one."""
    source = spec.teacher_source
    record = {"source": source.as_dict(), "label": source.label}
    weights = Path(source.adapter) / "adapter_model.safetensors" if source.adapter else None
    if weights is not None and weights.is_file():
        record["adapter_sha256"] = file_sha256(weights)
    return record


def load_prompts(spec: TeacherAnswersSpec) -> tuple[Any, list[int], list[list[dict]], list[str | None]]:
    """(the loaded dataset, indices of the rows with a prompt, their prompts, their reference answers)."""
    path = DEMO_TRAIN if spec.data == "demo" else data_file(spec.dataset_path)
    if not Path(path).exists():
        raise JobError(f"The prompts dataset was not found: {path}")
    try:
        loaded = load_dataset_file(path, limit=spec.max_rows, prompts_only=True)
    except (DatasetLoadError, ValueError, OSError) as exc:
        raise JobError(f"Could not read the prompts dataset {path}: {exc}") from None
    kept, prompts, references = [], [], []
    for i, row in enumerate(loaded.rows):
        prompt = prompt_messages(row.get("messages") or [])
        if prompt is not None:
            kept.append(i)
            prompts.append(prompt)
            references.append(reference_answer(row["messages"]))
    if not prompts:
        raise JobError(f"{path}: no row has a user turn to answer (the teacher answers conversations, not plain text rows)")
    return loaded, kept, prompts, references


def curation_operations(spec: TeacherAnswersSpec, answers: list, references: list[str | None]) -> tuple[list, bool]:
    """The drops as core.data.curate operations (recorded in the manifest), and whether JSON was required."""
    given = [r for r in references if r is not None]
    json_only = spec.json_only == "yes" or (spec.json_only == "auto" and bool(given) and scorers.references_are_json(given))
    is_json = lambda text: bool(scorers.json_validity(text))  # noqa: E731 - the one strict JSON-validity rule
    operations = [
        CurationOperation("drop_empty_answers", label="teacher answers: empty", drop=[i for i, a in enumerate(answers) if not a.text])
    ]
    if not spec.keep_unfinished:
        operations.append(CurationOperation("drop_unfinished_answers", label=f"teacher answers: cut at {spec.max_new_tokens} tokens",
                                            params={"max_new_tokens": spec.max_new_tokens},
                                            drop=[i for i, a in enumerate(answers) if not a.finished]))
    if json_only:
        operations.append(CurationOperation("drop_non_json_answers", label="teacher answers: not one JSON object",
                                            drop=[i for i, a in enumerate(answers) if not is_json(a.text)]))
    return operations, json_only


def dataset_name(spec: TeacherAnswersSpec, run_dir: Path) -> str:
    if spec.output_name.strip():
        return spec.output_name.strip()
    base = f"{run_dir.name}-answers"
    name, n = base, 1
    while curated_dataset_dir(name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def run(ctx: JobContext) -> dict:
    spec: TeacherAnswersSpec = ctx.spec
    ctx.progress(0.01, "reading the prompts")
    loaded, kept, prompts, references = load_prompts(spec)
    ctx.progress(0.03, "loading the teacher")
    try:
        teacher = load_model(spec.teacher_source)
    except ModelLoadError as exc:
        raise JobError(str(exc)) from None
    ids = [generation.prompt_ids(p, teacher.tokenizer) for p in prompts]
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        ctx.progress(0.05 + 0.85 * done[0] / len(ids), f"teacher answered {done[0]}/{len(ids)} prompts")

    started = time.perf_counter()
    temperature = spec.temperature if spec.decoding == "sampled" else 0.0
    try:
        answers = generation.batch_answers(teacher.model, teacher.tokenizer, ids, max_new_tokens=spec.max_new_tokens,
                                   batch_size=spec.batch_size, temperature=temperature, top_p=spec.top_p, seed=spec.seed,
                                   should_stop=lambda: ctx.stop_requested, on_progress=advance)
    except generation.Stopped:
        return {"note": "stopped before every prompt was answered: no dataset was written"}
    seconds = time.perf_counter() - started
    new_tokens = sum(a.new_tokens for a in answers)
    ctx.metrics(prompts=len(ids), new_tokens=new_tokens, seconds=round(seconds, 2), tokens_per_s=round(new_tokens / seconds, 2))

    rows = [{"messages": prompt + [{"role": "assistant", "content": answer.text}]} for prompt, answer in zip(prompts, answers)]
    operations, json_only = curation_operations(spec, answers, references)
    written = CurationOperation("teacher_answers", label=f"answers written by {teacher_record(spec)['label']}", params={
        "teacher": teacher_record(spec), "settings": spec.decoding_settings(), "json_only": json_only,
        "prompts_from_rows": kept, "new_tokens": new_tokens, "seconds": round(seconds, 2)})
    source = DatasetSource.from_loaded(loaded)
    ctx.progress(0.92, "writing the curated dataset")
    try:
        folder = export_curated(rows, dataset_name(spec, ctx.run_dir), source, [written, *operations])
    except (ValueError, FileExistsError) as exc:
        raise JobError(f"Could not write the teacher's dataset: {exc}") from None
    result = {"dataset_dir": str(folder), "prompts": len(ids), "rows": _rows_written(folder),
              "dropped": {op.name: len(op.drop) for op in operations}, "teacher": teacher_record(spec)["label"],
              "settings": spec.decoding_settings(), "new_tokens": new_tokens, "generation_seconds": round(seconds, 2),
              "tokens_per_s": round(new_tokens / seconds, 2) if seconds > 0 else 0.0}
    if spec.student_stride:
        ctx.progress(0.95, "saving the student")
        result["student_dir"] = str(save_shallow_student(teacher, spec.student_stride, ctx.run_dir / STUDENT_DIR))
    ctx.write_result(result)
    return result


def _rows_written(folder: Path) -> int:
    return int((read_json(folder / MANIFEST_FILE) or {}).get("rows", 0))


def save_shallow_student(teacher: Any, stride: int, target: Path) -> Path:
    """The teacher with its adapter merged, every `stride`-th layer kept, saved as a plain model folder."""
    model = teacher.model
    if hasattr(model, "merge_and_unload"):
        model = merge_adapter_weights(model)
    return save_model(shallow_student(model, stride), teacher.tokenizer, target)
