"""Data page: the response-audit and diversity tabs (not a page itself). The heavy parts run as jobs."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from app_pages.data_tabs import jobs
from core.data import curate
from core.data.audit import RULES, with_losses
from core.data.diversity import PROJECTIONS, SELECTION_METHODS
from core.data.templates import shipped_template_names
from core.data.text import FIELDS, row_text

PREVIEW = 160


def audit_tab(dataset, reference, drops: set):
    """Flags per row, keep / drop per row and per rule; returns the audit operation (or None)."""
    c = st.columns([1, 1, 2])
    if c[0].button("Audit the answers", key="data_au_run", type="primary"):
        jobs.start(dataset, reference, "local", audit={})
    template = c[2].selectbox("Chat template for the loss", ["(the model's own)"] + shipped_template_names(), key="data_au_template")
    if c[1].button("Score answer loss", key="data_au_loss",  # a short label: the long one was cut off in its column
                   help="Scores every answer's loss under the active model (the sidebar's): a job that loads the model. High-loss answers "
                        "get their own audit rule."):
        jobs.start_answer_loss(dataset, reference, st.session_state.get("active_model") or {}, "" if template.startswith("(") else template)
    jobs.answer_loss_estimate(dataset, st.session_state.get("active_model") or {})
    loss = jobs.follow(jobs.newest_answer_loss(dataset), "answer loss", read=jobs.answer_loss_of)
    found = jobs.follow(jobs.newest(dataset, "audit"), "response audit") or {}
    result = found.get("audit")
    if result is None:
        return None
    if loss and loss.get("n_rows") == result.n_rows:
        result = with_losses(result, loss["loss"])
        st.caption(f"Answer loss under {loss['model']} ({loss['chat_template']}): median {loss['median_loss']}, {loss['scored_rows']:,} "
                   "rows scored.")
    counts = result.counts
    st.markdown(f"**{len(result.flags):,} of {result.n_rows:,} rows flagged** · " +
                (" · ".join(f"{RULES[r]}: {n:,}" for r, n in counts.items()) or "no rule fired"))
    if not result.flags:
        return None
    c = st.columns([2, 1, 1])
    rule = c[0].selectbox("Rule", list(counts), format_func=lambda r: f"{RULES[r]} ({counts[r]:,})", key="data_au_rule")
    if c[1].button("Drop all flagged by this rule", key="data_au_drop_rule"):
        drops.update(result.rows_flagged_by(rule))
        st.session_state["data_au_version"] = st.session_state.get("data_au_version", 0) + 1
    if c[2].button("Keep every row", key="data_au_keep_all"):
        drops.clear()
        st.session_state["data_au_version"] = st.session_state.get("data_au_version", 0) + 1
    review_table(dataset, result, rule, drops)
    return curate.operation_from_audit(result, drops) if drops else None


def review_table(dataset, result, rule: str, drops: set) -> None:
    only = st.checkbox("Show only rows flagged by this rule", value=True, key="data_au_only")
    shown = result.rows_flagged_by(rule) if only else result.flagged_rows
    id_column = dataset.id_column
    table = [{"drop": row in drops, "row": row, **({"id": dataset.rows[row].get(id_column)} if id_column else {}),
              "rules": ", ".join(f.rule for f in result.flags[row]), "why": "; ".join(f.detail for f in result.flags[row]),
              "prompt": row_text(dataset.rows[row], "prompt")[:PREVIEW], "answer": row_text(dataset.rows[row], "answer")[:PREVIEW]}
             for row in shown[:2000]]
    edited = st.data_editor(table, hide_index=True, width="stretch", disabled=[k for k in (table[0] if table else {}) if k != "drop"],
                            key=f"data_au_table_{rule}_{only}_{st.session_state.get('data_au_version', 0)}")
    for before, after in zip(table, edited):
        (drops.add if after["drop"] else drops.discard)(before["row"])
    st.caption(f"{len(drops):,} rows marked to drop{' (showing the first 2,000 flagged)' if len(shown) > 2000 else ''}.")


def diversity_tab(dataset, reference):
    """The embedding map, its clusters and coverage, and a selection; returns the selection operation (or None)."""
    c = st.columns(4)
    field = c[0].selectbox("Embed", FIELDS, index=2, key="data_dv_field")
    clusters = int(c[1].number_input("Clusters (0 = automatic)", 0, 200, 0, key="data_dv_k"))
    projection = c[2].selectbox("Projection", PROJECTIONS, key="data_dv_projection")
    if c[3].button("Make the diversity map", key="data_dv_run", type="primary"):
        jobs.start(dataset, reference, "local", diversity={"field": field, "clusters": clusters, "projection": projection})
    map_run = jobs.newest(dataset, "diversity")
    found = jobs.follow(map_run, "diversity map") or {}
    result = found.get("diversity")
    if result is None:
        return None
    cov = result.coverage
    m = st.columns(4)
    m[0].metric("Clusters", cov["clusters"])
    m[1].metric("Effective clusters", f"{cov['effective_clusters']:.1f}",
                help="exp(entropy of the cluster shares): equal to the clusters when they are all the same size")
    m[2].metric("Largest cluster", f"{cov['largest_cluster_share']:.0%}")
    m[3].metric("Mean nearest-neighbour distance", f"{cov['mean_nearest_neighbour_distance']:.3f}",
                help="cosine distance; small: rows crowd together")
    st.plotly_chart(scatter(dataset.rows, result), key="data_dv_scatter")
    st.dataframe([{"cluster": c.index, "rows": c.size, "share": f"{c.share:.1%}", "top words": ", ".join(c.top_words),
                   "examples": ", ".join(map(str, c.examples))} for c in result.clusters], hide_index=True, width="stretch")
    c = st.columns(3)
    n = int(c[0].number_input("Select N rows", 1, result.n_rows, min(result.n_rows, max(1, result.n_rows // 2)), key="data_dv_n"))
    method = c[1].selectbox("Method", list(SELECTION_METHODS), format_func=SELECTION_METHODS.get, key="data_dv_method")
    if c[2].button("Select for diversity", key="data_dv_select"):
        jobs.start(dataset, reference, "local", select={"n": n, "method": method, "map_run": str(map_run.path)})
    picked = (jobs.follow(jobs.newest(dataset, "select"), "diversity selection") or {}).get("select")
    if picked is None:
        return None
    pc = picked.coverage
    st.markdown(f"**{pc['selected']:,} rows selected** ({SELECTION_METHODS[picked.method]}) · clusters covered "
                f"{pc.get('clusters_covered', '–')} of {pc.get('clusters', '–')} · covering radius {pc['covering_radius']:.3f} · "
                f"mean distance to the nearest selected row {pc['mean_distance_to_selected']:.3f}")
    if st.checkbox("Keep only the selected rows in the export", value=True, key="data_dv_apply"):
        return curate.operation_from_selection(picked)
    return None


def scatter(rows, result, max_points: int = 20_000) -> go.Figure:
    """The 2-D map coloured by cluster (a fixed sample of at most `max_points` rows is drawn)."""
    points, labels = np.asarray(result.points), np.asarray(result.labels)
    shown = np.arange(len(labels))
    if len(shown) > max_points:
        shown = np.sort(np.random.default_rng(0).choice(len(labels), max_points, replace=False))
    figure = go.Figure()
    for info in result.clusters:
        members = shown[labels[shown] == info.index]
        figure.add_trace(go.Scattergl(
            x=points[members, 0], y=points[members, 1], mode="markers", marker={"size": 5},
            name=f"{info.index}: {', '.join(info.top_words[:3])}",
            text=[f"row {i}: {row_text(rows[i], result.field)[:90]}" for i in members.tolist()], hoverinfo="text"))
    title = f"all-MiniLM embeddings, {result.params['projection'].upper()} projection"
    if len(shown) < len(labels):
        title += f" ({len(shown):,} of {len(labels):,} rows drawn)"
    figure.update_layout(height=460, margin=dict(l=10, r=10, t=30, b=10), title=title, legend={"font": {"size": 10}})
    return figure
