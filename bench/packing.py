"""Seconds to pack N row lengths (default 1M) into max_length sequences with the project's packing
(core.data.masking.pack_bins, best-fit decreasing), and the fill it reaches; also the full pack_features on 100k
rows of real token lists. Lengths are drawn from a log-normal like chat SFT data (median ~300 tokens).

Usage: python bench/packing.py [--rows 1000000] [--max-length 2048] [--seed 0]
Prints the figures; the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from core.data.masking import pack_bins, packing_preview
    from core.train.data import pack_features

    rng = random.Random(args.seed)
    lengths = [max(1, min(int(rng.lognormvariate(5.7, 0.8)), 2 * args.max_length)) for _ in range(args.rows)]
    started = time.perf_counter()
    bins = pack_bins(lengths, args.max_length)
    pack_s = time.perf_counter() - started
    started = time.perf_counter()
    preview = packing_preview(lengths, args.max_length)
    preview_s = time.perf_counter() - started
    assert preview.n_sequences == len(bins)
    features_rows = min(args.rows, 100_000)
    features = [{"input_ids": [1] * n, "labels": [1] * n} for n in lengths[:features_rows]]
    started = time.perf_counter()
    packed = pack_features(features, args.max_length)
    features_s = time.perf_counter() - started
    print(f"{args.rows:,} lengths -> {len(bins):,} sequences of {args.max_length} in {pack_s:.2f} s "
          f"(preview {preview_s:.2f} s, fill {preview.fill:.3f}); pack_features on {features_rows:,} rows: {features_s:.2f} s, "
          f"{len(packed):,} sequences")
    print(json.dumps({"rows": args.rows, "max_length": args.max_length, "pack_s": round(pack_s, 2), "preview_s": round(preview_s, 2),
                      "sequences": len(bins), "fill": round(preview.fill, 4), "pack_features_rows": features_rows,
                      "pack_features_s": round(features_s, 2)}))


if __name__ == "__main__":
    main()
