"""Translate a MergeSpec into a plain mergekit configuration (the dict `mergekit-yaml` reads).

The same function builds the YAML the job runs (with adapters already merged into local folders)
and the YAML the page offers for download (adapters written as mergekit's `base+adapter` syntax, so
the file also works with the `mergekit-yaml` command line on its own).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from core.merge.spec import MergeSpec
from core.models import ModelSource, resolve_model_path
from core.workspace import safe_name


@dataclass
class MergeInputs:
    base: str | None  # folder (or "folder+adapter")
    models: list[str]


def model_reference(source: ModelSource, materialize: Callable[[ModelSource], str] | None = None) -> str:
    """A mergekit model reference: a folder, or `folder+adapter` when adapters are not merged yet."""
    if source.adapter:
        if materialize is not None:
            return materialize(source)
        return f"{_reference(source.with_adapter(''), materialize)}+{source.adapter}"
    return _reference(source, materialize)


def _reference(source: ModelSource, materialize) -> str:
    # A downloadable YAML names a Hub model by its id (mergekit fetches it anywhere); the job, which has
    # downloaded it first, uses the cached folder.
    if source.kind == "hub" and materialize is None:
        return source.ref
    return resolve_model_path(source)


def resolve_inputs(spec: MergeSpec, materialize: Callable[[ModelSource], str] | None = None) -> MergeInputs:
    base = model_reference(spec.base_source, materialize) if spec.base_source else None
    return MergeInputs(base=base, models=[model_reference(s, materialize) for s in spec.model_sources()])


def output_dtype(spec: MergeSpec, base_folder: str | None) -> str:
    if spec.dtype != "auto":
        return spec.dtype
    folder = (base_folder or "").split("+")[0]
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
        return str(config.get("dtype") or config.get("torch_dtype") or "float32")
    except (OSError, ValueError):
        return "float32"


def build_config(spec: MergeSpec, inputs: MergeInputs, sweep_value: float | None = None) -> dict:
    """The mergekit configuration for the spec, or for one point λ of its sweep."""
    method = spec.method_info
    config: dict = {"merge_method": spec.method, "dtype": output_dtype(spec, inputs.base or inputs.models[0])}
    if sweep_value is not None:
        config.update(_sweep_point(spec, inputs, float(sweep_value)))
        return config
    per_model = [p.name for p in method.model_params()]
    models = [{"model": ref, "parameters": {k: item[k] for k in per_model}} if per_model else {"model": ref}
              for ref, item in zip(inputs.models, spec.models)]
    if spec.method == "slerp":
        models = [{"model": inputs.base}] + models
    if method.needs_base:
        config["base_model"] = inputs.base
    config["models"] = models
    if spec.parameters:
        config["parameters"] = dict(spec.parameters)
    return config


def _sweep_point(spec: MergeSpec, inputs: MergeInputs, lam: float) -> dict:
    base, tuned = inputs.base, inputs.models[0]
    if spec.method == "linear":
        return {"models": [{"model": base, "parameters": {"weight": 1.0 - lam}},
                           {"model": tuned, "parameters": {"weight": lam}}],
                "parameters": {"normalize": True}}
    if spec.method == "slerp":
        return {"base_model": base, "models": [{"model": base}, {"model": tuned}], "parameters": {"t": lam}}
    weight = spec.models[0].get("weight", 1.0)
    return {"base_model": base, "models": [{"model": tuned, "parameters": {"weight": weight}}], "parameters": {"lambda": lam}}


def to_yaml(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def export_yaml(spec: MergeSpec, sweep_value: float | None = None) -> str:
    """A stand-alone mergekit-yaml file for the spec (adapters as `base+adapter`)."""
    inputs = resolve_inputs(spec)
    header = f"# {spec.method_info.pretty_name} merge exported by the Post-Training Workbench\n# run: mergekit-yaml this.yaml ./merged\n"
    return header + to_yaml(build_config(spec, inputs, sweep_value))


def validate_with_mergekit(config: dict):
    """Parse with mergekit's own schema (raises its validation error for a malformed config)."""
    from mergekit.config import MergeConfiguration

    return MergeConfiguration.model_validate(config)


def point_folder_name(lam: float) -> str:
    return safe_name(f"lambda-{lam:.3f}".rstrip("0").rstrip("."))
