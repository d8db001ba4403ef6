"""Our training job vs a minimal plain TRL script: same model, data and hyper-parameters.

The workbench run goes through everything the UI uses (spec.yaml, the worker subprocess, masking-module
labels, our collator, the metrics callback, checkpoints). The plain script is the few lines TRL's docs show:
SFTTrainer on the raw `messages` rows with a LoraConfig. Both run in a fresh process, one after the other,
with the same allocator setting (core.runs.allocator.CPU_ALLOCATOR_ENV). Throughput is steady-state non-padding
tokens per second between the first and the last logged step; peak memory is the process's peak RSS above
its resident size after the imports (CPU) or torch.cuda.max_memory_allocated (GPU). Then packing on vs off
for our job on the same data.

    .venv/bin/python bench/train_overhead.py [--steps 12]      # last line is JSON

The machine is shared: run-to-run noise of several percent is normal; compare ratios, not absolutes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_common import ROOT, bench_workspace, run_worker, steady_tokens_per_s  # noqa: E402

HYPER = dict(method="lora", lora_r=16, lora_alpha=32, lora_dropout=0.05, learning_rate=5e-4, lr_scheduler="linear",
             warmup_ratio=0.0, batch_size=8, max_length=256, seed=42)


def plain_trl(steps: int) -> dict:
    """The minimal TRL script (runs in its own process: `--plain`)."""
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch
    from trl import SFTConfig, SFTTrainer  # noqa: F401

    from core.data.formats import demo_dataset_path, load_dataset_file
    from core.models import embedded_model_dir
    from core.train.trainer import MemoryProbe

    device = "cuda" if torch.cuda.is_available() else "cpu"
    probe = MemoryProbe(device)
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    path = str(embedded_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32" if device == "cpu" else "bfloat16")
    rows = [{"messages": r["messages"]} for r in load_dataset_file(demo_dataset_path("train")).rows]
    logged: list[dict] = []

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                logged.append({"time": time.time(), "tokens_seen": logs.get("num_tokens"), "loss": logs["loss"]})

    config = SFTConfig(
        output_dir=str(Path(os.environ["WORKBENCH_HOME"]) / "plain-trl"), max_steps=steps, per_device_train_batch_size=HYPER["batch_size"],
        learning_rate=HYPER["learning_rate"], lr_scheduler_type="linear", warmup_steps=0, logging_steps=1, report_to="none",
        use_cpu=device == "cpu", bf16=device == "cuda", max_length=HYPER["max_length"], save_strategy="no", seed=HYPER["seed"],
        gradient_checkpointing=False, disable_tqdm=True,
    )
    lora = LoraConfig(r=HYPER["lora_r"], lora_alpha=HYPER["lora_alpha"], lora_dropout=HYPER["lora_dropout"], target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora, callbacks=[Record()])
    trainer.train()
    return {"steady_tokens_per_s": steady_tokens_per_s(logged), "peak_memory_bytes": probe.peak(), "final_loss": logged[-1]["loss"]}


def ours(steps: int, **changes) -> dict:
    from core.train.spec import TrainSpec

    spec = TrainSpec(**{**HYPER, **changes}, max_steps=steps, eval_fraction=0.0, eval_on_start=False, logging_steps=1, save_steps=100_000)
    result = run_worker(spec)
    card = result["card"]
    return {"steady_tokens_per_s": result["steady_tokens_per_s"], "peak_memory_bytes": card["peak_memory_bytes"],
            "predicted_memory_bytes": card["predicted_memory_bytes"], "final_loss": card["final_metrics"]["loss"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        print(json.dumps(plain_trl(args.steps)))
        return 0

    bench_workspace()
    from core.runs.allocator import CPU_ALLOCATOR_ENV

    os.environ.update(CPU_ALLOCATOR_ENV)  # inherited by the worker and the plain script alike
    started = time.time()
    workbench = ours(args.steps)
    print(f"workbench job : {workbench['steady_tokens_per_s']:8.1f} tokens/s · peak {workbench['peak_memory_bytes'] / 1e9:.2f} GB "
          f"(predicted {workbench['predicted_memory_bytes'] / 1e9:.2f} GB) · loss {workbench['final_loss']:.3f}", flush=True)
    out = subprocess.run([sys.executable, __file__, "--plain", "--steps", str(args.steps)], capture_output=True, text=True, env=dict(os.environ), cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"plain TRL script failed:\n{out.stderr[-4000:]}")
    plain = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"plain TRL     : {plain['steady_tokens_per_s']:8.1f} tokens/s · peak {plain['peak_memory_bytes'] / 1e9:.2f} GB · loss {plain['final_loss']:.3f}", flush=True)
    packed = ours(args.steps, max_length=512, packing=True, batch_size=3)
    unpacked = ours(args.steps, max_length=512, packing=False, batch_size=8)
    print(f"packing off   : {unpacked['steady_tokens_per_s']:8.1f} tokens/s (batch 8 rows, max_length 512)")
    print(f"packing on    : {packed['steady_tokens_per_s']:8.1f} tokens/s (batch 3 packed sequences of <= 512 tokens)")
    figures = {
        "steps": args.steps,
        "ours_tokens_per_s": round(workbench["steady_tokens_per_s"], 1),
        "plain_trl_tokens_per_s": round(plain["steady_tokens_per_s"], 1),
        "tokens_per_s_ratio": round(workbench["steady_tokens_per_s"] / plain["steady_tokens_per_s"], 3) if plain["steady_tokens_per_s"] else None,
        "ours_peak_memory_gb": round(workbench["peak_memory_bytes"] / 1e9, 3),
        "plain_trl_peak_memory_gb": round(plain["peak_memory_bytes"] / 1e9, 3),
        "predicted_memory_gb": round(workbench["predicted_memory_bytes"] / 1e9, 3) if workbench["predicted_memory_bytes"] else None,
        "packing_on_tokens_per_s": round(packed["steady_tokens_per_s"], 1),
        "packing_off_tokens_per_s": round(unpacked["steady_tokens_per_s"], 1),
        "packing_speedup": round(packed["steady_tokens_per_s"] / unpacked["steady_tokens_per_s"], 3) if unpacked["steady_tokens_per_s"] else None,
        "bench_seconds": round(time.time() - started, 1),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
