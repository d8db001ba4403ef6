"""GRPO on the CPU demo (issue 28 item 4): the embedded SmolLM2-135M, the shipped support tickets, the rewards
"JSON valid" + "field match: urgency" (core.rewards), measured before -> after on held-out prompts, with the forgetting
report's verdict on the result and the wall time on this machine.

The walk, each run through the real worker as the Train / Evaluate pages launch them, in a temporary workspace:
1. (--sft-steps N, default 4) a short SFT run of the Train page's CPU defaults: GRPO learns from the differences
   within a group, and the base model's replies are almost never JSON (every group scores 0: no signal), so the usual
   order is SFT first, then GRPO on the rewards. 0 = GRPO straight from the base model.
2. the GRPO run (objective grpo, continuing that adapter): --steps steps of one prompt's group of --group completions
   of at most --completion tokens, beta --beta (0: no reference model), loss dapo.
3. the mean reward of sampled completions (--samples per prompt, temperature 1, the run's own settings) and of the
   greedy answer, on the first --prompts rows of assets/demo/eval.jsonl (never trained on), with the start model
   (the SFT adapter, or the base) and with the GRPO adapter, scored by the same core.rewards scorer the run used;
4. the forgetting report (an Evaluate job with its defaults) of the GRPO adapter against the base model: its verdict.

    .venv/bin/python bench/grpo_demo.py            # last line is JSON (takes long on 2 cores: see the README figures)
    .venv/bin/python bench/grpo_demo.py --quick    # tiny settings: checks the script runs end to end in a few minutes
    BENCH_KEEP=1 ...                               # keep the temporary workspace (paths are printed)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_common import ROOT, bench_workspace, run_worker  # noqa: E402

EVAL_ROWS = ROOT / "assets" / "demo" / "eval.jsonl"


def held_out_prompts(n: int) -> list[tuple[list[dict], dict]]:
    """(prompt messages, reference row) of the first n held-out tickets: the prompt is every turn before the answer."""
    rows = [json.loads(line) for line in EVAL_ROWS.read_text().splitlines() if line.strip()][:n]
    return [(r["messages"][:-1], {"reference": r["messages"][-1]["content"]}) for r in rows]


def mean_rewards(adapter: str | None, prompts: list[tuple[list[dict], dict]], scorer, *, samples: int, max_new_tokens: int,
                 temperature: float, seed: int) -> dict:
    """Mean weighted reward (and each part) of `samples` sampled completions per prompt, and of the greedy answer."""
    from core import generation
    from core.models import ModelSource, load_model

    started = time.time()
    loaded = load_model(ModelSource() if adapter is None else ModelSource().with_adapter(adapter))
    loaded.model.eval()
    ids = [generation.prompt_ids(messages, loaded.tokenizer) for messages, _ in prompts]
    figures = {}
    for label, repeat, temp in (("sampled", samples, temperature), ("greedy", 1, 0.0)):
        answers = generation.batch_answers(loaded.model, loaded.tokenizer, [p for p in ids for _ in range(repeat)],
                                           max_new_tokens=max_new_tokens, batch_size=8, temperature=temp, top_p=1.0, seed=seed)
        rows = [row for _, row in prompts for _ in range(repeat)]
        results = scorer.score_batch([a.text for a in answers], rows)
        totals = [r.total for r in results if r.total is not None]
        figures[label] = {
            "reward": round(sum(totals) / len(totals), 4) if totals else None,
            **{part: round(sum(r.parts[part] or 0.0 for r in results) / len(results), 4) for part in scorer.labels},
            "completions": len(results),
        }
    figures["seconds"] = round(time.time() - started, 1)
    return figures


def zero_std_share(rows: list[dict]) -> float | None:
    """The mean share of groups whose completions all scored the same (no advantage, nothing learned) over the run."""
    values = [r["frac_reward_zero_std"] for r in rows if r.get("frac_reward_zero_std") is not None]
    return round(sum(values) / len(values), 3) if values else None


def forgetting_report(adapter: str, quick: bool) -> dict:
    from core import runs
    from core.evaluate.spec import EvalSpec
    from core.models import ModelSource

    base = ModelSource()
    sizes = dict(task_samples=4, general_samples=4, mc_samples=8, bootstrap_samples=200) if quick else {}
    spec = EvalSpec(base=base.as_dict(), variants=[{"label": "grpo", "model": base.with_adapter(adapter).as_dict()}], **sizes)
    run_dir = runs.create_run(spec)
    runs.launch(run_dir)
    status = runs.wait(run_dir, timeout=7200)
    if status.state != "succeeded":
        raise SystemExit(f"evaluate run {run_dir} ended {status.state}: {status.error}\n{runs.log_tail(run_dir)}")
    report = runs.read_result(run_dir)
    verdict = report["verdicts"][0]
    valid = report["comparisons"]["grpo"].get("json_valid") or {}
    return {"verdict": verdict["verdict"], "headline": verdict["headline"], "json_valid_gain_points": valid.get("value"),
            "task_rows": report["task"]["n"], "report_s": round(status.finished_at - status.started_at, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="GRPO optimizer steps (one prompt's group each)")
    parser.add_argument("--sft-steps", type=int, default=4, help="SFT steps first (the Train page's CPU defaults); 0 = from the base")
    parser.add_argument("--group", type=int, default=4, help="completions per prompt (num_generations)")
    parser.add_argument("--completion", type=int, default=64, help="max_completion_length in tokens")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.0, help="KL weight (0 = no reference model)")
    parser.add_argument("--prompts", type=int, default=20, help="held-out prompts scored before and after")
    parser.add_argument("--samples", type=int, default=4, help="sampled completions per held-out prompt")
    parser.add_argument("--quick", action="store_true", help="2 SFT + 2 GRPO steps, group 2, 16 tokens, 4 prompts, a small report")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.sft_steps, args.group, args.completion, args.prompts, args.samples = 2, 2, 2, 16, 4, 2
    home = bench_workspace()
    from core.hardware import detect
    from core.train.spec import DEFAULT_REWARDS, TrainSpec, hardware_defaults

    hardware = detect()
    print(f"grpo demo: {args.steps} steps x {args.group} completions of <= {args.completion} tokens, sft {args.sft_steps} steps, "
          f"beta {args.beta:g}, lr {args.learning_rate:g} on {hardware.summary} · workspace {home}", flush=True)
    walk_started = time.time()
    start_adapter, sft = None, None
    if args.sft_steps > 0:
        # no warmup: with a handful of steps a warmup share would spend the first at learning rate 0
        sft = run_worker(replace(hardware_defaults(hardware), name="grpo-demo-sft", max_steps=args.sft_steps, eval_fraction=0.0,
                                 warmup_ratio=0.0))
        start_adapter = sft["card"]["outputs"]["adapter"]
        print(f"sft: {args.sft_steps} steps in {sft['wall_s']:.0f} s", flush=True)
    spec = TrainSpec(name="grpo-demo", objective="grpo", rewards=DEFAULT_REWARDS,
                     init_adapter=Path(start_adapter).parent.name if sft else "",
                     num_generations=args.group, batch_size=args.group, max_completion_length=args.completion,
                     max_length=256 + args.completion, beta=args.beta, temperature=1.0, learning_rate=args.learning_rate,
                     max_steps=args.steps, warmup_ratio=0.0, eval_fraction=0.0, logging_steps=1, completions_every=5, save_steps=1000)
    scorer = spec.reward_spec().build()
    prompts = held_out_prompts(args.prompts)
    settings = dict(samples=args.samples, max_new_tokens=args.completion, temperature=spec.temperature, seed=spec.seed)
    before = mean_rewards(start_adapter, prompts, scorer, **settings)
    print(f"before: sampled reward {before['sampled']['reward']} · greedy {before['greedy']['reward']} ({before['seconds']} s)",
          flush=True)
    grpo = run_worker(spec, timeout=6 * 3600)
    card, rows = grpo["card"], [r for r in grpo["rows"] if "loss" in r]
    print(f"grpo: {card['final_metrics']['global_step']} steps in {grpo['wall_s']:.0f} s (training {card['train_seconds']:.0f} s)",
          flush=True)
    after = mean_rewards(card["outputs"]["adapter"], prompts, scorer, **settings)
    print(f"after: sampled reward {after['sampled']['reward']} · greedy {after['greedy']['reward']} ({after['seconds']} s)", flush=True)
    if zero_std_share(rows) == 1.0:
        print("note: every group scored the same at every step (frac_reward_zero_std 1): GRPO had no signal and left the start "
              "adapter as it was; more SFT steps, a longer completion or a partial-credit reward give it one", flush=True)
    report = forgetting_report(card["outputs"]["adapter"], args.quick)
    print(f"forgetting report: {report['headline']}", flush=True)
    figures = {
        "quick": args.quick, "steps": card["final_metrics"]["global_step"], "group": args.group, "completion_tokens": args.completion,
        "sft_steps": args.sft_steps, "beta": args.beta, "learning_rate": args.learning_rate, "held_out_prompts": len(prompts),
        "reward_before": before["sampled"]["reward"], "reward_after": after["sampled"]["reward"],
        "greedy_reward_before": before["greedy"]["reward"], "greedy_reward_after": after["greedy"]["reward"],
        "parts_before": {k: v for k, v in before["sampled"].items() if k not in ("reward", "completions")},
        "parts_after": {k: v for k, v in after["sampled"].items() if k not in ("reward", "completions")},
        "train_reward_first": rows[0].get("reward") if rows else None, "train_reward_last": rows[-1].get("reward") if rows else None,
        "frac_reward_zero_std_mean": zero_std_share(rows),
        "grpo_wall_s": round(grpo["wall_s"], 1), "grpo_train_s": round(card["train_seconds"], 1),
        "s_per_step": round(card["train_seconds"] / max(1, card["final_metrics"]["global_step"]), 2),
        "sft_wall_s": round(sft["wall_s"], 1) if sft else 0.0, "total_s": round(time.time() - walk_started, 1),
        "peak_memory_gb": round(card["peak_memory_bytes"] / 1e9, 3),
        "predicted_memory_gb": round(card["predicted_memory_bytes"] / 1e9, 3) if card.get("predicted_memory_bytes") else None,
        "verdict": report["verdict"], "json_valid_gain_points": report["json_valid_gain_points"], "report_task_rows": report["task_rows"],
        "cores": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
