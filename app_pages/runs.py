"""Runs: every run's card (data → masking → memory → curves → reports → what was made from it) with its lineage
graph, and the comparison of two or more runs (curves overlaid, spec diff, final metrics, reports)."""
from __future__ import annotations

import json
import time

import streamlit as st

from core.runs import list_runs
from core.runs.card import README_FILE, build_card, lineage, lineage_dot, model_card_markdown, scan, source_run_of, write_card
from core.runs.side_by_side import overlay_figure, side_by_side
from pages_common import human_bytes


def open_run(run_id: str) -> None:
    st.session_state["runs_pick"] = run_id


def render_card(run_id: str) -> None:
    card = build_card(run_id, nodes, graph)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Kind", card["kind"])
    c2.metric("State", card["state"])
    final = card["final_metrics"]
    c3.metric("Eval loss", f"{final['eval_loss']:.3f}" if isinstance(final.get("eval_loss"), float) else "—")
    c4.metric("Peak memory", human_bytes(card["memory"].get("measured_peak_bytes")) if card["memory"] else "—")
    st.markdown("**Lineage**")
    st.graphviz_chart(lineage_dot(run_id, nodes, graph), width="stretch")
    related = card["ancestors"] + [d["run_id"] for d in card["descendants"]]
    if related:
        cols = st.columns(min(4, len(related)))
        for n, other in enumerate(related):
            cols[n % len(cols)].button(f"Open {other}", key=f"runs_open_{other}", on_click=open_run, args=(other,))
    for d in card["descendants"]:
        files = ", ".join(f"`{a['name']}`" + ("" if a.get("checks_passed", True) else " ❌ checks failed") for a in d["artifacts"]) or "—"
        st.markdown(f"- {d['relation']} **{d['run_id']}** ({d['state']}): {files}")
    left, right = st.columns(2)
    if left.button("Write card.json + README.md", key="runs_write_card"):
        write_card(run_id, nodes, graph)
        st.success(f"Wrote {README_FILE} and card.json in the run folder.")
    if card["kind"] in ("train", "merge", "prune", "distill") and card["state"] in ("succeeded", "stopped"):
        if right.button("📦 Export this run", key="runs_to_export"):
            st.session_state["export_source_run"] = str(nodes[run_id].path)
            st.switch_page("app_pages/export.py")
    readme = model_card_markdown(card)
    with st.expander("Model card (README.md)", expanded=True):
        st.markdown(readme.split("---", 2)[-1])
    d1, d2 = st.columns(2)
    d1.download_button("⬇️ README.md", readme, file_name="README.md", key="runs_dl_readme")
    d2.download_button("⬇️ card.json", json.dumps(card, indent=2, default=str), file_name="card.json", key="runs_dl_card")


st.title("🗂️ Runs")
st.caption("One card per run links its data, mask statistics, memory, curves, evaluations and every artifact made from it. "
           "Pick two or more runs to compare them.")

summaries = list_runs()
if not summaries:
    st.info("No runs yet in this workspace: start one on the Train page.")
    st.stop()
nodes = scan()
graph = lineage(nodes)
st.dataframe([{"run": r.run_id, "kind": r.kind, "state": r.status.state, "name": r.name,
               "made from": len(graph.parents.get(r.run_id, [])), "made from it": len(graph.descendants(r.run_id)),
               "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.status.created_at))} for r in summaries],
             hide_index=True, width="stretch")
ids = [r.run_id for r in summaries if r.run_id in nodes]  # a folder deleted between the two scans is left out
if not ids:
    st.info("No runs left in this workspace: their folders were deleted.")
    st.stop()
card_tab, compare_tab = st.tabs(["Run card", "Compare runs"])


with card_tab:
    artifact = st.text_input("Open the run an artifact came from", key="runs_artifact", placeholder="/path/to/model.gguf or a model folder")
    if artifact.strip():
        found = source_run_of(artifact.strip())
        if found in nodes:
            open_run(found)
        else:
            st.warning("That path is not inside a run folder of this workspace.")
    if st.session_state.get("runs_pick") not in ids:
        if st.session_state.get("runs_pick"):
            st.warning(f"Run {st.session_state['runs_pick']} no longer exists (its folder was deleted or moved); showing {ids[0]}.")
        st.session_state["runs_pick"] = ids[0]
    render_card(st.selectbox("Run", ids, key="runs_pick"))

with compare_tab:
    if "runs_compare" in st.session_state:  # runs deleted since they were picked drop out of the choice
        st.session_state["runs_compare"] = [i for i in st.session_state["runs_compare"] if i in ids]
    picked = st.multiselect("Runs to compare", ids, default=[i for i in ids if nodes[i].kind == "train"][:2], key="runs_compare")
    if len(picked) < 2:
        st.info("Choose at least two runs.")
    else:
        view = side_by_side(picked)
        log_scale = st.checkbox("Log scale", key="runs_compare_log")
        st.plotly_chart(overlay_figure(view["run_dirs"], log_scale), width="stretch")
        st.markdown("**Spec differences**")
        st.dataframe(view["spec_diff"] or [{"field": "(the specs are identical)"}], hide_index=True, width="stretch")
        st.markdown("**Final metrics**")
        st.dataframe(view["final_metrics"], hide_index=True, width="stretch")
        st.markdown("**Evaluation reports**")
        st.dataframe(view["reports"], hide_index=True, width="stretch")
