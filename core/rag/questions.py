"""Question / answer rows with their gold chunks, and retrieval recall@k.

A row is `{question, answer}` plus where the answer is: `gold_chunk_ids` (chunk ids of an index, e.g.
"policy-travel#1"), or `evidence` (the sentence that answers it, verbatim in a document) with an optional
`doc_id`, or only `doc_id`. Evidence is the durable form: the gold chunks of any chunking are the chunks
holding it, so the rows survive a change of chunk size.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.data.formats import loads_strict
from core.rag.chunking import Chunk
from core.rag.corpus import read_utf8

_SPACES = re.compile(r"\s+")
_WORDS = re.compile(r"\w+")


class QuestionsError(ValueError):
    """A question row is unusable; the message names the file, line and field."""


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answer: str
    doc_id: str = ""
    evidence: str = ""
    gold_chunk_ids: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["gold_chunk_ids"] = list(self.gold_chunk_ids)
        return data


def _text(row: dict, key: str, where: str, required: bool = False) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise QuestionsError(f"{where}: the `{key}` field is missing or empty")
        return ""
    if isinstance(value, (dict, list)):
        if required:
            raise QuestionsError(f"{where}: `{key}` must be text, got {type(value).__name__}")
        return ""
    return str(value).strip()


def question_from_row(row: dict, where: str, default_id: str) -> Question:
    if not isinstance(row, dict):
        raise QuestionsError(f"{where}: expected an object with question and answer, got {type(row).__name__}")
    gold = row.get("gold_chunk_ids", row.get("gold_chunk_id", ()))
    gold = [gold] if isinstance(gold, str) else gold
    if not isinstance(gold, (list, tuple)) or not all(isinstance(g, str) for g in gold):
        raise QuestionsError(f"{where}: `gold_chunk_ids` must be a list of chunk ids")
    return Question(
        id=_text(row, "id", where) or default_id,
        question=_text(row, "question", where, required=True),
        answer=_text(row, "answer", where, required=True),
        doc_id=_text(row, "doc_id", where),
        evidence=_text(row, "evidence", where),
        gold_chunk_ids=tuple(g.strip() for g in gold if g.strip()),
    )


def load_questions(path: str | Path) -> list[Question]:
    """Rows of a JSONL file (or a JSON array) of {question, answer, [id, doc_id, evidence, gold_chunk_ids]}."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise QuestionsError(f"question file not found: {path}")
    text = read_utf8(path, QuestionsError)
    if text.lstrip().startswith("["):
        try:
            items = list(enumerate(loads_strict(text), 1))
        except json.JSONDecodeError as exc:
            raise QuestionsError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        except ValueError as exc:  # NaN / Infinity, a key twice, nesting too deep
            raise QuestionsError(f"{path}: not valid JSON ({exc})") from None
        label = "item"
    else:
        items, label = [], "line"
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append((number, loads_strict(line)))
                except json.JSONDecodeError as exc:
                    raise QuestionsError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
                except ValueError as exc:
                    raise QuestionsError(f"{path}, line {number}: not valid JSON ({exc})") from None
    questions, seen = [], set()
    for number, row in items:
        q = question_from_row(row, f"{path.name}, {label} {number}", f"q{number}")
        if q.id in seen:
            raise QuestionsError(f"{path.name}, {label} {number}: the id {q.id!r} is used twice")
        seen.add(q.id)
        questions.append(q)
    if not questions:
        raise QuestionsError(f"{path} has no question rows")
    return questions


def _normal(text: str) -> str:
    return _SPACES.sub(" ", text).strip().lower()


def _word_overlap(chunk_text: str, evidence: str) -> float:
    evidence_words = _WORDS.findall(evidence.lower())
    chunk_words = set(_WORDS.findall(chunk_text.lower()))
    return sum(w in chunk_words for w in evidence_words) / max(1, len(evidence_words))


def gold_chunk_ids(question: Question, chunks: Sequence[Chunk]) -> list[str]:
    """The chunks that answer the question: given ids; else the chunks holding the evidence (of its document,
    when named; the best-overlapping chunk of that document when the evidence straddles a boundary); else
    every chunk of its document. Empty when nothing is known."""
    if question.gold_chunk_ids:
        known = {c.id for c in chunks}
        missing = [g for g in question.gold_chunk_ids if g not in known]
        if missing:
            raise QuestionsError(f"question {question.id}: gold chunk id(s) {', '.join(missing)} are not in the index "
                                 "(chunk ids depend on the chunk size; give `evidence` to stay independent of it)")
        return list(question.gold_chunk_ids)
    pool = [c for c in chunks if c.doc_id == question.doc_id] if question.doc_id else list(chunks)
    if question.doc_id and not pool:
        raise QuestionsError(f"question {question.id}: document {question.doc_id!r} is not in the corpus")
    if question.evidence:
        wanted = _normal(question.evidence)
        holding = [c.id for c in pool if wanted in _normal(c.text)]
        if holding:
            return holding
        if question.doc_id:
            best = max(pool, key=lambda c: _word_overlap(c.text, question.evidence))
            return [best.id]
        return []
    return [c.id for c in pool] if question.doc_id else []


def recall_at_k(ranked_ids: Sequence[Sequence[str]], golds: Sequence[Sequence[str]], ks: Sequence[int] = (1, 5)) -> dict:
    """Share of questions with a gold chunk among the first k retrieved, for each k; plus the mean reciprocal rank.
    Questions without gold chunks are not counted (`n` says how many were)."""
    if len(ranked_ids) != len(golds):
        raise ValueError(f"one ranking per question is needed ({len(ranked_ids)} rankings, {len(golds)} questions)")
    pairs = [(list(r), set(g)) for r, g in zip(ranked_ids, golds) if g]
    out: dict = {"n": len(pairs)}
    for k in ks:
        out[f"recall@{k}"] = sum(any(i in gold for i in ranked[:k]) for ranked, gold in pairs) / len(pairs) if pairs else None
    reciprocal = [next((1.0 / n for n, i in enumerate(ranked, 1) if i in gold), 0.0) for ranked, gold in pairs]
    out["mrr"] = sum(reciprocal) / len(reciprocal) if reciprocal else None
    return out
