"""Sentiment classifier: tokens -> embedding -> recurrent block -> P(positive)."""

from __future__ import annotations

import keras

from pipeline.core.recurrent import recurrent_stack, token_embedding
from pipeline.params import ClassificationTrain


def build_classifier(cfg: ClassificationTrain, vocab_size: int) -> keras.Model:
    """Build Embedding -> recurrent block -> Dense(sigmoid), shaped by params."""
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    # Masked embedding: post-padded reviews end at their last real token.
    x = token_embedding(vocab_size, cfg.embedding_dim)(tokens)
    # Recurrent block: the last layer returns only its final state.
    x = recurrent_stack(x, cfg)
    # Head: one logistic unit.
    probability = keras.layers.Dense(1, activation="sigmoid", name="head")(x)
    return keras.Model(tokens, probability, name="classifier")
