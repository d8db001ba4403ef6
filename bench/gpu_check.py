"""GPU check: the same short QLoRA and LoRA job through the hf and the Unsloth backends, on a CUDA machine.

The model is a 1B-class Llama (16 layers, hidden 2048, GQA 32/8 heads, SwiGLU 8192) with random weights
and the embedded model's tokenizer, built locally so nothing is downloaded; pass --model to use a real
local folder instead. Each combination runs through the real worker (`core.runs.launch`), one after the
other, on the demo data; the table shows steady tokens/s, peak CUDA memory (torch.cuda.max_memory_allocated)
and core.memory's prediction. Unsloth rows are skipped with a reason when Unsloth is not installed (it lives
in the separate GPU venv: requirements-gpu.txt).

On a machine without CUDA it prints a skip line and `{"skipped": "no CUDA"}` and exits 0.

    python bench/gpu_check.py [--steps 20] [--model /path/to/llama-folder]      # last line is JSON
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_common import bench_workspace, run_worker  # noqa: E402

COMBINATIONS = [("hf", "qlora"), ("hf", "lora"), ("unsloth", "qlora"), ("unsloth", "lora")]


def build_random_llama(target: Path) -> Path:
    """A ~1.1B-parameter Llama with random weights (bf16) and the embedded tokenizer, saved as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from core.models import ModelSource, load_tokenizer

    tokenizer = load_tokenizer(ModelSource())
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096, rope_theta=500000.0,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    n = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    print(f"random Llama: {n / 1e9:.2f} B parameters at {target}", flush=True)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--model", type=Path, help="a local Hugging Face Llama-family folder instead of random weights")
    args = parser.parse_args()
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        print("gpu_check: skipped — no CUDA device on this machine (run it on a GPU box; see requirements-gpu.txt)")
        print(json.dumps({"skipped": "no CUDA"}))
        return 0

    bench_workspace()
    from core.hardware import detect
    from core.train.spec import TrainSpec

    hardware = detect()
    print(f"device: {hardware.summary} · unsloth installed: {hardware.unsloth}", flush=True)
    model_dir = args.model or build_random_llama(Path(tempfile.mkdtemp(prefix="random-llama-1b-")))
    results, skipped = {}, {}
    started = time.time()
    for backend, method in COMBINATIONS:
        name = f"{backend}_{method}"
        if backend == "unsloth" and not hardware.unsloth:
            skipped[name] = "Unsloth not installed"
            print(f"{name:15s} skipped: Unsloth not installed", flush=True)
            continue
        spec = TrainSpec(model={"kind": "local", "ref": str(model_dir)}, method=method, backend=backend, lora_r=16, lora_alpha=32,
                         batch_size=8, max_length=512, max_steps=args.steps, gradient_checkpointing=True, eval_fraction=0.0,
                         eval_on_start=False, logging_steps=1, save_steps=100_000, learning_rate=2e-4)
        try:
            run = run_worker(spec, timeout=1800)
        except SystemExit as exc:  # one failing combination must not hide the others
            skipped[name] = str(exc).splitlines()[0][:300]
            print(f"{name:15s} FAILED: {skipped[name]}", flush=True)
            continue
        card = run["card"]
        results[name] = {
            "backend_used": card["backend"],
            "tokens_per_s": round(run["steady_tokens_per_s"], 1),
            "peak_memory_gb": round(card["peak_memory_bytes"] / 1e9, 3),
            "predicted_memory_gb": round(card["predicted_memory_bytes"] / 1e9, 3) if card["predicted_memory_bytes"] else None,
            "final_loss": card["final_metrics"]["loss"],
        }
        r = results[name]
        print(f"{name:15s} {r['tokens_per_s']:10.1f} tokens/s · peak {r['peak_memory_gb']:.2f} GB (predicted {r['predicted_memory_gb']}) "
              f"· backend {r['backend_used']}", flush=True)
    for method in ("qlora", "lora"):
        hf, fast = results.get(f"hf_{method}"), results.get(f"unsloth_{method}")
        if hf and fast and hf["tokens_per_s"]:
            results[f"unsloth_speedup_{method}"] = round(fast["tokens_per_s"] / hf["tokens_per_s"], 2)
    print(json.dumps({"device": hardware.device_name, "steps": args.steps, "results": results, "skipped": skipped,
                      "bench_seconds": round(time.time() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
