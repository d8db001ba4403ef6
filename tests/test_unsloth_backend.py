"""The Unsloth backend on a CPU box: the parts that decide correctness without a GPU. Target modules from the
model's real linear layers, the tokenizer agreement check, the import / patch failure fallback (an `unsloth` that
fails in the worker's own environment, a separate Python process), and the memory estimate of the chosen backend.
Row separation of packed batches is tested in test_train.py (the flattened `packed_seq_lengths` form)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT
from core.train.backends import linear_layer_names, tokenizer_differences


def test_all_linear_means_the_layers_the_model_really_has(tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM, Phi3Config, Phi3ForCausalLM

    llama = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert linear_layer_names(llama) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    torch.manual_seed(0)
    phi3 = Phi3ForCausalLM(Phi3Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=4, pad_token_id=0))
    assert linear_layer_names(phi3) == ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"], "fused projections, no lm_head"


def test_tokenizer_agreement_names_every_difference(embedded_dir):
    from transformers import AutoTokenizer

    ours, theirs = AutoTokenizer.from_pretrained(embedded_dir), AutoTokenizer.from_pretrained(embedded_dir)
    assert tokenizer_differences(ours, theirs) == []
    theirs.pad_token = "<|endoftext|>" if ours.pad_token != "<|endoftext|>" else "<|im_start|>"
    theirs.add_tokens(["<|new_token|>"])
    differences = tokenizer_differences(ours, theirs)
    assert any(d.startswith("vocabulary size") for d in differences) and any(d.startswith("pad_token_id") for d in differences)


FAILING_IMPORT = "raise NotImplementedError('Unsloth cannot find any torch accelerator? You need a GPU.')\n"
FAILING_PATCH = textwrap.dedent("""
    class FastLanguageModel:
        @staticmethod
        def from_pretrained(**kwargs):
            raise RuntimeError("Unsloth: patching LlamaAttention failed for this transformers version")
""")
PROBE = textwrap.dedent("""
    import json, sys
    from core.hardware import HardwareInfo
    from core.train.backends import FallBack, UnslothBackend, activate, load_with_fallback
    from core.train.spec import TrainSpec

    device, backend_choice, model_dir = sys.argv[1:4]
    hardware = HardwareInfo(device=device, device_name="test", gpu_count=1, total_memory_gb=80.0, free_memory_gb=80.0, bf16=True,
                            cpu_cores=2, system_ram_gb=16.0, bnb_4bit=True, unsloth=True)
    spec = TrainSpec(model={"kind": "local", "ref": model_dir}, backend=backend_choice, lora_r=4)
    try:
        backend, notes = activate(UnslothBackend(), spec, hardware)
        model, tokenizer, backend, notes = load_with_fallback(backend, spec, hardware)
        print(json.dumps({"backend": backend.name, "notes": notes}))
    except FallBack as exc:  # the job relaunches itself with exc.backend; nothing is loaded again in this process
        loaded = sorted(name for name in sys.modules if name in ("peft", "trl"))
        print(json.dumps({"fallback": exc.backend, "reason": exc.reason, "loaded_here": loaded}))
    except ValueError as exc:
        print(json.dumps({"refused": str(exc)}))
""")


def _in_a_worker_environment(tmp_path, unsloth_source: str, *args: str) -> dict:
    """A separate Python process whose `unsloth` package is the broken one (first on its path)."""
    site = tmp_path / "site"
    (site / "unsloth").mkdir(parents=True)
    (site / "unsloth" / "__init__.py").write_text(unsloth_source)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    done = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_an_unsloth_import_failure_falls_back_to_hf_with_a_note(tmp_path, tiny_llama_dir):
    result = _in_a_worker_environment(tmp_path, FAILING_IMPORT, "cuda", "auto", str(tiny_llama_dir))
    assert result["fallback"] == "hf"
    assert result["reason"].startswith("Unsloth could not be imported (NotImplementedError: Unsloth cannot find any torch accelerator")
    forced = _in_a_worker_environment(tmp_path / "forced", FAILING_IMPORT, "cuda", "unsloth", str(tiny_llama_dir))
    assert "the spec asks for unsloth only" in forced["refused"]


@pytest.mark.slow
def test_an_unsloth_patch_failure_while_loading_falls_back_to_hf(tmp_path, tiny_llama_dir):
    # Unsloth imports, but its loader fails (a patch that does not fit this transformers): the hf backend loads instead.
    result = _in_a_worker_environment(tmp_path, FAILING_PATCH, "cpu", "auto", str(tiny_llama_dir))
    assert (result["fallback"] == "hf" and result["reason"].startswith("Unsloth failed to load or patch the model (RuntimeError: "
                                                                       "Unsloth: patching"))
    assert result["loaded_here"] == [], "the hf model is not loaded in the process Unsloth patched"


# The worker's own environment for a whole run on this CPU box: Unsloth "usable" (its backend is chosen) but its
# loader fails, as a patch that does not fit this transformers does on a GPU. The relaunched hf process (it has
# WORKBENCH_BACKEND_FALLBACK set) keeps the real checks.
PRETEND_USABLE = textwrap.dedent("""
    import os
    if not os.environ.get("WORKBENCH_BACKEND_FALLBACK"):
        import core.train.backends as backends
        backends.UnslothBackend.unavailable_reason = lambda self, spec, hardware: None
""")
RECORDING_PATCH_FAILURE = textwrap.dedent("""
    import os
    class FastLanguageModel:
        @staticmethod
        def from_pretrained(**kwargs):
            with open(os.environ["UNSLOTH_ATTEMPT_PID_FILE"], "w") as handle:
                handle.write(str(os.getpid()))
            raise RuntimeError("Unsloth: patching LlamaAttention failed for this transformers version")
""")


@pytest.mark.slow
def test_the_hf_fallback_trains_in_a_fresh_process_and_the_card_says_so(tmp_path, workspace, tiny_llama_dir, monkeypatch):
    from core import runs
    from core.train.spec import TrainSpec

    site = tmp_path / "site"
    (site / "unsloth").mkdir(parents=True)
    (site / "unsloth" / "__init__.py").write_text(RECORDING_PATCH_FAILURE)
    (site / "sitecustomize.py").write_text(PRETEND_USABLE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(ROOT)]))
    monkeypatch.setenv("UNSLOTH_ATTEMPT_PID_FILE", str(tmp_path / "unsloth.pid"))
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                            for i in range(8)))
    spec = TrainSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, dataset=str(data), max_steps=2, batch_size=2, max_length=64,
                     eval_fraction=0.0, lora_r=4, lora_dropout=0.0, save_steps=100, logging_steps=1)
    run_dir = runs.create_run(spec)
    runs.launch(run_dir)
    status = runs.wait(run_dir, timeout=300)
    assert status.state == "succeeded", status.error or runs.log_tail(run_dir)

    unsloth_pid = int((tmp_path / "unsloth.pid").read_text())
    card = runs.read_result(run_dir)
    assert card["backend"] == "hf"
    process = card["process"]
    assert process["pid"] != unsloth_pid and process["attempt"] == 2, "the hf attempt ran in another process"
    assert process["fallback_from"]["failed_pid"] == unsloth_pid and process["fallback_from"]["from"] == "unsloth"
    assert process["fallback_from"]["reason"].startswith("Unsloth failed to load or patch the model (RuntimeError: Unsloth: patching")
    note = next(n for n in card["backend_notes"] if "trained with the hf backend instead" in n)
    assert f"process {process['pid']}, attempt 2" in note and f"process {unsloth_pid}" in note
    assert card["backend_label"] == f"hf (fallback from unsloth: {process['fallback_from']['reason']}), process {process['pid']}/attempt 2"
    assert status.result["fallback"]["failed_pid"] == unsloth_pid and status.result["global_step"] == 2
    assert "fresh process" in (run_dir / "worker.log").read_text()


def test_the_memory_estimate_follows_the_backend_actually_chosen(tiny_llama_dir):
    from core.hardware import HardwareInfo
    from core.train.preflight import memory_estimate
    from core.train.spec import TrainSpec

    gpu = HardwareInfo(device="cuda", device_name="GPU", gpu_count=1, total_memory_gb=80.0, free_memory_gb=80.0, bf16=True,
                       cpu_cores=2, system_ram_gb=16.0, bnb_4bit=True, unsloth=True)
    spec = TrainSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, method="qlora", backend="auto")
    chosen, _ = memory_estimate(spec, gpu)  # auto on a CUDA box with Unsloth: the Unsloth backend
    hf, _ = memory_estimate(spec, gpu, backend="hf")
    assert chosen.spec.chunked_loss and not chosen.spec.kbit_upcast
    assert not hf.spec.chunked_loss and hf.spec.kbit_upcast and hf.total_bytes > chosen.total_bytes
    no_unsloth = HardwareInfo(**{**gpu.as_dict(), "unsloth": False, "notes": ()})
    assert memory_estimate(spec, no_unsloth)[0].total_bytes == hf.total_bytes
