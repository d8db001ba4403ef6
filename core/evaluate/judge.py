"""A pairwise judge (issue 28, item 3): a local model compares two answers to one prompt, in both orders.

- The rubric is text with `{prompt}`, `{answer_a}` and `{answer_b}` slots: the shipped one is assets/judge/rubric.md
  (`DEFAULT_RUBRIC`); a user's edited copy travels in the judge run's spec and result.
- The judge is any model the workbench loads: a torch `core.models.LoadedModel`, or a GGUF held by llama.cpp
  (`core.llamacpp.LlamaCppModel`); both answer through `core.generation` (greedy), so there is no second generation path.
- The verdict is parsed strictly (`parse_verdict`): the reply's first non-empty line must be A, B or tie (case, a
  `Verdict:` / `Answer:` prefix, `[[ ]]`, `**`, quotes and a final full stop aside); anything else is *unparsed* and counted.
- Each pair is judged twice, A first and then B first (`combine_orders`): the same winner both times is the verdict,
  two different verdicts are a tie (the judge followed the position, not the answers), an unparsed reply leaves the
  pair unparsed (left out of the win rate, counted). Position bias = the share of pairs judged in both orders where the
  judge picked the same *slot* both times (first both times, or second both times).
- `judge_pair` judges ONE pair (the Chat arena's "ask the judge too"); `judge_pairs` many (the `judge` job, batched);
  `summarise` makes wins / losses / ties, the win rate with a bootstrap interval and the bias; `agreement` compares
  the judge with human votes on the same pairs (Cohen's kappa on A / B / tie, Kendall tau on per-model strengths).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from core.evaluate import stats
from core.generation import GenerationSettings, Stopped, generate_text, greedy_chat_answers
from core.llamacpp import LlamaCppModel
from core.workspace import REPO_ROOT

RUBRIC_FILE = REPO_ROOT / "assets" / "judge" / "rubric.md"
RUBRIC_SLOTS = ("{prompt}", "{answer_a}", "{answer_b}")
VERDICTS = ("A", "B", "tie")
VERDICT_TOKENS = 8  # enough for "tie" or "[[A]]" and a little slack; a longer reply is cut, and its first line still counts
_SLOT = re.compile(r"\{(prompt|answer_a|answer_b)\}")
_PREFIX = re.compile(r"^(?:final\s+)?(?:verdict|answer|winner|decision)\s*[:\-]\s*", re.IGNORECASE)


def _read_rubric() -> str:
    try:
        return RUBRIC_FILE.read_text(encoding="utf-8")
    except OSError:  # a source tree without assets: the same text, shipped in code
        return ("Request:\n{prompt}\n\nAnswer A:\n{answer_a}\n\nAnswer B:\n{answer_b}\n\n"
                "Which answer follows the request better? Reply with exactly one word: A, B or tie.\n")


DEFAULT_RUBRIC = _read_rubric()


def check_rubric(rubric: str) -> str:
    """The rubric, refused with a message naming the missing slot(s) when it cannot show the pair."""
    text = str(rubric or "")
    missing = [slot for slot in RUBRIC_SLOTS if slot not in text]
    if missing:
        raise ValueError(f"rubric: it must contain {', '.join(RUBRIC_SLOTS)} (missing {', '.join(missing)})")
    return text


def render_prompt(prompt: str | Sequence[dict]) -> str:
    """The request as the judge reads it: a string as is; a conversation (before the answer) as its turns' text
    (the system prompt included: it often says what format was asked for)."""
    if isinstance(prompt, str):
        return prompt.strip()
    turns = [m for m in prompt if str(m.get("content") or "").strip()]
    if all(m.get("role") in ("system", "user") for m in turns) and sum(m.get("role") == "user" for m in turns) <= 1:
        return "\n\n".join(str(m["content"]).strip() for m in turns)
    return "\n".join(f"{m.get('role', 'user')}: {str(m['content']).strip()}" for m in turns)


def judge_messages(prompt: str | Sequence[dict], answer_a: str, answer_b: str, rubric: str = DEFAULT_RUBRIC) -> list[dict]:
    """The conversation the judge answers: the rubric with the pair filled in, as one user turn. The slots are
    replaced literally (answers full of braces are safe)."""
    values = {"prompt": render_prompt(prompt), "answer_a": str(answer_a), "answer_b": str(answer_b)}
    text = _SLOT.sub(lambda match: values[match.group(1)], check_rubric(rubric))  # one pass: a slot inside an answer stays text
    return [{"role": "user", "content": text}]


def parse_verdict(reply: str) -> str | None:
    """"A", "B" or "tie" from the judge's reply, strictly; None (unparsed) for anything else.

    The first non-empty line counts, stripped of a `Verdict:` / `Answer:` / `Winner:` prefix, `[[ ]]`, `**`, quotes,
    brackets and a final full stop; it must then be exactly A, B or tie (any case). "A is better", "Both" or
    "A or B" are unparsed: a judge that cannot say one word is not trusted to have said it."""
    lines = [line.strip() for line in str(reply or "").splitlines() if line.strip()]
    if not lines:
        return None
    word = _PREFIX.sub("", lines[0]).strip()
    for _ in range(3):
        word = word.strip(" \t*_`'\"“”‘’").rstrip(".!").strip()
        if word.startswith("[[") and word.endswith("]]"):
            word = word[2:-2]
        elif word[:1] in "([{" and word[-1:] in ")]}" and len(word) >= 2:
            word = word[1:-1]
    word = _PREFIX.sub("", word).strip().lower()
    return {"a": "A", "b": "B", "tie": "tie"}.get(word)


def swap(verdict: str | None) -> str | None:
    """A verdict read with the answers shown in the other order, in the original labels."""
    return {"A": "B", "B": "A"}.get(verdict, verdict) if verdict else None


@dataclass(frozen=True)
class PairVerdict:
    """One pair judged in both orders. `first` / `second` are what the judge said, in the labels it was shown
    (second: B was shown as A); `verdict` is in the caller's labels: A = answer_a better."""

    verdict: str | None  # "A" | "B" | "tie" | None (unparsed)
    first: str | None  # answer_a shown first
    second: str | None  # answer_b shown first (raw slot: "A" here means answer_b)
    first_reply: str = ""
    second_reply: str = ""

    @property
    def parsed(self) -> bool:
        return self.verdict is not None

    @property
    def consistent(self) -> bool | None:
        """Both orders gave the same winner (None when a reply was unparsed)."""
        if self.first is None or self.second is None:
            return None
        return self.first == swap(self.second)

    @property
    def follows_position(self) -> bool | None:
        """The judge picked the same slot both times (first twice, or second twice); None when a reply was unparsed."""
        if self.first is None or self.second is None:
            return None
        return self.first == self.second and self.first in ("A", "B")

    def as_dict(self) -> dict:
        return {**asdict(self), "consistent": self.consistent, "follows_position": self.follows_position}


def combine_orders(first: str | None, second: str | None, first_reply: str = "", second_reply: str = "") -> PairVerdict:
    """The both-orders rule: the same winner in both orders wins; two different parsed verdicts are a tie; an
    unparsed reply in either order leaves the pair unparsed."""
    if first is None or second is None:
        verdict = None
    else:
        back = swap(second)
        verdict = first if first == back else "tie"
    return PairVerdict(verdict, first, second, first_reply, second_reply)


# ---------------------------------------------------------------- asking a model


def is_llamacpp(judge_model: Any) -> bool:
    return isinstance(judge_model, LlamaCppModel)


def ask(judge_model: Any, conversations: Sequence[Sequence[dict]], *, max_new_tokens: int = VERDICT_TOKENS, batch_size: int = 8,
        should_stop: Callable[[], bool] | None = None, on_progress: Callable[[int], None] | None = None) -> list[str]:
    """The judge's greedy replies to conversations: a torch model in batches (`core.generation.greedy_chat_answers`),
    a llama.cpp model one by one (`core.generation.generate_text`)."""
    if not is_llamacpp(judge_model):
        return greedy_chat_answers(judge_model, conversations, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   should_stop=should_stop, on_progress=on_progress)
    settings = GenerationSettings(temperature=0.0, max_new_tokens=max_new_tokens)
    replies = []
    for messages in conversations:
        if should_stop is not None and should_stop():
            raise Stopped()
        replies.append(generate_text(judge_model, list(messages), settings))
        if on_progress:
            on_progress(1)
    return replies


def judge_pair(judge_model: Any, prompt: str | Sequence[dict], answer_a: str, answer_b: str, rubric: str = DEFAULT_RUBRIC, *,
               max_new_tokens: int = VERDICT_TOKENS) -> PairVerdict:
    """Judge ONE pair in both orders with a loaded model and return its PairVerdict.

    judge_model: a `core.models.LoadedModel` (torch; e.g. `load_model(ModelSource())`) or a `core.llamacpp.LlamaCppModel`
    (a GGUF, e.g. `load_chat_model(path)`): the objects the Chat page already holds. prompt: the user's request (a string,
    or the conversation before the answers). rubric: text with {prompt}, {answer_a}, {answer_b} (default: the shipped
    assets/judge/rubric.md). Greedy decoding, `max_new_tokens` per reply.

    Returns PairVerdict: `.verdict` is "A" (answer_a better), "B", "tie" (said so, or the two orders disagreed) or None
    (a reply was not exactly A / B / tie); `.first` / `.second` and the raw replies show both orders. Raises ValueError
    for a rubric without its slots."""
    conversations = [judge_messages(prompt, answer_a, answer_b, rubric), judge_messages(prompt, answer_b, answer_a, rubric)]
    first_reply, second_reply = ask(judge_model, conversations, max_new_tokens=max_new_tokens, batch_size=2)
    return combine_orders(parse_verdict(first_reply), parse_verdict(second_reply), first_reply, second_reply)


def judge_pairs(judge_model: Any, pairs: Sequence[tuple[Any, str, str]], rubric: str = DEFAULT_RUBRIC, *,
                max_new_tokens: int = VERDICT_TOKENS, batch_size: int = 8, should_stop: Callable[[], bool] | None = None,
                on_progress: Callable[[int], None] | None = None) -> list[PairVerdict]:
    """`judge_pair` for many (prompt, answer_a, answer_b) at once: both orders of every pair in batches."""
    conversations = [judge_messages(p, a, b, rubric) for p, a, b in pairs] + [judge_messages(p, b, a, rubric) for p, a, b in pairs]
    replies = ask(judge_model, conversations, max_new_tokens=max_new_tokens, batch_size=batch_size, should_stop=should_stop,
                  on_progress=on_progress)
    n = len(pairs)
    return [combine_orders(parse_verdict(replies[k]), parse_verdict(replies[n + k]), replies[k], replies[n + k]) for k in range(n)]


# ---------------------------------------------------------------- aggregation

SCORE = {"A": 1.0, "tie": 0.5, "B": 0.0}


@dataclass
class JudgeSummary:
    n_pairs: int
    wins: int  # A (the first model) judged better in both orders
    losses: int
    ties: int  # said tie, or inconsistent across the orders
    inconsistent: int  # of the ties: the two orders disagreed
    unparsed: int  # a reply that was not exactly A / B / tie: left out of the win rate
    unparsed_replies: int
    win_rate: dict | None  # (wins + ties / 2) / judged, with its bootstrap interval; None when nothing was judged
    position_bias: float | None  # share of pairs with both replies parsed where the judge picked the same slot twice
    first_slot_rate: float | None  # share of parsed A / B replies naming the answer shown first (0.5 = no lean)
    both_parsed: int
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def summarise(verdicts: Sequence[PairVerdict], *, resamples: int = stats.DEFAULT_RESAMPLES, seed: int = 0) -> JudgeSummary:
    """Wins / losses / ties of answer_a over answer_b, the win rate with a paired bootstrap interval over pairs, and
    the position bias."""
    judged = [v for v in verdicts if v.parsed]
    wins = sum(v.verdict == "A" for v in judged)
    losses = sum(v.verdict == "B" for v in judged)
    ties = sum(v.verdict == "tie" for v in judged)
    inconsistent = sum(v.consistent is False for v in judged)
    both = [v for v in verdicts if v.follows_position is not None]
    slots = [r for v in verdicts for r in (v.first, v.second) if r in ("A", "B")]
    win_rate = None
    if judged:
        win_rate = stats.mean_interval([SCORE[v.verdict] for v in judged], resamples=resamples, seed=seed).as_dict()
    notes = []
    unparsed = len(verdicts) - len(judged)
    if unparsed:
        notes.append(f"{unparsed} of {len(verdicts)} pairs had a reply that was not exactly A, B or tie: left out of the win rate")
    bias = sum(bool(v.follows_position) for v in both) / len(both) if both else None
    if bias is not None and bias >= 0.5:
        notes.append(f"the judge picked the same slot in both orders for {bias:.0%} of pairs: its verdicts follow the position "
                     "more than the answers (those pairs count as ties)")
    return JudgeSummary(
        n_pairs=len(verdicts), wins=wins, losses=losses, ties=ties, inconsistent=inconsistent, unparsed=unparsed,
        unparsed_replies=sum(r is None for v in verdicts for r in (v.first, v.second)), win_rate=win_rate, position_bias=bias,
        first_slot_rate=sum(r == "A" for r in slots) / len(slots) if slots else None, both_parsed=len(both), notes=notes)


# ---------------------------------------------------------------- agreement with people


def cohen_kappa(first: Sequence[str], second: Sequence[str], categories: Sequence[str] = VERDICTS) -> float | None:
    """Cohen's kappa of two raters' labels on the same items: (p_o - p_e) / (1 - p_e); None when it is undefined
    (no items, or both raters used one and the same label throughout, so chance agreement is 1)."""
    if len(first) != len(second):
        raise ValueError(f"kappa needs the same items rated twice: {len(first)} vs {len(second)} labels")
    n = len(first)
    if not n:
        return None
    observed = sum(a == b for a, b in zip(first, second)) / n
    expected = sum((list(first).count(c) / n) * (list(second).count(c) / n) for c in categories)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b of two score lists over the same items (scipy.stats.kendalltau); None when undefined
    (fewer than two items, or one list constant)."""
    if len(x) != len(y):
        raise ValueError(f"tau needs the same items ranked twice: {len(x)} vs {len(y)} scores")
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    from scipy.stats import kendalltau

    tau = float(kendalltau(list(x), list(y)).statistic)
    return None if math.isnan(tau) else tau


def strengths(outcomes: Iterable[tuple[str, str, str]]) -> dict[str, float]:
    """Per-model strength from (model_a, model_b, verdict) games: the mean score over its games (win 1, tie 0.5)."""
    total: dict[str, float] = {}
    games: dict[str, int] = {}
    for model_a, model_b, verdict in outcomes:
        score = SCORE[verdict]
        for model, value in ((model_a, score), (model_b, 1.0 - score)):
            total[model] = total.get(model, 0.0) + value
            games[model] = games.get(model, 0) + 1
    return {model: total[model] / games[model] for model in total}


def agreement(rows: Sequence[dict]) -> dict:
    """Judge vs human on the same pairs. rows: {model_a, model_b, judge, human} with judge / human in A / B / tie
    (judge None = unparsed: left out). Cohen's kappa on the labels, the raw agreement, the confusion counts, and
    Kendall's tau between the judge's and the humans' per-model strengths (meaningful from three models on)."""
    both = [r for r in rows if r.get("judge") in VERDICTS and r.get("human") in VERDICTS]
    judge_labels, human_labels = [r["judge"] for r in both], [r["human"] for r in both]
    judge_strength = strengths((r["model_a"], r["model_b"], r["judge"]) for r in both)
    human_strength = strengths((r["model_a"], r["model_b"], r["human"]) for r in both)
    models = sorted(set(judge_strength) & set(human_strength))
    notes = []
    if len(models) < 3:
        notes.append(f"Kendall's tau over {len(models)} model(s): with fewer than three it only says whether the order of two agrees")
    return {
        "n_pairs": len(both),
        "kappa": cohen_kappa(judge_labels, human_labels),
        "raw_agreement": sum(a == b for a, b in zip(judge_labels, human_labels)) / len(both) if both else None,
        "confusion": {f"judge {j} / human {h}": sum(r["judge"] == j and r["human"] == h for r in both) for j in VERDICTS for h in VERDICTS},
        "models": models,
        "judge_strengths": {m: judge_strength[m] for m in models},
        "human_strengths": {m: human_strength[m] for m in models},
        "kendall_tau": kendall_tau([judge_strength[m] for m in models], [human_strength[m] for m in models]),
        "notes": notes,
    }


# ---------------------------------------------------------------- human votes (the Chat arena's vote files)

VOTE_TIES = ("tie", "both_bad", "both bad", "both-bad", "bad")


def _text(value: Any) -> str:
    """An answer or prompt as text: a string, or a conversation's last assistant (else last) turn."""
    if isinstance(value, list):
        turns = [m for m in value if isinstance(m, dict)]
        answers = [m for m in turns if m.get("role") == "assistant"] or turns
        return str(answers[-1].get("content") or "") if answers else ""
    return "" if value is None else str(value)


def _normal(text: str) -> str:
    return " ".join(str(text).split())


def prompt_key(prompt: Any) -> str:
    """What a pair's prompt is matched on: the last user turn of a conversation (a string as is), whitespace collapsed."""
    if isinstance(prompt, list):
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        prompt = users[-1].get("content") if users else _text(prompt)
    return _normal(prompt)


def read_votes(path: str | Path) -> list[dict]:
    """Human votes from a vote file (JSON lines) or a folder of them (every *.jsonl in it): one dict per vote with
    prompt, answers (a, b), models (model_a, model_b) and human (A = a better, or tie). A pair row (prompt / chosen /
    rejected / chosen_model / rejected_model) is a win of `chosen`; a row whose vote / outcome is tie or both-bad is a
    tie (both-bad counts as a tie for agreement: neither answer was preferred). Rows without a prompt or two answers
    are skipped; an unreadable line is refused with its file and line number."""
    path = Path(path).expanduser()
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    votes = []
    for file in files:
        # split on "\n" only: an answer may hold U+2028 / NEL, which splitlines() would cut a JSON line at
        for number, line in enumerate(file.read_text(encoding="utf-8").split("\n"), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{file.name} line {number}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{file.name} line {number}: expected a JSON object")
            vote = _vote(row)
            if vote is not None:
                votes.append(vote)
    return votes


def _vote(row: dict) -> dict | None:
    for keys in (("chosen", "rejected", "chosen_model", "rejected_model"), ("answer_a", "answer_b", "model_a", "model_b"),
                 ("a", "b", "model_a", "model_b")):
        if keys[0] in row and keys[1] in row:
            a, b = _text(row[keys[0]]), _text(row[keys[1]])
            model_a, model_b = str(row.get(keys[2]) or "?"), str(row.get(keys[3]) or "?")
            break
    else:
        return None
    outcome = str(row.get("vote") or row.get("outcome") or row.get("result") or row.get("winner") or "").strip().lower()
    if outcome in VOTE_TIES:
        human = "tie"
    elif keys[0] == "chosen" or outcome in ("a", "chosen"):
        human = "A"
    elif outcome == "b":
        human = "B"
    else:
        return None
    prompt = row.get("prompt") if row.get("prompt") is not None else row.get("messages")
    if prompt is None:
        return None
    return {"prompt_key": prompt_key(prompt), "a": a, "b": b, "model_a": model_a, "model_b": model_b, "human": human}


def match_votes(rows: Sequence[dict], votes: Sequence[dict]) -> list[dict]:
    """The judged pairs a human also voted on (same prompt, the same two answers in either order), each with `human`
    in the pair's own labels (A = its answer_a better). A pair voted on several times takes the last vote."""
    index = {}
    for vote in votes:
        index[(vote["prompt_key"], frozenset((_normal(vote["a"]), _normal(vote["b"]))))] = vote
    matched = []
    for row in rows:
        a, b = _normal(row["answer_a"]), _normal(row["answer_b"])
        vote = index.get((row["prompt_key"], frozenset((a, b))))
        if vote is None:
            continue
        if vote["human"] == "tie" or a == b:
            human = "tie"
        else:
            winner = _normal(vote["a"]) if vote["human"] == "A" else _normal(vote["b"])
            human = "A" if winner == a else "B"
        matched.append({**row, "human": human})
    return matched


def win_rates_over_base(judge_model: Any, prompts: Sequence[Any], base_answers: Sequence[str], variant_answers: dict[str, Sequence[str]],
                        rubric: str = DEFAULT_RUBRIC, *, max_new_tokens: int = VERDICT_TOKENS, batch_size: int = 8,
                        resamples: int = stats.DEFAULT_RESAMPLES, seed: int = 0, should_stop: Callable[[], bool] | None = None,
                        on_progress: Callable[[int], None] | None = None) -> dict[str, dict]:
    """The forgetting report's "win rate over base": per variant, its answers judged against the base's on the same
    prompts (both orders), summarised as `summarise` does, with each pair's verdict."""
    out = {}
    for label, answers in variant_answers.items():
        verdicts = judge_pairs(judge_model, list(zip(prompts, answers, base_answers)), rubric, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, should_stop=should_stop, on_progress=on_progress)
        out[label] = {**summarise(verdicts, resamples=resamples, seed=seed).as_dict(), "verdicts": [v.verdict for v in verdicts]}
    return out


def win_rate_line(label: str, summary: dict, judge_label: str) -> str:
    """One sentence of a judged win rate, for reports: the rate with its interval, the counts, the bias."""
    rate = summary.get("win_rate")
    if not rate:
        return f"win rate of {label} over base: not judged (no reply of {judge_label} was exactly A, B or tie)"
    bias = summary.get("position_bias")
    return (f"win rate of {label} over base (judge {judge_label}, both orders): {100 * rate['value']:.0f}% "
            f"[{100 * rate['low']:.0f}, {100 * rate['high']:.0f}] over {rate['n']} pairs — {summary['wins']} wins, "
            f"{summary['losses']} losses, {summary['ties']} ties, {summary['unparsed']} unparsed"
            + (f"; position bias {100 * bias:.0f}%" if bias is not None else ""))
