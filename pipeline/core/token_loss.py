"""Cross-entropy, perplexity and accuracy over a vocabulary, per non-PAD target token.

The language model and the translator score every target position against the whole
vocabulary. On CPU that softmax cross-entropy, not the recurrence, is the dearest part of the
language model's step, and Keras's accuracy metric and a perplexity metric written with Keras
ops each pass over the logits again (the latter in bfloat16 under mixed precision). Here the
loss is one XLA-compiled pass (a log-sum-exp in float32 and a gather), and each metric one
compiled pass of `token_counts`; `benchmarks/token_loss.py` times a step each way (README
"Benchmarks").
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pipeline.core.tokens import PAD_ID


def _log_normalizer_and_target(y_true: tf.Tensor, logits: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """float32 logits, their log-sum-exp over the vocabulary and each target's own logit."""
    logits = tf.cast(logits, tf.float32)
    lse = tf.reduce_logsumexp(logits, axis=-1)
    picked = tf.gather(logits, y_true[..., None], batch_dims=y_true.shape.rank)[..., 0]
    return logits, lse, picked


@tf.function(jit_compile=True)
def token_cross_entropy(y_true: tf.Tensor, logits: tf.Tensor, smoothing: float) -> tf.Tensor:
    """Per-token (1 - s) * -log p(y) + s * mean over the vocabulary of -log p(v); 0 at PAD."""
    y_true = tf.cast(y_true, tf.int32)
    logits, lse, picked = _log_normalizer_and_target(y_true, logits)
    losses = lse - picked
    if smoothing:
        losses = (1.0 - smoothing) * losses + smoothing * (lse - tf.reduce_mean(logits, axis=-1))
    return losses * tf.cast(tf.not_equal(y_true, PAD_ID), tf.float32)


@tf.function(jit_compile=True)
def token_counts(y_true: tf.Tensor, logits: tf.Tensor, weight: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """Weighted sums of -log p(y) and of argmax hits, and the total weight (PAD weighs 0)."""
    y_true = tf.cast(y_true, tf.int32)
    logits, lse, picked = _log_normalizer_and_target(y_true, logits)
    weight = weight * tf.cast(tf.not_equal(y_true, PAD_ID), tf.float32)
    hits = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y_true), tf.float32)
    return (
        tf.reduce_sum((lse - picked) * weight),
        tf.reduce_sum(hits * weight),
        tf.reduce_sum(weight),
    )


@keras.saving.register_keras_serializable(package="pipeline")
class TokenCrossEntropy(keras.losses.Loss):
    """Mean (optionally label-smoothed) cross-entropy over a batch's non-PAD target tokens.

    Each token's loss comes back already divided by the batch's real-token count and Keras
    sums them, so the mean is right whether or not the logits carry a Keras mask.
    """

    def __init__(self, smoothing: float = 0.0, name: str = "token_cross_entropy", **kwargs):
        kwargs.pop("reduction", None)
        super().__init__(name=name, reduction="sum", **kwargs)
        self.smoothing = float(smoothing)

    def call(self, y_true, y_pred):
        """Per-token losses over the batch's number of real tokens."""
        losses = token_cross_entropy(y_true, y_pred, self.smoothing)
        real = tf.reduce_sum(tf.cast(tf.not_equal(tf.cast(y_true, tf.int32), PAD_ID), tf.float32))
        return losses / tf.maximum(real, 1.0)

    def get_config(self) -> dict[str, Any]:
        """Serializable with its smoothing."""
        config = super().get_config()
        config.pop("reduction", None)
        return {**config, "smoothing": self.smoothing}


class _TokenStatistic(keras.metrics.Metric):
    """A running (numerator, real-token count) pair over the epoch, from `token_counts`."""

    def __init__(self, name: str, **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def numerator(self, nll: tf.Tensor, hits: tf.Tensor) -> tf.Tensor:
        """Which of the two sums this statistic accumulates."""
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        """Add the batch's sums over its real target tokens."""
        weight = tf.ones(tf.shape(y_true), tf.float32)
        if sample_weight is not None:  # per token, or per sequence
            sample_weight = tf.cast(sample_weight, tf.float32)
            if sample_weight.shape.rank == 1:
                sample_weight = sample_weight[:, None]
            weight = weight * sample_weight
        nll, hits, count = token_counts(y_true, y_pred, weight)
        self.total.assign_add(tf.cast(self.numerator(nll, hits), self.dtype))
        self.count.assign_add(tf.cast(count, self.dtype))

    def ratio(self) -> tf.Tensor:
        """Numerator per real token so far (0 before any)."""
        return tf.math.divide_no_nan(self.total, self.count)


@keras.saving.register_keras_serializable(package="pipeline")
class Perplexity(_TokenStatistic):
    """exp(mean cross-entropy per non-PAD target token), accumulated over the epoch."""

    def __init__(self, name: str = "perplexity", **kwargs):
        super().__init__(name=name, **kwargs)

    def numerator(self, nll: tf.Tensor, hits: tf.Tensor) -> tf.Tensor:
        """Summed cross-entropy."""
        return nll

    def result(self) -> tf.Tensor:
        """Perplexity so far (1.0 before any token)."""
        return tf.exp(self.ratio())


@keras.saving.register_keras_serializable(package="pipeline")
class TokenAccuracy(_TokenStatistic):
    """Fraction of non-PAD target tokens whose argmax prediction is right."""

    def __init__(self, name: str = "token_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)

    def numerator(self, nll: tf.Tensor, hits: tf.Tensor) -> tf.Tensor:
        """Summed hits."""
        return hits

    def result(self) -> tf.Tensor:
        """Accuracy so far."""
        return self.ratio()
