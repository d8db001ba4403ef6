"""Prune: magnitude, 2:4, channels, MLP neurons or attention heads; sparsity per layer, size, latency and the
forgetting report before / after; an optional short LoRA recovery fine-tune."""
from __future__ import annotations

import plotly.express as px
import streamlit as st

from core.prune import MODE_LABELS, MODES, TARGETS, PruneSpec
from core.prune.job import recovery_train_spec
from core.runs import read_result
from pages_common import (
    TRAIN_RUN,
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


def sparsity_heatmap(layers: list[dict]) -> None:
    modules = sorted({r["module"] for r in layers})
    numbered = sorted({r["layer"] for r in layers})
    grid = [[next((r["sparsity"] for r in layers if r["layer"] == n and r["module"] == m), None) for m in modules] for n in numbered]
    fig = px.imshow(grid, x=modules, y=[str(n) for n in numbered], zmin=0, zmax=1, color_continuous_scale="Blues",
                    labels={"x": "module", "y": "layer", "color": "sparsity"}, aspect="auto", title="Sparsity per layer")
    st.plotly_chart(fig, width="stretch")


def evaluation_table(evaluation: dict) -> None:
    st.markdown(f"**Forgetting report:** {evaluation.get('verdict', '—')}")
    task_rows_note(evaluation.get("task_dataset"))
    st.dataframe(evaluation.get("table", []), hide_index=True)


def recovery_button(pruned_dir: str, run_dir) -> None:
    st.caption("A short LoRA fine-tune on the pruned model can win back some quality. Merging that adapter into the "
               "weights fills the zeros again, so keep it as an adapter to keep the sparsity.")
    if st.button("Start a short LoRA recovery fine-tune", key=f"prune_recover_{run_dir.name}"):
        train_dir = start_run(recovery_train_spec(pruned_dir), TRAIN_RUN)  # the Train page opens this run
        st.success(f"Recovery run {train_dir.name} started: follow it on the Train page.")


def render_result(run_dir, status, metrics) -> None:
    report = read_result(run_dir, "prune")
    if report is None:
        done = [m for m in metrics if m.get("stage") == "prune"]
        if done:
            st.caption(f"{len(done)} weight matrices pruned so far")
        return
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Sparsity reached", f"{report['achieved_sparsity']:.1%}")
    c2.metric("Parameters", f"{report['parameters_after'] / 1e6:.2f} M",
              f"{(report['parameters_after'] - report['parameters_before']) / 1e6:+.2f} M", delta_color="inverse")
    c3.metric("Non-zero parameters", f"{report['nonzero_after'] / 1e6:.2f} M",
              f"{(report['nonzero_after'] - report['nonzero_before']) / 1e6:+.2f} M", delta_color="inverse")
    c4.metric("Size on disk", human_bytes(report["size_after_bytes"]), f"was {human_bytes(report['size_before_bytes'])}", delta_color="off",
              delta_arrow="off")
    before, after = report["latency_before"], report["latency_after"]
    c1, c2 = st.columns(2)
    c1.metric(f"Latency, {after['new_tokens']} tokens", f"{after['seconds']:.2f} s", f"{after['seconds'] - before['seconds']:+.2f} s",
              delta_color="inverse")
    c2.metric("Tokens / s", f"{after['tokens_per_s']:.1f}", f"{after['tokens_per_s'] - before['tokens_per_s']:+.1f}")
    (st.info if report["physically_smaller"] else st.warning)(report["speed_note"])
    st.caption(f"Pruned model's answer to the fixed prompt: {after['text']!r}")
    sparsity_heatmap(report["layers"])
    if report.get("evaluation"):
        evaluation_table(report["evaluation"])
    send_model_buttons(report["pruned_dir"], f"prune_send_{run_dir.name}")
    recovery_button(report["pruned_dir"], run_dir)


st.title("✂️ Prune a model")
st.caption("Remove weights, see where the sparsity went, what it did to size and speed on this machine, and what it cost in quality.")

source = model_picker("Model to prune", "prune_model")
mode = st.selectbox("Pruning mode", MODES, format_func=MODE_LABELS.get, key="prune_mode")
c1, c2 = st.columns(2)
if mode == "semi_structured_2_4":
    c1.caption("2:4 sparsity is 50 % by definition: 2 of every 4 consecutive weights.")
    sparsity = 0.5
else:
    sparsity = c1.slider("Sparsity", 0.05, 0.9, 0.5, 0.05, key="prune_sparsity",
                         help="Fraction of each selected matrix (or of the neurons / query heads in each group) removed.")
norm = c2.radio("Ranking norm", (1, 2), index=1, horizontal=True, key="prune_norm", format_func=lambda n: f"L{n}",
                disabled=mode in ("unstructured", "semi_structured_2_4"), help="Importance of a channel / neuron / head.")
target, pattern = "all_linear", ""
if mode in ("unstructured", "semi_structured_2_4", "channels"):
    target = st.radio("Layers", list(TARGETS), format_func=lambda t: TARGETS[t][0], horizontal=True, key="prune_target")
    if target == "custom":
        pattern = st.text_input("Layer-name pattern (regex)", r"mlp\.(gate|up)_proj", key="prune_pattern")
else:
    st.caption("This mode removes structures from every decoder layer and updates the config: the saved model is smaller.")
c1, c2 = st.columns(2)
evaluate = c1.checkbox("Score before / after with the forgetting report", value=True, key="prune_evaluate")
rows = c2.number_input("Evaluation rows", 1, 1000, 20, key="prune_eval_rows")
task_dataset = spec_form(PruneSpec, key_prefix="prune", skip=tuple(n for n in PruneSpec.__dataclass_fields__ if n != "task_dataset"),
                         columns=1)["task_dataset"] if evaluate else ""

spec = None
if source is not None:
    try:
        spec = PruneSpec(model=source.as_dict(), mode=mode, sparsity=float(sparsity), target=target, pattern=pattern,
                         norm=int(norm), evaluate=evaluate, eval_rows=int(rows), task_dataset=task_dataset, name=f"{mode}-{sparsity:g}")
    except ValueError as exc:
        st.error(str(exc))
if spec is not None:
    time_estimate("prune", spec)
if spec is not None and st.button("Start pruning", type="primary", key="prune_start"):
    start_run(spec, "prune_run")


st.subheader("Runs")
run_dir = run_selector("prune", "prune_run")
if run_dir is not None:
    live_run(run_dir, render_result)
