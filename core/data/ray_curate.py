"""The same curation on Ray: exact and MinHash near de-duplication and decontamination with Ray Data.

Beyond one machine the workbench hands curation to Ray instead of a scheduler of its own. Each function
here returns the same result object as its in-process twin (`core.data.dedup`, `core.data.decontam`) and,
on the same rows, the same rows to drop: the per-row work is the very same code, run by Ray Data over
blocks of rows, and only the grouping moves into Ray's shuffle.

- exact: ``map_batches`` computes each row's normalised key; ``groupby(key).map_groups`` emits the groups
  of two or more rows.
- near: ``map_batches`` computes MinHash signatures and LSH band keys block by block (one output row per
  row and band); ``groupby(band, key).map_groups`` turns each bucket into candidate pairs with the same
  star rule for oversized buckets; the (few) candidate rows are then verified on the driver exactly as in
  process (signature estimate prefilter, exact shingle-set Jaccard) and clustered the same way.
- decontamination: ``map_batches`` runs the in-process matcher on each block of rows against the
  benchmarks (broadcast once through the object store) and the driver merges the matches in row order.

Where it runs: `ray_session()` joins the cluster named by ``RAY_ADDRESS`` (for example
``RAY_ADDRESS=ray://head-node:10001`` or ``auto`` on a cluster node), else starts a local Ray with
``num_cpus`` (the tests use ``ray.init(num_cpus=2)``). Ray is an optional extra: ``requirements-ray.txt``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, Iterator, Sequence

import numpy as np

from core.data.decontam import MODES, Benchmark, BenchmarkContamination, DecontamConfig, DecontamResult, RowMatch, decontaminate
from core.data.dedup import (
    KEEP_RULES,
    DedupResult,
    DuplicateCluster,
    ExactDedupConfig,
    NearDedupConfig,
    Progress,
    _band_keys,
    _choose_representative,
    _clusters_from_pairs,
    _pairs_sharing_key,
    _report,
    _signature_chunk,
    _unique_pairs,
    lsh_bands,
    minhash_signatures,
    verify_pairs,
)
from core.data.text import normalise_for_exact, row_texts

BLOCK_ROWS = 10_000
RAY_MISSING = "Ray is not installed: pip install -r requirements-ray.txt (Ray Data) to curate on Ray"


class RayUnavailable(RuntimeError):
    pass


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


@contextmanager
def ray_session(num_cpus: int | None = None) -> Iterator[Any]:
    """Ray, initialised for the duration: the cluster at RAY_ADDRESS when set, else a local one. A Ray that is
    already initialised (a test fixture, a user's own session) is used as it is and left running."""
    if not ray_available():
        raise RayUnavailable(RAY_MISSING)
    import ray

    if ray.is_initialized():
        yield ray
        return
    address = os.environ.get("RAY_ADDRESS") or None
    options: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False}
    if address is None:
        options |= {"num_cpus": num_cpus or os.cpu_count() or 1, "include_dashboard": False}
    ray.init(address=address, **options)
    try:
        yield ray
    finally:
        ray.shutdown()


def describe_cluster() -> dict[str, Any]:
    import ray

    resources = ray.cluster_resources()
    return {"address": os.environ.get("RAY_ADDRESS") or "local", "nodes": len(ray.nodes()), "cpus": resources.get("CPU", 0)}


def _partitions(n_rows: int) -> int:
    """Hash-shuffle partitions: one per block of input rows (Ray's default of 200 costs a task each even on tiny input)."""
    return max(1, min(200, -(-n_rows // BLOCK_ROWS)))


def _text_dataset(texts: Sequence[str], extra: dict[str, Sequence] | None = None, block_rows: int | None = None):
    """A Ray dataset of (row, text, ...) in blocks of `block_rows` (default BLOCK_ROWS)."""
    import pyarrow as pa
    import ray

    block_rows = block_rows or BLOCK_ROWS
    tables = []
    for start in range(0, len(texts), block_rows):
        stop = min(start + block_rows, len(texts))
        columns = {"row": np.arange(start, stop, dtype=np.int64), "text": list(texts[start:stop])}
        for name, values in (extra or {}).items():
            columns[name] = values[start:stop]
        tables.append(pa.table(columns))
    return ray.data.from_arrow(tables)


# ---------------------------------------------------------------- exact


def _exact_keys(batch: dict) -> dict:
    return {"key": np.array([normalise_for_exact(t) or t.strip() for t in batch["text"]], dtype=object), "row": batch["row"]}


def _groups_of_two_or_more(group: dict) -> dict:
    rows = np.sort(group["row"])
    if len(rows) < 2:
        return {"members": np.empty(0, dtype=object)}
    return {"members": np.array([json.dumps(rows.tolist())], dtype=object)}


def find_exact_duplicates_ray(rows: Sequence[Any], config: ExactDedupConfig | None = None, progress: Progress = None) -> DedupResult:
    """`core.data.dedup.find_exact_duplicates`, with the key map and the grouping on Ray Data."""
    config = config or ExactDedupConfig()
    started = time.perf_counter()
    texts = row_texts(rows, config.field)
    _report(progress, 0.1, "normalising rows on Ray")
    keyed = _text_dataset(texts).map_batches(_exact_keys, batch_format="numpy")
    groups = keyed.groupby("key", num_partitions=_partitions(len(texts))).map_groups(_groups_of_two_or_more, batch_format="numpy")
    member_lists = sorted(json.loads(r["members"]) for r in groups.take_all())
    clusters = []
    for members in member_lists:
        rep = _choose_representative(members, rows, config.keep)
        clusters.append(DuplicateCluster(members=members, representative=rep, method="exact", keep_rule=KEEP_RULES[config.keep],
                                         similarity={m: 1.0 for m in members}))
    _report(progress, 1.0, f"{len(clusters):,} exact-duplicate clusters")
    params = asdict(config) | {"engine": "ray"}
    return DedupResult("exact", config.field, len(rows), clusters, params, time.perf_counter() - started)


# ---------------------------------------------------------------- near


def _band_rows(batch: dict, num_perm: int, ngram: int, seed: int, bands: int, rows_per_band: int) -> dict:
    """One output row per (input row, band): the band's key."""
    signatures = _signature_chunk((list(batch["text"]), num_perm, ngram, seed))
    keys = _band_keys(signatures, bands, rows_per_band)
    n = len(batch["row"])
    return {
        "band": np.repeat(np.arange(bands, dtype=np.int16), n),
        "key": np.concatenate(keys).astype(np.uint64),
        "row": np.tile(np.asarray(batch["row"], dtype=np.int64), bands),
    }


def _partition_pairs(batch: dict, max_bucket: int) -> dict:
    """Candidate pairs of one hash partition of (band, key, row): every bucket lies whole in one partition, and each
    band's buckets become pairs by the in-process rule (`core.data.dedup._pairs_sharing_key`, rows in ascending order,
    so the star of an oversized bucket goes to its first row as in process)."""
    band, key, row = np.asarray(batch["band"]), np.asarray(batch["key"], dtype=np.uint64), np.asarray(batch["row"], dtype=np.int64)
    lefts, rights = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for b in np.unique(band):
        chosen = band == b
        order = np.argsort(row[chosen], kind="stable")
        rows_here, keys_here = row[chosen][order], key[chosen][order]
        i, j = _pairs_sharing_key(keys_here, max_bucket)
        lefts.append(rows_here[i])
        rights.append(rows_here[j])
    return {"i": np.concatenate(lefts), "j": np.concatenate(rights)}


BAND_ROW_BYTES = 24  # band (int16, padded) + key (uint64) + row (int64) in the shuffle
PARTITION_BYTES = 32 * 2**20  # well below Ray Data's 128 MiB target block size, so no partition is split into batches


def near_candidate_pairs_ray(texts: Sequence[str], config: NearDedupConfig) -> tuple[np.ndarray, np.ndarray]:
    bands, rows_per_band = lsh_bands(config.lsh_threshold, config.num_perm, config.lsh_weights)
    banded = _text_dataset(texts).map_batches(
        _band_rows, batch_format="numpy",
        fn_kwargs=dict(num_perm=config.num_perm, ngram=config.ngram, seed=config.seed, bands=bands, rows_per_band=rows_per_band),
    )
    partitions = max(_partitions(len(texts)), -(-len(texts) * bands * BAND_ROW_BYTES // PARTITION_BYTES))
    # One hash shuffle on (band, key) puts every LSH bucket whole into one partition; each partition is then one
    # vectorised batch (a Python call per bucket, as groupby().map_groups makes, was 10x slower than in process).
    pairs = banded.repartition(partitions, keys=["band", "key"]).map_batches(
        _partition_pairs, batch_format="numpy", batch_size=None, fn_kwargs={"max_bucket": config.max_bucket})
    lefts, rights = [], []
    for batch in pairs.iter_batches(batch_format="numpy", batch_size=None):
        lefts.append(np.asarray(batch["i"], dtype=np.int64))
        rights.append(np.asarray(batch["j"], dtype=np.int64))
    if not lefts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return _unique_pairs(np.concatenate(lefts), np.concatenate(rights), len(texts))


def find_near_duplicates_ray(rows: Sequence[Any], config: NearDedupConfig | None = None, progress: Progress = None) -> DedupResult:
    """`core.data.dedup.find_near_duplicates`, with signatures, band keys and bucket grouping on Ray Data."""
    config = config or NearDedupConfig()
    started = time.perf_counter()
    texts = row_texts(rows, config.field)
    _report(progress, 0.05, "MinHash signatures and LSH buckets on Ray")
    i, j = near_candidate_pairs_ray(texts, config)
    _report(progress, 0.85, f"verifying {len(i):,} candidate pairs")
    involved = np.unique(np.concatenate([i, j]))
    local = {int(r): k for k, r in enumerate(involved.tolist())}
    sub_texts = [texts[r] for r in involved.tolist()]
    sub_signatures = minhash_signatures(sub_texts, num_perm=config.num_perm, ngram=config.ngram, seed=config.seed, workers=1)
    to_local = np.vectorize(local.__getitem__, otypes=[np.int64])
    li, lj = (to_local(i), to_local(j)) if len(i) else (i, j)
    vi, vj, similarity, checked, similarity_to = verify_pairs(sub_texts, sub_signatures, li, lj, config)
    clusters = _clusters_from_pairs(
        len(texts), involved[vi], involved[vj], similarity, rows=rows, method="near", keep=config.keep,
        similarity_to=lambda rep, members: similarity_to(local[int(rep)], to_local(np.asarray(members))),
    )
    params = asdict(config) | {"candidate_pairs": int(len(checked)), "exactly_verified_pairs": int(checked.sum()),
                               "verified_pairs": int(len(vi)), "lsh_threshold": config.lsh_threshold, "engine": "ray"}
    params["lsh_bands"], params["lsh_rows_per_band"] = lsh_bands(config.lsh_threshold, config.num_perm, config.lsh_weights)
    _report(progress, 1.0, f"{len(clusters):,} near-duplicate clusters")
    return DedupResult("near", config.field, len(rows), clusters, params, time.perf_counter() - started)


# ---------------------------------------------------------------- decontamination


def _decontaminate_block(batch: dict, benchmarks_ref: Any, config: dict) -> dict:
    import ray

    benchmarks = ray.get(benchmarks_ref)
    texts, row_of = list(batch["text"]), np.asarray(batch["row"]).tolist()
    if not texts:
        return {"payload": np.empty(0, dtype=object)}
    result = decontaminate(texts, benchmarks, DecontamConfig(**config))
    matches = [asdict(m) | {"row": row_of[m.row]} for report in result.reports for m in report.matches]
    payload = {"matches": matches, "skipped": [r.n_items_skipped for r in result.reports]}
    return {"payload": np.array([json.dumps(payload)], dtype=object)}


def decontaminate_ray(rows: Sequence[Any], benchmarks: Sequence[Benchmark], config: DecontamConfig | None = None,
                      progress: Progress = None) -> DecontamResult:
    """`core.data.decontam.decontaminate`, with the matching of every block of rows on Ray Data."""
    import ray

    config = config or DecontamConfig()
    if not benchmarks:
        raise ValueError("no benchmark to check against: pick at least one")
    started = time.perf_counter()
    texts = row_texts(rows, config.field, require_text=False)
    _report(progress, 0.05, "matching blocks of rows on Ray")
    benchmarks_ref = ray.put(list(benchmarks))
    blocks = _text_dataset(texts).map_batches(
        _decontaminate_block, batch_format="numpy", batch_size=BLOCK_ROWS,
        fn_kwargs={"benchmarks_ref": benchmarks_ref, "config": asdict(config)},
    ).take_all()
    per_benchmark: dict[str, list[RowMatch]] = {b.name: [] for b in benchmarks}
    skipped = [0] * len(benchmarks)
    for block in blocks:
        payload = json.loads(block["payload"])
        skipped = payload["skipped"]  # per benchmark, the same in every block
        for m in payload["matches"]:
            per_benchmark[m["benchmark"]].append(RowMatch(**(m | {"spans": [tuple(s) for s in m["spans"]]})))
    for matches in per_benchmark.values():
        matches.sort(key=lambda m: (m.row, m.item))  # the in-process order
    reports = [BenchmarkContamination(b.name, config.mode, len(texts), len(b.items), skipped[k], per_benchmark[b.name])
               for k, b in enumerate(benchmarks)]

    params = asdict(config) | {"benchmarks": [b.name for b in benchmarks], "rule": MODES[config.mode].rule, "engine": "ray"}
    _report(progress, 1.0, "done")
    return DecontamResult(config.mode, config.field, len(texts), reports, params, time.perf_counter() - started)

