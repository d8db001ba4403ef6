"""Data page helpers: start a curation job, follow it live, reattach to it after a refresh (not a page itself).

The run folders are the only state: for each operation the page shows this dataset's newest run that
includes it (`core.data.curate_job.curation_runs`), so leaving the page, a second tab or an app restart
finds the same progress or result.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import streamlit as st

from core.data.curate_job import RAY_OPERATIONS, CurateSpec, curation_runs, load_results
from core.data.formats import save_upload
from core.data.ray_curate import ray_available
from core.evaluate.answer_loss import AnswerLossSpec
from core.runs import list_runs, log_tail, read_status, result_path, stop
from core.runs.jobs import read_result
from core.workspace import safe_name
from pages_common import cached_dataset_file, start_run, time_estimate, upload_digest

ENGINES = {"local": "This machine", "ray": "Ray"}


def dataset_reference(dataset, upload=None) -> tuple[str, str]:
    """(what a job reads, its split): the file or Hub id the page loaded; an upload is kept in the workspace first."""
    if upload is not None:
        return str(save_upload(upload.name, upload.getvalue(), upload_digest(upload))), ""
    source = str(dataset.source)
    if source.startswith("hub:"):
        name, _, split = source.removeprefix("hub:").partition(" [")
        return name, split.rstrip("]")
    return source, ""


@st.cache_data(max_entries=4, show_spinner="Keeping the rows as your column mapping reads them…")
def _mapped_copy(source_hash: str, mapping: str, name: str, _rows: list) -> str:  # noqa: ARG001 - hash + mapping key the cache
    return str(save_upload(name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _rows).encode("utf-8")))


def with_mapping_applied(dataset, mapping: dict):
    """A dataset read through the user's column mapping, as a workspace file of its normalised rows (uploads/): jobs read
    files, not mappings, so every job (and the export's manifest) reads the very rows the page shows. The loader's report
    of rejected rows is the original file's."""
    stem = safe_name(Path(str(dataset.source).split(":", 1)[-1]).stem, default="dataset", max_len=40)
    path = _mapped_copy(dataset.source_hash, json.dumps(mapping, sort_keys=True), f"{stem}-mapped.jsonl", dataset.rows)
    return replace(cached_dataset_file(path, Path(path).stat().st_mtime), report=dataset.report)


def engine_choice() -> str:
    with st.expander("Where heavy curation runs", expanded=False):
        if not ray_available():
            st.caption("Ray is not installed (`pip install -r requirements-ray.txt`): curation runs on this machine.")
            return "local"
        engine = st.radio("Run exact / near de-duplication and decontamination on", list(ENGINES), format_func=ENGINES.get,
                          horizontal=True, key="data_engine")
        address = os.environ.get("RAY_ADDRESS")
        st.caption(f"Ray cluster: `{address}` (RAY_ADDRESS)" if address else
                   "No RAY_ADDRESS: Ray starts locally on this machine's cores. Set RAY_ADDRESS=ray://head:10001 before `make run` for a "
                   "cluster.")
        return engine


def start(dataset, reference: tuple[str, str], engine: str, **operations) -> None:
    """One job for what the engine can run there, another (local) for the rest."""
    on_engine = {k: v for k, v in operations.items() if engine == "local" or k in RAY_OPERATIONS}
    local = {k: v for k, v in operations.items() if k not in on_engine}
    for chosen, where in ((on_engine, engine), (local, "local")):
        if chosen:
            spec = CurateSpec(dataset=reference[0], split=reference[1], dataset_sha256=dataset.source_hash, engine=where,
                              name="-".join(chosen), **chosen)
            start_run(spec, "data_last_run")


def newest(dataset, operation: str):
    found = curation_runs(dataset.source_hash, operation)
    return found[0] if found else None


@st.cache_data(max_entries=32, show_spinner=False)
def _results(run_dir: str, mtime: float):  # noqa: ARG001 - the result file's mtime keys the cache
    return load_results(run_dir)


def results_of(run) -> dict:
    path = result_path(run.path, "curate")
    return _results(str(run.path), path.stat().st_mtime) if path.is_file() else {}


def newest_answer_loss(dataset):
    found = [r for r in list_runs("answer_loss") if (r.spec or {}).get("dataset_sha256") == dataset.source_hash]
    return found[0] if found else None


def start_answer_loss(dataset, reference: tuple[str, str], model: dict, chat_template: str) -> None:
    spec = AnswerLossSpec(dataset=reference[0], split=reference[1], dataset_sha256=dataset.source_hash, model=model,
                          chat_template=chat_template)
    start_run(spec, "data_last_run")


def answer_loss_estimate(dataset, model: dict) -> None:
    """About how long the answer-loss job takes on this machine for this many rows (shown beside its button)."""
    time_estimate("answer_loss", {"model": model}, rows=len(dataset))


def answer_loss_of(run) -> dict | None:
    return read_result(run.path, "answer_loss") if run is not None else None


def follow(run, label: str, read=None) -> dict | None:
    """The run's results when it has finished (`read(run)`, default: the curation results), else its live
    progress (and None)."""
    if run is None:
        return None
    status = read_status(run.path)
    if status.is_active:
        _live(run.path, label)
        return None
    if status.state == "failed":
        st.error(f"{label} failed: {status.error or 'see the log'}")
        with st.expander("Log tail"):
            st.code(log_tail(run.path) or "(empty log)")
        return None
    if status.state == "stopped":
        st.caption(f"{label} was stopped; what finished before the stop is shown.")
    return (read or results_of)(run)


@st.fragment(run_every=1.0)
def _live(run_dir: Path, label: str) -> None:
    status = read_status(run_dir)
    st.progress(min(max(status.progress, 0.0), 1.0), text=f"{label} · {status.state} · {status.message}")
    st.caption(f"Run `{run_dir.name}` works in its own process: leave this page and come back, it carries on.")
    if st.button("Stop", key=f"data_stop_{run_dir.name}_{label}"):
        stop(run_dir)
    if status.is_final:
        st.rerun()
