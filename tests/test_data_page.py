"""AppTest of the Data page: load, de-duplicate, decontaminate, audit, select for diversity, export.

The heavy operations run as curation jobs in worker processes: a test clicks, waits for the run folders
to finish (as a user waits for the progress bar), and runs the page again, which reattaches to them. Where the worker
process is not what a test tests, its jobs run through the worker's code in this process (jobs_inline).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from jobs_inline import jobs_inline_fixture  # noqa: F401 - a fixture
from streamlit.testing.v1 import AppTest

from core import runs
from core.data.curate import read_manifest
from core.data.decontam import load_builtin_benchmark

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "data.py")


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def finish_jobs(at: AppTest, timeout: float = 300) -> AppTest:
    """Wait for every launched job of this workspace, then rerun the page (it reattaches to their results)."""
    for run in runs.list_runs():
        status = runs.wait(run.path, timeout=timeout)
        assert status.state == "succeeded", f"{run.run_id}: {status.error}\n{runs.log_tail(run.path)}"
    return at.run()


def markdown(at: AppTest) -> str:
    return " ".join(m.value for m in at.markdown)


def test_demo_dedup_and_export(workspace, jobs_inline):
    """The demo's planted flaws (assets/make_demo_dataset.py PLANTED, issue 29 item 8): every curation tab finds its own
    at the page's defaults, and the export drops them all."""
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.run()
    no_errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Valid rows"] == "300" and metrics["Rejected rows"] == "0"
    assert "**assets/demo/train.jsonl**" in at.caption[1].value and "messages" in at.caption[1].value  # not the full path

    at.multiselect(key="data_dd_methods").set_value(["exact", "near"])
    at.button(key="data_dd_run").click().run()
    no_errors(at)
    assert [r.kind for r in runs.list_runs()] == ["curate"], "the page starts a job instead of working in its script thread"
    at.button(key="data_dc_run").click().run()
    at.button(key="data_au_run").click().run()
    finish_jobs(at)
    no_errors(at)
    lines = markdown(at)
    assert "**exact**: 2 clusters, 2 rows to drop" in lines and "**near**: 4 clusters, 4 rows to drop" in lines, lines
    assert at.checkbox(key="data_dc_drop").label == "Drop the 3 contaminated rows"
    leaks = next(df.value for df in at.dataframe if "contaminated rows" in df.value.columns)  # words, not snake_case
    assert list(leaks["contaminated rows"]) == [2, 1] and list(leaks["share"]) == ["0.67 %", "0.33 %"]
    assert "**4 of 300 rows flagged**" in lines and "refusal or boilerplate: 1" in lines
    assert len(at.button(key="data_au_loss").label) <= 20, "a label its column shows whole"
    for rule in ("refusal", "truncated", "repeats_prompt", "invalid_json"):  # drop every flagged answer, rule by rule
        at.selectbox(key="data_au_rule").set_value(rule).run()
        at.button(key="data_au_drop_rule").click().run()
    no_errors(at)
    assert any("4 rows marked to drop" in c.value for c in at.caption)

    at.text_input(key="data_export_name").set_value("demo clean").run()
    at.button(key="data_export").click().run()
    no_errors(at)
    folder = workspace / "datasets" / "demo-clean"
    assert (folder / "data.jsonl").is_file() and (folder / "manifest.json").is_file()
    manifest = read_manifest(folder)
    assert [op["name"] for op in manifest["operations"]] == ["exact_dedup", "near_dedup", "decontamination", "response_audit"]
    assert manifest["rows"] == len((folder / "data.jsonl").read_text().splitlines()) == 300 - 11, "the 11 planted rows dropped"
    assert manifest["source"]["path"].endswith("assets/demo/train.jsonl")
    assert at.success and "demo-clean" in at.success[0].value


@pytest.fixture
def messy_file(tmp_path) -> Path:
    question = load_builtin_benchmark("GSM8K").items[0]
    long_answer = " ".join(f"step {i} of the careful explanation adds detail number {i * 3}" for i in range(12)) + "."
    rows = [{"messages": [{"role": "user", "content": f"Unique question number {i} about topic {i * 17}?"},
                          {"role": "assistant", "content": f"Unique answer {i} with details {i * 31}."}]} for i in range(30)]
    rows.append({"messages": [{"role": "user", "content": "Explain the method."}, {"role": "assistant", "content": long_answer}]})
    rows.append({"messages": [{"role": "user", "content": "Explain the method!"},
                              {"role": "assistant", "content": long_answer + " Done."}]})
    rows.append({"messages": [{"role": "user", "content": "unique question number 3 about topic 51"},
                              {"role": "assistant", "content": "Unique answer 3 with details 93"}]})
    rows.append({"messages": [{"role": "user", "content": f"Solve: {question}"}, {"role": "assistant", "content": "18"}]})
    rows.append({"messages": [{"role": "user", "content": "Summarise the rules of chess in a few sentences."},
                              {"role": "assistant", "content": "As an AI language model, I cannot help with that request today."}]})
    rows.append({"messages": [{"role": "user", "content": "Describe the water cycle."},
                              {"role": "assistant",
                               "content": "Water evaporates from the sea, rises into the air, cools into clouds, and then"}]})
    path = tmp_path / "messy.jsonl"
    path.write_text("".join(json.dumps(r | {"uid": f"m-{k}"}) + "\n" for k, r in enumerate(rows)) + "{not json\n", encoding="utf-8")
    return path


def open_file(at: AppTest, path: Path) -> AppTest:
    at.radio(key="data_source").set_value("Path or Hub id").run()
    return at.text_input(key="data_path").set_value(str(path)).run()


def test_clusters_decisions_decontamination_audit_and_export(workspace, messy_file, jobs_inline):
    at = open_file(AppTest.from_file(PAGE, default_timeout=180).run(), messy_file)
    no_errors(at)
    assert {m.label: m.value for m in at.metric}["Rejected rows"] == "1"
    assert "your columns kept: `uid`" in at.caption[1].value

    at.multiselect(key="data_dd_methods").set_value(["exact", "near"])
    at.button(key="data_dd_run").click().run()
    at.button(key="data_dc_run").click().run()
    at.button(key="data_au_run").click().run()
    finish_jobs(at)
    no_errors(at)
    lines = markdown(at)
    assert "**exact**: 1 clusters, 1 rows to drop" in lines
    assert "**near**: 2 clusters, 2 rows to drop" in lines  # the exact pair is also a near pair
    assert "row 3" in lines and "KEEP" in lines and "row 32" in lines

    # keep the exact cluster whole; near's drop stays
    at.checkbox(key="data_drop_exact_0").uncheck().run()
    at.radio(key="data_dd_browse").set_value("near").run()  # the decision outlives its checkbox
    assert any("<mark" in h.proto.body and "Janet" in h.proto.body for h in at.get("html"))

    # the audit: refusal and truncation flagged; drop all flagged by each rule
    assert "rows flagged" in markdown(at) and "refusal or boilerplate: 1" in markdown(at)
    for rule in ("refusal", "truncated"):
        at.selectbox(key="data_au_rule").set_value(rule).run()
        at.button(key="data_au_drop_rule").click().run()
    no_errors(at)
    assert any("2 rows marked to drop" in c.value for c in at.caption)
    at.text_input(key="data_export_name").set_value("messy").run()
    at.button(key="data_export").click().run()
    no_errors(at)
    manifest = read_manifest(workspace / "datasets" / "messy")
    ops = {op["name"]: op for op in manifest["operations"]}
    assert ops["exact_dedup"]["dropped"] == [] and ops["exact_dedup"]["params"]["clusters_kept_whole"] == 1
    assert ops["near_dedup"]["dropped"] == [31, 32]
    assert ops["decontamination"]["dropped"] == [33] and ops["decontamination"]["dropped_ids"] == ["m-33"]
    assert ops["response_audit"]["dropped"] == [34, 35] and ops["response_audit"]["dropped_ids"] == ["m-34", "m-35"]
    assert ops["response_audit"]["params"]["dropped_by_rule"] == {"34": ["refusal"], "35": ["truncated"]}
    assert manifest["source"]["rows_rejected"] == 1 and manifest["id_column"] == "uid"
    assert manifest["rows"] == 31

    at.radio(key="data_dd_browse").set_value("exact").run()
    assert at.checkbox(key="data_drop_exact_0").value is False
    at.button(key="data_dd_accept_all").click().run()
    no_errors(at)
    assert at.checkbox(key="data_drop_exact_0").value is True
    assert at.session_state["data_kept_whole"] == set()


def test_a_second_session_reattaches_to_a_running_job(workspace, messy_file):
    first = open_file(AppTest.from_file(PAGE, default_timeout=180).run(), messy_file)
    first.multiselect(key="data_dd_methods").set_value(["near"])
    first.button(key="data_dd_run").click().run()
    second = open_file(AppTest.from_file(PAGE, default_timeout=180).run(), messy_file)  # another tab, or after a refresh
    no_errors(second)
    assert "**near**: " in markdown(second) or any("near de-duplication ·" in p.proto.text for p in second.get("progress")), \
        "the new session shows the job's progress (or its result if it already finished)"
    finish_jobs(second)
    assert "**near**: 2 clusters, 2 rows to drop" in markdown(second)


def test_notes_for_gemma_roles_and_a_json_array_in_jsonl(workspace, tmp_path):
    path = tmp_path / "gemma.jsonl"
    path.write_text(json.dumps([{"messages": [{"role": "user", "content": f"Hi {i}"}, {"role": "model", "content": f"Hello {i}!"}]}
                                for i in range(5)]))
    at = open_file(AppTest.from_file(PAGE, default_timeout=180).run(), path)
    no_errors(at)
    notes = [i.value for i in at.info]
    assert "gemma.jsonl holds one JSON array rather than one object per line: it was read as that array" in notes
    assert "5 rows with Gemma's `model` role: read as the assistant" in notes


@pytest.mark.slow
def test_diversity_map_selection_and_export(workspace, shared_data, tmp_path, jobs_inline):
    records = json.loads((shared_data / "alpaca_5000.json").read_text(encoding="utf-8"))[:60]
    path = tmp_path / "alpaca60.json"
    path.write_text(json.dumps(records))
    at = open_file(AppTest.from_file(PAGE, default_timeout=180).run(), path)
    at.number_input(key="data_dv_k").set_value(4).run()
    at.button(key="data_dv_run").click().run()
    finish_jobs(at)
    no_errors(at)
    assert {m.label: m.value for m in at.metric}["Clusters"] == "4"
    assert at.get("plotly_chart")
    at.number_input(key="data_dv_n").set_value(12).run()
    at.selectbox(key="data_dv_method").set_value("cluster_balanced").run()
    at.button(key="data_dv_select").click().run()
    finish_jobs(at)
    no_errors(at)
    assert "**12 rows selected** (cluster-balanced) · clusters covered 4 of 4" in markdown(at)
    at.text_input(key="data_export_name").set_value("diverse").run()
    at.button(key="data_export").click().run()
    manifest = read_manifest(workspace / "datasets" / "diverse")
    assert manifest["rows"] == 12 and manifest["operations"][-1]["name"] == "diversity_selection"
    assert manifest["operations"][-1]["params"]["coverage"]["clusters_covered"] == 4
