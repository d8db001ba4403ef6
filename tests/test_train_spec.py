"""TrainSpec: validation names the field, YAML round-trip, the CLI and the form come from the same dataclass."""
from __future__ import annotations

from dataclasses import replace

import pytest
import yaml

from core.data.formats import resolve_data_path
from core.runs.spec import spec_fields, spec_from_dict, spec_to_yaml
from core.train.__main__ import build_parser, spec_from_args
from core.train.spec import TrainSpec, hardware_defaults


def test_defaults_are_a_valid_demo_lora():
    spec = TrainSpec()
    assert spec.method == "lora" and spec.model == {"kind": "embedded"}
    assert resolve_data_path(spec.dataset).is_file(), "the default dataset is the shipped demo"


def test_yaml_round_trip():
    spec = TrainSpec(method="qlora", lora_r=8, target_modules=["q_proj", "v_proj"], learning_rate=1e-4, packing=True,
                     model={"kind": "local", "ref": "/models/x"}, max_steps=12)
    text = spec_to_yaml(spec)
    data = yaml.safe_load(text)
    assert data["kind"] == "train" and data["method"] == "qlora"
    assert spec_from_dict(TrainSpec, data) == spec
    assert TrainSpec.from_dict({"learning_rate": "3e-4", "lora_r": "8", "packing": "true",
                                "target_modules": "q_proj, k_proj"}) == TrainSpec(
        learning_rate=3e-4, lora_r=8, packing=True, target_modules=["q_proj", "k_proj"])


@pytest.mark.parametrize("changes, field", [
    ({"method": "prefix"}, "method"),
    ({"lora_r": 0}, "lora_r"),
    ({"learning_rate": 2.0}, "learning_rate"),
    ({"lora_dropout": 0.95}, "lora_dropout"),
    ({"eval_fraction": 0.9}, "eval_fraction"),
    ({"max_length": 4}, "max_length"),
    ({"masking_policy": "assistant"}, "masking_policy"),
    ({"backend": "deepspeed"}, "backend"),
    ({"num_epochs": 0.0, "max_steps": 0}, "num_epochs"),
    ({"target_modules": []}, "target_modules"),
    ({"target_modules": ["all-linear", "q_proj"]}, "target_modules"),
    ({"model": {"kind": "local"}}, "model"),
    ({"model": {"kind": "embedded", "adapter": "/a"}}, "model"),
    ({"model": "embedded"}, "model"),
    ({"dataset": " "}, "dataset"),
    ({"fault_injection": "boom"}, "fault_injection"),
])
def test_bad_values_name_their_field(changes, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        TrainSpec(**changes)


def test_unknown_and_badly_typed_keys_are_named():
    with pytest.raises(ValueError, match="unknown field.*lora_rank"):
        TrainSpec.from_dict({"lora_rank": 8})
    with pytest.raises(ValueError, match="batch_size: expected int"):
        TrainSpec.from_dict({"batch_size": 2.5})


def test_full_fine_tune_needs_no_target_modules_and_fault_parses():
    assert TrainSpec(method="full", target_modules=[]).uses_adapter is False
    assert TrainSpec(fault_injection="oom@3").fault() == ("oom", 3)


def test_fields_carry_help_groups_and_limits_for_the_form():
    infos = {f.name: f for f in spec_fields(TrainSpec)}
    assert all(info.help for info in infos.values()), "every field explains itself"
    assert infos["method"].choices == ("lora", "dora", "rslora", "qlora", "loha", "lokr", "ia3", "prompt_tuning", "prefix_tuning",
                                       "bitfit", "partial", "full")
    assert infos["masking_policy"].choices[0] == "all_assistant"
    assert infos["lora_r"].min == 1 and infos["learning_rate"].type == "float"
    assert infos["fault_injection"].advanced and infos["model"].type == "dict"
    assert {"data", "method", "schedule", "system"} <= {info.group for info in infos.values()}


def test_cli_is_generated_from_the_fields(tmp_path, capsys):
    parser = build_parser()
    help_text = parser.format_help()
    assert "--lora_alpha" in help_text and "--no-packing" in help_text and "qlora" in help_text
    path = tmp_path / "spec.yaml"
    path.write_text(spec_to_yaml(TrainSpec(lora_r=4, max_steps=7)))
    spec = spec_from_args(parser.parse_args([str(path), "--method", "dora", "--packing", "--model", str(tmp_path)]))
    assert (spec.lora_r, spec.max_steps, spec.method, spec.packing) == (4, 7, "dora", True)
    assert spec.model == {"kind": "local", "ref": str(tmp_path)}
    from core.train.__main__ import main

    assert main(["--dry-run", "--lora_r", "32"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["lora_r"] == 32
    assert main(["--lora_r", "0", "--dry-run"]) == 2
    assert "lora_r:" in capsys.readouterr().err


def test_hardware_defaults():
    class CPU:
        device = "cpu"

    class GPU:
        device = "cuda"

    from core.train.spec import CPU_DEMO_LEARNING_RATE, CPU_DEMO_STEPS

    cpu = hardware_defaults(CPU())
    assert (cpu.max_steps == CPU_DEMO_STEPS and cpu.learning_rate == CPU_DEMO_LEARNING_RATE and cpu.method == "lora"
            and not cpu.gradient_checkpointing)
    gpu = hardware_defaults(GPU())
    assert gpu.max_steps == 0 and gpu.gradient_checkpointing
    assert replace(cpu, lora_r=4).lora_r == 4


def test_the_preflight_data_key_follows_the_data_and_the_fields_tokenizing_reads(tmp_path):
    import dataclasses

    from core.train.preflight import TRAINING_ONLY_FIELDS, data_key

    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    spec = TrainSpec(dataset=str(data))
    key = data_key(spec)
    assert TRAINING_ONLY_FIELDS <= {f.name for f in dataclasses.fields(TrainSpec)}, "names only real fields"
    assert data_key(dataclasses.replace(spec, learning_rate=1e-3, batch_size=2, max_steps=7, lora_r=4)) == key
    for change in ({"max_length": 64}, {"masking_policy": "everything"}, {"eval_fraction": 0.2}, {"packing": True},
                   {"model": {"kind": "local", "ref": str(tmp_path)}}):
        assert data_key(dataclasses.replace(spec, **change)) != key, change
    data.write_text(data.read_text() + '{"prompt": "a", "completion": "b"}\n')
    assert data_key(spec) != key, "new content, new key"
    changed = data_key(spec)
    data.write_text(data.read_text())  # the same bytes again (a newer mtime): the content hash keeps the key
    assert data_key(spec) == changed


def test_an_unknown_target_module_is_refused_by_the_preflight_with_the_names_it_could_mean(tiny_llama_dir, tmp_path):
    """PEFT would fail seconds after Start ("Target modules {...} not found"); the pre-flight reads the module names
    from the model's config on the meta device and refuses first."""
    from core.models import ModelSource, module_names
    from core.train.methods import method_refusal_for, target_modules_refusal

    source = ModelSource("local", str(tiny_llama_dir))
    names = module_names(source)
    assert "model.layers.0.self_attn.q_proj" in names
    assert target_modules_refusal(["q_proj", "v_proj"], names) is None
    assert target_modules_refusal(["all-linear"], names) is None
    refusal = target_modules_refusal(["q_proj", "qkv_proj"], names)
    assert refusal.startswith("target_modules: qkv_proj is not a module of this model") and "v_proj" in refusal
    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    spec = TrainSpec(model=source.as_dict(), dataset=str(data), target_modules=["q_proj", "qkv_proj"])
    assert method_refusal_for(spec) == refusal
    assert method_refusal_for(replace(spec, method="full", target_modules=[])) is None
