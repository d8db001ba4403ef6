"""Train: a run spec form generated from TrainSpec, pre-flight, launch, live charts, stop / resume / train more.

The page only writes spec.yaml and starts the worker (core.runs); everything it shows is read back from the
run folder, so a refresh or a second tab reattaches to the same run (its id is in the URL: ?run=<id>).
"""
from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from app_pages.train_tabs.live import init_adapter_field, live_charts, run_header
from app_pages.train_tabs.preflight import can_start, learning_rate_note, render_preflight
from app_pages.train_tabs.recipes import render_demo_recipes
from app_pages.train_tabs.rewards import rewards_field
from core.models import ModelSource
from core.runs import create_run, list_runs, relaunch, run_command, spec_to_yaml
from core.runs.spec import spec_fields
from core.train import TrainSpec, continue_updates, hardware_defaults
from core.train.distributed import processes_field
from core.train.launchers import launch_preview, write_launch_files
from core.train.live import PATH_LABEL, dataset_choices, live_summary, rank_rows, runs_table
from core.train.methods import hidden_fields, hidden_objective_fields, method_info, objective_info
from core.train.preflight import model_defaults
from core.train.spec import DEFAULT_REWARDS, GRPO_BETA
from core.train.trainer import resume_estimate_spec
from core.workspace import runs_dir
from pages_common import (
    TRAIN_RECIPE,
    TRAIN_RECIPE_ORIGIN,
    TRAIN_RUN,
    active_model_source,
    cached_hardware,
    form_problems,
    live_run,
    remember_run,
    reset_spec_form,
    send_model_buttons,
    spec_form,
    start_run,
    time_estimate,
)

FORM = "train_form"
FIELDS = {info.name for info in spec_fields(TrainSpec)}


@st.cache_data(show_spinner=False, max_entries=8)
def cached_model_defaults(source_json: str) -> tuple[dict, list[str]]:
    return model_defaults(ModelSource.from_dict(json.loads(source_json)), hardware)


def form_defaults(model: ModelSource) -> dict:
    """Hardware- and model-sized defaults, with the Decide page's recipe on top (applied once per new recipe)."""
    updates, notes = cached_model_defaults(json.dumps(model.as_dict(), sort_keys=True))
    for note in notes:
        st.info(note)
    defaults = {**vars(hardware_defaults(hardware)), **updates}
    recipe = {k: v for k, v in (st.session_state.get(TRAIN_RECIPE) or {}).items() if k in FIELDS}
    if recipe and st.session_state.get(f"{TRAIN_RECIPE}_applied") != recipe:
        reset_spec_form(TrainSpec, FORM)
        st.session_state[f"{TRAIN_RECIPE}_applied"] = recipe
    if recipe:
        made_for, origin = st.session_state.get(TRAIN_RECIPE_ORIGIN) or (None, "")
        origin = origin if made_for == st.session_state.get(TRAIN_RECIPE) else "the Decide page's recipe"
        st.info(f"Prefilled from {origin}: " + ", ".join(f"{k}={v}" for k, v in recipe.items()))
    return {**defaults, **recipe}


def dataset_field(default: str) -> str:
    choices = dataset_choices()
    labels = list(choices) + [PATH_LABEL]
    preset = next((label for label, value in choices.items() if value == default), PATH_LABEL)
    label = st.selectbox("Training data", labels, index=labels.index(preset), key="train_dataset_choice",
                         help="The demo task, a curated dataset from the Data page, or any JSONL / JSON / CSV / Parquet file.")
    if label != PATH_LABEL:
        return choices[label]
    return st.text_input("Dataset path", value=default if preset == PATH_LABEL else "", key="train_dataset_path",
                         placeholder="/path/to/train.jsonl").strip()


def run_body(run_dir: Path, status, rows: list[dict]) -> None:
    summary = live_summary(rows)
    backend = json.loads((run_dir / "backend.json").read_text()) if (run_dir / "backend.json").is_file() else {}
    for note in backend.get("notes", []):
        st.info(f"Backend {backend['backend']}: {note}")
    if status.is_active or summary.step:
        st.progress(summary.fraction, text=summary.label)
    cols = st.columns(4)
    cols[0].metric("Train loss", f"{summary.loss:.4f}" if summary.loss is not None else "—")
    cols[1].metric("Eval loss", f"{summary.eval_loss:.4f}" if summary.eval_loss is not None else "—")
    cols[2].metric("Tokens / s", f"{summary.tokens_per_s:.0f}" if summary.tokens_per_s else "—")
    cols[3].metric("Peak memory", f"{summary.peak_memory_gb:.2f} GB" if summary.peak_memory_gb else "—")
    ranks = rank_rows(run_dir)
    if len(ranks) > 1:
        st.dataframe(ranks, hide_index=True, width="stretch", key=f"train_ranks_{run_dir.name}",
                     column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0)})
    if rows:
        live_charts(run_dir, rows)
    if status.is_final:
        run_actions(run_dir, status)


def run_actions(run_dir: Path, status) -> None:
    has_checkpoint = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("checkpoint-*"))
    cols = st.columns(3)
    with cols[0]:  # the time each continuation takes, from this run's own pace (core.runs.eta's `resume`)
        if status.state in ("stopped", "failed"):
            time_estimate("resume", resume_estimate_spec(run_dir))
    more = cols[1].number_input("More steps", min_value=1, value=20, step=10, key="train_more_steps")
    with cols[2]:
        if has_checkpoint:
            time_estimate("resume", resume_estimate_spec(run_dir, int(more)))
    if status.state in ("stopped", "failed") and cols[0].button("⏯️ Resume", key="train_resume",
                                                                help="Continue from the newest checkpoint" if has_checkpoint
                                                                else "Start again"):
        relaunch(run_dir)
        st.rerun()
    if cols[2].button(f"➕ Train {more} more steps", key="train_more", disabled=not has_checkpoint):
        relaunch(run_dir, continue_updates(run_dir, int(more)))
        st.rerun()
    adapter, full_model = run_dir / "adapter", run_dir / "model"
    if status.state in ("succeeded", "stopped") and (adapter.is_dir() or full_model.is_dir()):
        send_model_buttons(str(adapter if adapter.is_dir() else full_model), "train")
        if st.button("📦 Export it", key="train_to_export", help="Merged safetensors, GGUF, Ollama Modelfile, recipes — each checked"):
            st.session_state["export_source_run"] = str(run_dir)
            st.switch_page("app_pages/export.py")


st.title("🏋️ Train")
st.caption("LoRA and its variants, the rest of the PEFT table ((IA)³, prompt / prefix tuning, LoHa, LoKr, BitFit), partial or "
           "full fine-tuning of the active model. The form is the run spec: the YAML below is what the worker runs, and the "
           "same file works from a terminal. **Compare methods** measures them side by side.")
hardware = cached_hardware()
render_demo_recipes()  # one click: SFT -> DPO on the demo tickets (app_pages/train_tabs/recipes.py)


# ---------------------------------------------------------------- new run
with st.expander("New run", expanded=not st.session_state.get(TRAIN_RUN)):
    model = active_model_source()
    st.markdown(f"**Model:** {model.label} ({model.kind}) — change it in the sidebar.")
    defaults = form_defaults(model)
    dataset = dataset_field(str(defaults.get("dataset", "")))
    method = method_info(st.session_state.get(f"{FORM}_method", defaults.get("method", "lora")))
    objective = st.session_state.get(f"{FORM}_objective", defaults.get("objective", "sft"))
    if objective == "grpo" and "beta" not in (st.session_state.get(TRAIN_RECIPE) or {}):
        defaults = {**defaults, "beta": GRPO_BETA}  # TRL's GRPO default: no reference model (DPO's 0.1 would add one)
    values = spec_form(TrainSpec, defaults, FORM, skip=("model", "dataset", "init_adapter", *hidden_fields(method.name),
                                                       *hidden_objective_fields(objective)),
                       overrides={"processes_per_node": processes_field(hardware)})
    if objective == "grpo":
        values["rewards"] = rewards_field(defaults.get("rewards") or DEFAULT_REWARDS, f"{FORM}_rewards")
        st.caption(f"**GRPO**: {objective_info('grpo').summary}. Thinking on / off for reasoning templates is the reasoning "
                   "field (strip = off). The prompts are the rows' turns before their last assistant answer, which is the reference.")
    values["init_adapter"] = init_adapter_field(str(defaults.get("init_adapter", "")), values["method"], f"{FORM}_init_adapter")
    st.caption(f"**{method.label}**: {method.summary}. A learning rate that suits it: {method.learning_rate:g}"
               + (f" · [paper]({method.paper})" if method.paper else "") + ("" if method.mergeable
                                                                            else " · cannot be merged into the weights"))
    try:
        if problems := form_problems(FORM):
            raise ValueError("; ".join(problems))
        spec = TrainSpec.from_dict({**values, "model": model.as_dict(), "dataset": dataset})
    except ValueError as exc:
        st.error(f"Check the form: {exc}")
        spec = None
    if spec is not None:
        st.markdown("**Pre-flight**")
        learning_rate_note(spec)
        check = render_preflight(spec, hardware)
        with st.expander("Command / YAML preview", expanded=spec.uses_launcher):
            st.code(spec_to_yaml(spec), language="yaml")
            st.caption("Save it as spec.yaml and run it headless (the worker runs in the foreground):")
            st.code("python -m core.train spec.yaml\n# or, for an existing run folder:\n" + run_command(runs_dir() / "<run-id>"),
                    language="bash")
            if spec.uses_launcher:
                st.caption("The worker starts the processes with this command and writes these files into the run's launch/:")
                previews = launch_preview(spec, hardware, runs_dir() / "<run-id>")
                for tab, (_title, language, text) in zip(st.tabs([p[0] for p in previews]), previews):
                    tab.code(text, language=language)
        if spec.num_nodes > 1 and st.button("📝 Create the run folder for the nodes", key="train_multinode"):
            run_dir = create_run(spec)
            write_launch_files(spec, run_dir, hardware)
            st.success(f"Written {run_dir}: start it on every node with launch/torchrun_node.sh <node_rank>, launch/slurm.sbatch or "
                       "launch/ray_train.py.")
        if st.button("▶️ Start training", type="primary", key="train_start", disabled=not can_start(check)):
            start_run(spec, TRAIN_RUN, query_param="run")
            st.rerun()


# ---------------------------------------------------------------- one run, live
train_runs = list_runs("train")
by_id = {run.run_id: run for run in train_runs}
selected = st.query_params.get("run") or Path(st.session_state.get(TRAIN_RUN) or "").name
if selected in by_id:
    st.session_state[TRAIN_RUN] = str(by_id[selected].path)
    run_dir = by_id[selected].path
    st.subheader(f"Run {selected}")
    spec_of_run = by_id[selected].spec
    live_run(run_dir, run_body, header=lambda folder, status: run_header(folder, spec_of_run, status))
elif selected:
    st.warning(f"Run {selected} no longer exists in this workspace (its folder was deleted or moved); open another run below.")

# ---------------------------------------------------------------- all runs
st.subheader("Runs")
if not train_runs:
    st.info("No training runs yet in this workspace.")
else:
    st.dataframe(runs_table(train_runs), hide_index=True, width="stretch")
    ids = list(by_id)
    choice = st.selectbox("Open a run", ids, index=ids.index(selected) if selected in ids else 0, key="train_open_choice")
    if st.button("Open", key="train_open") and choice != selected:
        remember_run(by_id[choice].path, TRAIN_RUN, query_param="run")
        st.rerun()
