"""The Data page's panel for preference data: the checks of core.data.preference, before any model loads."""
from __future__ import annotations

import streamlit as st

from core.data.preference import check_preferences


def preference_panel(dataset) -> None:
    """Pairs: identical / empty sides, prompts that differ, late divergence, length bias. Unpaired: desirable vs undesirable."""
    report = check_preferences(dataset.rows)
    m = st.columns(3)
    if report.n_pairs:
        st.caption(f"Preference pairs (chosen vs rejected) · {report.n_pairs:,} pairs")
        m[0].metric("Pairs", f"{report.n_pairs:,}")
        m[1].metric("Chosen is longer", f"{report.chosen_longer_share:.0%}",
                    help="DPO is known to learn length: above ~70 % it is warned about.")
        m[2].metric("Identical pairs", f"{len(report.identical):,}")
    else:
        st.caption(f"Unpaired preference rows (KTO) · {report.n_desirable + report.n_undesirable:,} rows")
        m[0].metric("Desirable", f"{report.n_desirable:,}")
        m[1].metric("Undesirable", f"{report.n_undesirable:,}")
        m[2].metric("Desirable share", f"{report.desirable_share:.0%}")
    for level, message in report.findings():
        (st.error if level == "error" else st.warning)(message)
    if not report.findings():
        st.success("Preference checks passed: no identical or empty pairs, same prompt on both sides, no length bias.")
    if report.shared_prefix:
        with st.expander(f"Pairs that share a long start ({len(report.shared_prefix)})"):
            st.dataframe([i.as_dict() for i in report.shared_prefix], hide_index=True, width="stretch")
