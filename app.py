"""Post-Training Workbench: `streamlit run app.py` (or `make run`)."""
# pandas and transformers are imported once here, before any page or background thread: neither is safe to import for
# the first time from two threads at once, and Streamlit runs each session's script and the data check on threads of
# their own. transformers' lazy package raises "cannot import name 'AutoTokenizer'"; pandas, which plotly and
# st.dataframe import on first use, deadlocks on pandas.core.frame (a browser journey failed on it: "partially
# initialized module 'pandas'"). Everything after these lines only looks names up.
import pandas  # noqa: F401
import streamlit as st
import transformers  # noqa: F401

from core.serving import check_address
from pages_common import init_session_defaults, render_sidebar

st.set_page_config(page_title="Post-Training Workbench", page_icon="🧪", layout="wide")
allowed, exposure = check_address(st.get_option("server.address") or "", st.get_option("server.port"))
if not allowed:  # started by hand on a public address without the opt-in: serve nothing
    st.error(exposure)
    st.stop()
init_session_defaults()

PAGES = {
    "Plan": [
        st.Page("app_pages/decide.py", title="Decide", icon="🧭", default=True),
        st.Page("app_pages/budget.py", title="Budget", icon="📐"),
    ],
    "Data": [
        st.Page("app_pages/data.py", title="Data", icon="🗂️"),
        st.Page("app_pages/template.py", title="Template", icon="🎨"),
        st.Page("app_pages/rag.py", title="RAG / RAFT", icon="📚"),
    ],
    "Train": [
        st.Page("app_pages/train.py", title="Train", icon="🏋️"),
        st.Page("app_pages/compare.py", title="Compare methods", icon="⚖️"),
    ],
    "Prove": [
        st.Page("app_pages/evaluate.py", title="Evaluate", icon="📊"),
        st.Page("app_pages/chat.py", title="Chat", icon="💬"),
        st.Page("app_pages/rewards.py", title="Rewards", icon="🎯"),
    ],
    "Transform": [
        st.Page("app_pages/merge.py", title="Merge", icon="🔀"),
        st.Page("app_pages/prune.py", title="Prune", icon="✂️"),
        st.Page("app_pages/distill.py", title="Distill", icon="⚗️"),
    ],
    "Ship": [
        st.Page("app_pages/runs.py", title="Runs", icon="🗂️"),
        st.Page("app_pages/export.py", title="Export", icon="📦"),
    ],
}

# expanded: past ten pages Streamlit folds the rest behind "View more".
page = st.navigation(PAGES, expanded=True)
render_sidebar()
page.run()
