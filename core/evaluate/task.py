"""The task side of the report: held-out conversations → prompts + reference answers → per-example scores."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core import scorers
from core.data.formats import DatasetLoadError, load_dataset_file
from core.evaluate.general import sample_indices


class TaskDataError(ValueError):
    pass


@dataclass(frozen=True)
class TaskExample:
    index: int  # row number in the dataset file (after validation)
    messages: list[dict]  # the whole conversation, reference answer last
    prompt: list[dict]  # every message before the last assistant turn
    reference: str


@dataclass
class TaskSetup:
    examples: list[TaskExample]
    is_json: bool
    free_text_fields: list[str] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)
    source: str = ""
    n_rows: int = 0

    def field_methods(self) -> dict[str, str]:
        return {f: ("rouge_l" if f in self.free_text_fields else "exact") for f in self.fields}


def load_task(path: str | Path, samples: int, seed: int, free_text_fields: list[str] | None = None) -> TaskSetup:
    path = Path(path)
    if not path.exists():
        raise TaskDataError(f"task dataset not found: {path}")
    try:
        loaded = load_dataset_file(path)
    except DatasetLoadError as exc:
        raise TaskDataError(f"cannot read the task dataset {path}: {exc}") from exc
    usable = [(i, row["messages"]) for i, row in enumerate(loaded.rows) if _last_assistant(row.get("messages") or []) is not None]
    if not usable:
        raise TaskDataError(f"{path} has no conversation ending in an assistant answer: the task needs prompt + reference rows")
    chosen = [usable[i] for i in sample_indices(len(usable), samples, seed)]
    examples = []
    for index, messages in chosen:
        last = _last_assistant(messages)
        examples.append(TaskExample(index, list(messages[: last + 1]), list(messages[:last]), messages[last]["content"]))
    return describe_task(examples, source=str(path), n_rows=len(usable), free_text_fields=free_text_fields)


def describe_task(examples: list[TaskExample], *, source: str = "", n_rows: int = 0,
                  free_text_fields: list[str] | None = None) -> TaskSetup:
    objects = [scorers.parse_json_object(e.reference) for e in examples]
    is_json = scorers.references_are_json(e.reference for e in examples)
    fields: list[str] = []
    free: list[str] = []
    if is_json:
        for obj in objects:
            for key in obj or {}:
                if key not in fields:
                    fields.append(key)
        free = list(free_text_fields) if free_text_fields else scorers.detect_free_text_fields(objects)
    return TaskSetup(examples, is_json, free, fields, source, n_rows or len(examples))


def _last_assistant(messages: list[dict]) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "assistant":
            return i if i > 0 else None
    return None


def score_answer(answer: str, reference: str, setup: TaskSetup) -> dict:
    """Every per-example task number, each in [0, 1]. `task_score` is the one the verdict uses: the mean
    JSON field score for JSON tasks (fields read from the first JSON object in the answer; 0 when there is
    none), ROUGE-L F1 otherwise. `json_valid` is strict: the whole answer must be one JSON object."""
    row = {
        "exact_match": scorers.exact_match(answer, reference),
        "rouge_l": scorers.rouge_l_f1(answer, reference),
    }
    if setup.is_json:
        row["json_valid"] = scorers.json_validity(answer)
        fields = scorers.json_field_scores(answer, reference, setup.free_text_fields)
        for name, score in fields.items():
            row[f"field:{name}"] = score
        row["field_accuracy"] = sum(fields.values()) / len(fields) if fields else 1.0
        row["task_score"] = row["field_accuracy"]
    else:
        row["task_score"] = row["rouge_l"]
    return row
