"""The RAFT evaluation, in the forgetting report's style: base + RAG, plain SFT + RAG and RAFT + RAG on held-out
questions, each under two conditions built like the RAFT training examples —

- **oracle + distractors**: the chunk that answers the question among k-1 distractors (position shuffled);
- **distractors only**: k distractors, the answer nowhere in the prompt.

Per reply (definitions also written into the report):

- **accuracy** — the reference answer appears, as whole words, in the reply's answer part (after the last
  `##Answer:` marker, or the whole reply when it has none);
- **quote from oracle** — the reply quotes a span between ##begin_quote## and ##end_quote## and its first
  quote is in the oracle chunk (verbatim up to case and spacing, or 80 % of its words in order);
- **abstention** — the answer part says the documents do not hold it ("not in the documents", ...).

Every model sees the same prompts, so differences are paired: 95 % paired bootstrap intervals over questions
(`core.evaluate.stats`). The verdict compares RAFT with each other model on oracle + distractors accuracy and
on distractors-only abstention.
"""
from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from core.evaluate.stats import mean_interval, paired_delta_interval
from core.rag.chunking import Chunk
from core.rag.prompt import abstained, answer_correct, quotes, rag_messages
from core.rag.questions import Question, gold_chunk_ids
from core.rag.raft import Retrieve, choose_distractors, find_verbatim

CONDITIONS = ("oracle", "distractors")
CONDITION_LABELS = {"oracle": "oracle + distractors", "distractors": "distractors only"}
METRICS = ("accuracy", "quote_from_oracle", "abstention")
METRIC_LABELS = {"accuracy": "accuracy", "quote_from_oracle": "quote from oracle", "abstention": "abstention"}
ROLES = ("base", "sft", "raft")
ROLE_LABELS = {"base": "base + RAG", "sft": "SFT + RAG", "raft": "RAFT + RAG"}
QUOTE_COVERAGE = 0.8
_WORDS = re.compile(r"\w+")

DEFINITIONS = {
    "oracle + distractors": "the chunk that answers the question among k-1 distractors, at a shuffled position (as in training)",
    "distractors only": "k distractor chunks; the answer is in none of them",
    "accuracy": "the reference answer appears, as whole words, after the reply's last ##Answer: marker (or anywhere in a reply "
                "without one)",
    "quote from oracle": "the reply's first ##begin_quote## ... ##end_quote## span is in the oracle chunk (verbatim up to case and "
                         f"spacing, or {QUOTE_COVERAGE:.0%} of its words in order); a reply without a quote scores 0",
    "abstention": "the answer part says the documents do not hold the answer ('not in the documents', 'not mentioned', ...)",
    "interval": "95% paired bootstrap interval over the held-out questions (the same prompts for every model)",
}


@dataclass(frozen=True)
class EvalItem:
    question: Question
    oracle: Chunk
    with_oracle: list[Chunk]  # the k documents of the oracle + distractors condition
    distractors_only: list[Chunk]

    def documents(self, condition: str) -> list[Chunk]:
        return self.with_oracle if condition == "oracle" else self.distractors_only


def eval_items(questions: Sequence[Question], chunks: Sequence[Chunk], k: int, rule: str, seed: int,
               retrieve: Retrieve | None = None) -> tuple[list[EvalItem], list[str]]:
    """The two prompts' documents for each held-out question (deterministic in `seed`), and the skipped ids."""
    rng = random.Random(f"{seed}-eval")
    by_id = {c.id: c for c in chunks}
    usable = [(q, g) for q in questions if (g := gold_chunk_ids(q, chunks))]
    skipped = [q.id for q in questions if q.id not in {u.id for u, _ in usable}]
    ranked = retrieve([q.question for q, _ in usable], k + 8) if rule == "hard" and usable else [[] for _ in usable]
    items = []
    for (q, gold), ranking in zip(usable, ranked):
        distractors = choose_distractors(q, set(gold), chunks, k, rule, rng, ranking)
        if len(distractors) < k:
            skipped.append(q.id)
            continue
        oracle = by_id[gold[0]]
        with_oracle = list(distractors[: k - 1])
        with_oracle.insert(rng.randrange(k), oracle)
        items.append(EvalItem(q, oracle, with_oracle, list(distractors)))
    return items, skipped


def conversations(items: Sequence[EvalItem], condition: str) -> list[list[dict]]:
    return [rag_messages(item.question.question, item.documents(condition)) for item in items]


def quote_in(quote: str, text: str) -> bool:
    if find_verbatim(text, quote):
        return True
    wanted, words = _WORDS.findall(quote.lower()), _WORDS.findall(text.lower())
    return bool(wanted) and _lcs(wanted, words) >= QUOTE_COVERAGE * len(wanted)


def _lcs(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def score_reply(reply: str, item: EvalItem) -> dict:
    cited = quotes(reply)
    return {
        "accuracy": answer_correct(reply, item.question.answer),
        "quote_from_oracle": float(bool(cited) and quote_in(cited[0], item.oracle.text)),
        "abstention": float(abstained(reply)),
    }


# ---------------------------------------------------------------- report


def _interval(values: Sequence[float], resamples: int, seed: int) -> dict:
    return mean_interval(values, resamples=resamples, seed=seed).scaled(100).as_dict()


def summarize(items: Sequence[EvalItem], replies: dict[str, dict[str, list[str]]], *, labels: dict[str, str] | None = None,
              resamples: int = 1000, seed: int = 0) -> dict:
    """Scores, intervals, paired deltas and the verdict from every model's replies: replies[role][condition][i]."""
    labels = {role: (labels or {}).get(role, ROLE_LABELS[role]) for role in replies}
    scores = {role: {c: [score_reply(r, item) for r, item in zip(replies[role][c], items)] for c in CONDITIONS} for role in replies}
    models = []
    for role in replies:
        summary = {c: {m: _interval([s[m] for s in scores[role][c]], resamples, seed) for m in METRICS} for c in CONDITIONS}
        models.append({"role": role, "label": labels[role], "metrics": summary})
    comparisons = {}
    if "raft" in replies:
        for other in (r for r in ("base", "sft") if r in replies):
            comparisons[f"raft-vs-{other}"] = _deltas(scores["raft"], scores[other], resamples, seed) | {"a": "raft", "b": other}
    if "sft" in replies and "base" in replies:
        comparisons["sft-vs-base"] = _deltas(scores["sft"], scores["base"], resamples, seed) | {"a": "sft", "b": "base"}
    examples = []
    for i, item in enumerate(items):
        examples.append({"question_id": item.question.id, "question": item.question.question, "reference": item.question.answer,
                         "oracle_chunk_id": item.oracle.id,
                         "replies": {role: {c: replies[role][c][i] for c in CONDITIONS} for role in replies},
                         "scores": {role: {c: scores[role][c][i] for c in CONDITIONS} for role in replies}})
    return {"n": len(items), "models": models, "comparisons": comparisons, "verdict": verdict(comparisons, labels),
            "definitions": DEFINITIONS, "examples": examples}


def _deltas(a: dict[str, list[dict]], b: dict[str, list[dict]], resamples: int, seed: int) -> dict:
    """a - b for each condition and metric, in points, with paired intervals."""
    return {c: {m: paired_delta_interval([s[m] for s in b[c]], [s[m] for s in a[c]], resamples=resamples, seed=seed).scaled(100).as_dict()
                for m in METRICS} for c in CONDITIONS}


def _fmt(interval: dict) -> str:
    if interval["low"] == interval["high"]:
        return f"{interval['value']:+.0f} points"
    return f"{interval['value']:+.0f} points (95% CI {interval['low']:+.0f} to {interval['high']:+.0f})"


VERDICT_ADVICE = {
    "better": ["Use the RAFT adapter behind the same retriever; re-run this report when the documents change a lot.",
               "Check the replies on the Chat page: the quotes should read as the documents do."],
    "no clear difference": ["Evaluate more held-out questions (a small sample gives wide intervals).",
                            "Train the RAFT set longer, or with more examples per document (questions generated per chunk).",
                            "Check on the Template page that only the cite-then-answer turn is trained."],
    "worse": ["Lower the share of distractor-only examples (P) if RAFT abstains where the oracle is present.",
              "Use hard negatives from retrieval so training matches what the retriever returns.",
              "Check the training loss: a run that stopped early can leave the model between formats."],
}


def verdict(comparisons: dict, labels: dict[str, str]) -> dict:
    """RAFT vs each other model. In order: **worse** when its oracle + distractors accuracy is measurably below
    one of them; **better** when that accuracy is measurably above every one of them and its distractors-only
    abstention is not measurably below any; **no clear difference** otherwise."""
    raft = [(key, comp) for key, comp in comparisons.items() if comp["a"] == "raft"]
    if not raft:
        return {"verdict": "not compared", "headline": "No RAFT model in this evaluation: nothing to compare.", "reasons": [], "advice": []}
    reasons, worse, better = [], False, True
    for _, comp in raft:
        other = labels[comp["b"]]
        acc, abst = comp["oracle"]["accuracy"], comp["distractors"]["abstention"]
        reasons.append(f"vs {other}: oracle + distractors accuracy {_fmt(acc)}; distractors-only abstention {_fmt(abst)}")
        worse |= acc["high"] < 0
        better &= acc["low"] > 0 and abst["high"] >= 0
    label = "worse" if worse else "better" if better else "no clear difference"
    others = " and ".join(labels[c["b"]] for _, c in raft)
    headline = {"better": f"RAFT reads the documents better than {others}.",
                "worse": f"RAFT answers worse than {others} with the oracle present.",
                "no clear difference": f"RAFT is not measurably better than {others}."}[label]
    return {"verdict": label, "headline": headline, "reasons": reasons, "advice": VERDICT_ADVICE[label]}


def report_table(report: dict) -> list[dict]:
    """One row per model and condition: each metric as "value% [low, high]"."""
    return [{"model": model["label"], "condition": CONDITION_LABELS[c],
             **{METRIC_LABELS[m]: _cell(model["metrics"][c][m]) for m in METRICS}}
            for model in report["models"] for c in CONDITIONS]


def delta_table(report: dict) -> list[dict]:
    """One row per comparison and condition: paired differences in points with their 95% intervals."""
    names = {m["role"]: m["label"] for m in report["models"]}
    return [{"comparison": f"{names[comp['a']]} − {names[comp['b']]}", "condition": CONDITION_LABELS[c],
             **{f"Δ {METRIC_LABELS[m]}": _delta_cell(comp[c][m]) for m in METRICS}}
            for comp in report["comparisons"].values() for c in CONDITIONS]


def _delta_cell(interval: dict) -> str:
    return f"{interval['value']:+.0f} [{interval['low']:+.0f}, {interval['high']:+.0f}]"


def render_markdown(report: dict) -> str:
    lines = [f"# RAFT evaluation — {report['verdict']['headline']}", "",
             f"{report['n']} held-out questions · k = {report['settings']['k']} documents · distractors: "
             f"{report['settings']['distractors']}", "",
             "| model | condition | accuracy | quote from oracle | abstention |", "|---|---|---|---|---|"]
    for model in report["models"]:
        for condition in CONDITIONS:
            cells = [_cell(model["metrics"][condition][m]) for m in METRICS]
            lines.append(f"| {model['label']} | {CONDITION_LABELS[condition]} | " + " | ".join(cells) + " |")
    if report["comparisons"]:
        lines += ["", "| comparison | condition | " + " | ".join(f"Δ {METRIC_LABELS[m]}" for m in METRICS) + " |", "|---|---|---|---|---|"]
        lines += [f"| {row['comparison']} | {row['condition']} | " + " | ".join(row[f"Δ {METRIC_LABELS[m]}"] for m in METRICS) + " |"
                  for row in delta_table(report)]
    lines += ["", f"**Verdict: {report['verdict']['verdict']}**", ""] + [f"- {r}" for r in report["verdict"]["reasons"]]
    lines += ["", "## Definitions", ""] + [f"- **{k}**: {v}" for k, v in report["definitions"].items()]
    return "\n".join(lines) + "\n"


def _cell(interval: dict) -> str:
    return f"{interval['value']:.0f}% [{interval['low']:.0f}, {interval['high']:.0f}]"
