"""Which models an evaluation compares: the spec's variants, plus the checkpoints of a training run."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from core.models import ModelSource
from core.runs import read_status
from core.runs.jobs import read_spec_dict
from core.workspace import read_json

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
FINAL_ADAPTER = "adapter"


@dataclass(frozen=True)
class Variant:
    label: str
    source: ModelSource
    step: int | None = None  # set for checkpoints of a training run (the learning-vs-forgetting curve)


def adapter_chat_template(adapter: str) -> str | None:
    """The chat template saved beside an adapter (training saves the one it rendered with), if any."""
    folder = Path(adapter).expanduser()
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    config = read_json(folder / "tokenizer_config.json", {}) or {}
    template = config.get("chat_template")
    return template if isinstance(template, str) and template.strip() else None


def variant_source(model: dict, base: ModelSource) -> ModelSource:
    """A variant's model dict; one that names only an adapter goes on top of the base."""
    if "kind" not in model and "ref" not in model:
        return base.with_adapter(model.get("adapter", ""))
    return ModelSource.from_dict(model)


def run_checkpoints(train_run: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every adapter checkpoint of a training run, oldest first."""
    root = Path(train_run).expanduser() / "checkpoints"
    found = []
    for path in root.iterdir() if root.is_dir() else []:
        match = _CHECKPOINT.match(path.name)
        if match and (path / "adapter_config.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def final_step(train_run: Path) -> int | None:
    """The step the final adapter was saved at, from the run's status (result.global_step) if recorded."""
    try:
        result = read_status(train_run).result or {}
    except Exception:  # noqa: BLE001 - a missing status only loses the x position of the final point
        return None
    for key in ("global_step", "steps", "step"):
        if isinstance(result.get(key), (int, float)):
            return int(result[key])
    return None


def trained_base(train_run: Path, default: ModelSource) -> ModelSource:
    """The model a training run trained (its spec's `model`; the train spec's default is the embedded
    model), so its adapters go on the right base. A folder without a spec keeps `default`."""
    try:
        model = read_spec_dict(train_run).get("model") or {"kind": "embedded"}
    except (FileNotFoundError, ValueError):
        return default
    return ModelSource.from_dict(model) if isinstance(model, dict) else default


def checkpoint_variants(train_run: str | Path, base: ModelSource) -> list[Variant]:
    train_run = Path(train_run).expanduser()
    if not train_run.is_dir():
        raise ValueError(f"checkpoints_of: training run folder not found: {train_run}")
    base = trained_base(train_run, base)
    variants = [Variant(f"step {step}", base.with_adapter(str(path)), step) for step, path in run_checkpoints(train_run)]
    final = train_run / FINAL_ADAPTER
    if (final / "adapter_config.json").is_file():
        step = final_step(train_run)
        if step is None or all(v.step != step for v in variants):
            last = variants[-1].step if variants else 0
            variants.append(Variant("final", base.with_adapter(str(final)), step if step is not None else last + 1))
    if not variants:
        raise ValueError(f"checkpoints_of: {train_run} has no adapter checkpoints "
                         "(checkpoints/checkpoint-N/adapter_config.json) and no final adapter")
    return variants


def expand_variants(spec_variants: list[dict], checkpoints_of: str, base: ModelSource) -> list[Variant]:
    variants = [Variant(str(v["label"]).strip(), variant_source(v["model"], base)) for v in spec_variants]
    if checkpoints_of:
        taken = {v.label for v in variants}
        variants += [v for v in checkpoint_variants(checkpoints_of, base) if v.label not in taken]
    return variants


def training_run_of(source: dict | ModelSource) -> Path | None:
    """The training run folder whose adapter (or checkpoint) a model source names, or None."""
    adapter = (source.adapter if isinstance(source, ModelSource) else (source or {}).get("adapter")) or ""
    for folder in list(Path(adapter).expanduser().parents)[:3] if adapter else []:
        try:
            if read_spec_dict(folder).get("kind") == "train":
                return folder
        except (FileNotFoundError, ValueError):
            continue
    return None


def retrain_recipe(report: dict, label: str, updates: dict) -> tuple[dict, dict] | None:
    """(model source dict, train spec fields) to train the run behind a report's variant again with `updates`
    applied (e.g. replay), or None when the variant does not come from a training run of this workspace."""
    model = next((m for m in report.get("models", []) if m["label"] == label), None)
    run = training_run_of(model.get("source") or {}) if model else None
    if run is None:
        return None
    spec = {k: v for k, v in read_spec_dict(run).items() if k not in ("kind", "name")}
    model_source = spec.pop("model", None) or {"kind": "embedded"}
    return model_source, {**spec, **updates, "name": f"{run.name[-24:]}-replay"}


def _same_path(a: str, b: str) -> bool:
    return bool(a) and bool(b) and Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def evaluations_of(folder: str, summaries: list) -> list:
    """The evaluation runs (core.runs.RunSummary, in the order given: newest first from list_runs) that scored the model
    in `folder` — an adapter or a model folder among their variants, or the checkpoints of the training run it belongs
    to. What "📊 Evaluate it" opens: that model's own report, never the previous evaluation of another one."""
    found = []
    for run in summaries:
        if run.kind != "evaluate":
            continue
        spec = run.spec or {}
        models = [v.get("model") or {} for v in spec.get("variants") or [] if isinstance(v, dict)]
        named = [m.get("adapter") or (m.get("ref") if m.get("kind") == "local" else "") for m in models if isinstance(m, dict)]
        sweep = str(spec.get("checkpoints_of") or "")
        if any(_same_path(str(n or ""), folder) for n in named) or (sweep and _same_path(sweep, str(Path(folder).parent))):
            found.append(run)
    return found
