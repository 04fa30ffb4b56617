"""The language model's continuous cache: hand-checked probabilities, no look-ahead, the fit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.tasks.language_model import cache as lmcache


def brute_force(states: np.ndarray, targets: np.ndarray, size: int, theta: float) -> np.ndarray:
    """The definition, one position at a time."""
    out = np.full(len(targets), np.nan)
    for t in range(1, len(targets)):
        keys = range(max(0, t - size), t)
        weights = np.array([math.exp(theta * float(states[t] @ states[i])) for i in keys])
        hits = np.array([targets[i] == targets[t] for i in keys])
        out[t] = weights[hits].sum() / weights.sum()
    return out


def test_hand_example_unigram_and_similarity() -> None:
    # Two kinds of context (orthogonal states); token 7 follows kind A, token 9 kind B.
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    states = np.stack([a, b, a, b, a])
    targets = np.array([7, 9, 7, 9, 7])
    flat = lmcache.cache_probs(states, targets, size=10, thetas=[0.0])[0]
    # theta 0: the share of the target among all earlier tokens (a unigram cache).
    assert np.isnan(flat[0])
    np.testing.assert_allclose(flat[1:], [0 / 1, 1 / 2, 1 / 3, 2 / 4])
    # A large theta trusts similar states: position 4 (kind A) puts ~all mass on token 7.
    sharp = lmcache.cache_probs(states, targets, size=10, thetas=[20.0])[0]
    assert sharp[4] > 0.999 and sharp[3] > 0.999
    # size 1: only the previous position, whose token always differs here.
    np.testing.assert_allclose(lmcache.cache_probs(states, targets, 1, [0.0])[0][1:], 0.0)


def test_blocks_match_the_definition_and_never_look_ahead() -> None:
    rng = np.random.default_rng(0)
    length = lmcache.BLOCK * 2 + 37  # crosses block edges
    states = rng.normal(size=(length, 8)).astype(np.float32)
    targets = rng.integers(0, 5, size=length)
    got = lmcache.cache_probs(states, targets, size=100, thetas=[0.0, 0.3])
    for row, theta in enumerate((0.0, 0.3)):
        np.testing.assert_allclose(got[row], brute_force(states, targets, 100, theta), rtol=1e-5)
    # Changing everything after position t leaves every probability up to t as it was.
    t = 300
    later = states.copy(), targets.copy()
    later[0][t + 1 :] = rng.normal(size=later[0][t + 1 :].shape)
    later[1][t + 1 :] = (later[1][t + 1 :] + 1) % 5
    changed = lmcache.cache_probs(*later, size=100, thetas=[0.3])
    np.testing.assert_array_equal(changed[0, : t + 1], got[1, : t + 1])


def test_sequences_do_not_share_a_cache() -> None:
    states = np.ones((6, 2))
    targets = np.array([1, 1, 1, 1, 1, 1])
    probs = lmcache.sequence_cache_probs(states, targets, [3, 3], size=10, thetas=[0.0])[0]
    assert np.isnan(probs[0]) and np.isnan(probs[3])  # each play starts with an empty cache
    np.testing.assert_allclose(probs[[1, 2, 4, 5]], 1.0)
    unigram = lmcache.sequence_cache_probs(None, targets, [3, 3], size=10, thetas=[0.0])[0]
    np.testing.assert_array_equal(unigram, probs)
    with pytest.raises(ValueError, match="lengths sum to 5"):
        lmcache.sequence_cache_probs(states, targets, [3, 2], size=10, thetas=[0.0])


def test_interpolation_and_choice() -> None:
    nll = np.full(4, math.log(10.0))  # the model gives every target 0.1
    cache_p = np.array([np.nan, 1.0, 1.0, 0.0])
    mixed = lmcache.interpolate(nll, cache_p, 0.5)
    np.testing.assert_allclose(
        mixed, [math.log(10), -math.log(0.55), -math.log(0.55), -math.log(0.05)]
    )
    np.testing.assert_allclose(lmcache.interpolate(nll, cache_p, 0.0), nll)
    # A useless cache is switched off; a helpful one gets weight.
    useless = lmcache.choose(nll, np.zeros((1, 4)), [0.1])
    assert useless.lam == 0.0 and useless.cross_entropy == pytest.approx(math.log(10))
    helpful = lmcache.choose(nll, np.stack([np.zeros(4), np.ones(4)]), [0.1, 0.5])
    assert helpful.theta == 0.5 and helpful.lam == max(lmcache.LAMBDAS)
    assert helpful.cross_entropy < math.log(10)


def test_unigram_counts_match_theta_zero() -> None:
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 7, size=700)
    states = np.zeros((700, 1))
    for size in (1, 5, 100, 1000):
        np.testing.assert_allclose(
            lmcache.unigram_cache_probs(targets, size),
            lmcache.cache_probs(states, targets, size, [0.0])[0],
            rtol=1e-6,
        )
