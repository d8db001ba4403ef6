"""Before / after measurements of a pruned model: latency of a fixed generation and a plain verdict on speed."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from core.generation import pad_token_id, prompt_ids


@dataclass
class Latency:
    seconds: float  # median wall time of one generation
    new_tokens: int
    tokens_per_s: float
    text: str  # what the model generated (shows that it still generates)
    device: str

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def generation_latency(model: Any, tokenizer: Any, prompt: str, new_tokens: int = 32, repeats: int = 3) -> Latency:
    """Greedy generation of exactly `new_tokens` tokens (EOS ignored), timed `repeats` times after one warm-up."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids([{"role": "user", "content": prompt}], tokenizer)], device=device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=pad_token_id(tokenizer),
                  attention_mask=torch.ones_like(ids))
    output = model.generate(ids, **kwargs)  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        output = model.generate(ids, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    generated = output[0, ids.shape[1]:]
    return Latency(seconds=seconds, new_tokens=int(generated.numel()), tokens_per_s=generated.numel() / seconds,
                   text=tokenizer.decode(generated, skip_special_tokens=True), device=device.type)


def speed_note(mode: str, before: Latency, after: Latency) -> str:
    """A plain sentence on what the sparsity did to speed on this hardware."""
    ratio = before.seconds / after.seconds if after.seconds else 1.0
    measured = f"Measured: {before.seconds:.2f} s → {after.seconds:.2f} s for {after.new_tokens} tokens ({ratio:.2f}× speed)."
    if mode in ("mlp_neurons", "attention_heads"):
        return measured + " Removed neurons / heads make the matrices smaller, so dense kernels do less work."
    if mode == "semi_structured_2_4":
        return (measured + " No speed-up expected here: the zeros sit in dense matrices and dense kernels multiply them anyway. "
                "2:4 sparsity is only faster with a sparse kernel on GPUs with sparse tensor cores (NVIDIA Ampere or newer), "
                "after converting the weights (e.g. torch.sparse.to_sparse_semi_structured).")
    return (measured + " No speed-up expected: zeroed weights are still stored and multiplied by dense kernels; "
            "unstructured sparsity only pays off with sparse formats / kernels at very high sparsity. "
            "What it buys here is compressibility, not speed.")
