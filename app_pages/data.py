"""Data: load a dataset, see what is in it, drop duplicates, benchmark leaks and bad answers, choose rows for
diversity, and export the curated copy with its manifest. The heavy work runs as jobs the page reattaches to."""
from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from app_pages.data_tabs import jobs
from app_pages.data_tabs.dedup import decontam_tab, dedup_operations, dedup_tab
from app_pages.data_tabs.mapping import current_mapping, mapping_box
from app_pages.data_tabs.preference import preference_panel
from app_pages.data_tabs.review import audit_tab, diversity_tab
from core.data import curate
from core.data.formats import DatasetLoadError
from core.data.preference import is_preference_dataset
from core.data.summary import dataset_summary
from core.workspace import display_path, safe_name
from pages_common import choose_dataset


def histogram(values: list[int], title: str) -> go.Figure:
    figure = go.Figure(go.Histogram(x=values, nbinsx=40))
    figure.update_layout(title=title, height=240, margin=dict(l=10, r=10, t=40, b=10), xaxis_title="characters", yaxis_title="rows")
    return figure


st.title("🗂️ Data")
st.caption("Load a dataset, check it, drop duplicates, benchmark leaks and bad answers, pick rows for diversity, "
           "and export the curated copy to the workspace.")

mapping = current_mapping()
try:
    dataset = choose_dataset("data", allow_path=True, preference=True, mapping=mapping)
except (DatasetLoadError, ValueError, OSError) as exc:
    st.error(str(exc))
    mapping_box(expanded="column mapping" in str(exc))  # where the message says to enter one
    st.stop()
mapping_box(expanded=False)
if dataset is None:
    st.stop()
if mapping:  # jobs read files, not mappings: the rows as the mapping read them, kept in the workspace
    dataset = jobs.with_mapping_applied(dataset, mapping)
rows, report = dataset.rows, dataset.report
if st.session_state.get("data_hash") != dataset.source_hash:  # a new dataset: forget the decisions about the old one
    st.session_state["data_hash"] = dataset.source_hash
    st.session_state["data_kept_whole"], st.session_state["data_audit_drops"] = set(), set()
kept_whole: set = st.session_state["data_kept_whole"]  # (method, cluster) the user keeps entirely
audit_drops: set = st.session_state["data_audit_drops"]

summary = dataset_summary(rows)
st.caption(f"**{display_path(dataset.source)}** · format `{dataset.detected_format}` · sha256 `{dataset.source_hash[:12]}…`"
           + (f" · your columns kept: {', '.join(f'`{c}`' for c in dataset.columns)}" if dataset.columns else ""))
m = st.columns(4)
m[0].metric("Valid rows", f"{summary.rows:,}")
m[1].metric("Rejected rows", f"{report.n_invalid:,}")
m[2].metric("≈ Tokens (chars ÷ 4)", f"{summary.est_tokens:,}")
m[3].metric("≈ Tokens per row", f"{summary.est_tokens_per_row:,.0f}")
for note in report.note_lines():
    st.info(note)
if not report.ok:
    with st.expander(f"Validation: {report.summary()}", expanded=not rows):
        st.dataframe([e.as_dict() for e in report.first_errors()], hide_index=True, width="stretch")
if not rows:
    st.error("No valid row to curate.")
    st.stop()
if is_preference_dataset(dataset):
    preference_panel(dataset)
h = st.columns([2, 2, 1])
h[0].plotly_chart(histogram(summary.prompt_chars, "Prompt length"), key="data_hist_prompt")
h[1].plotly_chart(histogram(summary.answer_chars, "Answer length"), key="data_hist_answer")
h[2].dataframe([{"role": r, "messages": n} for r, n in sorted(summary.roles.items())], hide_index=True)

upload = st.session_state.get("data_upload") if st.session_state.get("data_source") == "Upload a file" and not mapping else None
reference = jobs.dataset_reference(dataset, upload)
engine = jobs.engine_choice()
tab_dedup, tab_decontam, tab_audit, tab_diversity, tab_export = st.tabs(
    ["De-duplication", "Decontamination", "Response audit", "Diversity", "Export"])
with tab_dedup:
    dedup_results = dedup_tab(dataset, reference, engine, kept_whole)
with tab_decontam:
    decontam_result = decontam_tab(dataset, reference, engine)
with tab_audit:
    audit_operation = audit_tab(dataset, reference, audit_drops)
with tab_diversity:
    selection_operation = diversity_tab(dataset, reference)

with tab_export:
    operations = dedup_operations(dedup_results, kept_whole)
    if decontam_result is not None and st.session_state.get("data_dc_drop", True):
        operations.append(curate.operation_from_decontam(decontam_result))
    operations += [op for op in (audit_operation, selection_operation) if op is not None]
    kept, records = curate.apply_operations(len(rows), operations)
    st.dataframe([{"operation": r["label"], "rows before": r["rows_before"], "rows after": r["rows_after"], "dropped": len(r["dropped"])}
                  for r in records]
                 or [{"operation": "(none yet)", "rows before": len(rows), "rows after": len(rows), "dropped": 0}], hide_index=True,
                 width="stretch")
    c = st.columns([2, 1])
    name = c[0].text_input("Name", value=safe_name(Path(str(dataset.source).split(":", 1)[-1]).stem, default="dataset") + "-curated",
                           key="data_export_name")
    id_choices = ["(none)"] + dataset.columns
    id_column = c[1].selectbox("Your id column", id_choices, index=id_choices.index(dataset.id_column) if dataset.id_column else 0,
                               key=f"data_export_id_{dataset.source_hash[:12]}",  # a new dataset: its own default
                               help="The manifest lists every dropped row by this column as well as by position.")
    overwrite = st.checkbox("Overwrite a dataset with this name", key="data_export_overwrite")
    if st.button(f"Export {len(kept):,} rows to the workspace", key="data_export", type="primary"):
        try:
            folder = curate.export_curated(rows, name, curate.DatasetSource.from_loaded(dataset), operations, overwrite=overwrite,
                                           id_column=None if id_column == "(none)" else id_column)
        except (ValueError, FileExistsError, OSError) as exc:
            st.error(str(exc))
        else:
            st.session_state["data_last_export"] = str(folder)
            st.success(f"Saved {folder / curate.DATA_FILE} and {curate.MANIFEST_FILE}: select it on the Template and Train pages.")
