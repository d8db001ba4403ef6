"""The feature-extraction baseline and the method-comparison job (tiny random Llama, real workers)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from inprocess import run_in_process
from jobs_inline import jobs_inline_fixture  # noqa: F401 - a fixture

from core import runs
from core.compare.features import FeatureError, feature_baseline, fit_and_score, label_of, load_labelled
from core.compare.spec import FeatureExtractionSpec, MethodComparisonSpec
from core.compare.table import chapter_check, display_rows, pareto_figure, pareto_front, to_csv
from core.runs.status import read_status

URGENT = ["Our whole site is down and customers cannot pay", "Production outage: every checkout fails right now",
          "Data loss in progress, the database is wiping rows", "Security breach: someone is logged into our admin"]
CALM = ["Whenever you have time, could you send the setup guide", "No rush: a question about an old invoice",
        "Just curious how to change my avatar some day", "Small suggestion for a future release, no hurry"]


def _row(text: str, urgency: str) -> dict:
    answer = json.dumps({"summary": text[:20], "next_step": "escalate_to_engineering", "urgency": urgency})
    return {"messages": [{"role": "system", "content": "Triage as JSON."}, {"role": "user", "content": text},
                         {"role": "assistant", "content": answer}]}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def ticket_files(tmp_path) -> tuple[Path, Path]:
    train = [_row(t, "high") for t in URGENT[:3]] + [_row(t, "low") for t in CALM[:3]]
    test = [_row(URGENT[3], "high"), _row(CALM[3], "low")]
    return _write(tmp_path / "train.jsonl", train * 2), _write(tmp_path / "test.jsonl", test)


# ---------------------------------------------------------------- feature extraction


def test_labels_come_from_a_column_or_the_json_answer():
    assert label_of(_row("x", "High "), "urgency") == "high", "normalised like the field accuracy"
    assert label_of({"text": "x", "urgency": "Low"}, "urgency") == "low"
    assert label_of(_row("x", "high"), "missing") is None


def test_a_separable_label_set_is_learned_exactly():
    rng = np.random.default_rng(0)
    centres = {"low": np.zeros(16), "medium": np.full(16, 5.0), "high": np.full(16, -5.0)}
    labels = [label for label in centres for _ in range(20)]
    x = np.stack([centres[label] + rng.normal(0, 0.5, 16) for label in labels])
    scored = fit_and_score(x[::2], labels[::2], x[1::2], labels[1::2], seed=0)
    assert scored["accuracy"] == 1.0 and scored["majority_accuracy"] == pytest.approx(1 / 3)
    assert scored["head_params"] == 3 * 17, "one weight per feature plus a bias, per class"
    assert set(scored["head"]["classes"]) == set(centres)


def test_non_label_targets_are_refused_by_name(tmp_path):
    same = load_labelled(_write(tmp_path / "same.jsonl", [_row(t, "high") for t in URGENT]), "urgency")
    with pytest.raises(FeatureError, match="every row has the same 'urgency'"):
        feature_baseline(same, same, "urgency", lambda texts: np.zeros((len(texts), 2)), "zeros")
    with pytest.raises(FeatureError, match="no row has a 'severity' label"):
        load_labelled(tmp_path / "same.jsonl", "severity")
    prose = load_labelled(_write(tmp_path / "prose.jsonl", [_row(t, f"words {n}") for n, t in enumerate(URGENT * 15)]), "urgency")
    with pytest.raises(FeatureError, match="60 distinct values"):
        feature_baseline(prose, prose, "urgency", lambda texts: np.zeros((len(texts), 2)), "zeros")


@pytest.mark.slow
def test_feature_extraction_job_with_minilm_separates_urgent_from_calm(workspace, ticket_files):
    train, test = ticket_files
    run_dir, status = run_in_process(FeatureExtractionSpec(encoder="minilm", dataset=str(train), test_dataset=str(test)))
    assert status.state == "succeeded", status.error
    report = runs.read_result(run_dir)
    assert report["accuracy"] == 1.0 and report["test_rows"] == 2 and report["labels"] == ["high", "low"]
    assert report["feature_dim"] == 384 and report["head_params"] == 385
    head = json.loads((run_dir / "head.json").read_text())
    assert len(head["coef"][0]) == 384 and head["classes"] == ["high", "low"]


# ---------------------------------------------------------------- the comparison


def test_comparison_spec_names_bad_fields():
    with pytest.raises(ValueError, match="methods: adapters not known"):
        MethodComparisonSpec(methods=["lora", "adapters"])
    with pytest.raises(ValueError, match="learning_rates: ia3: expected a rate"):
        MethodComparisonSpec(learning_rates={"ia3": 5})
    assert MethodComparisonSpec(learning_rates={"ia3": 0.05}).learning_rate("ia3") == 0.05
    assert MethodComparisonSpec().learning_rate("prompt_tuning") == 3e-2


def test_table_chart_and_chapter_check():
    rows = [{"method": "lora", "label": "LoRA", "trainable_params": 1000, "trainable_share": 0.005, "task_score": 50.0,
             "peak_memory_bytes": 10},
            {"method": "ia3", "label": "(IA)³", "trainable_params": 10, "trainable_share": 0.0001, "task_score": 40.0,
             "peak_memory_bytes": 8},
            {"method": "full", "label": "Full", "trainable_params": 10**6, "trainable_share": 1.0, "task_score": 45.0,
             "peak_memory_bytes": 30},
            {"method": "feature_extraction", "label": "FE", "trainable_params": 5, "trainable_share": 1e-5, "label_accuracy": 60.0}]
    assert chapter_check("lora", 0.005) == "matches ~0.1-1 %" and chapter_check("ia3", 0.0001) == "matches ~0.01 %"
    assert chapter_check("prompt_tuning", 0.002) == "above < 0.1 %" and chapter_check("full", 1.0) == ""
    assert [r["method"] for r in pareto_front(rows, "trainable_params")] == ["feature_extraction"]
    assert [r["method"] for r in pareto_front(rows, "peak_memory_bytes")] == ["ia3", "lora"], "full costs more and scores less"
    fig = pareto_figure(rows, "peak_memory_bytes")
    assert fig.layout.xaxis.type == "log" and len(fig.data) == 2
    csv_text = to_csv(rows)
    assert csv_text.splitlines()[0].startswith("Method,State,Trainable params,Trainable %") and len(csv_text.splitlines()) == 5
    assert display_rows(rows)[0]["Trainable %"] == 0.5


@pytest.mark.slow
def test_comparison_job_on_a_tiny_model_writes_a_complete_table(workspace, tiny_llama_dir, ticket_files, jobs_inline):
    train, test = ticket_files
    spec = MethodComparisonSpec(name="tiny", model={"kind": "local", "ref": str(tiny_llama_dir)},
                                dataset=str(train), eval_dataset=str(test),
                                methods=["lora", "prompt_tuning", "bitfit"], max_steps=2, batch_size=2, max_length=96, lora_r=4,
                                num_virtual_tokens=4, task_samples=2, general_samples=2, mc_samples=4, max_new_tokens=8,
                                learning_rates={"lora": 1e-2, "prompt_tuning": 1e-1})
    run_dir, status = run_in_process(spec)
    assert status.state == "succeeded", status.error
    result = runs.read_result(run_dir)
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["lora", "prompt_tuning", "bitfit", "feature_extraction"]
    for method in ("lora", "prompt_tuning"):
        row = rows[method]
        assert row["state"] == "succeeded", row
        for key in ("trainable_params", "trainable_share", "artifact_bytes", "predicted_memory_bytes", "peak_memory_bytes",
                    "tokens_per_s", "train_seconds", "wall_seconds", "task_score", "general_score", "label_accuracy"):
            assert row[key] is not None, f"{method}: {key} missing"
        assert row["steps"] == 2
    assert rows["prompt_tuning"]["trainable_params"] == 4 * 64 and rows["prompt_tuning"]["mergeable"] is False
    assert rows["bitfit"]["state"] == "failed" and "BitFit trains only bias terms" in rows["bitfit"]["error"]
    assert "bitfit" not in json.loads((run_dir / "children.json").read_text()), "refused from its config: no run started to say so"
    features = rows["feature_extraction"]
    assert features["state"] == "succeeded" and features["label_accuracy"] is not None
    assert features["general_score"] == result["base"]["general_score"], "a frozen backbone keeps the base's general score"
    csv_lines = (run_dir / "comparison.csv").read_text().splitlines()
    assert len(csv_lines) == 5
    children = json.loads((run_dir / "children.json").read_text())
    assert read_status(Path(children["lora"])).kind == "train" and read_status(Path(children["evaluate"])).state == "succeeded"
    assert [r["method"] for r in runs.read_all_metrics(run_dir / runs.METRICS_FILE)] == ["lora", "prompt_tuning", "bitfit"]
    assert len(jobs_inline) == 4, "its children ran in this process (2 trains, the evaluation and the features; bitfit refused)"
