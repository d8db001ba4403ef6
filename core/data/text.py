"""The text of a normalised row, and the normalisation rules curation compares texts by.

Rows are the loader's normal form (``core.data.formats``): ``{"messages": [{"role": ...,
"content": ...}, ...]}`` or, for plain language-modelling data, ``{"text": ...}``.
Curation looks at one of three views of a row:

- ``"prompt"``: the user and tool turns, in order;
- ``"answer"``: the assistant turns, in order (a tool call as ``name({"arg": ...})``);
- ``"both"``: the user, tool and assistant turns, in order.

System turns are left out of every view: datasets usually repeat one system prompt on every
row, and comparing it would make every row look like every other. A ``{"text": ...}`` row has
no prompt/answer split, so all three views are its text. A preference pair (``{"prompt": [...], "chosen": [...],
"rejected": [...]}``) reads as prompt + chosen + rejected: its answer view holds both answers.

Turns are joined with a blank line, so character offsets into ``row_text(row, field)`` are
stable and a page can highlight them.
"""
from __future__ import annotations

import json
import re
import sys
import unicodedata
from functools import lru_cache
from typing import Any, Iterable, Sequence

FIELDS = ("prompt", "answer", "both")
TURN_SEPARATOR = "\n\n"

WORD = re.compile(r"\w+")


@lru_cache(maxsize=1)
def _punctuation_table() -> dict[int, None]:
    """Every Unicode punctuation code point (categories Pc, Pd, Ps, Pe, Pi, Pf, Po), for
    str.translate, which is much faster than a per-character category test."""
    return dict.fromkeys(i for i in range(sys.maxunicode + 1) if unicodedata.category(chr(i)).startswith("P"))


def check_field(field: str) -> str:
    if field not in FIELDS:
        raise ValueError(f"field must be one of {', '.join(FIELDS)}, got {field!r}")
    return field


def row_text(row: Any, field: str = "both") -> str:
    """The text of one row for the chosen field ("prompt", "answer" or "both")."""
    return _row_text(row, check_field(field))


_KEEP_ROLE = {  # field -> which turns it keeps (system never)
    "prompt": lambda role: role != "assistant" and role != "system",
    "answer": lambda role: role == "assistant",
    "both": lambda role: role != "system",
}


def _row_text(row: Any, field: str) -> str:
    if isinstance(row, str):  # already a text (tests, benchmark items)
        return row
    messages = row_messages(row) if isinstance(row, dict) else None
    if messages is None and isinstance(row, dict) and isinstance(row.get("text"), str):
        return row["text"]
    if not isinstance(messages, list):
        raise ValueError(f"row is not in the normalised form {{'messages': [...]}} or {{'text': ...}}: {str(row)[:120]!r}")
    keep = _KEEP_ROLE[field]
    parts = []
    for message in messages:
        if not isinstance(message, dict) or not keep(message.get("role", "")):
            continue
        content = message.get("content")
        if isinstance(content, str) and content.strip():
            parts.append(content)
        parts.extend(tool_call_text(call) for call in message.get("tool_calls") or ())
    return TURN_SEPARATOR.join(parts)


def row_messages(row: dict) -> list | None:
    """The messages of a normalised row: its conversation, or for preference rows (core.data.preference) the prompt
    followed by the chosen and rejected answers (a pair) or by the completion (unpaired), so that curation sees both sides."""
    if "messages" in row or not isinstance(row.get("prompt"), list):
        return row.get("messages")
    sides = [row.get(k) for k in ("chosen", "rejected", "completion")]
    return row["prompt"] + [m for side in sides if isinstance(side, list) for m in side]


def tool_call_text(call: dict) -> str:
    """A normalised tool call as one line of text: ``get_weather({"city": "Paris"})``."""
    function = call.get("function", call) if isinstance(call, dict) else {}
    arguments = json.dumps(function.get("arguments", {}), ensure_ascii=False, sort_keys=True)
    return f"{function.get('name', '?')}({arguments})"


def answer_length(row: Any) -> int:
    """Characters in the assistant turns (the "longest answer" keep rule)."""
    return len(row_text(row, "answer")) if isinstance(row, dict) else len(row)


def row_texts(rows: Sequence[Any], field: str, *, require_text: bool = True) -> list[str]:
    """The texts of all rows; a clear error naming the rows that have no text in `field`."""
    if len(rows) == 0:
        raise ValueError("the dataset is empty: there are no rows to compare")
    texts = []
    empty = []
    check_field(field)
    for index, row in enumerate(rows):
        try:
            text = _row_text(row, field)
        except ValueError as error:
            raise ValueError(f"row {index}: {error}") from None
        if not text.strip():
            empty.append(index)
        texts.append(text)
    if require_text and empty:
        shown = ", ".join(str(i) for i in empty[:10]) + (" ..." if len(empty) > 10 else "")
        raise ValueError(
            f"{len(empty)} row(s) have no text in the {field!r} field (rows {shown}); "
            "drop them or compare on another field"
        )
    return texts


def normalise_for_exact(text: str) -> str:
    """The exact-duplicate key: NFKC, case-folded, Unicode punctuation (category P*) removed,
    every run of whitespace collapsed to one space, ends trimmed."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_punctuation_table())
    return " ".join(text.split())


def words(text: str) -> list[str]:
    """Lower-cased word tokens (runs of letters, digits and underscores); punctuation dropped."""
    return WORD.findall(text.lower())


def join_texts(texts: Iterable[str]) -> str:
    return TURN_SEPARATOR.join(texts)
