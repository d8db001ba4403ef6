"""Build the small general-ability sets the forgetting report scores (deterministic; run once, commit the output).

    python assets/general/make_general_sets.py [--shared ../shared/data]

- `general_text.jsonl`: held-out general text for perplexity, one human-written Self-Instruct seed task per
  line (instruction, input and output joined), 175 texts. Source: Self-Instruct seed tasks (Wang et al.,
  2022) as shipped in tatsu-lab/stanford_alpaca `seed_tasks.jsonl`, Apache-2.0.
- `general_mc.jsonl`: multiple choice scored by log-likelihood ("which question belongs to this story?"),
  built from the GSM8K test set (Cobbe et al., 2021; openai/grade-school-math, MIT). Context: the problem's
  story (every sentence before its final question); choices: the problem's own final question and the
  final questions of the three most similar other test problems (Jaccard similarity of content words,
  ties broken by position), sorted alphabetically; `gold` indexes the true question. Choosing it needs
  reading comprehension and world knowledge that a narrow fine-tune can erode.

  Why not "pick the correct final number": scored by log-likelihood without a worked solution, the
  embedded 135M model chose the right number 6% of the time with distractors taken from the problem
  (it prefers numbers it has just read) and 62% with offsets of the answer (it prefers the smaller
  number); neither measures an ability, so a drop in either would say nothing about forgetting.

The app reads only the built files; it never needs ../shared at run time.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SHARED = HERE.parents[2] / "shared" / "data"
MC_ITEMS = 400  # ~200 KB; evaluations sample from these
N_CHOICES = 4
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")
_WORD = re.compile(r"[a-z]+")


def split_story(question: str) -> tuple[str, str] | None:
    """(story, final question sentence), or None when the problem does not end in a separate question."""
    sentences = _SENTENCE_END.split(" ".join(question.split()))
    if len(sentences) < 2 or not sentences[-1].endswith("?"):
        return None
    return " ".join(sentences[:-1]), sentences[-1]


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 3}


def similarity(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def build_mc(gsm8k: Path) -> list[dict]:
    problems = [split_story(json.loads(line)["question"]) for line in gsm8k.read_text(encoding="utf-8").splitlines()]
    pool = [(i, story, question, content_words(story + " " + question)) for i, p in enumerate(problems) if p for story, question in [p]]
    items = []
    for i, story, question, words in pool:
        if len(items) == MC_ITEMS:
            break
        # hard distractors: the final questions of the most similar other problems (ties: lower index first)
        ranked = sorted((p for p in pool if p[0] != i), key=lambda p: (-similarity(words, p[3]), p[0]))
        distractors: list[str] = []
        for _, _, other, _ in ranked:
            if other.lower() != question.lower() and other not in distractors:
                distractors.append(other)
            if len(distractors) == N_CHOICES - 1:
                break
        choices = sorted([question] + distractors)
        items.append({
            "id": f"gsm8k-test-{i}",
            "context": story,
            "choices": [f" {c}" for c in choices],
            "gold": choices.index(question),
        })
    return items


def build_text(seed_tasks: Path) -> list[dict]:
    texts = []
    for line in seed_tasks.read_text(encoding="utf-8").splitlines():
        task = json.loads(line)
        for n, instance in enumerate(task["instances"]):
            parts = [task["instruction"].strip(), instance.get("input", "").strip(), instance["output"].strip()]
            texts.append({"id": f"{task['id']}-{n}", "text": "\n\n".join(p for p in parts if p)})
    return texts


def write_jsonl(rows: list[dict], path: Path) -> str:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED,
                        help="folder with gsm8k_test.jsonl and self_instruct_seed_tasks.jsonl")
    args = parser.parse_args()
    text = build_text(args.shared / "self_instruct_seed_tasks.jsonl")
    mc = build_mc(args.shared / "gsm8k_test.jsonl")
    print(f"general_text.jsonl: {len(text)} texts, sha256 {write_jsonl(text, HERE / 'general_text.jsonl')}")
    print(f"general_mc.jsonl: {len(mc)} items, sha256 {write_jsonl(mc, HERE / 'general_mc.jsonl')}")


if __name__ == "__main__":
    main()
