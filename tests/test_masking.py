"""Masking: trained tokens are exactly the assistant contents plus their end-of-turn marker, for every template."""
from __future__ import annotations

from pathlib import Path

import pytest

from core.data.lint import lint_dataset
from core.data.masking import (
    IGNORE_INDEX,
    MaskingError,
    encode_conversation,
    encode_conversations,
    encode_row,
    encode_text,
    inference_prompt_ids,
    packing_preview,
    render_conversation,
)
from core.data.templates import compact_template, load_template, shipped_template_names, templates_dir

# End-of-turn marker each template writes after an assistant turn, with the embedded tokenizer
# (bos "<|im_start|>", eos "<|im_end|>"; tokens like <|eot_id|> are plain text to it, so the marker runs
# to the end of what the template writes after the content when the turn ends the conversation).
EXPECTED_EOT = {
    "alpaca": "<|im_end|>",
    "amberchat": "\n",
    "chatml": "<|im_end|>",
    "chatqa": "",
    "falcon-instruct": "",
    "gemma-it": "<end_of_turn>\n",
    "granite-3.0-instruct": "<|end_of_text|>\n",
    "llama-2-chat": " <|im_end|>",
    "llama-3-instruct": "<|eot_id|>",
    "mistral-instruct": "<|im_end|>",
    "openchat-3.5": "<|end_of_turn|>",
    "phi-3": "<|end|>\n",
    "phi-3-small": "<|end|>\n",
    "qwen2.5-instruct": "<|im_end|>",
    "saiga": "<|im_end|>",
    "solar-instruct": "\n\n",
    "vicuna": "<|im_end|>",
    "zephyr": "<|im_end|>",
}
TOOL_TEMPLATES = ["llama-3.1-tools"]  # ours, beside the shared collection (tests in test_tool_calls.py)
REASONING_TEMPLATES = ["deepseek-r1-distill-qwen", "qwen3"]  # real reasoning templates from llama.cpp (tests in test_reasoning.py)
UNTRIMMED = {"granite-3.0-instruct", "openchat-3.5", "qwen2.5-instruct"}

SYSTEM = {"role": "system", "content": "You are terse. Never use more than ten words."}
CONVERSATIONS = {
    "single": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "2+2 equals 4."},
    ],
    "multi": [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Name a colour and a fruit."},
        {"role": "assistant", "content": "  Blue.\n\nAlso ### Response: a pear, USER: no.  "},
    ],
}
CONVERSATIONS["single_system"] = [SYSTEM] + CONVERSATIONS["single"]
CONVERSATIONS["multi_system"] = [SYSTEM] + CONVERSATIONS["multi"]

CHATML_WITH_GENERATION = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GEMMA_STYLE_NO_SYSTEM = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def shared_template_names(shared: Path) -> list[str]:
    return sorted(p.stem for p in (shared / "chat_templates").glob("*.jinja"))


def expected_content(template: str, content: str) -> str:
    if template == "falcon-instruct":
        return content.replace("\r\n", "\n").replace("\n\n", "\n").strip()
    return content if template in UNTRIMMED else content.strip()


def assert_trained_exactly(row, tokenizer, targets: list[str]) -> None:
    """Each trained run decodes to its target with at most a partial boundary token on either side."""
    runs = row.trained_runs()
    assert len(runs) == len(targets), (runs, row.trained_texts(tokenizer), targets)
    for (start, end), target in zip(runs, targets):
        decoded = tokenizer.decode(row.input_ids[start:end], skip_special_tokens=False)
        at = decoded.find(target)
        assert at >= 0, (decoded, target)
        prefix, suffix = decoded[:at], decoded[at + len(target):]
        first = tokenizer.decode(row.input_ids[start:start + 1], skip_special_tokens=False)
        last = tokenizer.decode(row.input_ids[end - 1:end], skip_special_tokens=False)
        assert len(prefix) < len(first) or not prefix, (decoded, target)  # only part of the first token
        assert len(suffix) < len(last) or not suffix, (decoded, target)


def test_shipped_templates_are_the_shared_ones(shared_data):
    names = shared_template_names(shared_data)
    assert len(names) == 18
    assert shipped_template_names() == sorted(names + TOOL_TEMPLATES + REASONING_TEMPLATES)
    for name in names:
        assert (templates_dir() / f"{name}.jinja").read_text() == (shared_data / "chat_templates" / f"{name}.jinja").read_text()
    assert (templates_dir() / "LICENSE").read_text().startswith("MIT License")
    assert set(EXPECTED_EOT) == set(names)


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("template", sorted(EXPECTED_EOT))
def test_every_template_trains_exactly_assistant_content_and_eot(shared_data, embedded_tokenizer, template, conversation):
    chat_template = compact_template((shared_data / "chat_templates" / f"{template}.jinja").read_text())
    messages = CONVERSATIONS[conversation]
    row = encode_conversation(messages, embedded_tokenizer, chat_template=chat_template)
    eot = EXPECTED_EOT[template]
    targets = [expected_content(template, m["content"]) + eot for m in messages if m["role"] == "assistant"]
    assert_trained_exactly(row, embedded_tokenizer, targets)
    assert row.has_eot_marker == bool(eot)
    assert row.eot_trained == bool(eot)
    # The ids are exactly what transformers feeds the model for this template (no double BOS).
    reference = embedded_tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=True, return_dict=True)
    assert row.input_ids == list(reference["input_ids"])
    assert len(row.labels) == len(row.input_ids) == len(row.spans)
    assert all(label in (IGNORE_INDEX, i) for label, i in zip(row.labels, row.input_ids))
    # No system or user text is trained.
    trained = "".join(row.trained_texts(embedded_tokenizer))
    for m in messages:
        if m["role"] != "assistant":
            assert m["content"].strip() not in trained


@pytest.mark.parametrize("template", sorted(EXPECTED_EOT))
def test_layout_whitespace_versions_still_train_assistant_content(shared_data, embedded_tokenizer, template):
    """The template files as written (indented, multi-line) render extra whitespace; contents are still found."""
    raw = (shared_data / "chat_templates" / f"{template}.jinja").read_text()
    messages = CONVERSATIONS["multi_system"]
    row = encode_conversation(messages, embedded_tokenizer, chat_template=raw)
    texts = row.trained_texts(embedded_tokenizer)
    contents = [expected_content(template, m["content"]) for m in messages if m["role"] == "assistant"]
    assert len(texts) == len(contents)
    for text, content in zip(texts, contents):
        assert content in text
        assert EXPECTED_EOT[template].strip() in text


def test_spans_name_role_turn_and_part(embedded_tokenizer):
    messages = CONVERSATIONS["multi_system"]
    row = encode_conversation(messages, embedded_tokenizer)
    for span, label in zip(row.spans, row.labels):
        if label != IGNORE_INDEX:
            assert span.role == "assistant" and span.part in ("content", "eot") and span.turn in (2, 4)
    parts = {(s.role, s.part) for s in row.spans}
    assert {("system", "content"), ("user", "content"), ("assistant", "content"), ("assistant", "eot"), ("user", "template")} <= parts
    eot_tokens = [embedded_tokenizer.decode([i]) for i, s in zip(row.input_ids, row.spans) if s.part == "eot"]
    assert eot_tokens == ["<|im_end|>", "<|im_end|>"]


def test_default_system_prompt_injected_by_template_is_not_trained(embedded_tokenizer):
    """SmolLM2's own template adds a system prompt when none is given; Qwen2.5's too."""
    for template in (None, load_template("qwen2.5-instruct")):
        row = encode_conversation(CONVERSATIONS["single"], embedded_tokenizer, chat_template=template)
        assert "You are" in row.text
        assert row.trained_texts(embedded_tokenizer) == ["2+2 equals 4.<|im_end|>"]


def test_template_refusing_system_role_gets_it_folded(embedded_tokenizer):
    row = encode_conversation(CONVERSATIONS["single_system"], embedded_tokenizer, chat_template=GEMMA_STYLE_NO_SYSTEM)
    assert row.notes and "folded into the first user turn" in row.notes[0]
    assert f"{SYSTEM['content']}\n\nWhat is 2+2?" in row.text
    assert row.trained_texts(embedded_tokenizer) == ["2+2 equals 4.<end_of_turn>\n"]
    user_turn = {s.turn for s in row.spans if s.role == "user"}
    assert user_turn == {1}  # turn indices refer to the caller's messages


def test_template_raising_for_other_reasons_is_a_clear_error(embedded_tokenizer):
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]
    with pytest.raises(MaskingError, match="rejected this conversation: Conversation roles must alternate"):
        encode_conversation(bad, embedded_tokenizer, chat_template=load_template("llama-2-chat"))
    with pytest.raises(MaskingError, match="does not compile"):
        encode_conversation(CONVERSATIONS["single"], embedded_tokenizer, chat_template="{% for m in messages %}")
    assert encode_conversations([bad, CONVERSATIONS["single"]], embedded_tokenizer, chat_template=load_template("llama-2-chat"),
                                errors="skip")[0] is None


def test_generation_markers_match_transformers_assistant_mask(embedded_tokenizer):
    from core.data.formats import demo_dataset_path, load_dataset_file

    rows = [r["messages"] for r in load_dataset_file(demo_dataset_path("train"), limit=5).rows]
    rows += [CONVERSATIONS["multi"], CONVERSATIONS["multi_system"]]
    for messages in rows:
        ours = encode_conversation(messages, embedded_tokenizer, chat_template=CHATML_WITH_GENERATION)
        theirs = embedded_tokenizer.apply_chat_template(
            messages, chat_template=CHATML_WITH_GENERATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        assert ours.input_ids == list(theirs["input_ids"])
        assert [int(label != IGNORE_INDEX) for label in ours.labels] == list(theirs["assistant_masks"])
        assert ours.n_trained > 0 and ours.eot_trained
    multi = CONVERSATIONS["multi_system"]
    last = encode_conversation(multi, embedded_tokenizer, chat_template=CHATML_WITH_GENERATION, policy="last_assistant")
    assert last.trained_texts(embedded_tokenizer) == encode_conversation(multi, embedded_tokenizer).trained_texts(embedded_tokenizer)[1:]
    bare = encode_conversation(multi, embedded_tokenizer, chat_template=CHATML_WITH_GENERATION, train_eot=False)
    assert bare.trained_texts(embedded_tokenizer) == ["Hello! How can I help?", "\n  Blue.\n\nAlso ### Response: a pear, USER: no.  "]
    assert not bare.eot_trained


def test_policies_change_what_is_trained(embedded_tokenizer):
    messages = CONVERSATIONS["multi_system"]
    tok = embedded_tokenizer
    all_turns = encode_conversation(messages, tok)
    last = encode_conversation(messages, tok, policy="last_assistant")
    everything = encode_conversation(messages, tok, policy="everything")
    completion = encode_conversation(messages, tok, policy="completion_only")
    no_eot = encode_conversation(messages, tok, train_eot=False)
    # "\n  " is one token: the header's newline plus the content's leading spaces, so it is trained.
    answer = "\n  Blue.\n\nAlso ### Response: a pear, USER: no.  "
    assert all_turns.trained_texts(tok) == ["Hello! How can I help?<|im_end|>", answer + "<|im_end|>"]
    assert last.trained_texts(tok) == all_turns.trained_texts(tok)[1:]
    assert everything.n_trained == everything.n_tokens
    # everything the model writes after the generation prompt: the answer, its marker and the newline after it
    assert completion.trained_texts(tok) == [answer + "<|im_end|>\n"]
    assert no_eot.trained_texts(tok) == ["Hello! How can I help?", answer]
    assert not no_eot.eot_trained and all_turns.eot_trained
    assert no_eot.n_trained < last.n_trained + 20 < all_turns.n_trained + 20 < everything.n_trained
    with pytest.raises(ValueError, match="unknown masking policy"):
        encode_conversation(messages, tok, policy="assistant")


def test_truncation_is_reported_and_can_leave_nothing_trained(embedded_tokenizer):
    messages = CONVERSATIONS["multi_system"]
    full = encode_conversation(messages, embedded_tokenizer)
    cut = encode_conversation(messages, embedded_tokenizer, max_length=full.n_tokens - 3)
    assert cut.truncated and not full.truncated
    assert cut.n_tokens == full.n_tokens - 3 and cut.n_tokens_full == full.n_tokens
    assert cut.input_ids == full.input_ids[:-3] and cut.labels == full.labels[:-3]
    assert cut.n_trained == sum(1 for x in cut.labels if x != IGNORE_INDEX) < full.n_trained
    assert not cut.eot_trained  # the last marker was cut off
    tiny = encode_conversation(messages, embedded_tokenizer, max_length=10)
    assert tiny.truncated and tiny.n_trained == 0


def test_batch_equals_single_and_rows_dispatch(embedded_tokenizer):
    convs = [CONVERSATIONS[k] for k in sorted(CONVERSATIONS)]
    batch = encode_conversations(convs, embedded_tokenizer, policy="last_assistant", max_length=40)
    for messages, row in zip(convs, batch):
        single = encode_conversation(messages, embedded_tokenizer, policy="last_assistant", max_length=40)
        assert (row.input_ids, row.labels, row.truncated) == (single.input_ids, single.labels, single.truncated)
    assert encode_row({"messages": convs[0]}, embedded_tokenizer).input_ids == encode_conversation(convs[0], embedded_tokenizer).input_ids


def test_plain_text_rows_train_every_token_and_eos(embedded_tokenizer):
    row = encode_text("The quick brown fox.", embedded_tokenizer)
    assert row.n_trained == row.n_tokens and row.labels == row.input_ids
    assert row.input_ids[-1] == embedded_tokenizer.eos_token_id
    assert encode_row({"text": "The quick brown fox."}, embedded_tokenizer).input_ids == row.input_ids
    assert encode_text("word " * 50, embedded_tokenizer, max_length=8).truncated


def test_inference_prompt_is_a_prefix_of_training_ids(embedded_tokenizer):
    messages = CONVERSATIONS["single_system"]
    prompt = inference_prompt_ids(messages[:-1], embedded_tokenizer)
    row = encode_conversation(messages, embedded_tokenizer)
    assert row.input_ids[: len(prompt)] == prompt
    assert render_conversation(messages[:-1], embedded_tokenizer, add_generation_prompt=True).endswith("<|im_start|>assistant\n")


def test_a_template_of_another_family_names_the_markers_the_tokenizer_lacks(embedded_tokenizer):
    """Llama-3's template on the embedded ChatML tokenizer (issue 29): the warning says which markers are missing and what
    to do, not only that 'the generation prompt tokenizes differently'."""
    from core.data.lint import split_markers

    llama3 = lint_dataset([{"messages": CONVERSATIONS["single_system"]}], embedded_tokenizer,
                          chat_template=load_template("llama-3-instruct"))
    message = llama3.issues["inference_token_mismatch"].message
    assert "<|start_header_id|> (split into" in message and "<|eot_id|>" in message and "model's own chat template" in message
    assert split_markers(embedded_tokenizer, "<|im_start|>user\nhi<|im_end|>") == [], "ChatML's markers are this tokenizer's own"


def test_lint_reports_the_silent_failures(embedded_tokenizer):
    rows = [{"messages": CONVERSATIONS["single"]}, {"messages": CONVERSATIONS["single_system"]}, {"text": "plain text row"}]
    clean = lint_dataset(rows, embedded_tokenizer)
    assert clean.can_train and clean.refusal() is None and not clean.issues
    assert clean.n_checked == 3 and len(clean.trained_share) == 3 and 0 < clean.trained_tokens < clean.total_tokens

    # An answer starting with spaces: training merges "\n  " into one token the generation prompt never ends with.
    spaced = lint_dataset([{"messages": CONVERSATIONS["multi_system"]}], embedded_tokenizer)
    assert spaced.count("inference_token_mismatch") == 1 and spaced.can_train

    cut = lint_dataset(rows, embedded_tokenizer, max_length=12)
    assert cut.count("over_max_length") == 2 and cut.count("zero_trained") == 2  # the short text row fits
    assert cut.packing.n_sequences == 3 and cut.packing.n_truncated == 2

    no_marker = lint_dataset(rows[:2], embedded_tokenizer, chat_template=load_template("chatqa"))
    assert no_marker.count("no_eot_marker") == 2
    off = lint_dataset(rows[:2], embedded_tokenizer, train_eot=False)
    assert off.count("eot_not_trained") == 2 and "train_eot is off" in off.issues["eot_not_trained"].message

    # A template whose generation prompt is not what training shows the model.
    mismatched = load_template("chatml").replace("'<|im_start|>assistant\\n'", "'<|im_start|>bot\\n'")
    assert mismatched != load_template("chatml")
    bad = lint_dataset(rows[:2], embedded_tokenizer, chat_template=mismatched)
    assert bad.count("inference_mismatch") == 2 and bad.issues["inference_mismatch"].severity == "error"

    failing = lint_dataset([{"messages": CONVERSATIONS["single_system"]}], embedded_tokenizer, chat_template="{{ raise_exception('no') }}")
    assert (failing.n_checked, failing.n_encoded, failing.count("encode_failed")) == (1, 0, 1)
    assert not failing.can_train and "could be encoded" in failing.refusal()
    nothing = lint_dataset(rows[:2], embedded_tokenizer, max_length=5)
    assert not nothing.can_train and "learn nothing" in nothing.refusal()
    edges, counts = clean.share_histogram(10)
    assert len(edges) == len(counts) == 10 and sum(counts) == 3


def test_packing_preview_counts_rows_per_sequence():
    preview = packing_preview([60, 60, 40, 40, 300], max_length=128)
    assert preview.n_rows == 5 and preview.n_truncated == 1
    assert preview.n_sequences == 3  # 128 | 60+60 | 40+40 (first-fit decreasing)
    assert preview.rows_per_sequence == pytest.approx(5 / 3)
    assert preview.fill == pytest.approx((128 + 200) / (3 * 128))


def test_no_double_bos_when_the_tokenizer_adds_one_itself(embedded_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_dir), add_bos_token=True)
    assert tokenizer("hi").input_ids[0] == tokenizer.bos_token_id  # this tokenizer would add BOS on its own
    for name in ("llama-2-chat", "mistral-instruct", "chatml"):
        row = encode_conversation(CONVERSATIONS["multi"], tokenizer, chat_template=load_template(name))
        assert row.text.startswith(tokenizer.bos_token)
        assert row.input_ids.count(tokenizer.bos_token_id) == row.text.count(tokenizer.bos_token)
