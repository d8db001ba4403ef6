"""The time estimate's error (core.runs.eta) on three real jobs of the embedded model, run through the worker as the UI
runs them: a Decide baseline, an answer-loss scoring and a LoRA training run.

For each kind two smaller jobs are run first (they are this machine's measurements, as finished runs in the
workspace are for the app); then the estimate for a larger job is taken exactly as the page takes it
(core.runs.eta.estimate over list_runs()), the job is run, and the prediction is compared with its measured
duration (status.json run_seconds). The load average at each start is printed: the machine may be shared.

    .venv/bin/python bench/eta_error.py                    # last line is JSON
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_common import ROOT, bench_workspace  # noqa: E402


def run(kind: str, spec: dict) -> float:
    from core import runs

    run_dir = runs.create_run_from_dict({"kind": kind, **spec})
    runs.launch(run_dir)
    status = runs.wait(run_dir, timeout=1800)
    if status.state != "succeeded":
        raise SystemExit(f"{kind} run {run_dir} ended {status.state}: {status.error}\n{runs.log_tail(run_dir)}")
    return float(status.run_seconds)


def measure(kind: str, sizes: list[dict], target: dict, rows: int | None = None) -> dict:
    """Run `sizes` (the measurements), predict `target` as the page would, run it, and compare."""
    from core.runs import list_runs
    from core.runs.eta import estimate

    for spec in sizes:
        seconds = run(kind, spec)
        print(f"{kind}: measured {seconds:.1f} s for {json.dumps({k: v for k, v in spec.items() if k != 'model'})}", flush=True)
    found = estimate(kind, target, list_runs(), rows)
    load = os.getloadavg()[0]
    actual = run(kind, target)
    error = (found.seconds - actual) / actual
    print(f"{kind}: predicted {found.seconds:.1f} s, took {actual:.1f} s ({error:+.1%}; load {load:.1f} at start) — {found.text}",
          flush=True)
    return {"predicted_s": round(found.seconds, 1), "actual_s": round(actual, 1), "error": round(error, 3), "load": round(load, 1)}


def main() -> None:
    bench_workspace()
    from core.data.formats import load_dataset_file

    model = {"kind": "embedded"}
    results = {}
    baseline = {"model": model, "eval_dataset": "assets/demo/eval.jsonl", "shots": [0], "max_new_tokens": 24, "scorer": "auto"}
    results["baseline"] = measure("baseline", [{**baseline, "n": 2}, {**baseline, "n": 4}], {**baseline, "n": 8})

    rows = [json.loads(line) for line in (ROOT / "assets" / "demo" / "train.jsonl").read_text().splitlines() if line.strip()]
    folder = Path(tempfile.mkdtemp(prefix="eta-rows-"))
    specs = []
    for n in (16, 32, 96):
        path = folder / f"rows{n}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
        loaded = load_dataset_file(str(path))
        specs.append(({"model": model, "dataset": str(path), "dataset_sha256": loaded.source_hash}, len(loaded)))
    from core import runs  # answer_loss's size is its rows: the finished runs carry it in their result

    for spec, _ in specs[:2]:
        print(f"answer_loss: measured {run('answer_loss', spec):.1f} s for {Path(spec['dataset']).name}", flush=True)
    from core.runs.eta import estimate

    target, n_rows = specs[2]
    found = estimate("answer_loss", target, runs.list_runs(), rows=n_rows)
    load = os.getloadavg()[0]
    actual = run("answer_loss", target)
    results["answer_loss"] = {"predicted_s": round(found.seconds, 1), "actual_s": round(actual, 1),
                              "error": round((found.seconds - actual) / actual, 3), "load": round(load, 1)}
    print(f"answer_loss: predicted {found.seconds:.1f} s, took {actual:.1f} s — {found.text}", flush=True)

    train = {"model": model, "method": "lora", "batch_size": 2, "max_length": 128, "lora_r": 8, "eval_fraction": 0.0,
             "save_steps": 1000, "logging_steps": 1}
    results["train"] = measure("train", [{**train, "max_steps": 2}, {**train, "max_steps": 4}], {**train, "max_steps": 10})
    errors = [abs(r["error"]) for r in results.values()]
    print(json.dumps({**{f"{k}_{m}": v[m] for k, v in results.items() for m in ("predicted_s", "actual_s", "error")},
                      "mean_abs_error": round(sum(errors) / len(errors), 3), "cores": os.cpu_count(),
                      "finished_at": time.strftime("%H:%M:%S")}))


if __name__ == "__main__":
    main()
