"""Spoken-digit recognizer: MFCC frames -> recurrent block -> P(digit)."""

from __future__ import annotations

import keras

from pipeline.core.recurrent import recurrent_stack
from pipeline.params import SpeechTrain
from pipeline.tasks.speech.data import DIGITS, PAD_FRAME


def build_recognizer(cfg: SpeechTrain, num_features: int) -> keras.Model:
    """Build Masking -> [Dense projection] -> recurrent block -> Dense(softmax over digits)."""
    frames = keras.Input(shape=(None, num_features), dtype="float32", name="frames")
    # Padded frames (all zeros) are masked: they neither update the states nor count.
    x = keras.layers.Masking(mask_value=PAD_FRAME, name="mask")(frames)
    # Optional per-frame projection (keeps the mask).
    if cfg.embedding_dim:
        x = keras.layers.Dense(cfg.embedding_dim, activation="tanh", name="projection")(x)
    # Recurrent block: the last layer returns only its final state.
    x = recurrent_stack(x, cfg)
    # Head: softmax over the ten digits.
    probabilities = keras.layers.Dense(DIGITS, activation="softmax", name="head", dtype="float32")(
        x
    )
    return keras.Model(frames, probabilities, name="recognizer")
