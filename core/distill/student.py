"""Students for distillation: a shallower copy of the teacher, initialised from the teacher's own layers."""
from __future__ import annotations

import copy
from typing import Any

from torch import nn


def kept_layer_indices(n_layers: int, stride: int = 2) -> list[int]:
    """Every `stride`-th layer from the first; the last layer is always kept (it feeds the final norm)."""
    if stride < 1:
        raise ValueError(f"layer stride must be at least 1, got {stride}")
    kept = list(range(0, n_layers, stride))
    if kept[-1] != n_layers - 1:
        kept.append(n_layers - 1)
    return kept


def _layer_list(model: nn.Module) -> tuple[nn.Module, str]:
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.endswith("layers") and len(module):
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name) if parent_name else model, attr
    raise ValueError("could not find the decoder layers (a ModuleList named `layers`) in the teacher")


def shallow_student(teacher: Any, stride: int = 2) -> Any:
    """A deep copy of the teacher keeping every `stride`-th decoder layer (and the last), same embeddings and head."""
    student = copy.deepcopy(teacher)
    parent, attr = _layer_list(student)
    layers = getattr(parent, attr)
    kept = kept_layer_indices(len(layers), stride)
    new_layers = nn.ModuleList([layers[i] for i in kept])
    for new_index, layer in enumerate(new_layers):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_index  # the KV cache is indexed by position in the new stack
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new_index
    setattr(parent, attr, new_layers)
    config = student.config
    config.num_hidden_layers = len(kept)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in kept]
    for p in student.parameters():
        p.requires_grad_(True)
    return student
