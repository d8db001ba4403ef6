"""report.json: per-model metrics with intervals, paired deltas, verdicts, per-example rows; Markdown / HTML export.

The job builds the report from raw per-example results (`ModelResult`); the page and the exports only read it.
"""
from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from typing import Any

from core.evaluate import stats
from core.evaluate.verdict import decide, preference_reason

REPORT_VERSION = 1
GENERAL_SCORE = "general_mc_acc_norm"

DEFINITIONS = {
    "task_score": "Task score (points, 0-100): for JSON answers the mean per-field score — categorical fields "
                  "exact after normalisation, free-text fields by ROUGE-L F1, 0 when the answer holds no JSON "
                  "object; for other answers ROUGE-L F1. Generated greedily from the held-out prompts.",
    "json_valid": "JSON validity (%): the whole answer is one JSON object (one ```json fence tolerated).",
    "general_score": "General score (points): accuracy on the general multiple-choice set, length-normalised "
                     "(acc_norm: the choice with the highest log-likelihood per character, as lm-evaluation-harness).",
    "perplexity": "Perplexity: exp(mean token NLL); task = the answer tokens training trains, general = every "
                  "token of the general texts. Changes are shown in percent: 100·(ppl_fine-tuned/ppl_base − 1).",
    "intervals": "95% percentile bootstrap intervals over examples; deltas use a paired bootstrap (same resampled "
                 "examples for both models).",
}

PREFERENCE_DEFINITION = ("Pair accuracy: share of held-out preference pairs where the model prefers the chosen answer — "
                         "log-prob: sum log p(chosen | prompt) > sum log p(rejected | prompt) over the answer tokens (per token: "
                         "the same per answer token, since DPO learns length); implicit reward: beta·[(log π − log π_ref)(chosen) − "
                         "(log π − log π_ref)(rejected)] > 0 with π_ref the model training started from. Ties count half.")


@dataclass(frozen=True)
class MetricDef:
    key: str
    label: str
    group: str  # "task" | "general"
    kind: str  # "points" (mean of per-example values × 100) | "perplexity"
    higher_is_better: bool = True


def metric_defs(task_fields: list[str], is_json: bool) -> list[MetricDef]:
    defs = [MetricDef("task_score", "Task score", "task", "points")]
    if is_json:
        defs.append(MetricDef("json_valid", "JSON validity", "task", "points"))
        defs += [MetricDef(f"field:{f}", f"Field “{f}”", "task", "points") for f in task_fields]
    defs += [
        MetricDef("exact_match", "Exact match", "task", "points"),
        MetricDef("rouge_l", "ROUGE-L F1", "task", "points"),
        MetricDef("task_perplexity", "Task perplexity (answer tokens)", "task", "perplexity", higher_is_better=False),
        MetricDef(GENERAL_SCORE, "General MC acc_norm (general score)", "general", "points"),
        MetricDef("general_mc_acc", "General MC acc", "general", "points"),
        MetricDef("general_perplexity", "General-text perplexity", "general", "perplexity", higher_is_better=False),
    ]
    return defs


@dataclass
class ModelResult:
    label: str
    role: str  # "base" | "variant"
    source: dict
    answers: list[str] = field(default_factory=list)
    task_rows: list[dict] = field(default_factory=list)
    task_nll: list[tuple[float, int]] = field(default_factory=list)
    text_nll: list[tuple[float, int]] = field(default_factory=list)
    mc: list[dict] = field(default_factory=list)  # {"logliks": [...], "acc": 0/1, "acc_norm": 0/1}
    step: int | None = None
    probe_difference: float | None = None
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of the worker process (all threads) while scoring this model
    stage_seconds: dict = field(default_factory=dict)  # wall seconds per stage (generate, task_loss, ...)

    def values(self, key: str) -> list[float] | None:
        if key == GENERAL_SCORE:
            return [m["acc_norm"] for m in self.mc]
        if key == "general_mc_acc":
            return [m["acc"] for m in self.mc]
        if self.task_rows and key in self.task_rows[0]:
            return [row.get(key, 0.0) for row in self.task_rows]
        return None

    def nll_rows(self, key: str) -> list[tuple[float, int]]:
        rows = self.task_nll if key == "task_perplexity" else self.text_nll
        return [r for r in rows if r[1] > 0]


def _interval_kwargs(resamples: int, seed: int) -> dict:
    return {"resamples": resamples, "seed": seed}


def summarise(result: ModelResult, defs: list[MetricDef], resamples: int, seed: int) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for d in defs:
        if d.kind == "perplexity":
            rows = result.nll_rows(d.key)
            if rows:
                out[d.key] = stats.perplexity_interval([r[0] for r in rows], [r[1] for r in rows],
                                                       **_interval_kwargs(resamples, seed)).as_dict()
            continue
        values = result.values(d.key)
        if values:
            out[d.key] = stats.mean_interval(values, **_interval_kwargs(resamples, seed)).scaled(100).as_dict()
    return out


def compare(base: ModelResult, other: ModelResult, defs: list[MetricDef], resamples: int, seed: int) -> dict[str, dict]:
    """Paired deltas other − base: points for score metrics, percent change for perplexities."""
    out: dict[str, dict] = {}
    for d in defs:
        if d.kind == "perplexity":
            a, b = (base.task_nll, other.task_nll) if d.key == "task_perplexity" else (base.text_nll, other.text_nll)
            pairs = [(x, y) for x, y in zip(a, b) if x[1] > 0 and y[1] > 0]
            if pairs:
                out[d.key] = stats.perplexity_change_interval(
                    [p[0][0] for p in pairs], [p[0][1] for p in pairs], [p[1][0] for p in pairs], [p[1][1] for p in pairs],
                    **_interval_kwargs(resamples, seed)).as_dict()
            continue
        a, b = base.values(d.key), other.values(d.key)
        if a and b and len(a) == len(b):
            out[d.key] = stats.paired_delta_interval(a, b, **_interval_kwargs(resamples, seed)).scaled(100).as_dict()
    return out


def _interval(data: dict | None) -> stats.Interval | None:
    return stats.Interval(**data) if data else None


def best_checkpoint(models: list[dict], verdicts: dict[str, str]) -> str | None:
    """The checkpoint variant with the highest task score among those the verdict does not call forgetting."""
    candidates = [(m["metrics"].get("task_score", {}).get("value", float("-inf")), m["label"]) for m in models
                  if m["role"] == "variant" and m.get("step") is not None and verdicts.get(m["label"]) not in (None, "forgetting")]
    return max(candidates)[1] if candidates else None


def build_report(*, spec: dict, task: dict, general: dict, results: list[ModelResult], examples: list[dict],
                 defs: list[MetricDef], wall_seconds: float, lm_eval: dict | None = None, notes: list[str] | None = None,
                 preference: dict | None = None) -> dict:
    resamples, seed = int(spec.get("bootstrap_samples", 1000)), int(spec.get("seed", 0))
    threshold = float(spec.get("forgetting_threshold", 3.0))
    ppl_threshold = float(spec.get("perplexity_threshold", 25.0))
    base = results[0]
    models = [{
        "label": r.label, "role": r.role, "source": r.source, "step": r.step, "seconds": round(r.seconds, 2),
        "cpu_seconds": round(r.cpu_seconds, 2), "stage_seconds": r.stage_seconds,
        "probe_difference": r.probe_difference, "metrics": summarise(r, defs, resamples, seed),
    } for r in results]
    comparisons = {r.label: compare(base, r, defs, resamples, seed) for r in results[1:]}

    def verdict_for(r: ModelResult, best: str | None) -> dict:
        deltas = comparisons[r.label]
        return decide(
            r.label, _interval(deltas.get("task_score")) or stats.Interval(0.0, 0.0, 0.0, 0),
            _interval(deltas.get(GENERAL_SCORE)), _interval(deltas.get("general_perplexity")),
            forgetting_threshold=threshold, perplexity_threshold=ppl_threshold, best_checkpoint=best,
        ).as_dict()

    first_pass = {r.label: verdict_for(r, None)["verdict"] for r in results[1:]}
    best = best_checkpoint(models, first_pass)
    verdicts = [verdict_for(r, best if best != r.label else None) for r in results[1:]]
    if preference:
        _add_preference(verdicts, preference)
    for row in examples:
        row["answers"] = {r.label: r.answers[row["position"]] for r in results}
        row["scores"] = {r.label: r.task_rows[row["position"]]["task_score"] for r in results}
    return {
        "version": REPORT_VERSION,
        "created_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "wall_seconds": round(wall_seconds, 1),
        "spec": spec,
        "definitions": {**DEFINITIONS, **({"pair_accuracy": PREFERENCE_DEFINITION} if preference else {})},
        "thresholds": {"forgetting_points": threshold, "perplexity_percent": ppl_threshold},
        "metrics": [{"key": d.key, "label": d.label, "group": d.group, "kind": d.kind, "higher_is_better": d.higher_is_better}
                    for d in defs],
        "task": task,
        "general": general,
        "models": models,
        "comparisons": comparisons,
        "verdicts": verdicts,
        "checkpoints": checkpoint_points(models),
        "examples": examples,
        "lm_eval": lm_eval or {"status": "not requested"},
        "notes": notes or [],
        **({"preference": preference} if preference else {}),
    }


def _add_preference(verdicts: list[dict], preference: dict) -> None:
    """Each variant's verdict gains its pair accuracy beside whether the task metrics and general ability held."""
    rows = {m["label"]: m for m in preference.get("models", [])}
    others = {label: row for label, row in rows.items() if row["role"] in ("base", "start")}
    for verdict in verdicts:
        row = rows.get(verdict["label"])
        if row is None:
            continue
        verdict["preference"] = preference_reason(verdict, row, others)
        verdict["reasons"].insert(1, verdict["preference"]["sentence"])


def checkpoint_points(models: list[dict]) -> list[dict]:
    """Task and general score per checkpoint (and the base as step 0), for the learning-vs-forgetting plot."""
    stepped = [m for m in models if m.get("step") is not None]
    if not stepped:
        return []
    base = next(m for m in models if m["role"] == "base")
    points = [{"label": base["label"], "step": 0, **_scores(base)}]
    points += [{"label": m["label"], "step": m["step"], **_scores(m)} for m in sorted(stepped, key=lambda m: m["step"])]
    return points


def _scores(model: dict) -> dict:
    metrics = model["metrics"]
    return {
        "task_score": metrics.get("task_score", {}).get("value"),
        "general_score": metrics.get(GENERAL_SCORE, {}).get("value"),
        "general_perplexity": metrics.get("general_perplexity", {}).get("value"),
    }


# ---------------------------------------------------------------- reading helpers for the page / exports


def top_changes(report: dict, label: str, n: int = 5) -> tuple[list[dict], list[dict]]:
    """(largest regressions, largest wins) of `label` against the base on the task, by per-example score."""
    base = report["models"][0]["label"]
    rows = []
    for ex in report.get("examples", []):
        if label in ex["scores"]:
            rows.append({**ex, "delta": ex["scores"][label] - ex["scores"][base]})
    regressions = sorted((r for r in rows if r["delta"] < 0), key=lambda r: r["delta"])[:n]
    wins = sorted((r for r in rows if r["delta"] > 0), key=lambda r: -r["delta"])[:n]
    return regressions, wins


def format_value(entry: dict | None, kind: str) -> str:
    if not entry:
        return "–"
    digits = 2 if kind == "perplexity" else 1
    text = f"{entry['value']:.{digits}f}"
    if entry["low"] != entry["high"]:
        text += f" [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"
    return text


def format_delta(entry: dict | None, kind: str) -> str:
    if not entry:
        return "–"
    unit = "%" if kind == "perplexity" else ""
    text = f"{entry['value']:+.1f}{unit}"
    if entry["low"] != entry["high"]:
        text += f" [{entry['low']:+.1f}, {entry['high']:+.1f}]"
    return text


def metric_table(report: dict) -> list[dict]:
    """Rows: metric, one column per model, one Δ column per variant (values with 95% intervals)."""
    rows = []
    for m in report["metrics"]:
        row = {"metric": m["label"]}
        for model in report["models"]:
            row[model["label"]] = format_value(model["metrics"].get(m["key"]), m["kind"])
        for label, deltas in report["comparisons"].items():
            row[f"Δ {label}"] = format_delta(deltas.get(m["key"]), m["kind"])
        if any(v != "–" for k, v in row.items() if k != "metric"):
            rows.append(row)
    return rows


def preference_table(report: dict) -> list[dict]:
    """The preference section as rows: per model the pair accuracies (points, 95% intervals), the implicit reward margin
    and accuracy against its reference, and the paired change of the log-prob accuracy."""
    section = report.get("preference") or {}
    rows = []
    for model in section.get("models", []):
        deltas = section.get("comparisons", {}).get(model["label"], {})
        rows.append({
            "model": model["label"],
            "pair acc (log-prob)": format_value(model["logprob_acc"], "points"),
            "pair acc (per token)": format_value(model["logprob_acc_norm"], "points"),
            "implicit reward acc": format_value(model.get("reward_acc"), "points"),
            "reward margin": format_value(model.get("reward_margin"), "perplexity"),
            "reference": model.get("reference", "–"),
            "Δ log-prob acc": "; ".join(f"vs {other} {format_delta(d, 'points')}" for other, d in deltas.items()) or "–",
        })
    return rows


def preference_lines(report: dict) -> list[str]:
    """The preference section's words: where the pairs come from, the win-rate note, the section's notes."""
    section = report.get("preference") or {}
    if not section:
        return []
    lines = [f"Pairs: {section['source']} ({section['n_pairs']} scored)." if section.get("n_pairs") else "No pairs scored."]
    lines.append(section["win_rate"]["note"])
    return lines + list(section.get("notes", []))


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_markdown(report: dict) -> str:
    name = report["spec"].get("name") or "evaluation"
    lines = [f"# Forgetting report — {name}", "",
             f"Generated {report['created_at']} · wall time {report['wall_seconds']:.0f} s · "
             f"{report['task']['n']} task rows, {report['general']['n_texts']} general texts, "
             f"{report['general']['n_mc']} multiple-choice items", ""]
    lines += ["## Verdict", ""]
    for v in report["verdicts"]:
        lines.append(f"**{v['headline']}**")
        lines += [f"- {reason}" for reason in v["reasons"]]
        lines += ["", "What to do:"] + [f"1. {a}" for a in v["advice"]] + [""]
    table = metric_table(report)
    if table:
        headers = list(table[0])
        lines += ["## Metrics (95% intervals in brackets)", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(row.get(h, "–") for h in headers) + " |" for row in table]
        lines.append("")
    if report.get("preference"):
        lines += ["## Preference (held-out pairs)", ""] + [f"- {line}" for line in preference_lines(report)] + [""]
        pref = preference_table(report)
        if pref:
            headers = list(pref[0])
            lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(row[h] for h in headers) + " |" for row in pref] + [""]
    if report.get("checkpoints"):
        lines += ["## Learning vs forgetting across checkpoints", "", "| checkpoint | step | task score | general score | general ppl |",
                  "|---|---|---|---|---|"]
        for p in report["checkpoints"]:
            lines.append(f"| {p['label']} | {p['step']} | {_num(p['task_score'])} | {_num(p['general_score'])} | "
                         f"{_num(p['general_perplexity'], 2)} |")
        lines.append("")
    for variant in report["comparisons"]:
        regressions, wins = top_changes(report, variant)
        for title, rows in ((f"Largest regressions — {variant}", regressions), (f"Largest wins — {variant}", wins)):
            if not rows:
                continue
            lines += [f"## {title}", "", "| row | prompt | base answer | fine-tuned answer | Δ score |", "|---|---|---|---|---|"]
            base = report["models"][0]["label"]
            for r in rows:
                cells = [str(r["row"]), _short(r["prompt"], 80), _short(r["answers"][base], 100), _short(r["answers"][variant], 100),
                         f"{100 * r['delta']:+.0f}"]
                lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
            lines.append("")
    lines += ["## Definitions", ""] + [f"- **{k}**: {v}" for k, v in report["definitions"].items()]
    lines += ["", "## Data", "", f"- Task: `{report['task']['source']}` ({report['task']['n']} of {report['task']['n_rows']} rows)",
              f"- General text: {report['general']['text_set']}", f"- General multiple choice: {report['general']['mc_set']}"]
    lm = report.get("lm_eval") or {}
    if lm.get("status") not in (None, "not requested"):
        lines += ["", "## lm-evaluation-harness", "", f"- {lm.get('status')}: {lm.get('note', '')}"]
    lines += [f"- note: {n}" for n in report.get("notes", [])]
    return "\n".join(lines) + "\n"


def _num(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2rem auto;padding:0 1rem;color:#222}"
        "table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}"
        "td,th{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top}"
        ".improved{border-left:6px solid #2e7d32}.forgetting{border-left:6px solid #c62828}.no-effect{border-left:6px solid #f9a825}"
        ".verdict{padding:.5rem 1rem;margin:1rem 0;background:#fafafa}")


def render_html(report: dict) -> str:
    e = html.escape
    name = report["spec"].get("name") or "evaluation"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Forgetting report — {e(name)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Forgetting report — {e(name)}</h1>",
             f"<p>Generated {e(report['created_at'])} · wall time {report['wall_seconds']:.0f} s</p>", "<h2>Verdict</h2>"]
    for v in report["verdicts"]:
        parts.append(f"<div class='verdict {v['verdict'].replace(' ', '-')}'><p><b>{e(v['headline'])}</b></p><ul>"
                     + "".join(f"<li>{e(r)}</li>" for r in v["reasons"]) + "</ul><p>What to do:</p><ol>"
                     + "".join(f"<li>{e(a)}</li>" for a in v["advice"]) + "</ol></div>")
    table = metric_table(report)
    if table:
        headers = list(table[0])
        parts.append("<h2>Metrics (95% intervals in brackets)</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(row.get(h, '–'))}</td>" for h in headers) + "</tr>" for row in table]
        parts.append("</table>")
    if report.get("preference"):
        parts.append("<h2>Preference (held-out pairs)</h2><ul>" + "".join(f"<li>{e(line)}</li>" for line in preference_lines(report))
                     + "</ul>")
        pref = preference_table(report)
        if pref:
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in pref[0]) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(v)}</td>" for v in row.values()) + "</tr>" for row in pref]
            parts.append("</table>")
    base = report["models"][0]["label"]
    for variant in report["comparisons"]:
        regressions, wins = top_changes(report, variant)
        for title, rows in ((f"Largest regressions — {variant}", regressions), (f"Largest wins — {variant}", wins)):
            if rows:
                parts.append(f"<h2>{e(title)}</h2><table><tr><th>row</th><th>prompt</th><th>reference</th><th>base answer</th>"
                             "<th>fine-tuned answer</th><th>Δ score</th></tr>")
                parts += [f"<tr><td>{r['row']}</td><td>{e(_short(r['prompt'], 200))}</td><td>{e(r['reference'])}</td>"
                          f"<td>{e(r['answers'][base])}</td><td>{e(r['answers'][variant])}</td><td>{100 * r['delta']:+.0f}</td></tr>"
                          for r in rows]
                parts.append("</table>")
    parts.append("<h2>Definitions</h2><ul>" + "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in report["definitions"].items())
                 + "</ul>")
    parts.append(f"<h2>Data</h2><ul><li>Task: {e(report['task']['source'])} ({report['task']['n']} rows)</li>"
                 f"<li>General text: {e(report['general']['text_set'])}</li>"
                 f"<li>General multiple choice: {e(report['general']['mc_set'])}</li></ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
