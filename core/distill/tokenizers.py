"""Logit distillation compares distributions over token ids, so teacher and student must share the vocabulary."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SAMPLE_TEXT = ("The quick brown fox jumps over the lazy dog. Customer ticket #4521: I was charged twice for my order! "
               "def add(a, b):\n    return a + b  # 12.5% 😀 Übermäßig ünïcödé")


@dataclass
class TokenizerCheck:
    compatible: bool
    teacher_vocab: int
    student_vocab: int
    identical_vocab: bool
    sample_tokens: int
    sample_mismatches: int
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def check_tokenizers(teacher: Any, student: Any, sample: str = SAMPLE_TEXT, teacher_logits: int | None = None,
                     student_logits: int | None = None) -> TokenizerCheck:
    """Same size, same token → id table (or at least the same ids on a sample), same logit width."""
    t_vocab, s_vocab = teacher.get_vocab(), student.get_vocab()
    identical = t_vocab == s_vocab
    t_ids = teacher(sample, add_special_tokens=False)["input_ids"]
    s_ids = student(sample, add_special_tokens=False)["input_ids"]
    mismatches = sum(a != b for a, b in zip(t_ids, s_ids)) + abs(len(t_ids) - len(s_ids))
    problems = []
    if len(t_vocab) != len(s_vocab):
        problems.append(f"The teacher's tokenizer has {len(t_vocab)} tokens and the student's {len(s_vocab)}: "
                        "their output distributions are over different vocabularies, so logits cannot be compared.")
    elif not identical:
        differing = sum(1 for tok, i in t_vocab.items() if s_vocab.get(tok) != i)
        problems.append(f"The tokenizers have the same size but {differing} tokens map to different ids: "
                        "choose a student from the teacher's model family.")
    if mismatches:
        problems.append(f"The sample text tokenizes differently ({mismatches} of {len(t_ids)} tokens differ).")
    if teacher_logits and student_logits and teacher_logits != student_logits:
        problems.append(f"The teacher outputs {teacher_logits} logits and the student {student_logits}: "
                        "the output layers have different widths (padded vocabularies?).")
    return TokenizerCheck(compatible=not problems, teacher_vocab=len(t_vocab), student_vocab=len(s_vocab),
                          identical_vocab=identical, sample_tokens=len(t_ids), sample_mismatches=mismatches, problems=problems)
