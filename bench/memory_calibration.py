"""Predicted vs measured training memory: core.memory's estimate against the real training job, per method.

CPU (always): for each training method, a short run of the real `train` job through the worker (the process
the Start button launches), on the embedded SmolLM2-135M with rows longer than `max_length` (so every batch
is exactly batch_size x max_length tokens, the shape the estimate assumes). The run card records both figures:
`predicted_memory_bytes` (the Train pre-flight's estimate, core.train.preflight -> core.memory) and
`peak_memory_bytes` (the job's process high-water mark above its resident size before the model loaded).
Runs go into a temporary workspace, never the user's.

CUDA (only when a GPU is present; skipped cleanly otherwise): random-weight models built from two preset
configs (no download), full (pure bf16), LoRA (bf16 base + autocast) and QLoRA (NF4 + double quantization),
measured by a hand-written loop with torch.cuda.max_memory_allocated against the estimate's tensor bytes.

    .venv/bin/python bench/memory_calibration.py             # every method; last line is JSON
    .venv/bin/python bench/memory_calibration.py --quick     # LoRA and full only
    .venv/bin/python bench/memory_calibration.py --methods lora,ia3
    .venv/bin/python bench/memory_calibration.py --methods none --objectives dpo-lora,dpo-full

Preference objectives (issue 27): the same job on pairs whose answers both run past max_length, so every batch is
exactly 2 x batch_size x max_length tokens (chosen + rejected), against the estimate for that objective.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

JOB_METHODS = ["lora", "dora", "rslora", "qlora", "loha", "lokr", "ia3", "prompt_tuning", "prefix_tuning", "partial", "full"]
JOB_SHAPE = {"batch_size": 4, "max_length": 128, "max_steps": 3}
# objective-method pairs measured on pair rows (--objectives); the quick run measures DPO with LoRA
JOB_OBJECTIVES = ["dpo-lora", "dpo-full", "kto-lora", "orpo-lora", "simpo-lora"]
CUDA_MODELS = ["Qwen2.5 0.5B", "Qwen2.5 1.5B"]
CUDA_METHODS = [("full", "bf16"), ("lora", "mixed"), ("qlora", "mixed")]
STEPS = 3
TOLERANCE = 0.10  # issue 12: the real job within 10 % of its estimate


# --------------------------------------------------------------------------- measuring (in a fresh process)


def _batch(vocab: int, batch: int, seq: int, step: int, device: str = "cpu"):
    import torch

    generator = torch.Generator().manual_seed(step)
    ids = torch.randint(0, vocab, (batch, seq), generator=generator)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, : seq // 8] = 0  # one left-padded row, as in a real padded batch
    labels = ids.masked_fill(mask == 0, -100)
    return ids.to(device), mask.to(device), labels.to(device)


def _attach_adapter(model, config: dict):
    from peft import LoraConfig, get_peft_model

    if config.get("gradient_checkpointing"):
        model.enable_input_require_grads()
    lora = LoraConfig(r=config.get("lora_r", 16), lora_alpha=2 * config.get("lora_r", 16), target_modules="all-linear", lora_dropout=0.0)
    return get_peft_model(model, lora)


def _train_steps(model, config: dict, device: str, autocast_dtype=None) -> None:
    import torch

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    vocab = model.config.vocab_size
    for step in range(STEPS):
        ids, mask, labels = _batch(vocab, config["batch_size"], config["seq_len"], step, device)
        with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def worker_cuda(config: dict) -> dict:
    import tempfile

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    from core.memory import list_presets

    preset = next(p for p in list_presets() if p["name"] == config["preset"])
    model_config = AutoConfig.for_model(**preset["config"])
    method = config["method"]
    with tempfile.TemporaryDirectory() as tmp:
        if method == "qlora":  # quantization needs weights on disk: save a random bf16 model first
            AutoModelForCausalLM.from_config(model_config, dtype=torch.bfloat16).save_pretrained(tmp)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        if method == "qlora":
            from peft import prepare_model_for_kbit_training

            quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                       bnb_4bit_compute_dtype=torch.bfloat16)
            model = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=quant, dtype=torch.bfloat16, device_map={"": 0},
                                                         attn_implementation="sdpa")
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        else:
            model = AutoModelForCausalLM.from_config(model_config, dtype=torch.bfloat16, attn_implementation="sdpa").cuda()
        if method != "full":
            model = _attach_adapter(model, config)
        _train_steps(model, config, "cuda", autocast_dtype=None if method == "full" else torch.bfloat16)
        torch.cuda.synchronize()
        return {"measured_bytes": int(torch.cuda.max_memory_allocated())}


# --------------------------------------------------------------------------- predicting + orchestration


def predict(config: dict, arch) -> "object":
    from core.memory import MemorySpec, estimate

    spec = MemorySpec(
        model=arch, method=config["method"], precision=config.get("precision", "fp32"), optimizer="adamw",
        lora_r=config.get("lora_r", 16), batch_size=config["batch_size"], seq_len=config["seq_len"],
        gradient_checkpointing=config.get("gradient_checkpointing", False), attention="sdpa", device=config["device"],
    )
    return estimate(spec)


def run_worker(config: dict, env_extra: dict | None = None) -> dict:
    from core.runs.allocator import CPU_ALLOCATOR_ENV

    env = {k: v for k, v in os.environ.items() if k not in CPU_ALLOCATOR_ENV}  # glibc defaults unless asked
    env.update(env_extra or {})
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(config)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{config['name']} failed (exit {result.returncode}): {result.stderr[-2000:]}")
    return json.loads(lines[-1])


def _row(config: dict, estimate_, measured: int, compare_bytes: int) -> dict:
    error = (compare_bytes - measured) / measured
    return {
        "config": config["name"], "predicted_mb": round(compare_bytes / 1e6, 1), "measured_mb": round(measured / 1e6, 1),
        "error_pct": round(100 * error, 1), "within_10pct": abs(error) <= TOLERANCE,
        "predicted_breakdown_mb": {k: round(v / 1e6, 1) for k, v in estimate_.breakdown.items()},
    }


def long_rows(path: Path, n: int = 24) -> Path:
    """Support tickets whose answers run past max_length: every training row is cut to exactly max_length."""
    from core.data.formats import demo_dataset_path, load_dataset_file

    tickets = load_dataset_file(demo_dataset_path("train")).rows
    rows = []
    for i in range(n):
        text = " ".join(m["content"] for t in tickets[i:i + 6] for m in t["messages"] if m["role"] != "system")
        rows.append({"messages": [{"role": "user", "content": f"Summarise ticket {i}."}, {"role": "assistant", "content": text}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def long_pairs(path: Path, n: int = 24) -> Path:
    """Preference pairs with a short prompt and two answers that both run past max_length (ticket text), so that
    chosen and rejected are each cut to exactly max_length tokens."""
    from core.data.formats import demo_dataset_path, load_dataset_file

    tickets = load_dataset_file(demo_dataset_path("train")).rows

    def text(start: int) -> str:
        return " ".join(m["content"] for t in tickets[start:start + 6] for m in t["messages"] if m["role"] != "system")

    rows = [{"prompt": [{"role": "user", "content": f"Summarise ticket {i}."}], "chosen": [{"role": "assistant", "content": text(i)}],
             "rejected": [{"role": "assistant", "content": text(i + 7)}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def job_spec(method: str, dataset: Path, shape: dict, objective: str = "sft"):
    from core.train.methods import METHODS
    from core.train.spec import TrainSpec

    learning_rate = METHODS[method].learning_rate if objective == "sft" else (5e-6 if method == "full" else 5e-5)
    return TrainSpec(name=f"calibrate-{objective}-{method}", method=method, dataset=str(dataset), eval_fraction=0.0, eval_on_start=False,
                     learning_rate=learning_rate, save_steps=10_000, logging_steps=1, warmup_ratio=0.0,
                     lora_r=16, lora_alpha=32, objective=objective, **shape)


def measure_job(spec, label: str) -> dict:
    """Run one calibration job through the worker; its card's predicted vs measured peak as a result row."""
    from _train_common import run_worker

    started = time.time()
    card = run_worker(spec, timeout=1800)["card"]
    measured, predicted = card["peak_memory_bytes"], card["predicted_memory_bytes"]
    error = (predicted - measured) / measured
    return {"config": label, "predicted_mb": round(predicted / 1e6, 1), "measured_mb": round(measured / 1e6, 1),
            "error_pct": round(100 * error, 1), "within_10pct": abs(error) <= TOLERANCE, "wall_s": round(time.time() - started, 1),
            "precision": card.get("precision"), "note": card.get("predicted_memory_note")}


def bench_objectives(pairs: list[str], shape: dict) -> list[dict]:
    """Each objective-method pair's real job on long pairs: the estimate for that objective against the measured peak."""
    from _train_common import bench_workspace

    home = bench_workspace()
    dataset = long_pairs(home / "long-pairs.jsonl")
    rows = []
    for pair in pairs:
        objective, method = pair.split("-", 1)
        rows.append(measure_job(job_spec(method, dataset, shape, objective), f"job-{pair}"))
        print(_line("real train job", rows[-1]), flush=True)
    return rows


def bench_jobs(methods: list[str], shape: dict) -> list[dict]:
    from _train_common import bench_workspace

    from core.hardware import detect
    from core.train.methods import method_refusal_for

    home = bench_workspace()
    dataset = long_rows(home / "long-rows.jsonl")
    hardware = detect()
    rows = []
    for method in methods:
        spec = job_spec(method, dataset, shape)
        refusal = method_refusal_for(spec) or (None if method != "qlora" or hardware.bnb_4bit else "bitsandbytes 4-bit is not usable here")
        if refusal:
            rows.append({"config": f"job-{method}", "skipped": refusal})
            print(f"job-{method:<24} skipped: {refusal}", flush=True)
            continue
        rows.append(measure_job(spec, f"job-{method}"))
        print(_line("real train job", rows[-1]), flush=True)
    return rows


def bench_cuda() -> list[dict] | str:
    import torch

    if not torch.cuda.is_available():
        return "skipped: no CUDA GPU on this machine"
    from core.memory import preset_arch

    rows = []
    for preset in CUDA_MODELS:
        for method, precision in CUDA_METHODS:
            config = {"name": f"cuda-{preset.replace(' ', '-')}-{method}", "device": "cuda", "preset": preset, "method": method,
                      "precision": precision, "batch_size": 4, "seq_len": 512, "lora_r": 16}
            estimate_ = predict(config, preset_arch(preset))
            try:
                measured = run_worker(config)
            except RuntimeError as exc:
                rows.append({"config": config["name"], "error": str(exc)[-300:]})
                continue
            rows.append(_row(config, estimate_, measured["measured_bytes"], estimate_.tensor_bytes))
            print(_line("cuda, max_memory_allocated", rows[-1]), flush=True)
    return rows


def _line(label: str, row: dict) -> str:
    return (f"{row['config']:<28} {label:<28} predicted {row['predicted_mb']:>9.1f} MB  measured {row['measured_mb']:>9.1f} MB  error "
            f"{row['error_pct']:+6.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="LoRA and full only")
    parser.add_argument("--methods", help="comma-separated methods (default: every method; 'none' for none)")
    parser.add_argument("--objectives", help=f"comma-separated objective-method pairs on pair rows (default: {','.join(JOB_OBJECTIVES)}; "
                                             "--quick: dpo-lora; 'none' for none)")
    parser.add_argument("--skip-cuda", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker_cuda(json.loads(args.worker))))
        return
    methods = args.methods.split(",") if args.methods else (["lora", "full"] if args.quick else JOB_METHODS)
    pairs = args.objectives.split(",") if args.objectives else (["dpo-lora"] if args.quick else JOB_OBJECTIVES)
    jobs = bench_jobs([m for m in methods if m != "none"], JOB_SHAPE) + bench_objectives([p for p in pairs if p != "none"], JOB_SHAPE)
    measured = [r for r in jobs if "error_pct" in r]
    cuda = "skipped: --skip-cuda" if args.skip_cuda else bench_cuda()
    figures = {
        "cpu_jobs": jobs,
        "shape": JOB_SHAPE,
        "cuda": cuda,
        "cpu_max_abs_error_pct": max((abs(r["error_pct"]) for r in measured), default=None),
        "cpu_all_within_10pct": all(r["within_10pct"] for r in measured),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
