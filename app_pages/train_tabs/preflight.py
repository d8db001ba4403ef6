"""Train page: the pre-flight of the form's spec (data check in the background, memory, backend, lint, refusals) and
whether Start may be pressed. Everything it shows is core.train.preflight's; this module only places it."""
from __future__ import annotations

import dataclasses

import streamlit as st

from core.train import TrainSpec
from core.train.methods import learning_rate_warning
from core.train.preflight import DATA_CHECK_WAIT_S, Preflight, data_check, run_preflight
from pages_common import human_bytes, time_estimate

MEMORY_CONFIRM_KEY = "train_confirm_memory"


@st.fragment(run_every=1.0)
def data_check_pending(spec: TrainSpec) -> None:
    """Shown while the data check runs in the background (core.train.preflight.DataChecks); reruns the page when done."""
    if data_check(spec) is None:
        st.info("Pre-flight: checking the data… (tokenizing and linting in the background; this updates when it is done)")
    else:
        st.rerun()


def render_preflight(spec: TrainSpec, hardware):
    data = data_check(spec, wait=DATA_CHECK_WAIT_S)  # keyed by the data's content hash + the fields tokenizing reads
    if data is None:
        data_check_pending(spec)
        return None
    check = run_preflight(spec, hardware, data=data)
    cols = st.columns(5)
    cols[0].metric("Training rows", check.rows)
    cols[1].metric("Trained tokens", f"{check.trained_tokens:,}", help=f"of {check.tokens:,} tokens; the rest are masked (-100)")
    cols[2].metric("Rows with nothing trained", check.zero_trained_rows)
    cols[3].metric("Steps", check.total_steps if check.total_steps is not None else "?")
    memory = human_bytes(check.predicted_memory_bytes) if check.predicted_memory_bytes else "—"
    cols[4].metric("Predicted memory", memory, help=f"available: {human_bytes(check.available_memory_bytes)} · {check.memory_note}")
    if check.fits is False:
        st.warning(f"Predicted {memory} exceeds the {human_bytes(check.available_memory_bytes)} free: lower batch_size or "
                   "max_length, turn on gradient checkpointing, or use QLoRA.")
        st.checkbox("Start anyway (the run may be killed for lack of memory)", key=MEMORY_CONFIRM_KEY)
    notes = check.backend_notes + ([f"{check.truncated_rows} rows cut to max_length"] if check.truncated_rows else [])
    if check.replay_rows:
        notes.append(f"{check.replay_rows} of the training rows are general replay rows ({check.replay_fraction:.1%}): "
                     f"{check.replay_label}")
    template = check.template.get("name") or ("the tokenizer's own" if check.template.get("source") == "tokenizer" else "—")
    st.caption(f"Backend: **{check.backend or '—'}** · chat template: {template} · eval rows: {check.eval_rows}"
               + "".join(f" · {n}" for n in notes))
    for warning in check.lint_warnings:
        st.warning(f"Lint: {warning}")
    if check.refusal:
        st.error(check.refusal)
    # the steps the pre-flight counted (an epoch run's max_steps is 0): the estimate's size is what will run
    time_estimate("train", {**dataclasses.asdict(spec), "max_steps": check.total_steps or spec.max_steps})
    return check


def learning_rate_note(spec: TrainSpec) -> None:
    if (warning := learning_rate_warning(spec.method, spec.objective, spec.learning_rate)) is not None:
        st.warning(warning)


def can_start(check: Preflight | None) -> bool:
    """Start is offered for a spec the pre-flight accepts; a predicted memory above what is free needs the user's yes."""
    if check is None or check.refusal:
        return False
    return check.fits is not False or bool(st.session_state.get(MEMORY_CONFIRM_KEY))
