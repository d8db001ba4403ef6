"""The distillation run specs — each is the YAML file, the CLI and the form:

- DistillSpec (kind `distill`): logit distillation or on-policy distillation (TRL's GKD) into a student that shares
  the teacher's tokenizer;
- TeacherAnswersSpec (kind `teacher_answers`): sequence-level distillation's first step, the teacher's answers as
  a curated dataset for the ordinary Train job (any student, any tokenizer).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from core.data.masking import POLICIES
from core.models import ModelSource
from core.runs.spec import RunSpec, meta

METHODS = ("logit", "on_policy")
STUDENTS = ("shallow_copy", "model")
DATA_SOURCES = ("demo", "dataset")
DECODINGS = ("greedy", "sampled")
JSON_ONLY = ("auto", "yes", "no")
PRECISIONS = ("auto", "fp32")


@dataclass
class DistillSpec(RunSpec):
    kind: ClassVar[str] = "distill"

    name: str = field(default="", metadata=meta("A label for the run folder."))
    method: str = field(default="logit", metadata=meta("logit = the student matches the teacher's softened next-token distribution on the "
                "dataset's answers; on_policy = GKD (TRL): on a share λ of the steps the student writes its own answers and the "
                "teacher scores every token of them (generalised JSD), so it learns from its own mistakes. Both need the "
                "teacher's tokenizer; for a student with another tokenizer use sequence-level distillation (the teacher_answers "
                "job + Train).", choices=METHODS))
    teacher: dict = field(default_factory=lambda: {"kind": "embedded"},
                          metadata=meta("The teacher (a model source; an adapter on it is applied — e.g. your fine-tuned model)."))
    student: str = field(default="shallow_copy", metadata=meta("shallow_copy = the teacher with every `layer_stride`-th layer kept, "
                "initialised from the teacher's own layers; model = an existing smaller model with the same tokenizer.", choices=STUDENTS))
    student_model: dict = field(default_factory=dict, metadata=meta("The student's model source when student = model."))
    layer_stride: int = field(default=2, metadata=meta("Keep every n-th teacher layer (and the last) in a shallow copy.",
                                                       "student", min=1, max=8))
    data: str = field(default="demo", metadata=meta("demo = the built-in support-ticket task (assistant tokens only); dataset = a file / "
                                                    "dataset folder.", choices=DATA_SOURCES))
    dataset_path: str = field(default="", metadata=meta("JSONL / JSON / CSV / Parquet file or saved dataset when data = dataset."))
    eval_dataset: str = field(default="", metadata=meta("Held-out task rows: the held-out divergence and the verdict are measured on "
                "them. Empty: demo = the demo's held-out split; dataset = `eval_fraction` of its rows, split off before training (never "
                "trained on).", "data"))
    eval_fraction: float = field(default=0.1, metadata=meta("Share of the dataset's rows held out of training when no "
                                                            "eval_dataset is given.", "data",
                                                            advanced=True, min=0.01, max=0.5))
    policy: str = field(default="all_assistant", metadata=meta("Which tokens of a conversation are distilled (text rows: every token).",
                                                               "data", choices=POLICIES))
    max_rows: int = field(default=2000, metadata=meta("Rows read from the data.", "data", min=1, max=1_000_000))
    max_length: int = field(default=256, metadata=meta("Tokens per row (longer rows are truncated).", "data", min=16, max=8192))
    steps: int = field(default=60, metadata=meta("Optimizer steps.", "training", min=1, max=1_000_000))
    batch_size: int = field(default=4, metadata=meta("Rows per step.", "training", min=1, max=512))
    learning_rate: float = field(default=1e-4, metadata=meta("Peak AdamW learning rate.", "training", min=1e-7, max=1e-2))
    warmup_steps: int = field(default=5, metadata=meta("Linear warm-up steps, then cosine decay to 10 %.", "training",
                                                       advanced=True, min=0, max=100_000))
    temperature: float = field(default=2.0, metadata=meta("logit: softening temperature T of both distributions in the KL term.",
                                                          "loss", min=0.5, max=20.0))
    alpha: float = field(default=0.5, metadata=meta("logit: λ, the weight of the soft term. loss = (1 − λ)·CE + λ·T²·KL.",
                                                    "loss", min=0.0, max=1.0))
    # ------------------------------------------------ on-policy (GKD, trl.experimental.gkd)
    gkd_lambda: float = field(default=0.5, metadata=meta("on_policy: λ, the share of steps on which the student answers the prompts itself "
                "and is scored by the teacher; the other steps use the dataset's answers. 1 = fully on-policy, 0 = supervised KD on "
                "the dataset.", "on_policy", min=0.0, max=1.0))
    gkd_beta: float = field(default=0.5, metadata=meta("on_policy: β of the generalised Jensen-Shannon divergence. 0 = forward KL(teacher "
                "‖ student), which spreads the student over everything the teacher might say; 1 = reverse KL(student ‖ teacher), which "
                "makes it commit to the teacher's main answer; 0.5 = the symmetric JSD.", "on_policy", min=0.0, max=1.0))
    gkd_temperature: float = field(default=0.9, metadata=meta("on_policy: sampling temperature of the student's own answers (higher = more "
                "varied; TRL's GKD then scores them at T = 1).", "on_policy", min=0.05, max=2.0))
    max_new_tokens: int = field(default=64, metadata=meta("on_policy: longest answer the student writes on an on-policy step.",
                                                          "on_policy", min=1, max=4096))
    # ------------------------------------------------ replay (general data mixed in against forgetting)
    replay_fraction: float = field(default=0.0, metadata=meta("Replay: share of the student's training rows that are general rows mixed in "
                "against forgetting (exact, recorded in the result). 0 = off.", "replay", min=0.0, max=0.9))
    replay_dataset: str = field(default="general", metadata=meta("Replay rows: 'general' = the general instructions answered by the "
                "teacher itself (the embedded model's answers ship in assets/general/replay.jsonl; any other teacher answers them once, "
                "before training, cached in the workspace), or a file / dataset folder of your own.", "replay", advanced=True))
    replay_max_new_tokens: int = field(default=256, metadata=meta("Replay 'general' with a teacher other than the embedded model: longest "
                "answer it writes per general prompt.", "replay", advanced=True, min=1, max=4096))
    replay_prompts: int = field(default=0, metadata=meta("Replay 'general' with another teacher: how many general prompts it "
                                                         "answers (0 = all).", "replay",
                advanced=True, min=0, max=100_000))
    replay_keep_unfinished: bool = field(default=False, metadata=meta("Replay 'general' with another teacher: keep answers cut at "
                                                                      "replay_max_new_tokens.",
                "replay", advanced=True))
    seed: int = field(default=0, metadata=meta("Random seed (data order).", advanced=True, min=0))
    precision: str = field(default="auto", metadata=meta("auto = fp32 weights, with the forward passes under bf16 autocast where the "
                "hardware computes bf16 natively (on a CPU the Train job's own rule, so a distilled student and a fine-tuned one get the "
                "same compute); fp32 = full precision throughout.", "training", advanced=True, choices=PRECISIONS))
    gradient_checkpointing: bool = field(default=False, metadata=meta("Recompute the student's activations in the backward pass: much less "
                "memory, ~30 % slower (on_policy: the student then also writes its answers without a KV cache).",
                                                                      "training", advanced=True))
    evaluate: bool = field(default=True, metadata=meta("Score the student against the teacher with the forgetting report."))
    eval_rows: int = field(default=20, metadata=meta("Task rows (and general texts) per evaluation; fewer = faster.",
                                                     advanced=True, min=1, max=10000))

    def __post_init__(self) -> None:
        super().__post_init__()
        ModelSource.from_dict(self.teacher)
        if self.student == "model":
            if not self.student_model:
                raise ValueError("student_model: choose the student model (or use student = shallow_copy)")
            ModelSource.from_dict(self.student_model)
        if self.data == "dataset" and not self.dataset_path.strip():
            raise ValueError("dataset_path: data = dataset needs a file or dataset folder")
        if self.replay_fraction > 0 and not self.replay_dataset.strip():
            raise ValueError("replay_dataset: name the replay data ('general' for the shipped set, or a file)")

    @property
    def teacher_source(self) -> ModelSource:
        return ModelSource.from_dict(self.teacher)

    @property
    def student_source(self) -> ModelSource | None:
        return ModelSource.from_dict(self.student_model) if self.student == "model" else None


@dataclass
class TeacherAnswersSpec(RunSpec):
    """Sequence-level distillation, step 1: the teacher answers a dataset's prompts; the answers become a curated
    dataset (with a manifest) that the ordinary Train job teaches any student, with any method and any tokenizer."""

    kind: ClassVar[str] = "teacher_answers"

    name: str = field(default="", metadata=meta("A label for the run folder."))
    teacher: dict = field(default_factory=lambda: {"kind": "embedded"},
                          metadata=meta("The teacher: any model the workbench loads, with its adapter applied (e.g. your "
                                        "fine-tuned model)."))
    data: str = field(default="demo", metadata=meta("Whose prompts the teacher answers: demo = the built-in support tickets; dataset = a "
                                                    "file / dataset folder.", choices=DATA_SOURCES))
    dataset_path: str = field(default="", metadata=meta("JSONL / JSON / CSV / Parquet file or saved dataset when data = dataset."))
    max_rows: int = field(default=2000, metadata=meta("Rows read from the data.", "data", min=1, max=1_000_000))
    decoding: str = field(default="greedy", metadata=meta("greedy = the teacher's most likely answer (the same every time); sampled = "
                "drawn with temperature and top-p from a seed (more varied answers; the settings are recorded in the manifest).",
                                                          "decoding", choices=DECODINGS))
    temperature: float = field(default=0.7, metadata=meta("Sampling temperature (decoding = sampled).", "decoding", min=0.05, max=2.0))
    top_p: float = field(default=0.95, metadata=meta("Nucleus sampling: keep the smallest set of tokens with this much probability "
                                                         "(decoding = sampled).", "decoding", min=0.05, max=1.0))
    seed: int = field(default=0, metadata=meta("Seed of the sampling (decoding = sampled).", "decoding", min=0, max=2**31 - 1))
    max_new_tokens: int = field(default=128, metadata=meta("Longest answer in tokens.", "decoding", min=1, max=8192))
    batch_size: int = field(default=8, metadata=meta("Prompts answered per forward pass.", "decoding", advanced=True, min=1, max=512))
    keep_unfinished: bool = field(default=False, metadata=meta("Keep answers cut at max_new_tokens (by default they are dropped: the "
                                                               "student would learn never to stop).", "curation"))
    json_only: str = field(default="auto", metadata=meta("Drop answers that are not one JSON object. auto = when the dataset's own answers "
                                                         "are JSON objects.", "curation", choices=JSON_ONLY))
    output_name: str = field(default="", metadata=meta("Name of the curated dataset in the workspace (datasets/<name>/); empty = named "
                                                       "after the run."))
    student_stride: int = field(default=0, metadata=meta("Also save a student for the Train job: the teacher (adapter merged) keeping "
                "every n-th layer and the last, initialised from the teacher's own layers. 0 = none (bring your own student, "
                "any tokenizer).", "student", min=0, max=8))

    def __post_init__(self) -> None:
        super().__post_init__()
        ModelSource.from_dict(self.teacher)
        if self.data == "dataset" and not self.dataset_path.strip():
            raise ValueError("dataset_path: data = dataset needs a file or dataset folder")
        if self.student_stride == 1:
            raise ValueError("student_stride: 1 keeps every layer (the teacher itself); use 2 or more, or 0 for none")

    @property
    def teacher_source(self) -> ModelSource:
        return ModelSource.from_dict(self.teacher)

    def decoding_settings(self) -> dict:
        """What the manifest records about how the answers were made."""
        settings = {"decoding": self.decoding, "max_new_tokens": self.max_new_tokens, "batch_size": self.batch_size}
        if self.decoding == "sampled":
            settings.update(temperature=self.temperature, top_p=self.top_p, seed=self.seed)
        return settings


VARIANTS: tuple[str, ...] = ("sequence", "logit", "on_policy")
VARIANT_LABELS = {"sequence": "sequence-level", "logit": "logit", "on_policy": "on-policy (GKD)"}


@dataclass
class DistillCompareSpec(RunSpec):
    """The three distillation variants for the same student at a matched compute budget, scored side by side."""

    kind: ClassVar[str] = "distill_compare"

    name: str = field(default="", metadata=meta("A label for the run folder."))
    teacher: dict = field(default_factory=lambda: {"kind": "embedded"},
                          metadata=meta("The teacher (with its adapter applied), e.g. your fine-tuned model on the demo task."))
    layer_stride: int = field(default=2, metadata=meta("The student: the teacher keeping every n-th layer (and the last), the "
                                                           "same starting weights for every variant.", "student", min=2, max=8))
    variants: list = field(default_factory=lambda: list(VARIANTS), metadata=meta("Which variants to train: sequence (teacher answers + the "
                                                                                 "Train job, full fine-tuning), logit, on_policy."))
    replay_fractions: list = field(default_factory=lambda: [0.0], metadata=meta("Every variant is trained once per replay share listed (0 "
                                                                                "= no replay; e.g. 0, 0.1, 0.25).", "replay"))
    replay_variants: list = field(default_factory=list, metadata=meta("The variants that are also trained at the replay shares above 0 "
                                                                      "(empty = every variant).", "replay", advanced=True))
    replay_dataset: str = field(default="general", metadata=meta("Replay rows: 'general' (shipped) or a file.", "replay", advanced=True))
    data: str = field(default="demo", metadata=meta("Training prompts / answers: demo = the support tickets; dataset = a file (its "
                                                    "held-out rows: eval_dataset).", choices=DATA_SOURCES))
    dataset_path: str = field(default="", metadata=meta("Training data when data = dataset."))
    eval_dataset: str = field(default="", metadata=meta("Held-out task rows for the scores and the agreement (empty: the demo's)."))
    max_rows: int = field(default=2000, metadata=meta("Training rows read.", "data", min=1, max=1_000_000))
    steps: int = field(default=30, metadata=meta("The matched budget: every variant's student takes this many optimizer steps of "
                                                 "batch_size rows (max_length tokens).", "budget", min=1, max=100_000))
    batch_size: int = field(default=4, metadata=meta("Rows per step, for every variant.", "budget", min=1, max=512))
    learning_rate: float = field(default=1e-4, metadata=meta("Peak learning rate, for every variant.", "budget", min=1e-7, max=1e-2))
    max_length: int = field(default=256, metadata=meta("Tokens per row.", "budget", min=16, max=8192))
    answer_tokens: int = field(default=96, metadata=meta("sequence: longest teacher answer (greedy).", "variants", min=1, max=4096))
    keep_all_answers: bool = field(default=False, metadata=meta("sequence: keep every teacher answer (by default answers cut at "
                "answer_tokens, and non-JSON answers for a JSON task, are dropped).", "variants", advanced=True))
    temperature: float = field(default=2.0, metadata=meta("logit: softening temperature T.", "variants", min=0.5, max=20.0))
    alpha: float = field(default=0.5, metadata=meta("logit: weight λ of the soft term.", "variants", min=0.0, max=1.0))
    gkd_lambda: float = field(default=0.5, metadata=meta("on_policy: share of on-policy steps λ.", "variants", min=0.0, max=1.0))
    gkd_beta: float = field(default=0.5, metadata=meta("on_policy: β of the generalised JSD.", "variants", min=0.0, max=1.0))
    gkd_temperature: float = field(default=0.9, metadata=meta("on_policy: sampling temperature of the student.",
                                                              "variants", min=0.05, max=2.0))
    max_new_tokens: int = field(default=64, metadata=meta("on_policy: longest student answer.", "variants", min=1, max=4096))
    eval_rows: int = field(default=20, metadata=meta("Held-out task rows scored (general texts = 2x, multiple choice = 5x).",
                                                     "evaluation", min=1, max=10000))
    seed: int = field(default=0, metadata=meta("Seed of the data order and of the samples.", advanced=True, min=0, max=2**31 - 1))

    def __post_init__(self) -> None:
        super().__post_init__()
        ModelSource.from_dict(self.teacher)
        self.variants = [str(v).strip() for v in self.variants if str(v).strip()]
        self.replay_variants = [str(v).strip() for v in self.replay_variants if str(v).strip()]
        if any(v not in self.variants for v in self.replay_variants):
            raise ValueError(f"replay_variants: {', '.join(self.replay_variants)} must be among the variants ({', '.join(self.variants)})")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ValueError(f"variants: choose among {', '.join(VARIANTS)} (got {', '.join(unknown) or 'none'})")
        try:
            self.replay_fractions = sorted({float(f) for f in self.replay_fractions or [0.0]})
        except (TypeError, ValueError):
            raise ValueError(f"replay_fractions: numbers between 0 and 0.9, got {self.replay_fractions!r}") from None
        if not all(0.0 <= f <= 0.9 for f in self.replay_fractions):
            raise ValueError(f"replay_fractions: every share must be between 0 and 0.9, got {self.replay_fractions}")
        if self.data == "dataset" and not self.dataset_path.strip():
            raise ValueError("dataset_path: data = dataset needs a file or dataset folder")

    @property
    def teacher_source(self) -> ModelSource:
        return ModelSource.from_dict(self.teacher)

    def students(self) -> list[tuple[str, float]]:
        """(variant, replay share) of every student to train, grouped by variant."""
        with_replay = self.replay_variants or self.variants
        return [(v, f) for v in self.variants for f in self.replay_fractions if f == 0 or v in with_replay]


# "Which one when": the Distill page's guide to the three variants (rows of a table).
VARIANT_GUIDE: list[dict] = [
    {"variant": VARIANT_LABELS["sequence"], "the student learns from": "the teacher's written answers (text)",
     "tokenizer": "any", "cost": "the teacher answers once; then ordinary training",
     "use it when": "the student is another model family, or you want a dataset you can inspect, filter and reuse"},
    {"variant": VARIANT_LABELS["logit"], "the student learns from": "the teacher's whole next-token distribution on the data",
     "tokenizer": "the teacher's", "cost": "a teacher forward pass per step",
     "use it when": "teacher and student share a tokenizer and the data already has good answers"},
    {"variant": VARIANT_LABELS["on_policy"], "the student learns from": "the teacher's scores of the student's own answers",
     "tokenizer": "the teacher's", "cost": "the student also generates on a share λ of the steps",
     "use it when": "the student drifts at inference (errors compound in long answers): it trains on what it actually writes"},
]
