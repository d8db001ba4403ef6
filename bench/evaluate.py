"""Evaluation benchmark: the default CPU forgetting report of the embedded model vs a demo LoRA fine-tune.

Runs the real evaluate job through the worker (default EvalSpec sample sizes unless overridden) and prints
the task metrics and general perplexity of base and fine-tuned, the verdict, the per-model seconds and the
wall time. Without --adapter it first trains a short LoRA on the demo task through the train job.

    .venv/bin/python bench/evaluate.py [--adapter RUN/adapter] [--train-steps 30] [--task-samples 24] ...

Runs in a temporary workspace (BENCH_KEEP=1 keeps it), never the user's. Last line: one JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _train_common import bench_workspace  # noqa: E402

from core import runs  # noqa: E402


def train_demo_adapter(steps: int) -> Path:
    run_dir = runs.create_run_from_dict({"kind": "train", "name": f"bench-demo-{steps}", "max_steps": steps, "learning_rate": 1e-3,
                                         "eval_fraction": 0.0, "max_length": 256, "batch_size": 4, "save_steps": max(1, steps)})
    started = time.time()
    runs.launch(run_dir)
    status = runs.wait(run_dir, timeout=7200)
    if status.state != "succeeded":
        sys.exit(f"training failed: {status.error}\n{runs.log_tail(run_dir)}")
    print(f"trained {steps} steps in {time.time() - started:.0f} s: {run_dir / 'adapter'}", flush=True)
    return run_dir / "adapter"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, help="a PEFT adapter of the embedded model (default: train one)")
    parser.add_argument("--train-steps", type=int, default=30)
    for name in ("task_samples", "general_samples", "mc_samples", "max_new_tokens"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, dest=name)
    args = parser.parse_args()
    bench_workspace()
    adapter = args.adapter or train_demo_adapter(args.train_steps)
    spec = {"kind": "evaluate", "name": "bench", "variants": [{"label": "demo LoRA", "model": {"adapter": str(adapter.resolve())}}]}
    spec.update({k: v for k, v in vars(args).items() if k.endswith(("samples", "tokens")) and v is not None})
    run_dir = runs.create_run_from_dict(spec)
    started = time.time()
    runs.launch(run_dir)
    status = runs.wait(run_dir, timeout=7200)
    wall = time.time() - started
    if status.state != "succeeded":
        sys.exit(f"evaluation failed: {status.error}\n{runs.log_tail(run_dir)}")
    report = runs.read_result(run_dir)
    base, tuned = report["models"]
    figures = {"wall_s": round(wall, 1), "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
               "task_rows": report["task"]["n"], "general_texts": report["general"]["n_texts"], "mc_items": report["general"]["n_mc"],
               "base_seconds": base["seconds"], "finetuned_seconds": tuned["seconds"],
               "base_cpu_seconds": base["cpu_seconds"], "finetuned_cpu_seconds": tuned["cpu_seconds"],
               "verdict": report["verdicts"][0]["verdict"]}
    print(f"{'metric':40s} {'base':>10s} {'fine-tuned':>10s} {'delta [95% CI]':>24s}")
    for m in report["metrics"]:
        a, b = base["metrics"].get(m["key"]), tuned["metrics"].get(m["key"])
        d = report["comparisons"]["demo LoRA"].get(m["key"])
        if a and b:
            print(f"{m['label']:40s} {a['value']:10.2f} {b['value']:10.2f} {d['value']:+9.2f} [{d['low']:+.1f}, {d['high']:+.1f}]")
            key = m["key"].replace("field:", "field_")
            figures[f"base_{key}"], figures[f"finetuned_{key}"] = round(a["value"], 2), round(b["value"], 2)
    print(report["verdicts"][0]["headline"])
    print(f"report: {runs.result_path(run_dir)}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
