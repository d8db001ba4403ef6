"""Merge: mergekit methods generated from the registry, a header-only pre-flight, the merge job, and the
base → fine-tuned sweep drawn as a learning-vs-forgetting curve."""
from __future__ import annotations

import json

import plotly.express as px
import streamlit as st

from core.merge import DEFAULT_SWEEP, METHODS, SWEEP_METHODS, MergeSpec, method_table
from core.merge.config import export_yaml
from core.merge.preflight import check_merge
from core.models import ModelLoadError
from core.runs import read_result, read_spec_dict
from pages_common import (
    human_bytes,
    live_run,
    model_picker,
    run_selector,
    send_model_buttons,
    spec_form,
    start_run,
    task_rows_note,
    time_estimate,
)


def param_widget(param, key: str):
    if param.is_bool:
        return st.checkbox(param.label, value=param.default, help=param.help, key=key)
    return st.slider(param.label, param.min, param.max, float(param.default), param.step, help=param.help, key=key)


def spec_from_widgets() -> MergeSpec | None:
    need_base = method.needs_base or sweeping
    base = model_picker("Base model" + ("" if need_base else " (reference for the forgetting report)"), "merge_base",
                        allow_adapter=False)
    items = []
    if sweeping:
        source = model_picker("Fine-tuned model (λ = 1)", "merge_tuned", default_choice=1)
        items.append({"source": source.as_dict() if source else None})
        st.caption(f"λ means: {method.sweep_note}.")
        text = st.text_input("λ values", ", ".join(f"{v:g}" for v in DEFAULT_SWEEP), key="merge_sweep")
        try:
            sweep = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
        except ValueError:
            st.error("λ values: write numbers separated by commas, e.g. 0, 0.25, 0.5, 0.75, 1")
            return None
    else:
        sweep = []
        top = method.max_models or 4
        low = max(method.min_models, 1)
        count = low if top == low else st.number_input("Models to merge", low, top, max(low, 2), key="merge_count")
        for i in range(int(count)):
            with st.container(border=True):
                source = model_picker(f"Model {i + 1}", f"merge_m{i}", default_choice=1 if i == 0 else 3)
                item = {"source": source.as_dict() if source else None}
                for p in method.model_params():
                    item[p.name] = param_widget(p, f"merge_m{i}_{p.name}")
                items.append(item)
    params = {p.name: param_widget(p, f"merge_g_{p.name}") for p in method.global_params() if not (sweeping and p.name in ("t", "lambda"))}
    c1, c2, c3 = st.columns(3)
    dtype = c1.selectbox("Output dtype", ("auto", "float32", "bfloat16", "float16"), key="merge_dtype")
    evaluate = c2.checkbox("Score with the forgetting report", value=True, key="merge_evaluate")
    rows = c3.number_input("Evaluation rows", 1, 1000, 20, key="merge_eval_rows")
    task_dataset = spec_form(MergeSpec, key_prefix="merge", skip=tuple(n for n in MergeSpec.__dataclass_fields__ if n != "task_dataset"),
                             columns=1)["task_dataset"] if evaluate else ""
    if any(item["source"] is None for item in items):
        st.info("Choose every model to continue.")
        return None
    try:
        return MergeSpec(method=method_name, base=base.as_dict() if base else {}, models=items, parameters=params,
                         dtype=dtype, sweep=sweep, evaluate=evaluate, eval_rows=int(rows), task_dataset=task_dataset,
                         name=f"sweep-{method_name}" if sweeping else method_name)
    except ValueError as exc:
        st.error(str(exc))
        return None


def sweep_curve(points: list[dict]) -> None:
    scored = [p for p in points if p.get("task_score") is not None]
    if not scored:
        st.dataframe(points, hide_index=True)
        return
    fig = px.line(sorted(scored, key=lambda p: p["lambda"]), x="general_score", y="task_score",
                  text=[f"λ={p['lambda']:g}" for p in sorted(scored, key=lambda p: p["lambda"])], markers=True,
                  labels={"general_score": "General score (kept abilities) →", "task_score": "Task score (learned) →"},
                  title="Learning vs forgetting: pick the point that keeps both")
    fig.update_traces(textposition="top center")
    st.plotly_chart(fig, width="stretch")
    st.dataframe(points, hide_index=True)


def sweep_points(run_dir, metrics: list[dict]) -> list[dict]:
    """Final points from sweep.json; while running, the latest metrics row per λ."""
    final = run_dir / "sweep.json"
    if final.is_file():
        return json.loads(final.read_text())["points"]
    latest = {m["lambda"]: m for m in metrics if "lambda" in m}
    return sorted(latest.values(), key=lambda p: p["lambda"])


def render_result(run_dir, status, metrics) -> None:
    if read_spec_dict(run_dir).get("sweep"):
        points = sweep_points(run_dir, metrics)
        if points:
            sweep_curve(points)
        task_rows_note((status.result or {}).get("task_dataset"))
        best = status.result.get("best_lambda") if status.result else None
        kept = [p for p in points if p.get("model_dir")] if status.is_final else []
        if kept:
            default = next((i for i, p in enumerate(kept) if p["lambda"] == best), 0)
            chosen = st.selectbox("Use the model at", range(len(kept)), index=default, key=f"merge_point_{run_dir.name}",
                                  format_func=lambda i: f"λ = {kept[i]['lambda']:g}"
                                                        + (" (suggested)" if kept[i]["lambda"] == best else ""))
            send_model_buttons(kept[chosen]["model_dir"], f"merge_send_{run_dir.name}")
        return
    result = read_result(run_dir, "merge")
    if result is None:
        return
    c1, c2 = st.columns(2)
    c1.metric("Merge time", f"{result['merge_seconds']:.1f} s")
    c2.metric("Size on disk", human_bytes(result.get("size_bytes")))
    evaluation = result.get("evaluation")
    if evaluation:
        st.markdown(f"**Verdict:** {evaluation.get('verdict', '—')}")
        task_rows_note(evaluation.get("task_dataset"))
        st.dataframe(evaluation.get("table", []), hide_index=True)
    yaml_path = run_dir / "merge.yaml"
    if yaml_path.is_file():
        st.download_button("Download the YAML this merge used", yaml_path.read_text(), file_name="merge.yaml",
                           key=f"merge_used_{run_dir.name}")
    send_model_buttons(result["model_dir"], f"merge_send_{run_dir.name}")


st.title("🔀 Merge models")
st.caption("Combine fine-tunes with mergekit, or blend a fine-tune back towards its base to win back what it forgot.")
with st.expander("The methods", expanded=False):
    st.dataframe(method_table(), hide_index=True, column_config={"paper": st.column_config.LinkColumn()})

MODES = ("Merge models", "Forgetting remedy: sweep base → fine-tuned")
mode = st.radio("What to do", MODES, horizontal=True, key="merge_mode")
sweeping = mode == MODES[1]
names = list(SWEEP_METHODS if sweeping else METHODS)
method_name = st.selectbox("Method", names, format_func=lambda n: METHODS[n].pretty_name, key="merge_method")
method = METHODS[method_name]
st.markdown(f"{method.explanation} [Paper]({method.paper})")


spec = spec_from_widgets()
spec_key = json.dumps(spec.to_dict(), sort_keys=True) if spec else ""
if spec is not None:
    time_estimate("merge", spec)
    c1, c2, c3 = st.columns(3)
    if c1.button("Pre-flight check", key="merge_preflight"):
        st.session_state["merge_report"] = (spec_key, check_merge(spec).as_dict())
    if c2.button("Start", type="primary", key="merge_start"):
        report = check_merge(spec)
        st.session_state["merge_report"] = (spec_key, report.as_dict())
        if report.ok:
            start_run(spec, "merge_run")
    point = spec.sweep[len(spec.sweep) // 2] if spec.sweep else None
    try:
        c3.download_button("Download mergekit YAML" + (f" (λ = {point:g})" if spec.sweep else ""), export_yaml(spec, point),
                           file_name=f"{method_name}.yaml", key="merge_yaml")
    except ModelLoadError as exc:
        c3.caption(f"YAML export needs the models on disk: {exc}")

checked_key, report = st.session_state.get("merge_report") or ("", None)
if report and checked_key == spec_key:  # only the check of the settings shown now
    for problem in report["problems"]:
        st.error(problem)
    for note in report["notes"]:
        st.caption(f"ℹ️ {note}")
    if report["ok"]:
        facts = report["facts"]
        st.success(f"Pre-flight passed: {facts['parameters'] / 1e6:.1f} M parameters, output {human_bytes(facts['output_bytes'])} "
                   f"({facts['output_dtype']}), needs ~{human_bytes(facts['ram_needed_bytes'])} RAM and "
                   f"~{human_bytes(facts['disk_needed_bytes'])} disk.")


st.subheader("Runs")
run_dir = run_selector("merge", "merge_run")
if run_dir is not None:
    live_run(run_dir, render_result)
