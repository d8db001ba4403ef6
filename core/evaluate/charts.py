"""Plotly figures of a report (bars with 95% intervals as error bars, the checkpoint curve). No streamlit here."""
from __future__ import annotations

import plotly.graph_objects as go

from core.evaluate.report import GENERAL_SCORE


def _error(entry: dict | None) -> tuple[float | None, float | None, float | None]:
    if not entry:
        return None, None, None
    return entry["value"], entry["high"] - entry["value"], entry["value"] - entry["low"]


def metric_bars(report: dict, kind: str = "points", group: str | None = None) -> go.Figure | None:
    """Grouped bars: one group per metric of this kind ("points" or "perplexity"), one bar per model."""
    metrics = [m for m in report["metrics"] if m["kind"] == kind and (group is None or m["group"] == group)]
    metrics = [m for m in metrics if any(m["key"] in model["metrics"] for model in report["models"])]
    if not metrics:
        return None
    fig = go.Figure()
    for model in report["models"]:
        values, plus, minus = zip(*(_error(model["metrics"].get(m["key"])) for m in metrics))
        fig.add_bar(
            name=model["label"], x=[m["label"] for m in metrics], y=list(values),
            error_y={"type": "data", "array": list(plus), "arrayminus": list(minus), "visible": True},
        )
    title = "Perplexity (lower is better)" if kind == "perplexity" else "Scores in points (higher is better)"
    fig.update_layout(barmode="group", title=title, yaxis_title="perplexity" if kind == "perplexity" else "points",
                      legend_title="model", margin={"t": 50, "b": 10}, height=380)
    return fig


def delta_bars(report: dict) -> go.Figure | None:
    """Fine-tuned − base per metric, with the paired intervals; the forgetting limit drawn on the general score."""
    if not report.get("comparisons"):
        return None
    labels = {m["key"]: m["label"] for m in report["metrics"] if m["kind"] == "points"}
    fig = go.Figure()
    for variant, deltas in report["comparisons"].items():
        keys = [k for k in labels if k in deltas]
        values, plus, minus = zip(*(_error(deltas[k]) for k in keys)) if keys else ((), (), ())
        fig.add_bar(name=variant, x=[labels[k] for k in keys], y=list(values),
                    error_y={"type": "data", "array": list(plus), "arrayminus": list(minus), "visible": True})
    limit = report["thresholds"]["forgetting_points"]
    fig.add_hline(y=-limit, line_dash="dash", line_color="#c62828", annotation_text=f"forgetting limit −{limit:g} (general score)")
    fig.update_layout(barmode="group", title="Change vs base (points, paired 95% intervals)", yaxis_title="Δ points",
                      margin={"t": 50, "b": 10}, height=380)
    return fig


def checkpoint_curve(report: dict) -> go.Figure | None:
    """Task score and general score per checkpoint: where learning the task starts to cost general ability."""
    points = report.get("checkpoints") or []
    if len(points) < 2:
        return None
    steps = [p["step"] for p in points]
    text = [p["label"] for p in points]
    fig = go.Figure()
    fig.add_scatter(x=steps, y=[p["task_score"] for p in points], mode="lines+markers", name="task score", text=text)
    fig.add_scatter(x=steps, y=[p["general_score"] for p in points], mode="lines+markers", name="general score", text=text)
    base_general = points[0]["general_score"]
    if base_general is not None:
        limit = report["thresholds"]["forgetting_points"]
        fig.add_hline(y=base_general - limit, line_dash="dash", line_color="#c62828", annotation_text="forgetting limit")
    fig.update_layout(title="Learning vs forgetting across checkpoints", xaxis_title="training step",
                      yaxis_title="points", margin={"t": 50, "b": 10}, height=380)
    return fig


def pair_accuracy_bars(report: dict) -> go.Figure | None:
    """The preference section: pair accuracy per model (log-prob, per token, implicit reward), with 95% intervals."""
    models = (report.get("preference") or {}).get("models") or []
    if not models:
        return None
    kinds = (("logprob_acc", "log-prob"), ("logprob_acc_norm", "log-prob per token"), ("reward_acc", "implicit reward"))
    fig = go.Figure()
    for key, name in kinds:
        shown = [m for m in models if m.get(key)]
        if not shown:
            continue
        values, plus, minus = zip(*(_error(m[key]) for m in shown))
        fig.add_bar(name=name, x=[m["label"] for m in shown], y=list(values),
                    error_y={"type": "data", "array": list(plus), "arrayminus": list(minus), "visible": True})
    fig.add_hline(y=50, line_dash="dot", line_color="#888", annotation_text="chance")
    fig.update_layout(barmode="group", title="Held-out pair accuracy (chosen preferred, %)", yaxis_title="%", yaxis_range=[0, 100],
                      legend_title="reading", margin={"t": 50, "b": 10}, height=380)
    return fig


__all__ = ["metric_bars", "delta_bars", "checkpoint_curve", "pair_accuracy_bars", "GENERAL_SCORE"]
