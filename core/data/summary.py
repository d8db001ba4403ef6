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


COMMON_SYSTEM_SHARE = 0.9  # one system prompt on at least this share of the conversations is "the" system prompt


def system_prompt_use(rows: Sequence[Any], common_share: float = COMMON_SYSTEM_SHARE) -> dict:
    """Which system prompt the rows' conversations open with, as inference should repeat it:

    - ``{"kind": "common", "prompt": ...}`` when one prompt opens at least `common_share` of the conversations;
    - ``{"kind": "varies", "prompt": None}`` when rows carry system prompts but no single one is that common;
    - ``{"kind": "none", "prompt": None}`` when (almost) no conversation has one (the template's default applies).

    ``share`` is the most common prompt's share of the conversations, ``with_system`` how many have any."""
    counts: Counter[str] = Counter()
    conversations = 0
    for row in rows:
        messages = row_messages(row) if isinstance(row, dict) else None
        if not messages:
            continue
        conversations += 1
        first = messages[0]
        if isinstance(first, dict) and first.get("role") == "system" and str(first.get("content") or "").strip():
            counts[str(first["content"])] += 1
    with_system = sum(counts.values())
    prompt, top = counts.most_common(1)[0] if counts else (None, 0)
    share = top / conversations if conversations else 0.0
    if conversations and share >= common_share:
        kind = "common"
    elif conversations and with_system / conversations > 1 - common_share:
        kind, prompt = "varies", None
    else:
        kind, prompt = "none", None
    return {"kind": kind, "prompt": prompt, "share": round(share, 4), "with_system": with_system, "conversations": conversations,
            "distinct": len(counts)}


def inference_format(rows: Sequence[Any], template_choice: dict, reasoning: str) -> dict:
    """What a run must repeat when it answers (Chat, the GGUF check, the Ollama Modelfile): the system prompt its rows
    used, the chat template it rendered them with and its reasoning setting."""
    return {"system_prompt": system_prompt_use(rows), "chat_template": {k: template_choice.get(k) for k in ("name", "source")},
            "reasoning": reasoning}
