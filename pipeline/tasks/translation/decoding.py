"""Greedy and beam-search decoding for any encoder + one-step decoder.

`StepModel` is all decoding needs: `encode` a padded source batch into a constant context and
the initial states, then `step` once per output token. Greedy runs the step on one row per
sentence; beam search on sentence*beam rows at once. PAD and BOS are never generated.

Beam search (fairseq style): each step takes the 2*beam best continuations of a sentence's
alive beams; an EOS among the first `beam` of them finishes a hypothesis, the best non-EOS ones
stay alive. A sentence is done when `beam` hypotheses have finished (or at `max_len`, when the
alive ones count too). The winner has the best GNMT score log P / ((5 + length) / 6)^alpha,
where log P sums the generated tokens' log-probabilities and length counts them, EOS included.
With beam 1 every step keeps the single best token, exactly as greedy does.

`eos_penalty` (nats, greedy and beam) is subtracted from EOS's log-probability at every step, a
constant cost of stopping (Murray & Chiang 2018's word reward, in effect): a model that ends
its sentences too early, and so loses BLEU's brevity penalty and chrF's recall, writes longer
ones. 0 decodes the model's own distribution.

`coverage_penalty` (beta, beam only) adds GNMT's coverage term beta * sum_i log(min(1, sum_t
a_ti)) to a finished hypothesis's score (Wu et al. 2016), summed over the real source positions
i: a candidate whose attention never visited part of the source ranks lower, so among
near-equally probable endings the search prefers the one that translated the whole sentence.
0 ranks by log P and length alone.

`no_repeat_ngram` (n, greedy and beam) never lets a hypothesis write the same n target pieces
twice (fairseq's `--no-repeat-ngram-size`): a piece that would complete an n-gram already in
the hypothesis gets probability 0. An attention decoder that keeps attending to the same
source word otherwise loops ("the way of the way of the way"). 0 turns it off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import keras
import numpy as np
import tensorflow as tf

from pipeline.core.datasets import pad_batch
from pipeline.core.tokens import BOS_ID, EOS_ID, PAD_ID
from pipeline.tasks.translation.model import (
    ATTENTION,
    KEYS,
    LEXICON,
    LOGITS,
    MEMORY,
    SOURCE,
    TOKEN,
    Seq2Seq,
)

Arrays = dict[str, np.ndarray]  # a context may hold tensors too: only its step model reads it
NEVER_GENERATED = (PAD_ID, BOS_ID)


class StepModel(Protocol):
    """An encoder plus a one-step decoder over numpy arrays (rows = hypotheses)."""

    def encode(self, sources: np.ndarray) -> tuple[Arrays, Arrays]:
        """Padded (B, S) source ids -> (context kept constant, initial decoder states)."""
        ...

    def step(
        self, tokens: np.ndarray, context: Arrays, states: Arrays
    ) -> tuple[np.ndarray, Arrays, np.ndarray | None]:
        """(R,) previous tokens -> (R, V) log-probabilities, new states, (R, S) attention."""
        ...


@dataclass(frozen=True)
class Hypothesis:
    """One decoded sentence."""

    tokens: list[int]  # generated ids without EOS
    log_prob: float  # sum of log P of every generated token, EOS included (less eos_penalty)
    length: int  # generated tokens, EOS included (the length penalty's |Y|)
    score: float  # log_prob / length_penalty(length, alpha), plus beta * coverage in beam search
    attention: np.ndarray | None = None  # (length, S) weights over source positions

    @property
    def finished(self) -> bool:
        """Whether the hypothesis ended with EOS (rather than hitting max_len)."""
        return self.length == len(self.tokens) + 1


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ((5 + |Y|) / 6)^alpha (Wu et al. 2016); 1 for alpha = 0."""
    return ((5.0 + length) / 6.0) ** alpha


def coverage(attention: np.ndarray, source_mask: np.ndarray) -> float:
    """GNMT's sum_i log(min(1, sum_t a_ti)) over real source positions i (0: all covered)."""
    received = attention[:, source_mask].sum(axis=0)
    return float(np.log(np.clip(received, 1e-9, 1.0)).sum())


@dataclass(frozen=True)
class Scorer:
    """Final score of a hypothesis: length-normalised log P plus the coverage term."""

    alpha: float
    beta: float = 0.0
    source_mask: np.ndarray | None = None  # (B, S) True at real source tokens

    def __call__(
        self, row: int, log_prob: float, length: int, attention: np.ndarray | None
    ) -> float:
        """Score sentence `row`'s hypothesis; no attention (or beta 0) leaves coverage out."""
        score = log_prob / length_penalty(length, self.alpha)
        if self.beta and attention is not None and self.source_mask is not None:
            score += self.beta * coverage(attention, self.source_mask[row])
        return score


class KerasStepModel:
    """Run a `Seq2Seq`'s encoder and step models as traced tf.functions on numpy batches."""

    def __init__(self, seq2seq: Seq2Seq):
        self.seq2seq = seq2seq
        self._encode = traced(seq2seq.encoder)
        self._step = traced(seq2seq.decoder, _log_softmax)
        self._state_names = [n for names in seq2seq.layers.state_names() for n in names]

    def encode(self, sources: np.ndarray) -> tuple[Arrays, Arrays]:
        """Encode; zero the memory at pads so the step model's Masking layer finds them.

        The context stays a TensorFlow tensor: every step reads it unchanged, and feeding it
        back as numpy copied it at every step (the lexicon rows are (B, S, vocabulary) floats).
        """
        ids = np.asarray(sources, dtype=np.int32)
        out = self._encode({SOURCE: ids})
        if MEMORY in out:
            out[MEMORY] = out[MEMORY] * tf.cast(ids != PAD_ID, out[MEMORY].dtype)[..., None]
        context = {key: out[key] for key in (MEMORY, KEYS, LEXICON) if key in out}
        return context, {name: out[name].numpy() for name in self._state_names}

    def step(
        self, tokens: np.ndarray, context: Arrays, states: Arrays
    ) -> tuple[np.ndarray, Arrays, np.ndarray | None]:
        """One decoder step for every row."""
        inputs = {TOKEN: np.asarray(tokens, dtype=np.int32)[:, None], **context, **states}
        out = self._step(inputs)
        weights = out[ATTENTION].numpy()[:, 0] if ATTENTION in out else None
        new_states = {name: out[name].numpy() for name in self._state_names}
        return out[LOGITS].numpy()[:, 0], new_states, weights


def repeat_rows(value: np.ndarray | tf.Tensor, times: int) -> np.ndarray | tf.Tensor:
    """Each row `times` times in a row, staying a numpy array or a tensor."""
    if tf.is_tensor(value):
        return tf.repeat(value, times, axis=0)
    return np.repeat(value, times, axis=0)


def traced(
    model: keras.Model, after: Callable[[dict], dict] = lambda outputs: outputs
) -> Callable[[dict], dict]:
    """Trace `model` once for any batch size and length (a shape change would retrace).

    Outputs come back in float32 whatever the model computes in (mixed_bfloat16 included), so
    log-probabilities, beam scores and attention maps keep full precision downstream.
    """
    spec = {name: tf.TensorSpec(x.shape, x.dtype, name=name) for name, x in model.input.items()}
    return tf.function(
        lambda inputs: after(_float32(model(inputs, training=False))), input_signature=[spec]
    )


def _float32(outputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Cast floating outputs to float32 (integer ones pass through)."""
    return {k: tf.cast(v, tf.float32) if v.dtype.is_floating else v for k, v in outputs.items()}


def _log_softmax(outputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Turn the step model's logits into log-probabilities inside the traced function."""
    return {**outputs, LOGITS: tf.nn.log_softmax(outputs[LOGITS], axis=-1)}


def repeated_ngram_followers(history: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, ids) such that writing ids[i] next in row rows[i] would repeat an n-gram.

    `history` is (R, t) generated ids. A row's last n - 1 ids are matched against every earlier
    window of n - 1 ids; the id that followed a match is banned. Vectorised over rows.
    """
    rows, length = history.shape
    if n < 2 or length < n:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    windows = np.lib.stride_tricks.sliding_window_view(history[:, : length - 1], n - 1, axis=1)
    suffix = history[:, length - n + 1 :]
    match = (windows == suffix[:, None, :]).all(axis=-1)
    row, start = np.nonzero(match)
    return row, history[row, start + n - 1]


def _next_log_probs(
    model: StepModel,
    tokens: np.ndarray,
    context: Arrays,
    states: Arrays,
    eos_penalty: float,
    history: np.ndarray | None = None,
    no_repeat_ngram: int = 0,
) -> tuple[np.ndarray, Arrays, np.ndarray | None]:
    """Step once; float64 log-probs, never-generated ids and repeated n-grams at -inf, EOS
    lowered by the penalty. `history` is (R, t): the ids each row has generated so far."""
    log_probs, states, weights = model.step(tokens, context, states)
    log_probs = np.asarray(log_probs, dtype=np.float64).copy()
    log_probs[:, list(NEVER_GENERATED)] = -np.inf
    log_probs[:, EOS_ID] -= eos_penalty
    if no_repeat_ngram and history is not None:
        rows, ids = repeated_ngram_followers(history, no_repeat_ngram)
        log_probs[rows, ids] = -np.inf
    return log_probs, states, weights


# --------------------------------------------------------------------------- greedy


def greedy_decode(
    model: StepModel,
    sources: np.ndarray,
    max_len: int,
    alpha: float = 0.0,
    eos_penalty: float = 0.0,
    no_repeat_ngram: int = 0,
) -> list[Hypothesis]:
    """Pick the most probable token at every step for a padded (B, S) batch."""
    batch = len(sources)
    context, states = model.encode(sources)
    tokens = np.full(batch, BOS_ID, dtype=np.int32)
    done = np.zeros(batch, dtype=bool)
    lengths = np.zeros(batch, dtype=np.int64)
    log_prob = np.zeros(batch, dtype=np.float64)
    outputs, attention = [], []
    for t in range(max_len):
        history = np.stack(outputs, axis=1) if t and no_repeat_ngram else None
        log_probs, states, weights = _next_log_probs(
            model, tokens, context, states, eos_penalty, history, no_repeat_ngram
        )
        tokens = log_probs.argmax(axis=-1).astype(np.int32)
        log_prob += np.where(done, 0.0, log_probs[np.arange(batch), tokens])
        lengths += ~done
        outputs.append(tokens)
        attention.append(weights)
        done |= tokens == EOS_ID
        if done.all():
            break
    ids = np.stack(outputs, axis=1)
    maps = np.stack(attention, axis=1) if attention[0] is not None else None
    return [
        _hypothesis(ids[i], int(lengths[i]), float(log_prob[i]), alpha, maps, i)
        for i in range(batch)
    ]


def _hypothesis(
    ids: np.ndarray, length: int, log_prob: float, alpha: float, maps: np.ndarray | None, row: int
) -> Hypothesis:
    """Package one greedy row (ids past its EOS are ignored)."""
    tokens = [int(t) for t in ids[:length] if t != EOS_ID]
    weights = maps[row, :length] if maps is not None else None
    score = log_prob / length_penalty(length, alpha)
    return Hypothesis(tokens, log_prob, length, score, weights)


# --------------------------------------------------------------------------- beam search


@dataclass
class _Beams:
    """Alive hypotheses of a batch; slot (b, k) is row b * beam + k of the step model."""

    scores: np.ndarray  # (B, K) cumulative log P; -inf marks an empty slot
    tokens: np.ndarray  # (B, K, t) generated ids
    attention: np.ndarray | None  # (B, K, t, S)

    @classmethod
    def start(cls, batch: int, beam: int) -> _Beams:
        """Only slot 0 is alive at first, so the first step does not pick duplicates."""
        scores = np.full((batch, beam), -np.inf)
        scores[:, 0] = 0.0
        return cls(scores, np.zeros((batch, beam, 0), dtype=np.int64), None)

    def finish(
        self, b: int, k: int, log_prob: float, weights: np.ndarray | None, t: int, scorer: Scorer
    ) -> Hypothesis:
        """A finished hypothesis: slot (b, k)'s tokens followed by EOS at step t."""
        attention = None
        if weights is not None:
            past = self.attention[b, k] if self.attention is not None else weights[None][:0]
            attention = np.concatenate([past, weights[None]], axis=0)
        length = t + 1
        score = scorer(b, log_prob, length, attention)
        return Hypothesis([int(x) for x in self.tokens[b, k]], log_prob, length, score, attention)


def _top_candidates(
    scores: np.ndarray, log_probs: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `count` best (parent slot, token, score) per sentence, best first, ties by index."""
    batch, beam, vocab = log_probs.shape
    total = (scores[:, :, None] + log_probs).reshape(batch, beam * vocab)
    index = np.argpartition(-total, count - 1, axis=1)[:, :count]
    values = np.take_along_axis(total, index, axis=1)
    order = np.lexsort((index, -values), axis=1)
    index = np.take_along_axis(index, order, axis=1)
    return index // vocab, index % vocab, np.take_along_axis(values, order, axis=1)


def _select(
    beams: _Beams,
    candidates: tuple[np.ndarray, np.ndarray, np.ndarray],
    weights: np.ndarray | None,
    finished: list[list[Hypothesis]],
    t: int,
    scorer: Scorer,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move EOS candidates to `finished`, keep the best others alive: (parent, token, score)."""
    parents, words, values = candidates
    batch, beam = beams.scores.shape
    keep_parent = np.zeros((batch, beam), dtype=np.int64)
    keep_word = np.full((batch, beam), EOS_ID, dtype=np.int64)
    keep_score = np.full((batch, beam), -np.inf)
    for b in range(batch):
        alive = 0
        for rank, (parent, word, value) in enumerate(
            zip(parents[b], words[b], values[b], strict=True)
        ):
            if not np.isfinite(value) or alive == beam or len(finished[b]) >= beam:
                break
            if word == EOS_ID:
                if rank < beam:
                    row = weights[b * beam + parent] if weights is not None else None
                    finished[b].append(beams.finish(b, parent, float(value), row, t, scorer))
                continue
            keep_parent[b, alive], keep_word[b, alive], keep_score[b, alive] = parent, word, value
            alive += 1
        if len(finished[b]) >= beam:
            keep_score[b] = -np.inf  # done: its slots stay empty from now on
    return keep_parent, keep_word, keep_score


def _advance(
    beams: _Beams,
    parent: np.ndarray,
    word: np.ndarray,
    score: np.ndarray,
    weights: np.ndarray | None,
) -> _Beams:
    """Reorder the alive histories by parent slot and append the chosen tokens."""
    batch, beam = score.shape
    rows = np.arange(batch)[:, None]
    tokens = np.concatenate([beams.tokens[rows, parent], word[:, :, None]], axis=2)
    attention = None
    if weights is not None:
        step = weights.reshape(batch, beam, 1, -1)[rows, parent]
        past = beams.attention[rows, parent] if beams.attention is not None else step[:, :, :0]
        attention = np.concatenate([past, step], axis=2)
    return _Beams(score, tokens, attention)


def _unfinished(beams: _Beams, b: int, scorer: Scorer) -> list[Hypothesis]:
    """Alive hypotheses of sentence b at max_len (no EOS), as candidates for the answer."""
    out = []
    for k in np.flatnonzero(np.isfinite(beams.scores[b])):
        log_prob = float(beams.scores[b, k])
        length = beams.tokens.shape[2]
        weights = beams.attention[b, k] if beams.attention is not None else None
        tokens = [int(x) for x in beams.tokens[b, k]]
        out.append(
            Hypothesis(tokens, log_prob, length, scorer(b, log_prob, length, weights), weights)
        )
    return out


def _gather(arrays: Arrays, rows: np.ndarray) -> Arrays:
    """Select rows of every array (beam reordering)."""
    return {key: value[rows] for key, value in arrays.items()}


def beam_decode(
    model: StepModel,
    sources: np.ndarray,
    beam_size: int,
    max_len: int,
    alpha: float,
    eos_penalty: float = 0.0,
    coverage_penalty: float = 0.0,
    no_repeat_ngram: int = 0,
) -> list[Hypothesis]:
    """Beam search over a padded (B, S) batch, all beams of all sentences in one step call."""
    batch, beam = len(sources), beam_size
    scorer = Scorer(alpha, coverage_penalty, np.asarray(sources) != PAD_ID)
    context, states = model.encode(sources)
    context = {key: repeat_rows(value, beam) for key, value in context.items()}
    states = {key: np.repeat(value, beam, axis=0) for key, value in states.items()}
    beams = _Beams.start(batch, beam)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    tokens = np.full(batch * beam, BOS_ID, dtype=np.int32)
    for t in range(max_len):
        history = beams.tokens.reshape(batch * beam, t)
        log_probs, states, weights = _next_log_probs(
            model, tokens, context, states, eos_penalty, history, no_repeat_ngram
        )
        vocab = log_probs.shape[-1]
        candidates = _top_candidates(beams.scores, log_probs.reshape(batch, beam, vocab), 2 * beam)
        parent, word, score = _select(beams, candidates, weights, finished, t, scorer)
        beams = _advance(beams, parent, word, score, weights)
        rows = (np.arange(batch)[:, None] * beam + parent).reshape(-1)
        states = _gather(states, rows)
        tokens = word.reshape(-1).astype(np.int32)
        if not np.isfinite(beams.scores).any():
            break
    for b in range(batch):
        if len(finished[b]) < beam:
            finished[b].extend(_unfinished(beams, b, scorer))
    return [max(hyps, key=lambda h: h.score) for hyps in finished]


# --------------------------------------------------------------------------- batching


def decode_sequences(
    model: StepModel,
    sources: Sequence[np.ndarray],
    beam_size: int,
    max_len: int,
    alpha: float,
    batch_size: int = 64,
    eos_penalty: float = 0.0,
    coverage_penalty: float = 0.0,
    no_repeat_ngram: int = 0,
) -> list[Hypothesis]:
    """Decode many source id sequences in batches, in input order (greedy when beam is 1)."""
    out: list[Hypothesis] = []
    for start in range(0, len(sources), batch_size):
        batch = pad_batch(list(sources[start : start + batch_size]))
        if beam_size == 1:
            out.extend(greedy_decode(model, batch, max_len, alpha, eos_penalty, no_repeat_ngram))
        else:
            out.extend(
                beam_decode(
                    model,
                    batch,
                    beam_size,
                    max_len,
                    alpha,
                    eos_penalty,
                    coverage_penalty,
                    no_repeat_ngram,
                )
            )
    return out
