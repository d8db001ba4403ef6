"""Evaluate page: the Judge section. A local model compares two models' answers in both orders (core.evaluate.judge);
this module only lays out the form, starts the `judge` job and shows its result."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core.arena import arena_folder, list_arenas
from core.evaluate.judge import DEFAULT_RUBRIC, win_rate_line
from core.evaluate.judge_job import RUNTIMES, JudgeSpec
from core.runs import read_result
from core.runs.spec import spec_fields
from pages_common import live_run, model_picker, run_selector, start_run, time_estimate

FIELDS = {f.name: f for f in spec_fields(JudgeSpec)}


def _number(name: str, column, **kwargs):
    info = FIELDS[name]
    numeric = float if info.type == "float" else int
    return column.number_input(name.replace("_", " ").capitalize(), min_value=numeric(info.min or 0), max_value=numeric(info.max),
                               value=numeric(info.default), help=info.help, key=f"judge_{name}", **kwargs)


def new_judge_form() -> None:
    c1, c2 = st.columns(2)
    with c1:
        model = model_picker("Model X (its win rate is measured)", "judge_x", help=FIELDS["model"].help)
        temperature_x = _number("model_temperature", st, step=0.1)
    with c2:
        baseline = model_picker("Model Y (compared with)", "judge_y", allow_adapter=False, help=FIELDS["baseline"].help)
        temperature_y = _number("baseline_temperature", st, step=0.1)
    c1, c2 = st.columns(2)
    with c1:
        judge = model_picker("Judge model", "judge_j", allow_adapter=False, help=FIELDS["judge"].help)
    runtime = c2.radio("Judge runs on", RUNTIMES, horizontal=True, key="judge_runtime", help=FIELDS["judge_runtime"].help)
    rubric = st.text_area("Rubric (editable; stored with the run)", value=DEFAULT_RUBRIC, height=220, key="judge_rubric",
                          help=FIELDS["rubric"].help)
    dataset = st.text_input("Eval prompts", value=FIELDS["eval_dataset"].default, key="judge_eval_dataset",
                            help=FIELDS["eval_dataset"].help)
    c = st.columns(3)
    sizes = {name: _number(name, c[i]) for i, name in enumerate(("samples", "max_new_tokens", "verdict_tokens"))}
    arenas = {f"arena {name}": str(arena_folder(name)) for name in list_arenas()}
    picked = st.selectbox("Human votes (optional, for judge-human agreement)", ["(none)", *arenas, "File or folder…"],
                          key="judge_votes_pick",
                          help=FIELDS["human_votes"].help)
    votes = arenas.get(picked, "") if picked != "File or folder…" else st.text_input("Vote file or folder", key="judge_human_votes")
    if None not in (model, baseline, judge):
        time_estimate("judge", {"model": model.as_dict(), "baseline": baseline.as_dict(), "judge": judge.as_dict(),
                                "judge_runtime": runtime, **sizes})
    if st.button("⚖ Run the judge", key="judge_launch", disabled=None in (model, baseline, judge)):
        try:
            spec = JudgeSpec(model=model.as_dict(), baseline=baseline.as_dict(), judge=judge.as_dict(), judge_runtime=runtime,
                             model_temperature=float(temperature_x), baseline_temperature=float(temperature_y),
                             rubric="" if rubric == DEFAULT_RUBRIC else rubric, eval_dataset=dataset.strip(),
                             human_votes=votes.strip(), **sizes)
        except ValueError as exc:
            st.error(str(exc))
            return
        start_run(spec, "judge_run")
        st.rerun()


def render_result(result: dict) -> None:
    rate = result.get("win_rate")
    c = st.columns(4)
    c[0].metric(f"Win rate of {result['model']}", f"{100 * rate['value']:.0f}%" if rate else "—",
                help=f"over {result['baseline']}: (wins + ties / 2) over the judged pairs; 95% bootstrap interval below")
    c[1].metric("Wins / losses / ties", f"{result['wins']} / {result['losses']} / {result['ties']}",
                help=f"{result['inconsistent']} of the ties: the two orders disagreed")
    c[2].metric("Unparsed", result["unparsed"], help="pairs with a reply that was not exactly A, B or tie: left out of the win rate")
    bias = result.get("position_bias")
    c[3].metric("Position bias", f"{100 * bias:.0f}%" if bias is not None else "—",
                help="share of pairs (both replies parsed) where the judge picked the same slot in both orders")
    if rate:
        st.caption(f"95% interval [{100 * rate['low']:.0f}%, {100 * rate['high']:.0f}%] over {rate['n']} judged pairs · judge "
                   f"{result['judge']} ({result['judge_runtime']}) · {'shipped' if result['rubric_is_default'] else 'edited'} rubric")
    for note in result.get("notes") or []:
        st.warning(note)
    agreement = result.get("agreement")
    if agreement:
        kappa, tau = agreement.get("kappa"), agreement.get("kendall_tau")
        st.markdown(f"**Judge vs people** on {agreement['n_pairs']} pairs people voted on: Cohen's κ "
                    f"{'—' if kappa is None else f'{kappa:.2f}'} (raw agreement {100 * (agreement['raw_agreement'] or 0):.0f}%), "
                    f"Kendall's τ on per-model strengths {'—' if tau is None else f'{tau:.2f}'}")
        for note in agreement.get("notes") or []:
            st.caption(note)
    elif result.get("human_votes"):
        st.info(f"No human vote matches these pairs ({result['human_votes']['votes']} votes read): agreement needs votes on the "
                "same prompt and the same two answers.")
    st.dataframe(pd.DataFrame([{"prompt": p["prompt"][-160:], "X answer": p["answer_a"], "Y answer": p["answer_b"],
                                "X shown first": p["first_reply"], "Y shown first": p["second_reply"],
                                "verdict": p["verdict"] or "unparsed",
                                **({"human": p.get("human", "")} if agreement else {})} for p in result["pairs"]]),
                 hide_index=True, width="stretch")
    with st.expander("Rubric used"):
        st.code(result["rubric"], language="markdown")


def _body(run_dir: Path, status, metrics_rows: list[dict]) -> None:  # noqa: ARG001 - live_run's signature
    result = read_result(run_dir, "judge")
    if result is not None:
        render_result(result)


def render_judge_section() -> None:
    st.subheader("⚖ Judge: win rate of one model over another")
    st.caption("Both models answer the eval prompts; a local judge model compares each pair twice, A first and B first. "
               "The same winner both times wins; two different verdicts are a tie; a reply other than A, B or tie is unparsed.")
    with st.expander("New judge run"):
        new_judge_form()
    run_dir = run_selector("judge", "judge_run", "Judge run")
    if run_dir is not None:
        live_run(run_dir, _body)


def render_report_win_rates(report: dict) -> None:
    """The forgetting report's win rate over base, when the evaluation named a judge."""
    judged = report.get("judge")
    if judged:
        st.markdown("\n".join(f"- {win_rate_line(label, summary, judged['judge'])}" for label, summary in judged["variants"].items()))
