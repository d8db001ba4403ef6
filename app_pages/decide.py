"""Decide: prompt, RAG or fine-tune — a short questionnaire, scored options with their reasons, a starting
recipe for the Train page, and a quick prompt-only baseline to measure before deciding."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from core import decide, memory
from core.data.formats import DatasetLoadError
from core.models import ModelLoadError
from pages_common import active_model_source, cached_arch, cached_dataset_upload, cached_hardware, cached_model

DEMO_EVAL = Path(__file__).resolve().parents[1] / "assets" / "demo" / "eval.jsonl"


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
    if st.session_state.pop("decide_apply_baseline", False):  # a fresh measurement fills in the answer
        st.session_state["decide_known"] = True
        st.session_state["decide_success"] = round(st.session_state["decide_baseline"]["best_score"] * 20) / 20
    known = c2.checkbox("I know how often prompting already works", key="decide_known")
    success = c2.slider("Share prompting gets right", 0.0, 1.0, step=0.05, key="decide_success", disabled=not known,
                        help="Measure it below with the quick baseline on your eval rows.")
    failure = c3.slider("Share of requests that hit the failing case", 0.0, 1.0, 0.2, 0.01, key="decide_failure",
                        help="A rare edge case is under 5%.")
    latency = c3.checkbox("Latency matters", key="decide_latency")
    cost = c3.checkbox("Per-request cost matters", key="decide_cost")
    arch = model_for_check()
    length = st.select_slider("Typical example length (tokens)", [256, 512, 1024, 2048, 4096], value=1024, key="decide_length")
    return decide.Questionnaire(gaps=tuple(gaps), knowledge_changes=changes, knowledge_fits_in_prompt=fits_prompt, prompt_success=success if known else None,
                                failure_share=failure, labelled_rows=int(rows), latency_sensitive=latency, cost_sensitive=cost,
                                model=arch, hardware=hardware, max_length=length)


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
                                    "checkpointing": f.gradient_checkpointing} for f in result.method_fits]), hide_index=True, width="stretch")
    st.subheader("Starting recipe for a fine-tune")
    st.caption("Learning rate ~10× a full fine-tune's for adapters (2e-4 vs 2e-5), α = 2r, all linear layers, 1-3 epochs by data size.")
    st.dataframe(pd.DataFrame([{"field": k, "value": str(v)} for k, v in result.recipe.items()]), hide_index=True, width="stretch")
    if st.button("Send this recipe to the Train page", type="primary", key="decide_to_train"):
        st.session_state["train_recipe"] = dict(result.recipe)
        st.success("Sent: open the Train page; its form starts from this recipe.")


def eval_rows() -> list[dict] | None:
    origin = st.radio("Eval rows", ["Demo eval set", "Upload a file"], horizontal=True, key="decide_eval_origin")
    try:
        if origin == "Upload a file":
            upload = st.file_uploader("JSONL / JSON / CSV / Parquet with prompts and reference answers", key="decide_upload")
            if upload is None:
                return None
            rows = cached_dataset_upload(upload).rows  # parsed once per content, not on every rerun
            if not rows:
                raise ValueError(f"{upload.name} has no valid rows")
            return rows
        if not DEMO_EVAL.is_file():
            st.info(f"The demo eval set ({DEMO_EVAL.name}) is not in this build; upload your own file instead.")
            return None
        return decide.load_eval_rows(DEMO_EVAL)
    except (ValueError, OSError, DatasetLoadError) as exc:
        st.error(f"Cannot read the eval rows: {exc}")
        return None


def baseline_panel() -> None:
    st.subheader("Measure before you decide")
    st.caption("Runs the active model with prompting alone — zero-shot and 3-shot, greedy — on a few eval rows. "
               "If prompting already scores well, you may not need to train. Generation on a CPU takes a few seconds per row.")
    rows = eval_rows()
    c1, c2 = st.columns(2)
    n = c1.slider("Rows to score", 1, 32, 8, key="decide_n")
    max_new = c2.slider("Max new tokens", 8, 256, 96, key="decide_max_new")
    if rows and st.button(f"Run quick baseline on {active_model_source().label}", key="decide_run_baseline"):
        try:
            with st.spinner("Generating…"):
                result = decide.prompt_baseline(cached_model(active_model_source()), rows, n=n, shots=(0, 3), max_new_tokens=max_new)
        except (ModelLoadError, ValueError) as exc:
            st.error(str(exc))
            return
        st.session_state["decide_baseline"] = {"scorer": result.scorer, "n": result.n, "scores": result.scores, "validity": result.json_validity,
                                               "best_score": result.best()[1], "examples": result.examples, "seconds": result.seconds, "notes": result.notes}
        st.session_state["decide_apply_baseline"] = True
        st.rerun()
    shown = st.session_state.get("decide_baseline")
    if shown:
        cols = st.columns(len(shown["scores"]) + 1)
        for col, (shots, score) in zip(cols, shown["scores"].items()):
            valid = f"{shown['validity'][shots]:.0%} valid JSON" if shown["validity"] else None
            col.metric(f"{shots}-shot {shown['scorer'].replace('_', ' ')}", f"{score:.0%}", valid, delta_color="off")
        cols[-1].metric("Rows scored", shown["n"], f"{shown['seconds']:.0f} s", delta_color="off")
        for note in shown["notes"]:
            st.caption(note)
        with st.expander("Answers"):
            st.dataframe(pd.DataFrame(shown["examples"]), hide_index=True, width="stretch")


st.title("🧭 Decide")
st.caption("Fine-tuning changes behaviour; retrieval supplies facts; prompting is the cheapest fix. Answer a few questions — every score shows its arithmetic.")
hardware = cached_hardware()
answers = questionnaire(hardware)
render(decide.recommend(answers))
st.divider()
baseline_panel()
