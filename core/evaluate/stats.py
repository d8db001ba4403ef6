"""Percentile bootstrap confidence intervals over examples (seeded, vectorised).

Every interval resamples the evaluated examples with replacement. A delta between two models is a
paired bootstrap: both models' scores are resampled with the same indices, so the interval reflects
how much the two models differ on the same examples, not how hard the examples are.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    value: float  # the statistic on the examples as evaluated
    low: float
    high: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def scaled(self, factor: float) -> "Interval":
        return Interval(self.value * factor, self.low * factor, self.high * factor, self.n)


def bootstrap_interval(
    statistic: Callable[[np.ndarray], np.ndarray],
    n: int,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """`statistic(index_matrix)` maps a (k, n) matrix of example indices to k values (one per row)."""
    if n <= 0:
        raise ValueError("a confidence interval needs at least one example")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    point = float(statistic(np.arange(n)[None, :])[0])
    if resamples <= 0 or n == 1:
        return Interval(point, point, point, n)
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, n, size=(resamples, n))
    values = np.asarray(statistic(indices), dtype=float)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return Interval(point, float(low), float(high), n)


def _array(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=float)


def mean_interval(values: Sequence[float], **kwargs) -> Interval:
    data = _array(values)
    return bootstrap_interval(lambda idx: data[idx].mean(axis=1), len(data), **kwargs)


def paired_delta_interval(base: Sequence[float], other: Sequence[float], **kwargs) -> Interval:
    """mean(other) - mean(base) over the same examples."""
    a, b = _array(base), _array(other)
    if a.shape != b.shape:
        raise ValueError(f"a paired comparison needs the same examples: {len(a)} vs {len(b)} scores")
    diff = b - a
    return bootstrap_interval(lambda idx: diff[idx].mean(axis=1), len(diff), **kwargs)


def perplexity_interval(nll: Sequence[float], tokens: Sequence[int], **kwargs) -> Interval:
    """exp(sum NLL / sum tokens), resampling whole documents (tokens of one text are not independent)."""
    losses, counts = _array(nll), _array(tokens)
    return bootstrap_interval(lambda idx: np.exp(losses[idx].sum(1) / counts[idx].sum(1)), len(losses), **kwargs)


def perplexity_change_interval(base_nll: Sequence[float], base_tokens: Sequence[int],
                               other_nll: Sequence[float], other_tokens: Sequence[int], **kwargs) -> Interval:
    """Relative perplexity change in percent, 100 * (ppl_other / ppl_base - 1), paired over documents."""
    a_nll, a_tok, b_nll, b_tok = map(_array, (base_nll, base_tokens, other_nll, other_tokens))
    if a_nll.shape != b_nll.shape:
        raise ValueError(f"a paired comparison needs the same documents: {len(a_nll)} vs {len(b_nll)}")

    def change(idx: np.ndarray) -> np.ndarray:
        base = a_nll[idx].sum(1) / a_tok[idx].sum(1)
        other = b_nll[idx].sum(1) / b_tok[idx].sum(1)
        return 100.0 * (np.exp(other - base) - 1.0)

    return bootstrap_interval(change, len(a_nll), **kwargs)
