"""Dataset loading: every source and format normalised, every malformed row counted under its own error."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from core.data.formats import (
    ERROR_KINDS,
    DatasetLoadError,
    demo_dataset_path,
    detect_format,
    list_workspace_datasets,
    load_dataset_file,
    normalise_row,
    write_jsonl,
)

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
NORMALISED_CHAT = {"messages": CHAT}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------- each format and source


def test_jsonl_openai_messages(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "Be kind."}] + CHAT, "id": i} for i in range(3)]
    loaded = load_dataset_file(write_lines(tmp_path / "a.jsonl", [json.dumps(r) for r in rows]))
    assert loaded.detected_format == "messages"
    assert loaded.rows[0] == {"messages": [{"role": "system", "content": "Be kind."}] + CHAT, "id": 0}
    assert (loaded.columns, loaded.id_column) == (["id"], "id")
    assert loaded.report.ok and loaded.report.n_valid == 3
    assert loaded.source.endswith("a.jsonl") and len(loaded.source_hash) == 64


def test_sharegpt_roles_are_mapped(tmp_path):
    row = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    loaded = load_dataset_file(write_lines(tmp_path / "s.jsonl", [json.dumps(row)]))
    assert loaded.detected_format == "sharegpt"
    assert loaded.rows == [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                                         {"role": "assistant", "content": "A"}]}]


def test_alpaca_json_array_joins_instruction_and_input(tmp_path):
    rows = [
        {"instruction": "Translate.", "input": "Bonjour", "output": "Hello"},
        {"instruction": "Say hi.", "input": "", "output": "Hi"},
    ]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows))
    loaded = load_dataset_file(path)
    assert loaded.detected_format == "alpaca"
    assert loaded.rows[0]["messages"] == [{"role": "user", "content": "Translate.\n\nBonjour"}, {"role": "assistant", "content": "Hello"}]
    assert loaded.rows[1]["messages"][0]["content"] == "Say hi."


def test_json_columns_and_prompt_completion(tmp_path):
    path = tmp_path / "cols.json"
    path.write_text(json.dumps({"prompt": ["2+2?", "3+3?"], "completion": ["4", "6"]}))
    loaded = load_dataset_file(path)
    assert loaded.detected_format == "prompt_completion"
    assert loaded.rows[1] == {"messages": [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]}


def test_csv_with_mapping_and_system_column(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text('question,answer,sys\n"What, exactly?","This.",Be brief.\n', encoding="utf-8")
    with pytest.raises(DatasetLoadError, match=r"could not detect the dataset format from columns \[answer, question, sys\]"):
        load_dataset_file(path)
    loaded = load_dataset_file(path, mapping={"prompt": "question", "completion": "answer", "system": "sys"})
    assert loaded.detected_format == "prompt_completion"
    assert loaded.rows == [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What, exactly?"},
                                         {"role": "assistant", "content": "This."}]}]


def test_csv_messages_column_holds_json(tmp_path):
    import csv

    path = tmp_path / "m.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["messages"])
        writer.writerow([json.dumps(CHAT)])
    assert load_dataset_file(path).rows == [NORMALISED_CHAT]


def test_parquet_plain_text(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["first document", "second document"], "n": [1, 2]}), path)
    loaded = load_dataset_file(path)
    assert loaded.detected_format == "text"
    assert loaded.rows == [{"text": "first document", "n": 1}, {"text": "second document", "n": 2}]


def test_saved_datasets_folder_and_splits(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_list([{"messages": CHAT}] * 2).save_to_disk(str(tmp_path / "single"))
    assert load_dataset_file(tmp_path / "single").rows == [NORMALISED_CHAT] * 2
    DatasetDict({
        "train": Dataset.from_list([{"prompt": "a", "completion": "b"}]),
        "test": Dataset.from_list([{"prompt": "c", "completion": "d"}] * 3),
    }).save_to_disk(str(tmp_path / "dd"))
    assert len(load_dataset_file(tmp_path / "dd")) == 1  # train by default
    assert len(load_dataset_file(tmp_path / "dd", split="test")) == 3
    with pytest.raises(DatasetLoadError, match=r"has no split 'validation'"):
        load_dataset_file(tmp_path / "dd", split="validation")


def test_hub_id_offline_fails_fast_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(DatasetLoadError, match=r"could not load Hub dataset someone/no-such-dataset \[train\]"):
        load_dataset_file("someone/no-such-dataset", split="train")
    assert time.monotonic() - start < 20


def test_missing_paths_and_unknown_types(tmp_path):
    with pytest.raises(DatasetLoadError, match="no such file"):
        load_dataset_file(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DatasetLoadError, match="unknown file type"):
        load_dataset_file(tmp_path / "x.txt")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetLoadError, match="not valid JSON"):
        load_dataset_file(tmp_path / "bad.json")
    (tmp_path / "garbage.jsonl").write_text("not json\n{also not\n")
    with pytest.raises(DatasetLoadError, match="none of the first 2 rows is valid JSON .bad JSON on line 1"):
        load_dataset_file(tmp_path / "garbage.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DatasetLoadError, match="has no rows"):
        load_dataset_file(tmp_path / "empty.jsonl")
    with pytest.raises(ValueError, match="unknown mapping field"):
        load_dataset_file(tmp_path / "empty.jsonl", mapping={"question": "q"})


def test_mapping_or_fmt_overrides_detection_when_ambiguous(tmp_path):
    row = {"text": "raw document", "messages": CHAT}
    path = write_lines(tmp_path / "both.jsonl", [json.dumps(row)])
    assert detect_format(row) == "messages"
    assert load_dataset_file(path).rows == [NORMALISED_CHAT | {"text_original": "raw document"}]
    assert load_dataset_file(path, fmt="text").rows == [{"text": "raw document", "messages_original": CHAT}]
    assert load_dataset_file(path, mapping={"text": "text"}).rows == [{"text": "raw document", "messages_original": CHAT}]


def test_limit_hash_and_workspace(tmp_path, workspace):
    path = write_lines(tmp_path / "a.jsonl", [json.dumps({"messages": CHAT})] * 10)
    assert len(load_dataset_file(path, limit=4)) == 4
    first = load_dataset_file(path).source_hash
    write_lines(path, [json.dumps({"messages": CHAT})] * 9)
    assert load_dataset_file(path).source_hash != first
    assert list_workspace_datasets() == []
    folder = workspace / "datasets" / "curated"
    write_jsonl([NORMALISED_CHAT] * 3, folder / "data.jsonl")
    (workspace / "datasets" / "empty-folder").mkdir()
    assert list_workspace_datasets() == ["curated"]
    assert load_dataset_file(folder).rows == [NORMALISED_CHAT] * 3


def test_demo_dataset_is_valid_and_deterministic(tmp_path):
    import importlib.util

    train, evaluation = load_dataset_file(demo_dataset_path("train")), load_dataset_file(demo_dataset_path("eval"))
    assert train.report.ok and evaluation.report.ok
    assert (len(train), len(evaluation)) == (300, 60)
    tickets = {r["messages"][1]["content"] for r in train.rows}
    assert not tickets & {r["messages"][1]["content"] for r in evaluation.rows}
    for row in evaluation.rows:
        answer = json.loads(row["messages"][-1]["content"])
        assert set(answer) == {"summary", "next_step", "urgency"} and answer["urgency"] in ("low", "medium", "high")
    spec = importlib.util.spec_from_file_location("make_demo", demo_dataset_path("train").parents[1] / "make_demo_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    assert (tmp_path / "train.jsonl").read_bytes() == demo_dataset_path("train").read_bytes()
    assert (tmp_path / "eval.jsonl").read_bytes() == demo_dataset_path("eval").read_bytes()
    with pytest.raises(ValueError):
        demo_dataset_path("test")


# ---------------------------------------------------------------- malformed rows

def msgs(*pairs) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in pairs]})


MALFORMED = [
    # (id, format, line, error kind, field)
    ("truncated-json", "messages", '{"messages": [', "bad_json", ""),
    ("array-row", "messages", "[1, 2]", "not_an_object", ""),
    ("string-row", "messages", '"just text"', "not_an_object", ""),
    ("no-messages", "messages", '{"msgs": []}', "missing_field", "messages"),
    ("messages-string", "messages", '{"messages": "hello"}', "bad_messages", "messages"),
    ("messages-empty", "messages", '{"messages": []}', "bad_messages", "messages"),
    ("message-not-object", "messages", '{"messages": ["hi"]}', "bad_messages", "messages[0]"),
    ("no-role", "messages", '{"messages": [{"content": "hi"}]}', "missing_field", "messages[0].role"),
    ("role-number", "messages", '{"messages": [{"role": 3, "content": "hi"}]}', "not_a_string", "messages[0].role"),
    ("content-number", "messages", '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 5}]}',
     "not_a_string", "messages[1].content"),
    ("content-missing", "messages", '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]}',
     "missing_field", "messages[1].content"),
    ("unknown-role", "messages", msgs(("user", "q"), ("bot", "a")), "unknown_role", "messages[1].role"),
    ("blank-content", "messages", msgs(("user", "   "), ("assistant", "a")), "empty_content", "messages[0].content"),
    ("no-assistant", "messages", msgs(("system", "s"), ("user", "q")), "no_assistant_turn", "messages"),
    ("late-system", "messages", msgs(("user", "q"), ("system", "s"), ("assistant", "a")), "turn_order", "messages[1].role"),
    ("assistant-first", "messages", msgs(("assistant", "a"), ("user", "q"), ("assistant", "b")), "turn_order", "messages[0].role"),
    ("user-twice", "messages", msgs(("user", "q"), ("user", "q2"), ("assistant", "a")), "turn_order", "messages[1].role"),
    ("unanswered-end", "messages", msgs(("user", "q"), ("assistant", "a"), ("user", "q2")), "turn_order", "messages[2].role"),
    ("tool-after-user", "messages", msgs(("user", "q"), ("tool", "t"), ("assistant", "a")), "turn_order", "messages[1].role"),
    ("tool-call-no-name", "messages", '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": null, '
                                      '"tool_calls": [{"id": 1}]}]}', "bad_tool_call", "messages[1].tool_calls[0].name"),
    ("tool-call-bad-arguments", "messages", '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": '
                                            '[{"function": {"name": "f", "arguments": "{city: 1"}}]}]}', "bad_tool_call",
     "messages[1].tool_calls[0].arguments"),
    ("tool-call-list-arguments", "messages", '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": '
                                             '[{"function": {"name": "f", "arguments": "[1]"}}]}]}', "bad_tool_call",
     "messages[1].tool_calls[0].arguments"),
    ("tools-not-definitions", "messages", '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], '
                                          '"tools": [{"description": "no name"}]}', "bad_tools", "tools[0]"),
    ("tools-bad-json", "messages", '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], '
                                   '"tools": "[{oops"}', "bad_tools", "tools"),
    ("sharegpt-call-not-json", "sharegpt", '{"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": '
                                           '"get_weather(Paris)"}, {"from": "observation", "value": "r"}, {"from": "gpt", "value": "a"}]}',
     "bad_tool_call", "conversations[1].value"),
    ("sharegpt-robot", "sharegpt", '{"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]}', "unknown_role",
     "conversations[1].from"),
    ("sharegpt-no-value", "sharegpt", '{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]}', "missing_field",
     "conversations[1].value"),
    ("sharegpt-from-list", "sharegpt", '{"conversations": [{"from": ["human"], "value": "q"}]}', "not_a_string", "conversations[0].from"),
    ("alpaca-no-output", "alpaca", '{"instruction": "do it", "input": ""}', "missing_field", "output"),
    ("alpaca-instruction-int", "alpaca", '{"instruction": 7, "output": "x"}', "not_a_string", "instruction"),
    ("alpaca-empty-output", "alpaca", '{"instruction": "do it", "output": ""}', "empty_content", "output"),
    ("alpaca-input-dict", "alpaca", '{"instruction": "do it", "input": {"a": 1}, "output": "x"}', "not_a_string", "input"),
    ("completion-null", "prompt_completion", '{"prompt": "p", "completion": null}', "missing_field", "completion"),
    ("text-empty", "text", '{"text": "  "}', "empty_content", "text"),
    ("text-list", "text", '{"text": ["a", "b"]}', "not_a_string", "text"),
]
VALID_FIRST = {
    "messages": msgs(("user", "q"), ("assistant", "a")),
    "sharegpt": '{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}',
    "alpaca": '{"instruction": "i", "output": "o"}',
    "prompt_completion": '{"prompt": "p", "completion": "c"}',
    "text": '{"text": "t"}',
}


@pytest.mark.parametrize("fmt,line,kind,field", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_row_gets_its_specific_error(tmp_path, fmt, line, kind, field):
    path = write_lines(tmp_path / "d.jsonl", [VALID_FIRST[fmt], line, VALID_FIRST[fmt]])
    loaded = load_dataset_file(path)  # detected from the valid rows
    assert loaded.detected_format == fmt
    report = loaded.report
    assert kind in ERROR_KINDS
    assert report.counts == {kind: 1}, report.as_dict()
    assert (report.n_read, report.n_valid, report.n_invalid) == (3, 2, 1)
    error = report.examples[kind][0]
    assert (error.row, error.field) == (1, field)
    if kind == "bad_json":
        assert error.message.startswith("bad JSON on line 2")
    assert len(loaded.rows) == 2


def test_normalise_row_raises_row_invalid():
    from core.data.formats import RowInvalid

    assert normalise_row({"messages": CHAT}, "messages", None) == NORMALISED_CHAT
    with pytest.raises(RowInvalid) as info:
        normalise_row({"instruction": "x"}, "alpaca", None)
    assert info.value.kind == "missing_field" and info.value.field == "output"


def test_report_keeps_first_examples_and_counts_everything(tmp_path):
    lines = [VALID_FIRST["messages"]] + ["oops"] * 12 + [msgs(("user", "q"))] * 3
    report = load_dataset_file(write_lines(tmp_path / "r.jsonl", lines)).report
    assert report.counts == {"bad_json": 12, "no_assistant_turn": 3}
    assert len(report.examples["bad_json"]) == 5 and report.examples["bad_json"][0].row == 1
    assert report.n_read == len(lines) == report.n_valid + report.n_invalid
    assert "1 of 16 rows valid" in report.summary()
    assert report.first_errors()[0].row == 1


def test_one_hundred_thousand_rows_load_and_validate(tmp_path):
    path = tmp_path / "big.jsonl"
    good = json.dumps({"instruction": "Add the numbers 2 and 3.", "input": "", "output": "5"})
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(100_000):
            handle.write((good if i % 1000 else '{"instruction": "x"}') + "\n")
    start = time.perf_counter()
    loaded = load_dataset_file(path)
    elapsed = time.perf_counter() - start
    assert loaded.detected_format == "alpaca"
    assert loaded.report.n_read == 100_000
    assert loaded.report.counts == {"missing_field": 100} and loaded.report.n_valid == 99_900
    assert elapsed < 30, f"100k rows took {elapsed:.1f}s"


# ---------------------------------------------------------------- tool calls, Gemma roles, JSON arrays, extra columns

WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city",
                                                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                                 "required": ["city"]}}}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
TOOL_CONVERSATION = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": '{"temp_c": 21}'},
    {"role": "assistant", "content": "It is 21 °C in Paris."},
]


def test_openai_tool_calls_and_tools_are_read_into_the_template_form(tmp_path):
    row = {
        "messages": [
            TOOL_CONVERSATION[0],
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": '{"temp_c": 21}'},
            TOOL_CONVERSATION[3],
        ],
        "tools": [WEATHER_TOOL],
    }
    loaded = load_dataset_file(write_lines(tmp_path / "tools.jsonl", [json.dumps(row)]))
    assert loaded.report.ok, loaded.report.as_dict()
    messages = loaded.rows[0]["messages"]
    assert messages[1] == {"role": "assistant", "content": "", "tool_calls": [CALL | {"id": "call_1"}]}
    assert messages[2] == {"role": "tool", "content": '{"temp_c": 21}', "name": "get_weather", "tool_call_id": "call_1"}
    assert loaded.rows[0]["tools"] == [WEATHER_TOOL]
    assert "tool_calls" not in messages[3]  # templates test `'tool_calls' in message`


def test_legacy_function_call_and_function_role(tmp_path):
    row = {"messages": [
        TOOL_CONVERSATION[0],
        {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"role": "function", "name": "get_weather", "content": '{"temp_c": 21}'},
        TOOL_CONVERSATION[3],
    ]}
    loaded = load_dataset_file(write_lines(tmp_path / "legacy.jsonl", [json.dumps(row)]))
    assert loaded.report.ok
    assert loaded.rows[0]["messages"][1]["tool_calls"] == [CALL]
    assert loaded.rows[0]["messages"][2]["role"] == "tool"
    assert loaded.report.note_lines() == ["1 row with OpenAI's legacy `function` role: read as a tool result"]


def test_sharegpt_function_call_observation_and_tools_text(tmp_path):
    """LLaMA-Factory's ShareGPT tool format: calls as JSON text, results as observations, tools as JSON text."""
    row = {
        "conversations": [
            {"from": "human", "value": "What is the weather in Paris?"},
            {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
            {"from": "observation", "value": '{"temp_c": 21}'},
            {"from": "gpt", "value": "It is 21 °C in Paris."},
        ],
        "tools": json.dumps([WEATHER_TOOL["function"]]),
        "system": "You can call tools.",
    }
    loaded = load_dataset_file(write_lines(tmp_path / "sg.jsonl", [json.dumps(row)]))
    assert loaded.detected_format == "sharegpt" and loaded.report.ok
    assert loaded.rows[0] == {"messages": [{"role": "system", "content": "You can call tools."}] + TOOL_CONVERSATION,
                              "tools": [WEATHER_TOOL]}


def test_gemma_model_role_is_the_assistant_with_a_note(tmp_path):
    lines = [json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "model", "content": "Hello!"}]})] * 3
    loaded = load_dataset_file(write_lines(tmp_path / "gemma.jsonl", lines))
    assert loaded.report.ok and loaded.rows[0] == NORMALISED_CHAT
    assert loaded.report.notes == {"with Gemma's `model` role: read as the assistant": 3}
    assert loaded.report.note_lines() == ["3 rows with Gemma's `model` role: read as the assistant"]
    sharegpt_line = json.dumps({"conversations": [{"from": "user", "value": "Hi"}, {"from": "model", "value": "Hello!"}]})
    sharegpt = load_dataset_file(write_lines(tmp_path / "gemma-sg.jsonl", [sharegpt_line]))
    assert sharegpt.rows == [NORMALISED_CHAT] and sharegpt.report.notes


def test_a_json_array_in_a_jsonl_file_is_read_and_said(tmp_path):
    path = tmp_path / "array.jsonl"
    path.write_text(json.dumps([{"messages": CHAT, "id": i} for i in range(4)], indent=2), encoding="utf-8")
    loaded = load_dataset_file(path)
    assert len(loaded) == 4 and loaded.report.ok and loaded.rows[2] == NORMALISED_CHAT | {"id": 2}
    assert loaded.report.file_notes == ["array.jsonl holds one JSON array rather than one object per line: it was read as that array"]
    assert len(loaded.source_hash) == 64


def test_jsonl_arrays_that_cannot_be_read_are_refused_with_a_sentence(tmp_path):
    (tmp_path / "lines.jsonl").write_text('[{"messages": []}]\n[{"messages": []}]\n')
    with pytest.raises(DatasetLoadError, match=r"every line is a JSON array, but a \.jsonl file needs one JSON object per line"):
        load_dataset_file(tmp_path / "lines.jsonl")
    (tmp_path / "cut.jsonl").write_text('[{"messages": [{"role": "user", "content": "Hi"}\n')
    with pytest.raises(DatasetLoadError, match=r"starts with '\[' like one JSON array, but it is not valid JSON"):
        load_dataset_file(tmp_path / "cut.jsonl")


def test_extra_columns_are_kept_on_every_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    alpaca = [{"instruction": "Add 2 and 3.", "input": "", "output": "5", "id": "q-1", "source": "math", "score": 0.5, "tags": ["a"]}]
    (tmp_path / "a.json").write_text(json.dumps(alpaca))
    loaded = load_dataset_file(tmp_path / "a.json")
    assert loaded.rows[0] == {"messages": [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"}],
                              "id": "q-1", "source": "math", "score": 0.5, "tags": ["a"]}
    assert loaded.columns == ["id", "source", "score", "tags"] and loaded.id_column == "id"
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["p1", "p2"], "completion": ["c1", "c2"], "uid": [7, 8], "weight": [1.5, float("nan")]}), path)
    loaded = load_dataset_file(path)
    assert [r["uid"] for r in loaded.rows] == [7, 8] and loaded.rows[1]["weight"] is None
    assert loaded.id_column == "uid" and loaded.row_ids() == [7, 8]


def test_id_column_needs_unique_values_on_every_row(tmp_path):
    rows = [{"messages": CHAT, "id": i % 2, "example_id": f"e{i}"} for i in range(4)]
    loaded = load_dataset_file(write_lines(tmp_path / "ids.jsonl", [json.dumps(r) for r in rows]))
    assert loaded.id_column == "example_id"  # "id" repeats
    rows = [{"messages": CHAT, "source": "s"} for _ in range(3)]
    assert load_dataset_file(write_lines(tmp_path / "no-ids.jsonl", [json.dumps(r) for r in rows])).id_column is None


def test_row_text_shows_tool_calls_in_the_answer():
    from core.data.text import row_text

    row = {"messages": TOOL_CONVERSATION, "tools": [WEATHER_TOOL]}
    assert row_text(row, "answer") == 'get_weather({"city": "Paris"})\n\nIt is 21 °C in Paris.'
    assert row_text(row, "prompt") == 'What is the weather in Paris?\n\n{"temp_c": 21}'
