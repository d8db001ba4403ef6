"""Merge / prune / distill benchmark on the embedded model (SmolLM2-135M-Instruct) on this machine.

1. a fine-tuned model: a short demo LoRA through the train job (or --adapter), folded into the base;
2. merge wall time per method (base + fine-tuned), pre-flight included;
3. the base → fine-tuned linear sweep (λ = 0, .25, .5, .75, 1) scored by the forgetting report;
4. pruning at 50 % unstructured and 2:4: general-text perplexity before / after, latency, size;
5. distillation of the default student (every other layer of the teacher): parameters, wall time, scores vs the teacher.

Jobs run through the real worker, so their run folders show up on the pages afterwards.

    .venv/bin/python bench/merge_prune_distill.py [--adapter RUN/adapter] [--train-steps 30] [--eval-rows 10] [--distill-steps 30]

Runs in a temporary workspace (BENCH_KEEP=1 keeps it), never the user's. Last line: one JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
# On a shared, loaded CPU, OpenMP threads that spin while waiting make torch ~5x slower (32 greedy tokens of the
# embedded model: 15 s spinning vs 3 s passive on 2 busy cores). Workers inherit this environment.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from core import runs  # noqa: E402
from core.merge import MergeSpec  # noqa: E402
from core.merge.config import build_config, resolve_inputs  # noqa: E402
from core.merge.engine import merge_adapter_into_base, run_mergekit  # noqa: E402
from core.merge.preflight import check_merge  # noqa: E402
from core.models import ModelSource  # noqa: E402

EMBEDDED = {"kind": "embedded"}
METHOD_INPUTS = {  # (models as {source, params}, global parameters) per method, base = embedded
    "linear": (lambda ft: [{"source": EMBEDDED, "weight": 0.5}, {"source": ft, "weight": 0.5}], {}),
    "slerp": (lambda ft: [{"source": ft}], {"t": 0.5}),
    "task_arithmetic": (lambda ft: [{"source": ft, "weight": 1.0}], {"lambda": 0.5}),
    "ties": (lambda ft: [{"source": ft, "weight": 1.0, "density": 0.5}], {}),
    "dare_ties": (lambda ft: [{"source": ft, "weight": 1.0, "density": 0.5}], {}),
    "dare_linear": (lambda ft: [{"source": ft, "weight": 1.0, "density": 0.5}], {}),
}


def run_job(spec: dict, name: str) -> tuple[Path, runs.RunStatus, float]:
    run_dir = runs.create_run_from_dict(spec, name=name)
    started = time.time()
    runs.launch(run_dir)
    status = runs.wait(run_dir, timeout=4 * 3600)
    seconds = time.time() - started
    if status.state != "succeeded":
        sys.exit(f"{name} failed: {status.error}\n{runs.log_tail(run_dir)}")
    print(f"{name}: {status.state} in {seconds:.0f} s ({run_dir})", flush=True)
    return run_dir, status, seconds


def fine_tuned_adapter(args) -> Path:
    if args.adapter:
        return args.adapter
    spec = {"kind": "train", "name": f"bench-mpd-{args.train_steps}", "max_steps": args.train_steps, "learning_rate": 1e-3,
            "eval_fraction": 0.0, "max_length": 256, "batch_size": 4, "save_steps": args.train_steps}
    run_dir, _, _ = run_job(spec, "train")
    return run_dir / "adapter"


def merge_timings(ft: dict, work: Path) -> dict:
    out = {}
    for method, (models, params) in METHOD_INPUTS.items():
        spec = MergeSpec(method=method, base=EMBEDDED, models=models(ft), parameters=params, evaluate=False)
        started = time.perf_counter()
        report = check_merge(spec, work)
        preflight = time.perf_counter() - started
        assert report.ok, report.problems
        seconds = run_mergekit(build_config(spec, resolve_inputs(spec)), work / method, seed=0)
        out[method] = {"merge_s": round(seconds, 2), "preflight_s": round(preflight, 3)}
        print(f"merge {method:16s} {seconds:6.1f} s (pre-flight {preflight * 1000:.0f} ms)", flush=True)
        shutil.rmtree(work / method)
    return out


def scores(evaluation: dict | None, read: str = "", write: str = "") -> dict:
    """Task / general score (points), general perplexity, JSON validity (%) from an evaluation summary or sweep point."""
    keys = ("task_score", "general_score", "general_perplexity", "json_valid")
    return {f"{write}{k}": round(evaluation[read + k], 2) for k in keys if evaluation and evaluation.get(read + k) is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, help="a PEFT adapter of the embedded model (default: train one)")
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--eval-rows", type=int, default=10, help="task rows per evaluation (general texts 2x, MC items 5x)")
    parser.add_argument("--distill-steps", type=int, default=30)
    args = parser.parse_args()
    from _train_common import bench_workspace

    bench_workspace()
    figures: dict = {"eval_rows": args.eval_rows, "cpu_cores": os.cpu_count(), "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
                     "load_avg_start": round(os.getloadavg()[0], 1)}
    started = time.time()

    adapter = fine_tuned_adapter(args)
    work = Path(tempfile.mkdtemp(prefix="bench-mpd-"))
    try:
        tick = time.perf_counter()
        ft_dir = merge_adapter_into_base(ModelSource().with_adapter(str(adapter)), work / "fine-tuned")
        figures["adapter_fold_s"] = round(time.perf_counter() - tick, 2)
        ft = {"kind": "local", "ref": ft_dir}
        figures["merge"] = merge_timings(ft, work)

        sweep_dir, sweep_status, sweep_s = run_job({"kind": "merge", "method": "linear", "base": EMBEDDED, "eval_rows": args.eval_rows,
                                                     "models": [{"source": {**EMBEDDED, "adapter": str(adapter)}}],
                                                     "sweep": [0.0, 0.25, 0.5, 0.75, 1.0], "keep_sweep_models": False}, "sweep")
        points = json.loads((sweep_dir / "sweep.json").read_text())["points"]
        figures["sweep"] = {"wall_s": round(sweep_s, 1), "best_lambda": sweep_status.result.get("best_lambda"),
                            "points": [{"lambda": p["lambda"], **scores(p)} for p in points]}
        for p in figures["sweep"]["points"]:
            print(f"  λ={p['lambda']:<5g} task {p.get('task_score')}  general {p.get('general_score')}  ppl {p.get('general_perplexity')}")

        figures["prune"] = {}
        for mode in ("unstructured", "semi_structured_2_4"):
            run_dir, _, wall = run_job({"kind": "prune", "model": EMBEDDED, "mode": mode, "sparsity": 0.5, "eval_rows": args.eval_rows},
                                       mode)
            report = runs.read_result(run_dir)
            evaluation = report.get("evaluation") or {}
            figures["prune"][mode] = {
                "achieved_sparsity": report["achieved_sparsity"],
                "ppl_before": round(evaluation.get("reference_general_perplexity", float("nan")), 2),
                "ppl_after": round(evaluation.get("general_perplexity", float("nan")), 2),
                **scores(evaluation, "reference_", "before_"), **scores(evaluation, "", "after_"),
                "latency_before_s": round(report["latency_before"]["seconds"], 3),
                "latency_after_s": round(report["latency_after"]["seconds"], 3),
                "tokens": report["latency_after"]["new_tokens"],
                "size_before_mb": round((report["size_before_bytes"] or 0) / 1e6, 1),
                "size_after_mb": round(report["size_after_bytes"] / 1e6, 1),
                "prune_s": report["prune_seconds"], "wall_s": round(wall, 1),
                "verdict": evaluation.get("verdict", ""),
            }
            print(f"  {mode}: {json.dumps(figures['prune'][mode])}", flush=True)

        run_dir, status, wall = run_job({"kind": "distill", "teacher": EMBEDDED, "steps": args.distill_steps, "batch_size": 4,
                                         "max_length": 256, "learning_rate": 1e-4, "eval_rows": args.eval_rows}, "distill")
        result = runs.read_result(run_dir)
        evaluation = result.get("evaluation") or {}
        figures["distill"] = {
            "teacher_params_m": round(result["teacher_parameters"] / 1e6, 2),
            "student_params_m": round(result["student_parameters"] / 1e6, 2),
            "student": result["student"], "steps": result["steps_done"], "train_s": result["train_seconds"],
            "wall_s": round(wall, 1), "held_out_kl_start": result["held_out_kl_start"], "held_out_kl_end": result["held_out_kl_end"],
            **scores(evaluation, "reference_", "teacher_"), **scores(evaluation, "", "student_"),
            "verdict": evaluation.get("verdict", ""),
        }
        print(f"  distill: {json.dumps(figures['distill'])}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures["total_s"] = round(time.time() - started, 1)
    figures["load_avg_end"] = round(os.getloadavg()[0], 1)  # other processes on the machine slow every figure
    print(json.dumps(figures, ensure_ascii=False))


if __name__ == "__main__":
    main()
