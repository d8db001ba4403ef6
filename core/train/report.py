"""What the Train page shows, computed here so the page stays a thin reader: dataset choices, the runs
table, the live summary of a run and its charts (plotly figures built from metrics.jsonl rows)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.train.distributed import read_rank_records
from core.train.spec import DEMO_DATASET

DEMO_LABEL = "Demo: support ticket → JSON (300 rows)"
PATH_LABEL = "File or folder path…"


def dataset_choices() -> dict[str, str]:
    """Label -> dataset field value: the demo, then the curated workspace datasets."""
    from core.data.formats import list_workspace_datasets, workspace_dataset_path

    choices = {DEMO_LABEL: DEMO_DATASET}
    for name in list_workspace_datasets():
        choices[f"Workspace: {name}"] = str(workspace_dataset_path(name).parent)
    return choices


def _model_label(model: dict) -> str:
    from core.models import ModelSource

    try:
        return ModelSource.from_dict(model).label
    except (TypeError, ValueError):
        return str(model)


def _duration(status: Any) -> str:
    seconds = status.elapsed
    if seconds is None:
        return ""
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def runs_table(summaries: list) -> list[dict]:
    """One row per training run for the page's table (newest first)."""
    rows = []
    for run in summaries:
        spec, status = run.spec, run.status
        result = status.result or {}
        rows.append({
            "run": run.run_id,
            "status": status.state,
            "method": spec.get("method", ""),
            "model": _model_label(spec.get("model") or {}),
            "dataset": Path(str(spec.get("dataset", ""))).name,
            "steps": result.get("global_step"),
            "final loss": _rounded(result.get("final_loss")),
            "eval loss": _rounded(result.get("eval_loss")),
            "duration": _duration(status),
            "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(status.created_at)),
        })
    return rows


def _rounded(value: Any) -> float | None:
    return None if value is None else round(float(value), 4)


@dataclass
class LiveSummary:
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    eval_loss: float | None = None
    tokens_per_s: float | None = None
    peak_memory_gb: float | None = None
    eta_s: float | None = None

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    @property
    def label(self) -> str:
        eta = f" · ETA {self.eta_s:.0f} s" if self.eta_s else ""
        return f"step {self.step} / {self.total_steps or '?'}{eta}"


def live_summary(rows: list[dict]) -> LiveSummary:
    summary = LiveSummary()
    for row in rows:
        if row.get("event") == "start":
            summary.total_steps = int(row.get("total_steps") or 0)
        if "loss" in row:
            summary.step, summary.loss = int(row["step"]), row["loss"]
            summary.tokens_per_s, summary.eta_s = row.get("tokens_per_s"), row.get("eta_s")
            if row.get("peak_memory_bytes"):
                summary.peak_memory_gb = row["peak_memory_bytes"] / 1e9
        if "eval_loss" in row:
            summary.eval_loss = row["eval_loss"]
    return summary


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    """(steps, values) of one metric. A resumed run re-logs the steps after its last checkpoint: the latest wins."""
    by_step = {r["step"]: r[key] for r in rows if r.get(key) is not None and "step" in r}
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def loss_figure(rows: list[dict], log_scale: bool = False) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for key, name, mode in (("loss", "train loss", "lines"), ("eval_loss", "eval loss", "lines+markers")):
        x, y = _series(rows, key)
        if x:
            fig.add_trace(go.Scatter(x=x, y=y, name=name, mode=mode))
    fig.update_layout(title="Loss", xaxis_title="step", height=320, margin=dict(l=10, r=10, t=40, b=10),
                      yaxis_type="log" if log_scale else "linear", legend=dict(orientation="h"))
    return fig


SMALL_CHARTS = (
    ("learning_rate", "Learning rate", 1.0),
    ("grad_norm", "Gradient norm", 1.0),
    ("tokens_per_s", "Tokens / s", 1.0),
    ("peak_memory_bytes", "Peak memory (GB)", 1e-9),
)


def small_figures(rows: list[dict]) -> list[Any]:
    import plotly.graph_objects as go

    figures = []
    for key, title, scale in SMALL_CHARTS:
        x, y = _series(rows, key)
        fig = go.Figure(go.Scatter(x=x, y=[v * scale for v in y], mode="lines", name=title))
        fig.update_layout(title=title, xaxis_title="step", height=240, margin=dict(l=10, r=10, t=40, b=10))
        figures.append(fig)
    return figures


def rank_rows(run_dir: Path, now: float | None = None) -> list[dict]:
    """One row per rank of a multi-process run (from ranks/rank-<k>.json), for the per-rank progress table."""
    now = now or time.time()
    rows = []
    for record in read_rank_records(run_dir):
        beat = record.get("heartbeat")
        rows.append({
            "rank": record["rank"],
            "node": record.get("node_rank", 0),
            "host": record.get("host", ""),
            "state": record.get("state", ""),
            "progress": float(record.get("progress") or 0.0),
            "message": record.get("error") or record.get("message", ""),
            "tokens/s": record.get("rank_tokens_per_s", record.get("tokens_per_s")),
            "peak memory GB": round(record["peak_memory_bytes"] / 1e9, 2) if record.get("peak_memory_bytes") else None,
            "last heard": f"{now - beat:.0f} s ago" if beat and record.get("state") == "running" else "",
        })
    return rows
