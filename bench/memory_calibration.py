"""Predicted vs measured training memory: core.memory's estimate against real training steps.

CPU (always): the embedded SmolLM2-135M, fp32, AdamW, a padded batch of random token ids, a few optimizer
steps of plain torch (+ PEFT for LoRA). Each configuration runs in a fresh subprocess; the measurement is the
process's peak resident set (VmHWM, reset through /proc/self/clear_refs after the imports) minus its resident
size just before the model is loaded. The main comparison runs with the allocator setting training jobs use
(core.runs.allocator.CPU_ALLOCATOR_ENV: freed blocks go back to the OS); the same configurations are also measured with
glibc's default settings, which keep freed activation memory in the heap.

CUDA (only when a GPU is present; skipped cleanly otherwise): random-weight models built from two preset
configs (no download), full (pure bf16), LoRA (bf16 base + autocast) and QLoRA (NF4 + double quantization),
measured with torch.cuda.max_memory_allocated against the estimate's tensor bytes (no CUDA context).

    .venv/bin/python bench/memory_calibration.py            # prints a table, last line is JSON
    .venv/bin/python bench/memory_calibration.py --quick    # CPU: full and LoRA only, tuned allocator only
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

CPU_CONFIGS = [
    {"name": "cpu-full", "method": "full", "batch_size": 4, "seq_len": 128},
    {"name": "cpu-lora", "method": "lora", "batch_size": 4, "seq_len": 128, "lora_r": 16},
    {"name": "cpu-lora-ckpt", "method": "lora", "batch_size": 8, "seq_len": 128, "lora_r": 16, "gradient_checkpointing": True},
]
CUDA_MODELS = ["Qwen2.5 0.5B", "Qwen2.5 1.5B"]
CUDA_METHODS = [("full", "bf16"), ("lora", "mixed"), ("qlora", "mixed")]
STEPS = 3
TOLERANCE = 0.15


# --------------------------------------------------------------------------- measuring (in a fresh process)


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


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


def worker_cpu(config: dict) -> dict:
    import peft  # noqa: F401 - imported before the baseline like everything else the step needs
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if config.get("mallopt"):
        from core.runs.allocator import tune_cpu_allocator

        config["mallopt_applied"] = tune_cpu_allocator()
    path = config["model_dir"]
    reset = _reset_peak_rss()
    baseline = _proc_status("VmRSS")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    if config.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config["method"] == "lora":
        model = _attach_adapter(model, config)
    started = time.perf_counter()
    _train_steps(model, config, "cpu")
    peak = _proc_status("VmHWM")
    return {"measured_bytes": peak - baseline, "baseline_bytes": baseline, "hwm_reset": reset, "seconds": round(time.perf_counter() - started, 1),
            "mallopt_applied": config.get("mallopt_applied", False)}


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

            quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
            model = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=quant, dtype=torch.bfloat16, device_map={"": 0}, attn_implementation="sdpa")
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
        "error_pct": round(100 * error, 1), "within_15pct": abs(error) <= TOLERANCE,
        "predicted_breakdown_mb": {k: round(v / 1e6, 1) for k, v in estimate_.breakdown.items()},
    }


def bench_cpu(quick: bool) -> tuple[list[dict], list[dict]]:
    from core.memory import arch_from_config
    from core.models import ModelSource, embedded_model_dir, load_config
    from core.runs.allocator import CPU_ALLOCATOR_ENV

    model_dir = str(embedded_model_dir())
    arch = arch_from_config(load_config(ModelSource("local", model_dir)), name="SmolLM2-135M-Instruct")
    configs = CPU_CONFIGS[:2] if quick else CPU_CONFIGS
    tuned, default = [], []
    for config in configs:
        config = {**config, "device": "cpu", "model_dir": model_dir}
        estimate_ = predict(config, arch)
        measured = run_worker(config, CPU_ALLOCATOR_ENV)
        tuned.append({**_row(config, estimate_, measured["measured_bytes"], estimate_.measurable_bytes), "seconds": measured["seconds"], "hwm_reset": measured["hwm_reset"]})
        print(_line("cpu, jobs' allocator", tuned[-1]), flush=True)
    for config in ([] if quick else configs[:2]):
        config = {**config, "device": "cpu", "model_dir": model_dir}
        estimate_ = predict(config, arch)
        measured = run_worker(config)
        default.append(_row(config, estimate_, measured["measured_bytes"], estimate_.measurable_bytes))
        print(_line("cpu, glibc default", default[-1]), flush=True)
    if not quick:  # the in-process switch (tune_cpu_allocator) on the configuration glibc inflates most
        config = {**configs[1], "name": "cpu-lora-mallopt", "device": "cpu", "model_dir": model_dir, "mallopt": True}
        estimate_ = predict(config, arch)
        measured = run_worker(config)
        tuned.append({**_row(config, estimate_, measured["measured_bytes"], estimate_.measurable_bytes), "seconds": measured["seconds"],
                      "hwm_reset": measured["hwm_reset"], "mallopt_applied": measured["mallopt_applied"]})
        print(_line("cpu, mallopt in-process", tuned[-1]), flush=True)
    return tuned, default


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
    return f"{row['config']:<28} {label:<28} predicted {row['predicted_mb']:>9.1f} MB  measured {row['measured_mb']:>9.1f} MB  error {row['error_pct']:+6.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="CPU full + LoRA with the jobs' allocator only")
    parser.add_argument("--skip-cuda", action="store_true")
    args = parser.parse_args()
    if args.worker:
        config = json.loads(args.worker)
        print(json.dumps(worker_cuda(config) if config["device"] == "cuda" else worker_cpu(config)))
        return
    tuned, default = bench_cpu(args.quick)
    cuda = "skipped: --skip-cuda" if args.skip_cuda else bench_cuda()
    figures = {
        "cpu": tuned,
        "cpu_glibc_default_allocator": default,
        "cuda": cuda,
        "cpu_max_abs_error_pct": max(abs(r["error_pct"]) for r in tuned),
        "cpu_all_within_15pct": all(r["within_15pct"] for r in tuned),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
