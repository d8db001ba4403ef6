"""What the Train page shows, computed here so the page stays a thin reader: dataset choices, the runs
table, the live summary of a run and its charts (plotly figures built from metrics.jsonl rows)."""
from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from core.data.formats import list_workspace_datasets, workspace_dataset_path
from core.models import ModelSource
from core.runs.card import source_run_of
from core.runs.metrics import metric_series, whole_run_figures
from core.runs.status import state_label
from core.train.distributed import read_rank_records
from core.train.grpo import read_completions
from core.train.recipes import DEMO_PAIRS_DATASET
from core.train.spec import DEMO_DATASET, TrainSpec

DEMO_LABEL = "Demo: support ticket → JSON (300 rows)"
PATH_LABEL = "File or folder path…"
DEMO_PAIRS_LABEL = "Demo: support ticket pairs (200, for DPO / ORPO / SimPO / KTO)"


def dataset_choices() -> dict[str, str]:
    """Label -> dataset field value: the demo, then the curated workspace datasets."""
    choices = {DEMO_LABEL: DEMO_DATASET, DEMO_PAIRS_LABEL: DEMO_PAIRS_DATASET}
    for name in list_workspace_datasets():
        choices[f"Workspace: {name}"] = str(workspace_dataset_path(name).parent)
    return choices


def _model_label(model: dict) -> str:
    try:
        return ModelSource.from_dict(model).label
    except (TypeError, ValueError):
        return str(model)


def _duration(status: Any) -> str:
    seconds = status.run_seconds  # every launch of the run (Stop / Resume), not only the latest
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
            "status": state_label(status),
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
    whole = whole_run_figures(rows)  # tokens / s of the whole run, every Stop / Resume segment, not the last one
    summary.tokens_per_s = whole["tokens_per_s"] or summary.tokens_per_s
    return summary


def loss_figure(rows: list[dict], log_scale: bool = False) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for key, name, mode in (("loss", "train loss", "lines"), ("eval_loss", "eval loss", "lines+markers")):
        x, y = metric_series(rows, key)
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
        x, y = metric_series(rows, key)
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


# ---------------------------------------------------------------- preference runs (issue 27): charts, reading guide, lineage

PREFERENCE_CHARTS: tuple[tuple[str, tuple[tuple[str, str, str], ...]], ...] = (
    # (title, ((metric key, legend name, colour), ...)): train rows carry the key, eval rows its eval_ twin
    ("Implicit rewards", (("rewards/chosen", "chosen", "#2ca02c"), ("rewards/rejected", "rejected", "#d62728"))),
    ("Reward margin (chosen − rejected)", (("rewards/margins", "margin", "#1f77b4"),)),
    ("Pair accuracy (chosen reward > rejected)", (("rewards/accuracies", "accuracy", "#9467bd"),)),
    ("Log-probs of the answers", (("logps/chosen", "chosen", "#2ca02c"), ("logps/rejected", "rejected", "#d62728"))),
    ("KL to the reference (KTO)", (("kl", "kl", "#8c564b"),)),
)
WHOLE_SET_ACCURACY = "eval_pair_accuracy"  # logged by core.train.trainer at each eval: over every eval pair, not a mean of batches


def is_preference_run(rows: list[dict]) -> bool:
    keys = {key for _, series in PREFERENCE_CHARTS for key, _, _ in series}
    return not is_grpo_run(rows) and any(k in row or f"eval_{k}" in row for row in rows for k in keys)


def _eval_key(rows: list[dict], key: str) -> tuple[str, str]:
    """The eval twin of a train metric and its legend suffix. Accuracy: the whole-set figure when the run logged it."""
    if key == "rewards/accuracies" and any(r.get(WHOLE_SET_ACCURACY) is not None for r in rows):
        return WHOLE_SET_ACCURACY, "eval (whole set)"
    return f"eval_{key}", "eval"


def preference_figures(rows: list[dict]) -> list[Any]:
    """The objective's own curves beside the loss: rewards, margin, accuracy, log-probs, KTO's KL; train rows as lines,
    eval rows dashed with markers. Only charts with data are returned: an SFT run gets none (its page is unchanged)."""
    import plotly.graph_objects as go

    if is_grpo_run(rows):
        return []  # its KL and rewards/* are GRPO's, drawn by grpo_figures
    figures = []
    for title, series in PREFERENCE_CHARTS:
        fig = go.Figure()
        for key, name, colour in series:
            eval_key, eval_name = _eval_key(rows, key)
            for source, label, dash, mode in ((key, name, "solid", "lines"), (eval_key, f"{name} · {eval_name}", "dash", "lines+markers")):
                x, y = metric_series(rows, source)
                if x:
                    fig.add_trace(go.Scatter(x=x, y=y, name=label, mode=mode, line=dict(color=colour, dash=dash)))
        if fig.data:
            fig.update_layout(title=title, xaxis_title="step", height=260, margin=dict(l=10, r=10, t=40, b=10),
                              legend=dict(orientation="h"))
            figures.append(fig)
    return figures


# ---------------------------------------------------------------- GRPO runs (issue 28 item 4): rewards, signal, KL, lengths

GRPO_CHARTS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    # (title, ((metric key, legend name), ...)); "rewards/*/mean" expands to one line per reward the run logged
    ("Reward (weighted sum) ± std", (("reward", "mean"),)),
    ("Each reward: mean", (("rewards/*/mean", ""),)),
    ("Each reward: std within the batch", (("rewards/*/std", ""),)),
    ("Groups with zero reward std (no signal)", (("frac_reward_zero_std", "share of groups"),)),
    ("KL to the reference (beta > 0)", (("kl", "kl"),)),
    ("Completion length (tokens)", (("completions/mean_length", "mean"), ("completions/max_length", "max"),
                                    ("completions/min_length", "min"))),
    ("Clipped", (("completions/clipped_ratio", "completions cut at max_completion_length"),
                 ("clip_ratio/region_mean", "tokens whose policy ratio was clipped"))),
)
GRPO_GUIDE = (
    "A group whose completions all score the same gives no advantage and teaches nothing: a zero-std share near 1 means the "
    "rewards are too hard (or too easy) for the model now. Raise the temperature or num_generations, add a partial-credit "
    "reward (field_accuracy), or start from an SFT run.",
    "Completions cut at max_completion_length (clipped) are scored as they are: a JSON answer cut in half is invalid. Raise "
    "max_completion_length when the clipped share stays high.",
    "With beta > 0 the KL to the starting model should stay small (below ~0.1) while the reward rises; a KL running away "
    "with a flat reward is the policy drifting for nothing.",
)


def is_grpo_run(rows: list[dict]) -> bool:
    return any("frac_reward_zero_std" in row for row in rows)


def _expand(rows: list[dict], key: str) -> list[tuple[str, str]]:
    """(metric key, legend) pairs: a 'rewards/*/mean' pattern becomes one per reward label the rows carry."""
    if "*" not in key:
        return [(key, "")]
    head, tail = key.split("*")
    found = dict.fromkeys(k for row in rows for k in row if k.startswith(head) and k.endswith(tail) and len(k) > len(head) + len(tail))
    return [(k, k[len(head):-len(tail)]) for k in found]


def grpo_figures(rows: list[dict]) -> list[Any]:
    """A GRPO run's own curves: the weighted reward with its std band, each reward's mean and std, the share of groups with
    no signal, KL (beta > 0), completion lengths and the clipped shares. Only charts with data; other runs get none."""
    import plotly.graph_objects as go

    if not is_grpo_run(rows):
        return []
    train = [r for r in rows if "loss" in r]
    figures = []
    for title, series in GRPO_CHARTS:
        fig = go.Figure()
        for pattern, name in series:
            for key, label in _expand(train, pattern):
                x, y = metric_series(train, key)
                if x:
                    fig.add_trace(go.Scatter(x=x, y=y, name=name or label, mode="lines+markers"))
                if key == "reward" and x:
                    spread = dict(zip(*metric_series(train, "reward_std")))
                    xs = [s for s in x if s in spread]
                    mean = dict(zip(x, y))
                    for sign, label2 in ((1, "+ std"), (-1, "− std")):
                        fig.add_trace(go.Scatter(x=xs, y=[mean[s] + sign * spread[s] for s in xs], name=label2, mode="lines",
                                                 line=dict(dash="dot", width=1)))
        if fig.data:
            fig.update_layout(title=title, xaxis_title="step", height=260, margin=dict(l=10, r=10, t=40, b=10),
                              legend=dict(orientation="h"))
            figures.append(fig)
    return figures


def completions_table(run_dir: Path, step: int | None = None) -> list[dict]:
    """The sampled completions of a GRPO run's newest table step (or `step`) as display rows: each reward a column."""
    table = []
    for row in read_completions(run_dir, step):
        table.append({"step": row.get("step"), "prompt": row.get("prompt"), "completion": row.get("completion"),
                      "reward": row.get("reward"), **{k: v for k, v in (row.get("rewards") or {}).items()},
                      "advantage": row.get("advantage"), "errors": "; ".join(f"{k}: {v}" for k, v in (row.get("errors") or {}).items())})
    return table


@dataclass(frozen=True)
class GuideLine:
    case: str
    text: str
    applies: bool = False
    detail: str = ""  # what in this run's metrics matched, when it applies


READING_GUIDE: dict[str, str] = {
    "rewards_falling": "Both rewards falling while the margin grows is expected: the policy moves probability off both answers, "
                       "more off the rejected one.",
    "chosen_drift": "A rising margin with falling chosen log-probs is the drift the SFT mix (sft_weight) fixes: it keeps the "
                    "chosen answers likely while the margin grows.",
    "accuracy_saturated": "Accuracies stuck at 0 or 1 with tiny batches are a few pairs' verdicts per step: read the eval accuracy, "
                          "computed over the whole eval set.",
    "flat_margins": "Margins flat near 0: beta too small or the pairs too alike (chosen and rejected differ in a few tokens).",
}
FLAT_MARGIN = 0.05  # |margin| below this, late in a run, reads as flat
TINY_BATCH_PAIRS = 8  # pairs per optimizer step at or below which per-step accuracies are coarse
_TRAIN_DEFAULTS = {f.name: f.default for f in fields(TrainSpec) if f.name in ("objective", "method", "dataset")}
_GUIDE_DEFAULTS = {f.name: f.default for f in fields(TrainSpec) if f.name in ("sft_weight", "beta", "batch_size", "gradient_accumulation")}


def _ends(values: list[float]) -> tuple[float, float]:
    """Mean of the first and of the last third of a series (at least one point each)."""
    k = max(1, len(values) // 3)
    return sum(values[:k]) / k, sum(values[-k:]) / k


def _direction(values: list[float]) -> int:
    """+1 rising, -1 falling, 0 flat (a change within 1e-3 or 1 % of the larger end)."""
    if len(values) < 2:
        return 0
    first, last = _ends(values)
    if abs(last - first) <= max(1e-3, 0.01 * max(abs(first), abs(last))):
        return 0
    return 1 if last > first else -1


def _train_values(rows: list[dict], key: str) -> list[float]:
    return metric_series([r for r in rows if "loss" in r], key)[1]


def _moved(values: list[float]) -> str:
    return f"{values[0]:.3g} → {values[-1]:.3g}" if values else "—"


def reading_guide(rows: list[dict], spec: dict | None = None) -> list[GuideLine]:
    """The reading guide's lines, each marked when this run's metrics (train rows, first third vs last third) show it.
    spec (the run's spec dict, optional) sharpens the advice: sft_weight, beta, pairs per step."""
    spec = {**_GUIDE_DEFAULTS, **spec} if spec is not None else {}  # spec.yaml leaves out fields at their default
    chosen, rejected = _train_values(rows, "rewards/chosen"), _train_values(rows, "rewards/rejected")
    margins, chosen_logps = _train_values(rows, "rewards/margins"), _train_values(rows, "logps/chosen")
    accuracies = _train_values(rows, "rewards/accuracies")
    margin_up = _direction(margins) > 0
    lines = []

    both_fall = margin_up and _direction(chosen) < 0 and _direction(rejected) < 0
    lines.append(GuideLine("rewards_falling", READING_GUIDE["rewards_falling"], both_fall,
                           f"chosen {_moved(chosen)}, rejected {_moved(rejected)}, margin {_moved(margins)}" if both_fall else ""))

    drift = margin_up and _direction(chosen_logps) < 0
    detail = ""
    if drift:
        weight = float(spec.get("sft_weight") or 0.0)
        advice = f"raise sft_weight above {weight:g}" if weight > 0 else "set sft_weight (e.g. 0.5) on the next run"
        detail = f"chosen log-prob {_moved(chosen_logps)} while the margin went {_moved(margins)}: {advice}"
    lines.append(GuideLine("chosen_drift", READING_GUIDE["chosen_drift"], drift, detail))

    pairs_per_step = int(spec.get("batch_size") or 0) * int(spec.get("gradient_accumulation") or 1)
    recent = accuracies[-3:]
    saturated = (len(recent) >= 2 and all(v in (0.0, 1.0) for v in recent)
                 and (not pairs_per_step or pairs_per_step <= TINY_BATCH_PAIRS))
    detail = ""
    if saturated:
        whole = metric_series(rows, WHOLE_SET_ACCURACY)[1] or metric_series(rows, "eval_rewards/accuracies")[1]
        step_note = f" ({pairs_per_step} pairs per step)" if pairs_per_step else ""
        detail = (f"last train accuracies {', '.join(f'{v:g}' for v in recent)}{step_note}; "
                  + (f"eval accuracy over the whole eval set: {whole[-1]:.3f}" if whole else
                     "this run has no eval set: set eval_fraction to measure one"))
    lines.append(GuideLine("accuracy_saturated", READING_GUIDE["accuracy_saturated"], saturated, detail))

    total = next((int(r.get("total_steps") or 0) for r in rows if r.get("event") == "start"), 0)
    steps = metric_series([r for r in rows if "loss" in r], "rewards/margins")[0]
    late = bool(steps) and (not total or steps[-1] >= total / 4)
    flat = len(margins) >= 3 and late and abs(_ends(margins)[1]) < FLAT_MARGIN and not margin_up
    detail = ""
    if flat:
        beta = spec.get("beta")
        detail = (f"margin {_moved(margins)} after {steps[-1]} steps" + (f" with beta {beta:g}" if beta is not None else "")
                  + ": raise beta, or check on the Data page how far chosen and rejected differ")
    lines.append(GuideLine("flat_margins", READING_GUIDE["flat_margins"], flat, detail))
    return lines


def parent_run(spec: dict) -> str | None:
    """The run a training run continues (its init_adapter under this workspace's runs folder), for the page's link."""
    adapter = str(spec.get("init_adapter") or "").strip()
    if not adapter or "/" not in adapter:
        return adapter or None  # a run id as typed (TrainSpec turns it into the run's adapter path)
    return source_run_of(adapter)


FRESH_ADAPTER_LABEL = "a fresh adapter"
ADAPTER_PATH_LABEL = "Adapter folder path…"


def continue_choices(summaries: list) -> dict[str, str]:
    """Label -> run id of this workspace's succeeded training runs that saved an adapter (what "Continue from run …" offers)."""
    choices = {}
    for run in summaries:
        if run.status.state != "succeeded" or not (Path(run.path) / "adapter" / "adapter_config.json").is_file():
            continue
        spec = {**_TRAIN_DEFAULTS, **run.spec}  # spec.yaml leaves out fields at their default
        choices[f"{run.run_id} · {spec['objective']} · {spec['method']} · {Path(str(spec['dataset'])).name}"] = run.run_id
    return choices


def continue_preset(value: str, choices: dict[str, str]) -> str:
    """The "Continue from run …" label for an init_adapter value (a run id, its folder or adapter path, or another folder)."""
    value = str(value or "").strip()
    if not value:
        return FRESH_ADAPTER_LABEL
    run_id = parent_run({"init_adapter": value})
    return next((label for label, rid in choices.items() if rid == run_id), ADAPTER_PATH_LABEL)
