"""Evaluate: base vs fine-tuned on the task and on general ability, with a forgetting verdict and what to do."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from app_pages.evaluate_tabs.judge import render_judge_section, render_report_win_rates
from core.evaluate import charts
from core.evaluate.harness import lm_eval_available
from core.evaluate.report import metric_table, preference_lines, preference_table, render_html, render_markdown, top_changes
from core.evaluate.spec import EvalSpec
from core.evaluate.variants import evaluations_of, retrain_recipe, run_checkpoints, trained_base
from core.models import ModelSource
from core.runs import list_runs, read_result
from core.runs.card import source_run_of
from core.runs.spec import spec_fields
from pages_common import (
    EVAL_HANDOFF,
    active_model_source,
    live_run,
    model_picker,
    run_selector,
    send_recipe_to_train,
    start_run,
    time_estimate,
    trained_adapter_folders,
)

FIELDS = {f.name: f for f in spec_fields(EvalSpec)}
VERDICT_BOX = {"improved": st.success, "no effect": st.warning, "forgetting": st.error}


def number_input(name: str, column) -> float | int:
    info = FIELDS[name]
    numeric = float if info.type == "float" else int
    return column.number_input(name.replace("_", " ").capitalize(), min_value=numeric(info.min or 0), max_value=numeric(info.max),
                               value=numeric(info.default), help=info.help, key=f"eval_{name}")


def runs_with_checkpoints() -> dict[str, str]:
    return {f"{r.run_id} ({len(run_checkpoints(r.path))} checkpoints)": str(r.path)
            for r in list_runs("train") if run_checkpoints(r.path)}


def variant_widgets(base) -> tuple[list[dict], str]:
    """The fine-tuned variants ({label, model}) and an optional training run whose checkpoints to sweep."""
    adapters = trained_adapter_folders()
    preset = st.session_state.get("eval_adapter")
    default = [label for label, folder in adapters.items() if folder == preset]
    picked = st.multiselect("Adapters from finished training runs", list(adapters), default=default, key="eval_adapters",
                            help="Each goes on the model its run trained (usually the base above).")
    variants = [{"label": label.split(" ")[0],
                 "model": trained_base(Path(adapters[label]).parent, base).with_adapter(adapters[label]).as_dict()}
                for label in picked]
    c1, c2 = st.columns(2)
    folder = c1.text_input("…or an adapter folder", value=preset if preset and not default else "", key="eval_adapter_path",
                           placeholder="/path/to/adapter")
    if folder.strip():
        variants.append({"label": Path(folder.strip()).name or "adapter", "model": {"adapter": folder.strip()}})
    merged = c2.text_input("Merged / pruned / distilled model folder", value=st.session_state.get("eval_model_path", ""),
                           key="eval_merged_path", placeholder="/path/to/model-folder")
    if merged.strip():
        variants.append({"label": Path(merged.strip()).name or "merged", "model": {"kind": "local", "ref": merged.strip()}})
    sweeps = runs_with_checkpoints()
    sweep = st.selectbox("Learning-vs-forgetting curve: every checkpoint of", ["(none)"] + list(sweeps), key="eval_sweep")
    return _unique_labels(variants), sweeps.get(sweep, "")


def _unique_labels(variants: list[dict]) -> list[dict]:
    seen: dict[str, int] = {}
    for v in variants:
        seen[v["label"]] = seen.get(v["label"], 0) + 1
        if seen[v["label"]] > 1:
            v["label"] = f"{v['label']} #{seen[v['label']]}"
    return variants


def new_evaluation_form() -> None:
    base = model_picker("Base model", "eval_base", allow_adapter=False,
                        help="The model before fine-tuning; adapters are applied on top of it.")
    variants, checkpoints_of = variant_widgets(base or active_model_source())
    task = st.text_input("Task dataset (held-out rows)", value=FIELDS["task_dataset"].default, key="eval_task_dataset",
                         help=FIELDS["task_dataset"].help)
    st.markdown("**Sample sizes** — the defaults finish in a few minutes on a laptop CPU with the embedded model; raise them for tighter "
                "intervals.")
    c = st.columns(4)
    sizes = {name: number_input(name, c[i % 4]) for i, name in enumerate(
        ("task_samples", "general_samples", "mc_samples", "max_new_tokens", "bootstrap_samples", "forgetting_threshold",
         "perplexity_threshold", "seed", "pair_samples"))}
    pairs = st.text_input("Preference pairs (held-out, optional)", key="eval_pairs_dataset", help=FIELDS["pairs_dataset"].help,
                          placeholder="empty: the pairs a preference-trained run held out")
    tasks = st.text_input("lm-eval tasks (optional, comma-separated)", key="eval_lm_tasks", placeholder="hellaswag, arc_easy")
    judged = st.checkbox("Judge: win rate over base (the embedded model compares each variant's answers with the base's)",
                         key="eval_judge", help=FIELDS["judge"].help)
    if tasks.strip() and not lm_eval_available():
        st.info("`lm-eval` is not installed: these tasks will be skipped (the report says so). `pip install lm-eval` to run them.")
    if base is not None and (variants or checkpoints_of):
        time_estimate("evaluate", {"base": base.as_dict(), "variants": variants, "checkpoints_of": checkpoints_of, **sizes})
    if st.button("▶ Run evaluation", type="primary", key="eval_launch", disabled=base is None or not (variants or checkpoints_of)):
        try:
            spec = EvalSpec(base=base.as_dict(), variants=variants, checkpoints_of=checkpoints_of, task_dataset=task.strip(),
                            pairs_dataset=pairs.strip(), lm_eval_tasks=[t for t in tasks.split(",") if t.strip()],
                            judge=ModelSource().as_dict() if judged else {}, **sizes)
        except ValueError as exc:
            st.error(str(exc))
            return
        start_run(spec, "eval_run")
        st.session_state.pop("eval_waiting_for", None)
        st.query_params["eval_run"] = Path(st.session_state["eval_run"]).name
        st.rerun()
    if not (variants or checkpoints_of):
        st.caption("Choose at least one fine-tuned variant: an adapter, a merged model, or a training run's checkpoints.")


def render_report(report: dict) -> None:
    for verdict in report["verdicts"]:
        VERDICT_BOX.get(verdict["verdict"], st.info)(f"**{verdict['headline']}**\n\n" + "\n".join(f"- {r}" for r in verdict["reasons"]))
        if verdict["verdict"] != "improved" or len(report["verdicts"]) == 1:
            with st.expander(f"What to do — {verdict['label']}", expanded=verdict["verdict"] == "forgetting"):
                st.markdown("\n".join(f"1. {a}" for a in verdict["advice"]))
                advice_buttons(report, verdict)
    st.caption(f"{report['task']['n']} task rows · {report['general']['n_texts']} general texts · {report['general']['n_mc']} "
               f"multiple-choice items · wall time {report['wall_seconds']:.0f} s")
    for figure in (charts.delta_bars(report), charts.metric_bars(report, "points"), charts.metric_bars(report, "perplexity"),
                   charts.checkpoint_curve(report)):
        if figure is not None:
            st.plotly_chart(figure, width="stretch")
    st.dataframe(pd.DataFrame(metric_table(report)), hide_index=True, width="stretch")
    render_report_win_rates(report)
    render_preference(report)
    render_examples(report)
    lm = report.get("lm_eval") or {}
    if lm.get("status") not in (None, "not requested"):
        st.info(f"lm-eval: {lm['status']} — {lm.get('note', '')}")
    with st.expander("Definitions"):
        st.markdown("\n".join(f"- **{k}**: {v}" for k, v in report["definitions"].items()))
    name = report["spec"].get("name") or "evaluation"
    c1, c2, c3 = st.columns(3)
    c1.download_button("⬇ Markdown", render_markdown(report), f"{name}-report.md", "text/markdown", key="eval_dl_md")
    c2.download_button("⬇ HTML", render_html(report), f"{name}-report.html", "text/html", key="eval_dl_html")
    c3.download_button("⬇ JSON", json.dumps(report, indent=2), f"{name}-report.json", "application/json", key="eval_dl_json")


def render_preference(report: dict) -> None:
    """The preference section (a preference-trained variant, or a pairs file): pair accuracy per model."""
    if not report.get("preference"):
        return
    st.subheader("Preference: held-out pairs")
    st.markdown("\n".join(f"- {line}" for line in preference_lines(report)))
    figure = charts.pair_accuracy_bars(report)
    if figure is not None:
        st.plotly_chart(figure, width="stretch")
        st.dataframe(pd.DataFrame(preference_table(report)), hide_index=True, width="stretch")


def advice_buttons(report: dict, verdict: dict) -> None:
    """The advice that is a spec change, as one click: the Train page opens on the same run's spec with it applied."""
    for n, action in enumerate(verdict.get("actions") or []):
        recipe = retrain_recipe(report, verdict["label"], action["spec_updates"])
        if recipe is None:
            continue
        if st.button(f"🔁 {action['label']}", key=f"eval_action_{verdict['label']}_{n}",
                     help="Opens the Train page with this run's spec and "
                          + ", ".join(f"{k} = {v}" for k, v in action["spec_updates"].items())):
            model, spec = recipe
            send_recipe_to_train(spec, f"the forgetting report of {verdict['label']}", model=ModelSource.from_dict(model))


def render_examples(report: dict) -> None:
    variants = list(report["comparisons"])
    if not variants or not report.get("examples"):
        return
    label = st.selectbox("Per-example changes of", variants, key="eval_examples_variant") if len(variants) > 1 else variants[0]
    regressions, wins = top_changes(report, label, n=8)
    base = report["models"][0]["label"]
    for title, rows in (("Largest regressions", regressions), ("Largest wins", wins)):
        st.markdown(f"**{title}** ({len(rows)})")
        if rows:
            st.dataframe(pd.DataFrame([{"row": r["row"], "Δ score": round(100 * r["delta"]), "prompt": r["prompt"],
                                        "reference": r["reference"],
                                        "base answer": r["answers"][base], f"{label} answer": r["answers"][label]} for r in rows]),
                         hide_index=True, width="stretch")


def render_body(run_dir: Path, status, metrics_rows: list[dict]) -> None:
    report = read_result(run_dir, "evaluate")
    if report is None:
        if metrics_rows:
            st.dataframe(pd.DataFrame(metrics_rows), hide_index=True, width="stretch")
        return
    render_report(report)


st.title("📊 Evaluate: did fine-tuning help, and what did it cost?")
st.caption("The task score on held-out rows and a general score (multiple choice + perplexity on general text), "
           "base vs fine-tuned, with 95% bootstrap intervals. Forgetting = the general score drops by more than "
           "the threshold. Runs as a job: a refresh or a second tab reattaches to it.")

if st.query_params.get("eval_run"):  # a shared / reloaded link names the run to show
    named = next((r.path for r in list_runs("evaluate") if r.run_id == st.query_params["eval_run"]), None)
    if named is not None and "eval_run_seen" not in st.session_state:
        st.session_state["eval_run"] = str(named)
        st.session_state["eval_run_seen"] = True


if (handed := st.session_state.pop(EVAL_HANDOFF, None)) is not None:  # "📊 Evaluate it" on another page
    own = evaluations_of(handed, list_runs("evaluate"))
    st.session_state["eval_run"] = str(own[0].path) if own else None
    st.session_state["eval_waiting_for"] = None if own else handed

waiting = st.session_state.get("eval_waiting_for")  # a model handed over that has no evaluation yet
with st.expander("New evaluation", expanded=not list_runs("evaluate") or bool(waiting)):
    new_evaluation_form()

run_dir = None
if waiting:
    named = f"run {source_run_of(waiting)}" if source_run_of(waiting) else f"`{Path(waiting).name}`"
    st.info(f"No evaluation of {named} yet: its model is chosen in the form above — ▶ Run evaluation scores it.")
    show_earlier = st.checkbox("Show earlier evaluations (other models)", key="eval_show_earlier")
if not waiting or show_earlier:
    run_dir = run_selector("evaluate", "eval_run", "Evaluation run")
if run_dir is not None:
    st.query_params["eval_run"] = run_dir.name
    live_run(run_dir, render_body)

st.divider()
render_judge_section()
