"""AppTest of the Data page: load, de-duplicate, decontaminate, export."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.data.curate import read_manifest
from core.data.decontam import load_builtin_benchmark

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "data.py")


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_demo_dedup_and_export(workspace):
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.run()
    no_errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Valid rows"] == "300" and metrics["Rejected rows"] == "0"
    assert "train.jsonl" in at.caption[1].value and "messages" in at.caption[1].value

    at.multiselect(key="data_dd_methods").set_value(["exact", "near"])
    at.button(key="data_dd_run").click().run()
    no_errors(at)
    lines = [m.value for m in at.markdown]
    assert any(line.startswith("**exact**: ") for line in lines)
    assert any(line.startswith("**near**: ") for line in lines)

    at.text_input(key="data_export_name").set_value("demo clean").run()
    at.button(key="data_export").click().run()
    no_errors(at)
    folder = workspace / "datasets" / "demo-clean"
    assert (folder / "data.jsonl").is_file() and (folder / "manifest.json").is_file()
    manifest = read_manifest(folder)
    assert [op["name"] for op in manifest["operations"]] == ["exact_dedup", "near_dedup"]
    assert manifest["rows"] == len((folder / "data.jsonl").read_text().splitlines())
    assert manifest["source"]["path"].endswith("assets/demo/train.jsonl")
    assert at.success and "demo-clean" in at.success[0].value


@pytest.fixture
def messy_file(tmp_path) -> Path:
    question = load_builtin_benchmark("GSM8K").items[0]
    long_answer = " ".join(f"step {i} of the careful explanation adds detail number {i * 3}" for i in range(12))
    rows = [{"messages": [{"role": "user", "content": f"Unique question number {i} about topic {i * 17}?"},
                          {"role": "assistant", "content": f"Unique answer {i} with details {i * 31}."}]} for i in range(30)]
    rows.append({"messages": [{"role": "user", "content": "Explain the method."}, {"role": "assistant", "content": long_answer}]})
    rows.append({"messages": [{"role": "user", "content": "Explain the method!"}, {"role": "assistant", "content": long_answer + " done"}]})
    rows.append({"messages": [{"role": "user", "content": "unique question number 3 about topic 51"},
                              {"role": "assistant", "content": "Unique answer 3 with details 93"}]})
    rows.append({"messages": [{"role": "user", "content": f"Solve: {question}"}, {"role": "assistant", "content": "18"}]})
    path = tmp_path / "messy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n", encoding="utf-8")
    return path


def test_clusters_decisions_decontamination_and_export(workspace, messy_file):
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.run()
    at.radio(key="data_source").set_value("Path or Hub id").run()
    at.text_input(key="data_path").set_value(str(messy_file)).run()
    no_errors(at)
    assert {m.label: m.value for m in at.metric}["Rejected rows"] == "1"

    at.multiselect(key="data_dd_methods").set_value(["exact", "near"])
    at.button(key="data_dd_run").click().run()
    no_errors(at)
    lines = [m.value for m in at.markdown]
    assert "**exact**: 1 clusters, 1 rows to drop" in " ".join(lines)
    assert "**near**: 2 clusters, 2 rows to drop" in " ".join(lines)  # the exact pair is also a near pair
    assert any("row 3" in line and "KEEP" in line for line in lines)
    assert any("row 32" in line and "drop" in line for line in lines)

    # keep the exact cluster whole; near's drop stays
    at.checkbox(key="data_drop_exact_0").uncheck().run()
    at.radio(key="data_dd_browse").set_value("near").run()  # the decision outlives its checkbox
    at.button(key="data_dc_run").click().run()
    no_errors(at)
    assert any("<mark" in h.proto.body and "Janet" in h.proto.body for h in at.get("html"))
    at.text_input(key="data_export_name").set_value("messy").run()
    at.button(key="data_export").click().run()
    no_errors(at)
    manifest = read_manifest(workspace / "datasets" / "messy")
    ops = {op["name"]: op for op in manifest["operations"]}
    assert ops["exact_dedup"]["dropped"] == [] and ops["exact_dedup"]["params"]["clusters_kept_whole"] == 1
    assert ops["near_dedup"]["dropped"] == [31, 32]
    assert ops["decontamination"]["dropped"] == [33]
    assert manifest["source"]["rows_rejected"] == 1
    assert manifest["rows"] == 31

    at.radio(key="data_dd_browse").set_value("exact").run()
    assert at.checkbox(key="data_drop_exact_0").value is False
    at.button(key="data_dd_accept_all").click().run()
    no_errors(at)
    assert at.checkbox(key="data_drop_exact_0").value is True
    assert at.session_state["data_kept_whole"] == set()
