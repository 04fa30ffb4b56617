"""Kneser-Ney baseline: hand-computed probabilities, normalisation, no zero probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.tasks.language_model.ngram import estimate_discount, fit_kneser_ney

START, A, B, C = 2, 5, 6, 7
VOCAB = 8


def test_unigram_known_answer() -> None:
    # counts a=2, b=1 (N=3, 2 types), D=0.5: P(w) = max(c-D, 0)/3 + D*2/3 * 1/8.
    model = fit_kneser_ney([[A, A, B]], order=1, vocab_size=VOCAB, start_id=START, discount=0.5)
    assert model.prob([], A) == pytest.approx(1.5 / 3 + 1 / 24)
    assert model.prob([], B) == pytest.approx(0.5 / 3 + 1 / 24)
    assert model.prob([], C) == pytest.approx(1 / 24)


def test_bigram_perplexity_known_answer() -> None:
    # Padded train text: S a b a b. Bigrams (S,a) (a,b) (b,a) (a,b); D = 0.5 at both orders.
    # Continuation counts: a has left neighbours {S, b} -> 2, b has {a} -> 1 (total 3, 2 types).
    #   P1(a) = 1.5/3 + 0.5*2/3/8 = 13/24      P1(b) = 0.5/3 + 0.5*2/3/8 = 5/24
    #   P(a|S) = 0.5/1 + 0.5*1/1*P1(a) = 37/48  P(b|a) = 1.5/2 + 0.5*1/2*P1(b) = 77/96
    model = fit_kneser_ney([[A, B, A, B]], order=2, vocab_size=VOCAB, start_id=START, discount=0.5)
    log_probs = model.log_probs([A, B])
    np.testing.assert_allclose(np.exp(log_probs), [37 / 48, 77 / 96])
    perplexity = math.exp(-log_probs.mean())
    assert perplexity == pytest.approx((37 / 48 * 77 / 96) ** -0.5)


def test_unseen_context_backs_off_to_lower_order() -> None:
    model = fit_kneser_ney([[A, B, A, B]], order=2, vocab_size=VOCAB, start_id=START, discount=0.5)
    # c was never seen, so P(.|c) is the unigram continuation distribution itself.
    assert model.prob([C], B) == pytest.approx(5 / 24)
    assert model.prob([C], A) == pytest.approx(13 / 24)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_distributions_sum_to_one_and_never_vanish(order: int) -> None:
    rng = np.random.default_rng(0)
    train = [rng.integers(3, 20, size=150) for _ in range(4)]
    model = fit_kneser_ney(train, order=order, vocab_size=24, start_id=START)
    histories = [train[0][:3], train[1][10:13], [23, 23, 23], [START, START, 4], []]
    for history in histories:
        probs = np.array([model.prob(history, w) for w in range(24)])
        assert probs.sum() == pytest.approx(1.0)
        assert probs.min() > 0  # tokens 0-2, 20-23 never occur in training


def test_more_context_helps_on_repetitive_text() -> None:
    text = [A, B, C] * 50
    scores = [
        math.exp(-fit_kneser_ney([text], n, VOCAB, START).log_probs(text).mean()) for n in (1, 2, 3)
    ]
    assert scores[0] > scores[1] > 1.0
    assert scores[2] <= scores[1]


def test_estimated_discount_is_ney_formula_clipped() -> None:
    # n1 = 3 singletons, n2 = 1 doubleton -> 3 / (3 + 2) = 0.6.
    assert estimate_discount({(1,): 1, (2,): 1, (3,): 1, (4,): 2, (5,): 7}) == pytest.approx(0.6)
    assert estimate_discount({(1,): 5}) == pytest.approx(0.5)  # no n1/n2: the default
    assert estimate_discount({(1,): 1}) == pytest.approx(0.9)  # only singletons: clipped


def test_order_must_be_positive() -> None:
    with pytest.raises(ValueError, match="order"):
        fit_kneser_ney([[A]], order=0, vocab_size=VOCAB, start_id=START)
