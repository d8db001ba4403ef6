"""ExportSpec: what to take out of the workbench and how to check it — the YAML file, the CLI and the form."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from core.llamacpp import QUANT_TYPES
from core.models import ModelSource
from core.runs.spec import RunSpec, meta

FORMATS: tuple[str, ...] = ("adapter", "merged", "gguf_f16", "gguf_q8_0", "modelfile", "recipes")
FORMAT_LABELS = {
    "adapter": "LoRA adapter (PEFT safetensors)",
    "merged": "Merged 16-bit safetensors (+ tokenizer, template)",
    "gguf_f16": "GGUF F16 (our converter)",
    "gguf_q8_0": "GGUF Q8_0 (our converter)",
    "modelfile": "Ollama Modelfile",
    "recipes": "Recipes: spec.yaml, Axolotl / mergekit YAML",
}
MERGED_DTYPES = ("float16", "bfloat16", "float32")


def _meta(help: str, group: str = "export", **options) -> dict:
    return meta(help, group, **options)


@dataclass
class ExportSpec(RunSpec):
    kind: ClassVar[str] = "export"

    name: str = field(default="", metadata=_meta("A short name for the export folder (optional)."))
    source_run: str = field(default="", metadata=_meta(
        "The run folder to export (a finished train, merge, prune or distill run). Empty: export `model` instead.", "source"))
    model: dict = field(default_factory=dict, metadata=_meta(
        "Without a source run: a model source {kind, ref, adapter} (an adapter on top is merged).", "source"))
    formats: list = field(default_factory=lambda: ["merged", "gguf_f16", "gguf_q8_0", "modelfile", "recipes"], metadata=_meta(
        "What to write: " + ", ".join(f"{k} ({v})" for k, v in FORMAT_LABELS.items()) + "."))
    quantize: list = field(default_factory=list, metadata=_meta(
        "K-quants written by llama.cpp's quantiser from the F16 GGUF: " + ", ".join(QUANT_TYPES) + "."))
    merged_dtype: str = field(default="float16", metadata=_meta(
        "dtype of the merged safetensors (and so of the GGUF F16 source). float16 keeps 3 more mantissa bits than bfloat16.",
        choices=MERGED_DTYPES, advanced=True))
    chat_template: str = field(default="", metadata=_meta(
        "Override the chat template (a shipped name or .jinja file); empty = the one the run trained with.", advanced=True))
    validate: bool = field(default=True, metadata=_meta("Load every artifact back and compare it with its source (recommended).", "check"))
    validation_prompts: int = field(default=4, metadata=_meta("Chat prompts compared (taken from the run's data).", "check", min=1, max=64))
    compare_tokens: int = field(default=16, metadata=_meta("Greedy tokens compared per prompt (F16 must match all of them).",
                                                           "check", min=1, max=256))
    min_agreement: float = field(default=0.9, metadata=_meta(
        ("Next-token agreement with torch that Q8_0 must reach where torch decides clearly (its two best ≥ 1 logit "
         "apart; flips at near-ties are reported, not held against it). K-quants report theirs; below 50 % is a warning."), "check",
        min=0.0, max=1.0, advanced=True))
    verify_only: bool = field(default=False, metadata=_meta(
        "Re-check the files an earlier attempt of this run wrote (hashes, headers, load-back) without rewriting them.",
        "check", advanced=True))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.formats = [str(f) for f in (self.formats or [])]
        self.quantize = [str(q).upper() for q in (self.quantize or [])]
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise ValueError(f"formats: unknown {', '.join(unknown)} (choose from {', '.join(FORMATS)})")
        bad = [q for q in self.quantize if q not in QUANT_TYPES]
        if bad:
            raise ValueError(f"quantize: unknown {', '.join(bad)} (llama.cpp's quantiser writes {', '.join(QUANT_TYPES)})")
        if not self.formats and not self.quantize:
            raise ValueError("formats: choose at least one thing to export")
        if not self.source_run and not self.model:
            raise ValueError("source_run: choose a finished run to export (or give a model source)")
        if self.source_run and not Path(self.source_run).expanduser().is_dir():
            raise ValueError(f"source_run: {self.source_run} is not a run folder")
        if self.model:
            try:
                ModelSource.from_dict(self.model)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"model: {exc}") from None

    @property
    def needs_gguf(self) -> bool:
        return bool({"gguf_f16", "gguf_q8_0", "modelfile"} & set(self.formats)) or bool(self.quantize)
