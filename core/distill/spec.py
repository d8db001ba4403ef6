"""DistillSpec: one teacher → student distillation as a run spec — the YAML file, the CLI and the form."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from core.data.masking import POLICIES
from core.models import ModelSource
from core.runs.spec import check_limits, meta, spec_from_dict, spec_to_dict

STUDENTS = ("shallow_copy", "model")
DATA_SOURCES = ("demo", "dataset")


@dataclass
class DistillSpec:
    kind: ClassVar[str] = "distill"

    name: str = field(default="", metadata=meta("A label for the run folder."))
    teacher: dict = field(default_factory=lambda: {"kind": "embedded"}, metadata=meta("The teacher (a model source; an adapter on it is applied — e.g. your fine-tuned model)."))
    student: str = field(default="shallow_copy", metadata=meta("shallow_copy = the teacher with every `layer_stride`-th layer kept, initialised from the teacher's own layers; "
                "model = an existing smaller model with the same tokenizer.", choices=STUDENTS))
    student_model: dict = field(default_factory=dict, metadata=meta("The student's model source when student = model."))
    layer_stride: int = field(default=2, metadata=meta("Keep every n-th teacher layer (and the last) in a shallow copy.", "student", min=1, max=8))
    data: str = field(default="demo", metadata=meta("demo = the built-in support-ticket task (assistant tokens only); dataset = a file / dataset folder.", choices=DATA_SOURCES))
    dataset_path: str = field(default="", metadata=meta("JSONL / JSON / CSV / Parquet file or saved dataset when data = dataset."))
    policy: str = field(default="all_assistant", metadata=meta("Which tokens of a conversation are distilled (text rows: every token).", "data", choices=POLICIES))
    max_rows: int = field(default=2000, metadata=meta("Rows read from the data.", "data", min=1, max=1_000_000))
    max_length: int = field(default=256, metadata=meta("Tokens per row (longer rows are truncated).", "data", min=16, max=8192))
    steps: int = field(default=60, metadata=meta("Optimizer steps.", "training", min=1, max=1_000_000))
    batch_size: int = field(default=4, metadata=meta("Rows per step.", "training", min=1, max=512))
    learning_rate: float = field(default=1e-4, metadata=meta("Peak AdamW learning rate.", "training", min=1e-7, max=1e-2))
    warmup_steps: int = field(default=5, metadata=meta("Linear warm-up steps, then cosine decay to 10 %.", "training", advanced=True, min=0, max=100_000))
    temperature: float = field(default=2.0, metadata=meta("Softening temperature T of both distributions in the KL term.", "loss", min=0.5, max=20.0))
    alpha: float = field(default=0.5, metadata=meta("λ: weight of the soft term. loss = (1 − λ)·CE + λ·T²·KL.", "loss", min=0.0, max=1.0))
    seed: int = field(default=0, metadata=meta("Random seed (data order).", advanced=True, min=0))
    evaluate: bool = field(default=True, metadata=meta("Score the student against the teacher with the forgetting report."))
    eval_rows: int = field(default=20, metadata=meta("Task rows (and general texts) per evaluation; fewer = faster.", advanced=True, min=1, max=10000))

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
