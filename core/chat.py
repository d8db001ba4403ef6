"""The Chat page's core: side-by-side conversations with base / fine-tuned / merged models.

Generating an answer is `core.generation`'s job (the one generation path: prompt rule, lock, streaming);
this module adds what is specific to the page — the transcript export.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Iterable

from core.generation import GenerationSettings


def transcript_jsonl(columns: Iterable[dict], settings: GenerationSettings) -> str:
    """One JSON line per turn per column: variant, model, role, content and the answer's timing."""
    lines = []
    for column in columns:
        for turn in column["history"]:
            lines.append(
                json.dumps(
                    {
                        "variant": column["label"],
                        "model": column["model"],
                        "role": turn["role"],
                        "content": turn["content"],
                        **({"stats": turn["stats"]} if turn.get("stats") else {}),
                        "settings": asdict(settings),
                    },
                    ensure_ascii=False,
                )
            )
    return "\n".join(lines) + ("\n" if lines else "")
