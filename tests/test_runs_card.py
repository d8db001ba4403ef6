"""Run cards and lineage, run comparison, and report_to tracking (TensorBoard event files read back for real)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from inprocess import run_in_process

from core import runs
from core.export.spec import ExportSpec
from core.runs.card import CARD_FILE, README_FILE, build_card, lineage, lineage_dot, scan, source_run_of
from core.runs.side_by_side import side_by_side, spec_diff
from core.train.spec import TrainSpec
from core.train.tracking import installed, tensorboard_scalars

pytestmark = pytest.mark.slow


def _run(spec) -> Path:
    run_dir, _ = run_in_process(spec)
    status = runs.read_status(run_dir)
    assert status.state == "succeeded", status.error
    return run_dir


def _data(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Colour {i}?"}, {"role": "assistant", "content": c}]}
            for i, c in enumerate(("red", "blue", "green", "pink", "grey", "black", "white", "gold", "teal", "navy"))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _train(tiny_llama_dir: Path, data: Path, **changes) -> Path:
    fields = dict(model={"kind": "local", "ref": str(tiny_llama_dir)}, dataset=str(data), max_steps=3, batch_size=4, max_length=64,
                  eval_fraction=0.2, learning_rate=1e-2, warmup_ratio=0.0, lora_r=4, lora_alpha=8, save_steps=100,
                  eval_on_start=True, logging_steps=1)
    fields.update(changes)
    return _run(TrainSpec(**fields))


def test_tensorboard_event_files_hold_the_runs_losses(workspace, tiny_llama_dir, tmp_path):
    trackers = ["tensorboard"] + (["wandb"] if not installed("wandb") else [])
    run_dir = _train(tiny_llama_dir, _data(tmp_path), report_to=trackers)
    scalars = tensorboard_scalars(run_dir)
    ours = {r["step"]: r["loss"] for r in runs.read_all_metrics(run_dir / runs.METRICS_FILE) if "loss" in r}
    logged = dict(scalars["train/loss"])
    assert sorted(logged) == sorted(ours)
    assert all(abs(logged[s] - ours[s]) < 1e-4 for s in ours)
    assert "train/learning_rate" in scalars
    card = json.loads((run_dir / "training.json").read_text())
    assert card["tracking"]["report_to"] == ["tensorboard"]
    if "wandb" in trackers:  # not installed here: a note, never a failure
        assert any("wandb" in note and "not installed" in note for note in card["tracking"]["notes"])


def test_report_to_names_an_unknown_tracker(tiny_llama_dir):
    with pytest.raises(ValueError, match="report_to: unknown tracker.*neptune"):
        TrainSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, report_to=["neptune"])


def test_card_links_data_masking_memory_curves_and_every_descendant_artifact(workspace, tiny_llama_dir, tmp_path):
    from core.merge import MergeSpec

    train_dir = _train(tiny_llama_dir, _data(tmp_path), name="parent")
    adapter = train_dir / "adapter"
    export_dir = _run(ExportSpec(source_run=str(train_dir), formats=["adapter", "gguf_f16", "recipes"], min_agreement=0.0))
    tuned = {"kind": "local", "ref": str(tiny_llama_dir), "adapter": str(adapter)}
    merge_dir = _run(MergeSpec(method="linear", base={}, models=[{"source": tuned, "weight": 0.5},
                                                                 {"source": {"kind": "local", "ref": str(tiny_llama_dir)}, "weight": 0.5}],
                               evaluate=False, name="merged-child"))
    grandchild = _run(ExportSpec(source_run=str(merge_dir), formats=["merged"]))

    # the worker refreshed the parent's card after each child: it is on disk, not only computed on demand
    card = json.loads((train_dir / CARD_FILE).read_text())
    assert card["data"]["sha256"] and card["data"]["train_rows"] == 8
    assert (card["masking"]["trained_tokens"] > 0 and card["masking"]["policy"] == "all_assistant"
            and card["masking"]["reasoning"] == "train")
    assert card["memory"]["measured_peak_bytes"] > 0 and card["memory"]["predicted_bytes"] > 0
    assert card["curves"]["logged_steps"] == 3 and card["curves"]["eval_losses"]
    descendants = {d["run_id"]: d for d in card["descendants"]}
    assert set(descendants) == {export_dir.name, merge_dir.name, grandchild.name}
    exported = {a["name"] for a in descendants[export_dir.name]["artifacts"]}
    assert {"adapter", "gguf_f16", "recipes"} <= exported
    assert descendants[grandchild.name]["parents"] == [merge_dir.name]
    readme = (train_dir / README_FILE).read_text()
    assert readme.startswith("---\n") and "library_name: peft" in readme
    for name in (export_dir.name, merge_dir.name, grandchild.name):
        assert name in readme

    # any artifact reopens its source run; the lineage graph draws the family
    gguf = next(a["path"] for a in descendants[export_dir.name]["artifacts"] if a["name"] == "gguf_f16")
    assert source_run_of(gguf) == export_dir.name
    dot = lineage_dot(merge_dir.name)
    assert f'"{train_dir.name}" -> "{merge_dir.name}"' in dot and f'"{merge_dir.name}" -> "{grandchild.name}"' in dot
    assert build_card(grandchild.name)["ancestors"] == [merge_dir.name, train_dir.name]


def test_compare_overlays_curves_diffs_specs_and_lines_up_metrics(workspace, tiny_llama_dir, tmp_path):
    data = _data(tmp_path)
    first = _train(tiny_llama_dir, data, learning_rate=1e-2)
    second = _train(tiny_llama_dir, data, learning_rate=3e-3)
    view = side_by_side([first.name, second.name])
    fields = {row["field"]: row for row in view["spec_diff"]}
    assert set(fields) == {"learning_rate"}
    assert fields["learning_rate"][first.name] == "0.01"
    metrics = {row["metric"]: row for row in view["final_metrics"]}
    assert metrics["steps"][first.name] == metrics["steps"][second.name] == 3
    assert "eval loss after" in metrics
    from core.runs.side_by_side import overlay_figure

    traces = overlay_figure(view["run_dirs"]).data
    assert {t.name for t in traces} >= {f"{first.name} · train loss", f"{second.name} · train loss", f"{second.name} · eval loss"}
    assert [r["verdict"] for r in view["reports"]] == ["not evaluated yet"] * 2
    with pytest.raises(ValueError, match="unknown run"):
        side_by_side(["nope"])


def test_spec_diff_flattens_nested_fields():
    rows = spec_diff({"a": {"model": {"kind": "embedded"}, "lr": 1}, "b": {"model": {"kind": "local", "ref": "/m"}, "lr": 1}})
    assert {r["field"] for r in rows} == {"model.kind", "model.ref"}


def test_lineage_is_read_from_the_specs(workspace, tmp_path):
    parent = runs.create_run_from_dict({"kind": "train", "name": "p"})
    child = runs.create_run_from_dict({"kind": "evaluate", "variants": [
        {"label": "tuned", "model": {"kind": "local", "ref": "x", "adapter": str(parent / "adapter")}}]})
    outsider = runs.create_run_from_dict({"kind": "merge", "models": [{"source": {"kind": "local", "ref": str(tmp_path)}}]})
    graph = lineage(scan())
    assert graph.children[parent.name] == [child.name]
    assert graph.parents[outsider.name] == []
