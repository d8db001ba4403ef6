"""Export benchmark on the embedded model's demo run: train a short demo LoRA (the Train page's CPU defaults,
fewer steps), export it to every format through the real worker, and print per artifact the time and size and
what loading it back measured (merged vs base + adapter, GGUF greedy text / next-token agreement vs torch);
then Chat tokens/s for the same prompts: torch (base + adapter, as Chat loads a run; and the merged model)
against llama.cpp (F16, Q8_0, Q4_K_M).

    .venv/bin/python bench/export.py                 # last line is JSON
    .venv/bin/python bench/export.py --steps 36      # a longer run than the one-click demo's 12 steps
    .venv/bin/python bench/export.py --run RUN_DIR   # export an existing train run instead of training one
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_common import bench_workspace, run_worker  # noqa: E402

from core.export.validate import QUANT_TIE_MARGIN  # noqa: E402
from core.train.spec import CPU_DEMO_STEPS  # noqa: E402

CHAT_PROMPTS = ("My laptop will not connect to the office Wi-Fi since this morning.",
                "Explain what a LoRA adapter is in two sentences.",
                "The invoice portal shows error 500 when I upload a PDF.")
MAX_NEW_TOKENS = 64


def train_demo(steps: int) -> Path:
    from dataclasses import replace

    from core.hardware import detect
    from core.train.spec import hardware_defaults

    spec = replace(hardware_defaults(detect()), max_steps=steps, name="demo")
    started = time.time()
    figures = run_worker(spec)
    print(f"demo run: {steps} steps in {time.time() - started:.0f} s ({figures['run_dir']})", flush=True)
    return Path(figures["run_dir"])


def export(run_dir: Path) -> dict:
    from core import runs
    from core.export.spec import ExportSpec

    spec = ExportSpec(source_run=str(run_dir), formats=["adapter", "merged", "gguf_f16", "gguf_q8_0", "modelfile", "recipes"],
                      quantize=["Q4_K_M", "Q5_K_M"], name="demo")
    export_dir = runs.create_run(spec)
    started = time.time()
    runs.launch(export_dir)
    status = runs.wait(export_dir, timeout=3600)
    result = runs.read_result(export_dir)
    if status.state != "succeeded":
        raise SystemExit(f"export {export_dir} ended {status.state}: {status.error}\n{runs.log_tail(export_dir)}")
    result["wall_s"] = time.time() - started
    return result


def chat_speed(loaded, label: str) -> dict:
    from core.generation import GenerationSettings, generate_blocking

    settings = GenerationSettings(temperature=0.0, max_new_tokens=MAX_NEW_TOKENS)
    generate_blocking(loaded, [{"role": "user", "content": "Hello"}], GenerationSettings(temperature=0.0, max_new_tokens=8))  # warm-up
    tokens, seconds, first = 0, 0.0, []
    for prompt in CHAT_PROMPTS:
        stream = generate_blocking(loaded, [{"role": "user", "content": prompt}], settings)
        s = stream.stats
        if s.new_tokens > 1 and s.latency_s and s.time_to_first_token_s is not None:
            tokens += s.new_tokens - 1
            seconds += s.latency_s - s.time_to_first_token_s
            first.append(s.time_to_first_token_s)
    speed = tokens / seconds if seconds else 0.0
    print(f"chat {label:28s} {speed:6.1f} tokens/s, first token {sum(first) / max(1, len(first)):.2f} s", flush=True)
    return {"tokens_per_s": round(speed, 1), "first_token_s": round(sum(first) / max(1, len(first)), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=CPU_DEMO_STEPS, help="training steps of the demo run (default: the one-click demo's)")
    parser.add_argument("--run", type=Path, help="an existing finished train run to export (no training)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not args.run:
        bench_workspace()
    run_dir = args.run.resolve() if args.run else train_demo(args.steps)
    result = export(run_dir)
    figures: dict = {"export_wall_s": round(result["wall_s"], 1), "checks_failed": result["checks_failed"]}
    for artifact in result["artifacts"]:
        checks = {c["name"]: c for c in artifact["checks"]}
        line = f"{artifact['kind']:12s} {artifact['seconds']:6.1f} s {artifact['size_bytes'] / 1e6:8.1f} MB"
        key = artifact["kind"].lower()
        figures[f"{key}_s"] = artifact["seconds"]
        figures[f"{key}_mb"] = round(artifact["size_bytes"] / 1e6, 1)
        if "merged = base + adapter" in checks:
            merged = checks["merged = base + adapter"]
            figures["merged_mean_abs_logit_diff"] = round(merged["mean_abs_diff"], 5)
            figures["merged_top1_agreement"] = round(merged["top1_agreement"], 4)
            line += f"  merged vs base+adapter: mean |Δlogit| {merged['mean_abs_diff']:.4f}, top-1 {merged['top1_agreement']:.1%}"
        if "greedy text vs torch" in checks:
            greedy = checks["greedy text vs torch"]
            figures[f"{key}_agreement"] = round(greedy["agreement"], 4)
            figures[f"{key}_identical_prefix"] = greedy["identical_prefix"]
            line += f"  next-token agreement {greedy['agreement']:.1%}, identical greedy prefix {greedy['identical_prefix']}"
            if greedy.get("margin_shift_p95") is not None:  # the runtime's noise on torch's top-2 margins
                figures[f"{key}_margin_shift_p95"] = round(greedy["margin_shift_p95"], 3)
                line += f", top-2 margin moved {greedy['margin_shift_mean']:.3f} mean / {greedy['margin_shift_p95']:.3f} p95"
            if greedy.get("decided_agreement") is not None:
                figures[f"{key}_decided_agreement"] = round(greedy["decided_agreement"], 4)
                line += f", {greedy['decided_agreement']:.1%} where torch decides by ≥ {QUANT_TIE_MARGIN} logits"
        print(line, flush=True)
    figures.update(speeds(run_dir, result))
    print(json.dumps(figures))
    return 0


def speeds(run_dir: Path, result: dict) -> dict:
    from core.llamacpp import load_chat_model
    from core.models import ModelSource, load_model
    from core.runs import read_spec_dict

    out = {}
    base = ModelSource.from_dict(read_spec_dict(run_dir).get("model") or {"kind": "embedded"})
    adapter = next(a["path"] for a in result["artifacts"] if a["kind"] == "adapter")
    merged = next(a["path"] for a in result["artifacts"] if a["kind"] == "merged")
    out["chat_torch_adapter"] = chat_speed(load_model(base.with_adapter(adapter)), "torch, base + adapter")
    out["chat_torch_merged"] = chat_speed(load_model(ModelSource("local", merged)), "torch, merged fp16 → fp32")
    for kind in ("gguf_f16", "gguf_q8_0", "Q4_K_M"):
        path = next(a["path"] for a in result["artifacts"] if a["kind"] == kind)
        model = load_chat_model(path)
        out[f"chat_llamacpp_{kind.lower()}"] = chat_speed(model, f"llama.cpp, {Path(path).name}")
        model.close()
    return {f"{k}_tokens_per_s": v["tokens_per_s"] for k, v in out.items()}


if __name__ == "__main__":
    raise SystemExit(main())
