"""Compare methods: the same data, seed and step budget through each chosen method, then core.evaluate on all of
them; a table (trainable share against the seed chapter's claims, memory predicted and measured, speed, scores)
and Pareto charts, exportable. The job runs each method as its own train run (see the Train page)."""
from __future__ import annotations

import json

import streamlit as st

from core.compare.spec import DEFAULT_METHODS, MethodComparisonSpec
from core.compare.table import display_rows, live_rows, load_result, pareto_figure, to_csv
from core.runs import spec_to_yaml
from core.train.methods import METHODS
from pages_common import active_model_source, live_run, run_selector, spec_form, start_run, time_estimate

FORM = "cmp_form"


def render_result(run_dir, status, metrics) -> None:
    result = load_result(run_dir)
    rows = result["rows"] if result else live_rows(metrics)
    if not rows:
        return
    st.dataframe(display_rows(rows), hide_index=True, width="stretch",
                 column_config={"Trainable %": st.column_config.NumberColumn(format="%.4f")})
    if not result:
        st.caption("Scores appear when every method has trained and the evaluation has run.")
        return
    left, right = st.columns(2)
    left.plotly_chart(pareto_figure(rows, "trainable_params"), key=f"cmp_params_{run_dir.name}")
    right.plotly_chart(pareto_figure(rows, "peak_memory_bytes"), key=f"cmp_memory_{run_dir.name}")
    base = result.get("base") or {}
    if base:
        st.caption(f"Base model: task score {base.get('task_score')}, general score {base.get('general_score')}, "
                   f"label accuracy {base.get('label_accuracy')}.")
    for note in result.get("notes", []):
        st.caption(f"ℹ️ {note}")
    c1, c2 = st.columns(2)
    c1.download_button("Download the table (CSV)", to_csv(rows), file_name=f"{run_dir.name}.csv", key=f"cmp_csv_{run_dir.name}")
    c2.download_button("Download everything (JSON)", json.dumps(result, indent=2), file_name=f"{run_dir.name}.json",
                       key=f"cmp_json_{run_dir.name}")


st.title("⚖️ Compare methods")
st.caption("Which method closes your gap most cheaply? Every method gets the same data, seed and number of steps on the "
           "active model; each is then scored by the same evaluation as the Evaluate page. A frozen-encoder baseline "
           "(logistic regression on pooled hidden states) answers the label-only part of the task without fine-tuning.")

with st.expander("New comparison", expanded=not st.session_state.get("cmp_run")):
    model = active_model_source()
    st.markdown(f"**Model:** {model.label} ({model.kind}) — change it in the sidebar.")
    methods = st.multiselect("Methods", list(METHODS), default=DEFAULT_METHODS, key="cmp_methods",
                             format_func=lambda m: f"{METHODS[m].label} — {METHODS[m].summary}",
                             help="Each trains as its own run with its own learning rate (override below).")
    rates = {}
    with st.expander("Learning rate per method", expanded=False):
        cols = st.columns(3)
        for n, method in enumerate(methods):
            rates[method] = cols[n % 3].number_input(METHODS[method].label, min_value=1e-7, max_value=1.0, format="%.2e",
                                                     value=METHODS[method].learning_rate, key=f"cmp_lr_{method}")
    values = spec_form(MethodComparisonSpec, MethodComparisonSpec(), FORM, skip=("model", "methods", "learning_rates"))
    try:
        spec = MethodComparisonSpec.from_dict({**values, "model": model.as_dict(), "methods": methods,
                                               "learning_rates": {m: r for m, r in rates.items() if r != METHODS[m].learning_rate}})
    except ValueError as exc:
        st.error(f"Check the form: {exc}")
        spec = None
    if spec is not None:
        runs_needed = len(spec.methods) + 1 + bool(spec.feature_field.strip())
        st.caption(f"{runs_needed} runs: {len(spec.methods)} × {spec.max_steps} training steps, one evaluation of all of them"
                   + (", one feature-extraction baseline." if spec.feature_field.strip() else "."))
        with st.expander("YAML", expanded=False):
            st.code(spec_to_yaml(spec), language="yaml")
        time_estimate("method_comparison", spec)
        if st.button("▶️ Start the comparison", type="primary", key="cmp_start"):
            start_run(spec, "cmp_run")
            st.rerun()


st.subheader("Comparisons")
run_dir = run_selector("method_comparison", "cmp_run")
if run_dir is not None:
    live_run(run_dir, render_result)
