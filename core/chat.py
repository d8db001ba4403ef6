"""The Chat page's core: side-by-side conversations with base / fine-tuned / merged models.

Generating an answer is `core.generation`'s job (the one generation path: prompt rule, lock, streaming);
this module adds what is specific to the page — the transcript export, and the format a variant was trained in
(its training rows' system prompt), which Chat pre-fills so that a model is asked the way it learned to answer.
"""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterable

from core.generation import GenerationSettings
from core.runs.card import referenced_runs, source_run_of
from core.runs.jobs import job_kind, read_spec_dict
from core.workspace import runs_dir


def transcript_jsonl(columns: Iterable[dict], settings: GenerationSettings) -> str:
    """One JSON line per turn per column: variant, model, role, content and the answer's timing (a column's own
    "system" prompt, when it has one, replaces the shared settings' one)."""
    lines = []
    for column in columns:
        column_settings = replace(settings, system_prompt=column["system"]) if "system" in column else settings
        for turn in column["history"]:
            lines.append(
                json.dumps(
                    {
                        "variant": column["label"],
                        "model": column["model"],
                        "role": turn["role"],
                        "content": turn["content"],
                        **({"stats": turn["stats"]} if turn.get("stats") else {}),
                        "settings": asdict(column_settings),
                    },
                    ensure_ascii=False,
                )
            )
    return "\n".join(lines) + ("\n" if lines else "")


# ---------------------------------------------------------------- the format a variant was trained in


def training_format(path: str | Path | None, root: Path | None = None) -> dict | None:
    """The inference record (core.data.summary.inference_format) of the training run behind an artifact: an adapter,
    a merged model, a GGUF exported from a run, or a run folder. Runs that are not training runs (export, merge, ...)
    lead to the runs their spec names. Returns {"run_id", "system_prompt", "chat_template", "reasoning"}, or None
    when no training run is behind the path (or the run predates the record)."""
    if not path:
        return None
    root = Path(root or runs_dir())
    start = source_run_of(path, root)
    queue, seen = ([start] if start else []), set()
    while queue:
        run_id = queue.pop(0)
        if run_id in seen:
            continue
        seen.add(run_id)
        folder = root / run_id
        try:
            spec = read_spec_dict(folder)
        except (FileNotFoundError, ValueError):
            continue
        if spec.get("kind") == "train":
            record = _read_json(folder / job_kind("train").result_file).get("inference")
            return {"run_id": run_id, **record} if isinstance(record, dict) and record.get("system_prompt") else None
        queue += [r for r in referenced_runs(spec, root) if r not in seen]
    return None


def variant_training_format(source: Any) -> dict | None:
    """training_format of a Chat variant: a ModelSource (its adapter, else its local folder / GGUF) or a GGUF chosen for
    llama.cpp (its path)."""
    if source is None:
        return None
    for path in (getattr(source, "adapter", ""), getattr(source, "path", ""),
                 getattr(source, "ref", "") if getattr(source, "kind", "") in ("local", "gguf") else ""):
        found = training_format(path) if path else None
        if found:
            return found
    return None


def system_prompt_prefill(record: dict | None) -> tuple[str, str]:
    """(the system prompt to pre-fill, a note saying where it came from) for a variant's training record."""
    if not record:
        return "", ""
    use, run_id = record["system_prompt"], record["run_id"]
    if use["kind"] == "common":
        share = f"{use['share']:.0%} of them" if use["share"] < 1 else "all of them"
        return use["prompt"], f"System prompt from run {run_id}'s training rows ({share} open with it)."
    if use["kind"] == "varies":
        return "", (f"Run {run_id}'s training rows use {use['distinct']} different system prompts, none on 90 % of them: "
                    "nothing is pre-filled — paste the one your question belongs to.")
    return "", f"Run {run_id}'s training rows had no system prompt: the chat template's default applies while this box is empty."


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
