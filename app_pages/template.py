"""Template: every token of a row, coloured by whether the trainer learns it (label != -100)."""
from __future__ import annotations

import json

import plotly.graph_objects as go
import streamlit as st

from core.data.formats import DatasetLoadError
from core.data.lint import lint_dataset
from core.data.masking import POLICIES, REASONING_MODES, MaskingError, encode_row, has_tool_calls
from core.data.preference import as_conversation, encode_pair, is_pair
from core.data.render import legend_html, token_chips_html, token_table
from core.data.templates import load_template, propose_template, shipped_template_names
from core.models import ModelLoadError, ModelSource, load_tokenizer
from core.workspace import display_path
from pages_common import choose_dataset

MODEL_TEMPLATE = "The active model's own"
POLICY_HELP = {
    "all_assistant": "every assistant turn and its end-of-turn marker",
    "last_assistant": "only the final assistant turn",
    "completion_only": "everything after the prompt the model sees at inference",
    "everything": "every token, the prompt included (plain language modelling)",
}
REASONING_HELP = {
    "train": "train the think block with the answer",
    "mask": "think block is context (-100), the answer after it trained",
    "strip": "remove reasoning from the rows; the template's enable_thinking off",
}
LINT_SAMPLE = 500


@st.cache_resource(max_entries=4, show_spinner="Loading tokenizer…")
def cached_tokenizer(source_json: str):
    return load_tokenizer(ModelSource.from_dict(json.loads(source_json)))


@st.cache_data(max_entries=16, show_spinner="Linting the dataset…")
def cached_lint(source_hash: str, model_key: str, template: str, policy: str, max_length: int, train_eot: bool, reasoning: str, _rows,
                _tokenizer):
    return lint_dataset(_rows, _tokenizer, chat_template=template, policy=policy, max_length=max_length or None, train_eot=train_eot,
                        sample=LINT_SAMPLE, reasoning=reasoning)


def step(delta: int) -> None:
    st.session_state["tpl_row"] = (st.session_state["tpl_row"] + delta) % n_rows


st.title("🎨 Chat template & token mask")
st.caption("See exactly which tokens a training run learns from. The trainer calls the same function that draws this page.")


model_dict = st.session_state.get("active_model") or {}
model_key = json.dumps(model_dict, sort_keys=True)
try:
    tokenizer = cached_tokenizer(model_key)
    dataset = choose_dataset("tpl", demo_splits=("train", "eval"), label="Dataset", preference=True)
except (ModelLoadError, DatasetLoadError, ValueError) as exc:
    st.error(str(exc))
    st.stop()
if dataset is None:
    st.stop()
report = dataset.report
st.caption(f"**{display_path(dataset.source)}** · format `{dataset.detected_format}` · {report.summary()}")
if not dataset.rows:
    st.error("No valid row to show. The Data page lists each rejected row and why.")
    st.stop()
rows = [as_conversation(r) for r in dataset.rows] if dataset.detected_format == "unpaired" else dataset.rows  # KTO: prompt + completion

own_template = getattr(tokenizer, "chat_template", None)
template_names = ([MODEL_TEMPLATE] if own_template else []) + shipped_template_names()
if not own_template:  # a base model: start from the template its special tokens point to
    proposal = propose_template(tokenizer)
    template_names.insert(0, template_names.pop(template_names.index(proposal.name)))
    st.info(f"This tokenizer has no chat template (a base model). Proposed: **{proposal.name}**, because "
            f"{proposal.reason.removeprefix('the tokenizer has no chat template, and ')}. Training proposes the same one.")
c1, c2, c5, c3, c4 = st.columns([2, 2, 2, 1, 1.4])  # the last one wide enough for "Learn to stop" and its help icon
template_name = c1.selectbox("Chat template", template_names, key="tpl_template",
                             help="The model's own template, or one of the common templates shipped with the app.")
policy = c2.selectbox("What is trained", POLICIES, key="tpl_policy", format_func=lambda p: f"{p} — {POLICY_HELP[p]}")
max_length = int(c3.number_input("Max length", 0, 32768, 0, step=64, key="tpl_max_length",
                                 help="Tokens per row (the run spec's max_length); longer rows are cut. 0 = no limit."))
reasoning = c5.selectbox("Reasoning", REASONING_MODES, key="tpl_reasoning", format_func=lambda r: f"{r} — {REASONING_HELP[r]}",
                         help="What training does with <think> reasoning in the rows (the run spec's `reasoning`). Chat and evaluation "
                              "render prompts with the same setting.")
train_eot = c4.checkbox("Learn to stop", value=True, key="tpl_train_eot",
                        help="Train the end-of-turn marker that ends each answer (the run spec's train_eot), so generation stops.")
chat_template = own_template if template_name == MODEL_TEMPLATE else load_template(template_name)

n_rows = len(rows)
st.session_state.setdefault("tpl_row", 0)
st.session_state["tpl_row"] = min(st.session_state["tpl_row"], n_rows - 1)


nav = st.columns([1, 1, 3])
nav[0].button("◀ Previous", key="tpl_prev", on_click=step, args=(-1,))
nav[1].button("Next ▶", key="tpl_next", on_click=step, args=(1,))
index = int(nav[2].number_input(f"Row (0–{n_rows - 1})", 0, n_rows - 1, key="tpl_row"))

if is_pair(rows[index]):  # a preference pair: prompt masked, each side's answer in its colour, the first differing token outlined
    try:
        pair = encode_pair(rows[index], tokenizer, chat_template=chat_template, max_length=max_length or None, train_eot=train_eot,
                           reasoning=reasoning)
    except MaskingError as exc:
        st.error(f"Row {index}: {exc}")
        st.stop()
    st.caption("A pair trains only the final answer of each side (and its end-of-turn); the prompt is never trained, whatever the policy "
               "above.")
    m = st.columns(4)
    m[0].metric("Prompt tokens", pair.prompt_tokens)
    m[1].metric("Chosen trained", pair.chosen.n_trained)
    m[2].metric("Rejected trained", pair.rejected.n_trained)
    m[3].metric("Sides differ from token", pair.diverge)
    st.html(legend_html(pair=True))
    for side, encoded in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        st.markdown(f"**{side.capitalize()}**")
        st.html(token_chips_html(encoded, tokenizer, side=side, mark=pair.diverge))
    st.stop()

try:
    row = encode_row(rows[index], tokenizer, chat_template=chat_template, policy=policy, max_length=max_length or None, train_eot=train_eot,
                     reasoning=reasoning)
except MaskingError as exc:
    st.error(f"Row {index}: {exc}")
    st.stop()

m = st.columns(4)
m[0].metric("Tokens", row.n_tokens, delta=f"-{row.n_tokens_full - row.n_tokens} truncated" if row.truncated else None,
            delta_color="inverse")
m[1].metric("Trained tokens", row.n_trained)
m[2].metric("Trained share", f"{row.trained_share:.0%}")
m[3].metric("End-of-turn trained", "yes" if row.eot_trained else "no")
for note in row.notes:
    st.info(note)
if row.n_trained == 0:
    st.warning("This row has no trained token: it costs compute and teaches nothing.")
source_row = rows[index]
tool_row = has_tool_calls(source_row.get("messages", [])) or bool(source_row.get("tools"))
if tool_row:
    calls = sum(len(m.get("tool_calls") or ()) for m in source_row.get("messages", []))
    results = sum(m["role"] == "tool" for m in source_row.get("messages", []))
    st.caption(f"🛠️ This row has {calls} tool call(s), {results} tool result(s) and {len(source_row.get('tools') or [])} tool "
               "definition(s), passed to the template as at inference. The calls are trained; tool results never are.")
reasoning_row = any(s.part == "reasoning" for s in row.segments) or bool(row.reasoning_turns)
if row.reasoning_dropped:
    st.warning(f"The reasoning of turn(s) {row.reasoning_dropped} is not in the rendered text: this template drops it. The lint below says "
               "why.")
st.html(legend_html(tools=tool_row, reasoning=reasoning_row))
st.html(token_chips_html(row, tokenizer))

with st.expander("Raw arrays: input_ids and labels"):
    st.code(f"input_ids = {row.input_ids}\nlabels    = {row.labels}", language="python")
    st.dataframe(token_table(row, tokenizer), hide_index=True, width="stretch")
with st.expander("Rendered text (what the tokenizer sees)"):
    st.code(row.text, language=None)

st.subheader("Dataset statistics and lint")
lint = cached_lint(dataset.source_hash, model_key, chat_template, policy, max_length, train_eot, reasoning, rows, tokenizer)
s = st.columns(4)
s[0].metric("Rows checked", f"{lint.n_checked} of {lint.n_rows}")
s[1].metric("Tokens", f"{lint.total_tokens:,}")
s[2].metric("Trained tokens", f"{lint.trained_tokens:,}")
s[3].metric("Trained share", f"{lint.trained_tokens / max(lint.total_tokens, 1):.0%}")
if (refusal := lint.refusal()):
    st.error(f"Training would be refused: {refusal}.")
for issue in lint.errors:
    st.error(f"{issue.message} — {issue.count} rows (e.g. rows {issue.rows})")
for issue in lint.warnings:
    st.warning(f"{issue.message} — {issue.count} rows (e.g. rows {issue.rows})")
if not lint.issues:
    st.success("No lint findings: every checked row trains its answer and its end-of-turn marker.")
edges, counts = lint.share_histogram()
width = 100 / len(edges)
figure = go.Figure(go.Bar(x=[e * 100 + width / 2 for e in edges], y=counts, width=width * 0.95, marker_color="#2e9e44"))
figure.update_layout(title="Trained-token share per row", xaxis=dict(title="share of the row's tokens that are trained", range=[0, 100],
                                                                     ticksuffix="%"),
                     yaxis_title="rows", height=300, margin=dict(t=40, b=40))
st.plotly_chart(figure, key="tpl_share_chart")
if lint.packing:
    p = lint.packing
    st.caption(f"Packing preview at max_length {p.max_length}: {p.n_rows} rows → {p.n_sequences} sequences "
               f"({p.rows_per_sequence:.1f} rows each, {p.fill:.0%} full; {p.n_truncated} rows truncated).")

with st.expander("Why masking matters", expanded=False):
    st.markdown("A causal language model is trained to predict each token from the ones before it. The mask "
                r"$m_t \in \{0, 1\}$ decides which predictions count in the loss:")
    st.latex(r"\mathcal{L} = -\sum_t m_t \,\log p_\theta(x_t \mid x_{<t})")
    st.markdown(
        "Tokens with label **-100** have $m_t = 0$: the model reads them as context but is not taught to write them. "
        "Masking the prompt spends the whole gradient on the answer; training the **end-of-turn** marker teaches the "
        "model to stop. A template that differs from the one used at inference, or rows truncated before the answer, "
        "silently train the wrong thing — the lint above catches those."
    )
