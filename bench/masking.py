"""Rows/s to encode and mask the 5,000 Alpaca rows with the embedded tokenizer (ChatML), batched.

Usage: python bench/masking.py [--repeat 3]   (needs ../shared/data/alpaca_5000.json)
Prints the figures; the last line is one JSON object.
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
ALPACA = ROOT.parent / "shared" / "data" / "alpaca_5000.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    from core.data.formats import load_dataset_file
    from core.data.masking import encode_conversations
    from core.models import ModelSource, embedded_model_dir, load_tokenizer

    tokenizer = load_tokenizer(ModelSource("local", str(embedded_model_dir())))
    rows = [r["messages"] for r in load_dataset_file(ALPACA).rows]
    encode_conversations(rows[:200], tokenizer)  # warm-up: template compile, caches
    timings, cpu = [], []
    for _ in range(args.repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        encoded = []
        for i in range(0, len(rows), args.batch):
            encoded += encode_conversations(rows[i:i + args.batch], tokenizer)
        timings.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    best = min(timings)
    tokens = sum(r.n_tokens for r in encoded)
    figures = {
        "rows": len(rows),
        "rows_per_s": round(len(rows) / best),
        "tokens_per_s": round(tokens / best),
        "mean_tokens_per_row": round(tokens / len(rows), 1),
        "trained_share": round(sum(r.n_trained for r in encoded) / tokens, 3),
        # CPU seconds of this process (all threads): the rate on an otherwise idle machine is bounded by
        # cores * rows_per_cpu_s; wall rows/s drops when other processes share the cores (see load_avg_1m).
        "rows_per_cpu_s": round(len(rows) / min(cpu)),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(f"encoded + masked {len(rows)} rows in {best:.2f} s (best of {args.repeat}): {figures['rows_per_s']} rows/s, "
          f"{figures['tokens_per_s']} tokens/s; {figures['rows_per_cpu_s']} rows per CPU-second (load average {figures['load_avg_1m']} on "
          f"{figures['cpu_count']} cores)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
