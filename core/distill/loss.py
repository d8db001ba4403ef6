"""The distillation loss: (1 − λ) · CE(student, labels) + λ · T² · KL(p_teacher^T ‖ p_student^T).

p^T = softmax(logits / T). The T² factor keeps the gradient of the soft term on the same scale as
the hard term when T changes (Hinton et al., 2015). Both terms are averaged over the positions whose
label is trained (label != -100), after the usual one-token shift of causal language modelling.
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


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float = 2.0, alpha: float = 0.5, shift: bool = True) -> DistillLoss:
    """Logits (batch, seq, vocab), labels (batch, seq) with -100 where not trained. alpha is λ."""
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"teacher and student vocabularies differ ({teacher_logits.shape[-1]} vs {student_logits.shape[-1]} logits)")
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
