"""The distillation loss: (1 − λ) · CE(student, labels) + λ · T² · KL(p_teacher^T ‖ p_student^T).

p^T = softmax(logits / T). The T² factor keeps the gradient of the soft term on the same scale as
the hard term when T changes (Hinton et al., 2015). Both terms are averaged over the positions whose
label is trained (label != -100), after the usual one-token shift of causal language modelling.
Output layers padded past the tokenizer (different widths for one tokenizer) are compared over the tokenizer's ids
only: `vocab_size` slices both logits to it (core.distill.tokenizers.check_tokenizers gives the width).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass
class DistillLoss:
    loss: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor
    tokens: int


def softened_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.softmax(logits.float() / temperature, dim=-1)


def kl_teacher_student(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_teacher^T ‖ p_student^T) per position (last dim = vocabulary)."""
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)


def shared_vocabulary(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                      vocab_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both logits over the same ids: sliced to the first `vocab_size` (the tokenizer's length, past which rows are
    padding); without it the widths must already be equal."""
    widths = (teacher_logits.shape[-1], student_logits.shape[-1])
    if vocab_size is None:
        if widths[0] != widths[1]:
            raise ValueError(f"teacher and student vocabularies differ ({widths[0]} vs {widths[1]} logits)")
        return teacher_logits, student_logits
    if min(widths) < vocab_size:
        raise ValueError(f"logits narrower than the tokenizer's {vocab_size} tokens (teacher {widths[0]}, student {widths[1]})")
    return teacher_logits[..., :vocab_size], student_logits[..., :vocab_size]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float = 2.0, alpha: float = 0.5, shift: bool = True, vocab_size: int | None = None) -> DistillLoss:
    """Logits (batch, seq, vocab), labels (batch, seq) with -100 where not trained. alpha is λ. vocab_size: compare
    (and take the cross-entropy) over the first vocab_size ids only — the tokenizer's length when the layers are padded."""
    teacher_logits, student_logits = shared_vocabulary(teacher_logits, student_logits, vocab_size)
    if shift:
        student_logits, teacher_logits, labels = student_logits[:, :-1], teacher_logits[:, :-1], labels[:, 1:]
    mask = labels != IGNORE_INDEX
    tokens = int(mask.sum())
    if tokens == 0:
        zero = student_logits.sum() * 0.0
        return DistillLoss(zero, zero.detach(), zero.detach(), 0)
    s, t = student_logits[mask], teacher_logits[mask]
    ce = F.cross_entropy(s.float(), labels[mask])
    kl = kl_teacher_student(t, s, temperature).mean()
    loss = (1.0 - alpha) * ce + alpha * temperature**2 * kl
    return DistillLoss(loss, ce.detach(), kl.detach(), tokens)
