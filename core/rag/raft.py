"""RAFT examples (Zhang et al., 2024, "RAFT: Adapting Language Model to Domain Specific RAG", arXiv:2403.10131).

Each training example is a question with k documents in the prompt (`core.rag.prompt.rag_messages`): the
oracle chunk that answers it plus k-1 distractors, or — for a fraction P of the examples, chosen exactly —
k distractors and no oracle. Distractors are hard negatives (the best-ranked chunks of a retrieval for the
question) or random chunks; a chunk that holds the answer is never a distractor. The oracle's position is
shuffled. The target quotes the oracle span between ##begin_quote## and ##end_quote## and then answers;
without the oracle it abstains ("not in the documents") or, as in the paper, still answers from memory.

`build_raft` returns the rows (a normal chat dataset: `{"messages": [...]}`), one metadata record per row
(oracle id, document ids in prompt order, oracle position, quote) and the counts the manifest reports.
`write_raft_dataset` saves them as a workspace dataset the Template and Train pages read unchanged.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from core import scorers
from core.rag.chunking import Chunk
from core.rag.prompt import ANSWER_MARK, REASON_MARK, cite_then_answer, rag_messages
from core.rag.questions import Question, gold_chunk_ids
from core.workspace import atomic_write_dir, atomic_write_json, datasets_dir, safe_name

DISTRACTOR_RULES = ("hard", "random")
ABSENT_TARGETS = ("abstain", "answer")
MANIFEST_SCHEMA = "workbench.dataset/1"
DATA_FILE, MANIFEST_FILE, RAFT_FILE, HELDOUT_FILE = "data.jsonl", "manifest.json", "raft.jsonl", "heldout.jsonl"
# A sentence ends at . ! ? (closing quotes / brackets may follow) before whitespace or the end, and at a line break.
# A full stop with no space after it is never an end: 0.50, 3.14, v1.2.3, Python 3.11, example.com/a.b, a.b@c.org.
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s|$)|\n")
# Abbreviations a sentence rarely ends with: no cut after them (U.S., e.g., a.m. are caught by the dotted rule below).
_ABBREVIATIONS = frozenset("mr mrs ms dr prof sr jr st mt vs cf approx ca no nos fig figs vol pp ch sec eq ref "
                           "jan feb mar apr jun jul aug sep sept oct nov dec".split())
_DOTTED = re.compile(r"(?:[^\W\d_]\.){2,}$")  # e.g. i.e. U.S. a.m. p.m.
_WORDS = re.compile(r"\w+")

Retrieve = Callable[[Sequence[str], int], list[list[str]]]  # questions, depth -> ranked chunk ids per question


@dataclass
class RaftSettings:
    k: int = 4
    distractor_only_fraction: float = 0.2
    distractors: str = "hard"
    absent_target: str = "abstain"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ValueError(f"k: a RAFT example needs at least 2 documents (the oracle and a distractor), got {self.k}")
        if not 0.0 <= self.distractor_only_fraction <= 1.0:
            raise ValueError(f"distractor_only_fraction must be between 0 and 1, got {self.distractor_only_fraction}")
        if self.distractors not in DISTRACTOR_RULES:
            raise ValueError(f"distractors must be one of {', '.join(DISTRACTOR_RULES)}, got {self.distractors!r}")
        if self.absent_target not in ABSENT_TARGETS:
            raise ValueError(f"absent_target must be one of {', '.join(ABSENT_TARGETS)}, got {self.absent_target!r}")


@dataclass
class RaftBuild:
    rows: list[dict]  # {"messages": [...]}
    records: list[dict]  # one per row: question_id, oracle_chunk_id, chunk_ids, oracle_position, quote, answer
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> question ids

    def counts(self) -> dict:
        with_oracle = sum(r["oracle_position"] is not None for r in self.records)
        positions: dict[str, int] = {}
        for r in self.records:
            if r["oracle_position"] is not None:
                positions[str(r["oracle_position"] + 1)] = positions.get(str(r["oracle_position"] + 1), 0) + 1
        return {"examples": len(self.rows), "with_oracle": with_oracle, "distractor_only": len(self.rows) - with_oracle,
                "oracle_positions": dict(sorted(positions.items())), "skipped": {k: len(v) for k, v in self.skipped.items()}}


# ---------------------------------------------------------------- quotes


def sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences (and lines) of a text, whitespace trimmed. Decimals, versions, URLs, e-mail
    addresses, initials and abbreviations (e.g., i.e., Dr., U.S., etc. before a lower-case word) stay whole."""
    cuts = [m.end() for m in _SENTENCE_END.finditer(text) if _ends_sentence(text, m)]
    spans, start = [], 0
    for end in cuts + [len(text)]:
        a, b = start, end
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            spans.append((a, b))
        start = end
    return spans


def _ends_sentence(text: str, match: re.Match) -> bool:
    mark = match.group(0)
    if mark == "\n" or "!" in mark or "?" in mark or mark.startswith(".."):
        return True
    following = text[match.end():].lstrip()
    if not following:
        return True
    if following[0].islower():  # "etc. and", "approx. five", "3 p.m. on Monday": the sentence goes on
        return False
    word = text[:match.start()].rsplit(None, 1)[-1].lstrip("\"'(\u201c\u2018[") if text[:match.start()].strip() else ""
    if word.lower() in _ABBREVIATIONS or _DOTTED.search(word + "."):
        return False
    return not (len(word) == 1 and word.isupper())  # an initial: "J. Smith"


def find_verbatim(text: str, span: str) -> str | None:
    """`span` as it is written in `text` (case and runs of whitespace may differ), or None."""
    words = span.split()
    if not words:
        return None
    pattern = r"\s+".join(re.escape(w) for w in words)
    found = re.search(pattern, text, re.IGNORECASE)
    return found.group(0) if found else None


def extract_quote(oracle_text: str, question: str, answer: str, evidence: str = "") -> str:
    """The span of the oracle that supports the answer, verbatim: the evidence when it is in the chunk; else the
    sentence holding the answer that shares most words with the question; else the sentence sharing most words
    with question and answer together."""
    if evidence:
        found = find_verbatim(oracle_text, evidence)
        if found:
            return found
    spans = [oracle_text[a:b] for a, b in sentences(oracle_text)] or [oracle_text.strip()]
    question_words = set(_WORDS.findall(question.lower()))
    answer_words = set(_WORDS.findall(answer.lower()))

    def score(sentence: str) -> tuple:
        words = set(_WORDS.findall(sentence.lower()))
        return (scorers.contains_answer(sentence, answer), len(words & answer_words), len(words & question_words), -len(sentence))

    return max(spans, key=score)


# ---------------------------------------------------------------- examples


def _holds_answer(chunk: Chunk, answer: str) -> bool:
    return bool(scorers.contains_answer(chunk.text, answer))


def choose_distractors(question: Question, gold: set[str], chunks: Sequence[Chunk], n: int, rule: str, rng: random.Random,
                       ranked: Sequence[str] = ()) -> list[Chunk]:
    """n chunks that are not gold and do not hold the answer: the best-ranked ones (hard) or a random draw."""
    by_id = {c.id: c for c in chunks}
    usable = lambda c: c.id not in gold and not _holds_answer(c, question.answer)
    if rule == "hard":
        picked = [by_id[i] for i in ranked if i in by_id and usable(by_id[i])][:n]
        if len(picked) < n:  # a short ranking is topped up at random
            rest = [c for c in chunks if usable(c) and c not in picked]
            picked += rng.sample(rest, min(n - len(picked), len(rest)))
        return picked
    pool = [c for c in chunks if usable(c)]
    return rng.sample(pool, min(n, len(pool)))


def distractor_only_ids(question_ids: Sequence[str], fraction: float, seed: int) -> set[str]:
    """Exactly round(fraction * n) questions, chosen by a seeded shuffle, get no oracle."""
    order = list(question_ids)
    random.Random(f"{seed}-distractor-only").shuffle(order)
    return set(order[: round(fraction * len(order))])


def build_raft(questions: Sequence[Question], chunks: Sequence[Chunk], settings: RaftSettings,
               retrieve: Retrieve | None = None) -> RaftBuild:
    """One RAFT example per usable question (see the module docstring)."""
    if settings.distractors == "hard" and retrieve is None:
        raise ValueError("hard-negative distractors need a retriever")
    if len(chunks) < settings.k + 1:
        raise ValueError(f"the corpus has {len(chunks)} chunks: k={settings.k} documents per example need at least {settings.k + 1}")
    rng = random.Random(settings.seed)
    skipped: dict[str, list[str]] = {}
    usable: list[tuple[Question, list[str]]] = []
    for q in questions:
        gold = gold_chunk_ids(q, chunks)
        if gold:
            usable.append((q, gold))
        else:
            skipped.setdefault("no gold chunk (give gold_chunk_ids, evidence or doc_id)", []).append(q.id)
    absent = distractor_only_ids([q.id for q, _ in usable], settings.distractor_only_fraction, settings.seed)
    depth = settings.k + 8
    ranked = retrieve([q.question for q, _ in usable], depth) if settings.distractors == "hard" and usable else [[] for _ in usable]
    by_id = {c.id: c for c in chunks}
    rows, records = [], []
    for (q, gold), ranking in zip(usable, ranked):
        oracle = by_id[gold[0]]
        with_oracle = q.id not in absent
        distractors = choose_distractors(q, set(gold), chunks, settings.k - 1 if with_oracle else settings.k,
                                         settings.distractors, rng, ranking)
        if len(distractors) < (settings.k - 1 if with_oracle else settings.k):
            skipped.setdefault("too few distractors without the answer", []).append(q.id)
            continue
        documents = list(distractors)
        position = None
        if with_oracle:
            position = rng.randrange(settings.k)
            documents.insert(position, oracle)
        quote = extract_quote(oracle.text, q.question, q.answer, q.evidence) if with_oracle else None
        target = cite_then_answer(q.answer, quote, position + 1, oracle.title) if with_oracle else _absent_target(q, settings)
        rows.append({"messages": rag_messages(q.question, documents) + [{"role": "assistant", "content": target}]})
        records.append({"question_id": q.id, "question": q.question, "answer": q.answer, "oracle_chunk_id": oracle.id,
                        "gold_chunk_ids": gold, "chunk_ids": [d.id for d in documents], "oracle_position": position, "quote": quote})
    return RaftBuild(rows, records, skipped)


def _absent_target(question: Question, settings: RaftSettings) -> str:
    if settings.absent_target == "answer":  # the paper's variant: answer from what training taught
        return (f"{REASON_MARK} None of the documents says it; from what I know the answer is {question.answer}.\n{ANSWER_MARK} "
                f"{question.answer}")
    return cite_then_answer(question.answer, None)


def split_heldout(questions: Sequence[Question], fraction: float, seed: int) -> tuple[list[Question], list[Question]]:
    """(training questions, held-out questions): a seeded share kept out of the RAFT set for its evaluation."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"heldout_fraction must be at least 0 and below 1, got {fraction}")
    order = list(range(len(questions)))
    random.Random(f"{seed}-heldout").shuffle(order)
    cut = round(fraction * len(questions))
    held = set(order[:cut])
    return [q for i, q in enumerate(questions) if i not in held], [q for i, q in enumerate(questions) if i in held]


def sft_rows(questions: Sequence[Question]) -> list[dict]:
    """The plain SFT baseline of the same questions: question → answer, no documents."""
    return [{"messages": [{"role": "user", "content": q.question}, {"role": "assistant", "content": q.answer}]} for q in questions]


# ---------------------------------------------------------------- generated questions


QUESTION_PROMPT = ("Write one question that the passage below answers, and its short answer copied from the passage. "
                   'Reply with only a JSON object: {"question": "...", "answer": "..."}\n\nPassage:\n')


def question_prompts(chunks: Sequence[Chunk]) -> list[list[dict]]:
    return [[{"role": "user", "content": QUESTION_PROMPT + f"{c.title}\n{c.text}"}] for c in chunks]


def parse_generated(chunks: Sequence[Chunk], replies: Sequence[str]) -> tuple[list[Question], dict[str, list[str]]]:
    """Questions from the model's replies; a reply is kept when it holds a JSON object with a question and an
    answer that the chunk contains (the chunk is then its gold). Rejections are counted by reason."""
    kept, rejected = [], {}
    for chunk, reply in zip(chunks, replies):
        obj = scorers.parse_json_object(reply) or {}
        question, answer = str(obj.get("question") or "").strip(), str(obj.get("answer") or "").strip()
        if not question or not answer:
            reason = "no JSON object with a question and an answer"
        elif not _holds_answer(chunk, answer):
            reason = "answer not found in its chunk"
        elif scorers.normalize_text(question) == scorers.normalize_text(answer):
            reason = "answer repeats the question"
        else:
            kept.append(Question(f"gen-{chunk.id}", question, answer, chunk.doc_id, "", (chunk.id,)))
            continue
        rejected.setdefault(reason, []).append(chunk.id)
    return kept, rejected


# ---------------------------------------------------------------- writing the dataset


def _jsonl(rows: Sequence[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def dataset_folder(name: str) -> Path:
    return datasets_dir() / safe_name(name, default="raft")


def write_dataset(name: str, rows: Sequence[dict], manifest_extra: dict, sidecars: dict[str, Sequence[dict]] | None = None,
                  overwrite: bool = False) -> Path:
    """datasets/<name>/ with data.jsonl (the chat rows), manifest.json and any side files, written atomically."""
    if not rows:
        raise ValueError("no examples to write")
    target = dataset_folder(name)
    if target.exists() and not overwrite:
        raise FileExistsError(f"a dataset named {target.name!r} already exists in {target.parent}; pick another name or overwrite it")
    data = _jsonl(rows)
    manifest = {"schema": MANIFEST_SCHEMA, "name": target.name, "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "rows": len(rows), "data": {"file": DATA_FILE, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)},
                **manifest_extra}

    def write(tmp: Path) -> None:
        (tmp / DATA_FILE).write_bytes(data)
        for file, side_rows in (sidecars or {}).items():
            (tmp / file).write_bytes(_jsonl(side_rows))
        atomic_write_json(tmp / MANIFEST_FILE, manifest)

    return atomic_write_dir(target, write)


def raft_manifest(build: RaftBuild, settings: RaftSettings, *, corpus: dict, index: dict, questions: dict, heldout: int,
                  sft_dataset: str | None, seconds: float) -> dict:
    params = {"k": settings.k, "distractor_only_fraction": settings.distractor_only_fraction, "distractors": settings.distractors,
              "absent_target": settings.absent_target, "seed": settings.seed}
    return {
        "source": {"path": corpus.get("source", ""), "sha256": corpus.get("sha256", ""), "format": "raft", "rows": len(build.rows)},
        "operations": [{"name": "raft_build", "label": "RAFT examples (oracle + distractors, cite-then-answer)", "params": params,
                        "rows_before": questions.get("count", 0), "rows_after": len(build.rows), "dropped": [],
                        "seconds": round(seconds, 3)}],
        "raft": {**params, **build.counts(), "corpus": corpus, "index": index, "questions": questions, "heldout_questions": heldout,
                 "sft_dataset": sft_dataset, "files": {"examples": RAFT_FILE, "heldout": HELDOUT_FILE}, "built_at": time.time()},
    }
