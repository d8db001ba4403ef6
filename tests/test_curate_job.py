"""The Data page's heavy operations as jobs: a worker runs them, the result file holds them, a page reattaches."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from inprocess import run_in_process

from core import runs
from core.data.audit import audit_rows
from core.data.curate_job import CurateSpec, curation_runs, load_results
from core.data.decontam import DecontamConfig, decontaminate, load_builtin_benchmark
from core.data.dedup import NearDedupConfig, find_exact_duplicates, find_near_duplicates
from core.data.formats import load_dataset_file
from core.runs.status import read_status


def chat(prompt: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


@pytest.fixture
def dataset(tmp_path) -> Path:
    rng = random.Random(0)
    words = "river mountain bread engine violin harbour lantern meadow copper orchard signal canyon".split()
    rows = []
    for i in range(120):
        text = " ".join(rng.choice(words) for _ in range(30))
        rows.append(chat(f"Describe scene {i}: {text}", f"Scene {i} shows {text}. It is calm."))
    rows.append(rows[3])  # exact copy
    near = json.loads(json.dumps(rows[7]))
    near["messages"][1]["content"] = near["messages"][1]["content"].replace("calm", "quiet")
    rows.append(near)
    rows.append(chat(load_builtin_benchmark("GSM8K").items[9], "The answer is 18."))  # a benchmark leak
    path = tmp_path / "scenes.jsonl"
    path.write_text("".join(json.dumps(r | {"id": f"s{k}"}) + "\n" for k, r in enumerate(rows)))
    return path


def run_here(spec) -> Path:
    run_dir, _ = run_in_process(spec)
    return run_dir


def test_curate_job_runs_in_a_worker_and_equals_the_in_process_results(workspace, dataset):
    loaded = load_dataset_file(dataset)
    spec = CurateSpec(dataset=str(dataset), dataset_sha256=loaded.source_hash, exact={}, near={"workers": 1},
                      decontam={"mode": "ngram13", "benchmarks": ["GSM8K"]}, audit={})
    run_dir = runs.create_run(spec)
    runs.launch(run_dir)  # a real worker process, as the page starts it
    status = runs.wait(run_dir, timeout=300)
    assert status.state == "succeeded", status.error + runs.log_tail(run_dir)
    results = load_results(run_dir)
    assert list(results) == ["exact", "near", "decontam", "audit"]
    assert results["exact"].rows_to_drop == find_exact_duplicates(loaded.rows).rows_to_drop == [120]
    assert results["near"].rows_to_drop == find_near_duplicates(loaded.rows, NearDedupConfig(workers=1)).rows_to_drop
    assert 121 in results["near"].rows_to_drop
    expected = decontaminate(loaded.rows, [load_builtin_benchmark("GSM8K")], DecontamConfig(mode="ngram13"))
    assert results["decontam"].rows_to_drop == expected.rows_to_drop == [122]
    assert results["audit"].flags == audit_rows(loaded.rows).flags
    assert [r.path for r in curation_runs(loaded.source_hash)] == [run_dir]
    assert curation_runs(loaded.source_hash, "semantic") == [] and curation_runs("other") == []
    metrics_progress = read_status(run_dir)
    assert metrics_progress.progress == 1.0


def test_a_changed_file_or_a_bad_spec_is_refused_by_name(workspace, dataset):
    spec = CurateSpec(dataset=str(dataset), dataset_sha256="0" * 64, exact={})
    status = read_status(run_here(spec))
    assert status.state == "failed" and "changed since it was opened" in status.error
    with pytest.raises(ValueError, match="engine ray runs exact, near, decontam; run semantic locally"):
        CurateSpec(dataset=str(dataset), engine="ray", semantic={})
    with pytest.raises(ValueError, match="near: threshold must be in"):
        CurateSpec(dataset=str(dataset), near={"threshold": 2})
    with pytest.raises(ValueError, match="choose at least one operation"):
        CurateSpec(dataset=str(dataset))
    with pytest.raises(ValueError, match="select: needs a diversity map"):
        CurateSpec(dataset=str(dataset), select={"n": 5})


@pytest.mark.slow
def test_diversity_map_then_a_selection_from_it(workspace, dataset):
    loaded = load_dataset_file(dataset)
    first = run_here(CurateSpec(dataset=str(dataset), dataset_sha256=loaded.source_hash, diversity={"clusters": 4}))
    assert read_status(first).state == "succeeded", read_status(first).error
    diversity = load_results(first)["diversity"]
    assert len(diversity.points) == len(loaded.rows) and len(diversity.clusters) == 4 and (first / "embeddings.npy").is_file()
    second = run_here(CurateSpec(dataset=str(dataset), dataset_sha256=loaded.source_hash,
                                 select={"n": 12, "method": "cluster_balanced", "map_run": str(first)}))
    assert read_status(second).state == "succeeded", read_status(second).error
    selection = load_results(second)["select"]
    assert len(selection.selected) == 12 and selection.coverage["clusters_covered"] == 4


@pytest.mark.slow
def test_answer_loss_job_feeds_the_high_loss_rule(workspace, tmp_path):
    """The embedded model scores real support-ticket answers low and a garbled answer far higher."""
    from core.data.formats import demo_dataset_path
    from core.evaluate.answer_loss import AnswerLossSpec

    # 20 real rows: the fewest the high_loss rule judges (core.data.audit._flag_losses needs 20 known losses)
    rows = [json.loads(line) for line in demo_dataset_path("train").read_text().splitlines()[:20]]
    garbled = json.loads(json.dumps(rows[0]))
    garbled["messages"][-1]["content"] = "qz xv 7#k !!plorf wubb ~~ zzkq 0x9 fnord glarb vrrp"
    rows.append(garbled)
    path = tmp_path / "tickets.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_dataset_file(path)
    run_dir = run_here(AnswerLossSpec(dataset=str(path), dataset_sha256=loaded.source_hash, max_length=512))
    status = read_status(run_dir)
    assert status.state == "succeeded", status.error
    from core.runs.jobs import read_result

    result = read_result(run_dir)
    losses = result["loss"]
    assert len(losses) == 21 and all(v is not None and v > 0 for v in losses) and result["tokens"][0] > 10
    assert losses[20] > 2 * result["median_loss"]
    audit = audit_rows(loaded.rows, losses=losses)
    assert 20 in audit.rows_flagged_by("high_loss")
