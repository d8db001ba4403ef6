"""core.merge: every method on hand-built tiny models with known results, the pre-flight refusals, the job."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from core.merge.config import build_config, export_yaml, resolve_inputs, validate_with_mergekit
from core.merge.engine import run_mergekit
from core.merge.methods import METHODS, get_method
from core.merge.preflight import check_merge, safetensors_header
from core.merge.spec import MergeSpec
from core.runs.jobs import JobContext, JobError, read_result

DOWN = "model.layers.0.mlp.down_proj.weight"


def make_model(path: Path, *, seed: int = 0, fills: dict[str, float] | None = None, arch: str = "llama",
               vocab: int = 64, intermediate: int = 32, tokens: dict[str, int] | None = None) -> Path:
    """A tiny causal LM whose weights are random (seeded) except the tensors in `fills`, set to constants."""
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    config_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (MistralConfig, MistralForCausalLM)
    config = config_cls(vocab_size=vocab, hidden_size=16, intermediate_size=intermediate, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = model_cls(config)
    with torch.no_grad():
        for name, value in (fills or {}).items():
            model.get_parameter(name).fill_(value)
    model.save_pretrained(path, safe_serialization=True)
    if tokens is not None:
        (path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": tokens}, "added_tokens": []}))
    return path


def weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(file))
    return out


def local(path: Path) -> dict:
    return {"kind": "local", "ref": str(path)}


def spec(method: str, base: Path | None, models: list[Path], per_model: list[dict] | None = None, **kwargs) -> MergeSpec:
    items = [{"source": local(p), **((per_model or [{}] * len(models))[i])} for i, p in enumerate(models)]
    return MergeSpec(method=method, base=local(base) if base else {}, models=items, evaluate=False, **kwargs)


def merge(s: MergeSpec, out: Path) -> dict[str, torch.Tensor]:
    report = check_merge(s, out.parent)
    assert report.ok, report.problems
    run_mergekit(build_config(s, resolve_inputs(s)), out, seed=s.seed)
    return weights(out)


@pytest.fixture
def family(tmp_path):
    """base 0.50, ft1 = base + 0.30, ft2 = base − 0.10 on one weight; every other weight identical (seed 0)."""
    return {
        "base": make_model(tmp_path / "base", fills={DOWN: 0.5}),
        "ft1": make_model(tmp_path / "ft1", fills={DOWN: 0.8}),
        "ft2": make_model(tmp_path / "ft2", fills={DOWN: 0.4}),
        "tmp": tmp_path,
    }


# ----------------------------------------------------------------------------- registry and spec


def test_registry_entries_are_complete_and_known_to_mergekit():
    from mergekit.merge_methods import registry

    for name, method in METHODS.items():
        assert method.pretty_name and method.explanation and method.paper.startswith("https://")
        assert registry.get(name).spec.name == name  # every entry is a real mergekit method
        for p in method.parameters:
            assert p.is_bool or p.min <= p.default <= p.max, (name, p.name)
    assert {"linear", "slerp", "task_arithmetic", "ties", "dare_ties", "dare_linear"} <= set(METHODS)


def test_spec_rejects_bad_input_with_the_field_named(family):
    with pytest.raises(ValueError, match="SLERP takes at most 1"):
        spec("slerp", family["base"], [family["ft1"], family["ft2"]])
    with pytest.raises(ValueError, match="models\\[0\\].density"):
        spec("ties", family["base"], [family["ft1"]], [{"density": 1.5}])
    with pytest.raises(ValueError, match="has no parameter t"):
        MergeSpec(method="ties", models=[{"source": local(family["ft1"])}], parameters={"t": 0.5})
    with pytest.raises(ValueError, match="sweep"):
        spec("ties", family["base"], [family["ft1"]], sweep=[0.0, 1.0])
    round_trip = MergeSpec.from_dict(yaml.safe_load(yaml.safe_dump(spec("ties", family["base"], [family["ft1"]]).to_dict())))
    assert round_trip.models[0]["density"] == 0.5 and round_trip.parameters["lambda"] == 1.0


# ----------------------------------------------------------------------------- known results


def test_linear_of_two_models_is_their_mean(tmp_path):
    a, b = make_model(tmp_path / "a", seed=1), make_model(tmp_path / "b", seed=2)
    merged = merge(spec("linear", None, [a, b]), tmp_path / "out")
    wa, wb = weights(a), weights(b)
    assert set(merged) == set(wa)
    for name in wa:
        torch.testing.assert_close(merged[name], (wa[name] + wb[name]) / 2)


def test_task_arithmetic_adds_both_task_vectors(family):
    merged = merge(spec("task_arithmetic", family["base"], [family["ft1"], family["ft2"]]), family["tmp"] / "out")
    torch.testing.assert_close(merged[DOWN], torch.full_like(merged[DOWN], 0.70))  # 0.5 + 0.3 − 0.1
    base = weights(family["base"])
    other = "model.layers.1.mlp.up_proj.weight"
    torch.testing.assert_close(merged[other], base[other])  # zero task vector elsewhere
    half = merge(spec("task_arithmetic", family["base"], [family["ft1"], family["ft2"]], parameters={"lambda": 0.5}),
                 family["tmp"] / "half")
    torch.testing.assert_close(half[DOWN], torch.full_like(half[DOWN], 0.60))


def test_slerp_endpoints_return_the_inputs(tmp_path):
    base, other = make_model(tmp_path / "base", seed=1), make_model(tmp_path / "other", seed=2)
    at0 = merge(spec("slerp", base, [other], parameters={"t": 0.0}), tmp_path / "t0")
    at1 = merge(spec("slerp", base, [other], parameters={"t": 1.0}), tmp_path / "t1")
    mid = merge(spec("slerp", base, [other], parameters={"t": 0.5}), tmp_path / "t5")
    wb, wo = weights(base), weights(other)
    for name in wb:
        torch.testing.assert_close(at0[name], wb[name])
        torch.testing.assert_close(at1[name], wo[name])
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(mid[name], (wb[name] + wo[name]) / 2)  # the arc, not the chord


def test_ties_elects_the_sign_of_the_larger_total(family):
    # +0.30 and −0.10: the positive sign wins, the disagreeing −0.10 is dropped, normalised by the agreeing weight.
    merged = merge(spec("ties", family["base"], [family["ft1"], family["ft2"]], [{"density": 1.0}] * 2), family["tmp"] / "a")
    torch.testing.assert_close(merged[DOWN], torch.full_like(merged[DOWN], 0.80))
    # +0.30 and −0.50: the negative sign wins.
    ft3 = make_model(family["tmp"] / "ft3", fills={DOWN: 0.0})
    merged = merge(spec("ties", family["base"], [family["ft1"], ft3], [{"density": 1.0}] * 2), family["tmp"] / "b")
    torch.testing.assert_close(merged[DOWN], torch.zeros_like(merged[DOWN]))


def test_ties_density_keeps_exactly_the_largest_entries(tmp_path):
    base = make_model(tmp_path / "base", fills={DOWN: 0.0})
    from transformers import LlamaForCausalLM

    tuned = LlamaForCausalLM.from_pretrained(base)
    with torch.no_grad():
        w = tuned.get_parameter(DOWN)
        w.copy_(torch.arange(1, w.numel() + 1, dtype=torch.float32).reshape(w.shape) / w.numel())
    tuned.save_pretrained(tmp_path / "tuned")
    merged = merge(spec("ties", base, [tmp_path / "tuned"], [{"density": 0.25}]), tmp_path / "out")
    delta = merged[DOWN].flatten()
    kept = delta != 0
    assert int(kept.sum()) == int(0.25 * delta.numel())
    assert kept[-int(0.25 * delta.numel()):].all()  # the largest magnitudes survive


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_drops_at_the_density_and_rescales(tmp_path, method):
    base = make_model(tmp_path / "base", fills={DOWN: 0.0})
    tuned = make_model(tmp_path / "tuned", fills={DOWN: 0.2})
    merged = merge(spec(method, base, [tuned], [{"density": 0.3}], seed=7), tmp_path / "out")
    delta = merged[DOWN]
    kept = (delta != 0).float().mean().item()
    assert 0.2 < kept < 0.4, kept  # 512 entries dropped at random with p = 0.7
    assert delta.abs().sum().item() == pytest.approx(0.2 * delta.numel(), rel=1e-4)  # L1 rescale keeps the norm
    again = merge(spec(method, base, [tuned], [{"density": 0.3}], seed=7), tmp_path / "again")
    torch.testing.assert_close(again[DOWN], delta)  # seeded: reproducible


# ----------------------------------------------------------------------------- pre-flight refusals


def test_preflight_refuses_different_architecture(family):
    mistral = make_model(family["tmp"] / "mistral", arch="mistral")
    report = check_merge(spec("task_arithmetic", family["base"], [mistral]))
    assert not report.ok and "Different architecture" in report.problems[0] and "MistralForCausalLM" in report.problems[0]


def test_preflight_refuses_different_vocabulary_size_and_ids(family):
    bigger = make_model(family["tmp"] / "bigger", vocab=80)
    report = check_merge(spec("linear", None, [family["base"], bigger]))
    assert not report.ok and "Different vocabulary" in report.problems[0] and "80" in report.problems[0]
    tokens = {f"t{i}": i for i in range(64)}
    a = make_model(family["tmp"] / "tok_a", tokens=tokens)
    swapped = dict(tokens, t0=1, t1=0)
    b = make_model(family["tmp"] / "tok_b", tokens=swapped)
    report = check_merge(spec("linear", None, [a, b]))
    assert not report.ok and "different token → id" in report.problems[0]
    assert check_merge(spec("linear", None, [a, make_model(family["tmp"] / "tok_c", tokens=tokens)])).ok


def test_preflight_refuses_different_shapes(family):
    wider = make_model(family["tmp"] / "wider", intermediate=48)
    report = check_merge(spec("task_arithmetic", family["base"], [wider]))
    assert not report.ok and "Different shapes" in report.problems[0] and "[16, 48]" in report.problems[0]


def test_preflight_refuses_missing_or_trivial_base(family):
    report = check_merge(MergeSpec(method="ties", base={}, models=[{"source": local(family["ft1"])}], evaluate=False))
    assert not report.ok and "needs a base model" in report.problems[0]
    report = check_merge(spec("task_arithmetic", family["base"], [family["base"]]))
    assert not report.ok and "is the base itself" in report.problems[0]
    report = check_merge(spec("task_arithmetic", family["tmp"] / "missing", [family["ft1"]]))
    assert not report.ok and "not found" in report.problems[0]


def test_preflight_refuses_adapter_of_another_base(family, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "someone/Other-Model-7B"}))
    on_other_root = MergeSpec(method="task_arithmetic", base=local(family["base"]), evaluate=False,
                              models=[{"source": {**local(family["ft1"]), "adapter": str(adapter)}}])
    assert "No shared base" in check_merge(on_other_root).problems[0]
    recorded_elsewhere = MergeSpec(method="task_arithmetic", base=local(family["base"]), evaluate=False,
                                   models=[{"source": {**local(family["base"]), "adapter": str(adapter)}}])
    problem = check_merge(recorded_elsewhere).problems[0]
    assert "was trained on someone/Other-Model-7B" in problem


def test_preflight_refuses_when_ram_or_disk_is_short(family):
    s = spec("task_arithmetic", family["base"], [family["ft1"]])
    report = check_merge(s, free_ram_bytes=1000, free_disk_bytes=10**12)
    assert not report.ok and report.problems[0].startswith("Not enough RAM")
    report = check_merge(s, free_ram_bytes=10**12, free_disk_bytes=1000)
    assert not report.ok and report.problems[0].startswith("Not enough disk")
    facts = check_merge(s, free_ram_bytes=10**12, free_disk_bytes=10**12).facts
    assert facts["parameters"] == sum(int(torch.tensor(v["shape"]).prod()) for v in safetensors_header(
        family["base"] / "model.safetensors").values())


# ----------------------------------------------------------------------------- export and the job


def test_export_yaml_is_a_valid_mergekit_config_with_adapter_syntax(family, tmp_path):
    adapter = tmp_path / "adapter"
    s = MergeSpec(method="ties", base=local(family["base"]), evaluate=False,
                  models=[{"source": {**local(family["base"]), "adapter": str(adapter)}, "density": 0.4}])
    text = export_yaml(s)
    config = yaml.safe_load(text)
    assert config["merge_method"] == "ties" and config["base_model"] == str(family["base"])
    assert config["models"][0]["model"] == f"{family['base']}+{adapter}"
    assert config["models"][0]["parameters"] == {"weight": 1.0, "density": 0.4}
    parsed = validate_with_mergekit(config)
    assert parsed.models[0].model.lora.path == str(adapter)


def test_sweep_points_interpolate_between_base_and_fine_tuned(family):
    for method in ("linear", "slerp", "task_arithmetic"):
        s = spec(method, family["base"], [family["ft1"]], sweep=[0.0, 0.5, 1.0])
        inputs = resolve_inputs(s)
        for lam, expected in ((0.0, 0.5), (0.5, 0.65), (1.0, 0.8)):
            out = family["tmp"] / f"{method}-{lam}"
            run_mergekit(build_config(s, inputs, lam), out)
            value = weights(out)[DOWN]
            # SLERP over parallel rows (constant fills) falls back to linear interpolation
            torch.testing.assert_close(value, torch.full_like(value, expected), msg=f"{method} λ={lam}")


def _context(run_dir: Path, data: dict) -> JobContext:
    return JobContext.in_process(run_dir, data, log=logging.getLogger("test"))


def test_job_merges_a_lora_adapter_into_its_base_first(tiny_llama_dir, tmp_path, workspace):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core.merge.job import run

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    data = {"kind": "merge", "method": "task_arithmetic", "base": local(tiny_llama_dir), "evaluate": False,
            "models": [{"source": {**local(tiny_llama_dir), "adapter": str(tmp_path / "adapter")}, "weight": 1.0}]}
    ctx = _context(tmp_path / "run", data)
    result = run(ctx)
    merged = Path(result["model_dir"])
    assert (merged / "merge.yaml").is_file() and (ctx.run_dir / "merge.yaml").is_file()
    materialized = list((ctx.run_dir / "inputs").iterdir())
    assert len(materialized) == 1 and (materialized[0] / "config.json").is_file()
    assert yaml.safe_load((merged / "merge.yaml").read_text())["models"][0]["model"] == str(materialized[0])
    # task arithmetic with weight 1 of (base + LoRA) on base = the PEFT-merged model itself
    expected = peft_model.merge_and_unload().state_dict()
    got = weights(merged)
    name = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4)
    assert (merged / "tokenizer.json").is_file()


def test_job_refuses_with_the_preflight_sentence(family, tmp_path, workspace):
    from core.merge.job import run

    mistral = make_model(family["tmp"] / "mistral", arch="mistral")
    data = {"kind": "merge", "method": "ties", "base": local(family["base"]), "models": [{"source": local(mistral)}], "evaluate": False}
    ctx = _context(tmp_path / "run", data)
    with pytest.raises(JobError, match="Different architecture"):
        run(ctx)
    assert json.loads((ctx.run_dir / "preflight.json").read_text())["ok"] is False


def test_method_lookup_names_the_choices():
    with pytest.raises(ValueError, match="linear, slerp"):
        get_method("frankenmerge")


def test_sweep_job_scores_every_point_with_the_forgetting_report(tiny_llama_dir, tmp_path, workspace):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.merge.job import run

    tuned = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    tuned.save_pretrained(tmp_path / "tuned")
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(tmp_path / "tuned")
    rows = []
    ctx = _context(tmp_path / "run", {"kind": "merge", "method": "linear", "base": local(tiny_llama_dir), "eval_rows": 2,
                                      "models": [{"source": local(tmp_path / "tuned")}], "sweep": [0.0, 0.5, 1.0]})
    ctx.metrics = lambda **row: rows.append(row)
    result = run(ctx)
    assert result["sweep_points"] == 3 and result["best_lambda"] in (0.0, 0.5, 1.0)
    points = json.loads((ctx.run_dir / "sweep.json").read_text())["points"]
    assert [p["lambda"] for p in points] == [0.0, 0.5, 1.0]
    for p in points:
        assert 0 <= p["task_score"] <= 100 and 0 <= p["general_score"] <= 100 and p["general_perplexity"] > 1
        assert (Path(p["model_dir"]) / "merge.yaml").is_file()
    assert "verdict" not in points[0] and points[1]["verdict"].startswith("λ=0.5")
    report = read_result(ctx.run_dir / "eval", "evaluate")
    assert [m["label"] for m in report["models"]] == ["base", "λ=0.5", "λ=1"]  # λ = 0 is the base: scored once
    assert [r["lambda"] for r in rows if r.get("stage") == "score"] == [0.0, 0.5, 1.0]  # live, one row per point
    base_ppl = report["models"][0]["metrics"]["general_perplexity"]["value"]
    assert points[0]["general_perplexity"] == base_ppl


def test_the_merge_verdict_is_scored_on_the_users_task(tiny_llama_dir, tmp_path, workspace, room_task):
    """The merged fine-tune came from a train run on the user's rooms task: the verdict is about that task."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import model_of_a_train_run
    from core.merge.job import _task, run

    tuned = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    tuned.save_pretrained(tmp_path / "tuned")
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(tmp_path / "tuned")
    trained = model_of_a_train_run(room_task, tmp_path / "tuned")
    rooms = {json.loads(line)["messages"][0]["content"] for line in room_task.read_text().splitlines()}
    ctx = _context(tmp_path / "run", {"kind": "merge", "method": "linear", "base": local(tiny_llama_dir), "eval_rows": 2,
                                      "models": [{"source": local(trained)}], "sweep": [0.0, 1.0]})
    result = run(ctx)
    assert result["task_dataset"]["origin"] == "run" and result["task_dataset"]["path"] == str(room_task.resolve())
    assert json.loads((ctx.run_dir / "sweep.json").read_text())["task_dataset"] == result["task_dataset"]
    report = read_result(ctx.run_dir / "eval", "evaluate")
    assert report["task"]["source"] == str(room_task.resolve())
    assert {e["prompt"] for e in report["examples"]} <= rooms and len(report["examples"]) == 2
    # a dataset the user names wins over the run's data
    chosen = tmp_path / "chosen.jsonl"
    chosen.write_text(room_task.read_text().splitlines()[0] + "\n")
    spec = MergeSpec(method="task_arithmetic", base=local(tiny_llama_dir), models=[{"source": local(trained)}], task_dataset=str(chosen))
    assert _task(spec).path == str(chosen.resolve()) and _task(spec).origin == "chosen"
