"""Data page: the de-duplication and decontamination tabs (not a page itself). Both run as curation jobs."""
from __future__ import annotations

import streamlit as st

from app_pages.data_tabs import jobs
from core.data import curate, decontam, dedup
from core.data.formats import save_upload
from core.data.highlight import highlight_html, plain_box_html
from core.data.text import FIELDS, row_text
from pages_common import upload_digest


def dedup_tab(dataset, reference, engine: str, kept_whole: set) -> dict:
    """Settings, the job, and the clusters of the newest run of each method; returns method -> result."""
    c = st.columns(4)
    field = c[0].selectbox("Compare", FIELDS, index=2, key="data_dd_field", help="System prompts are never compared.")
    keep = c[1].selectbox("Keep", list(dedup.KEEP_RULES), format_func=dedup.KEEP_RULES.get, key="data_dd_keep")
    near_threshold = c[2].slider("Near: Jaccard ≥", 0.5, 1.0, 0.8, 0.01, key="data_dd_near_t",
                                 help="Word 5-gram shingles; MinHash-LSH finds candidates, the exact shingle-set Jaccard decides.")
    semantic_threshold = c[3].slider("Semantic: cosine ≥", 0.7, 1.0, 0.9, 0.01, key="data_dd_sem_t", help="all-MiniLM-L6-v2 embeddings.")
    methods = st.multiselect("Methods", dedup.METHODS, default=["exact", "near"], key="data_dd_methods")
    if st.button("Find duplicates", key="data_dd_run", type="primary", disabled=not methods):
        settings = {"exact": {"field": field, "keep": keep}, "near": {"field": field, "keep": keep, "threshold": near_threshold},
                    "semantic": {"field": field, "keep": keep, "threshold": semantic_threshold}}
        jobs.start(dataset, reference, engine, **{m: settings[m] for m in methods})
    results, run_ids, followed = {}, [], {}
    for method in dedup.METHODS:
        run = jobs.newest(dataset, method)
        if run is None:
            continue
        if run.run_id not in followed:  # one run may hold several methods: one progress bar for it
            methods_there = [m for m in dedup.METHODS if (run.spec or {}).get(m) is not None]
            followed[run.run_id] = jobs.follow(run, f"{', '.join(methods_there)} de-duplication")
        found = followed[run.run_id]
        if found and method in found:
            results[method] = found[method]
            run_ids.append(run.run_id)
    if st.session_state.get("data_dd_run_ids") != run_ids:  # new clusters: the old decisions meant other clusters
        st.session_state["data_dd_run_ids"] = run_ids
        forget_decisions(kept_whole)
    for method, r in results.items():
        where = " on Ray" if r.params.get("engine") == "ray" else ""
        st.markdown(f"**{method}**: {len(r.clusters):,} clusters, {r.n_duplicates:,} rows to drop · {r.seconds:.2f} s{where}")
    shown = [m for m in results if results[m].clusters]
    if shown:
        browse_clusters(dataset.rows, results, shown, kept_whole)
    return results


def browse_clusters(rows, results: dict, shown: list, kept_whole: set) -> None:
    method = st.radio("Browse clusters of", shown, horizontal=True, key="data_dd_browse")
    clusters = results[method].clusters
    st.button("Accept all: drop the duplicates of every cluster", key="data_dd_accept_all", on_click=forget_decisions, args=(kept_whole,))
    k = st.selectbox("Cluster", range(len(clusters)), key=f"data_dd_cluster_{method}",
                     format_func=lambda i: f"#{i} · {len(clusters[i].members)} rows · rows {clusters[i].members[:4]}")
    cluster = clusters[k]
    st.checkbox("Drop this cluster's duplicates (keep only the representative)", value=(method, k) not in kept_whole,
                key=f"data_drop_{method}_{k}", on_change=record_decision, args=(kept_whole, method, k))
    st.caption(f"Representative chosen by: {cluster.keep_rule}")
    members = [cluster.representative] + cluster.dropped[:3]
    for column, member in zip(st.columns(len(members)), members):
        role = "KEEP" if member == cluster.representative else "drop"
        column.markdown(f"**row {member}** · {role} · similarity {cluster.similarity.get(member, 1.0):.3f}")
        column.html(plain_box_html(row_text(rows[member], results[method].field)))
    if len(cluster.dropped) > 3:
        st.caption(f"…and {len(cluster.dropped) - 3} more members: {cluster.dropped[3:]}")


def forget_decisions(kept_whole: set) -> None:
    """Back to the default (drop every cluster's duplicates), checkboxes included."""
    kept_whole.clear()
    for key in [k for k in st.session_state if str(k).startswith("data_drop_")]:
        del st.session_state[key]


def record_decision(kept_whole: set, method: str, k: int) -> None:
    (kept_whole.discard if st.session_state[f"data_drop_{method}_{k}"] else kept_whole.add)((method, k))


def decontam_tab(dataset, reference, engine: str):
    c = st.columns(3)
    names = c[0].multiselect("Benchmarks", decontam.builtin_benchmark_names(), default=decontam.builtin_benchmark_names(),
                             key="data_dc_benchmarks")
    mode = c[1].selectbox("Rule", list(decontam.MODES), format_func=lambda key: decontam.MODES[key].label, key="data_dc_mode")
    field = c[2].selectbox("Check", FIELDS, index=2, key="data_dc_field")
    st.caption(f"{decontam.MODES[mode].rule} — {decontam.MODES[mode].reference}")
    own = st.file_uploader("Your own eval set (optional, any format the loader reads)", type=["jsonl", "json", "csv", "parquet"],
                           key="data_dc_upload")
    if st.button("Check contamination", key="data_dc_run", type="primary", disabled=not names and own is None):
        eval_files = [str(save_upload(own.name, own.getvalue(), upload_digest(own)))] if own is not None else []
        jobs.start(dataset, reference, engine, decontam={"mode": mode, "field": field, "benchmarks": names, "eval_files": eval_files})
    found = jobs.follow(jobs.newest(dataset, "decontam"), "decontamination") or {}
    result = found.get("decontam")
    if result is None:
        return None
    st.dataframe([r.table_row() for r in result.reports], hide_index=True, width="stretch")
    st.session_state.setdefault("data_dc_drop", True)
    st.checkbox(f"Drop the {len(result.rows_to_drop):,} contaminated rows", key="data_dc_drop")
    if result.rows_to_drop:
        by_row = result.matches_by_row()
        r = st.selectbox("Contaminated row", result.rows_to_drop, key="data_dc_row",
                         format_func=lambda i: f"row {i} · " + ", ".join(sorted({m.item_id for m in by_row[i]}))[:80])
        st.html(highlight_html(row_text(dataset.rows[r], result.field), result.spans_for_row(r), max_chars=4000))
        for match in by_row[r][:3]:
            st.caption(f"{match.item_id} (score {match.score:g})")
    return result


def dedup_operations(results: dict, kept_whole: set) -> list:
    return [curate.operation_from_dedup(results[m], [k for mth, k in kept_whole if mth == m]) for m in dedup.METHODS if m in results]
