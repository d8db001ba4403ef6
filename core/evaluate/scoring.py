"""Model-side scoring: token log-likelihoods, multiple choice, and the adapter probe (greedy answers come
from `core.generation`, the one generation path).

Everything here takes an already loaded model + tokenizer (loaded through `core.models`) and returns
plain Python numbers; the string metrics themselves live in `core.scorers`.

Log-likelihoods are computed on left-padded batches (explicit position ids, so padding does not shift
positions) and only the logits that are needed are kept (`logits_to_keep`), which matters with
large vocabularies: a batch is sized so its kept logits stay under `LOGIT_BUDGET` floats.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from core.data.masking import IGNORE_INDEX, MaskingError, encode_conversation
from core.generation import Stopped, prompt_ids
from core.generation import pad_token_id as _pad_id
from core.models import is_prompt_learning

LOGIT_BUDGET = 64_000_000  # floats of logits per forward pass (~256 MB in float32)
PROBE_MESSAGES = [{"role": "user", "content": "Summarise this support ticket as JSON: my invoice was charged twice this month."}]
PROBE_TOLERANCE = 1e-4  # max |logit difference| below which a fine-tuned model counts as unchanged

StopCheck = Callable[[], bool]
Progress = Callable[[int], None]  # called with the number of items just finished


def _batch_for(model: Any, batch_size: int) -> int:
    """Prompt / prefix tuning ignore position ids, so a left-padded row would be scored at shifted positions:
    those models score one sequence at a time (no padding)."""
    return 1 if is_prompt_learning(model) else batch_size


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def _check_stop(should_stop: StopCheck | None) -> None:
    if should_stop is not None and should_stop():
        raise Stopped()


# ---------------------------------------------------------------- prompts


def answer_token_mask(messages: Sequence[dict], tokenizer: Any, max_length: int | None) -> tuple[list[int], list[bool]]:
    """A conversation's ids and which tokens are scored: the assistant tokens that training would train
    (`core.data.masking`, policy all_assistant), or the final answer for a template-less tokenizer."""
    if getattr(tokenizer, "chat_template", None):
        encoded = encode_conversation(list(messages), tokenizer, policy="all_assistant", max_length=max_length)
        return encoded.input_ids, [label != IGNORE_INDEX for label in encoded.labels]
    prompt = prompt_ids(messages[:-1], tokenizer)
    answer = tokenizer(" " + messages[-1]["content"] + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
    ids = (prompt + answer)[: max_length or None]
    return ids, [i >= len(prompt) for i in range(len(ids))]


# ---------------------------------------------------------------- log-likelihoods


def token_logprobs(
    model: Any,
    sequences: Sequence[Sequence[int]],
    scored: Sequence[Sequence[bool]],
    *,
    batch_size: int = 8,
    should_stop: StopCheck | None = None,
    on_progress: Progress | None = None,
) -> list[np.ndarray]:
    """log p(token_j | tokens before j) for every j where scored[j] is true (j >= 1), per sequence."""
    import torch

    if len(sequences) != len(scored):
        raise ValueError("one scored-mask per sequence is needed")
    batch_size = _batch_for(model, batch_size)
    vocab = int(model.get_output_embeddings().weight.shape[0]) if model.get_output_embeddings() is not None else 50_000
    token_budget = max(1, LOGIT_BUDGET // vocab)
    targets = [[j for j in range(1, len(seq)) if scored[i][j]] for i, seq in enumerate(sequences)]
    kept = [len(seq) - targets[i][0] + 1 if targets[i] else 0 for i, seq in enumerate(sequences)]
    results: list[np.ndarray] = [np.zeros(0) for _ in sequences]
    todo = sorted((i for i in range(len(sequences)) if targets[i]), key=lambda i: (kept[i], len(sequences[i])))
    for chunk in _budget_batches(todo, kept, batch_size, token_budget):
        _check_stop(should_stop)
        _score_batch(model, sequences, targets, chunk, results, torch)
        if on_progress:
            on_progress(len(chunk))
    if on_progress:
        on_progress(len(sequences) - len(todo))  # sequences with nothing to score count as done
    return results


def _budget_batches(order: list[int], kept: list[int], batch_size: int, token_budget: int) -> list[list[int]]:
    batches, current, widest = [], [], 0
    for i in order:
        width = max(widest, kept[i])
        if current and (len(current) >= batch_size or (len(current) + 1) * width > token_budget):
            batches.append(current)
            current, width = [], kept[i]
        current.append(i)
        widest = width
    if current:
        batches.append(current)
    return batches


def _score_batch(model: Any, sequences, targets, chunk: list[int], results: list, torch: Any) -> None:
    device = _device(model)
    width = max(len(sequences[i]) for i in chunk)
    keep = max(len(sequences[i]) - targets[i][0] + 1 for i in chunk)
    ids = torch.zeros((len(chunk), width), dtype=torch.long)
    mask = torch.zeros((len(chunk), width), dtype=torch.long)
    for row, i in enumerate(chunk):
        ids[row, width - len(sequences[i]):] = torch.tensor(list(sequences[i]))
        mask[row, width - len(sequences[i]):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = _forward_logits(model, ids.to(device), mask.to(device), positions.to(device), keep)
        logits = logits[:, -keep:].float()
        log_norm = torch.logsumexp(logits, dim=-1)  # (rows, keep)
        for row, i in enumerate(chunk):
            offset = width - len(sequences[i])
            js = torch.tensor(targets[i])
            cols = offset + js - 1 - (width - keep)  # logits at position j-1 predict token j
            tokens = ids[row, offset + js].to(device)
            values = logits[row, cols.to(device), tokens] - log_norm[row, cols.to(device)]
            results[i] = values.double().cpu().numpy()


def _forward_logits(model: Any, ids: Any, mask: Any, positions: Any, keep: int) -> Any:
    try:
        return model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep, use_cache=False).logits
    except TypeError:  # an architecture without logits_to_keep: compute all, keep the tail
        return model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits


@dataclass(frozen=True)
class NllRow:
    nll: float  # summed negative log-likelihood of the scored tokens
    tokens: int


def conversation_nll(model: Any, tokenizer: Any, conversations: Sequence[Sequence[dict]], *, max_length: int | None,
                     batch_size: int = 8, should_stop: StopCheck | None = None, on_progress: Progress | None = None) -> list[NllRow]:
    """Loss on the assistant tokens of each conversation, exactly the tokens training trains."""
    encoded = []
    for i, messages in enumerate(conversations):
        try:
            encoded.append(answer_token_mask(messages, tokenizer, max_length))
        except MaskingError as exc:
            raise MaskingError(f"task row {i}: {exc}") from exc
    logprobs = token_logprobs(model, [e[0] for e in encoded], [e[1] for e in encoded], batch_size=batch_size,
                              should_stop=should_stop, on_progress=on_progress)
    return [NllRow(float(-lp.sum()), int(lp.size)) for lp in logprobs]


def text_nll(model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int | None, batch_size: int = 8,
             should_stop: StopCheck | None = None, on_progress: Progress | None = None) -> list[NllRow]:
    """Plain language-model loss on every token of each text after the first (no chat template)."""
    sequences = [tokenizer(text)["input_ids"][: max_length or None] for text in texts]
    scored = [[True] * len(seq) for seq in sequences]
    logprobs = token_logprobs(model, sequences, scored, batch_size=batch_size, should_stop=should_stop, on_progress=on_progress)
    return [NllRow(float(-lp.sum()), int(lp.size)) for lp in logprobs]


def encode_choice(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), split the way lm-evaluation-harness splits a request: trailing spaces
    of the context move to the continuation, and the continuation's ids are the tail of the tokenised
    whole beyond the tokenised context. The model reads context ids + continuation ids."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation, context = context[-spaces:] + continuation, context[:-spaces]
    whole = tokenizer(context + continuation)["input_ids"]
    context_ids = tokenizer(context)["input_ids"]
    return context_ids, whole[len(context_ids):]


def choice_logliks(model: Any, tokenizer: Any, items: Sequence[dict], *, batch_size: int = 8, share_context: bool = True,
                   should_stop: StopCheck | None = None, on_progress: Progress | None = None) -> list[list[float]]:
    """Summed log-likelihood of each choice continuation given its item's context.

    The context of an item is read once and its key/value cache shared by all of its choices (the
    continuations are short, so this is ~2-4x less compute than scoring every context + choice); models
    whose cache cannot be shared are scored one full sequence per choice."""
    encoded = [[encode_choice(tokenizer, item["context"], choice) for choice in item["choices"]] for item in items]
    if share_context and not is_prompt_learning(model):  # virtual tokens would be prepended again to the continuation
        try:
            return _shared_context_logliks(model, tokenizer, encoded, batch_size, should_stop, on_progress)
        except Stopped:
            raise
        except (TypeError, AttributeError, NotImplementedError, ValueError, RuntimeError):
            pass  # e.g. a model without a reorderable cache: score full sequences below
    sequences, scored, owners = [], [], []
    for n, pairs in enumerate(encoded):
        for context_ids, continuation in pairs:
            sequences.append(context_ids + continuation)
            scored.append([j >= len(context_ids) for j in range(len(context_ids) + len(continuation))])
            owners.append(n)
    per_request = token_logprobs(model, sequences, scored, batch_size=batch_size, should_stop=should_stop)
    logliks: list[list[float]] = [[] for _ in items]
    for owner, lp in zip(owners, per_request):
        logliks[owner].append(float(lp.sum()))
    if on_progress:
        on_progress(len(items))
    return logliks


def _shared_context_logliks(model, tokenizer, encoded, batch_size, should_stop, on_progress) -> list[list[float]]:
    import torch

    device, pad = _device(model), _pad_id(tokenizer)
    logliks: list[list[float]] = [[] for _ in encoded]
    order = sorted(range(len(encoded)), key=lambda n: len(encoded[n][0][0]))
    for start in range(0, len(order), batch_size):
        _check_stop(should_stop)
        chunk = order[start:start + batch_size]
        contexts = [encoded[n][0][0] for n in chunk]
        width = max(len(c) for c in contexts)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, context in enumerate(contexts):
            ids[row, width - len(context):] = torch.tensor(context)
            mask[row, width - len(context):] = 1
        owners = [row for row, n in enumerate(chunk) for _ in encoded[n]]
        continuations = [cont for n in chunk for _, cont in encoded[n]]
        cont_width = max(1, max(len(c) for c in continuations))
        cont_ids = torch.full((len(owners), cont_width), pad, dtype=torch.long)
        cont_mask = torch.zeros((len(owners), cont_width), dtype=torch.long)
        for row, cont in enumerate(continuations):
            cont_ids[row, :len(cont)] = torch.tensor(cont, dtype=torch.long)
            cont_mask[row, :len(cont)] = 1
        owner_index = torch.tensor(owners)
        with torch.no_grad():
            first = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                          position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(device),
                          use_cache=True, logits_to_keep=1)
            new_api = "cache" in first  # transformers >= 5.x renamed past_key_values to cache
            cache = first["cache"] if new_api else first.past_key_values
            cache.reorder_cache(owner_index.to(device))  # one copy of the context's cache per choice
            full_mask = torch.cat([mask[owner_index], cont_mask], dim=1)
            positions = mask.sum(-1)[owner_index][:, None] + torch.arange(cont_width)[None, :]
            rest = model(input_ids=cont_ids.to(device), attention_mask=full_mask.to(device), position_ids=positions.to(device),
                         use_cache=True, **{"cache" if new_api else "past_key_values": cache}).logits.float()
            first_logp = torch.log_softmax(first.logits[:, -1].float(), dim=-1)[owner_index.to(device)]
            rest_logp = rest - torch.logsumexp(rest, dim=-1, keepdim=True)
        for row, cont in enumerate(continuations):
            total = float(first_logp[row, cont[0]]) if cont else 0.0
            for t in range(1, len(cont)):
                total += float(rest_logp[row, t - 1, cont[t]])
            logliks[chunk[owners[row]]].append(total)
        del cache, first, rest
        if on_progress:
            on_progress(len(chunk))
    return logliks


# ---------------------------------------------------------------- adapter probe


def probe_logits(model: Any, tokenizer: Any) -> Any:
    """Logits over the probe prompt (float32, CPU): the fingerprint compared between base and fine-tuned."""
    import torch

    ids = torch.tensor([prompt_ids(PROBE_MESSAGES, tokenizer)], device=_device(model))
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits[0].float().cpu()


def probe_difference(base_logits: Any, other_logits: Any) -> float:
    """Largest absolute logit difference; inf when the two models do not even share a vocabulary / prompt."""
    if tuple(base_logits.shape) != tuple(other_logits.shape):
        return float("inf")
    return float((base_logits - other_logits).abs().max())
