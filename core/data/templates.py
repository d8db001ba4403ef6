"""The chat templates the app ships (assets/chat_templates/, MIT, from chujie zheng's collection).

The files are written over many indented lines for reading; the collection's own instructions strip that
layout before use, because Jinja prints the whitespace between `}}` and the next tag. `load_template`
removes exactly that: whitespace-only text between two tags. Text inside `{{ '...' }}` is untouched.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
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


# --------------------------------------------------------------------------- base models: a template to propose

# (shipped template, the special tokens that must all be in the vocabulary), most specific first.
_BY_SPECIAL_TOKENS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("llama-3-instruct", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    ("chatml", ("<|im_start|>", "<|im_end|>")),
    ("gemma-it", ("<start_of_turn>", "<end_of_turn>")),
    ("granite-3.0-instruct", ("<|start_of_role|>", "<|end_of_role|>")),
    ("phi-3", ("<|user|>", "<|assistant|>", "<|end|>")),
    ("mistral-instruct", ("[INST]", "[/INST]")),
)
PLAIN_TEMPLATE = "alpaca"


@dataclass(frozen=True)
class TemplateProposal:
    name: str
    reason: str

    def as_dict(self) -> dict:
        return {"name": self.name, "source": "proposed", "reason": self.reason}


def propose_template(tokenizer) -> TemplateProposal:
    """A shipped template for a tokenizer that has none (a base model), chosen from its special tokens: the format
    whose markers are single tokens of this vocabulary (ChatML when <|im_start|> exists, ...), else a plain one."""
    vocabulary = set(tokenizer.get_vocab())
    for name, markers in _BY_SPECIAL_TOKENS:
        if all(marker in vocabulary for marker in markers):
            return TemplateProposal(name, f"the tokenizer has no chat template, and its vocabulary holds {', '.join(markers)} "
                                          f"as tokens, which is the {name} format")
    eos = getattr(tokenizer, "eos_token", None)
    ending = (f"each answer ends with its end-of-sequence token {eos}" if eos
              else "it has no end-of-sequence token, so answers end with a blank line only")
    return TemplateProposal(PLAIN_TEMPLATE, "the tokenizer has no chat template and no chat markers among its special tokens, so the "
                                            f"plain '### Instruction / ### Response' layout is used; {ending}")


def chat_template_text(name: str) -> str | None:
    """A spec's chat_template: a shipped name, a .jinja file, or empty for the tokenizer's own."""
    name = (name or "").strip()
    if not name:
        return None
    if name in shipped_template_names():
        return load_template(name)
    path = Path(name).expanduser()
    if path.is_file():
        return compact_template(path.read_text(encoding="utf-8"))
    raise ValueError(f"chat_template: {name!r} is neither a shipped template ({', '.join(shipped_template_names())}) nor a file")
