"""Pruning algorithms on a loaded torch model. Pure tensor work: no files, no job machinery.

Modes
- unstructured: per selected layer, the smallest |w| (L1 magnitude) are zeroed, exactly round(s · n) of them.
- semi_structured_2_4: in every group of 4 consecutive input weights, the 2 smallest |w| are zeroed
  (the pattern NVIDIA sparse tensor cores accelerate).
- channels: whole input channels (columns) of each selected layer with the smallest Ln norm are zeroed.
  Zeroed, not removed: the hidden size feeds every layer, so removing a column would change the whole model.
- mlp_neurons: whole MLP intermediate neurons (a row of gate/up and a column of down) with the smallest Ln
  norm are REMOVED: the matrices shrink, config.intermediate_size is updated, the saved model is smaller.
- attention_heads: whole query heads (their rows of q_proj and columns of o_proj) with the smallest Ln norm
  are REMOVED, the same number in every key/value group, and config.num_attention_heads is updated.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

MODES = ("unstructured", "semi_structured_2_4", "channels", "mlp_neurons", "attention_heads")
SHRINKING_MODES = ("mlp_neurons", "attention_heads")
TARGETS = {
    "all_linear": ("All linear layers except lm_head", r"."),
    "mlp": ("MLP only", r"\.mlp\."),
    "attention": ("Attention only", r"\.(self_attn|attention|attn)\."),
    "custom": ("Custom name pattern (regex)", None),
}


class PruneError(ValueError):
    """The model or the selection cannot be pruned as asked; the message says which layer and why."""


@dataclass
class PrunedLayer:
    name: str
    original_params: int
    params: int  # after pruning (smaller than original for shrinking modes)
    zeros: int

    @property
    def sparsity(self) -> float:
        """Fraction of the original weights that are gone: zeroed or removed."""
        return 1.0 - (self.params - self.zeros) / self.original_params if self.original_params else 0.0


# --------------------------------------------------------------------------- selection


def select_linear_layers(model: nn.Module, target: str = "all_linear", pattern: str = "") -> dict[str, nn.Linear]:
    """Linear layers whose name matches the target (never lm_head / tied output embeddings)."""
    if target not in TARGETS:
        raise PruneError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    regex = pattern if target == "custom" else TARGETS[target][1]
    if not regex:
        raise PruneError("a custom target needs a name pattern (a regular expression such as `mlp\\.(up|down)_proj`)")
    try:
        compiled = re.compile(regex)
    except re.error as exc:
        raise PruneError(f"the layer pattern {regex!r} is not a valid regular expression: {exc}") from None
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    chosen = {name: module for name, module in model.named_modules()
              if isinstance(module, nn.Linear) and module is not output and "lm_head" not in name and compiled.search(name)}
    if not chosen:
        raise PruneError(f"no linear layer matches {regex!r} (example names: {', '.join(_example_names(model))})")
    return chosen


def _example_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:4]


# --------------------------------------------------------------------------- masks (zeroing modes)


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask with exactly round(sparsity · numel) zeros at the smallest |w|."""
    n_prune = int(round(sparsity * weight.numel()))
    mask = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
    if n_prune:
        order = torch.argsort(weight.detach().abs().flatten().float(), stable=True)
        mask[order[:n_prune]] = False
    return mask.view_as(weight)


def n_of_m_mask(weight: torch.Tensor, n: int = 2, m: int = 4, name: str = "weight") -> torch.Tensor:
    """Keep-mask zeroing the n smallest |w| in every group of m consecutive weights along the input dim."""
    rows, cols = weight.shape
    if cols % m:
        raise PruneError(f"{name} has {cols} input features, not a multiple of {m}: {n}:{m} sparsity needs groups of {m}")
    groups = weight.detach().abs().float().reshape(rows, cols // m, m)
    smallest = torch.topk(groups, n, dim=-1, largest=False).indices
    mask = torch.ones_like(groups, dtype=torch.bool)
    mask.scatter_(-1, smallest, False)
    return mask.reshape(rows, cols)


def channel_mask(weight: torch.Tensor, sparsity: float, norm: int = 2) -> torch.Tensor:
    """Keep-mask zeroing whole input columns with the smallest Ln norm: round(sparsity · in_features) of them."""
    cols = weight.shape[1]
    n_prune = int(round(sparsity * cols))
    keep = torch.ones(cols, dtype=torch.bool, device=weight.device)
    if n_prune:
        scores = torch.linalg.vector_norm(weight.detach().float(), ord=norm, dim=0)
        keep[torch.argsort(scores, stable=True)[:n_prune]] = False
    return keep.unsqueeze(0).expand_as(weight)


@torch.no_grad()
def apply_zeroing(layers: dict[str, nn.Linear], mode: str, sparsity: float, norm: int = 2) -> list[PrunedLayer]:
    """Zero weights in place (the mask is folded into the weights: nothing to undo, nothing extra to save)."""
    report = []
    for name, layer in layers.items():
        w = layer.weight
        if mode == "unstructured":
            mask = magnitude_mask(w, sparsity)
        elif mode == "semi_structured_2_4":
            mask = n_of_m_mask(w, 2, 4, name)
        elif mode == "channels":
            mask = channel_mask(w, sparsity, norm)
        else:
            raise PruneError(f"{mode} is not a zeroing mode")
        w.mul_(mask.to(w.dtype))
        report.append(PrunedLayer(name, w.numel(), w.numel(), int((w == 0).sum())))
    return report


# --------------------------------------------------------------------------- shrinking modes


def _decoder_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.endswith("layers") and len(module):
            return [(f"{name}.{i}", layer) for i, layer in enumerate(module)]
    raise PruneError("could not find the decoder layers (a ModuleList named `layers`) in this model")


def _sliced_linear(layer: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    weight = layer.weight.detach()
    weight = weight[rows] if rows is not None else weight
    weight = weight[:, cols] if cols is not None else weight
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None, device=weight.device, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    if layer.bias is not None:
        new.bias.data.copy_(layer.bias.detach()[rows] if rows is not None else layer.bias.detach())
    return new


def _norm(t: torch.Tensor, norm: int, dim: int) -> torch.Tensor:
    return torch.linalg.vector_norm(t.detach().float(), ord=norm, dim=dim)


@torch.no_grad()
def remove_mlp_neurons(model: nn.Module, sparsity: float, norm: int = 2) -> list[PrunedLayer]:
    """Remove the same number of intermediate neurons from every gated MLP (gate/up/down projections)."""
    report, keep_count = [], None
    for prefix, layer in _decoder_layers(model):
        mlp = getattr(layer, "mlp", None)
        if mlp is None or not all(isinstance(getattr(mlp, p, None), nn.Linear) for p in ("gate_proj", "up_proj", "down_proj")):
            raise PruneError(f"{prefix}.mlp has no gate_proj / up_proj / down_proj linears: neuron pruning supports "
                             "Llama-style gated MLPs (Llama, Mistral, Qwen2/3, Gemma, SmolLM)")
        size = mlp.up_proj.out_features
        n_remove = int(round(sparsity * size))
        if n_remove >= size:
            raise PruneError(f"sparsity {sparsity} would remove all {size} neurons of {prefix}.mlp")
        scores = _norm(mlp.gate_proj.weight, norm, 1) + _norm(mlp.up_proj.weight, norm, 1) + _norm(mlp.down_proj.weight, norm, 0)
        keep = torch.sort(torch.argsort(scores, descending=True, stable=True)[: size - n_remove]).values
        before = {p: getattr(mlp, p).weight.numel() for p in ("gate_proj", "up_proj", "down_proj")}
        mlp.gate_proj = _sliced_linear(mlp.gate_proj, rows=keep)
        mlp.up_proj = _sliced_linear(mlp.up_proj, rows=keep)
        mlp.down_proj = _sliced_linear(mlp.down_proj, cols=keep)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(keep)
        for p, n in before.items():
            w = getattr(mlp, p).weight
            report.append(PrunedLayer(f"{prefix}.mlp.{p}", n, w.numel(), int((w == 0).sum())))
        keep_count = len(keep)
    model.config.intermediate_size = keep_count
    return report


@torch.no_grad()
def remove_attention_heads(model: nn.Module, sparsity: float, norm: int = 2) -> list[PrunedLayer]:
    """Remove the same number of query heads from every key/value group of every layer (KV heads are kept)."""
    config = model.config
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    group = n_heads // n_kv
    remove_per_group = int(round(sparsity * group))
    if group == 1:
        raise PruneError("every query head has its own key/value head here (no grouped-query attention); "
                         "removing heads would also remove KV heads, which this pruner does not do — use mlp_neurons or channels")
    if remove_per_group == 0:
        raise PruneError(f"sparsity {sparsity} removes no head: each key/value group has {group} query heads, "
                         f"so the smallest step is {1 / group:.2f}")
    if remove_per_group >= group:
        raise PruneError(f"sparsity {sparsity} would remove every query head of a group of {group}")
    report = []
    for prefix, layer in _decoder_layers(model):
        attn = getattr(layer, "self_attn", None)
        if attn is None or not all(isinstance(getattr(attn, p, None), nn.Linear) for p in ("q_proj", "o_proj")):
            raise PruneError(f"{prefix}.self_attn has no separate q_proj / o_proj: head pruning supports Llama-style attention")
        q = attn.q_proj.weight.view(n_heads, head_dim, -1)
        o = attn.o_proj.weight.view(attn.o_proj.out_features, n_heads, head_dim)
        scores = _norm(q.reshape(n_heads, -1), norm, 1) + _norm(o.permute(1, 0, 2).reshape(n_heads, -1), norm, 1)
        kept_heads = []
        for g in range(n_kv):
            heads = torch.arange(g * group, (g + 1) * group)
            best = heads[torch.argsort(scores[heads], descending=True, stable=True)[: group - remove_per_group]]
            kept_heads.extend(sorted(best.tolist()))
        dims = torch.tensor([h * head_dim + d for h in kept_heads for d in range(head_dim)], device=q.device)
        before = {"q_proj": attn.q_proj.weight.numel(), "o_proj": attn.o_proj.weight.numel()}
        attn.q_proj = _sliced_linear(attn.q_proj, rows=dims)
        attn.o_proj = _sliced_linear(attn.o_proj, cols=dims)
        for attr, value in (("num_heads", len(kept_heads)), ("num_key_value_groups", len(kept_heads) // n_kv), ("head_dim", head_dim)):
            if hasattr(attn, attr):
                setattr(attn, attr, value)
        for p, n in before.items():
            w = getattr(attn, p).weight
            report.append(PrunedLayer(f"{prefix}.self_attn.{p}", n, w.numel(), int((w == 0).sum())))
    config.num_attention_heads = n_kv * (group - remove_per_group)
    config.head_dim = head_dim
    return report


def prune_model(model: nn.Module, mode: str, sparsity: float, *, target: str = "all_linear", pattern: str = "",
                norm: int = 2) -> list[PrunedLayer]:
    """Prune in place; returns one row per touched weight matrix."""
    if mode not in MODES:
        raise PruneError(f"unknown pruning mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "mlp_neurons":
        return remove_mlp_neurons(model, sparsity, norm)
    if mode == "attention_heads":
        return remove_attention_heads(model, sparsity, norm)
    return apply_zeroing(select_linear_layers(model, target, pattern), mode, sparsity, norm)


def layer_sparsity_table(rows: list[PrunedLayer]) -> list[dict[str, Any]]:
    """Heatmap data: one row per weight with its decoder-layer index and module name."""
    table = []
    for r in rows:
        match = re.search(r"layers\.(\d+)\.(.+)$", r.name)
        table.append({"name": r.name, "layer": int(match.group(1)) if match else -1,
                      "module": (match.group(2) if match else r.name).replace(".weight", ""),
                      "original_params": r.original_params, "params": r.params, "zeros": r.zeros,
                      "sparsity": round(r.sparsity, 6)})
    return table


def overall_sparsity(rows: list[PrunedLayer]) -> float:
    original = sum(r.original_params for r in rows)
    return 1.0 - sum(r.params - r.zeros for r in rows) / original if original else 0.0


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all parameters, non-zero parameters), counting tied weights once."""
    seen, total, nonzero = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        nonzero += int((p != 0).sum())
    return total, nonzero
