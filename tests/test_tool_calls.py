"""Tool calls end to end: dataset rows -> masking (calls trained, tool results never) -> lint -> Template chips -> training.

Every tool-capable shipped template is checked with a tokenizer that knows its special tokens, as the model's own
tokenizer does: Qwen2.5's `<|im_start|>` / `<|im_end|>` are the embedded tokenizer's; for the Llama-3.1-style
template the embedded tokenizer gets Llama 3.1's header and end-of-turn tokens added.
"""
from __future__ import annotations

import json

import pytest
from inprocess import work_here

from core.data.formats import load_dataset_file
from core.data.lint import lint_dataset
from core.data.masking import IGNORE_INDEX, MaskingError, encode_conversation, encode_row, inference_prompt_ids, render_conversation
from core.data.render import legend_html, token_chips_html
from core.data.templates import load_template

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Local time in a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def call(name: str, **arguments) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


RESULT = '{"temp_c": 21, "sky": "clear"}'
ANSWER = "It is 21 °C and clear in Paris."
CONVERSATION = [
    {"role": "system", "content": "You can call tools."},
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [call("get_weather", city="Paris")]},
    {"role": "tool", "content": RESULT},
    {"role": "assistant", "content": ANSWER},
]
# Per template: the exact trained text of the call turn and of the answer turn (each with its end-of-turn marker).
EXPECTED = {
    "qwen2.5-instruct": ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
                         ANSWER + "<|im_end|>"],
    "llama-3.1-tools": ['{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>', ANSWER + "<|eot_id|>"],
}
LLAMA_SPECIALS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"]


@pytest.fixture(scope="module")
def tokenizers(embedded_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("llama-3.1-style-tokenizer")
    llama = AutoTokenizer.from_pretrained(embedded_dir)
    llama.add_special_tokens({"additional_special_tokens": LLAMA_SPECIALS})
    llama.save_pretrained(folder)
    return {"qwen2.5-instruct": AutoTokenizer.from_pretrained(embedded_dir), "llama-3.1-tools": AutoTokenizer.from_pretrained(folder)}


def trained_text(row) -> list[str]:
    """The rendered characters of each trained token run (exact, no decoding round trip)."""
    return [row.text[row.offsets[a][0]:row.offsets[b - 1][1]] for a, b in row.trained_runs()]


def tool_tokens_trained(row) -> int:
    return sum(1 for span, label in zip(row.spans, row.labels) if span.role == "tool" and label != IGNORE_INDEX)


@pytest.mark.parametrize("template", sorted(EXPECTED))
def test_tool_call_text_and_eot_are_trained_and_tool_results_never(tokenizers, template):
    tokenizer = tokenizers[template]
    row = encode_conversation(CONVERSATION, tokenizer, chat_template=load_template(template), tools=[WEATHER])
    assert trained_text(row) == EXPECTED[template]
    assert tool_tokens_trained(row) == 0
    assert RESULT in row.text and not any(RESULT in t for t in trained_text(row))
    assert '"get_weather"' in row.text.split("What is the weather")[0], "the tool definitions are shown before the question"
    assert row.eot_trained and row.notes == []
    parts = {(s.role, s.part) for s in row.segments}
    assert ("assistant", "tool_call") in parts and ("tool", "content") in parts
    # The trained call starts exactly where the model starts writing at inference (to the character: a BPE
    # tokenizer may merge the prompt's last "\n\n" differently once text follows, which the lint warns about).
    prompt = render_conversation(CONVERSATION[:2], tokenizer, chat_template=load_template(template),
                                 add_generation_prompt=True, tools=[WEATHER])
    assert row.text.startswith(prompt) and row.offsets[row.trained_runs()[0][0]][0] == len(prompt)
    if template == "qwen2.5-instruct":
        ids = inference_prompt_ids(CONVERSATION[:2], tokenizer, chat_template=load_template(template), tools=[WEATHER])
        assert row.input_ids[:len(ids)] == ids and row.trained_runs()[0][0] == len(ids)


@pytest.mark.parametrize("template", sorted(EXPECTED))
def test_policies_on_tool_rows(tokenizers, template):
    tokenizer, chat_template = tokenizers[template], load_template(template)
    last = encode_conversation(CONVERSATION, tokenizer, chat_template=chat_template, tools=[WEATHER], policy="last_assistant")
    assert trained_text(last) == EXPECTED[template][1:]
    ends_in_call = CONVERSATION[:3]
    row = encode_conversation(ends_in_call, tokenizer, chat_template=chat_template, tools=[WEATHER], policy="last_assistant")
    assert trained_text(row) == EXPECTED[template][:1] and row.eot_trained
    no_eot = encode_conversation(CONVERSATION, tokenizer, chat_template=chat_template, tools=[WEATHER], train_eot=False)
    eot = EXPECTED[template][1][len(ANSWER):]
    assert trained_text(no_eot) == [t[: -len(eot)] for t in EXPECTED[template]]
    everything = encode_conversation(CONVERSATION, tokenizer, chat_template=chat_template, tools=[WEATHER], policy="everything")
    assert tool_tokens_trained(everything) > 0


def test_qwen_trains_parallel_calls_and_the_text_before_them(tokenizers):
    conversation = [
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": "Let me check both.", "tool_calls": [call("get_weather", city="Paris"),
                                                                              call("get_time", city="Paris")]},
        {"role": "tool", "content": RESULT},
        {"role": "tool", "content": '{"time": "14:05"}'},
        {"role": "assistant", "content": "21 °C, clear, and it is 14:05."},
    ]
    row = encode_conversation(conversation, tokenizers["qwen2.5-instruct"],
                              chat_template=load_template("qwen2.5-instruct"), tools=[WEATHER, TIME])
    assert trained_text(row) == [
        'Let me check both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "21 °C, clear, and it is 14:05.<|im_end|>",
    ]
    assert tool_tokens_trained(row) == 0
    with pytest.raises(MaskingError, match="one tool per assistant turn"):
        encode_conversation(conversation, tokenizers["llama-3.1-tools"],
                            chat_template=load_template("llama-3.1-tools"), tools=[WEATHER, TIME])


CONTENT_ONLY = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"


def test_a_template_without_tool_support_refuses_by_name(tokenizers):
    with pytest.raises(MaskingError, match=r"does not write the tool calls of message 2.*qwen2\.5-instruct or llama-3\.1-tools"):
        encode_conversation(CONVERSATION, tokenizers["qwen2.5-instruct"], chat_template=CONTENT_ONLY, tools=[WEATHER])
    with pytest.raises(MaskingError, match=r"roles must alternate.*has tool turns: choose a template with tool support"):
        encode_conversation(CONVERSATION, tokenizers["qwen2.5-instruct"], chat_template=load_template("chatml"), tools=[WEATHER])
    plain = [m for m in CONVERSATION if m["role"] != "tool" and not m.get("tool_calls")]
    row = encode_conversation(plain, tokenizers["qwen2.5-instruct"], chat_template=load_template("chatml"), tools=[WEATHER])
    assert row.notes == ["the template does not show the tool definitions to the model: it will call tools it was never shown"]


def test_dataset_files_in_both_tool_formats_mask_the_same(tmp_path, tokenizers):
    openai = {"messages": [
        CONVERSATION[0], CONVERSATION[1],
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                               "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": RESULT}, CONVERSATION[4]], "tools": [WEATHER]}
    sharegpt = {"system": "You can call tools.", "tools": json.dumps([WEATHER["function"]]), "conversations": [
        {"from": "human", "value": CONVERSATION[1]["content"]},
        {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
        {"from": "observation", "value": RESULT}, {"from": "gpt", "value": ANSWER}]}
    for name, row in (("openai.jsonl", openai), ("sharegpt.jsonl", sharegpt)):
        (tmp_path / name).write_text(json.dumps(row) + "\n")
        loaded = load_dataset_file(tmp_path / name)
        assert loaded.report.ok, loaded.report.as_dict()
        for template, expected in EXPECTED.items():
            encoded = encode_row(loaded.rows[0], tokenizers[template], chat_template=load_template(template))
            assert trained_text(encoded) == expected, (name, template)


def test_lint_checks_tool_turns(tokenizers):
    tokenizer = tokenizers["qwen2.5-instruct"]
    rows = [{"messages": CONVERSATION, "tools": [WEATHER]}] * 3
    clean = lint_dataset(rows, tokenizer, chat_template=load_template("qwen2.5-instruct"))
    assert clean.issues == {} and clean.can_train
    refused = lint_dataset(rows, tokenizer, chat_template=CONTENT_ONLY)
    assert refused.count("encode_failed") == 3 and "does not write the tool calls" in refused.issues["encode_failed"].message
    everything = lint_dataset(rows, tokenizer, chat_template=load_template("qwen2.5-instruct"), policy="everything")
    assert everything.count("tool_result_trained") == 3
    # A template that closes a tool result only when more text follows it: the generation prompt after a tool
    # result then lacks the <|im_end|> the training render has there.
    drifting = load_template("qwen2.5-instruct").replace('loop.last or (messages[loop.index0 + 1].role != "tool")',
                                                         '(not loop.last and messages[loop.index0 + 1].role != "tool")')
    assert drifting != load_template("qwen2.5-instruct")
    mismatch = lint_dataset(rows, tokenizer, chat_template=drifting)
    assert mismatch.count("tool_inference_mismatch") == 3 and mismatch.count("inference_mismatch") == 0


def test_template_chips_colour_tool_calls_and_results(tokenizers):
    row = encode_conversation(CONVERSATION, tokenizers["qwen2.5-instruct"],
                              chat_template=load_template("qwen2.5-instruct"), tools=[WEATHER])
    html = token_chips_html(row, tokenizers["qwen2.5-instruct"])
    assert html.count('class="tpl-chip trained tool_call"') > 5
    assert 'class="tpl-chip masked content tool-result"' in html and "tpl-chip trained content tool-result" not in html
    assert ".tpl-chip.trained.tool_call{" in html and ".tpl-chip.tool-result{" in html
    assert "tool call (trained)" in legend_html(tools=True) and "tool call" not in legend_html()


def test_template_page_draws_a_tool_row(workspace, embedded_dir):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from core.data.curate import DatasetSource, export_curated

    path = workspace / "tools.jsonl"
    path.write_text(json.dumps({"messages": CONVERSATION, "tools": [WEATHER]}) + "\n")
    export_curated(load_dataset_file(path).rows, "tool-demo", DatasetSource(path=str(path), sha256="x"), [])
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app_pages" / "template.py"), default_timeout=120)
    at.session_state["active_model"] = {"kind": "local", "ref": str(embedded_dir)}
    at.run()
    at.radio(key="tpl_source").set_value("Workspace dataset").run()
    at.selectbox(key="tpl_template").set_value("qwen2.5-instruct").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    page = "".join(h.proto.body for h in at.html)
    assert "tpl-chip trained tool_call" in page and "tool-result" in page and "tool call (trained)" in page
    assert any("1 tool call(s), 1 tool result(s) and 1 tool definition(s)" in c.value for c in at.caption)
    at.selectbox(key="tpl_template").set_value("chatml").run()
    assert any("has tool turns: choose a template with tool support" in e.value for e in at.error)


@pytest.mark.slow
def test_training_on_tool_rows_learns_the_masked_labels(workspace, tiny_llama_dir, tmp_path, embedded_tokenizer):
    """The trainer gets the tool rows' masking labels, and a LoRA run on them succeeds with a finite loss."""
    from core import runs
    from core.runs.status import read_status
    from core.train.data import prepare_data
    from core.train.spec import TrainSpec

    rows = []
    for city, temp in [("Paris", 21), ("Oslo", 4), ("Rome", 25), ("Lima", 18)]:
        rows.append({"messages": [
            {"role": "user", "content": f"Weather in {city}?"},
            {"role": "assistant", "content": "", "tool_calls": [call("get_weather", city=city)]},
            {"role": "tool", "content": json.dumps({"temp_c": temp})},
            {"role": "assistant", "content": f"{temp} °C in {city}."}], "tools": [WEATHER], "id": city})
    data = tmp_path / "tools.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = TrainSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, dataset=str(data), chat_template="qwen2.5-instruct",
                     max_steps=2, batch_size=2, max_length=512, eval_fraction=0.0, learning_rate=1e-2, warmup_ratio=0.0,
                     lora_r=4, lora_alpha=8, save_steps=100, eval_on_start=False, logging_steps=1)
    prepared = prepare_data(spec, embedded_tokenizer)
    assert prepared.train.n_kept == 4 and prepared.lint.issues == {}
    expected = {tuple(encode_row(r, embedded_tokenizer, chat_template=load_template("qwen2.5-instruct"), max_length=512).labels)
                for r in rows}
    assert {tuple(f["labels"]) for f in prepared.train.features} == expected
    run_dir = runs.create_run(spec)
    work_here(run_dir)
    status = read_status(run_dir)
    assert status.state == "succeeded", status.error
    losses = [m["loss"] for m in runs.read_all_metrics(run_dir / runs.METRICS_FILE) if "loss" in m]
    assert losses and all(loss == loss and loss > 0 for loss in losses)
