"""EvalSpec: what an evaluation job compares, on which data, with how many samples (the YAML file and the form)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from core.models import ModelSource
from core.runs.spec import RunSpec, meta
from core.workspace import REPO_ROOT

DEFAULT_TASK_DATASET = "assets/demo/eval.jsonl"


@dataclass
class EvalSpec(RunSpec):
    kind: ClassVar[str] = "evaluate"

    name: str = field(default="", metadata=meta("A short name for the run folder."))
    base: dict = field(default_factory=lambda: ModelSource().as_dict(), metadata=meta(
        "The base model as a model-source dict: {kind: embedded|local|hub|gguf, ref: path or id}."))
    variants: list = field(default_factory=list, metadata=meta(
        "Fine-tuned models to compare with the base: [{label, model: {kind, ref, adapter}}]. An adapter variant "
        "usually names the base plus `adapter`; a merged model names its own folder."))
    checkpoints_of: str = field(default="", metadata=meta(
        "A training run folder: every checkpoint in <run>/checkpoints/ (and the final adapter) becomes a variant, "
        "for the learning-vs-forgetting curve."))
    task_dataset: str = field(default=DEFAULT_TASK_DATASET, metadata=meta(
        "Held-out conversations of the task (JSONL / JSON / CSV / Parquet, any format core.data reads); the last "
        "assistant turn of each row is the reference answer.", group="data"))
    task_samples: int = field(default=12, metadata=meta(
        "Task rows to evaluate (a seeded sample; 0 = all).", min=0, max=100_000, group="data"))
    pairs_dataset: str = field(default="", metadata=meta(
        "Held-out preference pairs (prompt / chosen / rejected, any shape the Data page reads) for the preference section: "
        "pair accuracy of every model. Empty: the pairs a preference-trained variant's run held out (its eval split), if any.",
        group="data"))
    pair_samples: int = field(default=0, metadata=meta(
        "Preference pairs to score (a seeded sample; 0 = all).", min=0, max=100_000, group="data"))
    general_samples: int = field(default=16, metadata=meta(
        "General texts for perplexity (of 175; 0 = all).", min=0, max=100_000, group="data"))
    mc_samples: int = field(default=60, metadata=meta(
        "General multiple-choice items (of 600; 0 = all).", min=0, max=100_000, group="data"))
    max_new_tokens: int = field(default=48, metadata=meta(
        "Longest generated answer in tokens (greedy decoding).", min=1, max=8192, group="generation"))
    batch_size: int = field(default=8, metadata=meta(
        "Prompts / sequences per forward pass.", min=1, max=512, group="generation", advanced=True))
    max_length: int = field(default=1024, metadata=meta(
        "Longest sequence scored for loss / perplexity, in tokens (longer ones are cut).", min=16, max=131_072,
        group="generation", advanced=True))
    bootstrap_samples: int = field(default=1000, metadata=meta(
        "Bootstrap resamples for the 95% confidence intervals (0 = no intervals).", min=0, max=100_000, group="verdict"))
    forgetting_threshold: float = field(default=3.0, metadata=meta(
        "Forgetting when the general score (multiple-choice accuracy, percentage points) drops by more than this.",
        min=0.0, max=100.0, group="verdict"))
    perplexity_threshold: float = field(default=25.0, metadata=meta(
        "Forgetting also when general-text perplexity rises by more than this many percent (a second guard; "
        "the demo LoRA raised it ~15% after 10 steps at lr 1e-3 with the general score unchanged).", min=0.0, max=10_000.0,
        group="verdict"))
    free_text_fields: list = field(default_factory=list, metadata=meta(
        "JSON fields compared with ROUGE-L instead of exact match; empty = detect from the references.",
        group="data", advanced=True))
    lm_eval_tasks: list = field(default_factory=list, metadata=meta(
        "Optional lm-evaluation-harness task names (run only when `lm-eval` is installed).", group="extra", advanced=True))
    lm_eval_limit: int = field(default=100, metadata=meta(
        "Examples per lm-eval task (0 = the whole task).", min=0, max=1_000_000, group="extra", advanced=True))
    judge: dict = field(default_factory=dict, metadata=meta(
        "A judge model (a model-source dict; empty: no judge): it compares every variant's task answers with the base's in "
        "both orders (core.evaluate.judge, the shipped rubric), for the report's win rate over base.", group="verdict", advanced=True))
    seed: int = field(default=0, metadata=meta("Seed for the samples and the bootstrap.", min=0, max=2**31 - 1))

    def __post_init__(self) -> None:
        super().__post_init__()
        ModelSource.from_dict(self.base)  # raises ValueError naming a bad kind / missing ref
        if not isinstance(self.variants, list):
            raise ValueError("variants must be a list of {label, model}")
        labels = set()
        for n, variant in enumerate(self.variants):
            if not isinstance(variant, dict) or not isinstance(variant.get("model"), dict):
                raise ValueError(f"variants[{n}] must be a mapping with `label` and `model` (a model-source dict)")
            label = str(variant.get("label") or "").strip()
            if not label:
                raise ValueError(f"variants[{n}] needs a label")
            if label == "base" or label in labels:
                raise ValueError(f"variants[{n}]: the label {label!r} is used twice (or is the reserved 'base')")
            labels.add(label)
            ModelSource.from_dict(variant["model"])
        if not self.variants and not self.checkpoints_of:
            raise ValueError("choose at least one fine-tuned variant (an adapter, a merged model, or checkpoints_of a training run)")
        if self.judge:
            try:
                ModelSource.from_dict(self.judge)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"judge: {exc}") from None
        self.lm_eval_tasks = [str(t).strip() for t in self.lm_eval_tasks if str(t).strip()]
        self.free_text_fields = [str(f).strip() for f in self.free_text_fields if str(f).strip()]
        self.pairs_dataset = str(self.pairs_dataset or "").strip()
        if self.pairs_dataset and not self.pairs_path().is_file():
            raise ValueError(f"pairs_dataset: file not found: {self.pairs_path()}")

    @property
    def base_source(self) -> ModelSource:
        return ModelSource.from_dict(self.base)

    def task_path(self) -> Path:
        path = Path(self.task_dataset).expanduser()
        return path if path.is_absolute() else REPO_ROOT / path

    def pairs_path(self) -> Path:
        path = Path(self.pairs_dataset).expanduser()
        return path if path.is_absolute() else REPO_ROOT / path
