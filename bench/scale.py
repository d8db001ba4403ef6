"""Scaling: tokens/s of one vs two CPU processes on the same global batch, and the scaling to expect on GPUs.

Measured: the same LoRA run of the embedded model (or --model tiny: the 2-layer random Llama) through the real
worker, once as 1 process x gradient_accumulation 2 (torch using every core) and once as 2 DDP processes (gloo,
one thread each) x accumulation 1: the same rows per optimizer step, so the same training. Steady tokens/s is read
from metrics.jsonl (rank 0 logs every rank's tokens), the first logged step left out.

Expected on GPUs (no GPU here, so this is arithmetic, printed with its assumptions): per optimizer step each GPU
computes ~6·P FLOPs per token for a full fine-tune (forward 2P, backward 4P) or ~4·P with LoRA (no weight gradients
for the frozen base), and communicates, per ring collective, 2·(N-1)/N of the bytes reduced:
- DDP: all-reduce of the trainable gradients (Ψ_trainable · 2 bytes in bf16);
- ZeRO-3 / FSDP full_shard: all-gather of every weight in forward and again in backward (the frozen base of a LoRA
  too), reduce-scatter of the trainable gradients: (N-1)/N · (2·P + Ψ_trainable) · 2 bytes (3·(N-1)/N·P·2 in full);
efficiency = compute / (compute + communication), bounded above by full overlap (max of the two).

    python bench/scale.py [--model embedded|tiny] [--steps 8]        # last line is JSON
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_common import bench_workspace, run_worker  # noqa: E402

# GPU assumptions for the expected-scaling table (dense bf16 peaks and effective collective bandwidths).
GPU_PEAK_FLOPS = 989e12  # H100 SXM, dense bf16
MFU = 0.40
INTERCONNECTS = {"NVLink 4 (one node)": 360e9, "PCIe 4 x16 (one node)": 20e9, "InfiniBand 400 Gb/s (across nodes)": 45e9}
TOKENS_PER_GPU_STEP = 4 * 2048  # micro-batch 4 x 2048 tokens, no accumulation


def tiny_llama(target: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from core.models import ModelSource, load_tokenizer

    tokenizer = load_tokenizer(ModelSource())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def measure(model: dict, steps: int, batch: int) -> dict:
    from core.train.spec import TrainSpec

    common = dict(model=model, max_steps=steps, batch_size=batch, max_length=256, eval_fraction=0.0, eval_on_start=False,
                  logging_steps=1, save_steps=10_000, learning_rate=5e-4, lora_dropout=0.0)
    figures = {}
    for label, layout in (("1 process", dict(processes_per_node=1, gradient_accumulation=2)),
                          ("2 processes", dict(processes_per_node=2, gradient_accumulation=1))):
        started = time.time()
        result = run_worker(TrainSpec(**common, **layout))
        losses = [r["loss"] for r in result["rows"] if "loss" in r]
        figures[label] = {"steady_tokens_per_s": round(result["steady_tokens_per_s"], 1), "wall_s": round(time.time() - started, 1),
                          "losses": [round(v, 4) for v in losses], "global_batch": batch * 2,
                          "peak_memory_bytes_per_process": result["card"].get("distribution", {}).get("peak_memory_bytes_per_rank")
                          or [result["card"]["peak_memory_bytes"]]}
        print(f"{label}: {figures[label]['steady_tokens_per_s']} tokens/s steady, {figures[label]['wall_s']} s wall "
              f"(losses {figures[label]['losses']})", flush=True)
    return figures


def expected_scaling(arch_name: str, method: str) -> dict:
    from core.memory import MemorySpec, preset_arch, trainable_params

    arch = preset_arch(arch_name)
    total = arch.total_params
    trainable = trainable_params(MemorySpec(arch, method=method, lora_r=16, device="cuda"))
    flops = (6 if method == "full" else 4) * total * TOKENS_PER_GPU_STEP
    compute_s = flops / (GPU_PEAK_FLOPS * MFU)
    rows = {}
    for n in (2, 4, 8):
        ring = 2 * (n - 1) / n
        # ZeRO-3 / FSDP: two all-gathers of every weight (forward, backward) + a reduce-scatter of the trainable gradients.
        volumes = {"DDP": ring * trainable * 2, "ZeRO-3 / FSDP": ring * total * 2 + (ring / 2) * trainable * 2}
        for strategy, volume in volumes.items():
            for link, bandwidth in INTERCONNECTS.items():
                comm_s = volume / bandwidth
                rows[f"{n} GPUs · {strategy} · {link}"] = {
                    "bytes_per_gpu_per_step": int(volume),
                    "efficiency_no_overlap": round(compute_s / (compute_s + comm_s), 3),
                    "efficiency_full_overlap": round(min(1.0, compute_s / max(compute_s, comm_s)), 3),
                }
    return {"model": arch.name, "method": method, "params": total, "trainable": trainable,
            "compute_s_per_step": round(compute_s, 4), "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("embedded", "tiny"), default="embedded")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4, help="rows per process per forward pass (global batch = 2 x this)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    bench_workspace()
    model = ({"kind": "embedded"} if args.model == "embedded"
             else {"kind": "local", "ref": str(tiny_llama(Path(tempfile.mkdtemp()) / "tiny"))})
    load = os.getloadavg()[0]
    figures = measure(model, args.steps, args.batch)
    one, two = figures["1 process"]["steady_tokens_per_s"], figures["2 processes"]["steady_tokens_per_s"]
    print(f"2 processes / 1 process: {two / one:.2f}x on {os.cpu_count()} cores (load average {load:.2f} before the runs)")
    expected = [expected_scaling("Llama-3.1 8B", "full"), expected_scaling("Llama-3.1 8B", "lora")]
    for table in expected:
        print(f"\nexpected on H100s ({table['model']}, {table['method']}: {table['params'] / 1e9:.2f} B params, "
              f"{table['trainable'] / 1e6:.1f} M trainable; compute {table['compute_s_per_step'] * 1e3:.0f} ms per step of "
              f"{TOKENS_PER_GPU_STEP} tokens per GPU at {MFU:.0%} MFU)")
        for name, row in table["rows"].items():
            print(f"  {name:58s} {row['bytes_per_gpu_per_step'] / 1e9:8.3f} GB/step  efficiency {row['efficiency_no_overlap']:.2f}"
                  f" (no overlap) .. {row['efficiency_full_overlap']:.2f} (full overlap)")
    summary = {
        "model": args.model, "cores": os.cpu_count(), "load_before": round(load, 2),
        "tokens_per_s_1proc": one, "tokens_per_s_2proc": two, "speedup_2proc": round(two / one, 3) if one else None,
        "same_losses": figures["1 process"]["losses"] == figures["2 processes"]["losses"],
        "expected_8gpu_nvlink_efficiency": {
            f"{t['method']} {s}": t["rows"][f"8 GPUs · {s} · NVLink 4 (one node)"]["efficiency_no_overlap"]
            for t in expected for s in ("DDP", "ZeRO-3 / FSDP")},
        "expected_8gpu_pcie_efficiency": {
            f"{t['method']} {s}": t["rows"][f"8 GPUs · {s} · PCIe 4 x16 (one node)"]["efficiency_no_overlap"]
            for t in expected for s in ("DDP", "ZeRO-3 / FSDP")},
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
