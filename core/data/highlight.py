"""HTML for showing curation results: matched spans in <mark>, texts escaped."""
from __future__ import annotations

import html
from typing import Sequence

BOX_STYLE = "white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:0.85em;line-height:1.4;" \
            "padding:0.5em;border:1px solid rgba(128,128,128,0.35);border-radius:4px;max-height:22em;overflow:auto"
MARK_STYLE = "background:#ffd54f;color:#000;padding:0 1px"


def highlight_html(text: str, spans: Sequence[tuple[int, int]], *, max_chars: int | None = None) -> str:
    """`text` with each (start, end) character span wrapped in <mark>; everything escaped."""
    parts = []
    cursor = 0
    for start, end in sorted(spans):
        start, end = max(start, cursor), min(end, len(text))
        if start >= end:
            continue
        parts.append(html.escape(text[cursor:start]))
        parts.append(f'<mark style="{MARK_STYLE}">{html.escape(text[start:end])}</mark>')
        cursor = end
    parts.append(html.escape(text[cursor:]))
    body = "".join(parts)
    if max_chars is not None and len(text) > max_chars:
        body = _truncate_marked(text, spans, max_chars)
    return f'<div style="{BOX_STYLE}">{body}</div>'


def _truncate_marked(text: str, spans: Sequence[tuple[int, int]], max_chars: int) -> str:
    """A window of the text around the first span, so long rows stay readable."""
    first = min((s for s, _ in spans), default=0)
    begin = max(0, first - max_chars // 4)
    end = min(len(text), begin + max_chars)
    shifted = [(max(s, begin) - begin, min(e, end) - begin) for s, e in spans if e > begin and s < end]
    inner = highlight_html(text[begin:end], shifted)
    inner = inner[inner.index(">") + 1 : -len("</div>")]
    return ("… " if begin else "") + inner + (" …" if end < len(text) else "")


def plain_box_html(text: str) -> str:
    return f'<div style="{BOX_STYLE}">{html.escape(text)}</div>'
