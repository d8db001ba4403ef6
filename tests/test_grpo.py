"""GRPO on verifiable rewards (issue 28 item 4): real GRPO steps through the worker on the tiny random Llama (TRL's
GRPO metrics in metrics.jsonl, the sampled completions with their rewards in completions.jsonl, KL and a continued
adapter when beta > 0), the spec's and the data's refusals, and the completions table's rows."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from inprocess import run_succeeded, train_rows
from streamlit.testing.v1 import AppTest

from core import runs, scorers
from core.train.data import DataError, prepare_prompt_data
from core.train.grpo import COMPLETIONS_FILE, completion_rows, read_completions
from core.train.live import GRPO_GUIDE
from core.train.methods import OBJECTIVES, hidden_objective_fields
from core.train.spec import TrainSpec

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo" / "train.jsonl"


def _demo_rows(n: int) -> list[dict]:
    return [json.loads(line) for line in DEMO.read_text().splitlines()[:n]]


@pytest.fixture
def tickets(tmp_path) -> Path:
    """Four demo tickets: system + user turns, the assistant's JSON answer the rewards compare with."""
    path = tmp_path / "tickets.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _demo_rows(4)))
    return path


def _spec(model_dir: Path, data: Path, **changes) -> TrainSpec:
    fields = dict(model={"kind": "local", "ref": str(model_dir)}, dataset=str(data), objective="grpo", beta=0.0, max_steps=2, batch_size=2,
                  num_generations=2, max_completion_length=8, max_length=256, eval_fraction=0.0, learning_rate=1e-3, warmup_ratio=0.0,
                  lora_r=4, lora_alpha=8, save_steps=100, eval_on_start=False, logging_steps=1, completions_every=1)
    fields.update(changes)
    return TrainSpec(**fields)


@pytest.mark.slow
def test_grpo_trains_through_the_worker_writes_its_metrics_and_completions_and_continues_with_beta(workspace, tiny_llama_dir, tickets):
    run_dir = run_succeeded(_spec(tiny_llama_dir, tickets))
    rows = train_rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    for key in (*OBJECTIVES["grpo"].metrics, "rewards/json_valid/mean", "rewards/json_valid/std", "rewards/field_match:urgency/mean",
                "clip_ratio/region_mean"):
        assert all(r.get(key) is not None and math.isfinite(r[key]) for r in rows), (key, rows)
    assert "kl" not in rows[0], "beta 0: no reference model, no KL"
    assert all(0 < r["completions/mean_length"] <= 8 and r["tokens_per_s"] > 0 for r in rows)
    card = runs.read_result(run_dir)
    assert card["objective"] == "grpo" and card["data"]["train_rows"] == 4
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()

    table = runs.read_all_metrics(run_dir / COMPLETIONS_FILE)
    assert sorted({r["step"] for r in table}) == [1, 2] and len(table) == 4, "one group of 2 completions per step"
    users = {m["content"] for r in _demo_rows(4) for m in r["messages"] if m["role"] == "user"}
    for row in table:
        assert row["prompt"] in users
        # the rewards scored this very completion: recompute the JSON-validity part from the text
        assert row["rewards"]["json_valid"] == scorers.json_validity(row["completion"])
        assert row["reward"] == pytest.approx(row["rewards"]["json_valid"] + row["rewards"]["field_match:urgency"])
    step_two = read_completions(run_dir)
    assert {r["step"] for r in step_two} == {2} and len(step_two) == 2

    # The Train page on this run: GRPO's charts, its reading guide and the newest sampled completions with their rewards.
    page = AppTest.from_file(str(ROOT / "app_pages" / "train.py"), default_timeout=180)
    page.session_state["active_model"] = {"kind": "local", "ref": str(tiny_llama_dir)}
    page.query_params["run"] = run_dir.name
    page.run()
    assert not page.exception
    titles = {json.loads(chart.proto.spec)["layout"]["title"]["text"] for chart in page.get("plotly_chart")}
    assert {"Reward (weighted sum) ± std", "Each reward: mean", "Groups with zero reward std (no signal)", "Completion length (tokens)",
            "Clipped"} <= titles, titles
    assert "KL to the reference (beta > 0)" not in titles and "Implicit rewards" not in titles
    assert all(line in " ".join(c.value for c in page.caption) for line in GRPO_GUIDE)
    table = next(d.value for d in page.dataframe if "completion" in d.value.columns)
    assert list(table["completion"]) == [r["completion"] for r in step_two] and list(table["json_valid"]) == [r["rewards"]["json_valid"]
                                                                                                            for r in step_two]

    # beta > 0 continuing this run's adapter: a reference (TRL's frozen copy of the starting adapter) and its KL; no table
    second = run_succeeded(_spec(tiny_llama_dir, tickets, beta=0.04, init_adapter=run_dir.name, grpo_loss_type="grpo", max_steps=1,
                             completions_every=0))
    assert all(r.get("kl") is not None and math.isfinite(r["kl"]) for r in train_rows(second))
    assert runs.read_result(second)["parent"]["run_id"] == run_dir.name
    assert not (second / "adapter" / "ref").exists(), "only the trained adapter is saved, not TRL's frozen reference copy"
    assert not (second / COMPLETIONS_FILE).exists(), "completions_every 0 writes no table"


def test_train_form_shows_the_grpo_fields_only_for_grpo(workspace, tiny_llama_dir):
    at = AppTest.from_file(str(ROOT / "app_pages" / "train.py"), default_timeout=120)
    at.session_state["active_model"] = {"kind": "local", "ref": str(tiny_llama_dir)}
    at.run()
    grpo_keys = [f"train_form_{name}" for name in ("num_generations", "max_completion_length", "temperature")]

    def shown(kind: str) -> set[str]:
        return {w.key for w in at.get(kind)}

    assert not set(grpo_keys) & shown("number_input") and "train_form_rewards" not in shown("multiselect")
    at.selectbox(key="train_form_objective").set_value("grpo").run()
    assert set(grpo_keys) <= shown("number_input") and at.number_input(key="train_form_beta").value == 0.0
    rewards = at.multiselect(key="train_form_rewards")
    assert rewards.value == ["json_valid", "field_match"] and at.text_input(key="train_form_rewards_field_match_field").value == "urgency"
    assert "train_form_rewards_allow" not in shown("checkbox"), "the opt-in tick appears only with the python reward"
    rewards.set_value(["json_valid", "python"]).run()
    assert "train_form_rewards_allow" in shown("checkbox")
    assert any(e.value.startswith("Check the form: rewards: the python reward runs your own code") for e in at.error)
    at.checkbox(key="train_form_rewards_allow").check().run()
    assert not [e.value for e in at.error]
    spec = yaml.safe_load(next(c.value for c in at.code if "kind: train" in c.value))
    assert spec["objective"] == "grpo" and [r["name"] for r in spec["rewards"]["rewards"]] == ["json_valid", "python"]
    assert spec["rewards"]["allow_user_code"] is True
    at.selectbox(key="train_form_objective").set_value("dpo").run()
    assert not set(grpo_keys) & shown("number_input") and "train_form_rewards" not in shown("multiselect")


def test_grpo_fields_show_only_for_grpo():
    for name in ("rewards", "num_generations", "max_completion_length", "temperature", "grpo_loss_type", "completions_every"):
        assert name not in hidden_objective_fields("grpo")
        assert all(name in hidden_objective_fields(o) for o in OBJECTIVES if o != "grpo"), name


@pytest.mark.parametrize(("changes", "field"), [
    ({"batch_size": 3, "num_generations": 2}, "num_generations"),
    ({"num_generations": 1}, "num_generations"),
    ({"max_completion_length": 256}, "max_completion_length"),
    ({"temperature": 0.0}, "temperature"),
    ({"grpo_loss_type": "ppo"}, "grpo_loss_type"),
    ({"precompute_ref_log_probs": True}, "precompute_ref_log_probs"),
    ({"packing": True}, "packing"),
    ({"rewards": [{"name": "json_valid"}, {"name": "no_such_reward"}]}, "rewards[1].name"),
    ({"rewards": [{"name": "field_match", "params": {"field": "urgency", "colour": "red"}}]}, "rewards[0].params"),
    ({"rewards": [{"name": "python", "params": {"source": "def reward(completion, row):\n    return 1.0\n"}}]}, "rewards"),
])
def test_grpo_spec_refusals_name_the_field(tmp_path, changes, field):
    with pytest.raises(ValueError) as caught:
        _spec(tmp_path, DEMO, **changes)
    assert str(caught.value).startswith(field), str(caught.value)


def test_grpo_rewards_are_checked_and_filled_in(tmp_path):
    spec = _spec(tmp_path, DEMO, rewards=[{"name": "field_match", "params": {"field": "next_step"}, "weight": 2}])
    assert spec.rewards == {"rewards": [{"name": "field_match", "params": {"field": "next_step", "free_text": False, "reference_field": ""},
                                         "weight": 2.0}], "allow_user_code": False}
    allowed = {"rewards": [{"name": "python", "params": {"source": "def reward(completion, row):\n    return 1.0\n"}}],
               "allow_user_code": True}
    assert _spec(tmp_path, DEMO, rewards=allowed).reward_spec().allow_user_code


def test_prompt_data_from_messages_rows_and_refusals(tmp_path, embedded_tokenizer):
    spec = _spec(tmp_path, DEMO, max_completion_length=64)
    data = prepare_prompt_data(spec, embedded_tokenizer)
    first = _demo_rows(1)[0]["messages"]
    row = data.train.features[0]
    assert len(data.train.features) + data.train.n_truncated == data.train.n_rows and data.eval is None
    assert row["reference"] in {r["messages"][-1]["content"] for r in _demo_rows(400)}
    assert [m["role"] for m in row["prompt"]] == [m["role"] for m in first[:-1]]
    assert data.train.longest >= 64 and data.detected_format == "messages"

    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"text": "a story with no turns"}) + "\n")
    with pytest.raises(DataError, match=r"plain.jsonl row 1: GRPO needs conversations"):
        prepare_prompt_data(_spec(tmp_path, plain), embedded_tokenizer)
    tight = _spec(tmp_path, DEMO, max_length=64, max_completion_length=32)
    with pytest.raises(DataError, match="none of its .* prompts fits"):
        prepare_prompt_data(tight, embedded_tokenizer)


def test_completion_rows_from_trl_logs():
    logs = {"prompt": [[{"role": "system", "content": "s"}, {"role": "user", "content": "ticket A"}]] * 2,
            "completion": [[{"role": "assistant", "content": '{"urgency": "high"}'}], [{"role": "assistant", "content": "nope"}]],
            "rewards": {"json_valid": [1.0, 0.0], "field_match:urgency": [1.0, float("nan")]},
            "advantages": [0.7, -0.7], "extra": {"field_match:urgency error": ["", "no JSON"]}}
    rows = completion_rows(3, logs, ["json_valid", "field_match:urgency"], [1.0, 2.0])
    assert [r["prompt"] for r in rows] == ["ticket A", "ticket A"]
    assert rows[0]["reward"] == 3.0 and rows[0]["completion"] == '{"urgency": "high"}' and "errors" not in rows[0]
    assert rows[1]["rewards"] == {"json_valid": 0.0, "field_match:urgency": None} and rows[1]["reward"] == 0.0
    assert rows[1]["errors"] == {"field_match:urgency error": "no JSON"} and rows[1]["advantage"] == -0.7


def test_memory_estimate_counts_sampling_and_the_completion_logits_by_hand():
    from core.memory import MemorySpec, estimate, preset_arch
    from core.memory.estimator import FUSED_HEAD_BACKWARD_TILES, FUSED_HEAD_FORWARD_TILES, GENERATION_PHASE

    arch = preset_arch("SmolLM2 135M")  # 30 layers, 3 KV heads of 64, hidden 576, MLP 1536, vocabulary 49152
    assert (arch.num_layers, arch.num_kv_heads, arch.head_dim, arch.hidden_size, arch.intermediate_size, arch.vocab_size) == (
        30, 3, 64, 576, 1536, 49152)

    def grpo(**changes):
        fields = dict(method="lora", precision="fp32", device="cpu", batch_size=8, seq_len=384, objective="grpo", completion_len=128)
        return estimate(MemorySpec(arch, **{**fields, **changes}))

    est = grpo()
    kv = 2 * 30 * 3 * 64 * 4 * 8 * 384  # K and V x layers x kv heads x head dim x fp32 x 8 completions x (256 prompt + 128)
    prefill = 8 * 256 * (3 * 1536 + 3 * 576) * 4  # the prompts' largest layer tensors, above one step's logits (2 x 4 x 8 x 49152)
    # TRL's chunked log-prob head, on a CPU over every position (8 x 383): one fp32 tile of 3064 positions x 32768 vocabulary
    # entries, the torch fold's fp32 temporaries of it, the bool target mask, and the fp32 gradient of the hidden states
    tile = 3064 * 32768
    head = tile * 4 + 4 * tile * FUSED_HEAD_BACKWARD_TILES + tile + 3064 * 576 * 4
    assert est.objective_parts == {"generation KV cache": kv, "generation working set": prefill, "chunked log-prob head": head}
    assert est.phases[GENERATION_PHASE]["activations"] == kv + prefill and est.phases[GENERATION_PHASE]["gradients"] == 0
    assert est.breakdown["reference"] == 0 and "reference" not in " ".join(est.objective_parts), "beta 0: no reference"
    assert grpo(grad_accumulation=4).objective_parts["generation KV cache"] == 4 * kv, "TRL samples batch x accumulation at once"

    kl = grpo(beta=0.04)
    assert kl.objective_parts["reference adapter copy"] == kl.trainable_params * 4
    forward_head = tile * 4 + 4 * tile * FUSED_HEAD_FORWARD_TILES + 3064 * 576 * 4  # no grad: the tile's fold and the flat copy
    assert kl.objective_parts["reference forward"] == max(8 * 384 * (3 * 1536 + 3 * 576) * 4, forward_head + 8 * 384 * 576 * 4)
    gpu = grpo(device="cuda", precision="mixed")  # Triton scores the 8 x 128 completion positions only
    assert gpu.objective_parts["chunked log-prob head"] == 1024 * 32768 * 2 + 1024 * 576 * 4

    # 64 completions sampled at once, trained one at a time with checkpointing: sampling is the peak
    long = grpo(batch_size=1, grad_accumulation=64, seq_len=1024, completion_len=768, gradient_checkpointing=True)
    assert long.peak_phase == GENERATION_PHASE and long.total_bytes == sum(long.phases[GENERATION_PHASE].values())
    with pytest.raises(ValueError, match="completion_len"):
        grpo(completion_len=0)


def test_budget_page_estimates_grpo_with_its_completion_length(workspace):
    from core import memory

    at = AppTest.from_file(str(ROOT / "app_pages" / "budget.py"), default_timeout=120)
    at.run()
    at.radio(key="budget_origin").set_value("Preset").run()
    at.selectbox(key="budget_preset").set_value("SmolLM2 135M").run()
    at.selectbox(key="budget_device").set_value("cuda").run()
    at.select_slider(key="budget_seq").set_value(512).run()
    at.selectbox(key="budget_objective").set_value("grpo").run()
    at.number_input(key="budget_completion").set_value(128).run()
    assert not at.exception
    spec = memory.MemorySpec(memory.preset_arch("SmolLM2 135M"), method="lora", precision="mixed", batch_size=4, seq_len=512,
                             gradient_checkpointing=True, attention="sdpa", device="cuda", objective="grpo", completion_len=128)
    expected = memory.estimate(spec)
    assert next(m for m in at.metric if m.label == "Peak memory").value == f"{expected.total_bytes / memory.GB:.2f} GB"
    parts = next(d.value for d in at.dataframe if "GRPO adds" in d.value.columns)
    assert list(parts["GRPO adds"]) == list(expected.objective_parts)
