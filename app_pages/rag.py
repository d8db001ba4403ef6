"""RAG / RAFT: index documents and measure retrieval, build a RAFT training set, and evaluate RAFT vs SFT vs base.
Every step is a job (index, raft, raft_eval); the page writes specs and reads run folders back."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from core.rag.chunking import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP
from core.rag.evaluation import CONDITION_LABELS, delta_table, render_markdown, report_table
from core.rag.index import MODE_LABELS, MODES, RagIndex
from core.rag.raft import MANIFEST_FILE
from core.rag.spec import DEMO_DOCUMENTS, DEMO_QUESTIONS, RaftEvalSpec, RaftSpec, RagIndexSpec
from core.runs import list_runs, read_result
from core.workspace import datasets_dir, read_json
from pages_common import (
    active_model_source,
    live_run,
    model_picker,
    run_selector,
    send_recipe_to_train,
    spec_form,
    start_run,
    time_estimate,
)

VERDICT_BOX = {"better": st.success, "worse": st.error, "no clear difference": st.warning}


def raft_datasets() -> dict[str, Path]:
    return {p.name: p for p in sorted(datasets_dir().iterdir()) if (read_json(p / MANIFEST_FILE) or {}).get("raft")}


def sources(key: str) -> tuple[str, str]:
    """Documents and question rows: the demo handbook or the user's own paths."""
    c1, c2 = st.columns(2)
    demo = c1.toggle("Demo handbook (30 documents, 150 questions)", value=True, key=f"{key}_demo")
    if demo:
        return DEMO_DOCUMENTS, DEMO_QUESTIONS
    documents = c1.text_input("Documents: a folder of .txt / .md / .pdf, one file, or a JSONL of {id, title, text}", key=f"{key}_docs")
    questions = c2.text_input("Questions (JSONL of {question, answer, gold_chunk_ids | evidence [+ doc_id]})", key=f"{key}_questions",
                              help="Optional for the index (it measures recall@k); the RAFT builder needs it unless questions are "
                                   "generated.")
    return documents.strip(), questions.strip()


@st.cache_resource(max_entries=2, show_spinner="Loading the index…")
def cached_index(folder: str) -> RagIndex:
    return RagIndex(folder)


def render_index(run_dir: Path, status, metrics_rows) -> None:  # noqa: ARG001 - live_run's signature
    result = read_result(run_dir, "rag_index")
    if not result:
        return
    index = result["index"]
    st.caption(f"{index['corpus']['documents']} documents → {index['chunks']} chunks of ≤ {index['chunk_tokens']} tokens "
               f"(overlap {index['overlap']}) · built in {index['seconds']['total']:.1f} s · "
               f"corpus sha256 {index['corpus']['sha256'][:12]}")
    if result["retrieval"]:
        st.dataframe(pd.DataFrame([{"retriever": MODE_LABELS[m],
                                    **{k: round(v, 3) for k, v in r.items() if k.startswith(("recall", "mrr"))},
                                    "queries/s": r["queries_per_s"]} for m, r in result["retrieval"].items()]),
                     hide_index=True, width="stretch")
    query = st.text_input("Try a question", key="rag_query", placeholder="What is the hotel cap per night?")
    c1, c2 = st.columns(2)
    mode = c1.selectbox("Retriever", MODES, format_func=MODE_LABELS.get, key="rag_query_mode")
    k = c2.slider("Top k", 1, 10, 3, key="rag_query_k")
    if query.strip():
        hits = cached_index(result["folder"]).search(query.strip(), k=k, mode=mode)
        st.dataframe(pd.DataFrame([h.as_dict() for h in hits]), hide_index=True, width="stretch",
                     column_config={"chunk_id": "chunk", "doc_id": "document",
                                    "score": st.column_config.NumberColumn("score", format="%.3f")})


def index_tab() -> None:
    documents, questions = sources("rag_index")
    c1, c2, c3 = st.columns(3)
    chunk = c1.number_input("Chunk tokens", 8, 256, DEFAULT_CHUNK_TOKENS, key="rag_chunk_tokens")
    overlap = c2.number_input("Overlap tokens", 0, 255, DEFAULT_OVERLAP, key="rag_overlap")
    top_k = c3.number_input("Recall at k", 1, 100, 5, key="rag_top_k")
    if documents:
        time_estimate("rag_index", {"documents": documents, "questions": questions, "chunk_tokens": int(chunk), "overlap": int(overlap)})
    if st.button("▶ Index and measure retrieval", key="rag_index_start", disabled=not documents):
        try:
            start_run(RagIndexSpec(documents=documents, questions=questions, chunk_tokens=chunk, overlap=overlap, top_k=top_k),
                      "rag_index_run")
        except ValueError as exc:
            st.error(str(exc))
        st.rerun()
    run_dir = run_selector("rag_index", "rag_index_run", "Index run")
    if run_dir is not None:
        live_run(run_dir, render_index)


def render_raft(run_dir: Path, status, metrics_rows) -> None:  # noqa: ARG001 - live_run's signature
    result = read_result(run_dir, "raft")
    if not result:
        return
    counts, name = result["counts"], Path(result["dataset"]).name
    st.success(f"Saved **{name}**: {counts['examples']} examples ({counts['distractor_only']} distractor-only), "
               f"{result['heldout']} held-out questions"
               + (f", and the SFT baseline {Path(result['sft_dataset']).name}" if result["sft_dataset"] else ""))
    cols = st.columns(4)
    cols[0].metric("Examples", counts["examples"])
    cols[1].metric("With the oracle", counts["with_oracle"])
    cols[2].metric("Longest row (tokens)", counts["tokens"].get("longest", "?"),
                   help=counts["tokens"].get("note") or counts["tokens"]["model"])
    cols[3].metric("Oracle positions", " · ".join(f"{p}: {n}" for p, n in counts["oracle_positions"].items()))
    for reason, ids in result["skipped"].items():
        st.warning(f"Skipped {len(ids)}+ questions: {reason}")
    with st.expander("An example (as the trainer sees it)"):
        st.json(result["example"])
    c1, c2, c3 = st.columns(3)
    max_length = -(-int(counts["tokens"].get("longest", 512)) // 64) * 64
    if c1.button("🎨 See its mask on the Template page", key="raft_to_template"):
        st.session_state.update(tpl_source="Workspace dataset", tpl_workspace_name=name)
        st.switch_page("app_pages/template.py")
    for column, label, folder in ((c2, "🏋️ Train RAFT on it", result["dataset"]),
                                  (c3, "🏋️ Train the SFT baseline", result["sft_dataset"])):
        if folder and column.button(label, key=f"raft_train_{Path(folder).name}"):
            send_recipe_to_train({"dataset": folder, "max_length": max_length, "name": Path(folder).name}, "the RAG / RAFT page's recipe")


def raft_tab() -> None:
    documents, questions = sources("raft")
    values = spec_form(RaftSpec, {"documents": documents, "questions": questions}, "raft_form",
                       skip=("documents", "questions", "model", "question_model", "max_new_tokens", "batch_size"))
    writer = None
    if values.get("question_source") == "generate":
        writer = model_picker("Model that writes the questions", "raft_writer",
                              help="One question per chunk, kept only when its answer is in the chunk. A larger instruction model writes "
                                   "better ones.")
    try:
        spec = RaftSpec.from_dict({**values, "documents": documents, "questions": questions, "model": active_model_source().as_dict(),
                                   "question_model": writer.as_dict() if writer is not None else {}})
    except ValueError as exc:
        spec, problem = None, f"Check the form: {exc}"
    else:
        time_estimate("raft", spec)
    if st.button("▶ Build the RAFT set", key="raft_start", type="primary"):
        if spec is None:
            st.error(problem)
            return
        start_run(spec, "raft_run")
        st.rerun()
    st.caption(f"The active model ({active_model_source().label}) is the one the set is built for: its tokenizer measures the rows.")
    run_dir = run_selector("raft", "raft_run", "RAFT build")
    if run_dir is not None:
        live_run(run_dir, render_raft)


def render_report(run_dir: Path, status, metrics_rows) -> None:  # noqa: ARG001 - live_run's signature
    report = read_result(run_dir, "raft_eval")
    if not report:
        return
    verdict = report["verdict"]
    VERDICT_BOX.get(verdict["verdict"], st.info)(f"**{verdict['headline']}**\n\n" + "\n".join(f"- {r}" for r in verdict["reasons"]))
    st.caption(f"{report['n']} held-out questions of {report['dataset']['name']} · k = {report['settings']['k']} documents · "
               f"{report['settings']['distractors']} distractors · wall time {report['wall_seconds']:.0f} s")
    st.dataframe(pd.DataFrame(report_table(report)), hide_index=True, width="stretch")
    st.dataframe(pd.DataFrame(delta_table(report)), hide_index=True, width="stretch")
    with st.expander("What to do"):
        st.markdown("\n".join(f"1. {a}" for a in verdict["advice"]))
    condition = st.radio("Replies under", list(CONDITION_LABELS), format_func=CONDITION_LABELS.get, horizontal=True,
                         key="raft_eval_condition")
    st.dataframe(pd.DataFrame([{"question": e["question"], "reference": e["reference"],
                                **{role: e["replies"][role][condition] for role in e["replies"]}} for e in report["examples"]]),
                 hide_index=True, width="stretch")
    with st.expander("Definitions"):
        st.markdown("\n".join(f"- **{k}**: {v}" for k, v in report["definitions"].items()))
    st.download_button("⬇ Markdown", render_markdown(report), f"{run_dir.name}.md", "text/markdown", key="raft_eval_md")
    st.download_button("⬇ JSON", json.dumps(report, indent=2), f"{run_dir.name}.json", "application/json", key="raft_eval_json")


def trained_adapters() -> dict[str, str]:
    """Adapters of finished training runs, labelled with the dataset each was trained on."""
    found = {}
    for run in list_runs("train"):
        adapter = run.path / "adapter"
        if run.status.state in ("succeeded", "stopped") and (adapter / "adapter_config.json").is_file():
            found[f"{run.run_id} · data: {Path(str(run.spec.get('dataset', ''))).name}"] = str(adapter)
    return found


def adapter_choice(label: str, key: str, adapters: dict[str, str], hint: str) -> str:
    options = ["(none)"] + list(adapters)
    default = next((i for i, name in enumerate(options) if name.endswith(hint)), 0)
    picked = st.selectbox(label, options, index=default, key=key)
    return adapters.get(picked, "")


def evaluate_tab() -> None:
    datasets = raft_datasets()
    if not datasets:
        st.info("Build a RAFT set first (the tab before this one); its held-out questions are what is evaluated.")
        return
    name = st.selectbox("RAFT dataset", list(datasets), key="raft_eval_dataset")
    adapters = trained_adapters()
    c1, c2 = st.columns(2)
    raft = adapter_choice("RAFT adapter", "raft_eval_raft", adapters, f"data: {name}")
    sft = adapter_choice("SFT adapter (optional)", "raft_eval_sft", adapters, f"data: {name}-sft")
    samples = c1.number_input("Held-out questions (0 = all)", 0, 100_000, 0, key="raft_eval_samples")
    max_new = c2.number_input("Max new tokens", 4, 4096, 80, key="raft_eval_max_new")
    st.caption(f"Base: the active model ({active_model_source().label}); the adapters go on top of it.")
    if st.button("▶ Evaluate", key="raft_eval_start", type="primary", disabled=not raft):
        start_run(RaftEvalSpec(dataset=name, base=active_model_source().as_dict(), sft_model=sft, raft_model=raft, samples=samples,
                               max_new_tokens=max_new), "raft_eval_run")
        st.rerun()
    run_dir = run_selector("raft_eval", "raft_eval_run", "RAFT evaluation")
    if run_dir is not None:
        live_run(run_dir, render_report)


st.title("📚 RAG / RAFT")
st.caption("Retrieval puts your documents into the prompt; RAFT trains the model to read them — the oracle among distractors, "
           "quote it, then answer, or say it is not in the documents. Index → build a RAFT set → train it (Train page) → evaluate.")
tabs = st.tabs(["1 · Index & retrieval", "2 · Build a RAFT set", "3 · Evaluate RAFT"])
with tabs[0]:
    index_tab()
with tabs[1]:
    raft_tab()
with tabs[2]:
    evaluate_tab()
