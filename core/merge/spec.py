"""MergeSpec: one merge (or one base → fine-tuned sweep) as a run spec — the YAML file, the CLI and the form."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from core.merge.methods import METHODS, SWEEP_METHODS, get_method
from core.models import ModelSource
from core.runs.spec import RunSpec, meta

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class MergeSpec(RunSpec):
    kind: ClassVar[str] = "merge"

    name: str = field(default="", metadata=meta("A label for the run folder."))
    method: str = field(
        default="task_arithmetic", metadata=meta("The merge method (see the method table).", choices=METHODS))
    base: dict = field(default_factory=lambda: {"kind": "embedded"}, metadata=meta("The base model (a model source). Task-vector methods "
                "and SLERP merge relative to it; the forgetting report always compares against it. Empty = none (linear only)."))
    models: list = field(default_factory=list, metadata=meta("The models to merge: a list of {source: <model source>, weight: float, "
                "density: float}. A source with an `adapter` is merged into its base first."))
    parameters: dict = field(default_factory=dict, metadata=meta("Method-wide parameters (t, lambda, normalize, rescale); missing ones "
                                                                 "take the method's default."))
    dtype: str = field(
        default="auto", metadata=meta("dtype of the merged weights; auto = the base model's dtype.", choices=DTYPES))
    seed: int = field(default=0, metadata=meta("Random seed (DARE drops entries at random).", advanced=True, min=0))
    sweep: list = field(default_factory=list, metadata=meta("Interpolation weights λ between base (0) and the fine-tuned model (1), e.g. "
                "0, 0.25, 0.5, 0.75, 1. Non-empty = a learning-vs-forgetting sweep: one merge + one evaluation per λ."))
    evaluate: bool = field(default=True, metadata=meta("Score the result(s) with the forgetting report."))
    eval_rows: int = field(default=20, metadata=meta("Task rows (and general texts) used per evaluation; fewer = faster.",
                                                     advanced=True, min=1, max=10000))
    task_dataset: str = field(default="", metadata=meta("Task rows the merge is scored on (a file or dataset folder; the last assistant "
                "turn is the reference). Empty: the data of the run the merged models came from when known, else the built-in demo "
                "ticket task.", "evaluation"))
    keep_sweep_models: bool = field(default=True, metadata=meta("Keep every sweep point's merged model on disk (needed to chat with a "
                                                                "chosen point).", advanced=True))

    def __post_init__(self) -> None:
        super().__post_init__()
        method = get_method(self.method)
        self.base = dict(self.base or {})
        if self.base:
            ModelSource.from_dict(self.base)  # raises a ValueError naming the problem
        self.models = [self._check_input(i, item, method) for i, item in enumerate(self.models or [])]
        self.parameters = self._check_globals(method, dict(self.parameters or {}))
        self.sweep = [float(v) for v in (self.sweep or [])]
        if self.sweep:
            self._check_sweep(method)
            return
        if len(self.models) < method.min_models:
            raise ValueError(f"models: {method.pretty_name} needs at least {method.min_models} model(s) besides the base, got "
                             f"{len(self.models)}")
        if method.max_models is not None and len(self.models) > method.max_models:
            raise ValueError(f"models: {method.pretty_name} takes at most {method.max_models} model(s) besides the base, got "
                             f"{len(self.models)}")

    @staticmethod
    def _check_input(index: int, item: Any, method) -> dict:
        if not isinstance(item, dict) or "source" not in item:
            raise ValueError(f"models[{index}]: expected {{source: <model source>, weight: ..., density: ...}}, got {item!r}")
        extra = sorted(set(item) - {"source"} - {p.name for p in method.model_params()})
        if extra:
            raise ValueError(f"models[{index}]: {method.pretty_name} has no per-model parameter {', '.join(extra)}")
        try:
            source = ModelSource.from_dict(item["source"]).as_dict()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"models[{index}].source: {exc}") from None
        checked = {"source": source}
        for p in method.model_params():
            checked[p.name] = _in_range(f"models[{index}].{p.name}", item.get(p.name, p.default), p)
        return checked

    @staticmethod
    def _check_globals(method, params: dict) -> dict:
        unknown = sorted(set(params) - {p.name for p in method.global_params()})
        if unknown:
            raise ValueError(f"parameters: {method.pretty_name} has no parameter {', '.join(unknown)} "
                             f"(it takes {', '.join(p.name for p in method.global_params()) or 'none'})")
        return {p.name: _in_range(f"parameters.{p.name}", params.get(p.name, p.default), p) for p in method.global_params()}

    def _check_sweep(self, method) -> None:
        if self.method not in SWEEP_METHODS:
            raise ValueError(f"sweep: a base → fine-tuned sweep works with {', '.join(SWEEP_METHODS)}, not {method.pretty_name}")
        if not self.base:
            raise ValueError("sweep: the sweep interpolates from the base model, so `base` must be set")
        if len(self.models) != 1:
            raise ValueError(f"sweep: give exactly one fine-tuned model to sweep towards, got {len(self.models)}")
        top = 2.0 if self.method == "task_arithmetic" else 1.0
        for value in self.sweep:
            if not 0.0 <= value <= top:
                raise ValueError(f"sweep: λ = {value} is outside [0, {top:g}]")

    # ------------------------------------------------------------------ conveniences
    @property
    def method_info(self):
        return METHODS[self.method]

    @property
    def base_source(self) -> ModelSource | None:
        return ModelSource.from_dict(self.base) if self.base else None

    def model_sources(self) -> list[ModelSource]:
        return [ModelSource.from_dict(m["source"]) for m in self.models]

    @property
    def reference_source(self) -> ModelSource:
        """The model the forgetting report compares against: the base, else the first input."""
        return self.base_source or self.model_sources()[0]


def _in_range(where: str, value: Any, param) -> float | bool:
    if param.is_bool:
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if not param.min <= number <= param.max:
        raise ValueError(f"{where}: {number:g} is outside [{param.min:g}, {param.max:g}]")
    return number
