"""The rewards of a GRPO run on the Train form: choose rewards from core.rewards' registry, each with its weight and
parameters; the python reward (your own code) only after the same opt-in tick as the Rewards page. The widgets of a
reward's parameters are shared with the Rewards page (reward_param_widget)."""
from __future__ import annotations

import streamlit as st

from core.rewards import REWARDS, Reward, RewardParam

ALLOW_LABEL = "This code may run on my machine"
ALLOW_HELP = ("It runs in a separate Python process with the time and memory limits above, but it can still read and write your "
              "files: run only code you trust.")


def reward_param_widget(reward: Reward, p: RewardParam, column, key: str, default=None):
    """One widget for one parameter of a reward, sized by its kind and limits (core.rewards.RewardParam)."""
    default = p.default if default is None else default
    if p.kind == "bool":
        return column.checkbox(p.label, value=bool(default), help=p.help, key=key)
    if p.kind == "choice":
        return column.selectbox(p.label, p.choices, index=p.choices.index(default), help=p.help, key=key)
    if p.kind == "code":
        return column.text_area(p.label, value=default, height=180, help=p.help, key=key)
    if p.kind == "str":
        return column.text_input(p.label, value=default, help=p.help, key=key)
    if p.kind == "int":
        return int(column.number_input(p.label, value=int(default), min_value=int(p.min), max_value=int(p.max), step=1,
                                       help=p.help, key=key))
    return float(column.number_input(p.label, value=float(default), min_value=float(p.min), max_value=float(p.max),
                                     format="%.3g", help=p.help, key=key))


def rewards_field(default: dict, key: str) -> dict:
    """The spec's rewards ({rewards: [{name, params, weight}], allow_user_code}) as the form sets them. One entry per
    reward name (the Rewards page tries combinations of the same reward with different parameters; a YAML spec may list
    one twice)."""
    items = {item["name"]: item for item in (default or {}).get("rewards", [])}
    names = st.multiselect("Rewards", list(REWARDS), default=[n for n in items if n in REWARDS], key=key,
                           format_func=lambda n: f"{REWARDS[n].title} ({n})",
                           help="Each completion is scored by these (core.rewards, tried on the Rewards page); the reward GRPO "
                                "optimises is their weighted sum. The reference is the row's assistant answer.")
    chosen = []
    for name in names:
        reward, item = REWARDS[name], items.get(name, {})
        params = dict(item.get("params") or {})
        with st.container(border=True):
            st.caption(f"**{reward.title}** · {reward.explanation}")
            small = [p for p in reward.params if p.kind != "code"]
            cols = st.columns(3)
            weight = float(cols[0].number_input("Weight", value=float(item.get("weight", 1.0)), min_value=-100.0, max_value=100.0,
                                                step=0.5, key=f"{key}_{name}_weight", help="This reward's weight in the sum."))
            values = {p.name: reward_param_widget(reward, p, cols[(i + 1) % 3], f"{key}_{name}_{p.name}", params.get(p.name))
                      for i, p in enumerate(small)}
            values |= {p.name: reward_param_widget(reward, p, st, f"{key}_{name}_{p.name}", params.get(p.name))
                       for p in reward.params if p.kind == "code"}
        chosen.append({"name": name, "params": values, "weight": weight})
    allow = False
    if any(REWARDS[n].runs_user_code for n in names):
        allow = st.checkbox(ALLOW_LABEL, value=bool((default or {}).get("allow_user_code")), key=f"{key}_allow", help=ALLOW_HELP)
        if not allow:
            st.info("Your reward function runs only after you tick that it may run on this machine.")
    return {"rewards": chosen, "allow_user_code": allow}
