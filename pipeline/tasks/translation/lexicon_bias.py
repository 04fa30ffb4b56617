"""Discrete lexicon bias (Arthur, Neubig & Nakamura 2016, "bias" method) for the decoder.

A subword translation table p(y | x) is estimated from the training pairs by IBM Model 1 (a few
EM iterations, fully vectorised), and at each target step t the decoder's logits get

    log( sum_s a_ts * p(y | x_s) + epsilon )

added, where a_ts are the attention weights. Counting statistics learn a word's translation from
a handful of sentences, where gradient descent needs many more: on 15k sentence pairs the
network otherwise falls back on its target language model. Its gradient also flows into the
attention, which learns to look at the source token whose translation comes next.

The table is a non-trainable weight of `LexiconTable`, so it is saved with the model and the
step decoder reads the same numbers. `LexiconTable` turns the source ids into rows once per
sentence (the encoder's `lexicon` output); `LexiconBias` mixes them with the weights per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from pipeline.core.tokens import PAD_ID

EPSILON = 1e-3  # Arthur et al.'s value (`train.translation.lexicon_epsilon` sets it): -6.9 nats
NULL_ID = PAD_ID  # IBM Model 1's empty source word lives in the PAD row, which no step attends


def _padded(sequences: Sequence[np.ndarray], prefix: int | None = None) -> np.ndarray:
    """(N, L) int array, PAD after each sequence; optionally one `prefix` id in front."""
    extra = 0 if prefix is None else 1
    out = np.full((len(sequences), max(map(len, sequences)) + extra), PAD_ID, dtype=np.int64)
    for row, seq in zip(out, sequences, strict=True):
        row[extra : extra + len(seq)] = seq
        if prefix is not None:
            row[0] = prefix
    return out


def ibm1_table(
    source: Sequence[np.ndarray],
    target: Sequence[np.ndarray],
    src_vocab: int,
    tgt_vocab: int,
    iterations: int = 5,
) -> np.ndarray:
    """IBM Model 1 translation probabilities p(target id | source id), shape (src, tgt).

    Every sentence gets the empty source word (row `NULL_ID`) so function words need not be
    explained by a real one. Rows of source ids never seen in training stay uniform.
    """
    src = _padded(source, prefix=NULL_ID)
    tgt = _padded(target)
    src_mask = np.ones(src.shape, dtype=np.float32)
    src_mask[:, 1:] = src[:, 1:] != PAD_ID
    tgt_mask = (tgt != PAD_ID).astype(np.float32)
    cells = (src[:, :, None] * tgt_vocab + tgt[:, None, :]).ravel()
    mask = (src_mask[:, :, None] * tgt_mask[:, None, :]).ravel()
    table = np.full((src_vocab, tgt_vocab), 1.0 / tgt_vocab, dtype=np.float32)
    for _ in range(iterations):
        joint = table.ravel()[cells].reshape(src.shape[0], src.shape[1], tgt.shape[1])
        joint *= src_mask[:, :, None]
        posterior = joint / np.maximum(joint.sum(axis=1, keepdims=True), 1e-30)
        counts = np.bincount(cells, weights=posterior.ravel() * mask, minlength=table.size)
        counts = counts.reshape(table.shape)
        totals = counts.sum(axis=1, keepdims=True)
        table = np.where(totals > 0, counts / np.maximum(totals, 1e-30), 1.0 / tgt_vocab)
        table = table.astype(np.float32)
    return table


@keras.saving.register_keras_serializable(package="pipeline")
class LexiconTable(keras.layers.Layer):
    """Source ids (B, S) -> their rows p(. | x_s) of a fixed translation table (B, S, tgt)."""

    def __init__(self, src_vocab: int, tgt_vocab: int, **kwargs):
        super().__init__(**{"dtype": "float32", **kwargs})
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self.table = self.add_weight(
            shape=(src_vocab, tgt_vocab),
            initializer=keras.initializers.Constant(1.0 / tgt_vocab),
            trainable=False,
            name="table",
        )

    def set_table(self, table: np.ndarray) -> None:
        """Load probabilities estimated from the training data (e.g. `ibm1_table`)."""
        if table.shape != (self.src_vocab, self.tgt_vocab):
            raise ValueError(f"table shape {table.shape} != {(self.src_vocab, self.tgt_vocab)}")
        self.table.assign(table.astype(np.float32))

    def call(self, source):
        """Look every source id up."""
        return ops.take(self.table, ops.cast(source, "int32"), axis=0)

    def compute_mask(self, inputs, mask=None):
        """The rows carry no mask: the attention weights are already zero at source pads."""
        return None

    def get_config(self) -> dict:
        """Serializable with both vocabulary sizes."""
        return {**super().get_config(), "src_vocab": self.src_vocab, "tgt_vocab": self.tgt_vocab}


@keras.saving.register_keras_serializable(package="pipeline")
class LexiconBias(keras.layers.Layer):
    """[logits (B,T,V), attention (B,T,S), rows (B,S,V)] -> logits + log(attention @ rows + eps).

    Computed in float32 whatever the model's compute precision: the log of small probabilities
    is where bfloat16's 8-bit mantissa would hurt.
    """

    def __init__(self, epsilon: float = EPSILON, **kwargs):
        super().__init__(**{"dtype": "float32", **kwargs})
        self.epsilon = epsilon
        self.supports_masking = True

    def call(self, inputs):
        """Mix the attended source tokens' translation distributions into the logits."""
        logits, weights, rows = (ops.cast(x, "float32") for x in inputs)
        return logits + ops.log(ops.matmul(weights, rows) + self.epsilon)

    def compute_mask(self, inputs, mask=None):
        """Keep the target mask the logits came with."""
        return mask[0] if isinstance(mask, list | tuple) else mask

    def get_config(self) -> dict:
        """Serializable with its epsilon."""
        return {**super().get_config(), "epsilon": self.epsilon}
