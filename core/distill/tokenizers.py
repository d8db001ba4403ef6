"""Logit distillation compares distributions over token ids, so teacher and student must share the vocabulary.

One tokenizer may sit on output layers of different widths: Qwen2.5-7B has 152,064 logits and Qwen2.5-0.5B 151,936
for the same 151,665-token tokenizer, the rows past the tokenizer's length being padding no text ever produces. Such a
pair is compatible: the logits are compared over the tokenizer's ids only (`compare_width`)."""
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
    compare_width: int | None = None  # compare logits over ids [0, compare_width): the tokenizer's length; None when incompatible
    teacher_logits: int | None = None
    student_logits: int | None = None

    @property
    def padded_logits(self) -> bool:
        """The output layers are wider than the tokenizer, by different amounts: logits must be sliced to be compared."""
        return self.compare_width is not None and len({self.teacher_logits, self.student_logits} - {None}) > 1

    def as_dict(self) -> dict:
        return asdict(self)


def check_tokenizers(teacher: Any, student: Any, sample: str = SAMPLE_TEXT, teacher_logits: int | None = None,
                     student_logits: int | None = None) -> TokenizerCheck:
    """Same size, same token → id table (or at least the same ids on a sample), and output layers at least as wide as
    the tokenizer (padding rows beyond it may differ: the comparison is sliced to the tokenizer's length)."""
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
    n_tokens = len(teacher)  # every id the tokenizer can produce, added tokens included
    for who, width in (("teacher", teacher_logits), ("student", student_logits)):
        if width and width < n_tokens:
            problems.append(f"The {who} outputs {width} logits but the tokenizer has {n_tokens} tokens: ids from {width} on "
                            "have no logit, so the distributions cannot be compared.")
    return TokenizerCheck(compatible=not problems, teacher_vocab=len(t_vocab), student_vocab=len(s_vocab),
                          identical_vocab=identical, sample_tokens=len(t_ids), sample_mismatches=mismatches, problems=problems,
                          compare_width=None if problems else n_tokens, teacher_logits=teacher_logits, student_logits=student_logits)
