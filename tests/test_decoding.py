"""Greedy and beam search on hand-set decoders and on a real (untrained) Keras seq2seq."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from pipeline.core.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from pipeline.params import TranslationTrain
from pipeline.tasks.translation.decoding import (
    Arrays,
    KerasStepModel,
    beam_decode,
    coverage,
    decode_sequences,
    greedy_decode,
    length_penalty,
    repeated_ngram_followers,
)
from pipeline.tasks.translation.model import build_seq2seq

A, B, C, D = 4, 5, 6, 7
VOCAB = 8


class MarkovStepModel:
    """A hand-set decoder: P(next token) depends only on the previous token."""

    def __init__(self, table: dict[int, dict[int, float]]):
        self.log_table = np.full((VOCAB, VOCAB), -30.0)
        for previous, row in table.items():
            for token, p in row.items():
                self.log_table[previous, token] = math.log(p)

    def encode(self, sources: np.ndarray) -> tuple[Arrays, Arrays]:
        """No context; one dummy state so beam reordering has something to gather."""
        return {}, {"rows": np.arange(len(sources), dtype=np.float32)[:, None]}

    def step(self, tokens: np.ndarray, context: Arrays, states: Arrays):
        """Look up the next-token distribution of each row's previous token."""
        return self.log_table[tokens], states, None


class CopyStepModel:
    """A hand-set decoder that copies its source, then stops: checks rows stay in order."""

    def encode(self, sources: np.ndarray) -> tuple[Arrays, Arrays]:
        """The source is the context; the state is the position to copy next."""
        return {"source": sources}, {"position": np.zeros(len(sources), dtype=np.int64)}

    def step(self, tokens: np.ndarray, context: Arrays, states: Arrays):
        """Put almost all mass on the source token at the current position (EOS at a pad)."""
        source, position = context["source"], states["position"]
        padded = np.pad(source, ((0, 0), (0, 1)))
        wanted = padded[np.arange(len(source)), np.minimum(position, source.shape[1])]
        wanted = np.where(wanted == PAD_ID, EOS_ID, wanted)
        log_probs = np.full((len(source), VOCAB), math.log(0.01 / (VOCAB - 1)))
        log_probs[np.arange(len(source)), wanted] = math.log(0.99)
        return log_probs, {"position": position + 1}, None


class AttendingStepModel(MarkovStepModel):
    """A Markov decoder that attends to source position 1 after B and to position 0 otherwise."""

    def encode(self, sources: np.ndarray) -> tuple[Arrays, Arrays]:
        """The source's width is all the attention needs."""
        return {"source": sources}, {"rows": np.zeros((len(sources), 1))}

    def step(self, tokens: np.ndarray, context: Arrays, states: Arrays):
        """Markov log-probabilities plus one-hot attention chosen by the previous token."""
        weights = np.zeros((len(tokens), context["source"].shape[1]))
        weights[np.arange(len(tokens)), np.where(tokens == B, 1, 0)] = 1.0
        return self.log_table[tokens], states, weights


# Greedy takes A (0.5) but then has only weak continuations; B (0.4) is followed by EOS (0.9).
TRAP = {
    BOS_ID: {A: 0.5, B: 0.4, C: 0.1},
    A: {EOS_ID: 0.28, C: 0.26, D: 0.24, UNK_ID: 0.22},
    B: {EOS_ID: 0.9, C: 0.1},
    C: {EOS_ID: 1.0},
    D: {EOS_ID: 1.0},
}


def one_source() -> np.ndarray:
    """A single dummy source (the Markov model ignores it)."""
    return np.asarray([[A, B]], dtype=np.int32)


def test_beam_finds_a_more_probable_sequence_than_greedy() -> None:
    """Beam search escapes the greedy trap: log P(B EOS) > log P(A EOS)."""
    model = MarkovStepModel(TRAP)
    greedy = greedy_decode(model, one_source(), max_len=5)[0]
    beam = beam_decode(model, one_source(), beam_size=2, max_len=5, alpha=0.0)[0]
    assert greedy.tokens == [A] and beam.tokens == [B]
    assert greedy.log_prob == pytest.approx(math.log(0.5) + math.log(0.28))
    assert beam.log_prob == pytest.approx(math.log(0.4) + math.log(0.9))
    assert beam.log_prob > greedy.log_prob


def test_beam_of_one_is_greedy_on_the_trap() -> None:
    """With one beam, search keeps the single best token, as greedy does."""
    model = MarkovStepModel(TRAP)
    greedy = greedy_decode(model, one_source(), max_len=5)[0]
    beam = beam_decode(model, one_source(), beam_size=1, max_len=5, alpha=0.0)[0]
    assert (beam.tokens, beam.log_prob, beam.length) == (greedy.tokens, greedy.log_prob, 2)


def test_length_penalty_prefers_longer_hypotheses() -> None:
    """EOS now (log .5) beats A EOS (log .45 + log .95) raw, but not after the GNMT penalty."""
    model = MarkovStepModel({BOS_ID: {EOS_ID: 0.5, A: 0.45, B: 0.05}, A: {EOS_ID: 0.95, B: 0.05}})
    raw = beam_decode(model, one_source(), beam_size=2, max_len=5, alpha=0.0)[0]
    penalised = beam_decode(model, one_source(), beam_size=2, max_len=5, alpha=2.0)[0]
    assert raw.tokens == [] and penalised.tokens == [A]
    assert penalised.score == pytest.approx(penalised.log_prob / (7 / 6) ** 2)
    assert length_penalty(1, 0.0) == 1.0 and length_penalty(7, 1.0) == 2.0


def test_eos_penalty_makes_greedy_and_beam_write_longer() -> None:
    """Greedy stops at once until the penalty passes log(.5 / .45) ~ 0.105 nats; beam search
    keeps the empty hypothesis until EOS falls out of its best `beam` candidates."""
    greedy_model = MarkovStepModel({BOS_ID: {EOS_ID: 0.5, A: 0.45, B: 0.05}, A: {EOS_ID: 0.95}})
    source = one_source()
    assert greedy_decode(greedy_model, source, max_len=5, eos_penalty=0.1)[0].tokens == []
    longer = greedy_decode(greedy_model, source, max_len=5, eos_penalty=0.11)[0]
    assert longer.tokens == [A]
    assert longer.log_prob == pytest.approx(math.log(0.45) + math.log(0.95) - 0.11)
    # beam 2: EOS (.4) ranks first, then A (.35) and B (.25); .4 e^-0.5 = .243 ranks third
    beam_model = MarkovStepModel(
        {BOS_ID: {EOS_ID: 0.4, A: 0.35, B: 0.25}, A: {EOS_ID: 0.95}, B: {EOS_ID: 0.9}}
    )
    assert beam_decode(beam_model, source, 2, 5, alpha=0.0)[0].tokens == []
    penalised = beam_decode(beam_model, source, 2, 5, alpha=0.0, eos_penalty=0.5)[0]
    assert penalised.tokens == [A]
    assert penalised.log_prob == pytest.approx(math.log(0.35 * 0.95) - 0.5)


def test_coverage_penalty_prefers_the_hypothesis_that_reads_the_whole_source() -> None:
    """A EOS (log .5) attends only to source position 0, B EOS (log .45) to both; beta > 0
    ranks B first, and a PAD column (never attended) costs nothing."""
    model = AttendingStepModel(
        {BOS_ID: {A: 0.5, B: 0.45, C: 0.05}, A: {EOS_ID: 1.0}, B: {EOS_ID: 1.0}}
    )
    source = np.asarray([[A, B, PAD_ID]], dtype=np.int32)
    assert beam_decode(model, source, 2, 5, alpha=0.0)[0].tokens == [A]
    covered = beam_decode(model, source, 2, 5, alpha=0.0, coverage_penalty=0.2)[0]
    assert covered.tokens == [B]
    assert covered.score == pytest.approx(math.log(0.45))  # both real positions got weight 1
    missed = np.asarray([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert coverage(missed, np.asarray([True, True, False])) == pytest.approx(math.log(1e-9))
    assert coverage(missed, np.asarray([True, False, False])) == 0.0


def test_max_len_and_forbidden_tokens() -> None:
    """PAD and BOS are never generated; when EOS never makes the beam, decoding stops at max_len."""
    row = {PAD_ID: 0.5, BOS_ID: 0.3, A: 0.12, C: 0.07, EOS_ID: 0.01}
    model = MarkovStepModel({t: row for t in range(VOCAB)})
    for hypothesis in (
        greedy_decode(model, one_source(), max_len=4)[0],
        beam_decode(model, one_source(), beam_size=2, max_len=4, alpha=0.6)[0],
    ):
        assert hypothesis.tokens == [A] * 4 and hypothesis.length == 4
        assert not hypothesis.finished
        assert hypothesis.log_prob == pytest.approx(4 * math.log(0.12))


def test_repeated_ngram_followers_by_hand() -> None:
    """Row 0 (A B A) may not write B after A again; row 1 (C D D) may not write D after D."""
    history = np.asarray([[A, B, A], [C, D, D]])
    rows, ids = repeated_ngram_followers(history, 2)
    assert sorted(zip(rows.tolist(), ids.tolist(), strict=True)) == [(0, B), (1, D)]
    assert repeated_ngram_followers(history, 3)[0].size == 0  # (B, A) and (D, D) are new
    assert repeated_ngram_followers(history[:, :1], 2)[0].size == 0  # too short to repeat
    rows, ids = repeated_ngram_followers(np.asarray([[A, B, C, A, B]]), 3)
    assert (rows.tolist(), ids.tolist()) == ([0], [C])


def test_no_repeat_ngram_breaks_a_loop() -> None:
    """A B A B ... is the model's favourite: greedy loops to max_len; with bigrams blocked
    neither greedy nor beam search writes a bigram twice."""
    model = MarkovStepModel(
        {BOS_ID: {A: 1.0}, A: {B: 0.98, EOS_ID: 0.01, C: 0.01}, B: {A: 0.98, EOS_ID: 0.02}}
    )
    source = one_source()
    assert greedy_decode(model, source, max_len=6)[0].tokens == [A, B] * 3
    for hypothesis in (
        greedy_decode(model, source, max_len=6, no_repeat_ngram=2)[0],
        beam_decode(model, source, 2, 6, alpha=0.0, no_repeat_ngram=2)[0],
    ):
        bigrams = list(zip(hypothesis.tokens, hypothesis.tokens[1:], strict=False))
        assert hypothesis.finished and len(bigrams) == len(set(bigrams)), hypothesis.tokens
    assert greedy_decode(model, source, max_len=6, no_repeat_ngram=2)[0].tokens == [A, B, A]


@pytest.mark.parametrize("beam_size", [1, 3])
def test_batches_keep_input_order(beam_size: int) -> None:
    """Sentences of different lengths (one empty) decode to their own copies, in order."""
    sources = [np.asarray(s, dtype=np.int32) for s in ([A, B, C], [], [D], [C, C, A, B], [B])]
    hypotheses = decode_sequences(
        CopyStepModel(), sources, beam_size=beam_size, max_len=8, alpha=0.6, batch_size=2
    )
    assert [h.tokens for h in hypotheses] == [s.tolist() for s in sources]
    assert all(h.finished for h in hypotheses)


@pytest.fixture(scope="module")
def keras_model() -> KerasStepModel:
    """An untrained attention seq2seq (random but deterministic weights)."""
    keras.utils.set_random_seed(3)
    cfg = TranslationTrain(cell="lstm", units=8, embedding_dim=6, attention="luong")
    return KerasStepModel(build_seq2seq(cfg, 20, 12))


def sources() -> np.ndarray:
    """Four padded sources, one of them empty."""
    batch = np.random.default_rng(1).integers(4, 20, (4, 6)).astype(np.int32)
    batch[1, 3:], batch[2, :] = 0, 0
    return batch


def test_beam_of_one_is_greedy_on_a_keras_model(keras_model: KerasStepModel) -> None:
    """Same tokens, scores and attention maps, sentence by sentence."""
    greedy = greedy_decode(keras_model, sources(), max_len=7, alpha=0.6)
    beam = beam_decode(keras_model, sources(), beam_size=1, max_len=7, alpha=0.6)
    for g, b in zip(greedy, beam, strict=True):
        assert (g.tokens, g.log_prob, g.score, g.length) == (
            b.tokens,
            b.log_prob,
            b.score,
            b.length,
        )
        np.testing.assert_array_equal(g.attention, b.attention)


def test_beam_scores_match_teacher_forcing(keras_model: KerasStepModel) -> None:
    """Each beam hypothesis's log P equals the training model's score of its tokens.

    This catches beam bookkeeping errors: states, tokens or attention rows gathered from the
    wrong parent would give a different log P than re-scoring the hypothesis from scratch.
    """
    batch = sources()
    model = keras_model.seq2seq.model
    for row, hypothesis in enumerate(beam_decode(keras_model, batch, 3, max_len=6, alpha=0.6)):
        tokens = hypothesis.tokens + ([EOS_ID] if hypothesis.finished else [])
        target_in = np.asarray([[BOS_ID, *tokens[:-1]]], dtype=np.int32)
        logits = model({"source": batch[row : row + 1], "target_in": target_in})
        log_probs = keras.ops.log_softmax(logits, axis=-1).numpy()[0]
        expected = sum(log_probs[t, token] for t, token in enumerate(tokens))
        assert hypothesis.log_prob == pytest.approx(expected, abs=1e-4)
        assert hypothesis.attention.shape == (hypothesis.length, batch.shape[1])
        np.testing.assert_allclose(hypothesis.attention.sum(axis=1), 1.0, atol=1e-5)
        pads = batch[row] == PAD_ID
        if pads.any() and not pads.all():  # an all-pad source attends uniformly
            assert np.abs(hypothesis.attention[:, pads]).max() < 1e-6
