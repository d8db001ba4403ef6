"""Chat: one prompt to two or three model variants, answers streaming side by side."""
from __future__ import annotations

import json
from dataclasses import replace

import streamlit as st

from app_pages.chat_tabs.arena import ARENA, SIDE_BY_SIDE, render_arena
from core.chat import system_prompt_prefill, transcript_jsonl, variant_training_format
from core.export.results import gguf_choices
from core.generation import GenerationSettings, start_generation
from core.llamacpp import LlamaCppChoice, available
from core.models import ModelLoadError, ModelSource
from pages_common import cached_chat_model, model_picker, trained_adapter_folders

LLAMACPP = "GGUF export (llama.cpp)"


def gguf_variant(i: int) -> LlamaCppChoice | None:
    if not available():
        st.caption("llama.cpp (llama-cpp-python) is not installed here.")
        return None
    files = gguf_choices()
    preset = st.session_state.get("chat_gguf")
    options = list(files) + ["File path…"]
    chosen = st.selectbox("GGUF file", options, key=f"chat_gguf_pick_{i}",
                          index=next((k for k, v in enumerate(files.values()) if v == preset), 0))
    path = files.get(chosen) or st.text_input("GGUF path", value=preset or "", key=f"chat_gguf_path_{i}")
    return LlamaCppChoice(path.strip()) if path and path.strip() else None


def variant_source(i: int) -> ModelSource | LlamaCppChoice | None:
    """Column i's model: the shared picker plus a GGUF run by llama.cpp; a result another page handed over
    preselects column 2."""
    preset_adapter = st.session_state.get("chat_adapter")
    preset_model = st.session_state.get("chat_model_path")
    preset_gguf = st.session_state.get("chat_gguf")
    if preset_gguf:  # from the Export page: the torch model it came from beside the GGUF in llama.cpp
        default = ("Active model + trained adapter" if preset_adapter else "Active model") if i == 0 else LLAMACPP
    elif i == 0:
        default = "Active model"
    elif i == 1 and preset_model and not preset_adapter:
        default = "Local folder"
    elif i == 1 and (preset_adapter or trained_adapter_folders()):
        default = "Active model + trained adapter"
    else:
        default = "Embedded default"
    picked = model_picker("Variant", f"chat_{i}", default_choice=default, adapter=preset_adapter, ref=preset_model if i == 1 else None,
                          extra_choices=(LLAMACPP,))
    st.caption("backend: llama.cpp" if picked == LLAMACPP else "backend: torch (transformers)")
    return gguf_variant(i) if picked == LLAMACPP else picked


def column_system_prompt(i: int, source) -> str:
    """Column i's system prompt: pre-filled from the training rows of the run behind its variant, then the user's own
    text, kept across page changes (in chat_columns, not only in the widget's key, which Streamlit drops off-page).
    A new variant in the column starts it afresh: its history is cleared so no answer sits under another model's label."""
    column = st.session_state.setdefault("chat_columns", {}).setdefault(i, {})
    variant = json.dumps(getattr(source, "as_dict", lambda: {"path": getattr(source, "path", None)})(), sort_keys=True)
    widget = f"chat_system_{i}"
    if column.get("variant") != variant:
        cleared = [histories.pop(i, None), streams.pop(i, None)]
        if cleared[1] is not None:
            cleared[1].cancel()  # an answer still streaming belongs to the old variant
        if "variant" in column and any(cleared):
            st.toast(f"Column {i + 1}: new variant, its conversation was cleared.")
        st.session_state.get("chat_errors", {}).pop(i, None)
        column["system"], column["note"] = system_prompt_prefill(variant_training_format(source))
        column["variant"] = variant
        st.session_state[widget] = column["system"]
    elif widget not in st.session_state:  # back from another page: the widget's state was dropped, the text was not
        st.session_state[widget] = column["system"]
    column["system"] = st.text_area("System prompt", key=widget, height=80)
    if column["note"]:
        st.caption(column["note"])
    return column["system"]


def settings_form() -> GenerationSettings:
    with st.expander("Sampling settings (shared by all columns)", expanded=False):
        c1, c2, c3, c4 = st.columns(4)
        temperature = c1.slider("Temperature", 0.0, 2.0, 0.0, 0.05, key="chat_temperature", help="0 = greedy (deterministic)")
        top_p = c2.slider("Top-p", 0.05, 1.0, 0.9, 0.05, key="chat_top_p")
        max_new = c3.number_input("Max new tokens", 1, 4096, 128, key="chat_max_new")
        seed = c4.number_input("Seed", 0, 2**31 - 1, 0, key="chat_seed")
    return GenerationSettings("", float(temperature), float(top_p), int(max_new), int(seed))


def render_column(i: int, col) -> None:
    with col:
        for turn in histories.get(i, []):
            with st.chat_message(turn["role"]):
                st.markdown(turn["content"])
                if turn.get("stats"):
                    s = turn["stats"]
                    tps = f"{s['tokens_per_s']:.1f} tok/s" if s.get("tokens_per_s") else "–"
                    ttft = f"{s['time_to_first_token_s']:.2f} s" if s.get("time_to_first_token_s") is not None else "–"
                    st.caption(f"{s['new_tokens']} tokens · first token {ttft} · {s['latency_s']:.2f} s total · {tps}")
        stream = streams.get(i)
        if stream is not None and not stream.done:
            with st.chat_message("assistant"):
                st.markdown(stream.text + " ▌" if stream.text else "_waiting…_")


def collect_finished() -> bool:
    """Move finished streams into their column's history; True when something changed."""
    changed = False
    for i, stream in list(streams.items()):
        if stream.done:
            if stream.error:
                st.session_state.setdefault("chat_errors", {})[i] = stream.error
            else:
                histories.setdefault(i, []).append({"role": "assistant", "content": stream.text, "stats": stream.stats.as_dict()})
            del streams[i]
            changed = True
    return changed


def live_answers() -> None:
    """The answer columns; a fragment that reruns every 0.5 s while any answer is still streaming."""
    if collect_finished() and not streams:
        st.rerun()  # whole page: stop polling, show the final answers with their stats
    answer_cols = st.columns(n_columns)
    for i, col in enumerate(answer_cols):
        render_column(i, col)
    for i, error in st.session_state.get("chat_errors", {}).items():
        st.error(f"Column {i + 1}: {error}")


st.title("💬 Chat side by side")
st.caption("Send one prompt to every column. Each column keeps its own history; answers stream one column after another.")
if st.radio("Mode", (SIDE_BY_SIDE, ARENA), horizontal=True, key="chat_mode") == ARENA:
    render_arena(variant_source, settings_form())  # app_pages/chat_tabs/arena.py: blind A / B votes
    st.stop()

n_columns = st.radio("Columns", [2, 3], horizontal=True, key="chat_n_columns")
settings = settings_form()
histories: dict[int, list] = st.session_state.setdefault("chat_histories", {})
streams: dict[int, object] = st.session_state.setdefault("chat_streams", {})

cols = st.columns(n_columns)
sources: list[ModelSource | LlamaCppChoice | None] = []
systems: list[str] = []
for i, col in enumerate(cols):
    with col:
        sources.append(variant_source(i))
        systems.append(column_system_prompt(i, sources[i]))

prompt = st.chat_input("Ask all columns…", key="chat_prompt")
if prompt:
    for i, source in enumerate(sources):
        if source is None:
            st.warning(f"Column {i + 1}: choose a model first.")
            continue
        try:
            with st.spinner(f"Loading {source.label}…"):
                loaded = cached_chat_model(source)
        except ModelLoadError as exc:
            st.error(f"Column {i + 1}: {exc}")
            continue
        history = histories.setdefault(i, [])
        history.append({"role": "user", "content": prompt})
        streams[i] = start_generation(loaded, history, replace(settings, system_prompt=systems[i]))


active = any(not s.done for s in streams.values())


st.fragment(live_answers, run_every=0.5 if streams else None)()

left, right = st.columns(2)
if left.button("Clear conversation", key="chat_clear", disabled=active):
    st.session_state["chat_histories"] = {}
    st.session_state["chat_errors"] = {}
    st.rerun()
columns_for_export = [
    {"label": f"column {i + 1}", "model": sources[i].label if i < len(sources) and sources[i] else "?", "history": h,
     "system": systems[i] if i < len(systems) else ""}
    for i, h in sorted(histories.items())
]
right.download_button(
    "Export transcript (JSONL)",
    transcript_jsonl(columns_for_export, settings),
    file_name="chat-transcript.jsonl",
    mime="application/jsonl",
    key="chat_export",
    disabled=not histories,
)
