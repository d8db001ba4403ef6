"""metrics.jsonl: append-only, one JSON object per logged step. Readers tail it by byte offset."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def append_metrics(path: str | Path, row: dict[str, Any]) -> None:
    """One line per row. After a worker killed mid-line the file ends without a newline: the next row (a resumed
    run) starts on a line of its own, so only the cut row is lost, never the one after it."""
    line = json.dumps({"time": round(time.time(), 3), **row}, default=float) + "\n"
    with open(path, "ab") as handle:
        if handle.tell() > 0:
            with open(path, "rb") as reader:
                reader.seek(-1, os.SEEK_END)
                if reader.read(1) != b"\n":
                    line = "\n" + line
        handle.write(line.encode("utf-8"))
        handle.flush()


def read_new_metrics(path: str | Path, offset: int = 0) -> tuple[list[dict], int]:
    """Rows appended since `offset`, and the new offset. A half-written last line is left for next time."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset
    rows = []
    for line in chunk[: end + 1].splitlines():
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # a line cut by a killed worker (or corrupted on disk): skipped, the rest still read
        if isinstance(row, dict):
            rows.append(row)
    return rows, offset + end + 1


def read_all_metrics(path: str | Path) -> list[dict]:
    return read_new_metrics(path, 0)[0]


def metric_series(rows: list[dict], key: str) -> tuple[list, list]:
    """(steps, values) of one metric of metrics.jsonl rows. A resumed run re-logs the steps after its last checkpoint:
    the latest row of a step wins."""
    by_step = {r["step"]: r[key] for r in rows if r.get(key) is not None and "step" in r}
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def tail_text(path: str | Path, max_bytes: int = 8000) -> str:
    """The last bytes of a log, starting at a line boundary."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if size > max_bytes and "\n" in text:
        text = text.split("\n", 1)[1]
    return text


def run_segments(rows: list[dict]) -> list[list[dict]]:
    """metrics.jsonl rows split into the run's segments: a first launch and each Resume / Train-more logs an
    `event: start` row. Rows a launch logs before its start row (the eval-on-start loss) belong to that launch."""
    segments: list[list[dict]] = [[]]
    for row in rows:
        if row.get("event") == "start" and any(r.get("event") == "start" for r in segments[-1]):
            segments.append([])
        segments[-1].append(row)
    return [s for s in segments if s]


def whole_run_figures(rows: list[dict]) -> dict[str, Any]:
    """Run-level figures over every segment of metrics.jsonl (a Stop / Resume run is one run, not its last segment):
    mean_loss over all logged steps (a step re-logged after a resume counts once, its latest row), tokens (each
    segment's last `tokens_seen`), train_seconds (each segment's last `elapsed_s`), tokens_per_s = tokens /
    train_seconds, and segments (how many launches logged something)."""
    steps, losses = metric_series(rows, "loss")
    tokens = seconds = 0.0
    parts = run_segments(rows)
    for segment in parts:
        seen = [r["tokens_seen"] for r in segment if isinstance(r.get("tokens_seen"), (int, float))]
        spent = [r["elapsed_s"] for r in segment if isinstance(r.get("elapsed_s"), (int, float))]
        tokens += seen[-1] if seen else 0.0
        seconds += max(spent) if spent else 0.0
    return {
        "mean_loss": sum(losses) / len(losses) if losses else None,
        "logged_steps": len(steps),
        "tokens": int(tokens),
        "train_seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 2) if seconds > 0 else None,
        "segments": len(parts),
    }
