"""SFT -> DPO on a laptop CPU (issue 27, item 5): the Train page's one-click recipe on the embedded SmolLM2-135M with
the shipped demo pairs, measured on held-out data.

Runs the recipe as the button does (core.train.recipes.launch_sft_dpo: both workers start at once, the DPO worker
waits for the SFT run), in a temporary workspace; then, for each extra --sft-weights value, one more DPO run from
the same SFT adapter. Prints:
- the DPO run's wall time (started -> finished, the wait for the SFT run excluded) and seconds per step;
- held-out pair accuracy on assets/demo/pairs_eval.jsonl (60 pairs): plain log-prob preference of chosen over
  rejected (core.evaluate.pairs), for the base model, the SFT adapter (before) and each DPO adapter (after), with the
  mean log-probability of the chosen answers (the drift that sft_weight guards against) and the accuracy per
  rejected kind; and DPO's implicit-reward accuracy against the SFT start;
- field accuracy (`urgency`, and the others) and JSON validity on the rows of assets/demo/eval.jsonl, and the general
  multiple-choice score (acc_norm), base vs SFT vs DPO, with the forgetting report's own functions (generation,
  core.evaluate.task.score_answer, core.evaluate.scoring) in this process: the "before" models are scored while the
  DPO run trains (no job, so no exclusive lock to wait for; the DPO wall time then shares the CPU with that scoring).

    .venv/bin/python bench/preference_demo.py                       # last line is JSON
    .venv/bin/python bench/preference_demo.py --sft-weights 0.2,0   # the recipe's weight, then pure DPO from the same SFT
    .venv/bin/python bench/preference_demo.py --quick               # 2 + 2 steps, 12 pairs / rows: checks the script runs
    BENCH_KEEP=1 ... then --reuse <workspace>                       # measure runs that went on after this script was stopped
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_common import ROOT, bench_workspace  # noqa: E402


def wait_ok(run_dir: Path):
    from core import runs

    status = runs.wait(run_dir, timeout=7200)
    if status.state != "succeeded":
        raise SystemExit(f"run {run_dir} ended {status.state}: {status.error}\n{runs.log_tail(run_dir)}")
    return status


def dpo_figures(run_dir: Path) -> dict:
    from core import runs

    status = wait_ok(run_dir)
    card = runs.read_result(run_dir)
    rows = [r for r in runs.read_all_metrics(run_dir / runs.METRICS_FILE) if "loss" in r and "rewards/margins" in r]
    last = rows[-1] if rows else {}
    steps = card["final_metrics"]["global_step"]
    return {
        "run_dir": run_dir, "adapter": card["outputs"]["adapter"], "steps": steps,
        "wall_s": round(status.finished_at - status.started_at, 1), "train_s": round(card["train_seconds"], 1),
        "s_per_step": round(card["train_seconds"] / max(1, steps), 2),
        "last_train_row": {k: round(last[k], 4) for k in ("loss", "rewards/chosen", "rewards/rejected",
                                                          "rewards/margins", "rewards/accuracies",
                                                         "logps/chosen", "logps/rejected") if isinstance(last.get(k), (int, float))},
    }


def score_model(adapter: str | None, pairs: list[dict], task, general) -> dict:
    """One model (the embedded base, plus `adapter`) scored in this process by the forgetting report's own functions:
    pair log-probs (core.evaluate.pairs), greedy answers to the task rows scored per field (core.evaluate.task), and the
    general multiple choice (core.evaluate.scoring). No job, so it needs no exclusive lock: it runs beside a training run."""
    from core import generation
    from core.evaluate import scoring
    from core.evaluate.pairs import pair_logprobs
    from core.evaluate.task import score_answer
    from core.models import ModelSource, load_model
    from core.scorers import choice_accuracy

    started = time.time()
    loaded = load_model(ModelSource() if adapter is None else ModelSource().with_adapter(adapter))
    model, tokenizer = loaded.model, loaded.tokenizer
    model.eval()
    logps = pair_logprobs(model, tokenizer, pairs, max_length=512)
    prompts = [generation.prompt_ids(ex.prompt, tokenizer) for ex in task.examples]
    answers = generation.greedy_answers(model, tokenizer, prompts, max_new_tokens=48, batch_size=8)
    rows = [score_answer(answer, ex.reference, task) for answer, ex in zip(answers, task.examples)]
    logliks = scoring.choice_logliks(model, tokenizer, general.mc_items, batch_size=8)
    mc = [choice_accuracy(values, item["choices"], int(item["gold"]))[1] for item, values in zip(general.mc_items, logliks)]
    pct = lambda values: round(100 * sum(values) / len(values), 1) if values else None  # noqa: E731
    return {
        "logps": logps, "seconds": round(time.time() - started, 1),
        "task": {"urgency_acc_pct": pct([r.get("field:urgency", 0.0) for r in rows]),
                 "next_step_acc_pct": pct([r.get("field:next_step", 0.0) for r in rows]),
                 "summary_acc_pct": pct([r.get("field:summary", 0.0) for r in rows]),
                 "json_valid_pct": pct([r.get("json_valid", 0.0) for r in rows]),
                 "general_mc_acc_norm_pct": pct(mc)},
    }


def pair_summary(scores, pairs: list[dict], reference=None) -> dict:
    from core.evaluate.pairs import pair_accuracy, pair_outcomes

    by_kind = defaultdict(list)
    for pair, outcome in zip(pairs, pair_outcomes(scores)):
        by_kind[pair.get("rejected_kind", "?")].append(outcome)
    summary = {
        "pair_acc_pct": round(100 * pair_accuracy(scores), 1),
        "pair_acc_per_token_pct": round(100 * pair_accuracy(scores, length_normalised=True), 1),
        "chosen_logp_mean": round(sum(s.chosen for s in scores) / len(scores), 2),
        "rejected_logp_mean": round(sum(s.rejected for s in scores) / len(scores), 2),
        "by_kind_pct": {k: round(100 * sum(v) / len(v), 1) for k, v in sorted(by_kind.items())},
    }
    if reference is not None:
        summary["implicit_reward_acc_pct"] = round(100 * pair_accuracy(scores, reference), 1)
    return summary


def kept_runs() -> tuple[Path, Path, list[float]]:
    """The demo-sft run of the workspace and its first demo-dpo run (with its sft_weight), for --reuse."""
    from core import runs

    train = sorted(runs.list_runs("train"), key=lambda r: r.status.created_at)
    sft = [r for r in train if r.name == "demo-sft" and r.status.state != "stopped"]
    dpo = [r for r in train if r.name == "demo-dpo" and r.status.state != "stopped"]
    if not sft or not dpo:
        raise SystemExit(f"--reuse: no demo-sft and demo-dpo runs in {os.environ['WORKBENCH_HOME']}")
    return sft[-1].path, dpo[-1].path, [float(dpo[-1].spec.get("sft_weight", 0.0))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft-weights", default="", help="comma list: the recipe's DPO run uses the first, each other one more DPO run "
                                                          "from the same SFT adapter (default: the recipe's weight only)")
    parser.add_argument("--dpo-steps", type=int, help="override the recipe's DPO max_steps")
    parser.add_argument("--dpo-lr", type=float, help="override the recipe's DPO learning rate")
    parser.add_argument("--mc-samples", type=int, default=60, help="general multiple-choice items (of 600; 60 is the Evaluate "
                                                                   "page default)")
    parser.add_argument("--no-eval-loss", action="store_true", help="eval_fraction 0 for both runs (no held-out loss before / after each)")
    parser.add_argument("--pairs", type=int, default=0, help="held-out pairs scored (a seeded sample of the 60; 0 = all)")
    parser.add_argument("--task-rows", type=int, default=0, help="eval.jsonl rows answered (a seeded sample of the 60; 0 = all)")
    parser.add_argument("--skip-base", action="store_true", help="do not score the base model (only SFT before, DPO after)")
    parser.add_argument("--quick", action="store_true", help="2 SFT + 2 DPO steps, 12 held-out pairs and task rows: checks the script runs")
    parser.add_argument("--reuse", type=Path, help="a workspace an earlier run kept (BENCH_KEEP=1): wait for its demo-sft / demo-dpo runs "
                                                   "(they go on without this script) and measure them, launching nothing")
    args = parser.parse_args()
    if args.reuse:
        os.environ["WORKBENCH_HOME"] = str(args.reuse)
        home = args.reuse
    else:
        home = bench_workspace()
    from core import runs
    from core.data.formats import demo_dataset_path
    from core.evaluate.general import load_general_sets
    from core.evaluate.pairs import load_pairs
    from core.evaluate.task import load_task
    from core.hardware import detect
    from core.runs import create_run, launch
    from core.train.recipes import DEMO_PAIRS_EVAL, DEMO_SFT_WEIGHT, demo_sft_dpo_specs, launch_sft_dpo
    from core.train.spec import TrainSpec

    hardware = detect()
    weights = [float(w) for w in args.sft_weights.split(",") if w.strip()] or [DEMO_SFT_WEIGHT]
    dpo_changes = {k: v for k, v in (("max_steps", args.dpo_steps), ("learning_rate", args.dpo_lr)) if v is not None}
    sft_changes = {"eval_fraction": 0.0} if args.no_eval_loss else {}
    if args.no_eval_loss:
        dpo_changes["eval_fraction"] = 0.0
    if args.quick:
        sft_changes, dpo_changes = {"max_steps": 2, "eval_fraction": 0.0}, {**dpo_changes, "max_steps": 2, "eval_fraction": 0.0}
    sft, dpo = demo_sft_dpo_specs({"kind": "embedded"}, hardware, sft_changes=sft_changes,
                                  dpo_changes={**dpo_changes, "sft_weight": weights[0]})
    print(f"SFT: {sft.method} r={sft.lora_r} lr={sft.learning_rate:g} batch={sft.batch_size} steps={sft.max_steps}; DPO: "
          f"beta={dpo['beta']} lr={dpo['learning_rate']:g} batch={dpo['batch_size']} steps={dpo['max_steps']} sft_weight={weights} · "
          f"{hardware.summary} · workspace {home}", flush=True)
    if args.reuse:
        sft_dir, dpo_dir, weights = kept_runs()
        clicked = runs.read_status(sft_dir).created_at
    else:
        clicked = time.time()
        sft_dir, dpo_dir = launch_sft_dpo(sft, dpo)
    sft_status = wait_ok(sft_dir)
    n_pairs, n_rows, n_mc = (12, 12, 12) if args.quick else (args.pairs, args.task_rows, args.mc_samples)
    pairs = load_pairs(ROOT / DEMO_PAIRS_EVAL, samples=n_pairs, seed=0)
    task, general = load_task(demo_dataset_path("eval"), n_rows, 0), load_general_sets(0, n_mc, 0)
    # The "before" models are scored while the DPO run trains (its wall time then shares the CPU with this scoring).
    scored = {label: score_model(adapter, pairs, task, general)
              for label, adapter in ((() if args.skip_base else (("base", None),)) + (("sft", str(sft_dir / "adapter")),))}
    print("before: " + " · ".join(f"{k} pairs {pair_summary(v['logps'], pairs)['pair_acc_pct']}% urgency {v['task']['urgency_acc_pct']}% "
                                  f"({v['seconds']} s)" for k, v in scored.items()), flush=True)
    runs_by_weight = {weights[0]: dpo_figures(dpo_dir)}
    dpo = runs.read_spec_dict(dpo_dir)
    recipe_s = round(runs.read_status(dpo_dir).finished_at - clicked, 1)
    print(f"recipe: SFT {sft_status.finished_at - sft_status.started_at:.0f} s, DPO {runs_by_weight[weights[0]]['wall_s']} s "
          f"(click -> DPO done {recipe_s} s)", flush=True)
    for weight in [] if args.reuse else weights[1:]:
        extra = create_run(TrainSpec.from_dict({**dpo, "sft_weight": weight, "init_adapter": sft_dir.name,
                                                "name": f"demo-dpo-w{weight:g}"}))
        launch(extra)
        runs_by_weight[weight] = dpo_figures(extra)
        print(f"DPO sft_weight {weight:g}: {runs_by_weight[weight]['wall_s']} s", flush=True)
    for weight, run in runs_by_weight.items():
        scored[f"dpo_w{weight:g}"] = score_model(run["adapter"], pairs, task, general)
    out = {label: {**pair_summary(v["logps"], pairs, reference=scored["sft"]["logps"] if label.startswith("dpo") else None), **v["task"],
                   "scoring_s": v["seconds"]} for label, v in scored.items()}
    first, before = out[f"dpo_w{weights[0]:g}"], out["sft"]
    print("after: " + " · ".join(f"{k} pairs {v['pair_acc_pct']}% urgency {v['urgency_acc_pct']}%" for k, v in out.items()), flush=True)
    pick = lambda key: {**({"base": out["base"][key]} if "base" in out else {}),  # noqa: E731
                        "before_sft": before[key], "after_dpo": first[key]}
    figures = {
        "dpo_wall_s": runs_by_weight[weights[0]]["wall_s"], "dpo_steps": runs_by_weight[weights[0]]["steps"],
        "dpo_s_per_step": runs_by_weight[weights[0]]["s_per_step"], "sft_wall_s": round(sft_status.finished_at - sft_status.started_at, 1),
        "click_to_dpo_done_s": recipe_s, "sft_weight": weights[0], "dpo_batch": dpo["batch_size"], "dpo_lr": dpo["learning_rate"],
        "beta": dpo["beta"], "eval_loss_off": float(dpo.get("eval_fraction", 0)) == 0.0,
        "eval_pairs": len(pairs), "task_rows": len(task.examples), "mc_items": len(general.mc_items),
        "pair_acc_pct": pick("pair_acc_pct"), "implicit_reward_acc_pct": first["implicit_reward_acc_pct"],
        "chosen_logp_mean": pick("chosen_logp_mean"), "rejected_logp_mean": pick("rejected_logp_mean"),
        "urgency_acc_pct": pick("urgency_acc_pct"), "json_valid_pct": pick("json_valid_pct"),
        "general_mc_acc_norm_pct": pick("general_mc_acc_norm_pct"), "pair_acc_by_kind_pct": pick("by_kind_pct"),
        "by_weight": {f"{w:g}": {"dpo_wall_s": r["wall_s"], "last_train_row": r["last_train_row"], **out[f"dpo_w{w:g}"]}
                      for w, r in runs_by_weight.items()},
        "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2), "quick": args.quick,
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
