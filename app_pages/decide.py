"""Decide: prompt, RAG or fine-tune — a short questionnaire, scored options with their reasons, a starting
recipe for the Train page, and a measured baseline (zero-shot, few-shot, RAG with the base model) run as a job."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from core import decide, memory
from core.models import ModelLoadError
from core.rag.spec import DEMO_DOCUMENTS
from core.runs.jobs import read_result
from pages_common import (
    active_model_source,
    cached_arch,
    cached_hardware,
    live_run,
    run_selector,
    send_recipe_to_train,
    start_run,
    time_estimate,
    upload_digest,
)


def model_for_check() -> memory.ModelArch | None:
    presets = ["Active model"] + [p["name"] for p in memory.list_presets()]
    choice = st.selectbox("Model to adapt (for the memory check)", presets, key="decide_model")
    try:
        if choice != "Active model":
            return memory.preset_arch(choice)
        return cached_arch(active_model_source())
    except (ModelLoadError, ValueError, OSError) as exc:
        st.warning(f"No memory check: cannot read the active model's config ({exc}).")
        return None


def questionnaire(hardware) -> decide.Questionnaire:
    gaps = st.multiselect("What is missing from the model's answers?", decide.GAPS, default=["behaviour"],
                          format_func=decide.GAP_LABELS.get, key="decide_gaps") or ["behaviour"]
    c1, c2, c3 = st.columns(3)
    changes = c1.select_slider("How often do the facts change?", decide.FRESHNESS, value="static", key="decide_changes",
                               disabled="knowledge" not in gaps)
    fits_prompt = c1.checkbox("All the facts fit in one prompt", key="decide_fits_prompt", disabled="knowledge" not in gaps)
    rows = c2.number_input("Labelled examples you have", 0, 10_000_000, 500, step=100, key="decide_rows")
    st.session_state.setdefault("decide_known", False)
    st.session_state.setdefault("decide_success", 0.8)
    apply_finished_baseline()
    known = c2.checkbox("I know how often prompting already works", key="decide_known")
    success = c2.slider("Share prompting gets right", 0.0, 1.0, step=0.05, key="decide_success", disabled=not known,
                        help="Measure it below: the baseline fills this in.")
    failure = c3.slider("Share of requests that hit the failing case", 0.0, 1.0, 0.2, 0.01, key="decide_failure",
                        help="A rare edge case is under 5%.")
    latency = c3.checkbox("Latency matters", key="decide_latency")
    cost = c3.checkbox("Per-request cost matters", key="decide_cost")
    arch = model_for_check()
    length = st.select_slider("Typical example length (tokens)", [256, 512, 1024, 2048, 4096], value=1024, key="decide_length")
    return decide.Questionnaire(gaps=tuple(gaps), knowledge_changes=changes, knowledge_fits_in_prompt=fits_prompt,
                                prompt_success=success if known else None,
                                failure_share=failure, labelled_rows=int(rows), latency_sensitive=latency, cost_sensitive=cost,
                                model=arch, hardware=hardware, max_length=length,
                                measured=st.session_state.get("decide_measured") if known else None)


def render(result: decide.Recommendation) -> None:
    st.success(f"**Recommendation: {result.headline}**")
    scores = pd.DataFrame([{"option": o.label, "score": o.score} for o in result.options])
    fig = px.bar(scores, x="score", y="option", orientation="h", range_x=[0, 100], height=220)
    fig.update_layout(margin=dict(t=10, b=10), yaxis=dict(autorange="reversed"), yaxis_title="")
    st.plotly_chart(fig, width="stretch")
    for option in result.options:
        with st.expander(f"{option.label}: {option.score} / 100"):
            st.markdown("\n".join(f"- {reason}" for reason in option.reasons))
    for note in result.notes:
        st.caption(note)
    if result.method_fits:
        st.dataframe(pd.DataFrame([{"method": memory.METHOD_LABELS[f.method], "peak GB": round(f.total_bytes / memory.GB, 2),
                                    "fits": {True: "yes", False: "no", None: "unknown"}[f.fits], "batch": f.batch_size,
                                    "checkpointing": f.gradient_checkpointing} for f in result.method_fits]), hide_index=True,
                     width="stretch")
    st.subheader("Starting recipe for a fine-tune")
    st.caption("Learning rate ~10× a full fine-tune's for adapters (2e-4 vs 2e-5), α = 2r, all linear layers, 1-3 epochs by data size.")
    st.dataframe(pd.DataFrame([{"field": k, "value": str(v)} for k, v in result.recipe.items()]), hide_index=True, width="stretch")
    if st.button("Send this recipe to the Train page", type="primary", key="decide_to_train"):
        send_recipe_to_train(result.recipe, "the Decide page's recipe")


EVAL_SETS = {
    "Demo: handbook questions (a knowledge gap)": ("assets/handbook/questions.jsonl", "contains_answer", "Demo handbook documents"),
    "Demo: support tickets (a format gap)": ("assets/demo/eval.jsonl", "auto", "No documents (no RAG)"),
    "Upload a file": ("", "auto", "No documents (no RAG)"),
}
DOCUMENTS = ("Demo handbook documents", "No documents (no RAG)", "A folder or file path")


def baseline_spec() -> decide.BaselineSpec | None:
    """The measurement's settings from the widgets: eval rows, documents for the RAG condition, scorer, sizes."""
    origin = st.radio("Eval rows", list(EVAL_SETS), horizontal=True, key="decide_eval_origin")
    path, scorer, documents = EVAL_SETS[origin]
    if origin == "Upload a file":
        upload = st.file_uploader("JSONL / JSON / CSV / Parquet with prompts and reference answers (or question / answer rows)",
                                  key="decide_upload")
        path = str(decide.save_eval_upload(upload.name, upload.getvalue(), upload_digest(upload))) if upload else ""
    c1, c2, c3 = st.columns(3)
    docs = c1.radio("Documents for the RAG condition", DOCUMENTS, index=DOCUMENTS.index(documents), key=f"decide_docs_{origin[:8]}")
    folder = {"Demo handbook documents": DEMO_DOCUMENTS, "No documents (no RAG)": ""}.get(docs)
    if folder is None:
        folder = c1.text_input("Documents (folder of .txt / .md / .pdf, or a JSONL of {id, title, text})", key="decide_docs_path").strip()
    scorers = list(decide.SCORER_CHOICES)
    scorer = c2.selectbox("Scorer", scorers, index=scorers.index(scorer), key=f"decide_scorer_{origin[:8]}",
                          help="auto: JSON field accuracy for JSON answers, else exact match; contains_answer suits short facts.")
    n = c2.slider("Rows to score", 1, 32, 8, key="decide_n")
    max_new = c3.slider("Max new tokens", 8, 256, 96, key="decide_max_new")
    rag_k = c3.slider("Chunks retrieved per question", 1, 8, 3, key="decide_rag_k", disabled=not folder)
    if not path:
        return None
    return decide.BaselineSpec(model=active_model_source().as_dict(), eval_dataset=path, n=n, scorer=scorer, max_new_tokens=max_new,
                               documents=folder, rag_k=rag_k)


def apply_finished_baseline() -> None:
    """A measurement that finished fills in the questionnaire once (before its widgets exist)."""
    run = st.session_state.get("decide_baseline_run")
    result = read_result(run, "baseline") if run else None
    if result and st.session_state.get("decide_baseline_applied") != run:
        prompting = max(v for k, v in result["scores"].items() if k != "rag")
        st.session_state.update(decide_known=True, decide_success=round(prompting * 20) / 20, decide_measured=result["scores"],
                                decide_baseline_applied=run)


def render_baseline(run_dir: Path, status, metrics_rows) -> None:  # noqa: ARG001 - live_run's signature
    result = read_result(run_dir, "baseline")
    if not result:
        return
    cols = st.columns(len(result["scores"]) + 1)
    for col, (condition, score) in zip(cols, result["scores"].items()):
        valid = f"{result['json_validity'][condition]:.0%} valid JSON" if result["json_validity"] else None
        col.metric(result["labels"].get(condition, condition), f"{score:.0%}", valid, delta_color="off", delta_arrow="off",
                   help=f"{result['scorer'].replace('_', ' ')} on the same {result['n']} rows")
    cols[-1].metric("Rows scored", result["n"])  # the duration is no delta: an arrow pill on seconds read as a change
    st.caption(f"Scorer: {result['scorer'].replace('_', ' ')} · measured in {result['seconds']:.0f} s · "
               "the questionnaire above now uses these numbers.")
    for note in result["notes"]:
        st.caption(note)
    with st.expander("Answers"):
        st.dataframe(pd.DataFrame(result["examples"]), hide_index=True, width="stretch")


def baseline_panel() -> None:
    st.subheader("Measure before you decide")
    st.caption("Runs the active model on the same eval rows three ways — zero-shot, 3-shot, and RAG with the base model "
               "(retrieved chunks in the prompt) — greedy, scored by one metric. It runs as a job: leave the page and come back.")
    spec = baseline_spec()
    if spec is not None:
        time_estimate("baseline", spec)
    if st.button(f"▶ Measure on {active_model_source().label}", key="decide_run_baseline", disabled=spec is None):
        start_run(spec, "decide_baseline_run")
        st.rerun()
    run_dir = run_selector("baseline", "decide_baseline_run", "Measurement")
    if run_dir is not None:
        live_run(run_dir, render_baseline)


st.title("🧭 Decide")
st.caption("Fine-tuning changes behaviour; retrieval supplies facts; prompting is the cheapest fix. Answer a few questions — every score "
           "shows its arithmetic.")
hardware = cached_hardware()
answers = questionnaire(hardware)
render(decide.recommend(answers))
st.divider()
baseline_panel()
