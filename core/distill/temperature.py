"""What temperature does to a teacher's next-token distribution, on the user's own prompt."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from core.distill.loss import softened_probs
from core.generation import prompt_ids


@torch.no_grad()
def next_token_logits(model: Any, tokenizer: Any, prompt: str) -> torch.Tensor:
    """Logits of the token after the prompt (the chat template's assistant turn when the model has one)."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids([{"role": "user", "content": prompt}], tokenizer)], device=device)
    return model(input_ids=ids).logits[0, -1].float().cpu()


def temperature_table(logits: torch.Tensor, tokenizer: Any, temperatures: Sequence[float] = (1.0, 2.0, 4.0),
                      top_k: int = 8) -> list[dict]:
    """The top-k tokens at T = first temperature, with their probability at every temperature.

    Rows: {"token": text, "id": int, "T=1": p, "T=2": p, ...}, plus a last row "(all other tokens)" with the
    remaining mass — the mass that softening moves onto the tail is exactly what the student learns from.
    """
    probs = {t: softened_probs(logits, t) for t in temperatures}
    top = torch.topk(probs[temperatures[0]], top_k).indices.tolist()
    rows = []
    for token_id in top:
        row = {"token": repr(tokenizer.decode([token_id])), "id": token_id}
        row.update({_label(t): round(float(probs[t][token_id]), 4) for t in temperatures})
        rows.append(row)
    rest = {"token": "(all other tokens)", "id": -1}
    rest.update({_label(t): round(1.0 - sum(r[_label(t)] for r in rows), 4) for t in temperatures})
    rows.append(rest)
    return rows


def entropy_by_temperature(logits: torch.Tensor, temperatures: Sequence[float] = (1.0, 2.0, 4.0)) -> dict[str, float]:
    out = {}
    for t in temperatures:
        p = softened_probs(logits, t)
        out[_label(t)] = round(float(-(p * torch.log(p.clamp_min(1e-12))).sum()), 3)
    return out


def _label(t: float) -> str:
    return f"T={t:g}"
