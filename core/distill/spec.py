"""DistillSpec: one teacher → student distillation as a run spec — the YAML file, the CLI and the form."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from core.models import ModelSource
from core.runs.spec import check_limits, spec_from_dict, spec_to_dict


@dataclass
class DistillSpec:
    kind: ClassVar[str] = "distill"

    name: str = field(default="", metadata={"help": "A label for the run folder."})
    teacher: dict = field(default_factory=lambda: {"kind": "embedded"}, metadata={
        "help": "The teacher (a model source; an adapter on it is applied — e.g. your fine-tuned model)."})
    student: Literal["shallow_copy", "model"] = field(default="shallow_copy", metadata={
        "help": "shallow_copy = the teacher with every `layer_stride`-th layer kept, initialised from the teacher's own layers; "
                "model = an existing smaller model with the same tokenizer."})
    student_model: dict = field(default_factory=dict, metadata={"help": "The student's model source when student = model."})
    layer_stride: int = field(default=2, metadata={"help": "Keep every n-th teacher layer (and the last) in a shallow copy.",
                                                    "min": 1, "max": 8, "group": "student"})
    data: Literal["demo", "dataset"] = field(default="demo", metadata={
        "help": "demo = the built-in support-ticket task (assistant tokens only); dataset = a file / dataset folder."})
    dataset_path: str = field(default="", metadata={"help": "JSONL / JSON / CSV / Parquet file or saved dataset when data = dataset."})
    policy: Literal["all_assistant", "last_assistant", "completion_only", "everything"] = field(default="all_assistant", metadata={
        "help": "Which tokens of a conversation are distilled (text rows: every token).", "group": "data"})
    max_rows: int = field(default=2000, metadata={"help": "Rows read from the data.", "min": 1, "max": 1_000_000, "group": "data"})
    max_length: int = field(default=256, metadata={"help": "Tokens per row (longer rows are truncated).", "min": 16, "max": 8192, "group": "data"})
    steps: int = field(default=60, metadata={"help": "Optimizer steps.", "min": 1, "max": 1_000_000, "group": "training"})
    batch_size: int = field(default=4, metadata={"help": "Rows per step.", "min": 1, "max": 512, "group": "training"})
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak AdamW learning rate.", "min": 1e-7, "max": 1e-2, "group": "training"})
    warmup_steps: int = field(default=5, metadata={"help": "Linear warm-up steps, then cosine decay to 10 %.", "min": 0, "max": 100_000,
                                                   "group": "training", "advanced": True})
    temperature: float = field(default=2.0, metadata={"help": "Softening temperature T of both distributions in the KL term.",
                                                      "min": 0.5, "max": 20.0, "group": "loss"})
    alpha: float = field(default=0.5, metadata={"help": "λ: weight of the soft term. loss = (1 − λ)·CE + λ·T²·KL.",
                                                "min": 0.0, "max": 1.0, "group": "loss"})
    seed: int = field(default=0, metadata={"help": "Random seed (data order).", "min": 0, "advanced": True})
    evaluate: bool = field(default=True, metadata={"help": "Score the student against the teacher with the forgetting report."})
    eval_rows: int = field(default=20, metadata={"help": "Task rows (and general texts) per evaluation; fewer = faster.",
                                                   "min": 1, "max": 10000, "advanced": True})

    def __post_init__(self) -> None:
        check_limits(self)
        ModelSource.from_dict(self.teacher)
        if self.student == "model":
            if not self.student_model:
                raise ValueError("student_model: choose the student model (or use student = shallow_copy)")
            ModelSource.from_dict(self.student_model)
        if self.data == "dataset" and not self.dataset_path.strip():
            raise ValueError("dataset_path: data = dataset needs a file or dataset folder")

    @property
    def teacher_source(self) -> ModelSource:
        return ModelSource.from_dict(self.teacher)

    @property
    def student_source(self) -> ModelSource | None:
        return ModelSource.from_dict(self.student_model) if self.student == "model" else None

    def to_dict(self) -> dict:
        return spec_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DistillSpec":
        return spec_from_dict(cls, data)
