"""PruneSpec: one pruning run as a run spec — the YAML file, the CLI and the form."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from core.models import ModelSource
from core.prune.methods import MODES, TARGETS
from core.runs.spec import RunSpec, meta

MODE_LABELS = {
    "unstructured": "Unstructured magnitude (L1): zero the smallest weights",
    "semi_structured_2_4": "2:4 semi-structured: 2 of every 4 weights zeroed",
    "channels": "Structured channels: zero whole input columns (Ln norm)",
    "mlp_neurons": "Structured MLP neurons: remove whole neurons (model shrinks)",
    "attention_heads": "Structured attention heads: remove whole query heads (model shrinks)",
}
LATENCY_PROMPT = "Explain in two sentences why the sky is blue."


@dataclass
class PruneSpec(RunSpec):
    kind: ClassVar[str] = "prune"

    name: str = field(default="", metadata=meta("A label for the run folder."))
    model: dict = field(default_factory=lambda: {"kind": "embedded"}, metadata=meta("The model to prune (a model source; an adapter is "
                                                                                    "merged into it first)."))
    mode: str = field(default="unstructured", metadata=meta(
        "What is pruned: single weights, 2:4 groups, channels, MLP neurons or attention heads.", choices=MODES))
    sparsity: float = field(default=0.5, metadata=meta("Fraction of each selected weight matrix (or of the neurons / heads) removed. 2:4 "
                                                       "is always 0.5.", min=0.0, max=0.95))
    target: str = field(default="all_linear", metadata=meta("Which linear layers the zeroing modes touch (lm_head is never pruned). Neuron "
                                                            "/ head modes pick their own layers.", choices=TARGETS))
    pattern: str = field(default="", metadata=meta("Regular expression on layer names when target = custom, e.g. `mlp\\.(up|gate)_proj`."))
    norm: int = field(default=2, metadata=meta("Ln norm ranking channels / neurons / heads (1 or 2).", min=1, max=2))
    latency_tokens: int = field(default=32, metadata=meta("Tokens generated for the before / after latency check.",
                                                          advanced=True, min=1, max=512))
    latency_prompt: str = field(default=LATENCY_PROMPT, metadata=meta("The fixed prompt of the latency check.", advanced=True))
    evaluate: bool = field(default=True, metadata=meta("Score before and after with the forgetting report."))
    eval_rows: int = field(default=20, metadata=meta("Task rows (and general texts) per evaluation; fewer = faster.",
                                                     advanced=True, min=1, max=10000))
    task_dataset: str = field(default="", metadata=meta("Task rows the pruned model is scored on (a file or dataset folder; the last "
                "assistant turn is the reference). Empty: the data of the run the model came from when known, else the built-in demo "
                "ticket task.", "evaluation"))

    def __post_init__(self) -> None:
        super().__post_init__()
        ModelSource.from_dict(self.model)
        if self.mode == "semi_structured_2_4":
            self.sparsity = 0.5
        if self.target == "custom" and not self.pattern.strip():
            raise ValueError("pattern: a custom target needs a layer-name pattern (regular expression)")

    @property
    def source(self) -> ModelSource:
        return ModelSource.from_dict(self.model)

    @property
    def zeroes_only(self) -> bool:
        """True when the pruned model keeps its shapes (zeros in dense matrices)."""
        return self.mode not in ("mlp_neurons", "attention_heads")
