"""What an export starts from: a finished run folder (train / merge / prune / distill) or a model source,
resolved to the base model, the adapter or full-model folder, the chat template it was trained with, its data
and its spec (for the recipes)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from core.data.templates import chat_template_text
from core.export.disk import safetensors_parameters
from core.models import ModelLoadError, ModelSource, resolve_model_path
from core.runs.jobs import JOBS, JobError, job_kind, read_result, read_spec_dict
from core.runs.status import read_status

# kind -> folder (inside the run) that holds the model it produced


@dataclass
class ExportSource:
    label: str
    model: ModelSource  # base (+ adapter) or a full model folder
    adapter_dir: Path | None
    template_dir: Path | None  # folder whose tokenizer carries the training chat template
    run_dir: Path | None = None
    run_kind: str = ""
    run_spec: dict = field(default_factory=dict)
    dataset: str = ""
    data_format: str | None = None

    @property
    def base(self) -> ModelSource:
        return self.model.with_adapter(None)


def resolve(source_run: str, model: dict) -> ExportSource:
    if not source_run:
        chosen = ModelSource.from_dict(model)
        adapter = Path(chosen.adapter).expanduser() if chosen.adapter else None
        template_dir = adapter or (Path(chosen.ref).expanduser() if chosen.kind == "local" else None)
        return ExportSource(chosen.label, chosen, adapter, template_dir)
    run_dir = Path(source_run).expanduser().resolve()
    try:
        spec = read_spec_dict(run_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise JobError(f"source_run: {exc}") from None
    status = read_status(run_dir)
    if status.state not in ("succeeded", "stopped"):
        raise JobError(f"source_run: {run_dir.name} is {status.state}; export a finished run")
    kind = spec.get("kind", "")
    if kind == "train":
        return _from_train(run_dir, spec)
    if kind in JOBS and job_kind(kind).model_output:
        folder = _model_folder(run_dir, kind)
        return ExportSource(f"{run_dir.name} ({kind})", ModelSource("local", str(folder)), None, folder, run_dir, kind, spec)
    raise JobError(f"source_run: a {kind or 'unknown'} run has no model to export (train, merge, prune or distill runs do)")


def source_parameters(source_run: str, model: dict | None = None) -> int | None:
    """The parameters an export of this source converts (its base model's safetensors headers, as the job's disk plan
    reads them, without loading any weight): the size of an export's time estimate. None when they cannot be read."""
    try:
        source = resolve(source_run, model or {})
        return safetensors_parameters(Path(resolve_model_path(source.base))) or None
    except (JobError, ModelLoadError, OSError, ValueError):
        return None


def _from_train(run_dir: Path, spec: dict) -> ExportSource:
    card = read_result(run_dir, "train", {})
    outputs = card.get("outputs") or {}
    data = card.get("data") or {}
    base = ModelSource.from_dict(spec.get("model") or {"kind": "embedded"})
    common = dict(run_dir=run_dir, run_kind="train", run_spec=spec, dataset=str(spec.get("dataset", "")), data_format=data.get("format"))
    if outputs.get("adapter") and (Path(outputs["adapter"]) / "adapter_config.json").is_file():
        adapter = Path(outputs["adapter"])
        return ExportSource(f"{run_dir.name} (train, adapter)", base.with_adapter(adapter), adapter, adapter, **common)
    if outputs.get("model") and (Path(outputs["model"]) / "config.json").is_file():
        folder = Path(outputs["model"])
        return ExportSource(f"{run_dir.name} (train, full)", ModelSource("local", str(folder)), None, folder, **common)
    raise JobError(f"source_run: {run_dir.name} saved no adapter or model (was it stopped before its first save?)")


def _model_folder(run_dir: Path, kind: str) -> Path:
    result = read_result(run_dir, kind, {})
    candidates = [result.get("model_dir"), result.get("student_dir"), str(run_dir / job_kind(kind).model_output)]
    for candidate in candidates:
        if candidate and (Path(candidate) / "config.json").is_file():
            return Path(candidate)
    raise JobError(f"source_run: {run_dir.name} has no saved model folder to export")


def training_template(source: ExportSource, override: str = "") -> str | None:
    """The chat template training used: the override, else the one saved with the adapter / model, else the base's."""
    if override:
        return chat_template_text(override)
    if source.template_dir is not None:
        found = chat_template_of(source.template_dir)
        if found:
            return found
    return None


def chat_template_of(folder: Path) -> str | None:
    """The template a tokenizer folder carries (chat_template.jinja in transformers 5, else tokenizer_config.json)."""
    jinja = Path(folder) / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = Path(folder) / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        return template if isinstance(template, str) else None
    return None
