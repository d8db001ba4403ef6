"""Decontamination benchmark: 100k training rows against GSM8K + HumanEval, each rule timed.

Rows: the 5,000 real Alpaca rows grown to 100,000 (bench/grow_alpaca.py), with 300 GSM8K
test questions and 30 HumanEval prompts hidden at fixed positions with light edits (a word
replaced, a framing sentence around them). Reported per rule: wall time, rows flagged,
recall on the hidden items, and flagged rows that hide nothing (false positives).

    .venv/bin/python bench/decontam.py [--rows 100000]

Last line: one JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grow_alpaca import alpaca_rows, grow  # noqa: E402

from core.data.decontam import MODES, DecontamConfig, decontaminate, load_builtin_benchmark  # noqa: E402


def light_edit(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    position = rng.randrange(len(words))
    words[position] = rng.choice(["some", "the", "many", "two"])
    return " ".join(words)


def hide(rows: list[dict], items: list[str], rng: random.Random, framing: str) -> list[int]:
    """Put lightly edited benchmark items into rows at random positions; returns the positions."""
    positions = rng.sample(range(len(rows)), len(items))
    for position, item in zip(positions, items):
        rows[position] = {"messages": [
            {"role": "user", "content": f"{framing}\n\n{light_edit(item, rng)}"},
            {"role": "assistant", "content": "Let me work through it step by step."},
        ]}
    return positions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    rng = random.Random(7)
    rows, _, _ = grow(alpaca_rows(), args.rows, seed=0)
    started = time.perf_counter()
    gsm8k, humaneval = load_builtin_benchmark("GSM8K"), load_builtin_benchmark("HumanEval")
    figures: dict = {"rows": len(rows), "load_benchmarks_s": round(time.perf_counter() - started, 3),
                     "cpu_count": os.cpu_count(), "load_average_at_start": round(os.getloadavg()[0], 2)}
    hidden = hide(rows, rng.sample(gsm8k.items, 300), rng, "Solve this problem:")
    hidden += hide(rows, rng.sample(humaneval.items, 30), rng, "Complete the function:")
    hidden_set = set(hidden)
    for mode in MODES:
        started, cpu_started = time.perf_counter(), time.process_time()
        result = decontaminate(rows, [gsm8k, humaneval], DecontamConfig(mode=mode))
        seconds = time.perf_counter() - started
        flagged = set(result.rows_to_drop)
        figures[f"{mode}_s"] = round(seconds, 2)
        figures[f"{mode}_cpu_s"] = round(time.process_time() - cpu_started, 2)
        figures[f"{mode}_flagged"] = len(flagged)
        figures[f"{mode}_recall_hidden"] = round(len(flagged & hidden_set) / len(hidden_set), 4)
        figures[f"{mode}_false_positives"] = len(flagged - hidden_set)
        rates = {r.benchmark: round(r.rate, 5) for r in result.reports}
        print(f"{MODES[mode].label}: {seconds:.2f} s, flagged {len(flagged)}, recall {figures[f'{mode}_recall_hidden']}, "
              f"false positives {len(flagged - hidden_set)}, rates {rates}")
    figures["max_mode_s"] = max(figures[f"{m}_s"] for m in MODES)
    figures["load_average_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
