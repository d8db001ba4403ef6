"""Curation at scale: exact / near de-duplication and decontamination, in process vs on Ray, on N rows.

Data (deterministic, cheap to make: no similarity is measured here, bench/dedup.py does recall): the 5,000
real Alpaca rows, then rows shaped like a large instruction set — nine in ten unique (a real row's prompt with
an answer of words drawn at random from the rows' vocabulary, as long as a real answer), one in ten a copy of an
earlier row with 1-4 words replaced (a near-duplicate), one in 10,000 an exact copy — and GSM8K / HumanEval
leaks. (Repeating the 5,000 rows instead would make every row one of n / 5,000 near-copies: at 1M rows, clusters
of 200 and ~10^8 candidate pairs, which no real set has.) Each engine runs in its own child process so that its peak memory is its own:
the peak of the summed PSS (proportional set size, so shared pages count once) of the process and all its
children, sampled every 0.5 s — for Ray that includes the raylet, the GCS, the object store and the workers.

Both engines must give the same rows to drop; the script checks that and exits non-zero otherwise.
The Ray run also times its distributed phase (Ray Data map + shuffle) apart from what stays on the driver
(near: verifying candidates; all: building the result), which is what the per-node estimate is made from.

    .venv/bin/python bench/curate_scale.py [--rows 1000000] [--engines local,ray] [--cpus 2]

Last line: one JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

OPERATIONS = ("exact", "near", "decontam")


def make_rows(n: int, seed: int = 0) -> list[dict]:
    import numpy as np
    from grow_alpaca import alpaca_rows

    from core.data.decontam import load_builtin_benchmark

    base = alpaca_rows()
    rng = random.Random(seed)
    draw = np.random.default_rng(seed)
    vocabulary = np.array(sorted({w for r in base for m in r["messages"] for w in m["content"].split() if w.isalpha()}))
    answer_lengths = [len(r["messages"][-1]["content"].split()) for r in base]
    leaks = [load_builtin_benchmark("GSM8K").items[k] for k in range(0, 1000, 50)] + \
            [load_builtin_benchmark("HumanEval").items[k] for k in range(0, 160, 16)]
    rows = list(base)
    while len(rows) < n:
        k = len(rows)
        if k % 10_000 == 7:  # an exact copy now and then
            rows.append({"messages": [dict(m) for m in rows[rng.randrange(k)]["messages"]]})
        elif k % 10 == 3:  # a near-duplicate of an earlier row
            messages = [dict(m) for m in rows[rng.randrange(k)]["messages"]]
            answer = messages[-1]["content"].split(" ")
            for _ in range(rng.randint(1, 4)):
                answer[rng.randrange(len(answer))] = str(vocabulary[rng.randrange(len(vocabulary))])
            messages[-1]["content"] = " ".join(answer)
            rows.append({"messages": messages})
        else:  # a unique row
            prompt = base[rng.randrange(len(base))]["messages"][0]["content"]
            words = vocabulary[draw.integers(0, len(vocabulary), size=max(8, answer_lengths[rng.randrange(len(base))]))]
            rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": " ".join(words)}]})
    for k, leak in enumerate(leaks):  # spread through the set
        rows[(k * 7919 + 13) % n] = {"messages": [{"role": "user", "content": leak}, {"role": "assistant", "content": "42"}]}
    return rows[:n]


class PeakMemory:
    """The peak of the summed PSS of this process and its children, sampled in a thread."""

    def __init__(self, interval: float = 0.5):
        import psutil

        self.psutil, self.interval, self.peak, self._stop = psutil, interval, 0, threading.Event()
        self.me = psutil.Process()

    def sample(self) -> int:
        total = 0
        for proc in [self.me] + self.me.children(recursive=True):
            try:
                total += proc.memory_full_info().pss
            except (self.psutil.Error, OSError):
                pass
        return total

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = self.sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sample())


def run_engine(engine: str, n: int, cpus: int) -> dict:
    """Child process: make the rows, run the three operations on one engine, print one JSON line."""
    from core.data.decontam import DecontamConfig, decontaminate, load_builtin_benchmark
    from core.data.dedup import ExactDedupConfig, NearDedupConfig, find_exact_duplicates, find_near_duplicates

    started = time.perf_counter()
    rows = make_rows(n)
    out: dict = {"engine": engine, "rows": n, "make_rows_s": round(time.perf_counter() - started, 1)}
    benchmarks = [load_builtin_benchmark("GSM8K"), load_builtin_benchmark("HumanEval")]
    near_config = NearDedupConfig(workers=cpus)
    with PeakMemory() as memory:
        out["rss_before_mb"] = round(memory.peak / 2**20)
        if engine == "ray":
            from core.data import ray_curate

            session = ray_curate.ray_session(num_cpus=cpus)
            t = time.perf_counter()
            session.__enter__()
            out["ray_init_s"] = round(time.perf_counter() - t, 1)
            finders = {"exact": ray_curate.find_exact_duplicates_ray, "near": ray_curate.find_near_duplicates_ray,
                       "decontam": lambda r, c, p: ray_curate.decontaminate_ray(r, benchmarks, c, p)}
        else:
            finders = {"exact": find_exact_duplicates, "near": find_near_duplicates,
                       "decontam": lambda r, c, p: decontaminate(r, benchmarks, c, p)}
        configs = {"exact": ExactDedupConfig(), "near": near_config, "decontam": DecontamConfig(mode="ngram13")}
        for name in OPERATIONS:
            marks: list[tuple[float, float, str]] = []
            t = time.perf_counter()
            result = finders[name](rows, configs[name], lambda f, m, marks=marks: marks.append((time.perf_counter(), f, m)))
            wall = time.perf_counter() - t
            out[f"{name}_s"] = round(wall, 1)
            out[f"{name}_rows_per_s"] = round(n / wall)
            out[f"{name}_rows_to_drop"] = len(result.rows_to_drop)
            out[f"{name}_drop_digest"] = hash(tuple(result.rows_to_drop)) & 0xFFFFFFFF
            if name == "near":
                out["near_candidate_pairs"] = result.params["candidate_pairs"]
                verify = next((m[0] for m in marks if m[2].startswith("verifying")), None)
                if verify is not None:  # Ray: the distributed phase ends where the driver starts verifying
                    out["near_distributed_s"] = round(verify - t, 1)
                    out["near_driver_s"] = round(wall - (verify - t), 1)
        if engine == "ray":
            session.__exit__(None, None, None)
    out["peak_pss_mb"] = round(memory.peak / 2**20)
    return out


def per_node_estimate(local: dict, ray: dict, cpus: int) -> dict:
    """Amdahl on the measured split: the distributed phase scales with the cores, the driver part does not."""
    estimate = {}
    near_parallel = ray.get("near_distributed_s")
    if near_parallel is None:
        return estimate
    serial = ray["near_driver_s"]
    for nodes in (1, 2, 4, 8):
        estimate[f"near_s_{nodes}_nodes_of_{cpus}_cpus"] = round(serial + near_parallel / nodes, 1)
    for name in ("exact", "decontam"):  # all map + shuffle; the driver only gathers the groups / matches
        estimate |= {f"{name}_s_{nodes}_nodes_of_{cpus}_cpus": round(ray[f"{name}_s"] / nodes, 1) for nodes in (1, 2, 4, 8)}
    return estimate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--engines", default="local,ray")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_engine(args.child, args.rows, args.cpus)))
        return
    figures: dict = {"rows": args.rows, "cpus": args.cpus, "cpu_count": os.cpu_count(),
                     "load_average_at_start": round(os.getloadavg()[0], 2)}
    results = {}
    for engine in args.engines.split(","):
        done = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--cpus", str(args.cpus), "--child", engine],
                              capture_output=True, text=True, env=os.environ | {"OMP_WAIT_POLICY": "PASSIVE"})
        if done.returncode:
            sys.exit(f"{engine} failed:\n{done.stderr[-3000:]}")
        results[engine] = json.loads(done.stdout.strip().splitlines()[-1])
        print(engine, results[engine])
        figures |= {f"{engine}_{k}": v for k, v in results[engine].items() if k not in ("engine", "rows")}
    if {"local", "ray"} <= set(results):
        same = {name: results["local"][f"{name}_drop_digest"] == results["ray"][f"{name}_drop_digest"] for name in OPERATIONS}
        figures["same_rows_to_drop"] = same
        figures |= per_node_estimate(results["local"], results["ray"], args.cpus)
        if not all(same.values()):
            print(json.dumps(figures))
            sys.exit(f"the engines disagree: {same}")
    figures["load_average_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(figures))


if __name__ == "__main__":  # the signature pool starts processes that re-import this file
    main()
