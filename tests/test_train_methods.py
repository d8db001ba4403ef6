"""The PEFT table as train methods: exact trainable counts against PEFT, each method training through the real
worker and changing the model, the refusals (BitFit without biases, merging prompt / prefix tuning), prompt
tuning's text initialisation, and artifacts loading back for Chat / Evaluate."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from inprocess import run_in_process

from core import runs
from core.memory import MemorySpec, arch_from_config, estimate, materialised_delta_bytes, trainable_params
from core.train.methods import METHODS, adapter_merge_refusal, attach_method, hidden_fields, trainable_counts
from core.train.spec import TrainSpec

PEFT_FAMILY = ("loha", "lokr", "ia3", "prompt_tuning", "prefix_tuning", "bitfit", "partial")
ROWS = [("2+2?", "4"), ("Capital of France?", "Paris"), ("Colour of the sky?", "Blue"), ("Opposite of hot?", "Cold")]


def _config(tokenizer, bias: bool):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, attention_bias=bias, mlp_bias=bias,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


@pytest.fixture(scope="session")
def biased_llama_dir(tmp_path_factory, embedded_tokenizer) -> Path:
    """A tiny random Llama with biases in every linear layer (what BitFit trains)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-biased-llama")
    LlamaForCausalLM(_config(embedded_tokenizer, bias=True)).save_pretrained(path, safe_serialization=True)
    embedded_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in ROWS * 2]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _spec(model_dir: Path, data: Path, method: str, **changes) -> TrainSpec:
    fields = dict(model={"kind": "local", "ref": str(model_dir)}, dataset=str(data), method=method, max_steps=2, batch_size=2,
                  max_length=64, eval_fraction=0.0, learning_rate=METHODS[method].learning_rate * 5, warmup_ratio=0.0, lora_r=4,
                  lora_alpha=8, num_virtual_tokens=4, frozen_layers=1, save_steps=100, eval_on_start=False)
    fields.update(changes)
    return TrainSpec(**fields)


def _probe_logits(model, tokenizer) -> torch.Tensor:
    ids = torch.tensor([tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}], add_generation_prompt=True, tokenize=True,
                                                      return_dict=True)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids, logits_to_keep=1).logits[0, -1]


# ---------------------------------------------------------------- counts


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("method", ["lora", "dora", *PEFT_FAMILY, "full"])
def test_trainable_count_is_exactly_what_peft_trains(embedded_tokenizer, embedded_dir, method, bias):
    from transformers import LlamaForCausalLM

    if method == "bitfit" and not bias:
        pytest.skip("BitFit needs biases (refusal tested below)")
    config = _config(embedded_tokenizer, bias)
    spec = TrainSpec(method=method, lora_r=4, num_virtual_tokens=8, frozen_layers=1)
    model = attach_method(LlamaForCausalLM(config), spec, str(embedded_dir))
    if METHODS[method].peft:
        peft_trainable, _ = model.get_nb_trainable_parameters()
    else:
        peft_trainable = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values() if p.requires_grad)
    assert trainable_counts(model)[0] == peft_trainable > 0
    predicted = trainable_params(MemorySpec(arch_from_config(config), method=method, lora_r=4, num_virtual_tokens=8, frozen_layers=1,
                                            device="cpu", precision="fp32"))
    assert predicted == peft_trainable, f"{method}: core.memory says {predicted:,}, PEFT trains {peft_trainable:,}"


def test_memory_follows_what_each_method_keeps_for_backward(embedded_tokenizer):
    arch = arch_from_config(_config(embedded_tokenizer, bias=True))
    common = dict(batch_size=4, seq_len=128, device="cpu", precision="fp32", num_virtual_tokens=16)
    est = {m: estimate(MemorySpec(arch, method=m, **common))
           for m in ("full", "lora", "ia3", "prompt_tuning", "prefix_tuning", "bitfit", "partial", "loha")}
    act = {m: e.breakdown.get("activations", 0) or e.phases["forward/backward"]["activations"] for m, e in est.items()}
    assert act["partial"] < act["full"], "nothing is kept below the frozen layers"
    assert act["prompt_tuning"] > act["bitfit"], "prompt tuning computes 16 more positions per row"
    assert act["ia3"] > act["bitfit"], "(IA)³ keeps the scaled outputs for its vectors' gradients"
    delta = materialised_delta_bytes(est["loha"].spec)
    assert delta == 4 * (64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3) * 2, "LoHa keeps each layer's whole ΔW (fp32)"
    assert act["loha"] - delta < act["lora"], "but no rank-r A outputs per token"
    assert est["bitfit"].trainable_params == 2 * (64 + 32 + 32 + 64 + 128 + 128 + 64)
    from core.memory import METHOD_LABELS

    for method in ("ia3", "prompt_tuning", "prefix_tuning", "bitfit", "partial", "loha"):
        assert any(a.startswith(METHOD_LABELS[method] + ":") for a in est[method].assumptions), f"{method}: the breakdown explains itself"


def test_form_shows_only_the_chosen_methods_fields():
    assert "num_virtual_tokens" in hidden_fields("lora") and "lora_r" not in hidden_fields("lora")
    assert "lora_r" in hidden_fields("prompt_tuning") and "prompt_init_text" not in hidden_fields("prompt_tuning")
    assert "prompt_init_text" in hidden_fields("prefix_tuning") and "num_virtual_tokens" not in hidden_fields("prefix_tuning")
    assert "frozen_layers" not in hidden_fields("partial") and "frozen_layers" in hidden_fields("ia3")
    assert {"lora_r", "num_virtual_tokens", "frozen_layers"} <= set(hidden_fields("bitfit"))


# ---------------------------------------------------------------- refusals


def test_spec_refuses_merging_prompt_learning_and_stray_fields():
    for method in ("prompt_tuning", "prefix_tuning"):
        with pytest.raises(ValueError, match="merge_after: .*cannot be merged into the weights: it adds learned virtual tokens"):
            TrainSpec(method=method, merge_after=True)
    assert TrainSpec(method="ia3", merge_after=True).merge_after
    with pytest.raises(ValueError, match="prompt_init_text: only prompt tuning"):
        TrainSpec(method="lora", prompt_init_text="Triage")
    with pytest.raises(ValueError, match="num_virtual_tokens: 0 is below the minimum"):
        TrainSpec(method="prompt_tuning", num_virtual_tokens=0)


def test_bitfit_on_a_model_without_biases_is_refused_by_name(workspace, tiny_llama_dir, data_file):
    from core.hardware import detect
    from core.train.preflight import run_preflight

    spec = _spec(tiny_llama_dir, data_file, "bitfit")
    assert "BitFit trains only bias terms" in run_preflight(spec, detect()).refusal
    run_dir, status = run_in_process(spec)
    assert status.state == "failed"
    assert "BitFit trains only bias terms" in status.error and "has none" in status.error
    assert not (run_dir / "checkpoints").exists()


def test_partial_that_freezes_everything_is_refused(workspace, tiny_llama_dir, data_file):
    run_dir, status = run_in_process(_spec(tiny_llama_dir, data_file, "partial", frozen_layers=2))
    assert status.state == "failed" and "frozen_layers: 2 would freeze all 2 layers" in status.error


# ---------------------------------------------------------------- training through the worker


@pytest.mark.slow
@pytest.mark.parametrize("method", PEFT_FAMILY)
def test_each_method_trains_in_the_worker_and_changes_the_model(workspace, tiny_llama_dir, biased_llama_dir, data_file, method):
    from core.models import ModelSource, load_model

    base_dir = biased_llama_dir if method == "bitfit" else tiny_llama_dir
    extra = {"prompt_init_text": "Answer briefly"} if method == "prompt_tuning" else {}
    run_dir, status = run_in_process(_spec(base_dir, data_file, method, **extra))
    assert status.state == "succeeded", status.error
    card = runs.read_result(run_dir)
    assert card["final_metrics"]["global_step"] == 2 and card["tokens_per_s"] > 0
    arch = arch_from_config(json.loads((base_dir / "config.json").read_text()))
    assert card["trainable_params"] == trainable_params(MemorySpec(arch, method=method, lora_r=4, num_virtual_tokens=4, frozen_layers=1,
                                                                   device="cpu", precision="fp32"))
    assert 0 < card["trainable_share"] < 1 and card["artifact_bytes"] > 0 and card["predicted_memory_bytes"] > 0

    base = load_model(ModelSource("local", str(base_dir)))
    if METHODS[method].peft:
        tuned = load_model(ModelSource("local", str(base_dir), adapter=card["outputs"]["adapter"]))
        assert json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["peft_type"].lower().replace("_", "") in (
            method.replace("_", ""), "ia3")
    else:
        tuned = load_model(ModelSource("local", card["outputs"]["model"]))
    difference = (_probe_logits(tuned.model, tuned.tokenizer) - _probe_logits(base.model, base.tokenizer)).abs().max()
    assert difference > 1e-4, f"{method} did not change the model's output"


@pytest.mark.slow
def test_prompt_tuning_starts_from_the_text_and_its_adapter_refuses_merging(workspace, tiny_llama_dir, embedded_tokenizer, data_file):
    from core.hardware import detect
    from core.merge.preflight import check_merge
    from core.merge.spec import MergeSpec
    from core.models import ModelLoadError, ModelSource, load_model, merge_adapter_weights
    from core.train.backends import HFBackend

    spec = _spec(tiny_llama_dir, data_file, "prompt_tuning", prompt_init_text="Answer briefly")
    model, _ = HFBackend().load(spec, detect())
    text_ids = embedded_tokenizer("Answer briefly", add_special_tokens=False)["input_ids"]
    wanted = (text_ids * 4)[:4]
    start = model.prompt_encoder["default"].embedding.weight.detach()
    assert torch.allclose(start, model.get_input_embeddings().weight[wanted].detach())

    run_dir, status = run_in_process(spec)
    assert status.state == "succeeded", status.error
    adapter = run_dir / "adapter"
    assert "cannot be merged into the weights" in adapter_merge_refusal(adapter)
    loaded = load_model(ModelSource("local", str(tiny_llama_dir), adapter=str(adapter)))
    with pytest.raises(ModelLoadError, match="cannot be merged into the weights"):
        merge_adapter_weights(loaded.model, adapter)
    base = {"kind": "local", "ref": str(tiny_llama_dir)}
    merge = MergeSpec(method="task_arithmetic", base=base, models=[{"source": {**base, "adapter": str(adapter)}, "weight": 1.0}],
                      evaluate=False)
    report = check_merge(merge)
    assert not report.ok and any("cannot be merged into the weights" in p for p in report.problems)


@pytest.mark.slow
def test_prompt_and_prefix_adapters_score_like_one_sequence_at_a_time(workspace, tiny_llama_dir, data_file):
    """Evaluate's batched log-likelihoods and answers work for virtual-token adapters (they ignore position ids)."""
    from core.evaluate import scoring
    from core.generation import greedy_answers
    from core.models import ModelSource, is_prompt_learning, load_model, unwrap_adapter

    run_dir, status = run_in_process(_spec(tiny_llama_dir, data_file, "prompt_tuning"))
    assert status.state == "succeeded", status.error
    loaded = load_model(ModelSource("local", str(tiny_llama_dir), adapter=str(run_dir / "adapter")))
    assert is_prompt_learning(loaded.model)
    texts = ["a short one", "a much longer text that needs left padding in a batch of two"]
    batched = scoring.text_nll(loaded.model, loaded.tokenizer, texts, max_length=64, batch_size=8)
    single = [scoring.text_nll(loaded.model, loaded.tokenizer, [t], max_length=64, batch_size=1)[0] for t in texts]
    assert [round(r.nll, 4) for r in batched] == [round(r.nll, 4) for r in single]
    items = [{"context": "The sky is", "choices": [" blue", " green"]}]
    assert len(scoring.choice_logliks(loaded.model, loaded.tokenizer, items)[0]) == 2
    answers = greedy_answers(loaded.model, loaded.tokenizer, [loaded.tokenizer("Hi")["input_ids"]], max_new_tokens=3)
    assert isinstance(answers[0], str)
    assert unwrap_adapter(loaded.model) is loaded.model.base_model
