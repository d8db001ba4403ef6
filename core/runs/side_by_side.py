"""Run comparison: curves of several runs overlaid, their specs diffed, final metrics and evaluation reports
side by side. Pure data + plotly figures; the Runs page only draws them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from core.runs.card import build_card, lineage, scan
from core.runs.metrics import metric_series, read_all_metrics
from core.runs.status import METRICS_FILE
from core.workspace import display_path

CURVES = (("loss", "train loss", "lines"), ("eval_loss", "eval loss", "lines+markers"))
_NOT_COMPARED = {"name"}


def overlay_figure(run_dirs: list[Path], log_scale: bool = False) -> Any:
    """Train and eval loss of every run on one chart (one colour per run; eval dashed)."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    fig = go.Figure()
    for index, run_dir in enumerate(run_dirs):
        rows = read_all_metrics(Path(run_dir) / METRICS_FILE)
        colour = qualitative.Plotly[index % len(qualitative.Plotly)]
        for key, label, mode in CURVES:
            x, y = metric_series(rows, key)
            if x:
                fig.add_trace(go.Scatter(x=x, y=y, mode=mode, name=f"{Path(run_dir).name} · {label}",
                                         line=dict(color=colour, dash="dash" if key == "eval_loss" else "solid")))
    fig.update_layout(title="Loss, runs overlaid", xaxis_title="step", height=380, margin=dict(l=10, r=10, t=40, b=10),
                      yaxis_type="log" if log_scale else "linear", legend=dict(orientation="h"))
    return fig


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def spec_diff(specs: dict[str, dict], only_differences: bool = True) -> list[dict]:
    """One row per spec field (nested fields dotted): its value in each run; by default only the fields that differ."""
    flat = {run_id: _flatten(spec) for run_id, spec in specs.items()}
    fields = sorted({k for f in flat.values() for k in f} - _NOT_COMPARED)
    rows = []
    for key in fields:
        values = [flat[run_id].get(key, "—") for run_id in specs]
        if only_differences and len({repr(v) for v in values}) == 1:
            continue
        rows.append({"field": key, **{run_id: _cell(flat[run_id].get(key, "—")) for run_id in specs}})
    return rows


def _cell(value: Any) -> str:
    return ", ".join(map(_cell, value)) if isinstance(value, list) else display_path(str(value))


FINAL_KEYS = (("global_step", "steps"), ("loss", "final train loss"), ("eval_loss_start", "eval loss before"),
              ("eval_loss", "eval loss after"), ("train_loss_mean", "mean train loss"))


def final_metrics(cards: dict[str, dict]) -> list[dict]:
    rows = []
    for key, label in FINAL_KEYS:
        values = {run_id: card["final_metrics"].get(key) for run_id, card in cards.items()}
        if any(v is not None for v in values.values()):
            rows.append({"metric": label, **{k: _round(v) for k, v in values.items()}})
    extra = (("tokens/s", lambda c: c.get("tokens_per_s")),
             ("peak memory GB", lambda c: (c["memory"].get("measured_peak_bytes") or 0) / 1e9 or None),
             ("predicted memory GB", lambda c: (c["memory"].get("predicted_bytes") or 0) / 1e9 or None),
             ("trained tokens", lambda c: c["masking"].get("trained_tokens")))
    for label, get in extra:
        values = {run_id: get(card) for run_id, card in cards.items()}
        if any(v is not None for v in values.values()):
            rows.append({"metric": label, **{k: _round(v) for k, v in values.items()}})
    return rows


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def reports_side_by_side(cards: dict[str, dict]) -> list[dict]:
    """Each run's evaluation verdicts (from the evaluate runs made of it) as one row per run and report."""
    rows = []
    for run_id, card in cards.items():
        for report in card["reports"]:
            for verdict in report.get("verdicts", []):
                rows.append({"run": run_id, "evaluation": report.get("run_id"), "variant": verdict.get("label"),
                             "verdict": verdict.get("verdict"), "summary": verdict.get("summary", "")})
        if not card["reports"]:
            rows.append({"run": run_id, "evaluation": "—", "variant": "", "verdict": "not evaluated yet", "summary": ""})
    return rows


def side_by_side(run_ids: list[str]) -> dict:
    """Everything the comparison view shows, for runs of this workspace."""
    nodes = scan()
    graph = lineage(nodes)
    missing = [r for r in run_ids if r not in nodes]
    if missing:
        raise ValueError(f"unknown run(s): {', '.join(missing)}")
    cards = {run_id: build_card(run_id, nodes, graph) for run_id in run_ids}
    return {"cards": cards, "spec_diff": spec_diff({r: nodes[r].spec for r in run_ids}),
            "final_metrics": final_metrics(cards), "reports": reports_side_by_side(cards),
            "run_dirs": [nodes[r].path for r in run_ids]}
