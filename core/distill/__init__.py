"""Teacher → student logit distillation: the loss, tokenizer compatibility, a shallow student copied from the
teacher's own layers, the temperature explanation table, and the distill job."""
from core.distill.loss import distillation_loss, softened_probs
from core.distill.spec import DistillSpec

__all__ = ["DistillSpec", "distillation_loss", "softened_probs"]
