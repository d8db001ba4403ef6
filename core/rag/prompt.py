"""The one prompt format that puts retrieved chunks in context, and the one answer format (cite, then answer).

Every RAG prompt in the workbench is built here — the Decide page's "RAG with the base model", the RAFT
training rows, and the RAFT evaluation — so a model is trained on exactly the layout it is evaluated on:

    system:    [the row's own system prompt, then] RAG_INSTRUCTIONS
    user:      Documents:

               [1] <title>
               <chunk text>

               [2] ...

               Question: <question>

The answer format follows the RAFT paper (Zhang et al., 2024, arXiv:2403.10131): a reason that quotes the
supporting span between ##begin_quote## and ##end_quote##, then the answer; or a stated abstention when
no document holds it.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from core import scorers

BEGIN_QUOTE, END_QUOTE = "##begin_quote##", "##end_quote##"
REASON_MARK, ANSWER_MARK = "##Reason:", "##Answer:"
ABSTAIN_ANSWER = "not in the documents"
RAG_INSTRUCTIONS = (
    "Answer the question from the documents. First quote the sentence that answers it between "
    f"{BEGIN_QUOTE} and {END_QUOTE}, then write {ANSWER_MARK} and the short answer. If no document "
    f"answers it, write {ANSWER_MARK} {ABSTAIN_ANSWER}."
)
_QUOTE = re.compile(re.escape(BEGIN_QUOTE) + r"(.*?)" + re.escape(END_QUOTE), re.DOTALL)
_ANSWER = re.compile(re.escape(ANSWER_MARK), re.IGNORECASE)
_ABSTAIN = ("not in the documents", "not in the document", "no document", "not mentioned", "do not contain", "does not contain",
            "doesn't contain", "don't contain", "not provided", "no information", "cannot find", "can't find", "not stated")


def format_documents(chunks: Sequence) -> str:
    """Chunks (anything with .title and .text) numbered from 1, in the order given."""
    return "\n\n".join(f"[{n}] {c.title}\n{c.text}" for n, c in enumerate(chunks, 1))


def rag_messages(prompt: Sequence[dict] | str, chunks: Sequence) -> list[dict]:
    """A conversation with the documents placed before the question of its last user turn.

    `prompt` is the question text or the prompt messages of an eval row (system / earlier turns kept)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last_user is None:
        raise ValueError("a RAG prompt needs a user turn holding the question")
    question = str(messages[last_user]["content"]).strip()
    messages[last_user]["content"] = f"Documents:\n\n{format_documents(chunks)}\n\nQuestion: {question}"
    if messages[0].get("role") == "system":
        messages[0]["content"] = f"{str(messages[0]['content']).rstrip()}\n\n{RAG_INSTRUCTIONS}"
    else:
        messages.insert(0, {"role": "system", "content": RAG_INSTRUCTIONS})
    return messages


def cite_then_answer(answer: str, quote: str | None, doc_number: int | None = None, title: str = "") -> str:
    """The RAFT target: a reason quoting the oracle span, then the answer; or the abstention without an oracle."""
    if quote is None:
        return f"{REASON_MARK} None of the documents answers this question.\n{ANSWER_MARK} {ABSTAIN_ANSWER}"
    where = f"Document [{doc_number}]" + (f" ({title})" if title else "") if doc_number else "The documents"
    return f"{REASON_MARK} {where} says {BEGIN_QUOTE}{quote}{END_QUOTE} so the answer is {answer}.\n{ANSWER_MARK} {answer}"


def answer_part(text: str) -> str:
    """What follows the last ##Answer: marker (to the next ## marker), or the whole text when there is none."""
    text = str(text or "")
    found = list(_ANSWER.finditer(text))
    if not found:
        return text.strip()
    tail = text[found[-1].end():]
    return tail.split("##", 1)[0].strip()


def quotes(text: str) -> list[str]:
    """Every span between ##begin_quote## and ##end_quote##, stripped."""
    return [q.strip() for q in _QUOTE.findall(str(text or "")) if q.strip()]


def abstained(text: str) -> bool:
    """The answer says the documents do not hold it."""
    answer = scorers.normalize_text(answer_part(text))
    return any(phrase in answer for phrase in _ABSTAIN)


def answer_correct(text: str, reference: str) -> float:
    """1.0 when the reference answer appears, as whole words, in the answer part (`core.scorers.contains_answer`)."""
    return scorers.contains_answer(answer_part(text), reference)
