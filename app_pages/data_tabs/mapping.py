"""The Data page's column mapping (not a page itself): where the loader's "a column mapping such as {…}" is entered.

The mapping is core.data.formats' `mapping` ({field: your column}); the loader validates the fields and the rows."""
from __future__ import annotations

import json

import streamlit as st

from core.data.formats import FIELD_NAMES

KEY = "data_mapping"
EXAMPLE = '{"prompt": "question", "completion": "answer"}'


def parse_mapping(text: str | None) -> tuple[dict | None, str]:
    """(the mapping, "") from the box's text, or (None, why not) — an empty box is no mapping."""
    text = (text or "").strip()
    if not text:
        return None, ""
    try:
        value = json.loads(text)
    except ValueError as exc:
        return None, f"Column mapping: not valid JSON ({exc}); write it like {EXAMPLE}"
    if not isinstance(value, dict) or not value or not all(isinstance(v, str) and v.strip() for v in value.values()):
        return None, f"Column mapping: write a JSON object of field → your column name, like {EXAMPLE}"
    unknown = sorted(set(value) - set(FIELD_NAMES))
    if unknown:
        return None, f"Column mapping: unknown field {', '.join(map(repr, unknown))}; the fields are {', '.join(FIELD_NAMES)}"
    return value, ""


def current_mapping() -> dict | None:
    """The mapping in the box (read before the dataset loads; the box itself is drawn after)."""
    return parse_mapping(st.session_state.get(KEY))[0]


def mapping_box(*, expanded: bool) -> None:
    """The box; open when asked (the loader's message promised it) or while it holds text."""
    with st.expander("Column mapping", expanded=expanded or bool(str(st.session_state.get(KEY) or "").strip())):
        text = st.text_input("Your columns for the loader's fields (JSON)", key=KEY, placeholder=EXAMPLE,
                             help=f"Name the columns that hold each field when they are not detected. Fields: {', '.join(FIELD_NAMES)}.")
        mapping, problem = parse_mapping(text)
        if problem:
            st.error(problem)
        elif mapping:
            st.caption("Read with " + ", ".join(f"`{field}` ← column `{column}`" for field, column in mapping.items()))
