"""Distillation variants on the embedded model (SmolLM2-135M-Instruct) and the demo support tickets.

1. the teacher: a demo LoRA through the train job (or --adapter RUN/adapter);
2. one `distill_compare` job through the real worker: the half-depth student (every other layer of the teacher)
   made three ways — sequence-level (teacher answers + the Train job), logit, on-policy (GKD) — at a matched budget,
   and the replay shares (--replay) for the variants in --replay-variants; all scored by the forgetting report;
3. the table, and whether each replay student keeps the general score within 3 points of the teacher while keeping
   the task gain of the same variant without replay.

    .venv/bin/python bench/distill_variants.py [--adapter RUN/adapter] [--teacher-steps 20] [--steps 20] [--eval-rows 16]
                                               [--learning-rate 5e-4] [--max-new-tokens 32]
                                               [--replay 0.1 0.25] [--replay-variants sequence] [--budget-minutes 20]

The defaults are the measured run of the README (one piece, about 16 minutes on 2 cores): at the spec's lr 1e-4 no
half-depth student moves on the task in 20 steps, at 1e-3 none does either (and GKD's perplexity diverges); 5e-4 is the
one where sequence-level gains.

On a shared machine, run it in pieces: each call works at most --budget-minutes, then stops the job cleanly (the
student in progress is saved); the same command continues where it stopped (--work keeps the state, default
bench/.distill_variants/). Wall times are summed over the pieces. Last line: one JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads are ~5x slower on a loaded CPU

from core import runs  # noqa: E402


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, help="a trained demo adapter to use as the teacher (skips step 1)")
    parser.add_argument("--teacher-steps", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per student (the matched budget)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--eval-rows", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=5e-4, help="peak learning rate of every student")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="on-policy: longest student answer per step")
    parser.add_argument("--replay", type=float, nargs="*", default=[0.1, 0.25])
    parser.add_argument("--replay-variants", nargs="*", default=["sequence"])
    parser.add_argument("--budget-minutes", type=float, default=20.0, help="stop this piece after this long (continue later)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / ".distill_variants")
    return parser.parse_args()


def workspace(work: Path) -> dict:
    """A WORKBENCH_HOME kept between pieces (its models/ is the usual converted-model cache) and the bench's state."""
    from core.workspace import models_dir

    cache = models_dir()
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "models").exists():
        (home / "models").symlink_to(cache, target_is_directory=True)
    os.environ["WORKBENCH_HOME"] = str(home)
    state_file = work / "state.json"
    return json.loads(state_file.read_text()) if state_file.is_file() else {}


def save(work: Path, state: dict) -> None:
    (work / "state.json").write_text(json.dumps(state, indent=2))


def follow(run_dir: Path, deadline: float) -> runs.RunStatus:
    """Wait for the run; at the deadline ask it to stop (it saves what it has) and wait for that."""
    while True:
        status = runs.read_status(run_dir)
        if status.is_final:
            return status
        if time.time() > deadline:
            print(f"budget for this piece used up: stopping {run_dir.name} (run the same command to continue)", flush=True)
            runs.stop(run_dir)
            return runs.wait(run_dir, timeout=900)
        print(f"  {status.progress:5.0%} {status.message}", flush=True)
        time.sleep(20)


def teacher_adapter(args, state: dict, work: Path, deadline: float) -> str | None:
    if args.adapter:
        return str(args.adapter)
    if state.get("adapter"):
        return state["adapter"]
    run_dir = Path(state["teacher_run"]) if state.get("teacher_run") else None
    if run_dir is None:
        spec = {"kind": "train", "name": "bench-distill-teacher", "max_steps": args.teacher_steps, "learning_rate": 1e-3,
                "eval_fraction": 0.0, "max_length": 256, "batch_size": 4, "save_steps": args.teacher_steps}
        run_dir = runs.create_run_from_dict(spec)
        state["teacher_run"] = str(run_dir)
        save(work, state)
    if not runs.read_status(run_dir).is_active:
        runs.launch(run_dir)
    started = time.time()
    status = follow(run_dir, deadline)
    state["teacher_train_s"] = round(state.get("teacher_train_s", 0.0) + time.time() - started, 1)
    if status.state != "succeeded":
        save(work, state)
        return None
    state["adapter"] = str(run_dir / "adapter")
    save(work, state)
    return state["adapter"]


def comparison(args, state: dict, work: Path, adapter: str, deadline: float) -> dict | None:
    run_dir = Path(state["compare_run"]) if state.get("compare_run") else None
    if run_dir is None:
        spec = {"kind": "distill_compare", "name": "bench", "teacher": {"kind": "embedded", "adapter": adapter},
                "variants": ["sequence", "logit", "on_policy"], "replay_fractions": [0.0, *args.replay],
                "replay_variants": args.replay_variants, "steps": args.steps, "batch_size": args.batch_size,
                "max_rows": args.steps * args.batch_size, "eval_rows": args.eval_rows,  # every training row seen once
                "learning_rate": args.learning_rate, "max_new_tokens": args.max_new_tokens}
        run_dir = runs.create_run_from_dict(spec)
        state["compare_run"] = str(run_dir)
        save(work, state)
    if not (run_dir / "result.json").is_file():
        if not runs.read_status(run_dir).is_active:
            runs.launch(run_dir)
        follow(run_dir, deadline)
    if not (run_dir / "result.json").is_file():
        status = runs.read_status(run_dir)
        if status.state == "failed":
            sys.exit(f"comparison failed: {status.error}\n{runs.log_tail(run_dir)}")
        return None
    return json.loads((run_dir / "result.json").read_text())


def main() -> None:
    args = arguments()
    args.work.mkdir(parents=True, exist_ok=True)
    state = workspace(args.work)
    deadline = time.time() + 60 * args.budget_minutes
    adapter = teacher_adapter(args, state, args.work, deadline)
    result = comparison(args, state, args.work, adapter, deadline) if adapter else None
    if result is None:
        print(json.dumps({"done": False, "note": "stopped at the piece budget: run the same command to continue"}))
        return
    from core.distill.compare import replay_summary, table_markdown

    result["replay"] = replay_summary(result["table"])  # the verdict's current rule, also for a result made earlier
    print(table_markdown(result))
    table = {r["student"]: r for r in result["table"]}
    figures = {
        "teacher": {k: table["teacher"][k] for k in ("task_score", "general_score", "general_perplexity")},
        "students": {name: {k: r[k] for k in ("task_score", "general_score", "general_perplexity", "agreement",
                                               "agreement_rouge_l", "task_gain", "general_vs_teacher", "wall_s")}
                     for name, r in table.items() if name != "teacher"},
        "replay": result["replay"],
        "teacher_train_s": state.get("teacher_train_s"),
        "comparison_s": result["wall_seconds"],
        "total_s": round((state.get("teacher_train_s") or 0.0) + result["wall_seconds"], 1),
        "budget": result["budget"],
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
