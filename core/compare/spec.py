"""Specs of the two comparison jobs: the feature-extraction baseline and the method comparison."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from core.compare.features import ENCODERS
from core.evaluate.spec import DEFAULT_TASK_DATASET
from core.models import ModelSource
from core.runs.spec import RunSpec, meta
from core.train.methods import METHODS
from core.train.spec import DEMO_DATASET

DEFAULT_METHODS = ["lora", "dora", "ia3", "prompt_tuning", "prefix_tuning", "partial", "full"]


def _check_model(value: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"model: expected a mapping like {{kind: embedded}}, got {value!r}")
    try:
        source = ModelSource.from_dict(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model: {exc}") from None
    if source.adapter:
        raise ValueError("model: compare methods on a base model, not on a model with an adapter")


@dataclass
class FeatureExtractionSpec(RunSpec):
    kind: ClassVar[str] = "feature_extraction"

    name: str = field(default="", metadata=meta("A short name for the run folder (optional)."))
    model: dict = field(default_factory=lambda: {"kind": "embedded"}, metadata=meta(
        "The frozen encoder when encoder = model: a core.models source {kind, ref}.", "model"))
    encoder: str = field(default="model", metadata=meta(
        "model: mean-pooled last hidden states of the model above; minilm: all-MiniLM-L6-v2 sentence embeddings.", "model",
        choices=ENCODERS))
    dataset: str = field(default=DEMO_DATASET, metadata=meta("Rows the logistic-regression head is fitted on.", "data"))
    test_dataset: str = field(default=DEFAULT_TASK_DATASET, metadata=meta(
        "Held-out rows it is scored on (the Evaluate task set by default, so the score matches the fine-tunes' field accuracy).", "data"))
    label_field: str = field(default="urgency", metadata=meta(
        "The label: a column of that name, or that field of the JSON object in the last assistant turn.", "data"))
    max_length: int = field(default=256, metadata=meta("Longest input in tokens for the model encoder.", "data",
                                                       advanced=True, min=8, max=32768))
    batch_size: int = field(default=8, metadata=meta("Texts per forward pass.", "data", advanced=True, min=1, max=1024))
    seed: int = field(default=0, metadata=meta("Seed of the logistic regression.", "data", advanced=True, min=0, max=2**31 - 1))

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_model(self.model)
        if not self.label_field.strip():
            raise ValueError("label_field: name the label column or JSON field (e.g. urgency)")

    @property
    def model_source(self) -> ModelSource:
        return ModelSource.from_dict(self.model)


@dataclass
class MethodComparisonSpec(RunSpec):
    kind: ClassVar[str] = "method_comparison"

    name: str = field(default="", metadata=meta("A short name for the comparison (its runs are named after it)."))
    model: dict = field(default_factory=lambda: {"kind": "embedded"}, metadata=meta("The base model every method starts from.", "model"))
    dataset: str = field(default=DEMO_DATASET, metadata=meta("Training data, the same for every method.", "data"))
    eval_dataset: str = field(default=DEFAULT_TASK_DATASET, metadata=meta(
        "Held-out task rows scored by core.evaluate (task score = JSON field accuracy on the demo).", "data"))
    methods: list = field(default_factory=lambda: list(DEFAULT_METHODS), metadata=meta(
        "Methods to train, in order: " + ", ".join(METHODS) + ".", "methods"))
    learning_rates: dict = field(default_factory=dict, metadata=meta(
        "Learning rate per method ({method: rate}); a method not named uses its own default (core.train.methods).",
        "methods", advanced=True))
    max_steps: int = field(default=20, metadata=meta("The step budget: optimizer steps per method.", "budget", min=1, max=1_000_000))
    batch_size: int = field(default=4, metadata=meta("Rows per step, the same for every method.", "budget", min=1, max=4096))
    max_length: int = field(default=256, metadata=meta("Longest sequence in tokens.", "budget", min=16, max=131072))
    seed: int = field(default=42, metadata=meta("One seed for data order and initialisation of every method.",
                                                "budget", min=0, max=2**31 - 1))
    lora_r: int = field(default=16, metadata=meta("Rank of LoRA / DoRA / LoHa / LoKr.", "methods", advanced=True, min=1, max=1024))
    num_virtual_tokens: int = field(default=20, metadata=meta("Virtual tokens of prompt / prefix tuning.", "methods",
                                                              advanced=True, min=1, max=512))
    frozen_layers: int = field(default=0, metadata=meta("Frozen bottom layers of partial fine-tuning (0 = half).", "methods",
                                                        advanced=True, min=0, max=1024))
    task_samples: int = field(default=12, metadata=meta("Task rows scored per method (0 = all).", "evaluation", min=0, max=100_000))
    general_samples: int = field(default=8, metadata=meta("General texts for perplexity (0 = all).", "evaluation",
                                                          advanced=True, min=0, max=100_000))
    mc_samples: int = field(default=40, metadata=meta("General multiple-choice items (0 = all).", "evaluation",
                                                      advanced=True, min=0, max=100_000))
    max_new_tokens: int = field(default=48, metadata=meta("Longest generated answer when scoring.", "evaluation",
                                                          advanced=True, min=1, max=8192))
    feature_field: str = field(default="urgency", metadata=meta(
        "Also run the feature-extraction baseline for this label (a column or JSON answer field); empty = skip it.", "baseline"))
    feature_encoder: str = field(default="model", metadata=meta(
        "Encoder of the baseline: the base model's pooled hidden states, or all-MiniLM-L6-v2.", "baseline", choices=ENCODERS))

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_model(self.model)
        if not isinstance(self.methods, list) or not self.methods:
            raise ValueError("methods: choose at least one method to compare")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: {', '.join(map(str, unknown))} not known; choose from {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("methods: each method once")
        if not isinstance(self.learning_rates, dict):
            raise ValueError("learning_rates: expected a mapping {method: rate}")
        for method, rate in self.learning_rates.items():
            if method not in METHODS:
                raise ValueError(f"learning_rates: {method!r} is not a method")
            if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 < rate <= 1:
                raise ValueError(f"learning_rates: {method}: expected a rate in (0, 1], got {rate!r}")

    def learning_rate(self, method: str) -> float:
        return float(self.learning_rates.get(method, METHODS[method].learning_rate))
