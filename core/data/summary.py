"""What a loaded dataset looks like at a glance: rows, rough token counts, lengths, roles."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from core.data.text import row_messages, row_text

CHARS_PER_TOKEN = 4  # rough rule for English text with BPE tokenizers; labelled as an estimate


@dataclass
class DatasetSummary:
    rows: int
    est_tokens: int
    prompt_chars: list[int] = field(default_factory=list)
    answer_chars: list[int] = field(default_factory=list)
    turns: list[int] = field(default_factory=list)
    roles: dict[str, int] = field(default_factory=dict)
    text_rows: int = 0

    @property
    def est_tokens_per_row(self) -> float:
        return self.est_tokens / self.rows if self.rows else 0.0


def estimate_tokens(text: str) -> int:
    """A cheap token estimate: characters / 4, at least one token per word-ish chunk."""
    return max(len(text) // CHARS_PER_TOKEN, len(text.split()) if text else 0)


def dataset_summary(rows: Sequence[Any]) -> DatasetSummary:
    roles: Counter[str] = Counter()
    prompt_chars, answer_chars, turns = [], [], []
    total_tokens = 0
    text_rows = 0
    for row in rows:
        messages = row_messages(row) if isinstance(row, dict) else None
        if messages is None:
            text_rows += 1
            roles["text"] += 1
            turns.append(1)
        else:
            roles.update(m.get("role", "?") for m in messages)
            turns.append(len(messages))
        prompt, answer = row_text(row, "prompt"), row_text(row, "answer")
        prompt_chars.append(len(prompt) if messages is not None else 0)
        answer_chars.append(len(answer))
        system = sum(len(m.get("content", "")) for m in (messages or []) if m.get("role") == "system")
        total_tokens += estimate_tokens(row_text(row, "both")) + system // CHARS_PER_TOKEN
    return DatasetSummary(len(rows), total_tokens, prompt_chars, answer_chars, turns, dict(roles), text_rows)
