"""Shared by the training benchmarks: a throw-away workspace that reuses the converted-model cache, running a
TrainSpec through the real worker, and reading its throughput back from metrics.jsonl / training.json."""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bench_workspace(keep: bool = False) -> Path:
    """A fresh WORKBENCH_HOME whose models/ is the usual cache (the embedded model is converted only once).
    Removed at exit unless `keep` (or BENCH_KEEP=1) — the runs' checkpoints are not worth the disk."""
    from core.workspace import models_dir

    cache = models_dir()  # resolved from the caller's WORKBENCH_HOME before we switch
    home = Path(tempfile.mkdtemp(prefix="workbench-bench-"))
    (home / "models").symlink_to(cache, target_is_directory=True)
    os.environ["WORKBENCH_HOME"] = str(home)
    if not (keep or os.environ.get("BENCH_KEEP") == "1"):
        atexit.register(shutil.rmtree, home, True)
    return home


def steady_tokens_per_s(rows: list[dict], time_key: str = "time", tokens_key: str = "tokens_seen") -> float:
    """Tokens per second between the first and the last logged step (the first step's warm-up excluded)."""
    steps = [r for r in rows if r.get(tokens_key) is not None and "loss" in r]
    if len(steps) < 2:
        return 0.0
    first, last = steps[0], steps[-1]
    seconds = last[time_key] - first[time_key]
    return (last[tokens_key] - first[tokens_key]) / seconds if seconds > 0 else 0.0


def run_worker(spec, timeout: float = 3600) -> dict:
    """Create a run, launch the worker as the UI does, wait, and return its figures."""
    from core import runs

    run_dir = runs.create_run(spec)
    runs.launch(run_dir)
    status = runs.wait(run_dir, timeout=timeout)
    if status.state != "succeeded":
        raise SystemExit(f"run {run_dir} ended {status.state}: {status.error}\n{runs.log_tail(run_dir)}")
    rows = runs.read_all_metrics(run_dir / runs.METRICS_FILE)
    card = runs.read_result(run_dir)
    return {
        "run_dir": str(run_dir),
        "rows": rows,
        "card": card,
        "status": status,
        "steady_tokens_per_s": steady_tokens_per_s(rows),
        "wall_s": (status.finished_at or 0) - (status.started_at or 0),
    }
