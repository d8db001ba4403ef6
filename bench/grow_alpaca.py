"""Grow the 5,000 real Alpaca rows into a large set with injected near-duplicates (deterministic).

Each copy is a real row with a few word edits (swap two neighbouring words, delete a word,
insert a word taken from the same row) applied until the Jaccard similarity of its word 5-gram
shingles with the original falls to about 0.9 (edits are kept only while it stays >= 0.85; an
edit that would go lower is retried nearer an end of the text, where it touches fewer
shingles). The real Jaccard of every injected pair is measured, not assumed.

Used by bench/dedup.py and bench/decontam.py; reads ../shared/data (benchmarks may, the app may not).
"""
from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.data.dedup import shingles  # noqa: E402
from core.data.text import row_text  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
_SPACE = re.compile(r"(\s+)")


def alpaca_rows(path: Path = SHARED / "alpaca_5000.json") -> list[dict]:
    """The real rows in the loader's normal form (user: instruction + input, assistant: output)."""
    records = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for r in records:
        prompt = (r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")).strip()
        rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": r["output"]}]})
    return rows


def jaccard(a: str, b: str, ngram: int = 5) -> float:
    x, y = set(shingles(a, ngram)), set(shingles(b, ngram))
    return len(x & y) / len(x | y) if x | y else 1.0


def _edit(text: str, rng: random.Random, near_end: bool) -> str:
    parts = _SPACE.split(text)  # words at even positions, the whitespace between them at odd ones
    word_slots = [i for i in range(0, len(parts), 2) if parts[i]]
    if len(word_slots) < 2:
        return text + " " + rng.choice(["indeed", "please", "now"])
    if near_end:
        k = rng.choice([0, 1, len(word_slots) - 2, len(word_slots) - 1])
    else:
        k = rng.randrange(len(word_slots) - 1)
    slot = word_slots[k]
    action = rng.choice(["swap", "delete", "insert"])
    if action == "swap":
        other = word_slots[k + 1] if k + 1 < len(word_slots) else word_slots[k - 1]
        parts[slot], parts[other] = parts[other], parts[slot]
    elif action == "delete":
        parts[slot] = ""
        if slot + 1 < len(parts):
            parts[slot + 1] = ""
    else:
        parts[slot] = parts[slot] + " " + parts[rng.choice(word_slots)]
    return "".join(parts)


def perturb(row: dict, rng: random.Random, low: float = 0.85, high: float = 0.95, tries: int = 40) -> dict:
    """A copy of `row` with word edits until the shingle Jaccard with it is in about [low, high].

    A row too short for any edit to stay >= low gets the least damaging edit found, so every
    copy differs from its original (its real Jaccard is then below `low` and is reported so)."""
    original = set(shingles(row_text(row, "both")))
    messages = [dict(m) for m in row["messages"]]
    edited = False
    best: tuple[float, list] | None = None
    for attempt in range(tries):
        turn = rng.choices(range(len(messages)), weights=[len(m["content"].split()) + 1 for m in messages])[0]
        candidate = [dict(m) for m in messages]
        candidate[turn]["content"] = _edit(candidate[turn]["content"], rng, near_end=attempt >= tries // 2)
        new = set(shingles(row_text({"messages": candidate}, "both")))
        similarity = len(original & new) / len(original | new)
        if low <= similarity < 1.0 or (edited and similarity >= low):
            messages, edited = candidate, True
            if similarity <= high:
                break
        elif similarity < 1.0 and (best is None or similarity > best[0]):
            best = (similarity, candidate)
    if not edited and best is not None:
        messages = best[1]
    return {"messages": messages}


def grow(rows: list[dict], total: int, seed: int = 0, copies_of: int | None = None):
    """`rows` followed by perturbed copies up to `total` rows.

    Returns (all rows, origin index of every row, real Jaccard of every copy with its origin).
    Copy k is made from row k % copies_of (default: all rows, round robin).
    """
    rng = random.Random(seed)
    copies_of = copies_of or len(rows)
    grown = list(rows)
    origin = list(range(len(rows)))
    similarity = [1.0] * len(rows)
    for k in range(total - len(rows)):
        source = k % copies_of
        copy = perturb(rows[source], rng)
        grown.append(copy)
        origin.append(source)
        similarity.append(jaccard(row_text(rows[source], "both"), row_text(copy, "both")))
    return grown, origin, similarity


def plant_edits(rows: list[dict], seed: int = 0, edits: tuple[int, int] = (1, 4)) -> tuple[list[dict], list[int], list[float]]:
    """One copy of every row with 1-4 word edits (swap / delete / insert / replace, anywhere in the text).

    Unlike `grow`, copies are not steered towards a target similarity: their real 5-gram Jaccard with the
    original spreads across the threshold (short rows fall far below it, long rows stay above), which is where
    a near-duplicate finder's recall is decided. Returns (rows + copies, origin of every row, real Jaccard).
    """
    rng = random.Random(seed)
    vocabulary = sorted({w for r in rows[:500] for w in row_text(r, "both").split() if w.isalpha()})
    out, origin, similarity = list(rows), list(range(len(rows))), [1.0] * len(rows)
    for k, row in enumerate(rows):
        messages = [dict(m) for m in row["messages"]]
        for _ in range(rng.randint(*edits)):
            turn = rng.choices(range(len(messages)), weights=[len(m["content"].split()) + 1 for m in messages])[0]
            parts = _SPACE.split(messages[turn]["content"])
            slots = [i for i in range(0, len(parts), 2) if parts[i]]
            slot = rng.choice(slots)
            action = rng.choice(["swap", "delete", "insert", "replace"]) if len(slots) > 1 else "insert"
            if action == "swap":
                other = slots[(slots.index(slot) + 1) % len(slots)]
                parts[slot], parts[other] = parts[other], parts[slot]
            elif action == "delete":
                parts[slot] = ""
            elif action == "insert":
                parts[slot] = parts[slot] + " " + rng.choice(vocabulary)
            else:
                parts[slot] = rng.choice(vocabulary)
            messages[turn]["content"] = "".join(parts)
        copy = {"messages": messages}
        out.append(copy)
        origin.append(k)
        similarity.append(jaccard(row_text(row, "both"), row_text(copy, "both")))
    return out, origin, similarity
