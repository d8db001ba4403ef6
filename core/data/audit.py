"""Response audit: per-row flags on the answers, each with the rule that fired and why.

The curation checklist says "audit the responses, not just the prompts". Every rule looks at one row's
answer (the assistant turns, tool calls written as text: ``core.data.text.row_text(row, "answer")``) and,
where it needs one, its prompt. Rules:

- ``empty_answer``      the answer is empty, or shorter than ``min_answer_chars`` (off when the set's answers
                        are short by nature: median under 4x that);
- ``truncated``         the answer stops mid-sentence (ends on a comma / colon / dash / an open clause word, or
                        a long prose line ends without punctuation), leaves a code fence open, or opens more
                        brackets than it closes;
- ``invalid_json``      the set is JSON-shaped (at least half of the answers are JSON objects / arrays, fenced
                        or not) and this answer does not parse;
- ``refusal``           a refusal or assistant boilerplate phrase ("As an AI language model", "I cannot help
                        with that", ...);
- ``repeats_prompt``    the answer repeats the prompt: at least ``repeat_containment`` of its word 3-grams are
                        in the prompt (answers of 8 words or more);
- ``language_mismatch`` the prompt and the answer are confidently in different languages (py3langid; prompts
                        that ask for a translation are exempt);
- ``length_outlier``    the answer's log length is more than ``length_z`` robust deviations from the set's median;
- ``high_loss``         the answer's mean token loss under the active model (the ``answer_loss`` job,
                        `core.evaluate.answer_loss`) is more than ``loss_z`` robust deviations above the median.

Flags are for review: the page lists them with keep / drop per row and "drop all flagged by rule X"; what the
user drops is recorded in the manifest as the ``response_audit`` operation.
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Callable, Optional, Sequence

import numpy as np

from core.data.text import row_text, words

Progress = Optional[Callable[[float, str], None]]

RULES: dict[str, str] = {
    "empty_answer": "empty or very short answer",
    "truncated": "truncated answer",
    "invalid_json": "invalid JSON in a JSON-shaped set",
    "refusal": "refusal or boilerplate",
    "repeats_prompt": "answer repeats the prompt",
    "language_mismatch": "prompt and answer in different languages",
    "length_outlier": "answer length outlier",
    "high_loss": "high answer loss under the model",
}
REFUSALS = re.compile(
    r"\b(as an ai(?: language model| assistant| model)?|as a (?:large )?language model|i(?:'m| am) (?:just )?an ai\b"
    r"|i(?:'m| am) (?:sorry|afraid),? but i (?:can(?:not|'t)|am unable|won't)|i (?:can(?:not|'t)|am unable to|'m unable to)"
    r" (?:help|assist|provide|fulfil+|comply|answer|do that|generate)|i do(?: not|n't) have (?:personal )?(?:opinions|feelings|"
    r"the ability|access to (?:real-time|the internet))|my (?:knowledge cutoff|training data)\b)",
    re.IGNORECASE,
)
# Words an English sentence (almost) never ends on: an answer ending on one was cut off.
OPEN_CLAUSE_WORDS = frozenset(
    "and or but nor the a an of to with for from into onto than that which whose as because if then when while although "
    "whereas such including their its my your our his these those is are was were".split()
)
TRANSLATION = re.compile(r"translat|traduc|übersetz|in (?:french|spanish|german|italian|portuguese|"
                         r"chinese|japanese|russian|arabic|hindi)\b",
                         re.IGNORECASE)
_FENCE = re.compile(r"^```[\w+-]*\s*\n?(.*?)\n?```\s*$", re.DOTALL)
BRACKETS = {"(": ")", "[": "]", "{": "}"}
_LETTER = re.compile(r"[^\W\d_]")
# A set of near-identical lengths would make any small difference an "outlier": the spread of log lengths is
# taken as at least this (x1.35), so an outlier is always several times longer or shorter than the median.
LOG_LENGTH_SPREAD_FLOOR = 0.3


@dataclass
class AuditConfig:
    min_answer_chars: int = field(default=2, metadata={"help": "answers with fewer non-space characters are flagged as very short"})
    repeat_containment: float = field(default=0.9, metadata={"help": "share of the answer's word 3-grams found in the prompt "
                                                                     "that counts as repeating it"})
    length_z: float = field(default=3.5, metadata={"help": "robust z-score of log answer length beyond which an answer "
                                                           "is a length outlier"})
    loss_z: float = field(default=3.0, metadata={"help": "robust z-score of answer loss above which an answer is a high-loss outlier"})
    language_confidence: float = field(default=0.8, metadata={"help": "both texts must be identified with at least this probability"})
    min_language_letters: int = field(default=25, metadata={"help": "texts with fewer letters are not language-checked"})

    def __post_init__(self) -> None:
        if not isinstance(self.min_answer_chars, int) or self.min_answer_chars < 0:
            raise ValueError(f"min_answer_chars must be an integer >= 0, got {self.min_answer_chars!r}")
        if not 0 < self.repeat_containment <= 1:
            raise ValueError(f"repeat_containment must be in (0, 1], got {self.repeat_containment!r}")
        for name in ("length_z", "loss_z"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not 0 <= self.language_confidence <= 1:
            raise ValueError(f"language_confidence must be in [0, 1], got {self.language_confidence!r}")


@dataclass
class Flag:
    rule: str
    detail: str


@dataclass
class AuditResult:
    n_rows: int
    flags: dict[int, list[Flag]]  # row -> the rules that fired on it
    params: dict[str, Any]
    seconds: float
    json_shaped: bool = False
    losses: list[float | None] | None = None  # per row, when the answer-loss job has run

    @property
    def counts(self) -> dict[str, int]:
        out = {rule: 0 for rule in RULES}
        for flags in self.flags.values():
            for rule in {f.rule for f in flags}:
                out[rule] += 1
        return {rule: n for rule, n in out.items() if n}

    def rows_flagged_by(self, rule: str) -> list[int]:
        return sorted(row for row, flags in self.flags.items() if any(f.rule == rule for f in flags))

    @property
    def flagged_rows(self) -> list[int]:
        return sorted(self.flags)

    def to_dict(self) -> dict[str, Any]:
        return {"n_rows": self.n_rows, "flags": {str(r): [asdict(f) for f in fs] for r, fs in self.flags.items()},
                "params": self.params, "seconds": self.seconds, "json_shaped": self.json_shaped, "losses": self.losses}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AuditResult":
        flags = {int(r): [Flag(**f) for f in fs] for r, fs in data["flags"].items()}
        return cls(data["n_rows"], flags, data["params"], data["seconds"], data.get("json_shaped", False), data.get("losses"))


# ---------------------------------------------------------------- the rules


def _strip_fence(text: str) -> str:
    match = _FENCE.match(text.strip())
    return match.group(1) if match else text.strip()


def looks_like_json(text: str) -> bool:
    body = _strip_fence(text)
    return body[:1] in ("{", "[") and body[-1:] in ("}", "]")


def parses_as_json(text: str) -> bool:
    try:
        json.loads(_strip_fence(text))
    except (json.JSONDecodeError, ValueError):
        return False
    return True


def truncation(answer: str) -> str | None:
    """Why the answer looks cut off, or None."""
    if answer.count("```") % 2:
        return "a code fence is left open"
    outside_code = re.sub(r"```.*?```", "", answer, flags=re.DOTALL)
    for opening, closing in BRACKETS.items():
        surplus = outside_code.count(opening) - outside_code.count(closing)
        if surplus > 0:
            return f"{surplus} unclosed {opening!r}"
    text = outside_code.rstrip()
    if not text:
        return None
    last_line = text.splitlines()[-1].strip()
    line_words = words(last_line)
    if len(line_words) < 6 or re.match(r"^([-*•#>|]|\d+[.)])", last_line):
        return None  # a list item, heading, table row or a short line may end without punctuation
    if text[-1] in ",:(-–—/&":
        return f"ends with {text[-1]!r}"
    last_token = last_line.split()[-1]
    if last_token[0] in "#@" or "://" in last_token:
        return None  # hashtags, handles and links end social posts
    if line_words[-1] in OPEN_CLAUSE_WORDS and text[-1].isalpha():
        return f"ends on {line_words[-1]!r}"
    if text[-1].isalpha() and text[-1].islower() and len(line_words) >= 12 and len(words(text)) >= 40:
        return "a long sentence ends without punctuation"
    return None


def repeats_prompt(prompt: str, answer: str, containment: float) -> str | None:
    answer_words, prompt_words = words(answer), words(prompt)
    if len(answer_words) < 8 or not prompt_words:
        return None
    grams = {tuple(answer_words[i:i + 3]) for i in range(len(answer_words) - 2)}
    prompt_grams = {tuple(prompt_words[i:i + 3]) for i in range(len(prompt_words) - 2)}
    share = len(grams & prompt_grams) / len(grams)
    return f"{share:.0%} of its word 3-grams are in the prompt" if share >= containment else None


@lru_cache(maxsize=1)
def _language_identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def language(text: str, min_letters: int) -> tuple[str, float] | None:
    """(ISO 639-1 code, probability) of a text, or None when it is too short or code-like to tell."""
    sample = text.strip()[:400]  # the opening is enough to tell, and keeps the check fast
    letters = len(_LETTER.findall(sample))
    if letters < min_letters or letters < 0.5 * len(sample) or "```" in text:
        return None
    code, probability = _language_identifier().classify(sample)
    return (code, float(probability)) if len(code) == 2 else None  # not "zxx" (no linguistic content)


def language_mismatch(prompt: str, answer: str, config: AuditConfig) -> str | None:
    if TRANSLATION.search(prompt):
        return None
    a, b = language(prompt, config.min_language_letters), language(answer, config.min_language_letters)
    if a and b and a[0] != b[0] and min(a[1], b[1]) >= config.language_confidence:
        return f"prompt {a[0]}, answer {b[0]}"
    return None


def robust_z(values: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """(x - median) / max(1.4826 * MAD, floor); zero where the spread is zero."""
    median = np.median(values)
    spread = max(1.4826 * float(np.median(np.abs(values - median))), floor)
    return (values - median) / spread if spread > 0 else np.zeros_like(values)


def audit_rows(rows: Sequence[Any], config: AuditConfig | None = None, progress: Progress = None,
               losses: Sequence[float | None] | None = None) -> AuditResult:
    """Flag every row whose answer breaks a rule (see the module docstring)."""
    config = config or AuditConfig()
    if len(rows) == 0:
        raise ValueError("the dataset is empty: there are no answers to audit")
    if losses is not None and len(losses) != len(rows):
        raise ValueError(f"{len(losses)} answer losses for {len(rows)} rows: recompute the answer loss for this dataset")
    started = time.perf_counter()
    answers = [row_text(r, "answer") for r in rows]
    prompts = [row_text(r, "prompt") for r in rows]
    flags: dict[int, list[Flag]] = {}

    def flag(row: int, rule: str, detail: str) -> None:
        flags.setdefault(row, []).append(Flag(rule, detail))

    lengths = np.array([len(a.strip()) for a in answers], dtype=np.float64)
    short_rule = float(np.median(lengths)) >= 4 * config.min_answer_chars
    json_shaped = len(rows) >= 10 and sum(map(looks_like_json, answers)) >= 0.5 * len(rows)
    for k, (prompt, answer) in enumerate(zip(prompts, answers)):
        stripped = answer.strip()
        if not stripped:
            flag(k, "empty_answer", "the answer is empty")
        elif short_rule and len("".join(stripped.split())) < config.min_answer_chars:
            flag(k, "empty_answer", f"only {stripped!r}")
        if (why := truncation(answer)) is not None:
            flag(k, "truncated", why)
        if json_shaped and stripped and not parses_as_json(answer):
            flag(k, "invalid_json", "does not parse as JSON")
        if (match := REFUSALS.search(answer)) is not None:
            flag(k, "refusal", f"“{match.group(0)}”")
        if (why := repeats_prompt(prompt, answer, config.repeat_containment)) is not None:
            flag(k, "repeats_prompt", why)
        if (why := language_mismatch(prompt, answer, config)) is not None:
            flag(k, "language_mismatch", why)
        if progress and k % 2000 == 0:
            progress(0.95 * k / len(rows), f"audited {k:,} / {len(rows):,} answers")
    if len(rows) >= 20:
        z = robust_z(np.log1p(lengths), floor=LOG_LENGTH_SPREAD_FLOOR)
        for k in np.flatnonzero((np.abs(z) > config.length_z) & (lengths > 0)).tolist():  # empty ones are flagged above
            flag(k, "length_outlier", f"{int(lengths[k]):,} characters ({'long' if z[k] > 0 else 'short'}, z {z[k]:+.1f})")
    if losses is not None:
        _flag_losses(losses, config, flag)
    for row_flags in flags.values():
        row_flags.sort(key=lambda f: list(RULES).index(f.rule))
    if progress:
        progress(1.0, f"{len(flags):,} rows flagged")
    params = asdict(config) | {"rules": list(RULES), "answer_loss": losses is not None}
    return AuditResult(len(rows), dict(sorted(flags.items())), params, round(time.perf_counter() - started, 3), json_shaped,
                       None if losses is None else [None if v is None else float(v) for v in losses])


def with_losses(result: AuditResult, losses: Sequence[float | None], config: AuditConfig | None = None) -> AuditResult:
    """The audit with the high-loss rule applied from an answer-loss result (the other flags unchanged)."""
    if len(losses) != result.n_rows:
        raise ValueError(f"{len(losses)} answer losses for {result.n_rows} rows: recompute the answer loss for this dataset")
    config = config or AuditConfig(**{k: v for k, v in result.params.items() if k in AuditConfig.__dataclass_fields__})
    flags = {row: [f for f in fs if f.rule != "high_loss"] for row, fs in result.flags.items()}

    def flag(row: int, rule: str, detail: str) -> None:
        flags.setdefault(row, []).append(Flag(rule, detail))

    _flag_losses(losses, config, flag)
    flags = {row: fs for row, fs in sorted(flags.items()) if fs}
    params = dict(result.params) | {"answer_loss": True}
    return AuditResult(result.n_rows, flags, params, result.seconds, result.json_shaped, [None if v is None else float(v) for v in losses])


def _flag_losses(losses: Sequence[float | None], config: AuditConfig, flag) -> None:
    known = [(k, v) for k, v in enumerate(losses) if v is not None and math.isfinite(v)]
    if len(known) < 20:
        return
    values = np.array([v for _, v in known])
    z = robust_z(values)
    median = float(np.median(values))
    for (k, value), score in zip(known, z.tolist()):
        if score > config.loss_z:
            flag(k, "high_loss", f"loss {value:.2f} vs median {median:.2f} (z {score:+.1f})")
