"""Continuous cache (Grave, Joulin & Usunier 2017): the model's own recent states as a memory.

A play repeats itself: its characters' names open every speech, its places and props recur.
The cache stores, for each of the last `size` positions i of the play being scored, the model's
hidden state h_i and the token y_i that followed it. At position t it proposes

    p_cache(w) = sum over i in [t - size, t) with y_i = w of exp(theta * h_t . h_i) / Z_t,

a softmax over past positions whose states resemble the current one, and the scored
probability becomes (1 - lambda) p_model(y_t) + lambda p_cache(y_t). Nothing is trained: theta
and lambda are chosen on the validation split and the cache only reads test tokens already
scored. With theta = 0 every past token weighs the same: the classical unigram cache (Kuhn &
De Mori 1990), which is what the n-gram baseline gets for an equal comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

THETAS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8)  # validation grid for the state-similarity scale
LAMBDAS = tuple(round(0.05 * k, 2) for k in range(1, 13))  # 0.05 ... 0.6
BLOCK = 256  # query positions per matrix product; changes speed and memory, not the numbers


@dataclass(frozen=True)
class CacheFit:
    """Interpolation settings chosen on validation and the validation cross-entropy they gave."""

    theta: float
    lam: float
    cross_entropy: float


def cache_probs(
    states: np.ndarray, targets: np.ndarray, size: int, thetas: Sequence[float]
) -> np.ndarray:
    """(len(thetas), T) cache probability of each target of one sequence; NaN where it is empty.

    `states[t]` is the hidden state that predicted `targets[t]`; position t reads positions
    [t - size, t) only, so no target ever sees itself or anything after it.
    """
    total = len(targets)
    out = np.full((len(thetas), total), np.nan)
    states = states.astype(np.float32, copy=False)
    for start in range(1, total, BLOCK):  # position 0 has an empty cache
        stop = min(start + BLOCK, total)
        low = max(0, start - size)
        sims = states[start:stop] @ states[low:stop].T  # (queries, keys)
        query = np.arange(start, stop)[:, None]
        key = np.arange(low, stop)[None, :]
        invalid = (key >= query) | (key < query - size)
        miss = (targets[low:stop][None, :] != targets[start:stop][:, None]) | invalid
        for row, theta in enumerate(thetas):
            # Softmax over the valid keys in float32 (sums of <= size terms: ~1e-6 relative).
            weights = theta * sims
            weights[invalid] = -np.inf
            weights -= weights.max(axis=1, keepdims=True)
            np.exp(weights, out=weights)
            total_weight = weights.sum(axis=1, dtype=np.float64)
            weights[miss] = 0.0
            out[row, start:stop] = weights.sum(axis=1, dtype=np.float64) / total_weight
    return out


def unigram_cache_probs(targets: np.ndarray, size: int) -> np.ndarray:
    """`cache_probs` at theta = 0, by counting: the share of y_t among the last `size` tokens."""
    total = len(targets)
    order = np.lexsort((np.arange(total), targets))  # by token, then position
    ranked = np.empty(total, dtype=np.int64)
    ranked[order] = np.arange(total)
    # Sorted (token, position) keys: y_t's earlier occurrences no further back than `size`
    # positions are the entries from (y_t, t - size) up to y_t's own entry.
    keys = targets[order].astype(np.int64) * (total + 1) + order
    window_start = np.maximum(np.arange(total) - size, 0)
    oldest = np.searchsorted(keys, targets.astype(np.int64) * (total + 1) + window_start)
    out = (ranked - oldest) / np.minimum(np.arange(total), size).clip(min=1)
    out[0] = np.nan
    return out


def spans(lengths: Sequence[int], total: int) -> list[slice]:
    """The slice of each consecutive sequence (play) in arrays of `total` targets."""
    if sum(lengths) != total:
        raise ValueError(f"lengths sum to {sum(lengths)}, but there are {total} targets")
    edges = np.cumsum([0, *lengths])
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def sequence_cache_probs(
    states: np.ndarray | None,
    targets: np.ndarray,
    lengths: Sequence[int],
    size: int,
    thetas: Sequence[float],
) -> np.ndarray:
    """`cache_probs` over consecutive sequences (plays): no cache crosses a sequence boundary.

    `states` None: the unigram cache (one row, as theta = 0).
    """
    parts = [
        unigram_cache_probs(targets[span], size)[None, :]
        if states is None
        else cache_probs(states[span], targets[span], size, thetas)
        for span in spans(lengths, len(targets))
    ]
    rows = 1 if states is None else len(thetas)
    return np.concatenate(parts, axis=1) if parts else np.zeros((rows, 0))


def interpolate(model_nll: np.ndarray, cache_p: np.ndarray, lam: float) -> np.ndarray:
    """Natural-log loss of (1 - lam) p_model + lam p_cache; the model alone where no cache yet."""
    mixed = (1.0 - lam) * np.exp(-model_nll) + lam * np.nan_to_num(cache_p, nan=0.0)
    return np.where(np.isnan(cache_p), model_nll, -np.log(mixed))


def choose(
    model_nll: np.ndarray,
    cache_p: np.ndarray,
    thetas: Sequence[float],
    lambdas: Sequence[float] = LAMBDAS,
) -> CacheFit:
    """The (theta, lambda) of lowest mean loss: run it on validation, apply the result to test."""
    best = CacheFit(0.0, 0.0, float(np.mean(model_nll)))
    for row, theta in enumerate(thetas):
        for lam in lambdas:
            loss = float(np.mean(interpolate(model_nll, cache_p[row], lam)))
            if loss < best.cross_entropy:
                best = CacheFit(float(theta), float(lam), loss)
    return best
