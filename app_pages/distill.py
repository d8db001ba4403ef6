"""Distill: a teacher's softened distributions taught to a smaller student, with live curves, the student
scored against the teacher, and a panel that shows what the temperature does."""
from __future__ import annotations

import plotly.express as px
import streamlit as st

from core.distill.spec import DistillSpec
from core.distill.temperature import entropy_by_temperature, next_token_logits, temperature_table
from core.models import ModelLoadError
from core.runs import read_result
from pages_common import cached_model, human_bytes, live_run, model_picker, run_selector, send_model_buttons, start_run


def curves(metrics: list[dict]) -> None:
    steps_rows = [m for m in metrics if "step" in m]
    if not steps_rows:
        return
    long = [{"step": m["step"], "series": k, "value": m[k]} for m in steps_rows for k in ("loss", "ce", "kl")]
    st.plotly_chart(px.line(long, x="step", y="value", color="series", title="Loss, cross-entropy and KL"), use_container_width=True)
    c1, c2 = st.columns(2)
    c1.plotly_chart(px.line(steps_rows, x="step", y="lr", title="Learning rate"), use_container_width=True)
    c2.plotly_chart(px.line(steps_rows, x="step", y="tokens_per_s", title="Tokens / s"), use_container_width=True)


def render_result(run_dir, status, metrics) -> None:
    curves(metrics)
    result = read_result(run_dir, "distill")
    if result is None:
        return
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Teacher parameters", f"{result['teacher_parameters'] / 1e6:.2f} M")
    c2.metric("Student parameters", f"{result['student_parameters'] / 1e6:.2f} M",
              f"{result['student_parameters'] / result['teacher_parameters'] - 1:+.0%}", delta_color="off")
    c3.metric("Held-out KL", f"{result['held_out_kl_end']:.4f}", f"{result['held_out_kl_end'] - result['held_out_kl_start']:+.4f}",
              delta_color="inverse")
    c4.metric("Training time", f"{result['train_seconds']:.0f} s")
    st.caption(f"Student: {result['student']} · {human_bytes(result.get('student_bytes'))} on disk")
    evaluation = result.get("evaluation")
    if evaluation:
        st.markdown(f"**Student vs teacher:** {evaluation.get('verdict', '—')}")
        st.dataframe(evaluation.get("table", []), hide_index=True)
    send_model_buttons(result["student_dir"], f"distill_send_{run_dir.name}")


st.title("⚗️ Distill into a smaller student")
st.caption("loss = (1 − λ)·CE(student, data) + λ·T²·KL(teacher^T ‖ student^T): the student learns the teacher's whole "
           "distribution, softened by the temperature T, not only its top token.")

teacher = model_picker("Teacher", "distill_teacher")
student_kind = st.radio("Student", ("shallow_copy", "model"), horizontal=True, key="distill_student",
                        format_func={"shallow_copy": "Shallower copy of the teacher", "model": "Another model (same tokenizer)"}.get)
stride, student_model = 2, None
if student_kind == "shallow_copy":
    stride = st.slider("Keep every n-th layer", 2, 6, 2, key="distill_stride",
                       help="The student keeps teacher layers 0, n, 2n, … and the last, initialised from the teacher's own weights.")
else:
    student_model = model_picker("Student model", "distill_student_model", default_choice=3, allow_adapter=False)
data = st.radio("Training data", ("demo", "dataset"), horizontal=True, key="distill_data",
                format_func={"demo": "Demo support tickets (assistant tokens)", "dataset": "A dataset file"}.get)
path = st.text_input("Dataset file or folder", key="distill_path") if data == "dataset" else ""
st.caption("The student learns only what this data covers. Measured on the embedded model: a half-depth student after "
           "30 steps on the demo tickets came close to the teacher on the tickets' answers (answer loss 1.98 vs 1.68) "
           "while its general-text perplexity collapsed; mix general conversations in and train far longer to keep both.")
c1, c2, c3 = st.columns(3)
temperature = c1.slider("Temperature T", 0.5, 8.0, 2.0, 0.5, key="distill_temperature")
alpha = c2.slider("λ (soft-target weight)", 0.0, 1.0, 0.5, 0.05, key="distill_alpha")
steps = c3.number_input("Steps", 1, 100_000, 60, key="distill_steps")
c1, c2, c3 = st.columns(3)
batch = c1.number_input("Batch size", 1, 256, 4, key="distill_batch")
lr = c2.number_input("Learning rate", 1e-6, 1e-2, 1e-4, format="%.0e", key="distill_lr")
max_length = c3.number_input("Max length", 16, 4096, 256, key="distill_max_length")
evaluate = st.checkbox("Score the student against the teacher with the forgetting report", value=True, key="distill_evaluate")

spec = None
if teacher is not None and (student_kind == "shallow_copy" or student_model is not None):
    try:
        spec = DistillSpec(teacher=teacher.as_dict(), student=student_kind, student_model=student_model.as_dict() if student_model else {},
                           layer_stride=int(stride), data=data, dataset_path=path, temperature=float(temperature), alpha=float(alpha),
                           steps=int(steps), batch_size=int(batch), learning_rate=float(lr), max_length=int(max_length),
                           evaluate=evaluate, name=f"distill-T{temperature:g}")
    except ValueError as exc:
        st.error(str(exc))
if spec is not None and st.button("Start distillation", type="primary", key="distill_start"):
    start_run(spec, "distill_run")

with st.expander("What does the temperature do? Try it on your own prompt", expanded=False):
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
        fig = px.bar(long, x="token", y="probability", color="temperature", barmode="group",
                     title="Higher T moves probability from the top token onto the alternatives the student also learns from")
        st.plotly_chart(fig, use_container_width=True)
        st.caption("Entropy (nats): " + " · ".join(f"{k}: {v}" for k, v in entropy.items()))
        st.dataframe(rows, hide_index=True)


st.subheader("Runs")
run_dir = run_selector("distill", "distill_run")
if run_dir is not None:
    live_run(run_dir, render_result)
