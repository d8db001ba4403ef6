"""The one-click demo run: the Train page's hardware-sized defaults (a LoRA of the embedded SmolLM2-135M on
the shipped support-ticket → JSON data), launched through the worker exactly as the Start button does.

Prints the wall time, the eval loss before and after, the first and last training loss, tokens/s, peak vs
predicted memory, and (unless --no-generate) how many of 10 held-out tickets the base model and the trained
adapter answer with valid JSON holding the three required keys (greedy decoding).

    .venv/bin/python bench/demo_run.py                         # last line is JSON
    BENCH_KEEP=1 .venv/bin/python bench/demo_run.py            # keep the run folder (its adapter path is printed)
    .venv/bin/python bench/demo_run.py --check-adapter ADAPTER # only the JSON check of an existing demo adapter
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_common import bench_workspace, run_worker  # noqa: E402

KEYS = {"summary", "next_step", "urgency"}


def valid_answers(source, rows: list[dict]) -> int:
    from core.generation import GenerationSettings, generate_text
    from core.models import load_model

    loaded = load_model(source)
    good = 0
    for row in rows:
        # Chat takes the system prompt from its settings (a history's own system turns are dropped).
        system = "\n".join(m["content"] for m in row["messages"] if m["role"] == "system")
        settings = GenerationSettings(system_prompt=system, temperature=0.0, max_new_tokens=64)
        prompt = [m for m in row["messages"] if m["role"] == "user"]
        text = generate_text(loaded, prompt, settings)
        try:
            answer = json.loads(text.strip())
        except (json.JSONDecodeError, TypeError):
            continue
        good += int(isinstance(answer, dict) and KEYS <= set(answer))
    return good


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-generate", action="store_true", help="skip the JSON-validity check")
    parser.add_argument("--check-adapter", metavar="ADAPTER", help="no training: only the JSON-validity check of this demo adapter")
    args = parser.parse_args()
    if args.check_adapter:
        return check_only(args.check_adapter)
    bench_workspace()
    from core.hardware import detect
    from core.train.spec import hardware_defaults

    spec = hardware_defaults(detect())
    print(f"demo spec: {spec.method} r={spec.lora_r} lr={spec.learning_rate} batch={spec.batch_size} "
          f"max_steps={spec.max_steps} max_length={spec.max_length} on {detect().device}", flush=True)
    clicked = time.time()
    result = run_worker(spec)
    wall = time.time() - clicked
    card, rows = result["card"], result["rows"]
    losses = [r["loss"] for r in rows if "loss" in r]
    final = card["final_metrics"]
    print(f"wall time (click to done): {wall:.0f} s · training {card['train_seconds']:.0f} s · {final['global_step']} steps")
    print(f"eval loss: {final['eval_loss_start']:.3f} → {final['eval_loss']:.3f} · train loss: {losses[0]:.3f} → {losses[-1]:.3f}")
    print(f"tokens/s {card['tokens_per_s']:.0f} · peak memory {card['peak_memory_bytes'] / 1e9:.2f} GB "
          f"(predicted {card['predicted_memory_bytes'] / 1e9:.2f} GB)" if card["predicted_memory_bytes"] else "")
    figures = {
        "wall_s": round(wall, 1),
        "train_s": card["train_seconds"],
        "steps": final["global_step"],
        "eval_loss_before": round(final["eval_loss_start"], 4),
        "eval_loss_after": round(final["eval_loss"], 4),
        "train_loss_first": round(losses[0], 4),
        "train_loss_last": round(losses[-1], 4),
        "tokens_per_s": card["tokens_per_s"],
        "peak_memory_gb": round(card["peak_memory_bytes"] / 1e9, 3),
        "predicted_memory_gb": round(card["predicted_memory_bytes"] / 1e9, 3) if card["predicted_memory_bytes"] else None,
        "adapter": card["outputs"]["adapter"],  # kept when BENCH_KEEP=1, e.g. for bench/evaluate.py --adapter
    }
    if not args.no_generate:
        figures.update(json_validity(spec.model_source, card["outputs"]["adapter"]))
    print(json.dumps(figures))
    return 0


def json_validity(base, adapter: str) -> dict:
    from core.data.formats import demo_dataset_path, load_dataset_file

    held_out = load_dataset_file(demo_dataset_path("eval")).rows[:10]
    figures = {"valid_json_base": valid_answers(base, held_out), "valid_json_trained": valid_answers(base.with_adapter(adapter), held_out)}
    print(f"valid JSON answers on 10 held-out tickets: base {figures['valid_json_base']} → trained {figures['valid_json_trained']}")
    return figures


def check_only(adapter: str) -> int:
    from core.models import ModelSource

    print(json.dumps(json_validity(ModelSource(), adapter)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
