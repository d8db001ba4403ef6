"""AppTest of the Template page: chips for a demo row, and the policy toggle changes what is trained."""
from __future__ import annotations

import html
import re
from pathlib import Path

from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "template.py")


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def chips(at: AppTest) -> str:
    return next(h.proto.body for h in at.html if '<div class="tpl-chips">' in h.proto.body)


def test_template_page_draws_demo_row_and_policy_changes_trained_count(workspace, embedded_dir):
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["active_model"] = {"kind": "local", "ref": str(embedded_dir)}
    at.run()
    assert not at.exception, at.exception
    body = chips(at)
    n_chips = body.count('class="tpl-chip ')
    assert n_chips == int(metric(at, "Tokens")) > 100
    assert 'title="#0 · id ' in body and "role system" in body
    trained = int(metric(at, "Trained tokens"))
    assert body.count("tpl-chip trained") == trained > 10
    # The chips spell out the whole rendered conversation, the demo answer included.
    drawn = html.unescape(re.sub(r"<[^>]+>", "", body.split('<div class="tpl-chips">')[1])).replace("\u200b", "").replace("↵", "\n")
    rendered = next(c.value for c in at.code if "<|im_start|>system" in c.value)
    assert drawn.rstrip("\n") == rendered.rstrip("\n") and '"next_step": ' in drawn
    assert any("input_ids = [" in c.value for c in at.code)
    assert metric(at, "End-of-turn trained") == "yes"
    assert not at.error

    at.selectbox(key="tpl_policy").set_value("everything").run()
    assert not at.exception
    assert int(metric(at, "Trained tokens")) == int(metric(at, "Tokens")) > trained

    at.selectbox(key="tpl_policy").set_value("all_assistant")
    at.checkbox(key="tpl_train_eot").uncheck().run()
    assert int(metric(at, "Trained tokens")) == trained - 1  # "<|im_end|>" is one token
    assert metric(at, "End-of-turn trained") == "no"

    at.button(key="tpl_next").click().run()
    assert at.session_state["tpl_row"] == 1
    assert chips(at) != body

    at.checkbox(key="tpl_train_eot").check()
    at.selectbox(key="tpl_template").set_value("llama-3-instruct").run()
    assert not at.exception
    assert any("<|start_header_id|>assistant<|end_header_id|>" in c.value for c in at.code)
    assert "tpl-chip trained eot" in chips(at)  # "<|eot_id|>" is plain text to this tokenizer: several chips
    # the lint says which markers this tokenizer lacks and what to do (issue 29), not only "tokenizes differently"
    assert any("<|start_header_id|> (split into" in w.value and "model's own chat template" in w.value for w in at.warning)
    # labels short enough for their narrow columns (they were cut off: "Train end-of-t…")
    assert len(at.checkbox(key="tpl_train_eot").label) <= 14 and len(at.number_input(key="tpl_max_length").label) <= 14


def test_template_page_lints_and_flags_truncation(workspace, embedded_dir):
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["active_model"] = {"kind": "local", "ref": str(embedded_dir)}
    at.session_state["tpl_max_length"] = 64
    at.run()
    assert not at.exception, at.exception
    assert "Training would be refused" in " ".join(e.value for e in at.error)
    assert any("longer than max_length" in w.value for w in at.warning)
    assert int(metric(at, "Trained tokens")) == 0
    assert any("Packing preview" in c.value for c in at.caption)


def test_chip_html_escapes_text_and_carries_hover_details(embedded_tokenizer):
    from core.data.masking import encode_conversation
    from core.data.render import token_chips_html, token_table

    messages = [{"role": "user", "content": "<b>bold</b> & \"quotes\""}, {"role": "assistant", "content": "ok\nfine"}]
    row = encode_conversation(messages, embedded_tokenizer)
    body = token_chips_html(row, embedded_tokenizer)
    assert "<b>" not in body and "&lt;" in body and "&amp;" in body
    assert body.count('class="tpl-chip ') == row.n_tokens
    assert body.count("tpl-chip trained") == row.n_trained
    assert f"label {row.labels[-2]} · role assistant" in body and "label -100 · role user" in body
    table = token_table(row, embedded_tokenizer)
    assert "".join(t["token"] for t in table) == row.text
    assert [t["label"] for t in table] == row.labels
    assert token_chips_html(row, embedded_tokenizer, max_tokens=5).count('class="tpl-chip ') == 6  # 5 + "more"


def test_uploaded_bytes_load_like_a_file():
    import json

    from core.data.formats import load_uploaded

    data = json.dumps([{"prompt": "p", "completion": "c"}]).encode()
    loaded = load_uploaded("my data.json", data)
    assert loaded.source == "upload:my data.json" and loaded.detected_format == "prompt_completion"
    assert len(loaded.rows) == 1
