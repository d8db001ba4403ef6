"""Rows/s to load, detect, normalise and validate 100k JSONL rows (generated in a temp folder).

Usage: python bench/load.py [--rows 100000]
Prints the figures; the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_rows(path: Path, n: int) -> None:
    """Chat rows with a system prompt, one malformed row in a thousand."""
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            if i % 1000 == 999:
                handle.write('{"messages": [{"role": "user", "content": "unanswered"}]}\n')
                continue
            row = {"messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"What is {i} plus {i + 1}? Explain briefly."},
                {"role": "assistant", "content": f"{i} plus {i + 1} is {2 * i + 1}, because adding one more than a number to it doubles it "
                                                 "and adds one."},
            ]}
            handle.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    from core.data.formats import load_dataset_file

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.jsonl"
        write_rows(path, args.rows)
        size = path.stat().st_size
        tracemalloc.start()
        start = time.perf_counter()
        loaded = load_dataset_file(path)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        start = time.perf_counter()
        load_dataset_file(path)
        untraced = time.perf_counter() - start
    figures = {
        "rows": loaded.report.n_read,
        "valid": loaded.report.n_valid,
        "invalid": loaded.report.n_invalid,
        "rows_per_s": round(loaded.report.n_read / untraced),
        "mb_per_s": round(size / untraced / 1e6, 1),
        "file_mb": round(size / 1e6, 1),
        "peak_python_mb": round(peak / 1e6, 1),
        "seconds": round(untraced, 2),
        "seconds_traced": round(elapsed, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(f"loaded and validated {figures['rows']} rows ({figures['file_mb']} MB) in {figures['seconds']} s: {figures['rows_per_s']} "
          f"rows/s; {loaded.report.summary()}")
    print(f"peak Python memory while loading: {figures['peak_python_mb']} MB (the kept rows themselves included)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
