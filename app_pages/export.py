"""Export: take a finished run out of the workbench — adapter, merged safetensors, GGUF (F16 / Q8_0 from our
converter, K-quants from llama.cpp), an Ollama Modelfile, recipes — and see each one loaded back and checked."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.export import FORMAT_LABELS, FORMATS, ExportSpec
from core.export.results import artifact_rows, check_rows, export_sources, gguf_files, read_result, small_files
from core.export.source import source_parameters
from core.llamacpp import QUANT_TYPES, available, missing_note
from core.runs import read_spec_dict, relaunch
from pages_common import human_bytes, live_run, run_selector, spec_form, start_run, time_estimate


def send_to_chat(run_dir: Path, gguf: str) -> None:
    """Chat with the GGUF in llama.cpp beside the torch model it came from."""
    spec = read_spec_dict(run_dir)
    st.session_state["chat_gguf"] = gguf
    source = Path(spec.get("source_run") or "")
    adapter = source / "adapter"
    if (adapter / "adapter_config.json").is_file():
        st.session_state["chat_adapter"] = str(adapter)
    st.switch_page("app_pages/chat.py")


def render_result(run_dir: Path, status, metrics) -> None:  # noqa: ARG001 - live_run's signature
    result = read_result(run_dir)
    if not result:
        return
    c1, c2, c3 = st.columns(3)
    c1.metric("Artifacts", result["artifacts_written"])
    c2.metric("On disk", human_bytes(result["total_bytes"]))
    c3.metric("Checks", f"{result['checks_passed']} passed · {result['checks_failed']} failed")
    st.dataframe(artifact_rows(result), hide_index=True, width="stretch")
    st.markdown("**Loaded back and compared**")
    st.dataframe(check_rows(result), hide_index=True, width="stretch",
                 column_config={"result": st.column_config.TextColumn(width="large")})
    for note in result.get("notes", []):
        st.caption(f"ℹ️ {note}")
    files = small_files(result)
    if files:
        cols = st.columns(len(files))
        for col, path in zip(cols, files):
            col.download_button(f"⬇️ {path.name}", path.read_text(), file_name=path.name, key=f"export_dl_{run_dir.name}_{path.name}")
    ggufs = gguf_files(result)
    if not status.is_final:
        return
    left, right = st.columns(2)
    if ggufs:
        names = {Path(a["path"]).name: a["path"] for a in ggufs}
        chosen = left.selectbox("GGUF", list(names), key=f"export_gguf_{run_dir.name}")
        if left.button("💬 Chat with it (llama.cpp)", key=f"export_chat_{run_dir.name}"):
            send_to_chat(run_dir, names[chosen])
    if right.button("🔁 Verify the files again", key=f"export_verify_{run_dir.name}",
                    help="Recompute every file's hash and header, and load the GGUF files back into llama.cpp."):
        relaunch(run_dir, {"verify_only": True})
        st.rerun()
    if result.get("verified_at"):
        right.caption("Last verified: every file re-hashed and reloaded (see the checks above).")


st.title("📦 Export")
st.caption("Every artifact is loaded back and compared with the model it came from before it is called done: "
           "merged logits vs base + adapter, GGUF greedy text in llama.cpp vs torch, the chat template round trip.")

sources = export_sources()
if not sources:
    st.info("No finished train, merge, prune or distill run yet: train one on the Train page first.")
    st.stop()
labels = list(sources)
preset = st.session_state.get("export_source_run")
index = next((i for i, label in enumerate(labels) if sources[label] == preset), 0)
source_label = st.selectbox("Run to export", labels, index=index, key="export_source")
formats = st.multiselect("Formats", FORMATS, default=["merged", "gguf_f16", "gguf_q8_0", "modelfile", "recipes"],
                         format_func=FORMAT_LABELS.get, key="export_formats")
if available():
    quantize = st.multiselect("K-quants (llama.cpp's quantiser, from the F16 GGUF)", QUANT_TYPES, key="export_quantize")
else:
    quantize = []
    st.caption(f"ℹ️ {missing_note()}")
with st.expander("Checks and options", expanded=False):
    options = spec_form(ExportSpec, key_prefix="export_opt", skip=("name", "source_run", "model", "formats", "quantize", "verify_only"))

try:
    spec, problem = ExportSpec.from_dict({"source_run": sources[source_label], "formats": formats, "quantize": quantize, **options}), ""
except ValueError as exc:
    spec, problem = None, str(exc)
if spec is not None:
    time_estimate("export", spec, rows=source_parameters(spec.source_run))
if st.button("Export", type="primary", key="export_start"):
    if spec is None:
        st.error(problem)
    else:
        start_run(spec, "export_run")


st.subheader("Exports")
run_dir = run_selector("export", "export_run")
if run_dir is not None:
    live_run(run_dir, render_result)
