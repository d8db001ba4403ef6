"""Streamlit helpers shared by the pages: session defaults, the sidebar, cached models.

Lives beside app.py, not in core/, because it imports streamlit. Pages call these; core never does.
"""
from __future__ import annotations

import json

import streamlit as st

from core.hardware import detect
from core.models import EMBEDDED_NAME, ModelLoadError, ModelSource, load_model

SOURCE_LABELS = {
    "embedded": f"Embedded default ({EMBEDDED_NAME})",
    "local": "Local folder",
    "hub": "Hugging Face Hub id",
    "gguf": "GGUF file",
}


def init_session_defaults() -> None:
    st.session_state.setdefault("active_model", ModelSource().as_dict())


def active_model_source() -> ModelSource:
    return ModelSource.from_dict(st.session_state.get("active_model") or {})


@st.cache_resource(max_entries=3, show_spinner=False)
def _load_cached(source_json: str):
    return load_model(ModelSource.from_dict(json.loads(source_json)))


def cached_model(source: ModelSource):
    """Load through core.models once per source; at most three models stay in memory."""
    return _load_cached(json.dumps(source.as_dict(), sort_keys=True))


@st.cache_resource(show_spinner=False)
def cached_hardware():
    return detect()


def render_hardware() -> None:
    hw = cached_hardware()
    st.caption(f"**Hardware** · {hw.summary}")
    flags = [f"bf16 {'✓' if hw.bf16 else '✗'}", f"4-bit {'✓' if hw.bnb_4bit else '✗'}", f"Unsloth {'✓' if hw.unsloth else '✗'}"]
    st.caption(" · ".join(flags))
    for note in hw.notes:
        st.caption(f"ℹ️ {note}")


def render_model_selector() -> None:
    """Choose the active model; the choice is kept in session_state and holds on every page."""
    current = active_model_source()
    st.caption(f"**Active model** · {current.label} ({current.kind})")
    with st.expander("Change model", expanded=False):
        kinds = list(SOURCE_LABELS)
        kind = st.selectbox("Source", kinds, index=kinds.index(current.kind), format_func=SOURCE_LABELS.get, key="sidebar_model_kind")
        ref = ""
        if kind != "embedded":
            placeholder = {"local": "/path/to/model-folder", "hub": "Qwen/Qwen2.5-0.5B-Instruct", "gguf": "/path/to/model.gguf"}[kind]
            ref = st.text_input("Path or id", value=current.ref if kind == current.kind else "", placeholder=placeholder, key="sidebar_model_ref")
        trust = st.checkbox("Trust remote code", value=current.trust_remote_code, key="sidebar_model_trust",
                            help="Runs Python code from the model repository. Only for authors you trust.")
        if st.button("Use this model", key="sidebar_model_apply"):
            try:
                chosen = ModelSource(kind=kind, ref=ref.strip(), trust_remote_code=trust)
            except ValueError as exc:
                st.error(str(exc))
                return
            try:
                with st.spinner(f"Loading {chosen.label}…"):
                    info = cached_model(chosen).info
            except ModelLoadError as exc:
                st.error(str(exc))
                return
            st.session_state["active_model"] = chosen.as_dict()
            st.success(f"Loaded {info.name}: {info.parameters / 1e6:.1f} M parameters, {info.dtype}")
            st.rerun()


def render_sidebar() -> None:
    with st.sidebar:
        render_model_selector()
        render_hardware()
