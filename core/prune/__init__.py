"""Pruning: unstructured magnitude, 2:4 semi-structured, zeroed channels, removed MLP neurons / attention heads;
measured before and after (sparsity per layer, size, latency) and scored by the forgetting report."""
from core.prune.methods import MODES, SHRINKING_MODES, TARGETS, PruneError, prune_model
from core.prune.spec import MODE_LABELS, PruneSpec

__all__ = ["MODES", "MODE_LABELS", "SHRINKING_MODES", "TARGETS", "PruneError", "PruneSpec", "prune_model"]
