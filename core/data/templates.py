"""The chat templates the app ships (assets/chat_templates/, MIT, from chujie zheng's collection).

The files are written over many indented lines for reading; the collection's own instructions strip that
layout before use, because Jinja prints the whitespace between `}}` and the next tag. `load_template`
removes exactly that: whitespace-only text between two tags. Text inside `{{ '...' }}` is untouched.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

_BETWEEN_TAGS = re.compile(r"(?<=%\}|\}\}|#\})\s+(?=\{%|\{\{|\{#)")


def templates_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "assets" / "chat_templates"


def shipped_template_names() -> list[str]:
    return sorted(p.stem for p in templates_dir().glob("*.jinja"))


def compact_template(text: str) -> str:
    """Drop the layout whitespace between tags (what the multi-line template files need before use)."""
    return _BETWEEN_TAGS.sub("", text).strip()


@lru_cache(maxsize=64)
def load_template(name: str) -> str:
    """A shipped template by name (e.g. "chatml", "llama-3-instruct"), ready to use as `chat_template`."""
    path = templates_dir() / f"{name}.jinja"
    if not path.is_file():
        raise ValueError(f"no shipped chat template {name!r}; available: {', '.join(shipped_template_names())}")
    return compact_template(path.read_text(encoding="utf-8"))
