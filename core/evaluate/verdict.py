"""The forgetting verdict: the task must improve and the general score must not drop by more than the threshold.

Definitions (also written into every report):

- task delta: fine-tuned − base task score, in points (0-100), with a paired 95% bootstrap interval;
- general delta: fine-tuned − base general score = multiple-choice acc_norm in percentage points;
- perplexity change: 100 · (ppl_fine-tuned / ppl_base − 1) on the general text set, in percent.

Verdict, in this order:

1. **forgetting** — general delta < −forgetting_threshold points, or perplexity change > perplexity_threshold %;
2. **improved** — the task delta's interval lies above zero (no interval: the delta itself is above zero);
3. **no effect** — otherwise (the task did not measurably improve, or got worse).

With a preference section (pairs), each verdict also says, next to the variant's held-out pair accuracy, whether the
task metrics held (the task delta is not measurably below zero) and whether general ability held (no forgetting).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from core.evaluate.stats import Interval

VERDICTS = ("improved", "no effect", "forgetting")

FORGETTING_ADVICE = [
    "Lower the learning rate (halve it) so each step moves the weights less.",
    "Use a smaller LoRA rank (or fewer target modules): less capacity to overwrite general behaviour.",
    "Train fewer epochs / steps: forgetting grows with training past the point where the task is learned.",
    "Mix general data back in (replay): 10-25% general instruction rows alongside the task rows (replay_fraction).",
    "Use an earlier checkpoint: evaluate the run's checkpoints (checkpoints_of) and keep the best trade-off.",
]
NO_EFFECT_ADVICE = [
    "Check on the Template page that the answer tokens are trained (label ≠ -100), including the end-of-turn marker.",
    "Train longer or with a higher learning rate: the loss curve should still be falling when training stops.",
    "Check that the evaluation rows have the same format (system prompt, template) as the training rows.",
    "Evaluate more task rows (task_samples): a small sample gives a wide interval that can hide a real gain.",
]
REPLAY_FRACTION = 0.2
# One-click versions of the advice: the spec fields to change when the same run is trained again.
FORGETTING_ACTIONS = [
    {"label": f"Retrain with {REPLAY_FRACTION:.0%} general data mixed in (replay)", "spec_updates": {"replay_fraction": REPLAY_FRACTION}},
]
IMPROVED_ADVICE = [
    "Compare answers side by side on the Chat page before shipping.",
    "Merge the adapter into the base model (Merge page) for deployment, then re-run this report on the merged model.",
]


@dataclass
class Verdict:
    label: str
    verdict: str
    headline: str
    task_delta: dict | None
    general_delta: dict | None
    perplexity_change: dict | None
    reasons: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    actions: list[dict] = field(default_factory=list)  # {"label", "spec_updates"}: advice a page can apply in one click

    def as_dict(self) -> dict:
        return asdict(self)


def _fmt(interval: Interval, unit: str) -> str:
    if interval.low == interval.high == interval.value:
        return f"{interval.value:+.1f}{unit}"
    return f"{interval.value:+.1f}{unit} (95% CI {interval.low:+.1f} to {interval.high:+.1f})"


def decide(
    label: str,
    task_delta: Interval,
    general_delta: Interval | None,
    perplexity_change: Interval | None,
    *,
    forgetting_threshold: float = 3.0,
    perplexity_threshold: float = 25.0,
    best_checkpoint: str | None = None,
) -> Verdict:
    reasons: list[str] = []
    forgetting = False
    if general_delta is not None and general_delta.value < -forgetting_threshold:
        forgetting = True
        sure = "" if general_delta.high < 0 else " — the interval still includes no change: evaluate more items to be sure"
        reasons.append(f"general score dropped {_fmt(general_delta, ' points')}, more than the {forgetting_threshold:g}-point limit{sure}")
    if perplexity_change is not None and perplexity_change.value > perplexity_threshold:
        forgetting = True
        reasons.append(f"general-text perplexity rose {_fmt(perplexity_change, '%')}, more than the {perplexity_threshold:g}% limit")
    task_gain = task_delta.low > 0 if task_delta.low != task_delta.high else task_delta.value > 0
    task_text = f"task score {_fmt(task_delta, ' points')}"
    if forgetting:
        verdict = "forgetting"
        headline = f"{label}: forgetting — {task_text}, but the general ability dropped past the limit."
        advice = list(FORGETTING_ADVICE)
        if best_checkpoint:
            advice.insert(0, f"Checkpoint {best_checkpoint} had the best task score without forgetting: start from it.")
    elif task_gain:
        verdict = "improved"
        headline = f"{label}: improved — {task_text}, general ability held."
        advice = list(IMPROVED_ADVICE)
    else:
        verdict = "no effect"
        worse = task_delta.high < 0
        headline = f"{label}: no effect — {task_text}" + (" (worse than the base)." if worse
                                                            else "; the gain is not distinguishable from zero.")
        advice = list(NO_EFFECT_ADVICE)
    if not forgetting:
        if general_delta is not None:
            reasons.append(f"general score {_fmt(general_delta, ' points')} (limit −{forgetting_threshold:g})")
        if perplexity_change is not None:
            reasons.append(f"general-text perplexity {_fmt(perplexity_change, '%')} (limit +{perplexity_threshold:g}%)")
    reasons.insert(0, task_text)
    return Verdict(
        label=label,
        verdict=verdict,
        headline=headline,
        task_delta=task_delta.as_dict(),
        general_delta=general_delta.as_dict() if general_delta else None,
        perplexity_change=perplexity_change.as_dict() if perplexity_change else None,
        reasons=reasons,
        advice=advice,
        actions=[dict(a) for a in FORGETTING_ACTIONS] if forgetting else [],
    )


def _pct(entry: dict | None) -> str:
    if not entry:
        return "–"
    text = f"{entry['value']:.0f}%"
    return text if entry["low"] == entry["high"] else f"{text} (95% CI {entry['low']:.0f} to {entry['high']:.0f})"


def preference_reason(verdict: dict, row: dict, others: dict[str, dict]) -> dict:
    """The preference sentence of one variant's verdict: its pair accuracy (log-prob, and implicit reward vs its
    reference) beside the base's / start's, and whether the task metrics and general ability held.
    row / others: preference-section model rows (others by label: "base", a start)."""
    task = verdict.get("task_delta") or {}
    task_held = (task.get("high", 0.0) >= 0) if task.get("low") != task.get("high") else task.get("value", 0.0) >= 0
    general_held = verdict["verdict"] != "forgetting"
    compared = ", ".join(f"{label} {other['logprob_acc']['value']:.0f}%" for label, other in others.items())
    sentence = (f"preference pairs: the chosen answer is preferred (log-prob) in {_pct(row['logprob_acc'])} of {row['logprob_acc']['n']} "
                f"held-out pairs" + (f" ({compared})" if compared else ""))
    if row.get("reward_acc"):
        sentence += f"; implicit reward accuracy {_pct(row['reward_acc'])} vs {row['reference']}"
    sentence += (f" — task metrics {'held' if task_held else 'dropped'}, general ability "
                 f"{'held' if general_held else 'dropped past the limit'}")
    return {"sentence": sentence, "task_held": task_held, "general_held": general_held,
            "logprob_acc": row["logprob_acc"], "reward_acc": row.get("reward_acc")}
