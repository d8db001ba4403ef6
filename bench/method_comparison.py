"""The seed chapter's PEFT table, measured: the method-comparison job on the embedded model and the demo tickets.

LoRA, DoRA, (IA)³, prompt tuning, prefix tuning, partial and full fine-tuning get the same rows, seed and step
budget, each through the real train worker; one evaluation scores them all (core.evaluate) and the
feature-extraction baseline predicts `urgency` from the frozen model's pooled hidden states. Prints the table,
which measured trainable shares fall inside the chapter's claims, and one JSON line.

    python bench/method_comparison.py [--steps 8] [--methods lora,ia3,...] [--task-samples 8] [--mc-samples 20]
    python bench/method_comparison.py --run RUN_DIR   # report a finished comparison run again (no training)

Sized for 2 CPU cores in at most 15 minutes (the defaults); OMP_WAIT_POLICY=PASSIVE is set for the children.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_common import bench_workspace  # noqa: E402

METHODS = "lora,dora,ia3,prompt_tuning,prefix_tuning,partial,full"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--task-samples", type=int, default=8)
    parser.add_argument("--mc-samples", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=40 * 60, help="give up waiting after this many seconds (the job goes on)")
    parser.add_argument("--run", type=Path, help="a finished method_comparison run folder to report instead of starting one")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    bench_workspace()

    from core import runs
    from core.compare.spec import MethodComparisonSpec
    from core.compare.table import CHAPTER_SHARES, chapter_check, display_rows

    if args.run:
        run_dir, status = args.run, runs.read_status(args.run)
        wall = status.finished_at - status.started_at
    else:
        spec = MethodComparisonSpec(name="bench", methods=args.methods.split(","), max_steps=args.steps, batch_size=args.batch_size,
                                    max_length=256, task_samples=args.task_samples, general_samples=8,
                                    mc_samples=args.mc_samples, max_new_tokens=40)
        run_dir = runs.create_run(spec)
        started = time.time()
        runs.launch(run_dir)
        try:
            status = runs.wait(run_dir, timeout=args.timeout)
        except TimeoutError:
            runs.stop(run_dir)  # the temporary workspace goes when this script ends: the job must not outlive it
            raise SystemExit(f"comparison still running after {args.timeout:.0f} s: stopped ({run_dir})") from None
        wall = time.time() - started
    if status.state != "succeeded":
        raise SystemExit(f"comparison ended {status.state}: {status.error}\n{runs.log_tail(run_dir)}")
    result = runs.read_result(run_dir, "method_comparison")
    rows = result["rows"]
    for row in display_rows(rows):
        print(" | ".join(f"{k}: {v}" for k, v in row.items() if k not in ("Run", "Error") and v not in (None, "")))
    print(f"base: {result['base']}")
    checks = {r["method"]: chapter_check(r["method"], r.get("trainable_share")) for r in rows if r["method"] in CHAPTER_SHARES}
    for method, verdict in checks.items():
        print(f"chapter check · {method}: measured {100 * next(r for r in rows if r['method'] == method)['trainable_share']:.4f} "
              f"% → {verdict}")
    print("chapter check · adapters (bottleneck): not measured — the `adapters` library pins transformers 4.x")
    figures = {
        "wall_s": round(wall, 1),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "steps": args.steps,
        "chapter_matches": sorted(m for m, v in checks.items() if v.startswith("matches")),
        "chapter_misses": sorted(m for m, v in checks.items() if not v.startswith("matches")),
    }
    for row in rows:
        key = row["method"]
        figures[key] = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()
                        if k in ("state", "trainable_params", "trainable_share", "artifact_bytes", "predicted_memory_bytes",
                                 "peak_memory_bytes", "tokens_per_s", "train_seconds", "task_score", "label_accuracy",
                                 "general_score", "majority_accuracy")}
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
