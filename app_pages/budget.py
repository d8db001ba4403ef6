"""Budget: how much memory a fine-tune needs, split by component, where it fits, and how past runs compare."""
from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from core import decide, memory
from core.memory import distributed as memory_distributed
from core.models import ModelLoadError, ModelSource
from core.workspace import runs_dir
from pages_common import active_model_source, cached_arch, cached_hardware, remote_code_checkbox, send_recipe_to_train

TARGET_SETS = {"all-linear": "all-linear", "attention (q, k, v, o)": ("q_proj", "k_proj", "v_proj", "o_proj"),
               "q and v only": ("q_proj", "v_proj")}
SEQ_LENGTHS = [128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
RANKS = [4, 8, 16, 32, 64, 128, 256]


def choose_model() -> memory.ModelArch | None:
    presets = {p["name"]: p for p in memory.list_presets()}
    origin = st.radio("Model", ["Active model", "Preset", "Local folder or Hub id"], horizontal=True, key="budget_origin")
    try:
        if origin == "Preset":
            name = st.selectbox("Preset architecture", list(presets), index=list(presets).index("Llama-3.1 8B"), key="budget_preset")
            return memory.preset_arch(name)
        source = active_model_source()
        if origin == "Local folder or Hub id":
            text = st.text_input("Folder or Hub id", placeholder="/path/to/model or Qwen/Qwen2.5-7B", key="budget_ref")
            if not text.strip():
                st.info("Type a local model folder or a Hub id (the Hub is used only when reachable).")
                return None
            source = ModelSource.parse(text)
            if source.kind in ("local", "hub"):
                source = ModelSource(source.kind, source.ref, trust_remote_code=remote_code_checkbox("budget_trust"))
        return cached_arch(source)
    except (ModelLoadError, ValueError, KeyError, OSError) as exc:
        st.error(f"Cannot read that model's config: {exc}")
        return None


def settings(arch: memory.ModelArch, device: str) -> memory.MemorySpec:
    c1, c2, c3, c4 = st.columns(4)
    method = c1.selectbox("Method", memory.METHODS, index=1, format_func=memory.METHOD_LABELS.get, key="budget_method")
    devices = list(memory.DEVICES)
    device = c1.selectbox("Device", devices, index=devices.index(device), key="budget_device",
                          help="cpu: fp32 everything, no CUDA context. Defaults to this machine's device.")
    precisions = ["fp32"] if device == "cpu" else list(memory.PRECISIONS)
    precision = c2.selectbox("Precision", precisions, index=min(1, len(precisions) - 1), format_func=memory.PRECISION_LABELS.get,
                             key=f"budget_precision_{device}")
    optimizer = c2.selectbox("Optimizer", memory.OPTIMIZERS, format_func=memory.OPTIMIZER_LABELS.get, key="budget_optimizer")
    rank = c3.select_slider("LoRA rank r", RANKS, value=16, key="budget_rank", disabled=method == "full")
    targets = c3.selectbox("LoRA targets", list(TARGET_SETS) if not arch.fused_qkv else ["all-linear"], key="budget_targets",
                           disabled=method == "full")
    batch = c4.slider("Batch size", 1, 64, 4, key="budget_batch")
    seq = c4.select_slider("Sequence length", SEQ_LENGTHS, value=1024, key="budget_seq")
    c5, c6, c7, c8 = st.columns(4)
    ckpt = c5.checkbox("Gradient checkpointing", value=True, key="budget_ckpt")
    attention = c6.selectbox("Attention", memory.ATTENTIONS, index=1, key="budget_attention")
    chunked = c7.checkbox("Chunked loss (Liger / Unsloth)", key="budget_chunked")
    accumulation = c8.number_input("Gradient accumulation", 1, 512, 1, key="budget_accum")
    c9, c10 = st.columns(2)
    objective = c9.selectbox("Objective", memory.OBJECTIVES, format_func=memory.OBJECTIVE_LABELS.get, key="budget_objective",
                             help="Preference objectives put pairs through the model: the sequence length is then prompt + "
                                  "the longer answer.")
    precompute = c10.checkbox("Precompute reference log-probs", key="budget_precompute",
                              disabled=objective not in memory.REFERENCE_OBJECTIVES,
                              help="DPO / KTO: score the reference once before training instead of at every step.")
    grpo = objective == "grpo"
    completion = c9.number_input("GRPO: completion length", 1, 32768, 256, key="budget_completion", disabled=not grpo,
                                 help="max_completion_length: the sequence length above is then the prompt plus it (kept below it).")
    beta = c10.number_input("GRPO: beta (KL weight)", 0.0, 100.0, 0.0, key="budget_beta", disabled=not grpo,
                            help="Above 0 a reference scores every sampled completion (TRL's default 0 keeps none).")
    return memory.MemorySpec(arch, method=method, precision=precision, optimizer=optimizer, lora_r=rank, lora_targets=TARGET_SETS[targets],
                             batch_size=batch, seq_len=seq, gradient_checkpointing=ckpt, attention=attention, chunked_loss=chunked,
                             grad_accumulation=int(accumulation), device=device, objective=objective,
                             precompute_ref_log_probs=precompute and objective in memory.REFERENCE_OBJECTIVES,
                             completion_len=min(int(completion), seq - 1) if grpo else 0, beta=float(beta) if grpo else 0.0)


def objective_parts(est: memory.MemoryEstimate) -> None:
    """What the preference objective adds (core.memory's objective_parts), beside the components."""
    if not est.objective_parts:
        return
    label = memory.OBJECTIVE_LABELS[est.spec.objective]
    st.dataframe(pd.DataFrame([{f"{label} adds": name, "GB": value / memory.GB} for name, value in est.objective_parts.items()]),
                 hide_index=True, width="stretch", column_config={"GB": st.column_config.NumberColumn(format="%.3f")})


def stacked_bars(rows: list[dict], title: str):
    fig = px.bar(pd.DataFrame(rows), x="label", y="gb", color="component", title=title, labels={"gb": "GB (1e9 bytes)", "label": ""})
    fig.update_layout(barmode="stack", height=360, margin=dict(t=40, b=10))
    st.plotly_chart(fig, width="stretch")


def past_runs(est: memory.MemoryEstimate) -> None:
    st.subheader("Predicted vs measured on this machine")
    points = memory.past_run_calibration(runs_dir())
    if not points:
        st.caption("No finished run has recorded its peak memory yet. Every training run writes its predicted and measured peak to its run "
                   "card; they appear here.")
        return
    table = pd.DataFrame([{"run": p.run_id, "device": p.device, "predicted GB": p.predicted_bytes / memory.GB,
                           "measured GB": p.measured_bytes / memory.GB, "measured / predicted": p.ratio} for p in points])
    st.dataframe(table, hide_index=True, width="stretch")
    fig = px.scatter(table, x="predicted GB", y="measured GB", color="device", hover_name="run", title="Each dot is a finished run")
    top = float(max(table["predicted GB"].max(), table["measured GB"].max())) * 1.05
    fig.add_shape(type="line", x0=0, y0=0, x1=top, y1=top, line=dict(dash="dot"))
    st.plotly_chart(fig, width="stretch")
    factor = memory.correction_factor(points, est.spec.device)
    low, high = memory.CORRECTION_BOUNDS
    st.metric(f"Corrected estimate on {est.spec.device}", f"{memory.corrected_total(est, factor) / memory.GB:.2f} GB",
              f"× {factor:.2f} (median measured / predicted, bounded to {low}–{high})", delta_color="off", delta_arrow="off")


def across_gpus(spec: memory.MemorySpec) -> None:
    st.subheader("Across GPUs")
    if spec.device != "cuda":
        st.caption("DDP, ZeRO and FSDP divide GPU memory: choose device cuda above to see how many GPUs each strategy needs.")
        return
    names = [gpu.name for gpu in memory.COMMON_GPUS if gpu.name.startswith("NVIDIA")]
    gpu = st.selectbox("GPU model", names, index=names.index("NVIDIA H100 (80 GB)"), key="budget_multi_gpu")
    rows = memory_distributed.fits_by_gpu_count(spec, memory_distributed.gpu_capacity(gpu))
    st.dataframe(pd.DataFrame(memory_distributed.fits_matrix(rows)), hide_index=True, width="stretch")
    fewest = memory_distributed.fewest_gpus(rows)
    st.caption("Per-device peak and whether it fits one GPU of this model; nodes of 8 GPUs above 8. Fewest GPUs that fit: "
               + " · ".join(f"{name} {count or '—'}" for name, count in fewest.items())
               + ". Offload rows need the CPU memory per node shown in the Train page's pre-flight.")
    with st.expander("How the strategies divide the model state", expanded=False):
        st.markdown(memory_distributed.__doc__.split("\n\n", 1)[1])


FORMULAS = r"""
**Bytes per trainable parameter** (mixed precision + AdamW): weights 2 + gradients 2 + fp32 master copy 4 +
Adam's two fp32 moments 8 = **16 B**. A 7B model: 14 + 14 + 28 + 56 = **112 GB** before a single activation.
Frozen weights cost only themselves: fp32 4, bf16 2, int8 1, NF4 ≈ 0.5 B per parameter.

**LoRA** replaces the update of a $d_{out} \times d_{in}$ matrix by $B A$ with $A \in \mathbb{R}^{r \times d_{in}}$,
$B \in \mathbb{R}^{d_{out} \times r}$: $r (d_{in} + d_{out})$ trainable parameters — 65,536 instead of 16.8 M for a
4096 × 4096 matrix at $r = 8$. The update is scaled by $\alpha / r$, so doubling $r$ at fixed $\alpha$ halves each
direction's step; keep $\alpha = 2r$ and the learning rate (~2e-4, ten times a full fine-tune's) transfers.

**NF4 + double quantization** (QLoRA): 4-bit codes (0.5 B) plus one absmax per 64 weights. Stored in fp32 that is
32/64 = 0.5 bits per parameter; double quantization stores the absmax values in 8 bits with one fp32 constant per
256 blocks: $8/64 + 32/(64 \cdot 256) \approx 0.127$ bits. 70B weights: 280 / 140 / 70 / ~36 GB in fp32 / fp16 / int8 / NF4.

**Activations** grow with batch × sequence × layers; **logits** with batch × sequence × vocabulary (12 bytes each
at the start of backward) — large-vocabulary models need checkpointing and a chunked loss long before their weights fill the GPU.

**Preference objectives** (TRL): DPO / ORPO / SimPO put chosen and rejected through the model as one batch of
2 × batch rows, so activations double. DPO / KTO score log-probs through TRL's chunked head (a tile of at most 4096
positions × 32768 vocabulary entries, never the full logits) and run a no-grad forward of the reference on top of
the policy's activations; a full fine-tune's reference is a second copy of the weights, an adapter's a frozen copy of it.
"""

st.title("📐 Budget")
st.caption("Memory for full / LoRA / QLoRA training, split by component, from the model's config alone — the same estimator the Train "
           "page's pre-flight uses.")
hardware = cached_hardware()
arch = choose_model()
if arch is not None:
    counts = arch.param_counts()
    head = "tied to the embedding" if arch.tie_word_embeddings else f"{counts['lm_head'] / 1e6:.0f} M"
    st.caption(f"**{arch.name}** · {counts['total'] / 1e9:.3f} B parameters (embedding {counts['embedding'] / 1e6:.0f} M, "
               f"attention {counts['attention'] / 1e6:.0f} M, "
               f"MLP {counts['mlp'] / 1e6:.0f} M, norms {counts['norms'] / 1e3:.0f} K, lm_head {head})")
    spec = settings(arch, hardware.device if hardware.device in memory.DEVICES else "cpu")
    est = memory.estimate(spec)
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Peak memory", f"{est.total_bytes / memory.GB:.2f} GB")
    share = f"{100 * est.trainable_params / est.total_params:.2f} % of {est.total_params / 1e9:.2f} B"
    m2.metric("Trainable parameters", f"{est.trainable_params:,}", share, delta_color="off", delta_arrow="off")  # context: no arrow
    m3.metric("Activations + logits",
              f"{(est.phases[memory.PHASES[0]]['activations'] + est.phases[memory.PHASES[0]]['logits']) / memory.GB:.2f} GB")
    here = next(iter(memory.fit_table(est, hardware)), None)
    m4.metric("Fits this machine?", here["verdict"] if here else "unknown",
              f"{here['used']:.0%} of {here['memory_gb']} GB" if here and here["used"] is not None else None,
              delta_color="off", delta_arrow="off")
    st.caption(f"{est.note}.")
    objective_parts(est)
    left, right = st.columns(2)
    with left:
        stacked_bars(memory.breakdown_rows({memory.METHOD_LABELS[m]: e
                                            for m, e in memory.compare_methods(spec, ("full", "lora", "qlora")).items()}),
                     "Same settings, three methods (peak)")
    with right:
        stacked_bars(memory.breakdown_rows({memory.METHOD_LABELS[spec.method]: est}, phases=True), "The two candidate peaks of this run")
    st.subheader("Where it fits")
    st.dataframe(pd.DataFrame(memory.fit_table(est, hardware)), hide_index=True, width="stretch",
                 column_config={"used": st.column_config.ProgressColumn("share used", min_value=0.0, max_value=1.0, format="percent"),
                                "gpu": "device", "memory_gb": st.column_config.NumberColumn("memory (GB)", format="%.1f")})
    across_gpus(spec)
    with st.expander("How this number is made (assumptions)", expanded=False):
        for sentence in est.assumptions:
            st.markdown(f"- {sentence}")
    with st.expander("The formulas", expanded=False):
        st.markdown(FORMULAS)
    st.subheader("Inference")
    i1, i2, i3 = st.columns(3)
    fmt = i1.selectbox("Weights", memory.WEIGHT_FORMATS, index=2, key="budget_infer_format")
    context = i2.select_slider("Context length", SEQ_LENGTHS, value=4096, key="budget_infer_context")
    users = i3.slider("Concurrent sequences", 1, 64, 1, key="budget_infer_batch")
    parts = memory.inference_estimate(arch, fmt, users, context, device=spec.device)
    st.caption(" · ".join(f"{k.replace('_', ' ')} {v / memory.GB:.2f} GB" for k, v in parts.items())
               + " (KV cache = 2 × layers × kv heads × head dim × tokens × 2 bytes)")
    past_runs(est)
    if st.button("Use these settings on the Train page", type="primary", key="budget_to_train"):
        send_recipe_to_train(decide.recipe_from_memory_spec(spec), "the Budget page's settings")
