"""Held-out pair accuracy: does a model prefer the chosen answer of a preference pair over the rejected one?

Two readings, each per pair (the forgetting report's preference section, and bench scripts, use them):

- **log-prob preference**: sum log p(chosen | prompt) > sum log p(rejected | prompt) over the answer tokens, or per
  answer token (`length_normalised=True`: DPO is known to learn length, so the two can disagree);
- **implicit reward** (DPO's): beta · [(log π − log π_ref)(chosen) − (log π − log π_ref)(rejected)] > 0, with π_ref
  the model training started from (the SFT adapter a run continued, or the base). beta > 0 scales the margin, never
  its sign, so the accuracy does not depend on it.

The answer tokens are the ones `core.data.preference.encode_pair` marks trained (label != -100): the final answer and
its end-of-turn, never the prompt — the same spans the Template page draws and the trainer's data check counts. The
log-probabilities come from `core.evaluate.scoring.token_logprobs` (batched, only the needed logits kept).

A tie counts half: swapping chosen and rejected gives exactly 1 − accuracy, and a policy equal to its reference
scores 50 % (chance), not 0 %.

Example (a bench script)::

    from core.evaluate.pairs import load_pairs, pair_accuracy, pair_logprobs

    pairs = load_pairs("held_out_pairs.jsonl")
    tuned = pair_logprobs(model, tokenizer, pairs)
    start = pair_logprobs(sft_model, tokenizer, pairs)
    pair_accuracy(tuned)                          # plain log-prob preference, 0..1
    pair_accuracy(tuned, length_normalised=True)  # per answer token
    pair_accuracy(tuned, reference=start)         # DPO implicit reward accuracy vs the SFT start
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from core.data.formats import DatasetLoadError
from core.data.masking import IGNORE_INDEX, MaskingError
from core.data.preference import encode_pair, is_pair, load_preference_file
from core.evaluate.scoring import token_logprobs

DEFAULT_BETA = 0.1  # TrainSpec's default; the implicit reward margin is reported in its units


@dataclass(frozen=True)
class PairLogprobs:
    """One pair under one model: summed log-probabilities of each side's answer tokens, and how many tokens each has."""

    chosen: float
    rejected: float
    chosen_tokens: int
    rejected_tokens: int

    def margin(self, length_normalised: bool = False) -> float:
        """log p(chosen) − log p(rejected); per answer token when length_normalised."""
        if length_normalised:
            return self.chosen / max(1, self.chosen_tokens) - self.rejected / max(1, self.rejected_tokens)
        return self.chosen - self.rejected

    def as_dict(self) -> dict:
        return {"chosen": self.chosen, "rejected": self.rejected, "chosen_tokens": self.chosen_tokens,
                "rejected_tokens": self.rejected_tokens}


def pair_logprobs(model: Any, tokenizer: Any, pairs: Sequence[dict], *, chat_template: str | None = None, max_length: int | None = 1024,
                  batch_size: int = 8, should_stop: Callable[[], bool] | None = None,
                  on_progress: Callable[[int], None] | None = None) -> list[PairLogprobs]:
    """Summed answer-token log-probabilities of every pair's two sides (pairs in core.data.preference's normal form:
    prompt / chosen / rejected message lists). ValueError names the pair when it is not a pair, the chat template
    cannot render it, or max_length cuts every token of one side's answer. on_progress counts sequences (two per pair)."""
    sequences, scored = [], []
    for index, row in enumerate(pairs):
        if not is_pair(row):
            raise ValueError(f"pair {index}: not a prompt / chosen / rejected pair (keys: "
                             f"{sorted(row) if isinstance(row, dict) else type(row).__name__})")
        try:
            encoded = encode_pair(row, tokenizer, chat_template=chat_template, max_length=max_length)
        except MaskingError as exc:
            raise ValueError(f"pair {index}: the chat template cannot render it: {exc}") from None
        for side, name in ((encoded.chosen, "chosen"), (encoded.rejected, "rejected")):
            mask = [label != IGNORE_INDEX for label in side.labels]
            if not any(mask[1:]):
                raise ValueError(f"pair {index}: the {name} answer has no token left at max_length {max_length} (raise max_length)")
            sequences.append(list(side.input_ids))
            scored.append(mask)
    values = token_logprobs(model, sequences, scored, batch_size=batch_size, should_stop=should_stop, on_progress=on_progress)
    return [PairLogprobs(float(values[2 * i].sum()), float(values[2 * i + 1].sum()), len(values[2 * i]), len(values[2 * i + 1]))
            for i in range(len(values) // 2)]


def _outcome(margin: float) -> float:
    return 1.0 if margin > 0 else 0.0 if margin < 0 else 0.5


def reward_margins(policy: Sequence[PairLogprobs], reference: Sequence[PairLogprobs], beta: float = DEFAULT_BETA) -> list[float]:
    """DPO's implicit reward margin per pair: beta · [(π − π_ref)(chosen) − (π − π_ref)(rejected)] in summed log-probs."""
    if len(policy) != len(reference):
        raise ValueError(f"policy and reference must score the same pairs: {len(policy)} vs {len(reference)}")
    return [beta * ((p.chosen - r.chosen) - (p.rejected - r.rejected)) for p, r in zip(policy, reference)]


def pair_outcomes(policy: Sequence[PairLogprobs], reference: Sequence[PairLogprobs] | None = None, *,
                  length_normalised: bool = False) -> list[float]:
    """Per pair 1 (chosen preferred), 0 (rejected preferred) or 0.5 (tie): the log-prob preference, or with a
    reference the implicit reward's sign (length_normalised does not apply to it: DPO's reward sums log-probs)."""
    if reference is not None:
        if length_normalised:
            raise ValueError("length_normalised applies to the plain log-prob preference, not to the implicit reward")
        return [_outcome(m) for m in reward_margins(policy, reference, 1.0)]
    return [_outcome(p.margin(length_normalised)) for p in policy]


def pair_accuracy(policy: Sequence[PairLogprobs], reference: Sequence[PairLogprobs] | None = None, *,
                  length_normalised: bool = False) -> float:
    """Share of pairs (0..1) where the model prefers the chosen answer.

    policy: `pair_logprobs` of the model judged. Without `reference`: plain log-prob preference (summed, or per answer
    token with length_normalised). With `reference` (the same pairs scored by the model training started from): DPO's
    implicit reward accuracy, the held-out twin of TRL's rewards/accuracies. A tie counts half."""
    outcomes = pair_outcomes(policy, reference, length_normalised=length_normalised)
    if not outcomes:
        raise ValueError("pair accuracy needs at least one pair")
    return sum(outcomes) / len(outcomes)


def load_pairs(path: str | Path, *, samples: int = 0, seed: int = 0) -> list[dict]:
    """The pairs of a preference file (any shape core.data.preference reads), a seeded sample of `samples` (0 = all).
    ValueError names the file when it holds no pairs (e.g. KTO's unpaired rows)."""
    try:
        loaded = load_preference_file(Path(path).expanduser())
    except (DatasetLoadError, OSError) as exc:
        raise ValueError(f"pairs_dataset {path}: {exc}") from None
    pairs = [row for row in loaded.rows if is_pair(row)]
    if not pairs:
        raise ValueError(f"pairs_dataset {path}: no prompt / chosen / rejected pairs ({loaded.detected_format} rows; "
                         f"{loaded.report.summary()})")
    return sample_pairs(pairs, samples, seed)


def sample_pairs(pairs: Sequence[dict], samples: int, seed: int) -> list[dict]:
    """A seeded sample of `samples` pairs in their file order (0 or more than there are = all)."""
    if samples <= 0 or samples >= len(pairs):
        return list(pairs)
    keep = sorted(random.Random(seed).sample(range(len(pairs)), samples))
    return [pairs[i] for i in keep]

