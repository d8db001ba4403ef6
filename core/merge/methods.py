"""The merge methods the workbench offers, as data: the Merge page is generated from this table.

Each entry names the mergekit `merge_method`, explains it in one line, links the paper, and lists its
parameters with ranges and defaults. `scope="model"` parameters are set per input model (weight,
density); `scope="global"` ones once per merge (t, lambda, normalize, rescale).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class MethodParam:
    name: str  # the mergekit parameter name
    label: str
    help: str
    default: float | bool
    min: float = 0.0
    max: float = 1.0
    step: float = 0.05
    scope: Literal["global", "model"] = "global"

    @property
    def is_bool(self) -> bool:
        return isinstance(self.default, bool)


@dataclass(frozen=True)
class MergeMethod:
    name: str
    pretty_name: str
    explanation: str
    paper: str
    needs_base: bool  # task-vector methods work on (model - base)
    min_models: int  # models besides the base
    max_models: int | None
    parameters: tuple[MethodParam, ...]
    sweep_note: str  # what the base -> fine-tuned interpolation weight means for this method

    def param(self, name: str) -> MethodParam:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(f"{self.name} has no parameter {name!r}")

    def global_params(self) -> tuple[MethodParam, ...]:
        return tuple(p for p in self.parameters if p.scope == "global")

    def model_params(self) -> tuple[MethodParam, ...]:
        return tuple(p for p in self.parameters if p.scope == "model")

    @property
    def sweepable(self) -> bool:
        return bool(self.sweep_note)

    def as_row(self) -> dict:
        return {"method": self.pretty_name, "needs a base": "yes" if self.needs_base else "no",
                "what it does": self.explanation, "paper": self.paper}


WEIGHT = MethodParam("weight", "Weight", "How much of this model goes in (relative to the others).", 1.0, -1.0, 2.0, 0.05, "model")
DENSITY = MethodParam("density", "Density", "Fraction of this model's task-vector entries kept (the rest are dropped).", 0.5,
                      0.01, 1.0, 0.01, "model")
LAMBDA = MethodParam("lambda", "λ (scale)", "Scales the summed task vector before it is added to the base.", 1.0, 0.0, 2.0, 0.05)

METHODS: dict[str, MergeMethod] = {
    m.name: m
    for m in (
        MergeMethod(
            "linear", "Linear / model soup",
            "Weighted average of the weights of models fine-tuned from the same start.",
            "https://arxiv.org/abs/2203.05482", False, 2, None,
            (WEIGHT, MethodParam("normalize", "Normalize weights", "Divide by the sum of the weights so they add up to 1.", True)),
            "weights (1 − λ) for the base and λ for the fine-tuned model",
        ),
        MergeMethod(
            "slerp", "SLERP",
            "Spherical interpolation between two models: follows the arc between the weight vectors instead of the chord.",
            "https://en.wikipedia.org/wiki/Slerp", True, 1, 1,
            (MethodParam("t", "t (interpolation)", "0 returns the base, 1 the other model.", 0.5),),
            "t = λ (0 is the base, 1 the fine-tuned model)",
        ),
        MergeMethod(
            "task_arithmetic", "Task arithmetic",
            "Adds the task vectors (model − base) of each model to the base, each scaled by its weight.",
            "https://arxiv.org/abs/2212.04089", True, 1, None,
            (WEIGHT, LAMBDA),
            "base + λ · (fine-tuned − base)",
        ),
        MergeMethod(
            "ties", "TIES",
            "Trims each task vector to its largest entries, elects a sign per weight, and averages only the agreeing entries.",
            "https://arxiv.org/abs/2306.01708", True, 1, None,
            (WEIGHT, DENSITY, LAMBDA,
             MethodParam("normalize", "Normalize", "Divide by the summed weights of the agreeing models.", True)),
            "",
        ),
        MergeMethod(
            "dare_ties", "DARE (TIES)",
            "Drops task-vector entries at random, rescales the survivors, then elects signs as TIES does.",
            "https://arxiv.org/abs/2311.03099", True, 1, None,
            (WEIGHT, DENSITY, LAMBDA,
             MethodParam("rescale", "Rescale", "Scale survivors so the task vector keeps its L1 norm.", True)),
            "",
        ),
        MergeMethod(
            "dare_linear", "DARE (linear)",
            "Drops task-vector entries at random and rescales the survivors, then adds them without sign election.",
            "https://arxiv.org/abs/2311.03099", True, 1, None,
            (WEIGHT, DENSITY, LAMBDA,
             MethodParam("rescale", "Rescale", "Scale survivors so the task vector keeps its L1 norm.", True)),
            "",
        ),
    )
}

SWEEP_METHODS = tuple(name for name, m in METHODS.items() if m.sweepable)
DEFAULT_SWEEP = (0.0, 0.25, 0.5, 0.75, 1.0)


def get_method(name: str) -> MergeMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown merge method {name!r}; choose one of {', '.join(METHODS)}") from None


def method_table() -> list[dict]:
    return [m.as_row() for m in METHODS.values()]
