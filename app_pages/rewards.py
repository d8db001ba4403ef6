"""Rewards: the named rewards (core.rewards) that Evaluate, the judge and GRPO share, each with a "try it" box: pick a
reward, set its parameters, paste a completion and its reference row, see the score or the row's error. The python
reward (your own function) runs in a separate process, and only once you tick that it may run on this machine."""
from __future__ import annotations

import json

import streamlit as st

from app_pages.train_tabs.rewards import ALLOW_HELP, ALLOW_LABEL, reward_param_widget
from core.rewards import REWARDS, Reward, RewardParam, make_scorer, reward_table, row_from_json

EXAMPLE_COMPLETION = '{"summary": "Printer offline on floor 3", "next_step": "Restart the print spooler", "urgency": "high"}'
EXAMPLE_ROW = json.dumps({"reference": {"summary": "Printer on floor 3 is offline", "next_step": "Restart the print spooler",
                                        "urgency": "high"}}, indent=2)
EXAMPLE_PARAMS = {"field_match": {"field": "urgency"}, "regex": {"pattern": r'"urgency":\s*"(low|medium|high)"'}}


def param_widget(reward: Reward, p: RewardParam, column):
    return reward_param_widget(reward, p, column, f"rw_{reward.name}_{p.name}", EXAMPLE_PARAMS.get(reward.name, {}).get(p.name))


def render_score(reward: Reward, params: dict, completion: str, row_text: str, allowed: bool) -> None:
    try:
        scorer = make_scorer(reward.name, params, allow_user_code=allowed)
        row = row_from_json(row_text)
        result = scorer.score_batch([completion], [row])[0]
    except (ValueError, PermissionError) as exc:  # a refused parameter or row: named in the message
        st.error(str(exc))
        return
    if result.error is not None:
        st.error(f"This row gets no score: {result.error}")
    else:
        st.metric("Score", f"{result.value:.3f}")


st.title("🎯 Rewards")
st.caption("One scoring vocabulary: the forgetting report's per-answer scores, the judge's criteria and GRPO's rewards are "
           "these named rewards. Each scores a completion against its reference row (the dataset row it answers); a "
           "weighted list of them is what a GRPO run optimises.")

with st.expander("Every reward", expanded=False):
    st.dataframe(reward_table(), hide_index=True, width="stretch")

name = st.selectbox("Reward", list(REWARDS), format_func=lambda n: f"{REWARDS[n].title} ({n})", key="rw_name")
reward = REWARDS[name]
st.caption(reward.explanation)

columns = st.columns(3)
small = [p for p in reward.params if p.kind != "code"]  # the code box takes the full width below them
params = {p.name: param_widget(reward, p, columns[i % 3]) for i, p in enumerate(small)}
params |= {p.name: param_widget(reward, p, st) for p in reward.params if p.kind == "code"}

left, right = st.columns(2)
completion = left.text_area("Completion (the model's reply)", value=EXAMPLE_COMPLETION, height=160, key="rw_completion")
row_text = right.text_area("Reference row (JSON)", value=EXAMPLE_ROW, height=160, key="rw_row",
                           help="The dataset row the completion answers. The reference answer is read from its "
                                "`reference` / `answer` / `solution` / … field, or the last assistant message.")

if reward.runs_user_code:
    allowed = st.checkbox(ALLOW_LABEL, value=False, key="rw_allow", help=ALLOW_HELP)
    if not allowed:
        st.info("Your function runs only after you tick that it may run on this machine.")
    elif st.button("Run it", key="rw_run", type="primary"):
        render_score(reward, params, completion, row_text, allowed)
else:
    render_score(reward, params, completion, row_text, False)
