"""Errors that help (issue 29 item 6): an upload's errors name the user's file, never the temporary copy; bytes that are not
text say so; the unknown-columns message's "column mapping" has a box on the Data page, and a mapping typed there loads the file."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from jobs_inline import jobs_inline_fixture  # noqa: F401 - a fixture
from streamlit.testing.v1 import AppTest

from core import runs
from core.data.formats import DatasetLoadError, load_uploaded

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "data.py")


def _upload(name: str, data: bytes) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    at.radio(key="data_source").set_value("Upload a file").run()
    at.file_uploader(key="data_upload").set_value((name, data, "application/octet-stream")).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def test_an_empty_upload_names_the_users_file(workspace):
    errors = _errors(_upload("my tickets.jsonl", b"\n\n"))
    assert errors == ["my tickets.jsonl has no rows"], errors
    assert not any("upload." in e or "/tmp" in e for e in errors), "never the temporary copy's name"


def test_random_bytes_are_not_a_dataset(workspace):
    data = random.Random(29).randbytes(4000)
    errors = _errors(_upload("export.csv", data))
    assert len(errors) == 1 and errors[0].startswith("export.csv: this file is not UTF-8 text — is it really a dataset?"), errors
    assert "codec" not in errors[0], "no bare decoder message"


def test_a_stray_latin1_byte_is_named_by_its_line_not_called_binary():
    with pytest.raises(DatasetLoadError, match=r"^notes\.csv: not UTF-8 text on line 3 .*save it as UTF-8"):
        load_uploaded("notes.csv", b"prompt,completion\na,b\ncaf\xe9,c\n")


def test_unknown_columns_are_fixed_through_the_mapping_box(workspace, jobs_inline):
    rows = [{"question": f"What is {i} + {i}?", "reply": str(2 * i)} for i in range(5)] + [{"question": "What is 0 + 0?", "reply": "0"}]
    at = _upload("quiz.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    errors = _errors(at)
    assert len(errors) == 1 and errors[0].startswith("quiz.jsonl: could not detect the dataset format from columns [question, reply]")
    assert "column mapping" in errors[0]
    box = at.text_input(key="data_mapping")  # the place the message promises

    box.set_value('{"prompt": "question", "completion": reply}').run()
    assert any(e.startswith("Column mapping: not valid JSON") for e in _errors(at)), _errors(at)
    at.text_input(key="data_mapping").set_value('{"prompt": "question", "answer": "reply"}').run()
    assert any("unknown field 'answer'" in e for e in _errors(at)), _errors(at)

    at.text_input(key="data_mapping").set_value('{"prompt": "question", "completion": "reply"}').run()
    assert not at.exception and not at.error, _errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Valid rows"] == "6" and metrics["Rejected rows"] == "0"
    caption = " ".join(c.value for c in at.caption)
    assert "quiz-mapped.jsonl" in caption and "messages" in caption, "the rows as the mapping read them, kept for the jobs"

    at.multiselect(key="data_dd_methods").set_value(["exact"])
    at.button(key="data_dd_run").click().run()
    (run,) = runs.list_runs("curate")
    assert runs.wait(run.path, timeout=300).state == "succeeded", runs.log_tail(run.path)
    at.run()
    assert not at.exception and not at.error, _errors(at)
    assert "**exact**: 1 cluster" in " ".join(m.value for m in at.markdown), "the job read the mapped rows and found the repeated one"
