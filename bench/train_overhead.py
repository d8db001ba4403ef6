"""Our training job vs a plain PyTorch + PEFT loop and a minimal TRL script: same model, data and hyper-parameters.

The workbench run goes through everything the UI uses (spec.yaml, the worker subprocess, masking-module
labels, our collator, the metrics callback, checkpoints). The plain loop is the floor: PEFT's LoRA on the
same masking-module rows, padded batches, AdamW and a linear schedule, one `loss.backward()` per step and
nothing else (run with the precision the job chose, e.g. bf16 autocast on a CPU with native bf16). The plain
TRL script is the few lines TRL's docs show: SFTTrainer on the raw `messages` rows with a LoraConfig. Each
runs in a fresh process, one after the other,
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
    lora = LoraConfig(r=HYPER["lora_r"], lora_alpha=HYPER["lora_alpha"], lora_dropout=HYPER["lora_dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=lora, callbacks=[Record()])
    trainer.train()
    return {"steady_tokens_per_s": steady_tokens_per_s(logged), "peak_memory_bytes": probe.peak(), "final_loss": logged[-1]["loss"]}


def plain_loop(steps: int, autocast: bool) -> dict:
    """A plain PyTorch + PEFT training loop (runs in its own process: `--plain-loop`)."""
    import random

    import peft  # noqa: F401 - imported before the memory baseline, like the job does
    import torch
    from peft import LoraConfig, get_peft_model

    from core.data.formats import demo_dataset_path, load_dataset_file
    from core.data.masking import encode_conversations
    from core.models import ModelSource, load_model
    from core.train.data import PadCollator
    from core.train.trainer import MemoryProbe

    torch.manual_seed(HYPER["seed"])
    probe = MemoryProbe("cpu")
    loaded = load_model(ModelSource(), device="cpu", dtype="float32", for_training=True)
    model, tokenizer = loaded.model, loaded.tokenizer
    model.config.use_cache = False
    lora = LoraConfig(r=HYPER["lora_r"], lora_alpha=HYPER["lora_alpha"], lora_dropout=HYPER["lora_dropout"], target_modules="all-linear",
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    rows = load_dataset_file(demo_dataset_path("train")).rows
    encoded = [e for e in encode_conversations([r["messages"] for r in rows], tokenizer, max_length=HYPER["max_length"], errors="skip")
               if e]
    features = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
    random.Random(HYPER["seed"]).shuffle(features)
    collate = PadCollator(pad_token_id=tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=HYPER["learning_rate"], weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / steps))
    model.train()
    logged, tokens, batch = [], 0, HYPER["batch_size"]
    for step in range(steps):
        inputs = collate(features[(step * batch) % len(features):][:batch])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(inputs["attention_mask"].sum())
        logged.append({"time": time.time(), "tokens_seen": tokens, "loss": float(loss)})
    return {"steady_tokens_per_s": steady_tokens_per_s(logged), "peak_memory_bytes": probe.peak(), "final_loss": logged[-1]["loss"],
            "autocast_bf16": autocast}


def ours(steps: int, **changes) -> dict:
    from core.train.spec import TrainSpec

    spec = TrainSpec(**{**HYPER, **changes}, max_steps=steps, eval_fraction=0.0, eval_on_start=False, logging_steps=1, save_steps=100_000)
    result = run_worker(spec)
    card = result["card"]
    return {"steady_tokens_per_s": result["steady_tokens_per_s"], "peak_memory_bytes": card["peak_memory_bytes"],
            "predicted_memory_bytes": card["predicted_memory_bytes"], "final_loss": card["final_metrics"]["loss"],
            "precision": card.get("precision") or {}}


def in_subprocess(flag: str, steps: int, *extra: str) -> dict:
    out = subprocess.run([sys.executable, __file__, flag, "--steps", str(steps), *extra], capture_output=True, text=True,
                         env=dict(os.environ), cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{flag} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--plain-loop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--autocast", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-packing", action="store_true", help="skip the packing on / off comparison")
    args = parser.parse_args()
    if args.plain:
        print(json.dumps(plain_trl(args.steps)))
        return 0
    if args.plain_loop:
        print(json.dumps(plain_loop(args.steps, args.autocast)))
        return 0

    bench_workspace()
    from core.runs.allocator import CPU_ALLOCATOR_ENV

    os.environ.update(CPU_ALLOCATOR_ENV)  # inherited by the worker and the plain script alike
    started = time.time()
    workbench = ours(args.steps)
    print(f"workbench job : {workbench['steady_tokens_per_s']:8.1f} tokens/s · peak {workbench['peak_memory_bytes'] / 1e9:.2f} GB "
          f"(predicted {workbench['predicted_memory_bytes'] / 1e9:.2f} GB) · loss {workbench['final_loss']:.3f}", flush=True)
    autocast = bool(workbench["precision"].get("bf16"))  # the loop runs in the precision the job chose
    loop = in_subprocess("--plain-loop", args.steps, *(["--autocast"] if autocast else []))
    print(f"plain loop    : {loop['steady_tokens_per_s']:8.1f} tokens/s · peak {loop['peak_memory_bytes'] / 1e9:.2f} GB · loss "
          f"{loop['final_loss']:.3f} (PyTorch + PEFT{', bf16 autocast' if autocast else ', fp32'})", flush=True)
    plain = in_subprocess("--plain", args.steps)
    print(f"plain TRL     : {plain['steady_tokens_per_s']:8.1f} tokens/s · peak {plain['peak_memory_bytes'] / 1e9:.2f} GB · loss "
          f"{plain['final_loss']:.3f}", flush=True)
    ratio = lambda a, b: round(a / b, 3) if b else None  # noqa: E731
    figures = {
        "steps": args.steps,
        "ours_tokens_per_s": round(workbench["steady_tokens_per_s"], 1),
        "plain_loop_tokens_per_s": round(loop["steady_tokens_per_s"], 1),
        "plain_trl_tokens_per_s": round(plain["steady_tokens_per_s"], 1),
        "ours_vs_plain_loop": ratio(workbench["steady_tokens_per_s"], loop["steady_tokens_per_s"]),
        "tokens_per_s_ratio": ratio(workbench["steady_tokens_per_s"], plain["steady_tokens_per_s"]),
        "autocast_bf16": autocast,
        "ours_peak_memory_gb": round(workbench["peak_memory_bytes"] / 1e9, 3),
        "plain_loop_peak_memory_gb": round(loop["peak_memory_bytes"] / 1e9, 3),
        "plain_trl_peak_memory_gb": round(plain["peak_memory_bytes"] / 1e9, 3),
        "predicted_memory_gb": round(workbench["predicted_memory_bytes"] / 1e9, 3) if workbench["predicted_memory_bytes"] else None,
    }
    if not args.no_packing:
        packed = ours(args.steps, max_length=512, packing=True, batch_size=3)
        unpacked = ours(args.steps, max_length=512, packing=False, batch_size=8)
        print(f"packing off   : {unpacked['steady_tokens_per_s']:8.1f} tokens/s (batch 8 rows, max_length 512)")
        print(f"packing on    : {packed['steady_tokens_per_s']:8.1f} tokens/s (batch 3 packed sequences of <= 512 tokens)")
        figures.update(packing_on_tokens_per_s=round(packed["steady_tokens_per_s"], 1),
                       packing_off_tokens_per_s=round(unpacked["steady_tokens_per_s"], 1),
                       packing_speedup=ratio(packed["steady_tokens_per_s"], unpacked["steady_tokens_per_s"]))
    figures["bench_seconds"] = round(time.time() - started, 1)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
