"""Data: load a dataset, see what is in it, remove duplicates and benchmark leaks, export it curated."""
from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from core.data import curate, decontam, dedup
from core.data.formats import DatasetLoadError
from core.data.highlight import highlight_html, plain_box_html
from core.data.summary import dataset_summary
from core.data.text import FIELDS, row_text
from core.workspace import safe_name
from pages_common import cached_dataset_upload, choose_dataset


def progress_callback(label: str):
    bar = st.progress(0.0, text=label)
    return lambda fraction, message: bar.progress(fraction, text=f"{label}: {message}")


def histogram(values: list[int], title: str) -> go.Figure:
    figure = go.Figure(go.Histogram(x=values, nbinsx=40))
    figure.update_layout(title=title, height=240, margin=dict(l=10, r=10, t=40, b=10), xaxis_title="characters", yaxis_title="rows")
    return figure


def forget_decisions(method: str | None = None) -> None:
    """Back to the default (drop every cluster's duplicates), checkboxes included."""
    kept_whole.difference_update({d for d in kept_whole if method in (None, d[0])})
    for key in [k for k in st.session_state if k.startswith(f"data_drop_{method or ''}")]:
        del st.session_state[key]


def record_decision(method: str, k: int) -> None:
    dropping = st.session_state[f"data_drop_{method}_{k}"]
    (kept_whole.discard if dropping else kept_whole.add)((method, k))


st.title("🗂️ Data")
st.caption("Load a dataset, check it, drop duplicates and benchmark leaks, and export the curated copy to the workspace.")


try:
    dataset = choose_dataset("data", allow_path=True)
except (DatasetLoadError, ValueError, OSError) as exc:
    st.error(str(exc))
    st.stop()
if dataset is None:
    st.stop()
rows, report = dataset.rows, dataset.report
if st.session_state.get("data_hash") != dataset.source_hash:  # a new dataset: forget old results
    st.session_state["data_hash"] = dataset.source_hash
    st.session_state["data_results"] = {}
    st.session_state["data_kept_whole"] = set()
results: dict = st.session_state["data_results"]
kept_whole: set = st.session_state["data_kept_whole"]  # (method, cluster) the user keeps entirely


summary = dataset_summary(rows)
st.caption(f"**{dataset.source}** · format `{dataset.detected_format}` · sha256 `{dataset.source_hash[:12]}…`")
m = st.columns(4)
m[0].metric("Valid rows", f"{summary.rows:,}")
m[1].metric("Rejected rows", f"{report.n_invalid:,}")
m[2].metric("≈ Tokens (chars ÷ 4)", f"{summary.est_tokens:,}")
m[3].metric("≈ Tokens per row", f"{summary.est_tokens_per_row:,.0f}")
if not report.ok:
    with st.expander(f"Validation: {report.summary()}", expanded=not rows):
        st.dataframe([e.as_dict() for e in report.first_errors()], hide_index=True, width="stretch")
if not rows:
    st.error("No valid row to curate.")
    st.stop()
h = st.columns([2, 2, 1])
h[0].plotly_chart(histogram(summary.prompt_chars, "Prompt length"), key="data_hist_prompt")
h[1].plotly_chart(histogram(summary.answer_chars, "Answer length"), key="data_hist_answer")
h[2].dataframe([{"role": r, "messages": n} for r, n in sorted(summary.roles.items())], hide_index=True)

tab_dedup, tab_decontam, tab_export = st.tabs(["De-duplication", "Decontamination", "Export"])

with tab_dedup:
    c = st.columns(4)
    field = c[0].selectbox("Compare", FIELDS, index=2, key="data_dd_field", help="System prompts are never compared.")
    keep = c[1].selectbox("Keep", list(dedup.KEEP_RULES), format_func=dedup.KEEP_RULES.get, key="data_dd_keep")
    near_threshold = c[2].slider("Near: Jaccard ≥", 0.5, 1.0, 0.8, 0.01, key="data_dd_near_t", help="Word 5-gram shingles, MinHash-LSH, 256 permutations.")
    semantic_threshold = c[3].slider("Semantic: cosine ≥", 0.7, 1.0, 0.9, 0.01, key="data_dd_sem_t", help="all-MiniLM-L6-v2 embeddings; slow on CPU for big sets.")
    methods = st.multiselect("Methods", dedup.METHODS, default=["exact", "near"], key="data_dd_methods")
    if st.button("Find duplicates", key="data_dd_run", type="primary"):
        try:
            for method in methods:
                forget_decisions(method)
                progress = progress_callback(f"{method} de-duplication")
                if method == "exact":
                    results["exact"] = dedup.find_exact_duplicates(rows, dedup.ExactDedupConfig(field=field, keep=keep), progress)
                elif method == "near":
                    results["near"] = dedup.find_near_duplicates(rows, dedup.NearDedupConfig(threshold=near_threshold, field=field, keep=keep), progress)
                else:
                    results["semantic"] = dedup.find_semantic_duplicates(rows, dedup.SemanticDedupConfig(threshold=semantic_threshold, field=field, keep=keep), progress)
        except ValueError as exc:
            st.error(str(exc))
    found = [mth for mth in dedup.METHODS if mth in results]
    for method in found:
        r = results[method]
        st.markdown(f"**{method}**: {len(r.clusters):,} clusters, {r.n_duplicates:,} rows to drop · {r.seconds:.2f} s")
    shown = [mth for mth in found if results[mth].clusters]
    if shown:
        method = st.radio("Browse clusters of", shown, horizontal=True, key="data_dd_browse")
        clusters = results[method].clusters
        dd_field = results[method].field
        st.button("Accept all: drop the duplicates of every cluster", key="data_dd_accept_all", on_click=forget_decisions)
        k = st.selectbox("Cluster", range(len(clusters)), key=f"data_dd_cluster_{method}",
                         format_func=lambda i, clusters=clusters: f"#{i} · {len(clusters[i].members)} rows · rows {clusters[i].members[:4]}")
        cluster = clusters[k]
        st.checkbox("Drop this cluster's duplicates (keep only the representative)", value=(method, k) not in kept_whole,
                    key=f"data_drop_{method}_{k}", on_change=record_decision, args=(method, k))
        st.caption(f"Representative chosen by: {cluster.keep_rule}")
        members = [cluster.representative] + cluster.dropped[:3]
        for column, member in zip(st.columns(len(members)), members):
            role = "KEEP" if member == cluster.representative else "drop"
            column.markdown(f"**row {member}** · {role} · similarity {cluster.similarity.get(member, 1.0):.3f}")
            column.html(plain_box_html(row_text(rows[member], dd_field)))
        if len(cluster.dropped) > 3:
            st.caption(f"…and {len(cluster.dropped) - 3} more members: {cluster.dropped[3:]}")

with tab_decontam:
    c = st.columns(3)
    names = c[0].multiselect("Benchmarks", decontam.builtin_benchmark_names(), default=decontam.builtin_benchmark_names(), key="data_dc_benchmarks")
    mode = c[1].selectbox("Rule", list(decontam.MODES), format_func=lambda key: decontam.MODES[key].label, key="data_dc_mode")
    dc_field = c[2].selectbox("Check", FIELDS, index=2, key="data_dc_field")
    st.caption(f"{decontam.MODES[mode].rule} — {decontam.MODES[mode].reference}")
    own = st.file_uploader("Your own eval set (optional, any format the loader reads)", type=["jsonl", "json", "csv", "parquet"], key="data_dc_upload")
    if st.button("Check contamination", key="data_dc_run", type="primary"):
        try:
            benchmarks = [decontam.load_builtin_benchmark(n) for n in names]
            if own is not None:
                benchmarks.append(decontam.benchmark_from_rows(Path(own.name).stem, cached_dataset_upload(own).rows))
            config = decontam.DecontamConfig(mode=mode, field=dc_field)
            results["decontam"] = decontam.decontaminate(rows, benchmarks, config, progress_callback("decontamination"))
        except (ValueError, DatasetLoadError) as exc:
            st.error(str(exc))
    if "decontam" in results:
        dc_result = results["decontam"]
        st.dataframe([r.summary() for r in dc_result.reports], hide_index=True, width="stretch")
        st.session_state.setdefault("data_dc_drop", True)
        st.checkbox(f"Drop the {len(dc_result.rows_to_drop):,} contaminated rows", key="data_dc_drop")
        if dc_result.rows_to_drop:
            by_row = dc_result.matches_by_row()
            r = st.selectbox("Contaminated row", dc_result.rows_to_drop, key="data_dc_row",
                             format_func=lambda i: f"row {i} · " + ", ".join(sorted({mt.item_id for mt in by_row[i]}))[:80])
            st.html(highlight_html(row_text(rows[r], dc_result.field), dc_result.spans_for_row(r), max_chars=4000))
            for match in by_row[r][:3]:
                st.caption(f"{match.item_id} (score {match.score:g})")

with tab_export:
    operations = [curate.operation_from_dedup(results[mth], [k for m, k in kept_whole if m == mth]) for mth in dedup.METHODS if mth in results]
    if "decontam" in results and st.session_state.get("data_dc_drop", True):
        operations.append(curate.operation_from_decontam(results["decontam"]))
    kept, records = curate.apply_operations(len(rows), operations)
    st.dataframe([{"operation": r["label"], "rows before": r["rows_before"], "rows after": r["rows_after"], "dropped": len(r["dropped"])} for r in records]
                 or [{"operation": "(none yet)", "rows before": len(rows), "rows after": len(rows), "dropped": 0}], hide_index=True, width="stretch")
    default_name = safe_name(Path(str(dataset.source).split(":", 1)[-1]).stem, default="dataset") + "-curated"
    name = st.text_input("Name", value=default_name, key="data_export_name")
    overwrite = st.checkbox("Overwrite a dataset with this name", key="data_export_overwrite")
    if st.button(f"Export {len(kept):,} rows to the workspace", key="data_export", type="primary"):
        try:
            folder = curate.export_curated(rows, name, curate.DatasetSource.from_loaded(dataset), operations, overwrite=overwrite)
        except (ValueError, FileExistsError, OSError) as exc:
            st.error(str(exc))
        else:
            st.session_state["data_last_export"] = str(folder)
            st.success(f"Saved {folder / curate.DATA_FILE} and {curate.MANIFEST_FILE}: select it on the Template and Train pages.")
