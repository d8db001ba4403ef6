"""The method comparison as a table and a Pareto chart, and the seed chapter's claimed trainable shares.

Pure functions over the rows the comparison job writes (`comparison.json`): the page, the CSV export and
bench/method_comparison.py all read them through here.
"""
from __future__ import annotations

import csv
import io
from typing import Any, Iterable

from core.runs.jobs import read_result

# Section 45.5's table: trainable share of the model, in percent (low, high). "~x %" is read as within 3x of x.
CHAPTER_SHARES: dict[str, tuple[str, float, float]] = {
    "adapters": ("~0.5-5 %", 0.5, 5.0),
    "prefix_tuning": ("< 0.1 %", 0.0, 0.1),
    "prompt_tuning": ("< 0.1 %", 0.0, 0.1),
    "ia3": ("~0.01 %", 0.01 / 3, 0.01 * 3),
    "bitfit": ("~0.1 %", 0.1 / 3, 0.1 * 3),
    "lora": ("~0.1-1 %", 0.1, 1.0),
    "dora": ("~0.1-1 %", 0.1, 1.0),
    "rslora": ("~0.1-1 %", 0.1, 1.0),
    "qlora": ("~0.1-1 %", 0.1, 1.0),
}

COLUMNS = (
    ("label", "Method"), ("state", "State"), ("trainable_params", "Trainable params"), ("trainable_percent", "Trainable %"),
    ("chapter", "Chapter says"), ("artifact_bytes", "Artifact bytes"), ("predicted_memory_bytes", "Predicted peak bytes"),
    ("peak_memory_bytes", "Measured peak bytes"), ("tokens_per_s", "Tokens/s"), ("train_seconds", "Train s"),
    ("wall_seconds", "Wall s"), ("final_loss", "Final loss"), ("task_score", "Task score"), ("label_accuracy", "Label accuracy"),
    ("general_score", "General score"), ("general_perplexity", "General perplexity"), ("mergeable", "Mergeable into W"),
    ("run_id", "Run"), ("error", "Error"),
)


def chapter_check(method: str, share: float | None) -> str:
    """'matches ~0.01 %' / 'above ~0.1-1 %' / 'below …' / '' (a method the chapter's table does not list)."""
    if method not in CHAPTER_SHARES or share is None:
        return ""
    claim, low, high = CHAPTER_SHARES[method]
    percent = 100 * share
    verdict = "matches" if low <= percent <= high else ("above" if percent > high else "below")
    return f"{verdict} {claim}"


def display_rows(rows: Iterable[dict]) -> list[dict]:
    """Rows for st.dataframe / CSV: every column, in order, with the percentage and the chapter check filled in."""
    out = []
    for row in rows:
        share = row.get("trainable_share")
        full = {**row, "trainable_percent": None if share is None else round(100 * share, 5),
                "chapter": chapter_check(row.get("method", ""), share)}
        out.append({title: full.get(key) for key, title in COLUMNS})
    return out


def to_csv(rows: Iterable[dict]) -> str:
    table = display_rows(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[title for _, title in COLUMNS])
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def load_result(run_dir: Any) -> dict | None:
    """The result file of a finished comparison run, or None while it runs."""
    return read_result(run_dir, "method_comparison")


def live_rows(metrics_rows: Iterable[dict]) -> list[dict]:
    """The methods trained so far, from the comparison's metrics rows (one per finished method, latest wins)."""
    latest = {row["method"]: row for row in metrics_rows if row.get("method")}
    return list(latest.values())


def score_of(row: dict) -> float | None:
    """The y of the Pareto chart: the task score, or for the feature-extraction baseline its label accuracy."""
    return row.get("task_score") if row.get("task_score") is not None else row.get("label_accuracy")


def pareto_front(rows: Iterable[dict], cost: str) -> list[dict]:
    """Rows no other row beats on both: higher score at no more `cost` (trainable params, peak memory)."""
    points = [r for r in rows if r.get(cost) and score_of(r) is not None]
    front = []
    for r in points:
        dominated = any(o is not r and o[cost] <= r[cost] and score_of(o) >= score_of(r) and
                        (o[cost] < r[cost] or score_of(o) > score_of(r)) for o in points)
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: r[cost])


def pareto_figure(rows: list[dict], cost: str = "trainable_params") -> Any:
    """Score against cost (log x) for every method, the Pareto front drawn as a line."""
    import plotly.graph_objects as go

    titles = {"trainable_params": "Trainable parameters (log)", "peak_memory_bytes": "Measured peak memory, bytes (log)",
              "predicted_memory_bytes": "Predicted peak memory, bytes (log)"}
    points = [r for r in rows if r.get(cost) and score_of(r) is not None]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[r[cost] for r in points], y=[score_of(r) for r in points], mode="markers+text",
                             text=[r.get("label", r.get("method")) for r in points], textposition="top center", name="methods",
                             marker={"size": 11}))
    front = pareto_front(rows, cost)
    if len(front) > 1:
        fig.add_trace(go.Scatter(x=[r[cost] for r in front], y=[score_of(r) for r in front], mode="lines", name="Pareto front",
                                 line={"dash": "dot"}))
    fig.update_layout(xaxis={"type": "log", "title": titles.get(cost, cost)},
                      yaxis={"title": "Task score (label accuracy for the baseline), %"},
                      title="Score against " + titles.get(cost, cost).split(" (")[0].lower(), height=420, margin={"t": 50})
    return fig
