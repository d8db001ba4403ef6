"""The one-click CPU demo, timed as a user walks it: Start on the Train page (its hardware-sized defaults: a
LoRA of the embedded SmolLM2-135M on the shipped support-ticket -> JSON data), then Evaluate the adapter it made
with the Evaluate page's defaults, up to the forgetting report's verdict. Both run through the worker exactly
as the buttons launch them, in a temporary workspace.

The wall time is split where it goes:
- start-up: Start clicked -> the first optimizer step begins (worker start, imports, tokenizing, model load,
  the starting eval loss);
- training: the optimizer steps (`trainer.train()`, the final checkpoint included);
- wrap-up: the final eval loss, saving the adapter and the run card;
- report: the evaluate job, Run clicked -> verdict (its per-stage seconds are printed too).
The task figure is the report's held-out JSON validity, base vs fine-tuned (percentage points).

    .venv/bin/python bench/demo_run.py                  # last line is JSON
    .venv/bin/python bench/demo_run.py --steps 12 --learning-rate 1e-3   # try other demo settings
    BENCH_KEEP=1 .venv/bin/python bench/demo_run.py     # keep the temporary workspace (paths are printed)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_common import bench_workspace  # noqa: E402


def children_cpu_s() -> float:
    """CPU seconds of the finished (reaped) workers this process launched: what the walk costs however loaded the
    machine is (on 2 idle cores the wall time is about half of it)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_and_wait(spec) -> tuple[Path, object, float]:
    from core import runs

    clicked = time.time()
    run_dir = runs.create_run(spec)
    runs.launch(run_dir)
    status = runs.wait(run_dir, timeout=3600)
    deadline = time.time() + 30
    while status.pid and os.path.exists(f"/proc/{status.pid}") and time.time() < deadline:  # reaped: its CPU time is counted
        time.sleep(0.1)
    if status.state != "succeeded":
        raise SystemExit(f"{spec.kind} run {run_dir} ended {status.state}: {status.error}\n{runs.log_tail(run_dir)}")
    return run_dir, status, clicked


def train(spec) -> dict:
    from core import runs

    run_dir, status, clicked = run_and_wait(spec)
    card = runs.read_result(run_dir)
    rows = runs.read_all_metrics(run_dir / runs.METRICS_FILE)
    begin = next(r["time"] for r in rows if r.get("event") == "start")
    steps_done = begin + card["train_seconds"]
    final = card["final_metrics"]
    return {
        "run_dir": run_dir, "adapter": card["outputs"]["adapter"], "card": card,
        "startup_s": round(begin - clicked, 1), "training_s": round(card["train_seconds"], 1),
        "wrapup_s": round(status.finished_at - steps_done, 1), "train_wall_s": round(status.finished_at - clicked, 1),
        "steps": final["global_step"], "eval_loss_before": final["eval_loss_start"], "eval_loss_after": final["eval_loss"],
    }


def evaluate(adapter: str, base) -> dict:
    from core import runs
    from core.evaluate.spec import EvalSpec

    label = Path(adapter).parent.name  # the Evaluate page labels a trained adapter by its run
    spec = EvalSpec(base=base.as_dict(), variants=[{"label": label, "model": base.with_adapter(adapter).as_dict()}])
    run_dir, status, clicked = run_and_wait(spec)
    report = runs.read_result(run_dir)
    base_model, tuned = report["models"]
    valid = report["comparisons"][label]["json_valid"]
    return {
        "run_dir": run_dir, "report_s": round(status.finished_at - clicked, 1), "verdict": report["verdicts"][0]["verdict"],
        "headline": report["verdicts"][0]["headline"],
        "json_valid_base": base_model["metrics"]["json_valid"]["value"], "json_valid_tuned": tuned["metrics"]["json_valid"]["value"],
        "json_valid_gain": valid["value"], "json_valid_gain_ci": [valid["low"], valid["high"]],
        "task_rows": report["task"]["n"], "stage_s": {m["label"]: m.get("stage_seconds") for m in report["models"]},
        "general_ppl_change_pct": (report["comparisons"][label].get("general_perplexity") or {}).get("value"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="override the demo's max_steps")
    parser.add_argument("--learning-rate", type=float, help="override the demo's learning rate")
    parser.add_argument("--precision", choices=("auto", "fp32"), help="override the demo's precision (auto: bf16 autocast on a bf16 CPU)")
    args = parser.parse_args()
    home = bench_workspace()
    from core.hardware import detect
    from core.train.backends import choose_precision
    from core.train.spec import hardware_defaults

    hardware = detect()
    spec = hardware_defaults(hardware)
    changes = {k: v for k, v in (("max_steps", args.steps), ("learning_rate", args.learning_rate), ("precision", args.precision))
               if v is not None}
    spec = replace(spec, **changes)
    autocast = choose_precision(spec, hardware.device, hardware.bf16).bf16
    print(f"demo: {spec.method} r={spec.lora_r} lr={spec.learning_rate:g} batch={spec.batch_size} steps={spec.max_steps} "
          f"max_length={spec.max_length} on {hardware.summary}{' (bf16 autocast)' if autocast else ''} · workspace {home}", flush=True)
    walk_started, cpu_started = time.time(), children_cpu_s()
    trained = train(spec)
    train_cpu = children_cpu_s() - cpu_started
    print(f"train: start-up {trained['startup_s']} s · {trained['steps']} steps {trained['training_s']} s · wrap-up "
          f"{trained['wrapup_s']} s · eval loss {trained['eval_loss_before']:.3f} -> {trained['eval_loss_after']:.3f}", flush=True)
    report = evaluate(trained["adapter"], spec.model_source)
    total = time.time() - walk_started
    report_cpu = children_cpu_s() - cpu_started - train_cpu
    print(f"report: {report['report_s']} s · stages {report['stage_s']}")
    print(f"verdict: {report['headline']} · JSON validity {report['json_valid_base']:.0f}% -> {report['json_valid_tuned']:.0f}% "
          f"({report['json_valid_gain']:+.0f} points on {report['task_rows']} held-out rows)")
    print(f"total: {total:.0f} s (Start -> verdict, not counting the seconds a user takes between the two clicks); "
          f"CPU {train_cpu:.0f} s training job + {report_cpu:.0f} s report job on {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    card = trained["card"]
    figures = {
        "total_s": round(total, 1), "startup_s": trained["startup_s"], "training_s": trained["training_s"], "wrapup_s": trained["wrapup_s"],
        "report_s": report["report_s"], "steps": trained["steps"], "learning_rate": spec.learning_rate, "batch_size": spec.batch_size,
        "autocast_bf16": autocast, "seconds_per_step": round(trained["training_s"] / max(1, trained["steps"]), 2),
        "json_valid_base_pct": round(report["json_valid_base"], 1), "json_valid_tuned_pct": round(report["json_valid_tuned"], 1),
        "json_valid_gain_points": round(report["json_valid_gain"], 1), "task_rows": report["task_rows"], "verdict": report["verdict"],
        "eval_loss_before": round(trained["eval_loss_before"], 4), "eval_loss_after": round(trained["eval_loss_after"], 4),
        "tokens_per_s": card["tokens_per_s"], "peak_memory_gb": round(card["peak_memory_bytes"] / 1e9, 3),
        "predicted_memory_gb": round(card["predicted_memory_bytes"] / 1e9, 3) if card["predicted_memory_bytes"] else None,
        "memory_error_pct": round(100 * (card["predicted_memory_bytes"] - card["peak_memory_bytes"]) / card["peak_memory_bytes"], 1)
        if card["predicted_memory_bytes"] else None,
        "report_stage_s": report["stage_s"], "train_job_cpu_s": round(train_cpu, 1), "report_job_cpu_s": round(report_cpu, 1),
        "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
