"""De-duplication benchmark: MinHash signature speed, near-duplicate recall/precision, semantic time.

Data: the 5,000 real Alpaca rows grown to 100,000 with perturbed copies (bench/grow_alpaca.py,
deterministic; the real 5-gram Jaccard of every injected pair is measured and reported), and
"planted" 1-4-word edits of every real row (one copy each, real Jaccard spread across the
threshold): recall among copies whose real Jaccard >= threshold and precision, verified on the
exact shingle sets (the default) and on the MinHash estimate (the old way), with their rows/s.

    .venv/bin/python bench/dedup.py [--rows 100000] [--workers 2] [--semantic-rows 5000]

Last line: one JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grow_alpaca import alpaca_rows, grow, plant_edits  # noqa: E402

from core.data.dedup import (  # noqa: E402
    NearDedupConfig,
    SemanticDedupConfig,
    find_near_duplicates,
    find_semantic_duplicates,
    minhash_signatures,
)
from core.data.text import row_texts  # noqa: E402


def cluster_labels(n: int, result) -> np.ndarray:
    labels = np.arange(n)  # a row outside every cluster is its own label
    for k, cluster in enumerate(result.clusters):
        labels[cluster.members] = n + k
    return labels


def score(rows, origin, similarity, result, threshold: float) -> dict:
    """Recall on injected pairs (copy in its original's cluster), precision and false clusters."""
    origin = np.asarray(origin)
    similarity = np.asarray(similarity)
    labels = cluster_labels(len(rows), result)
    copies = np.flatnonzero(origin != np.arange(len(rows)))
    together = labels[copies] == labels[origin[copies]]
    near = similarity[copies] >= threshold
    false_clusters = sum(len({int(origin[m]) for m in c.members}) > 1 for c in result.clusters)
    member_pairs = [(m, c.representative) for c in result.clusters for m in c.dropped]
    right = int(sum(origin[m] == origin[r] for m, r in member_pairs))
    return {
        "injected_pairs": int(len(copies)),
        "injected_pairs_jaccard_ge_threshold": int(near.sum()),
        "recall": round(float(together[near].mean()), 5) if near.any() else None,
        "recall_all_injected": round(float(together.mean()), 5),
        "found_below_threshold": int(together[~near].sum()),
        "precision": round(float(right / len(member_pairs)), 5) if member_pairs else None,
        "clusters": len(result.clusters),
        "false_clusters": int(false_clusters),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--num-perm", type=int, default=256)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--semantic-rows", type=int, default=5000)
    args = parser.parse_args()
    figures: dict = {"cpu_count": os.cpu_count(), "load_average_at_start": round(os.getloadavg()[0], 2)}

    base = alpaca_rows()
    started = time.perf_counter()
    rows, origin, similarity = grow(base, args.rows, seed=0)
    sims = np.asarray(similarity[len(base):])
    figures |= {
        "rows": len(rows),
        "generate_s": round(time.perf_counter() - started, 2),
        "injected_jaccard_mean": round(float(sims.mean()), 4),
        "injected_jaccard_p5": round(float(np.percentile(sims, 5)), 4),
        "injected_jaccard_min": round(float(sims.min()), 4),
        "injected_below_0.8": round(float((sims < 0.8).mean()), 5),
    }
    print(f"{len(rows):,} rows; injected pairs' real Jaccard mean {sims.mean():.3f}, p5 {np.percentile(sims, 5):.3f}")

    texts = row_texts(rows, "both")
    for workers in sorted({1, args.workers}):
        started = time.perf_counter()
        cpu_started = time.process_time()
        signatures = minhash_signatures(texts, num_perm=args.num_perm, workers=workers)
        wall = time.perf_counter() - started
        figures[f"signatures_rows_per_s_{workers}_workers"] = round(len(texts) / wall)
        if workers == 1:  # the work itself, whatever else the machine is doing
            figures["signatures_rows_per_cpu_s_1_worker"] = round(len(texts) / (time.process_time() - cpu_started))
        print(f"signatures, {workers} worker(s): {len(texts) / wall:,.0f} rows/s ({wall:.1f} s wall, main-process CPU "
              f"{time.process_time() - cpu_started:.1f} s)")
    figures["signatures_rows_per_s"] = figures[f"signatures_rows_per_s_{args.workers}_workers"]

    config = NearDedupConfig(threshold=args.threshold, num_perm=args.num_perm, workers=args.workers)
    result = find_near_duplicates(rows, config, signatures=signatures)
    figures["near_lsh_and_clusters_s"] = round(result.seconds, 2)
    figures["near_total_s_100k"] = round(result.seconds + len(texts) / figures["signatures_rows_per_s"], 2)
    figures["near_rows_per_s_with_exact_verification"] = round(len(texts) / figures["near_total_s_100k"])
    figures["candidate_pairs"] = result.params["candidate_pairs"]
    figures["exactly_verified_pairs"] = result.params["exactly_verified_pairs"]
    figures["lsh_bands_x_rows"] = f"{result.params['lsh_bands']}x{result.params['lsh_rows_per_band']}"
    figures |= {f"grown_{k}": v for k, v in score(rows, origin, similarity, result, args.threshold).items()}
    print("100k grown set:", {k: v for k, v in figures.items() if k.startswith("grown_")})

    # Strict variant: one copy per original, so no chain of sibling copies can help recall.
    strict_rows, strict_origin, strict_sim = grow(base, 2 * len(base), seed=1)
    strict = find_near_duplicates(strict_rows, config)
    figures |= {f"one_copy_{k}": v for k, v in score(strict_rows, strict_origin, strict_sim, strict, args.threshold).items()}
    figures["one_copy_wall_s"] = round(strict.seconds, 2)
    print("one copy per original:", {k: v for k, v in figures.items() if k.startswith("one_copy_")})

    planted, planted_origin, planted_sim = plant_edits(base, seed=0)
    for verify, margin in (("exact", config.candidate_margin), ("estimate", 0.0)):
        variant = NearDedupConfig(threshold=args.threshold, num_perm=args.num_perm, workers=args.workers, verify=verify,
                                  candidate_margin=margin)
        started = time.perf_counter()
        found = find_near_duplicates(planted, variant)
        wall = time.perf_counter() - started
        scored = score(planted, planted_origin, planted_sim, found, args.threshold)
        figures |= {f"planted_{verify}_{k}": scored[k] for k in ("recall", "precision", "false_clusters", "found_below_threshold")}
        figures[f"planted_{verify}_rows_per_s"] = round(len(planted) / wall)
    figures["planted_pairs_jaccard_ge_threshold"] = scored["injected_pairs_jaccard_ge_threshold"]
    figures["planted_pairs"] = scored["injected_pairs"]
    print("planted 1-4-word edits:", {k: v for k, v in figures.items() if k.startswith("planted_")})

    real = find_near_duplicates(base, config)
    figures["alpaca_5000_real_near_clusters"] = len(real.clusters)

    if args.semantic_rows:
        import torch

        started, cpu_started = time.perf_counter(), time.process_time()
        semantic = find_semantic_duplicates(base[: args.semantic_rows], SemanticDedupConfig())
        figures |= {
            "semantic_rows": min(args.semantic_rows, len(base)),
            "semantic_wall_s": round(time.perf_counter() - started, 1),
            "semantic_cpu_s": round(time.process_time() - cpu_started, 1),
            "semantic_torch_threads": torch.get_num_threads(),
            "semantic_clusters": len(semantic.clusters),
            "semantic_sizes": dict(Counter(len(c.members) for c in semantic.clusters)),
        }
        print(f"semantic, {figures['semantic_rows']:,} rows on CPU: {figures['semantic_wall_s']} s, {len(semantic.clusters)} clusters")
    figures["load_average_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(figures))


if __name__ == "__main__":  # the signature pool starts processes that re-import this file
    main()
