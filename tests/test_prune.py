"""core.prune: each mode reaches its sparsity exactly, 2:4 holds in every group, shrunk models reload, the job."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from core.prune.methods import (
    PruneError,
    count_parameters,
    layer_sparsity_table,
    magnitude_mask,
    n_of_m_mask,
    overall_sparsity,
    prune_model,
    select_linear_layers,
)
from core.prune.spec import PruneSpec
from core.runs.jobs import JobContext, JobError, read_result


def tiny(seed: int = 0, heads: int = 4, kv: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=heads,
                         num_key_value_heads=kv, max_position_embeddings=64, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def linear_names(model, part: str) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and part in n]


def test_unstructured_reaches_the_sparsity_exactly_in_every_selected_layer():
    model = tiny()
    embedding_before = model.model.embed_tokens.weight.clone()
    rows = prune_model(model, "unstructured", 0.3, target="all_linear")
    assert len(rows) == 2 * 7  # q k v o gate up down per layer; never lm_head
    for row in rows:
        w = model.get_submodule(row.name).weight
        assert int((w == 0).sum()) == round(0.3 * w.numel()), row.name
    assert overall_sparsity(rows) == pytest.approx(0.3, abs=1e-3)
    torch.testing.assert_close(model.model.embed_tokens.weight, embedding_before)  # tied lm_head untouched


def test_magnitude_mask_zeroes_the_smallest_weights():
    w = torch.tensor([[0.1, -5.0, 0.3, 2.0], [-0.2, 0.05, 4.0, -1.0]])
    mask = magnitude_mask(w, 0.5)
    assert mask.tolist() == [[False, True, False, True], [False, False, True, True]]


def test_target_selection_mlp_attention_and_custom_pattern():
    model = tiny()
    rows = prune_model(model, "unstructured", 0.5, target="mlp")
    assert {r.name.rsplit(".", 1)[-1] for r in rows} == {"gate_proj", "up_proj", "down_proj"}
    for name in linear_names(model, "self_attn"):
        assert int((model.get_submodule(name).weight == 0).sum()) == 0
    assert set(select_linear_layers(tiny(), "attention")) == set(linear_names(model, "self_attn"))
    assert set(select_linear_layers(tiny(), "custom", r"layers\.1\.mlp\.up")) == {"model.layers.1.mlp.up_proj"}
    with pytest.raises(PruneError, match="no linear layer matches"):
        select_linear_layers(tiny(), "custom", "conv")
    with pytest.raises(PruneError, match="not a valid regular expression"):
        select_linear_layers(tiny(), "custom", "(")


def test_two_four_holds_in_every_group_of_four():
    model = tiny()
    rows = prune_model(model, "semi_structured_2_4", 0.5)
    for row in rows:
        w = model.get_submodule(row.name).weight
        groups = (w.reshape(w.shape[0], -1, 4) == 0).sum(-1)
        assert (groups == 2).all(), row.name
        assert row.sparsity == 0.5
    with pytest.raises(PruneError, match="not a multiple of 4"):
        n_of_m_mask(torch.randn(4, 6), 2, 4, "odd.weight")


def test_channels_zero_whole_columns_with_the_smallest_norm():
    model = tiny()
    rows = prune_model(model, "channels", 0.25, target="mlp", norm=1)
    down = model.model.layers[0].mlp.down_proj.weight
    zero_cols = (down == 0).all(dim=0)
    assert int(zero_cols.sum()) == 32  # 25 % of 128 input channels
    assert all(r.sparsity == 0.25 for r in rows)


def test_mlp_neurons_are_removed_and_the_model_shrinks(tmp_path):
    from transformers import LlamaForCausalLM

    model = tiny()
    before = count_parameters(model)[0]
    rows = prune_model(model, "mlp_neurons", 0.25)
    assert model.config.intermediate_size == 96
    assert all(r.sparsity == pytest.approx(0.25) for r in rows)
    assert count_parameters(model)[0] == before - 2 * 3 * 64 * 32
    ids = torch.tensor([[1, 5, 9, 3]])
    expected = model(ids).logits
    model.save_pretrained(tmp_path / "m")
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "m")
    assert reloaded.model.layers[1].mlp.up_proj.weight.shape == (96, 64)
    torch.testing.assert_close(reloaded(ids).logits, expected)


def test_attention_heads_are_removed_per_kv_group(tmp_path):
    from transformers import LlamaForCausalLM

    model = tiny()
    rows = prune_model(model, "attention_heads", 0.5)
    assert model.config.num_attention_heads == 2 and model.config.num_key_value_heads == 2 and model.config.head_dim == 16
    assert all(r.sparsity == pytest.approx(0.5) for r in rows)
    ids = torch.tensor([[1, 5, 9, 3]])
    expected = model(ids).logits
    model.save_pretrained(tmp_path / "h")
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "h")
    assert reloaded.model.layers[0].self_attn.q_proj.weight.shape == (32, 64)
    torch.testing.assert_close(reloaded(ids).logits, expected)
    out = reloaded.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (1, 8)
    with pytest.raises(PruneError, match="smallest step"):
        prune_model(tiny(), "attention_heads", 0.1)
    with pytest.raises(PruneError, match="no grouped-query attention"):
        prune_model(tiny(heads=4, kv=4), "attention_heads", 0.5)


def test_heatmap_rows_carry_layer_and_module():
    table = layer_sparsity_table(prune_model(tiny(), "unstructured", 0.5, target="attention"))
    assert {(r["layer"], r["module"]) for r in table} >= {(0, "self_attn.q_proj"), (1, "self_attn.o_proj")}
    assert all(r["sparsity"] == 0.5 for r in table)


def test_spec_validation():
    assert PruneSpec(mode="semi_structured_2_4", sparsity=0.9).sparsity == 0.5
    with pytest.raises(ValueError, match="pattern"):
        PruneSpec(target="custom", pattern=" ")
    with pytest.raises(ValueError, match="sparsity"):
        PruneSpec(sparsity=0.99)


def _context(run_dir: Path, data: dict) -> JobContext:
    return JobContext.in_process(run_dir, data, log=logging.getLogger("test"))


@pytest.mark.parametrize("mode, sparsity, evaluate", [("unstructured", 0.5, True), ("mlp_neurons", 0.5, False)])
def test_job_saves_a_pruned_model_that_reloads_and_generates(tiny_llama_dir, tmp_path, workspace, mode, sparsity, evaluate):
    from core.models import ModelSource, load_model
    from core.prune.job import run

    ctx = _context(tmp_path / "run", {"kind": "prune", "model": {"kind": "local", "ref": str(tiny_llama_dir)}, "mode": mode,
                                      "sparsity": sparsity, "latency_tokens": 4, "evaluate": evaluate, "eval_rows": 2})
    result = run(ctx)
    report = read_result(ctx.run_dir, "prune")
    assert report["achieved_sparsity"] == pytest.approx(0.5, abs=1e-6)
    assert report["latency_before"]["new_tokens"] == 4 == report["latency_after"]["new_tokens"]
    assert "Measured" in report["speed_note"]
    loaded = load_model(ModelSource("local", result["pruned_dir"]))
    if mode == "unstructured":
        assert report["parameters_after"] == report["parameters_before"]
        assert report["nonzero_after"] < report["nonzero_before"]
        assert "No speed-up expected" in report["speed_note"]
        w = loaded.model.model.layers[0].mlp.up_proj.weight
        assert int((w == 0).sum()) == w.numel() // 2  # masks folded into the saved weights
    else:
        assert loaded.model.config.intermediate_size == 64
        assert report["parameters_after"] < report["parameters_before"]
        assert report["size_after_bytes"] < report["size_before_bytes"]
    if evaluate:  # the forgetting report compares the model before and after pruning
        evaluation = report["evaluation"]
        assert evaluation["verdict"].startswith("pruned") and evaluation["general_perplexity"] > 1
        assert evaluation["reference_general_perplexity"] != evaluation["general_perplexity"]
        assert any(row["metric"] == "General-text perplexity" and "Δ pruned" in row for row in evaluation["table"])
    ids = loaded.tokenizer("Hello", return_tensors="pt")["input_ids"]
    assert loaded.model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3


def test_job_explains_an_impossible_prune(tiny_llama_dir, tmp_path, workspace):
    from core.prune.job import run

    ctx = _context(tmp_path / "run", {"kind": "prune", "model": {"kind": "local", "ref": str(tiny_llama_dir)},
                                      "mode": "attention_heads", "sparsity": 0.1, "latency_tokens": 2, "evaluate": False})
    with pytest.raises(JobError, match="smallest step is 0.50"):
        run(ctx)


def test_recovery_spec_is_a_valid_train_spec(tmp_path):
    from core.prune.job import recovery_train_spec
    from core.train.spec import TrainSpec

    data = recovery_train_spec(tmp_path / "run" / "pruned", steps=5)
    assert data["kind"] == "train" and data["model"] == {"kind": "local", "ref": str(tmp_path / "run" / "pruned")}
    spec = TrainSpec.from_dict(data)
    assert spec.max_steps == 5 and spec.method == "lora"


def _scored_prompts(run_dir: Path) -> list[str]:
    return [e["prompt"] for e in read_result(run_dir / "eval", "evaluate")["examples"]]


def test_the_prune_verdict_is_scored_on_the_users_task(tiny_llama_dir, tmp_path, workspace, room_task):
    """Chosen task rows, or (none chosen) the training data of the run the model came from; the demo only as the last resort."""
    import json

    from conftest import model_of_a_train_run
    from core.prune.job import run

    rooms = {json.loads(line)["messages"][0]["content"] for line in room_task.read_text().splitlines()}
    trained = model_of_a_train_run(room_task, tiny_llama_dir)
    ctx = _context(tmp_path / "run", {"kind": "prune", "model": {"kind": "local", "ref": str(trained)}, "mode": "unstructured",
                                      "sparsity": 0.3, "latency_tokens": 2, "eval_rows": 2})
    run(ctx)
    report = read_result(ctx.run_dir, "prune")
    task = report["evaluation"]["task_dataset"]
    assert task["origin"] == "run" and task["path"] == str(room_task.resolve()) and trained.parent.name in task["note"]
    assert read_result(ctx.run_dir / "eval", "evaluate")["task"]["source"] == str(room_task.resolve())
    scored = _scored_prompts(ctx.run_dir)
    assert len(scored) == 2 and set(scored) <= rooms, scored  # the verdict's task rows are the user's, not support tickets


def test_task_data_falls_back_to_the_demo_only_when_nothing_is_known(tiny_llama_dir, room_task, workspace):
    from core.models import ModelSource
    from core.transform_eval import DEMO_TASK, task_data_for

    unknown = task_data_for("", [ModelSource("local", str(tiny_llama_dir))])
    assert unknown.origin == "demo" and unknown.path == str(DEMO_TASK) and "demo" in unknown.note
    chosen = task_data_for(str(room_task), [ModelSource("local", str(tiny_llama_dir))])
    assert chosen.origin == "chosen" and chosen.path == str(room_task.resolve())
    with pytest.raises(ValueError, match="task dataset not found: no/such.jsonl"):
        task_data_for("no/such.jsonl", [])
