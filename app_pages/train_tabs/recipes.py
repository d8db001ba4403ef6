"""The Train page's one-click recipes (core.train.recipes), a page module like live.py: SFT -> DPO on the demo tickets.

Both runs are ordinary runs of the workspace: the DPO run waits for the SFT run in its own worker, so closing the
browser changes nothing, and the Runs table below lists both (the DPO run reads "waiting for run <id>" meanwhile).
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.runs import read_status
from core.train.recipes import DEMO_DPO, DEMO_SFT_WEIGHT_WHY, demo_sft_dpo_specs, launch_sft_dpo
from pages_common import TRAIN_RUN, active_model_source, cached_hardware, remember_run

CHAIN_KEY = "train_chain_runs"  # the [sft, dpo] run folders this session started last


def render_demo_recipes() -> None:
    """An expander with the SFT -> DPO button and, once started, the two runs' states."""
    with st.expander("One click: SFT → DPO on the demo tickets", expanded=bool(st.session_state.get(CHAIN_KEY))):
        model = active_model_source()
        st.caption(f"Trains **{model.label}**: first SFT on the demo rows (this machine's defaults, as **Start training** with the "
                   f"demo data), then DPO from that run's adapter on the 200 demo pairs (beta {DEMO_DPO['beta']}, "
                   f"{DEMO_DPO['max_steps']} steps of {DEMO_DPO['batch_size']} pairs, sft_weight {DEMO_DPO['sft_weight']}: "
                   f"{DEMO_SFT_WEIGHT_WHY}). Both start now; the DPO run waits for the SFT run, even with this tab closed.")
        if st.button("▶️ Start SFT → DPO", key="train_chain_start"):
            sft, dpo = demo_sft_dpo_specs(model.as_dict(), cached_hardware())
            try:
                sft_dir, dpo_dir = launch_sft_dpo(sft, dpo)
            except (ValueError, OSError, RuntimeError) as exc:
                st.error(f"Could not start the recipe: {exc}")
                return
            st.session_state[CHAIN_KEY] = [str(sft_dir), str(dpo_dir)]
            remember_run(sft_dir, TRAIN_RUN, query_param="run")
            st.rerun()
        chain = [Path(p) for p in st.session_state.get(CHAIN_KEY) or [] if Path(p).is_dir()]
        for role, run_dir in zip(("SFT", "DPO"), chain):
            status = read_status(run_dir)
            st.markdown(f"**{role}** `{run_dir.name}` · {status.state}" + (f" · {status.message}" if status.message else "")
                        + (f" · {status.error}" if status.error else ""))
