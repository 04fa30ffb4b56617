"""Sentiment classifier: tokens -> embedding -> recurrent block -> pooling -> P(positive).

With `pooling: max_mean` the head reads every hidden state of the last recurrent layer, not
only the final one: the element-wise max and the mean over the review's real tokens. A verdict
early in a long review then reaches the head in one step instead of through hundreds of
recurrent steps. Keras's `GlobalMaxPooling1D` ignores the mask (pads would enter the max), so
the pooling here is written out with the mask.
"""

from __future__ import annotations

import keras
from keras import ops

from pipeline.core.recurrent import StackSteps, recurrent_stack, token_embedding, word_dropout
from pipeline.params import ClassificationTrain


@keras.saving.register_keras_serializable(package="pipeline")
class MaskedMaxMeanPooling(keras.layers.Layer):
    """Concatenate the max and the mean over real timesteps; pads enter neither."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def compute_mask(self, inputs, mask=None):
        """The pooled vector has no time axis, so no mask either."""
        return None

    def compute_output_shape(self, input_shape):
        """(batch, 2 * features): max first, then mean."""
        return (input_shape[0], 2 * input_shape[-1])

    def call(self, inputs, mask=None):
        """Masked max and mean; an all-pad (empty) review pools to zeros."""
        if mask is None:
            mask = ops.ones(ops.shape(inputs)[:2], dtype="bool")
        valid = ops.expand_dims(mask, -1)
        weights = ops.cast(valid, inputs.dtype)
        count = ops.sum(weights, axis=1)
        mean = ops.sum(inputs * weights, axis=1) / ops.maximum(count, 1.0)
        floor = ops.full_like(inputs, float("-inf"))
        maximum = ops.max(ops.where(valid, inputs, floor), axis=1)
        maximum = ops.where(count > 0, maximum, ops.zeros_like(maximum))
        return ops.concatenate([maximum, mean], axis=-1)


def build_classifier(cfg: ClassificationTrain, vocab_size: int) -> keras.Model:
    """Build Embedding -> recurrent block -> pooling -> Dense(sigmoid), shaped by params."""
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    # Masked embedding: post-padded reviews end at their last real token.
    x = token_embedding(vocab_size, cfg.embedding_dim)(tokens)
    x = word_dropout(x, cfg.word_dropout, "word_dropout")
    if cfg.embedding_dropout > 0:
        # The same embedding channels are dropped at every position of a review.
        x = keras.layers.SpatialDropout1D(cfg.embedding_dropout, name="embedding_dropout")(x)
    if cfg.tokens_per_step > 1:
        # k tokens a recurrent step: the loop's per-step latency, not arithmetic, bounds it.
        x = StackSteps(cfg.tokens_per_step, name="stack_steps")(x)
    if cfg.pooling == "last":
        # Recurrent block: the last layer returns only its final state.
        x = recurrent_stack(x, cfg)
    else:
        # Recurrent block over every position, then masked max and mean over time.
        x = MaskedMaxMeanPooling(name="pooling")(recurrent_stack(x, cfg, sequences=True))
    # Head: one logistic unit, in float32 so probabilities keep their ranking (ROC-AUC).
    probability = keras.layers.Dense(1, activation="sigmoid", name="head", dtype="float32")(x)
    return keras.Model(tokens, probability, name="classifier")
