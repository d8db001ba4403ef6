"""Curated export: data.jsonl + manifest.json in the workspace, written atomically; summaries; highlighting."""
from __future__ import annotations

import hashlib
import json

import pytest

from core.data.curate import (
    MANIFEST_SCHEMA,
    CurationOperation,
    DatasetSource,
    apply_operations,
    export_curated,
    operation_from_decontam,
    operation_from_dedup,
    read_manifest,
)
from core.data.decontam import DecontamConfig, decontaminate, load_builtin_benchmark
from core.data.dedup import find_exact_duplicates
from core.data.formats import list_workspace_datasets, load_dataset_file, workspace_dataset_path
from core.data.highlight import highlight_html
from core.data.summary import dataset_summary
from core.workspace import datasets_dir


def chat(prompt: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


@pytest.fixture
def source_file(tmp_path):
    gsm8k = load_builtin_benchmark("GSM8K")
    rows = [chat(f"Question {i}: how many apples are left after eating {i}?", f"{10 - i} apples") for i in range(8)]
    rows += [chat("Question 1: how many apples are left after eating 1?", "9 apples"),  # exact copy of row 1
             chat("question 2 -- how many apples are left after eating 2", "8 apples!"),  # normalised copy of row 2
             chat(gsm8k.items[3], "The answer is 3.")]  # a benchmark leak
    path = tmp_path / "source.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_export_writes_data_and_manifest(workspace, source_file):
    loaded = load_dataset_file(source_file)
    rows = loaded.rows
    dedup = find_exact_duplicates(rows)
    contamination = decontaminate(rows, [load_builtin_benchmark("GSM8K")], DecontamConfig(mode="ngram13"))
    operations = [operation_from_dedup(dedup), operation_from_decontam(contamination)]
    folder = export_curated(rows, "apples clean", DatasetSource.from_loaded(loaded), operations)

    assert folder == datasets_dir() / "apples-clean"
    data_file, manifest_file = folder / "data.jsonl", folder / "manifest.json"
    written = [json.loads(line) for line in data_file.read_text(encoding="utf-8").splitlines()]
    assert written == rows[:8] and manifest_file.is_file()
    manifest = read_manifest(folder)
    assert manifest["schema"] == MANIFEST_SCHEMA
    assert manifest["name"] == "apples-clean"
    assert manifest["source"]["path"] == str(source_file)
    assert manifest["source"]["sha256"] == hashlib.sha256(source_file.read_bytes()).hexdigest()
    assert manifest["source"]["rows"] == 11 and manifest["source"]["format"] == "messages"
    assert manifest["rows"] == 8
    assert manifest["data"] == {"file": "data.jsonl", "sha256": hashlib.sha256(data_file.read_bytes()).hexdigest(),
                                "bytes": data_file.stat().st_size}
    first, second = manifest["operations"]
    assert (first["name"], first["rows_before"], first["rows_after"], first["dropped"]) == ("exact_dedup", 11, 9, [8, 9])
    assert first["params"]["field"] == "both" and first["params"]["keep"] == "first"
    assert (second["name"], second["rows_before"], second["rows_after"], second["dropped"]) == ("decontamination", 9, 8, [10])
    assert second["params"]["mode"] == "ngram13"
    assert second["params"]["per_benchmark"]["GSM8K"]["contaminated_rows"] == 1
    assert manifest["created"].endswith("+00:00")
    # the Template and Train pages list datasets_dir()/*/data.jsonl and load them back unchanged
    assert "apples-clean" in list_workspace_datasets()
    assert load_dataset_file(workspace_dataset_path("apples-clean")).rows == rows[:8]
    assert not [p for p in datasets_dir().iterdir() if p.name.startswith(".")]  # no staging left behind


def test_overwrite_is_explicit(workspace):
    rows = [chat("a question here", "an answer"), chat("another question", "another answer")]
    source = {"path": "mem", "sha256": "0" * 64}
    export_curated(rows, "same", source)
    with pytest.raises(FileExistsError, match="already exists"):
        export_curated(rows[:1], "same", source)
    folder = export_curated(rows, "same", source, [CurationOperation("manual", drop=[0])], overwrite=True)
    assert read_manifest(folder)["rows"] == 1
    assert [json.loads(x) for x in (folder / "data.jsonl").read_text().splitlines()] == [rows[1]]
    assert sorted(p.name for p in datasets_dir().iterdir()) == ["same"]


def test_names_are_sanitised(workspace):
    folder = export_curated([chat("q", "a")], "../../etc/passwd", {"path": "mem", "sha256": "x"})
    assert folder.parent == datasets_dir()
    assert folder.name == "etc-passwd"


def test_operations_apply_in_order_without_double_counting():
    ops = [CurationOperation("a", drop=[1, 2]), CurationOperation("b", drop=[2, 3]), CurationOperation("c", drop=[])]
    kept, records = apply_operations(5, ops)
    assert kept == [0, 4]
    assert [(r["rows_before"], r["rows_after"], r["dropped"]) for r in records] == [(5, 3, [1, 2]), (3, 2, [3]), (2, 2, [])]


def test_skipped_clusters_keep_their_rows():
    rows = [chat("x y z", "1"), chat("X, y z", "1"), chat("p q", "2"), chat("P q!", "2")]
    result = find_exact_duplicates(rows)
    assert operation_from_dedup(result).drop == [1, 3]
    op = operation_from_dedup(result, skip_clusters=[0])
    assert op.drop == [3] and op.params["clusters_kept_whole"] == 1


def test_malformed_exports(workspace):
    source = {"path": "mem", "sha256": "x"}
    with pytest.raises(ValueError, match="empty"):
        export_curated([], "x", source)
    with pytest.raises(ValueError, match="outside the 1 source rows"):
        export_curated([chat("q", "a")], "x", source, [CurationOperation("bad", drop=[5])])
    with pytest.raises(ValueError, match="every row was dropped"):
        export_curated([chat("q", "a")], "x", source, [CurationOperation("all", drop=[0])])
    with pytest.raises(ValueError, match="name"):
        export_curated([chat("q", "a")], "  ", source)
    assert list(datasets_dir().iterdir()) == []


def test_summary_and_highlight():
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"},
                          {"role": "assistant", "content": "Hi!"}]}, {"text": "plain text row"}]
    summary = dataset_summary(rows)
    assert summary.rows == 2 and summary.text_rows == 1
    assert summary.roles == {"system": 1, "user": 1, "assistant": 1, "text": 1}
    assert summary.prompt_chars == [11, 0] and summary.answer_chars == [3, 14]
    assert summary.est_tokens > 0
    html = highlight_html("a <b> & c d", [(2, 5), (8, 9)])
    assert '<mark style="background:#ffd54f;color:#000;padding:0 1px">&lt;b&gt;</mark>' in html
    assert html.count("<mark") == 2 and "&amp;" in html
    long = "x" * 10000 + " MATCH " + "y" * 10000
    short = highlight_html(long, [(10001, 10006)], max_chars=400)
    assert "MATCH</mark>" in short and len(short) < 1000


def test_extra_columns_and_ids_survive_load_curate_export(workspace, tmp_path):
    """The user's own columns ride along on every kept row, and the manifest names the dropped rows by id."""
    rows = [{"instruction": f"Say the number {i}.", "input": "", "output": f"{i}", "uid": f"u-{i}", "source": "synthetic", "weight": i / 10}
            for i in range(6)]
    rows.append(dict(rows[2], uid="u-copy-of-2", source="scraped"))  # an exact duplicate under its own id
    path = tmp_path / "with-ids.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    loaded = load_dataset_file(path)
    assert loaded.id_column == "uid" and loaded.columns == ["uid", "source", "weight"]
    drop_first = CurationOperation("manual", drop=[0], label="manual review")
    operations = [operation_from_dedup(find_exact_duplicates(loaded.rows)), drop_first]
    folder = export_curated(loaded.rows, "with-ids", DatasetSource.from_loaded(loaded), operations)

    manifest = read_manifest(folder)
    assert manifest["id_column"] == "uid" and manifest["source"]["columns"] == ["uid", "source", "weight"]
    assert [(op["dropped"], op["dropped_ids"]) for op in manifest["operations"]] == [([6], ["u-copy-of-2"]), ([0], ["u-0"])]
    again = load_dataset_file(folder)  # the exported dataset, read back like any other
    assert [r["uid"] for r in again.rows] == ["u-1", "u-2", "u-3", "u-4", "u-5"]
    assert again.rows[0] == {"messages": loaded.rows[1]["messages"], "uid": "u-1", "source": "synthetic", "weight": 0.1}
    assert again.id_column == "uid"

    other = export_curated(loaded.rows, "by-source", DatasetSource.from_loaded(loaded), [drop_first], id_column="source")
    assert read_manifest(other)["operations"][0]["dropped_ids"] == ["synthetic"]
    with pytest.raises(ValueError, match="id column 'nope' is missing on row"):
        export_curated(loaded.rows, "bad-id", DatasetSource.from_loaded(loaded), [drop_first], id_column="nope")
