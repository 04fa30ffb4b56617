"""Interpolated Kneser-Ney n-gram language model over token ids: the baseline an RNN must beat.

    P_k(w | h) = max(c_k(h w) - D_k, 0) / T_k(h) + D_k * N_k(h) / T_k(h) * P_{k-1}(w | h[1:])

where c_n are raw counts at the top order and c_k (k < n) are continuation counts (how many
distinct tokens precede `h w`), T_k(h) = sum over w of c_k(h w), N_k(h) = how many w have
c_k(h w) > 0, and P_0 is uniform over the vocabulary. An unseen context backs off entirely to
the lower order, and an unseen token keeps the uniform floor, so no probability is ever 0.
Discounts are D_k = n1 / (n1 + 2 n2) (Ney et al. 1994) from the count-of-counts of order k,
clipped to [0.1, 0.9] so tiny corpora keep mass for unseen events. Sequences are left-padded
with `order - 1` start ids, so every token, even the first, has a full-length history.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

Gram = tuple[int, ...]
MIN_DISCOUNT, MAX_DISCOUNT = 0.1, 0.9


@dataclass(frozen=True)
class KneserNey:
    """A fitted model: per-order counts, context totals and discounts (index 0 unused)."""

    order: int
    vocab_size: int
    start_id: int
    counts: list[dict[Gram, int]]
    contexts: list[dict[Gram, tuple[int, int]]]
    discounts: list[float]

    def prob(self, history: Sequence[int], token: int) -> float:
        """P(token | the last order-1 ids of history), interpolated from the uniform upwards."""
        history = tuple(history)[-(self.order - 1) :] if self.order > 1 else ()
        p = 1.0 / self.vocab_size
        for k in range(1, self.order + 1):
            context = history[len(history) - (k - 1) :]
            stats = self.contexts[k].get(context)
            if stats is None:  # unseen context: this order adds nothing
                continue
            total, types = stats
            discount = self.discounts[k]
            seen = max(self.counts[k].get((*context, token), 0) - discount, 0.0)
            p = seen / total + discount * types / total * p
        return p

    def log_probs(self, sequence: Sequence[int]) -> np.ndarray:
        """Natural-log probability of every token of a sequence given its (padded) history."""
        padded = [self.start_id] * (self.order - 1) + [int(t) for t in sequence]
        width = self.order - 1
        return np.fromiter(
            (
                math.log(self.prob(padded[i : i + width], padded[i + width]))
                for i in range(len(padded) - width)
            ),
            dtype=np.float64,
            count=len(padded) - width,
        )


def ngram_keys(sequences: list[list[int]], k: int) -> Iterable[Gram]:
    """Every k-gram occurrence, in order."""
    for seq in sequences:
        yield from zip(*(seq[j:] for j in range(k)), strict=False)


def level_counts(padded: list[list[int]], order: int) -> list[dict[Gram, int]]:
    """Raw counts at the top order; continuation counts (distinct left neighbours) below it."""
    counts: list[dict[Gram, int]] = [{} for _ in range(order + 1)]
    counts[order] = Counter(ngram_keys(padded, order))
    for k in range(order - 1, 0, -1):
        longer = counts[k + 1] if k + 1 == order else set(ngram_keys(padded, k + 1))
        counts[k] = Counter(gram[1:] for gram in longer)
    return counts


def context_stats(counts: dict[Gram, int]) -> dict[Gram, tuple[int, int]]:
    """Total count and number of distinct followers of every context."""
    totals: Counter[Gram] = Counter()
    types: Counter[Gram] = Counter()
    for gram, count in counts.items():
        totals[gram[:-1]] += count
        types[gram[:-1]] += 1
    return {context: (totals[context], types[context]) for context in totals}


def estimate_discount(counts: dict[Gram, int]) -> float:
    """Ney's D = n1 / (n1 + 2 n2), clipped so that unseen events always keep some mass."""
    values = Counter(counts.values())
    n1, n2 = values.get(1, 0), values.get(2, 0)
    estimate = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
    return min(max(estimate, MIN_DISCOUNT), MAX_DISCOUNT)


def fit_kneser_ney(
    sequences: Iterable[Sequence[int]],
    order: int,
    vocab_size: int,
    start_id: int,
    discount: float | None = None,
) -> KneserNey:
    """Count n-grams of the training sequences (a fixed `discount` overrides the estimates)."""
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    padded = [[start_id] * (order - 1) + [int(t) for t in seq] for seq in sequences]
    counts = level_counts(padded, order)
    discounts = [0.0] + [
        discount if discount is not None else estimate_discount(counts[k])
        for k in range(1, order + 1)
    ]
    contexts = [{}] + [context_stats(counts[k]) for k in range(1, order + 1)]
    return KneserNey(order, vocab_size, start_id, counts, contexts, discounts)
