"""Reasoning-aware templates: think blocks in masking, the reasoning setting (train / mask / strip), the reasoning lint,
inference prompts rendered like the training rows, and the Template page — with the real Qwen3 and DeepSeek-R1-distill
templates shipped in assets/chat_templates (copied from llama.cpp's models/templates)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.data.lint import lint_dataset
from core.data.masking import (
    IGNORE_INDEX,
    REASONING_TOKENIZER_KEY,
    encode_conversation,
    message_reasoning,
    reasoning_mode_of,
    render_conversation,
    strip_reasoning,
    template_reasoning_fields,
)
from core.data.render import token_chips_html, token_table
from core.data.templates import compact_template, load_template

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "template.py")
USER = {"role": "user", "content": "What is 2+2?"}
REASONING = "Add 2 and 2."
ANSWER = "Four."
BLOCK = f"<think>\n{REASONING}\n</think>\n\n"
FIELD_ROW = [USER, {"role": "assistant", "content": ANSWER, "reasoning_content": REASONING}]
INLINE_ROW = [USER, {"role": "assistant", "content": f"<think>\n{REASONING}\n</think>\n\n{ANSWER}"}]
PLAIN_ROW = [USER, {"role": "assistant", "content": ANSWER}]


def trained_spans(row) -> list[str]:
    """The rendered text of each maximal run of trained tokens."""
    return [row.text[row.offsets[a][0]:row.offsets[b - 1][1]] for a, b in row.trained_runs()]


def reasoning_tokens(row) -> list[tuple[str, int]]:
    return [(row.text[s:e], label) for (s, e), span, label in zip(row.offsets, row.spans, row.labels) if span.part == "reasoning"]


def kinds(report) -> set[str]:
    return set(report.issues)


# (template, row, what each setting trains). The embedded tokenizer is ChatML (<|im_end|> is its end-of-turn token).
CASES = {
    "qwen3-field": ("qwen3", FIELD_ROW, {"train": [BLOCK + ANSWER + "<|im_end|>"], "mask": [ANSWER + "<|im_end|>"],
                                         "strip": [ANSWER + "<|im_end|>"]}),
    "qwen3-inline": ("qwen3", INLINE_ROW, {"train": [BLOCK + ANSWER + "<|im_end|>"], "mask": [ANSWER + "<|im_end|>"],
                                           "strip": [ANSWER + "<|im_end|>"]}),
    # the embedded model's own ChatML template writes content verbatim: the inline block is where the row put it
    "chatml-inline": (None, INLINE_ROW, {"train": [BLOCK + ANSWER + "<|im_end|>"], "mask": ["\n\n" + ANSWER + "<|im_end|>"],
                                         "strip": [ANSWER + "<|im_end|>"]}),
}


@pytest.mark.parametrize("mode", ["train", "mask", "strip"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_reasoning_setting_gives_the_exact_label_spans(embedded_tokenizer, case, mode):
    name, messages, expected = CASES[case]
    template = load_template(name) if name else None
    row = encode_conversation(messages, embedded_tokenizer, chat_template=template, reasoning=mode)
    assert trained_spans(row) == expected[mode]
    assert row.reasoning_turns == [1] and row.reasoning_dropped == []
    thinking = reasoning_tokens(row)
    if mode == "strip":
        assert REASONING not in row.text
        # Qwen3 writes an empty block into the last answer by itself; it is reasoning, and not trained under all_assistant
        assert all(label == IGNORE_INDEX and REASONING not in text for text, label in thinking)
        return
    assert REASONING in "".join(text for text, _ in thinking)
    if mode == "train":
        assert thinking and all(label != IGNORE_INDEX for _, label in thinking)
    else:
        assert thinking and all(label == IGNORE_INDEX for _, label in thinking)
    assert "".join(text for text, _ in thinking).startswith("<think>")


def test_mask_view_colours_reasoning_as_its_own_kind(embedded_tokenizer):
    qwen3 = load_template("qwen3")
    trained = encode_conversation(FIELD_ROW, embedded_tokenizer, chat_template=qwen3, reasoning="train")
    masked = encode_conversation(FIELD_ROW, embedded_tokenizer, chat_template=qwen3, reasoning="mask")
    trained_kinds = [t["kind"] for t in token_table(trained, embedded_tokenizer)]
    masked_kinds = [t["kind"] for t in token_table(masked, embedded_tokenizer)]
    n_reasoning = len(reasoning_tokens(trained))
    assert trained_kinds.count("trained_reasoning") == n_reasoning > 3 and "masked_reasoning" not in trained_kinds
    assert masked_kinds.count("masked_reasoning") == n_reasoning and "trained_reasoning" not in masked_kinds
    assert "trained" in masked_kinds and "masked" in masked_kinds  # the answer and the prompt keep their own kinds
    assert token_chips_html(trained, embedded_tokenizer).count("tpl-chip trained reasoning") == n_reasoning
    assert token_chips_html(masked, embedded_tokenizer).count("tpl-chip masked reasoning") == n_reasoning


def test_lint_names_the_empty_think_block_qwen3_inserts(embedded_tokenizer):
    qwen3 = load_template("qwen3")
    rows = [{"messages": PLAIN_ROW}] * 3
    # TRL #6361: under completion_only the block the template inserts into the answer is trained
    row = encode_conversation(PLAIN_ROW, embedded_tokenizer, chat_template=qwen3, policy="completion_only")
    assert trained_spans(row) == ["<think>\n\n</think>\n\n" + ANSWER + "<|im_end|>\n"]  # completion_only: to the end of the render
    report = lint_dataset(rows, embedded_tokenizer, chat_template=qwen3, policy="completion_only")
    issue = report.issues["think_block_trained"]
    assert issue.count == 3 and "empty think block" in issue.message and "'<think>\\n\\n</think>\\n\\n'" in issue.message
    # masked under all_assistant, yet the inference prompt (thinking on) never holds it
    report = lint_dataset(rows, embedded_tokenizer, chat_template=qwen3, policy="all_assistant")
    assert "think_block_trained" not in report.issues and report.count("think_block_context") == 3
    # strip: enable_thinking off, so the generation prompt ends with the same block and it is context everywhere
    for policy in ("all_assistant", "completion_only"):
        report = lint_dataset(rows, embedded_tokenizer, chat_template=qwen3, policy=policy, reasoning="strip")
        assert not {k for k in report.issues if "think" in k or "reasoning" in k}, report.issues
        row = encode_conversation(PLAIN_ROW, embedded_tokenizer, chat_template=qwen3, policy=policy, reasoning="strip")
        assert trained_spans(row) == [ANSWER + "<|im_end|>" + ("\n" if policy == "completion_only" else "")]
        prompt = render_conversation(PLAIN_ROW[:1], embedded_tokenizer, chat_template=qwen3, add_generation_prompt=True, reasoning="strip")
        assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") and row.text.startswith(prompt)


def test_lint_names_a_reasoning_field_the_template_does_not_read(embedded_tokenizer):
    qwen3 = load_template("qwen3")
    assert template_reasoning_fields(embedded_tokenizer, chat_template=qwen3) == ("reasoning_content", "inline")
    thinking_row = [USER, {"role": "assistant", "content": ANSWER, "thinking": REASONING}]
    row = encode_conversation(thinking_row, embedded_tokenizer, chat_template=qwen3)
    assert REASONING not in row.text and row.reasoning_dropped == [1]
    report = lint_dataset([{"messages": thinking_row}], embedded_tokenizer, chat_template=qwen3)
    message = report.issues["reasoning_dropped"].message
    assert "field 'thinking'" in message and "reads the field 'reasoning_content'" in message and "rename" in message
    # the same reasoning under the key the template reads reaches the text, and the lint is quiet about it
    report = lint_dataset([{"messages": FIELD_ROW}], embedded_tokenizer, chat_template=qwen3)
    assert not {k for k in report.issues if "think" in k or "reasoning" in k}, report.issues


def test_r1_distill_template_drops_reasoning_and_opens_a_think_block_at_inference(embedded_tokenizer):
    r1 = load_template("deepseek-r1-distill-qwen")
    assert template_reasoning_fields(embedded_tokenizer, chat_template=r1) == ()
    row = encode_conversation(INLINE_ROW, embedded_tokenizer, chat_template=r1)
    assert REASONING not in row.text and row.reasoning_dropped == [1]
    report = lint_dataset([{"messages": INLINE_ROW}], embedded_tokenizer, chat_template=r1)
    assert "writes no reasoning at all" in report.issues["reasoning_dropped"].message
    mismatch = report.issues["reasoning_inference_mismatch"]  # ms-swift #9875: a prefix trained that inference never produces
    assert mismatch.severity == "error" and "'<think>\\n'" in mismatch.message and "inference_mismatch" not in report.issues


def test_lint_duplicated_block_history_dropped_and_reasoning_masked_against_the_setting(embedded_tokenizer):
    qwen3 = load_template("qwen3")
    both = [USER, {"role": "assistant", "content": f"<think>\nAdd.\n</think>\n\n{ANSWER}", "reasoning_content": REASONING}]
    report = lint_dataset([{"messages": both}], embedded_tokenizer, chat_template=qwen3)
    assert report.count("think_block_duplicated") == 1
    two_turns = [USER, {"role": "assistant", "content": ANSWER, "reasoning_content": REASONING}, {"role": "user", "content": "And 3+3?"},
                 {"role": "assistant", "content": "Six.", "reasoning_content": "Add 3 and 3."}]
    row = encode_conversation(two_turns, embedded_tokenizer, chat_template=qwen3)
    assert row.reasoning_dropped == [1] and "Add 3 and 3." in row.text
    assert lint_dataset([{"messages": two_turns}], embedded_tokenizer, chat_template=qwen3).count("reasoning_history_dropped") == 1
    assert "reasoning_history_dropped" not in lint_dataset([{"messages": two_turns}], embedded_tokenizer, chat_template=qwen3,
                                                           policy="last_assistant").issues
    # A template whose {% generation %} block covers only the answer: 'train' cannot train the reasoning, and the lint says so.
    generation_only_answer = (
        "{% for m in messages %}{% if m.role == 'assistant' %}{{ '<|im_start|>assistant\n<think>\n' + m.reasoning_content + "
        "'\n</think>\n\n' }}{% generation %}{{ m.content + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
        "{% else %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    report = lint_dataset([{"messages": FIELD_ROW}], embedded_tokenizer, chat_template=generation_only_answer, reasoning="train")
    assert report.count("reasoning_masked_against_choice") == 1
    assert "reasoning_masked_against_choice" not in lint_dataset([{"messages": FIELD_ROW}], embedded_tokenizer, chat_template=qwen3).issues


def test_inference_prompt_follows_the_setting_training_saved(embedded_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from core.generation import prompt_ids

    qwen3 = load_template("qwen3")
    embedded_tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.update(chat_template=qwen3, **{REASONING_TOKENIZER_KEY: "strip"})  # what the Train job writes for reasoning: strip
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    trained = AutoTokenizer.from_pretrained(tmp_path)
    assert reasoning_mode_of(trained) == "strip" and reasoning_mode_of(embedded_tokenizer) == "train"
    row = encode_conversation(PLAIN_ROW, trained, chat_template=qwen3)  # the rows, rendered as the run rendered them
    ids = prompt_ids(PLAIN_ROW[:1], trained)  # the Chat / Evaluate path, nothing passed
    assert trained.decode(ids, skip_special_tokens=False).endswith("<think>\n\n</think>\n\n")
    assert row.text.startswith(trained.decode(ids, skip_special_tokens=False))
    assert prompt_ids(PLAIN_ROW[:1], trained, reasoning="train") != ids  # thinking on: no empty block in the prompt


def test_reasoning_fields_survive_loading_and_strip_removes_them(tmp_path):
    from core.data.formats import load_dataset_file

    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"messages": [USER, {"role": "assistant", "content": ANSWER, "thinking": REASONING}]}) + "\n")
    messages = load_dataset_file(path).rows[0]["messages"]
    assert message_reasoning(messages[1]) == ("thinking", REASONING)
    assert strip_reasoning(messages)[1] == {"role": "assistant", "content": ANSWER}
    assert strip_reasoning(INLINE_ROW)[1]["content"] == ANSWER


def test_spec_reasoning_setting_is_checked():
    from core.train.spec import TrainSpec

    assert TrainSpec().reasoning == "train" and TrainSpec(reasoning="strip").reasoning == "strip"
    with pytest.raises(ValueError, match="reasoning"):
        TrainSpec(reasoning="hide")


def test_shared_templates_raise_no_reasoning_finding_on_plain_rows(shared_data, embedded_tokenizer):
    names = sorted(p.stem for p in (shared_data / "chat_templates").glob("*.jinja"))
    assert names
    for name in names:
        template = compact_template((shared_data / "chat_templates" / f"{name}.jinja").read_text())
        report = lint_dataset([{"messages": PLAIN_ROW}, {"messages": INLINE_ROW}], embedded_tokenizer, chat_template=template)
        assert not {k for k in report.issues if "think" in k or "reasoning" in k}, (name, report.issues)


def test_template_page_shows_the_reasoning_setting_and_lint(workspace, embedded_dir):
    folder = workspace / "datasets" / "reasoning"
    folder.mkdir(parents=True)
    rows = [{"messages": FIELD_ROW}, {"messages": [USER, {"role": "assistant", "content": ANSWER, "thinking": REASONING}]}]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["active_model"] = {"kind": "local", "ref": str(embedded_dir)}
    at.session_state["tpl_source"] = "Workspace dataset"
    at.session_state["tpl_template"] = "qwen3"
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="tpl_reasoning").value == "train"
    chips = next(h.proto.body for h in at.html if '<div class="tpl-chips">' in h.proto.body)
    assert "tpl-chip trained reasoning" in chips and any("reasoning (trained)" in h.proto.body for h in at.html)
    trained = int(next(m.value for m in at.metric if m.label == "Trained tokens"))
    assert any("field 'thinking'" in w.value and "rename" in w.value for w in at.warning)

    at.selectbox(key="tpl_reasoning").set_value("mask").run()
    assert not at.exception
    chips = next(h.proto.body for h in at.html if '<div class="tpl-chips">' in h.proto.body)
    assert "tpl-chip masked reasoning" in chips and "tpl-chip trained reasoning" not in chips
    assert int(next(m.value for m in at.metric if m.label == "Trained tokens")) < trained
