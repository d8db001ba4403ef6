"""Small, pure answer-scoring functions shared by the Decide page's quick baseline and core.evaluate.

- `exact_match`: normalised string equality (case, surrounding whitespace / quotes, inner whitespace runs,
  trailing punctuation).
- `json_field_accuracy`: the share of the reference object's fields whose values the prediction reproduces
  (0 when the prediction holds no JSON object anywhere).
- `json_field_scores`: per-field scores (exact, or ROUGE-L F1 for free-text fields such as a summary).
- `rouge_l_f1`: longest-common-subsequence F1 over normalised words.
- `contains_answer`: the normalised reference (leading article aside) appears in the prediction as whole words:
  the accuracy of a short factual answer inside a longer reply (RAG questions).
- `detect_free_text_fields`: which fields of JSON answers hold prose rather than a label.
- `choose_scorer`: JSON scoring when every reference answer is a JSON object, exact match otherwise.
- `json_validity`: THE rule for "valid JSON", used by the forgetting report and the Decide baseline alike: the
  whole answer is one JSON object (one ```json fence tolerated), what a program calling `json.loads` on the
  reply accepts. `holds_json_object` is the named lenient variant (an object somewhere in the text).
- `perplexity`, `choice_accuracy`: likelihood-based scores (exp of the mean token NLL; multiple choice by
  summed and per-character log-likelihood, as lm-evaluation-harness computes acc and acc_norm).
"""
from __future__ import annotations

import json
import math
import re
import string
from typing import Any, Callable, Iterable, Sequence

_SPACES = re.compile(r"\s+")
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_TRAILING = string.punctuation.replace(")", "").replace("]", "").replace("}", "")

Scorer = Callable[[str, str], float]


def normalize_text(text: Any) -> str:
    """Lower-case, collapse whitespace, strip surrounding quotes and trailing punctuation."""
    cleaned = _SPACES.sub(" ", str(text if text is not None else "")).strip().lower()
    cleaned = cleaned.strip("\"'`“”‘’ ")
    return cleaned.rstrip(_TRAILING).strip()


def exact_match(prediction: str, reference: str) -> float:
    return 1.0 if normalize_text(prediction) == normalize_text(reference) else 0.0


_ARTICLE = re.compile(r"^(?:the|a|an|your)\s+")


def contains_answer(prediction: str, reference: str) -> float:
    """1.0 when the reference ("the fifth floor" → "fifth floor") occurs in the prediction as whole words."""
    wanted = _ARTICLE.sub("", normalize_text(reference))
    if not wanted:
        return 0.0
    found = re.search(r"(?<!\w)" + re.escape(wanted) + r"(?!\w)", _SPACES.sub(" ", str(prediction or "")).lower())
    return 1.0 if found else 0.0


def parse_json_object(text: str) -> dict | None:
    """The first JSON object in `text`: the whole text, a ```json fenced block, or the first {...} span."""
    if not isinstance(text, str):
        return None
    candidates = [text.strip()]
    candidates += [block.strip() for block in _FENCE.findall(text)]
    start = text.find("{")
    if start >= 0:
        candidates.append(_balanced_object(text, start))
    for candidate in candidates:
        if not candidate:
            continue
        try:
            value = json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(value, dict):
            return value
    return None


def _balanced_object(text: str, start: int) -> str:
    """The {...} span starting at `start`, matching braces outside strings (or the rest of the text)."""
    depth, in_string, escaped = 0, False, False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            escaped = (char == "\\") and not escaped
            if char == '"' and not escaped:
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start : index + 1]
    return text[start:]


def holds_json_object(prediction: str) -> float:
    """The lenient variant of `json_validity`: 1.0 when a JSON object can be found anywhere in the answer."""
    return 1.0 if parse_json_object(prediction) is not None else 0.0


def _same_value(predicted: Any, expected: Any) -> bool:
    if isinstance(expected, (dict, list)) or isinstance(predicted, (dict, list)):
        return predicted == expected
    return normalize_text(predicted) == normalize_text(expected)


def _words(text: Any) -> list[str]:
    return [w.strip(string.punctuation) for w in normalize_text(text).split() if w.strip(string.punctuation)]


def rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F1: longest common subsequence of normalised words, as precision/recall F1 in [0, 1]."""
    pred, ref = _words(prediction), _words(reference)
    if not pred or not ref:
        return 1.0 if pred == ref else 0.0
    previous = [0] * (len(ref) + 1)
    for word in pred:
        current = [0]
        for j, other in enumerate(ref, start=1):
            current.append(previous[j - 1] + 1 if word == other else max(previous[j], current[j - 1]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def _reference_object(reference: str | dict) -> dict:
    expected = reference if isinstance(reference, dict) else parse_json_object(reference)
    if not expected:
        raise ValueError(f"a JSON field score needs a JSON object as the reference answer, got {str(reference)[:80]!r}")
    return expected


def json_field_scores(prediction: str, reference: str | dict, free_text_fields: Iterable[str] = ()) -> dict[str, float]:
    """One score in [0, 1] per reference field: ROUGE-L F1 for free-text fields, normalised equality
    otherwise; every field scores 0 when the prediction holds no JSON object or lacks the field."""
    expected = _reference_object(reference)
    predicted = parse_json_object(prediction)
    free = set(free_text_fields)
    scores: dict[str, float] = {}
    for key, value in expected.items():
        if predicted is None or key not in predicted:
            scores[key] = 0.0
        elif key in free:
            scores[key] = rouge_l_f1(str(predicted[key]), str(value))
        else:
            scores[key] = 1.0 if _same_value(predicted[key], value) else 0.0
    return scores


def json_field_accuracy(prediction: str, reference: str | dict, free_text_fields: Iterable[str] = ()) -> float:
    """Mean of `json_field_scores`: the share of the reference's fields reproduced (0 for invalid JSON)."""
    scores = json_field_scores(prediction, reference, free_text_fields)
    return sum(scores.values()) / len(scores)


def detect_free_text_fields(objects: Iterable[dict], min_mean_words: float = 4.0) -> list[str]:
    """Fields whose values are prose (string values averaging at least `min_mean_words` words), in first-seen
    order; labels such as an urgency level or a category are scored exactly instead."""
    lengths: dict[str, list[int]] = {}
    for obj in objects:
        for key, value in (obj or {}).items():
            lengths.setdefault(key, [])
            if isinstance(value, str):
                lengths[key].append(len(value.split()))
            else:
                lengths[key].append(-1)  # a number / list / object is never free text
    return [key for key, counts in lengths.items() if counts and min(counts) >= 0 and sum(counts) / len(counts) >= min_mean_words]


def references_are_json(references: Iterable[str]) -> bool:
    items = list(references)
    return bool(items) and all(parse_json_object(ref) is not None and str(ref).strip().startswith(("{", "```")) for ref in items)


def choose_scorer(references: Iterable[str]) -> tuple[str, Scorer]:
    """("json_field_accuracy", fn) when every reference is a JSON object, else ("exact_match", fn)."""
    if references_are_json(references):
        return "json_field_accuracy", json_field_accuracy
    return "exact_match", exact_match


SCORERS: dict[str, Scorer] = {"exact_match": exact_match, "json_field_accuracy": json_field_accuracy, "rouge_l": rouge_l_f1,
                              "contains_answer": contains_answer}


_WHOLE_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)


def json_validity(text: Any) -> float:
    """1.0 when the whole answer (surrounding whitespace and one ```json fence aside) is a JSON object."""
    stripped = str(text if text is not None else "").strip()
    fenced = _WHOLE_FENCE.match(stripped)
    try:
        value = json.loads(fenced.group(1) if fenced else stripped)
    except (json.JSONDecodeError, ValueError):
        return 0.0
    return 1.0 if isinstance(value, dict) else 0.0


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood per token)."""
    if n_tokens <= 0:
        raise ValueError("perplexity needs at least one scored token")
    return math.exp(total_nll / n_tokens)


def choice_accuracy(logliks: Sequence[float], choices: Sequence[str], gold: int) -> tuple[float, float]:
    """(acc, acc_norm) for one multiple-choice item: is the gold choice the one with the highest summed
    log-likelihood, and the one with the highest log-likelihood per character of the choice text (first
    maximum wins on ties, like numpy.argmax in lm-evaluation-harness)."""
    if len(logliks) != len(choices) or not choices:
        raise ValueError(f"one log-likelihood per choice is needed ({len(logliks)} for {len(choices)} choices)")
    best = max(range(len(choices)), key=lambda i: logliks[i])
    best_norm = max(range(len(choices)), key=lambda i: logliks[i] / max(1, len(choices[i])))
    return float(best == gold), float(best_norm == gold)
