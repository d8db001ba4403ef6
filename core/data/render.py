"""HTML and table views of an encoded row, for the Template page (no streamlit here, so it is testable).

Every token is a chip: green when trained (label = its id), grey when masked (label -100); the
end-of-turn marker gets a darker green, template text a dashed outline. Tool turns have colours of their own:
an assistant's tool-call text is blue (trained), a tool's result amber (masked; outlined green if a policy
trains it). Reasoning (a think block, see core.data.masking) is violet: solid when trained, pale and dotted when
masked, so reasoning is never mistaken for the answer. A preference pair (core.data.preference.encode_pair) draws its
two sequences with the trained answer in the side's own colour: chosen teal, rejected red, and the first token where
the two sequences differ outlined. Hovering shows id, label, role,
turn and part. Chip text is the exact slice of the rendered conversation the token covers, with newlines
shown as ↵ and the line broken after them.
"""
from __future__ import annotations

import html
from typing import Any

from core.data.masking import IGNORE_INDEX, EncodedRow

CHIP_CSS = """
<style>
.tpl-chips{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px;line-height:2.1;}
.tpl-chip{display:inline-block;padding:0 3px;margin:1px 1px;border-radius:4px;white-space:pre;border:1px solid transparent;}
.tpl-chip.trained{background:#c8f7c5;color:#0b3d0b;border-color:#7bd389;}
.tpl-chip.trained.eot{background:#2e9e44;color:#fff;border-color:#1f6f2f;}
.tpl-chip.masked{background:#eeeeee;color:#6b6b6b;}
.tpl-chip.template{border-style:dashed;border-color:#b5b5b5;}
.tpl-chip.trained.tool_call{background:#cfe0ff;color:#0a2a66;border-color:#6f9be8;}
.tpl-chip.tool-result{background:#ffe6bf;color:#6b4400;border-color:#f0b860;}
.tpl-chip.tool-result.trained{border-color:#2e9e44;border-width:2px;}
.tpl-chip.trained.reasoning{background:#e2d3fb;color:#3b1a70;border-color:#a57be0;}
.tpl-chip.masked.reasoning{background:#f5f0fc;color:#8c7aa8;border-style:dotted;border-color:#c9b6e8;}
.tpl-chip.trained.chosen{background:#c4ece8;color:#04403a;border-color:#3fb5a8;}
.tpl-chip.trained.rejected{background:#fbd0d0;color:#5c0a0a;border-color:#e07b7b;}
.tpl-chip.diverge{outline:2px solid #d81b60;outline-offset:1px;}
.tpl-chip.cut{text-decoration:line-through;opacity:.5;}
.tpl-legend{font-size:12px;margin-bottom:6px;}
</style>
"""


def token_text(row: EncodedRow, index: int, tokenizer: Any | None = None) -> str:
    """The characters token `index` covers in the rendered text (decoded id when it covers none)."""
    start, end = row.offsets[index] if index < len(row.offsets) else (0, 0)
    if end > start:
        return row.text[start:end]
    if tokenizer is not None:
        return tokenizer.decode([row.input_ids[index]], skip_special_tokens=False)
    return ""


def visible(text: str) -> str:
    """HTML for chip text: escaped, newlines and tabs shown."""
    shown = html.escape(text).replace("\t", "→").replace("\r", "␍")
    return shown.replace("\n", "↵")


KINDS: tuple[str, ...] = ("trained", "masked", "eot", "tool_call", "tool_result", "trained_reasoning", "masked_reasoning", "chosen",
                          "rejected")
PAIR_SIDES: tuple[str, ...] = ("chosen", "rejected")


def token_kind(label: int, span: Any, side: str | None = None) -> str:
    """What a token is, for colouring and tables: one of KINDS. `side` ("chosen" / "rejected"): the row is that side of
    a preference pair, and its trained tokens are that side's answer."""
    trained = label != IGNORE_INDEX
    if side is not None and side not in PAIR_SIDES:
        raise ValueError(f"side must be one of {PAIR_SIDES}, got {side!r}")
    if side and trained and span.part != "reasoning":
        return side
    if span.part == "reasoning":
        return "trained_reasoning" if trained else "masked_reasoning"
    if span.role == "tool" and span.part != "template":
        return "tool_result"
    if trained and span.part in ("eot", "tool_call"):
        return span.part
    return "trained" if trained else "masked"


def token_chips_html(row: EncodedRow, tokenizer: Any | None = None, *, max_tokens: int | None = None, side: str | None = None,
                     mark: int | None = None) -> str:
    """All tokens of a row as coloured chips with a hover title; a line break follows each newline. `side`: colour the
    trained tokens as that side of a pair; `mark`: outline that token (where the pair's two sequences diverge)."""
    spans = row.spans
    pieces = [CHIP_CSS, '<div class="tpl-chips">']
    count = len(row.input_ids) if max_tokens is None else min(max_tokens, len(row.input_ids))
    for i in range(count):
        text = token_text(row, i, tokenizer)
        label = row.labels[i]
        span = spans[i]
        kind = token_kind(label, span, side)
        classes = ["tpl-chip", "trained" if label != IGNORE_INDEX else "masked", span.part]
        if span.role == "tool" and span.part != "template":
            classes.append("tool-result")
        if kind in PAIR_SIDES:
            classes.append(kind)
        if i == mark:
            classes.append("diverge")
        title = f"#{i} · id {row.input_ids[i]} · label {label} · role {span.role or '-'} · turn {span.turn} · {span.part} · {kind}" \
            + (" · first token where chosen and rejected differ" if i == mark else "")
        pieces.append(f'<span class="{" ".join(classes)}" title="{html.escape(title, quote=True)}">{visible(text) or "&#8203;"}</span>')
        if "\n" in text:
            pieces.append("<br>")
    if count < len(row.input_ids):
        pieces.append(f'<span class="tpl-chip masked more">… {len(row.input_ids) - count} more tokens</span>')
    pieces.append("</div>")
    return "".join(pieces)


def legend_html(tools: bool = False, reasoning: bool = False, pair: bool = False) -> str:
    return (
        CHIP_CSS
        + '<div class="tpl-legend">'
        + '<span class="tpl-chip trained content">trained</span> '
        + '<span class="tpl-chip trained eot">end-of-turn (trained)</span> '
        + '<span class="tpl-chip masked content">masked (label -100)</span> '
        + '<span class="tpl-chip masked template">template text</span>'
        + (' <span class="tpl-chip trained tool_call">tool call (trained)</span> '
           '<span class="tpl-chip masked content tool-result">tool result (masked)</span>' if tools else "")
        + (' <span class="tpl-chip trained reasoning">reasoning (trained)</span> '
           '<span class="tpl-chip masked reasoning">reasoning (masked)</span>' if reasoning else "")
        + (' <span class="tpl-chip trained chosen">chosen (trained)</span> '
           '<span class="tpl-chip trained rejected">rejected (trained)</span> '
           '<span class="tpl-chip masked diverge">first differing token</span>' if pair else "")
        + "</div>"
    )


def token_table(row: EncodedRow, tokenizer: Any | None = None, side: str | None = None) -> list[dict]:
    """One dict per token (for a dataframe): position, text, id, label, role, turn, part, kind."""
    return [
        {
            "pos": i,
            "token": token_text(row, i, tokenizer),
            "id": row.input_ids[i],
            "label": row.labels[i],
            "role": span.role,
            "turn": span.turn,
            "part": span.part,
            "kind": token_kind(row.labels[i], span, side),
        }
        for i, span in enumerate(row.spans)
    ]


def row_summary(row: EncodedRow) -> dict:
    return {
        "tokens": row.n_tokens,
        "tokens_before_truncation": row.n_tokens_full,
        "trained": row.n_trained,
        "trained_share": round(row.trained_share, 4),
        "truncated": row.truncated,
        "eot_trained": row.eot_trained,
    }
