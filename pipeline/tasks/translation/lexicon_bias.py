"""Discrete lexicon bias (Arthur, Neubig & Nakamura 2016, "bias" method) for the decoder.

A subword translation table p(y | x) is estimated from the training pairs by IBM Model 1 (a few
EM iterations, fully vectorised), and at each target step t the decoder's logits get

    log( sum_s a_ts * p(y | x_s) + epsilon )

added, where a_ts are the attention weights. Counting statistics learn a word's translation from
a handful of sentences, where gradient descent needs many more: on 15k sentence pairs the
network otherwise falls back on its target language model. Its gradient also flows into the
attention, which learns to look at the source token whose translation comes next.

`GuidedAlignment` (Chen et al. 2016, "Guided alignment training for topic-aware neural machine
translation") uses the same table to teach the attention where to look: the IBM Model 1
posterior of target token y_t over the source positions, q_ts = p(y_t | x_s) / sum_s' p(y_t |
x_s'), is a soft alignment, and training adds weight * mean_t(-sum_s q_ts log a_ts). Without
it the attention put a quarter of its mass on the source position the table is sure of (q >
0.8), so the bias mostly mixed in other words' rows (`benchmarks/attention_alignment.py`).

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


def alignment_loss(weights, rows, source, target_in):
    """Mean over real target tokens of the cross-entropy -sum_s q_ts log a_ts.

    `weights` (B, T, S) are the attention weights of decoder position t, which predicts
    target_in[:, t + 1] (the token after its input); `rows` (B, S, V) the source ids' table rows.
    q is the table's posterior over real source positions; positions predicting EOS or PAD, and
    tokens no real source word can produce, are left out.
    """
    weights = ops.cast(weights, "float32")
    rows = ops.cast(rows, "float32")
    target_in = ops.cast(target_in, "int32")
    following = ops.concatenate([target_in[:, 1:], ops.zeros_like(target_in[:, :1])], axis=1)
    shape = (ops.shape(rows)[0], ops.shape(rows)[1], ops.shape(following)[1])
    index = ops.broadcast_to(ops.expand_dims(following, 1), shape)
    joint = ops.transpose(ops.take_along_axis(rows, index, axis=2), (0, 2, 1))  # (B, T, S)
    joint = joint * ops.expand_dims(ops.cast(ops.not_equal(source, PAD_ID), "float32"), 1)
    total = ops.sum(joint, axis=-1)
    posterior = joint / ops.expand_dims(ops.maximum(total, 1e-30), -1)
    cross_entropy = -ops.sum(posterior * ops.log(weights + 1e-6), axis=-1)
    valid = ops.cast(ops.not_equal(following, PAD_ID), "float32") * ops.cast(total > 0, "float32")
    return ops.sum(cross_entropy * valid) / ops.maximum(ops.sum(valid), 1.0)


@keras.saving.register_keras_serializable(package="pipeline")
class GuidedAlignment(keras.layers.Layer):
    """[logits, attention, rows, source, target_in] -> logits, unchanged.

    In training it also adds `weight` times `alignment_loss` to the model's losses (Keras adds
    them to the compiled loss), so validation loss, early stopping and decoding never see it.
    """

    def __init__(self, weight: float, **kwargs):
        super().__init__(**{"dtype": "float32", **kwargs})
        self.weight = weight
        self.supports_masking = True

    def call(self, inputs, training=False):
        """Pass the logits on; add the alignment loss when training."""
        logits, weights, rows, source, target_in = inputs
        if training and self.weight > 0:
            self.add_loss(self.weight * alignment_loss(weights, rows, source, target_in))
        return logits

    def compute_mask(self, inputs, mask=None):
        """Keep the target mask the logits came with."""
        return mask[0] if isinstance(mask, list | tuple) else mask

    def get_config(self) -> dict:
        """Serializable with its weight."""
        return {**super().get_config(), "weight": self.weight}
