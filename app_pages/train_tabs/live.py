"""Train page: the run's live charts (the loss, the small charts, a preference run's own curves beside the reading
guide), the run header with the run it continues, and the "Continue from run …" field. Figures and texts are
core.train.live's; this module only places them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from core.runs import RunStatus, list_runs, read_spec_dict, run_command
from core.runs.spec import spec_fields
from core.runs.status import state_label
from core.train import TrainSpec
from core.train.live import (
    ADAPTER_PATH_LABEL,
    FRESH_ADAPTER_LABEL,
    GRPO_GUIDE,
    completions_table,
    continue_choices,
    continue_preset,
    grpo_figures,
    loss_figure,
    parent_run,
    preference_figures,
    reading_guide,
    small_figures,
)
from core.train.methods import method_info


def init_adapter_field(default: str, method: str, key: str) -> str:
    """init_adapter offered as "Continue from run …": this workspace's succeeded runs with an adapter, a fresh adapter, or a
    path. Methods that train the weights themselves (full, partial) cannot continue an adapter: the field is not shown."""
    if not method_info(method).peft:
        return ""
    choices = continue_choices(list_runs("train"))
    labels = [FRESH_ADAPTER_LABEL, *choices, ADAPTER_PATH_LABEL]
    preset = continue_preset(default, choices)
    label = st.selectbox("Continue from run …", labels, index=labels.index(preset), key=key,
                         help=next(i.help for i in spec_fields(TrainSpec) if i.name == "init_adapter"))
    if label == FRESH_ADAPTER_LABEL:
        return ""
    if label != ADAPTER_PATH_LABEL:
        return choices[label]
    return st.text_input("Adapter folder", value=default if preset == ADAPTER_PATH_LABEL else "", key=f"{key}_path",
                         placeholder="/path/to/adapter (holds adapter_config.json)").strip()


def run_header(run_dir: Path, spec: dict, status: RunStatus) -> None:
    """The run's header line; `status` is the one the live panel read for this render (pages_common.live_run's header)."""
    parent = parent_run(spec)
    st.caption(f"Headless: `{run_command(run_dir)}` · method {spec.get('method')} · objective {spec.get('objective') or 'sft'} · "
               f"state {state_label(status)}" + (f" · continues run [{parent}](?run={parent})" if parent else ""))


def live_charts(run_dir: Path, rows: list[dict]) -> None:
    log_scale = st.checkbox("Log-scale loss", key="train_log_scale")
    st.plotly_chart(loss_figure(rows, log_scale), key=f"train_loss_{run_dir.name}")
    figures = small_figures(rows)
    for row_start in (0, 2):
        cols = st.columns(2)
        for col, fig, n in zip(cols, figures[row_start:row_start + 2], range(row_start, row_start + 2)):
            col.plotly_chart(fig, key=f"train_small_{n}_{run_dir.name}")
    preference_panel(run_dir, rows)
    grpo_panel(run_dir, rows)


def grpo_panel(run_dir: Path, rows: list[dict]) -> None:
    """A GRPO run's curves with its reading guide, and the newest table of sampled completions with their rewards."""
    figures = grpo_figures(rows)
    if not figures:
        return
    guide = _curves_with_guide("**GRPO metrics** · one point per logged step", figures, f"train_grpo_{run_dir.name}")
    with guide:
        for line in GRPO_GUIDE:
            st.caption(line)
    table = completions_table(run_dir)
    if table:
        st.markdown(f"**Sampled completions** · step {table[0]['step']} · each reward, their weighted sum and the advantage "
                    "(completions.jsonl in the run folder, every completions_every steps)")
        st.dataframe(table, hide_index=True, width="stretch", key=f"train_completions_{run_dir.name}")


def preference_panel(run_dir: Path, rows: list[dict]) -> None:
    """A preference run's own curves with the reading guide beside them (an SFT run has none: nothing is drawn)."""
    figures = preference_figures(rows)
    if not figures:
        return
    guide = _curves_with_guide("**Preference metrics** · lines: train steps · dashed with markers: eval", figures,
                               f"train_pref_{run_dir.name}")
    with guide:
        for line in reading_guide(rows, read_spec_dict(run_dir)):
            if line.applies:
                st.warning(f"**This run:** {line.text}\n\n{line.detail}")
            else:
                st.caption(line.text)


def _curves_with_guide(title: str, figures: list, key: str) -> Any:
    """An objective's charts in the wide column; returns the narrow column, headed "Reading guide", for its lines."""
    st.markdown(title)
    charts, guide = st.columns([2, 1])
    for n, fig in enumerate(figures):
        charts.plotly_chart(fig, key=f"{key}_{n}")
    guide.markdown("**Reading guide**")
    return guide
