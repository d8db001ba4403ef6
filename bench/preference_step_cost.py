"""What a DPO step costs against an SFT step (issue 27): the same rows, the same model, the same LoRA settings.

On the embedded SmolLM2-135M, the demo preference pairs (assets/demo/pairs_train.jsonl): SFT trains on prompt +
chosen answer, DPO on the pairs (chosen and rejected through the model as one batch of 2 x batch_size rows, plus the
reference's no-grad forward). Each is one run of the real train job through the worker (the process the Start button
launches), a few steps after a warm-up step; one after the other on a machine as quiet as it can be made.

Per objective: steady rows/s and tokens/s (between the first and the last logged step: the first step is the warm-up),
seconds per step, and the peak memory the job measured next to the pre-flight's estimate for that objective
(core.memory; the run card records both). DPO's tokens count both answers and the prompt twice, so rows/s is the fairer
speed ratio.

    .venv/bin/python bench/preference_step_cost.py            # 5 steps each; last line is JSON
    .venv/bin/python bench/preference_step_cost.py --quick    # 3 steps each, 12 rows
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_common import ROOT, bench_workspace, run_worker, steady_tokens_per_s  # noqa: E402

HYPER = dict(method="lora", lora_r=16, lora_alpha=32, learning_rate=5e-5, lr_scheduler="linear", warmup_ratio=0.0,
             batch_size=4, max_length=256, seed=42, eval_fraction=0.0, eval_on_start=False, logging_steps=1, save_steps=100_000)
TOLERANCE = 0.10  # issue 12's rule: a run's measured peak within 10 % of its estimate


def write_rows(home: Path, limit: int | None) -> tuple[Path, Path]:
    """The demo pairs, and the same rows as SFT conversations (prompt + chosen answer)."""
    lines = (ROOT / "assets" / "demo" / "pairs_train.jsonl").read_text(encoding="utf-8").splitlines()
    pairs = [json.loads(line) for line in lines if line.strip()][:limit]
    pair_path, sft_path = home / "pairs.jsonl", home / "chosen.jsonl"
    pair_path.write_text("".join(json.dumps(r) + "\n" for r in pairs))
    sft_path.write_text("".join(json.dumps({"messages": r["prompt"] + r["chosen"]}) + "\n" for r in pairs))
    return pair_path, sft_path


def steady_rows_per_s(rows: list[dict], batch_size: int) -> tuple[float, float]:
    """(rows per second, seconds per step) between the first and the last logged training step."""
    steps = [r for r in rows if "loss" in r and r.get("time") is not None]
    if len(steps) < 2:
        return 0.0, 0.0
    seconds = steps[-1]["time"] - steps[0]["time"]
    done = steps[-1]["step"] - steps[0]["step"]
    return (done * batch_size / seconds if seconds > 0 else 0.0), (seconds / done if done else 0.0)


def one_run(objective: str, dataset: Path, steps: int) -> dict:
    from core.train.spec import TrainSpec

    spec = TrainSpec(name=f"step-cost-{objective}", dataset=str(dataset), objective=objective, max_steps=steps, **HYPER)
    result = run_worker(spec)
    card, rows = result["card"], result["rows"]
    rows_per_s, step_s = steady_rows_per_s(rows, HYPER["batch_size"])
    measured, predicted = card["peak_memory_bytes"], card["predicted_memory_bytes"]
    error = (predicted - measured) / measured if measured and predicted else None
    return {"tokens_per_s": round(steady_tokens_per_s(rows), 1), "rows_per_s": round(rows_per_s, 3), "step_s": round(step_s, 2),
            "peak_memory_mb": round(measured / 1e6, 1), "estimate_mb": round(predicted / 1e6, 1) if predicted else None,
            "estimate_error_pct": round(100 * error, 1) if error is not None else None,
            "within_10pct": abs(error) <= TOLERANCE if error is not None else None, "estimate_note": card.get("predicted_memory_note"),
            "final_loss": card["final_metrics"].get("loss"), "wall_s": round(result["wall_s"], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per run (the first is the warm-up)")
    parser.add_argument("--quick", action="store_true", help="3 steps, 12 rows")
    args = parser.parse_args()
    steps = 3 if args.quick else max(3, args.steps)
    started = time.time()
    home = bench_workspace()
    pairs, chosen = write_rows(home, 12 if args.quick else None)
    results = {}
    for objective, dataset in (("sft", chosen), ("dpo", pairs)):
        results[objective] = one_run(objective, dataset, steps)
        r = results[objective]
        print(f"{objective:<4} {r['rows_per_s']:7.3f} rows/s  {r['tokens_per_s']:8.1f} tokens/s  {r['step_s']:6.2f} s/step  "
              f"peak {r['peak_memory_mb']:8.1f} MB  estimate {r['estimate_mb']} MB ({r['estimate_error_pct']:+.1f}%)", flush=True)
    sft, dpo = results["sft"], results["dpo"]
    ratio = lambda a, b: round(a / b, 3) if b else None  # noqa: E731
    figures = {
        "model": "SmolLM2-135M-Instruct (embedded)", "method": "lora", "batch_size": HYPER["batch_size"], "max_length": HYPER["max_length"],
        "steps": steps, "sft": sft, "dpo": dpo,
        "dpo_step_cost_x": ratio(dpo["step_s"], sft["step_s"]),
        "dpo_rows_per_s_vs_sft": ratio(dpo["rows_per_s"], sft["rows_per_s"]),
        "dpo_peak_memory_vs_sft": ratio(dpo["peak_memory_mb"], sft["peak_memory_mb"]),
        "dpo_estimate_vs_measured": ratio(dpo["estimate_mb"], dpo["peak_memory_mb"]),
        "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2), "bench_seconds": round(time.time() - started, 1),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
