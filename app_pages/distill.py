"""Distill: a teacher taught to a smaller student three ways — sequence-level (the teacher's answers become a
dataset for the Train job), logit and on-policy (GKD) — with "which one when", what the temperature does, a
matched-budget comparison of the three, and every run live (a refresh reattaches)."""
from __future__ import annotations

import json

import pandas as pd
import plotly.express as px
import streamlit as st

from core.distill.compare import comparison_figure, table_csv, table_json, table_markdown
from core.distill.spec import VARIANT_GUIDE, VARIANT_LABELS, VARIANTS, DistillCompareSpec, DistillSpec, TeacherAnswersSpec
from core.distill.temperature import entropy_by_temperature, next_token_logits, temperature_table
from core.models import ModelLoadError, ModelSource
from core.runs import read_result, read_spec_dict
from pages_common import (
    cached_model,
    human_bytes,
    live_run,
    model_picker,
    run_selector,
    send_model_buttons,
    send_recipe_to_train,
    spec_form,
    start_run,
    task_rows_note,
    time_estimate,
)

METHOD_ONLY = {"logit": ("temperature", "alpha"), "on_policy": ("gkd_lambda", "gkd_beta", "gkd_temperature", "max_new_tokens")}
RUN_KINDS = {"distill": "Logit / on-policy students", "teacher_answers": "Teacher datasets (sequence-level)",
             "distill_compare": "Comparisons"}

def render_distill(run_dir, status, metrics: list[dict]) -> None:
    steps = [m for m in metrics if "step" in m]
    if steps:
        series = [k for k in ("loss", "ce", "kl") if k in steps[0]]
        long = [{"step": m["step"], "series": k, "value": m[k]} for m in steps for k in series]
        title = "Loss, cross-entropy and KL" if "kl" in series else "Generalised JSD (on-policy steps marked in the table below)"
        st.plotly_chart(px.line(long, x="step", y="value", color="series", title=title), width="stretch")
    result = read_result(run_dir, "distill")
    if result is None:
        return
    divergence = result.get("held_out_divergence", "kl")
    start, end = result[f"held_out_{divergence}_start"], result[f"held_out_{divergence}_end"]
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Teacher parameters", f"{result['teacher_parameters'] / 1e6:.2f} M")
    c2.metric("Student parameters", f"{result['student_parameters'] / 1e6:.2f} M",
              f"{result['student_parameters'] / result['teacher_parameters'] - 1:+.0%}", delta_color="off")
    c3.metric(f"Held-out {divergence.upper()}", f"{end:.4f}", f"{end - start:+.4f}", delta_color="inverse")
    c4.metric("Training time", f"{result['train_seconds']:.0f} s")
    replay = result.get("replay")
    st.caption(f"Student: {result['student']} · {human_bytes(result.get('student_bytes'))} on disk · {result.get('training_rows', '?')} "
               f"training rows" + (f", {replay['replay_rows']} of them general replay rows ({replay['fraction']:.1%})" if replay else ""))
    evaluation = result.get("evaluation")
    if evaluation:
        st.markdown(f"**Student vs teacher:** {evaluation.get('verdict', '—')}")
        task_rows_note(evaluation.get("task_dataset"))
        st.dataframe(evaluation.get("table", []), hide_index=True)
        if evaluation.get("verdict_kind") == "forgetting" and not replay and st.button(
                "🔁 Distil again with 20 % general data mixed in (replay)", key=f"distill_replay_{run_dir.name}"):
            spec = {**read_spec_dict(run_dir), "replay_fraction": 0.2, "name": f"{result.get('method', 'distill')}-replay"}
            start_run(spec, "distill_run")
            st.rerun()
    send_model_buttons(result["student_dir"], f"distill_send_{run_dir.name}")


def render_answers(run_dir, status, metrics: list[dict]) -> None:
    result = read_result(run_dir, "teacher_answers")
    if result is None:
        return
    c1, c2, c3 = st.columns(3)
    c1.metric("Prompts answered", result["prompts"])
    c2.metric("Rows kept", result["rows"], f"{result['rows'] - result['prompts']:+d}", delta_color="off")
    c3.metric("Teacher tokens / s", f"{result['tokens_per_s']:.0f}")
    st.caption(f"Teacher {result['teacher']} · " + ", ".join(f"{k} {v}" for k, v in result["settings"].items()) + " · dropped: "
               + (", ".join(f"{n} {k.replace('drop_', '').replace('_', ' ')}" for k, n in result["dropped"].items()) or "none")
               + f" · dataset {result['dataset_dir']} (manifest.json beside it)")
    with open(f"{result['dataset_dir']}/data.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(next(handle)) for _ in range(min(5, result["rows"]))]
    st.dataframe([{"prompt": r["messages"][-2]["content"], "teacher's answer": r["messages"][-1]["content"]} for r in rows],
                 hide_index=True)
    if st.button("🏋️ Train a student on it (Train page, any method)", key=f"distill_seq_train_{run_dir.name}"):
        student = ModelSource("local", result["student_dir"]) if result.get("student_dir") else None
        send_recipe_to_train({"dataset": result["dataset_dir"], "name": "sequence-student"}, f"the teacher's answers ({run_dir.name})",
                             model=student)


def render_compare(run_dir, status, metrics: list[dict]) -> None:
    result = read_result(run_dir, "distill_compare")
    if result is None:
        return
    st.dataframe(pd.DataFrame(result["table"]), hide_index=True, width="stretch")
    st.plotly_chart(comparison_figure(result["table"]), width="stretch", key=f"distill_cmp_chart_{run_dir.name}")
    for row in result.get("replay", []):
        kept = row["general_within_3_points"] and row["keeps_task_gain"]
        (st.success if kept else st.warning)(f"{row['student']}: general score {row['general_vs_teacher']} points vs the teacher, "
                                             f"task gain {row['task_gain']} ({row['task_gain_without_replay']} without replay"
                                             + ("; no task gain to keep" if row["keeps_task_gain"] is None else "") + ")")
    with st.expander("Definitions"):
        st.markdown("\n".join(f"- **{k}**: {v}" for k, v in result["definitions"].items()))
    c1, c2, c3 = st.columns(3)
    c1.download_button("⬇ CSV", table_csv(result["table"]), f"{run_dir.name}.csv", "text/csv", key="distill_cmp_csv")
    c2.download_button("⬇ Markdown", table_markdown(result), f"{run_dir.name}.md", "text/markdown", key="distill_cmp_md")
    c3.download_button("⬇ JSON", table_json(result), f"{run_dir.name}.json", "application/json", key="distill_cmp_json")


st.title("⚗️ Distill into a smaller student")
st.caption("Logit: loss = (1 − λ)·CE(student, data) + λ·T²·KL(teacher^T ‖ student^T) — the whole softened distribution. "
           "Sequence-level: the teacher writes the answers, the student imitates the text. On-policy (GKD): the student "
           "writes, the teacher scores every token of what it wrote.")
st.dataframe(pd.DataFrame(VARIANT_GUIDE), hide_index=True, width="stretch")
st.caption("The student learns only what the data covers. Measured on the embedded model: a half-depth student after 30 steps "
           "on the demo tickets came close to the teacher on the tickets (answer loss 1.98 vs 1.68) while its general-text "
           "perplexity collapsed — mix general rows in (replay) and compare the variants below.")

make, compare, temperature = st.tabs(["Distill a student", "Compare the three", "What does the temperature do?"])

with make:
    variant = st.radio("Variant", VARIANTS, format_func=VARIANT_LABELS.get, horizontal=True, key="distill_variant")
    teacher = model_picker("Teacher", "distill_teacher")
    if variant == "sequence":
        values = spec_form(TeacherAnswersSpec, key_prefix="distill_seq", skip=("name",))
        if teacher is not None:
            try:
                spec = TeacherAnswersSpec.from_dict({**values, "teacher": teacher.as_dict(), "name": "sequence"})
                time_estimate("teacher_answers", spec)
                if st.button("Let the teacher answer", type="primary", key="distill_seq_start"):
                    start_run(spec, "distill_teacher_answers_run")
                    st.session_state["distill_runs_kind"] = "teacher_answers"
            except ValueError as exc:
                st.error(str(exc))
    else:
        skip = ("name", "method") + METHOD_ONLY["on_policy" if variant == "logit" else "logit"]
        values = spec_form(DistillSpec, key_prefix="distill", skip=skip)
        student_model = model_picker("Student model", "distill_student_model", default_choice=3, allow_adapter=False) \
            if values.get("student") == "model" else None
        if teacher is not None and (values.get("student") != "model" or student_model is not None):
            try:
                spec = DistillSpec.from_dict({**values, "method": variant, "teacher": teacher.as_dict(),
                                              "student_model": student_model.as_dict() if student_model else {},
                                              "name": f"{variant}-{values.get('steps')}"})
                time_estimate("distill", spec)
                if st.button("Start distillation", type="primary", key="distill_start"):
                    start_run(spec, "distill_run")
                    st.session_state["distill_runs_kind"] = "distill"
            except ValueError as exc:
                st.error(str(exc))

with compare:
    st.caption("The three variants for the same student (the teacher keeping every n-th layer) at a matched budget: the same "
               "starting weights, steps, batch size, max_length and learning rate. Scored by the forgetting report against the "
               "teacher, plus the teacher-student agreement on held-out prompts and the wall time.")
    cmp_teacher = model_picker("Teacher", "distill_cmp_teacher", help="Usually your fine-tuned model: Active model + trained adapter.")
    chosen = st.multiselect("Variants", VARIANTS, default=list(VARIANTS), format_func=VARIANT_LABELS.get, key="distill_cmp_variants")
    replay = st.multiselect("Replay shares (each variant is trained once per share)", [0.0, 0.1, 0.25, 0.5], default=[0.0],
                            format_func=lambda f: f"{f:.0%}", key="distill_cmp_replay")
    values = spec_form(DistillCompareSpec, key_prefix="distill_cmp", skip=("name", "variants", "replay_fractions"))
    if cmp_teacher is not None and chosen:
        try:
            cmp_spec = DistillCompareSpec.from_dict({**values, "teacher": cmp_teacher.as_dict(), "variants": chosen,
                                                     "replay_fractions": replay or [0.0], "name": "compare"})
            st.caption(f"{len(cmp_spec.students())} students × {cmp_spec.steps} steps, then one evaluation of all of them.")
            if st.button("Compare", type="primary", key="distill_cmp_start"):
                start_run(cmp_spec, "distill_compare_run")
                st.session_state["distill_runs_kind"] = "distill_compare"
        except ValueError as exc:
            st.error(str(exc))

with temperature:
    prompt = st.text_input("Prompt", "Name a colour of the sky.", key="distill_prompt")
    if st.button("Show the teacher's next token at T = 1, 2, 4", key="distill_show_t") and teacher is not None:
        try:
            loaded = cached_model(teacher)
            logits = next_token_logits(loaded.model, loaded.tokenizer, prompt)
            st.session_state["distill_t_table"] = (temperature_table(logits, loaded.tokenizer, (1, 2, 4)), entropy_by_temperature(logits))
        except ModelLoadError as exc:
            st.error(str(exc))
    if "distill_t_table" in st.session_state:
        rows, entropy = st.session_state["distill_t_table"]
        long = [{"token": r["token"], "temperature": t, "probability": r[t]} for r in rows for t in ("T=1", "T=2", "T=4")]
        st.plotly_chart(px.bar(long, x="token", y="probability", color="temperature", barmode="group",
                               title="Higher T moves probability from the top token onto the alternatives the student also learns from"),
                        width="stretch")
        st.caption("Entropy (nats): " + " · ".join(f"{k}: {v}" for k, v in entropy.items()))
        st.dataframe(rows, hide_index=True)

st.subheader("Runs")
kind = st.radio("Show", list(RUN_KINDS), format_func=RUN_KINDS.get, horizontal=True, key="distill_runs_kind")
session_key = {"distill": "distill_run", "teacher_answers": "distill_teacher_answers_run", "distill_compare": "distill_compare_run"}[kind]
run_dir = run_selector(kind, session_key)
if run_dir is not None:
    live_run(run_dir, {"distill": render_distill, "teacher_answers": render_answers, "distill_compare": render_compare}[kind])
