"""GPU proof: the same seeded data through the hf and the Unsloth backends, on one CUDA GPU, in one JSON.

What it runs (through the real worker, `core.runs.launch`, one job after the other):
  * hf and unsloth x LoRA and QLoRA x packing off and on, lora_dropout=0 (Unsloth's fast LoRA path), on a
    1B-class Llama (16 layers, hidden 2048, GQA 32/8 heads, SwiGLU 8192) with random weights and the embedded
    model's tokenizer, built locally so nothing is downloaded (`--model` takes a real local folder instead);
  * per run: steady tokens/s, peak torch.cuda.max_memory_allocated, core.memory's prediction for the backend
    actually used, and the loss curve;
  * per (method, packing): the largest relative difference between the two backends' loss curves, step by step;
  * the packing probe: one packed batch through each backend's model and collator, each row's logits against
    the same row run alone (row separation), and the same batch without the row boundaries as a control;
  * the GPU half of the memory calibration (bench/memory_calibration.py: full / LoRA / QLoRA on two preset
    sizes, predicted vs measured).
Aimed at < 8 minutes on one H200 with the defaults (15 steps, batch 8 x 512 tokens); the run times are in the JSON.

Loss tolerance: LOSS_TOLERANCE = 3 % relative, per logged step. Both backends train in bf16 from the same
weights, data order and seed, and LoRA's B starts at zero, so the first loss must agree to bf16 rounding; after
that Unsloth's fused kernels (RoPE, RMSNorm, SwiGLU, LoRA matmuls, chunked cross-entropy) sum in another order,
bf16 keeps 8 mantissa bits (0.4 % per rounding), and 15 Adam steps compound it — a correct backend stays within
about 1 %, so 3 % leaves room for that and still fails the bugs this script exists for (rows attending across
the pack boundary, a tokenizer mismatch, dropout on one side only), which move the loss by far more. The packing
probe is the sharper test of row separation: with random weights the loss barely depends on context.

Without CUDA it prints a skip line and `{"skipped": "no CUDA ..."}` and exits 0.

    python bench/gpu_check.py [--steps 15] [--model DIR] [--tokenizer DIR] [--skip-calibration]   # last line: JSON

Running it on a GPU machine that has no registry (the workbench's lent H200: Python 3.12, torch 2.11 + CUDA 13,
transformers 5.17, peft, accelerate, huggingface_hub, triton already there) takes two calls of the device tool,
each carrying at most 64 MiB; the second must start while the machine is still warm (it keeps /tmp/site).
Fetch the wheels here once (cp312, manylinux x86-64, --no-deps), into two git-ignored folders:

    P="--only-binary=:all: --no-deps --implementation cp --python-version 3.12 --platform manylinux_2_17_x86_64 \
       --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64"
    pip download $P -d .whl/a bitsandbytes==0.50.2 trl==1.15.0 datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19 \
        pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5          # ~48 MB
    pip download $P -d .whl/b unsloth==2026.10.9 unsloth_zoo==2026.10.9 cut-cross-entropy==25.1.1 torchao==0.18.0 \
        tyro==1.0.17 docstring_parser==0.18.0 typeguard==4.6.1 msgspec==0.23.0 hf_transfer==0.1.9 diffusers==0.42.1 \
        json5==0.17.3 nest-asyncio==1.6.0 structlog==26.1.0 lazy-importer==0.1.0                        # ~46 MB
    mkdir -p .whl/tok && cp $WORKBENCH_HOME/models/SmolLM2-135M-Instruct/{tokenizer.json,tokenizer_config.json,chat_template.jinja} \
.whl/tok/

  call 1 (carry .whl/a):  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/a/*.whl
  call 2 (carry .whl/b .whl/tok):  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/b/*.whl && \
      PYTHONPATH=/tmp/site python3 bench/gpu_check.py --tokenizer .whl/tok | tee $OUT/gpu_check.log

xformers is left out on purpose: its wheel is built for one torch version (0.0.35 for torch 2.10) and Unsloth
runs without it (flash-attention / SDPA). The pinned set for a machine with a registry is requirements-gpu.txt.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_common import ROOT, bench_workspace, run_worker  # noqa: E402

BACKENDS = ("hf", "unsloth")
METHODS = ("lora", "qlora")
LOSS_TOLERANCE = 0.03
PROBE_TOLERANCE = 0.02  # packed-vs-alone logits, relative to the largest logit (bf16)


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def tokenizer_source(folder: Path | None):
    from core.models import ModelSource, load_tokenizer

    return load_tokenizer(ModelSource("local", str(folder)) if folder else ModelSource())


def build_random_llama(target: Path, tokenizer_dir: Path | None) -> Path:
    """A ~1.2B-parameter Llama with random weights (bf16) and the embedded tokenizer, saved as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer_source(tokenizer_dir)
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


def train_spec(model_dir: Path, backend: str, method: str, packing: bool, steps: int):
    from core.train.spec import TrainSpec

    return TrainSpec(model={"kind": "local", "ref": str(model_dir)}, method=method, backend=backend, packing=packing,
                     lora_r=16, lora_alpha=32, lora_dropout=0.0, batch_size=8, max_length=512, max_steps=steps,
                     gradient_checkpointing=True, eval_fraction=0.0, eval_on_start=False, logging_steps=1,
                     save_steps=100_000, learning_rate=2e-4, warmup_ratio=0.0, seed=0, name=f"gpu-{backend}-{method}")


def run_combination(model_dir: Path, backend: str, method: str, packing: bool, steps: int) -> dict:
    started = time.time()
    run = run_worker(train_spec(model_dir, backend, method, packing, steps), timeout=900)
    card = run["card"]
    losses = [r["loss"] for r in run["rows"] if "loss" in r]
    return {
        "backend_used": card["backend"], "backend_notes": card.get("backend_notes", []),
        "tokens_per_s": round(run["steady_tokens_per_s"], 1),
        "peak_memory_gb": round(card["peak_memory_bytes"] / 1e9, 3),
        "predicted_memory_gb": round(card["predicted_memory_bytes"] / 1e9, 3) if card.get("predicted_memory_bytes") else None,
        "losses": [round(v, 5) for v in losses], "seconds": round(time.time() - started, 1),
    }


def largest_relative_difference(a: list[float], b: list[float]) -> float | None:
    pairs = list(zip(a, b))
    return max(abs(x - y) / max(abs(x), 1e-8) for x, y in pairs) if pairs else None


# ---------------------------------------------------------------- packing probe (a fresh process per backend)


def probe_packing(model_dir: Path, backend_name: str) -> dict:
    """Logits of each row inside one packed batch vs the row alone, through the backend's own model and collator."""
    if backend_name == "unsloth":
        import unsloth  # noqa: F401 - first, as the training job does
    import torch

    from core.hardware import detect
    from core.train.backends import BACKENDS as ORDER
    from core.train.data import PadCollator, pack_features

    spec = train_spec(model_dir, backend_name, "lora", True, 1)
    backend = next(b for b in ORDER if b.name == backend_name)
    model, tokenizer = backend.load(spec, detect())
    model.eval()
    rows = [tokenizer(text)["input_ids"] for text in ("The quick brown fox jumps over the lazy dog.",
                                                     "Packing keeps each row apart from its neighbours, or it should.",
                                                     "A third row, a little longer than the others, closes the pack.")]
    features = pack_features([{"input_ids": ids, "labels": ids} for ids in rows], max_length=512)
    batch = PadCollator(pad_token_id=tokenizer.pad_token_id, flatten_packed=backend_name == "unsloth")(features)
    batch.pop("labels")
    batch = {k: v.cuda() for k, v in batch.items()}
    lengths = [n for f in features for n in f["seq_lengths"]]
    control = {k: v for k, v in batch.items() if k != "packed_seq_lengths"}
    if backend_name == "hf":  # the hf control: positions counted straight through, so nothing marks the rows
        control["position_ids"] = torch.arange(batch["input_ids"].shape[1], device="cuda")[None].expand_as(batch["input_ids"])

    def forward(inputs):
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return model(**inputs, use_cache=False).logits.float()

    together, leaked = forward(batch), forward(control)
    errors, leaks, offset = [], [], 0
    for n in lengths:
        alone = forward({"input_ids": batch["input_ids"][:, offset:offset + n]})[0]
        scale = alone.abs().max().item()
        # E731, B023: both layouts are one packed row here; the lambda is used in this iteration
        flat = lambda t: t.reshape(-1, t.shape[-1])[offset:offset + n]  # noqa: E731, B023
        errors.append((flat(together) - alone).abs().max().item() / scale)
        leaks.append((flat(leaked) - alone).abs().max().item() / scale)
        offset += n
    # The first row sees nothing before it either way; the later rows are the test.
    return {"separation_error": round(max(errors[1:]), 5), "leak_control": round(max(leaks[1:]), 5),
            "rows": len(lengths), "separated": max(errors[1:]) <= PROBE_TOLERANCE < max(leaks[1:])}


def run_probe(model_dir: Path, backend: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    done = subprocess.run([sys.executable, __file__, "--probe", backend, "--model", str(model_dir)], env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- main


def calibration() -> object:
    try:
        from memory_calibration import bench_cuda
    except ImportError as exc:
        return f"skipped: bench/memory_calibration.py has no CUDA half ({exc})"
    return bench_cuda()


# ---------------------------------------------------------------- scale (issue 18): sharded strategies on one GPU
# An H200 is one GPU: what it can show of FSDP / ZeRO is one rank with and without CPU offload, launched by the
# worker through torchrun / accelerate exactly as a multi-GPU run is, with the per-device memory prediction of
# core.memory.distributed next to the measured peak. Needs the deepspeed wheel for the ZeRO rows (pure Python here:
# `pip download --no-deps deepspeed==0.19.8 hjson py-cpuinfo einops` plus msgpack / ninja cp312 wheels); ZeRO-Offload
# JIT-builds DeepSpeed's CPU Adam with the machine's C++ compiler on first use. A row that fails is reported, not fatal.
SCALE_RUNS = {
    "fsdp_full_shard": dict(distributed_strategy="fsdp"),
    "fsdp_full_shard_offload": dict(distributed_strategy="fsdp", fsdp_cpu_offload=True),
    "zero2": dict(distributed_strategy="deepspeed", zero_stage=2, launcher="accelerate"),
    "zero3_offload": dict(distributed_strategy="deepspeed", zero_stage=3, zero_offload="optimizer_and_params"),
}


def scale_checks(model_dir: Path, steps: int, reference: dict | None) -> dict:
    """FSDP / ZeRO on one rank through the real worker + launcher: state, tokens/s, peak vs per-device prediction,
    and the loss curve against the plain single-process hf LoRA run (same data, seed, steps and schedule: sharding
    must not change the training, only where the bytes live)."""
    from dataclasses import replace

    from core.train.preflight import estimate_per_device_for_spec

    results = {}
    for name, fields in SCALE_RUNS.items():
        spec = replace(train_spec(model_dir, "hf", "lora", False, steps), name=f"gpu-scale-{name}", **fields)
        predicted = estimate_per_device_for_spec(spec)
        started = time.time()
        try:
            run = run_worker(spec, timeout=900)
        except SystemExit as exc:
            results[name] = {"failed": str(exc).splitlines()[0][:400]}
            print(f"scale {name:26s} FAILED: {results[name]['failed']}", flush=True)
            continue
        card, losses = run["card"], [r["loss"] for r in run["rows"] if "loss" in r]
        ref = (reference or {}).get("losses", [])[: len(losses)]
        results[name] = {
            "tokens_per_s": round(run["steady_tokens_per_s"], 1), "peak_memory_gb": round(card["peak_memory_bytes"] / 1e9, 3),
            "predicted_per_device_gb": round(predicted.measurable_bytes / 1e9, 3),
            "cpu_gb_predicted": round(predicted.host_bytes_per_node / 1e9, 2),
            "first_loss_vs_hf_lora": round(abs(losses[0] - ref[0]) / ref[0], 5) if losses and ref else None,
            "largest_relative_loss_difference": round(largest_relative_difference(ref, losses[: len(ref)]), 5) if ref else None,
            "strategy": card.get("distribution", {}).get("strategy"), "seconds": round(time.time() - started, 1),
        }
        r = results[name]
        print(f"scale {name:26s} {r['tokens_per_s']:9.1f} tokens/s · peak {r['peak_memory_gb']:.2f} GB (per-device prediction "
              f"{r['predicted_per_device_gb']}) · loss vs hf LoRA {r['largest_relative_loss_difference']}", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--model", type=Path, help="a local Llama-family folder instead of random weights")
    parser.add_argument("--tokenizer", type=Path, help="a folder with tokenizer files (default: the embedded model's)")
    parser.add_argument("--skip-calibration", action="store_true")
    parser.add_argument("--skip-scale", action="store_true", help="leave out the FSDP / ZeRO one-rank runs (issue 18)")
    parser.add_argument("--probe", choices=BACKENDS, help=argparse.SUPPRESS)  # internal: one probe in a fresh process
    args = parser.parse_args()
    if not cuda_available():
        print("gpu_check: skipped — no CUDA device on this machine (run it on a GPU box; the docstring says how)")
        print(json.dumps({"skipped": "no CUDA device on this machine"}))
        return 0
    if args.probe:
        print(json.dumps(probe_packing(args.model, args.probe)))
        return 0

    bench_workspace()
    from core.hardware import detect

    hardware = detect()
    print(f"device: {hardware.summary} · unsloth installed: {hardware.unsloth}", flush=True)
    started = time.time()
    model_dir = args.model or build_random_llama(Path(tempfile.mkdtemp(prefix="random-llama-1b-")), args.tokenizer)
    runs, failed = {}, {}
    for method in METHODS:
        for packing in (False, True):
            for backend in BACKENDS:
                name = f"{backend}_{method}_{'packed' if packing else 'padded'}"
                if backend == "unsloth" and not hardware.unsloth:
                    failed[name] = "Unsloth not installed"
                    continue
                try:
                    runs[name] = run_combination(model_dir, backend, method, packing, args.steps)
                except SystemExit as exc:  # one failing run must not hide the others
                    failed[name] = str(exc).splitlines()[0][:300]
                    print(f"{name:24s} FAILED: {failed[name]}", flush=True)
                    continue
                r = runs[name]
                print(f"{name:24s} {r['tokens_per_s']:9.1f} tokens/s · peak {r['peak_memory_gb']:.2f} GB "
                      f"(predicted {r['predicted_memory_gb']}) · backend {r['backend_used']} · {r['seconds']:.0f} s", flush=True)
    agreement = {}
    for method in METHODS:
        for layout in ("padded", "packed"):
            hf, fast = runs.get(f"hf_{method}_{layout}"), runs.get(f"unsloth_{method}_{layout}")
            if hf and fast and fast["backend_used"] == "unsloth":
                diff = largest_relative_difference(hf["losses"], fast["losses"])
                agreement[f"{method}_{layout}"] = {"largest_relative_loss_difference": round(diff, 5),
                                                   "within_tolerance": diff <= LOSS_TOLERANCE,
                                                   "unsloth_speedup": round(fast["tokens_per_s"] / hf["tokens_per_s"], 2)
                                                                      if hf["tokens_per_s"] else None}
                print(f"{method} {layout}: loss curves differ by at most {diff:.2%} (tolerance {LOSS_TOLERANCE:.0%})", flush=True)
    probes = {backend: run_probe(model_dir, backend) for backend in BACKENDS if backend == "hf" or hardware.unsloth}
    for backend, probe in probes.items():
        print(f"packing probe {backend}: {probe}", flush=True)
    memory = "skipped: --skip-calibration" if args.skip_calibration else calibration()
    scale = "skipped: --skip-scale" if args.skip_scale else scale_checks(model_dir, args.steps, runs.get("hf_lora_padded"))
    print(json.dumps({"device": hardware.device_name, "steps": args.steps, "loss_tolerance": LOSS_TOLERANCE, "runs": runs,
                      "failed": failed, "agreement": agreement, "packing_probe": probes, "memory_calibration": memory,
                      "scale": scale, "bench_seconds": round(time.time() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
