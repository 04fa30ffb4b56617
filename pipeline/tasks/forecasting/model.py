"""Forecaster: a recurrent encoder over the history, then a head over the horizon's covariates."""

from __future__ import annotations

import keras

from pipeline.core.recurrent import recurrent_layer, recurrent_stack
from pipeline.params import ForecastingTrain


def build_forecaster(
    cfg: ForecastingTrain, num_features: int, horizon: int, future_features: int
) -> keras.Model:
    """Build [history, horizon inputs] -> encoder -> head -> (horizon,) scaled demand."""
    history = keras.Input(shape=(cfg.max_len, num_features), dtype="float32", name="history")
    future = keras.Input(shape=(horizon, future_features), dtype="float32", name="future")
    # Optional per-step projection of the history features.
    x = history
    if cfg.embedding_dim:
        x = keras.layers.Dense(cfg.embedding_dim, activation="tanh", name="projection")(x)
    # Encoder: its last layer's final state summarises the week.
    state = recurrent_stack(x, cfg)
    if cfg.head == "direct":
        # Every horizon step at once from the state and all the horizon's covariates.
        flat = keras.layers.Flatten(name="future_flat")(future)
        z = keras.layers.Concatenate(name="head_input")([state, flat])
        z = keras.layers.Dense(cfg.head_units, activation="relu", name="head_hidden")(z)
        forecast = keras.layers.Dense(horizon, name="head", dtype="float32")(z)
    else:
        # Decoder: a recurrent layer reads each step's covariates beside the encoder state.
        repeated = keras.layers.RepeatVector(horizon, name="state_repeat")(state)
        z = keras.layers.Concatenate(name="decoder_input")([repeated, future])
        z = recurrent_layer(cfg, "decoder_1", return_sequences=True, units=cfg.head_units)(z)
        z = keras.layers.Dense(1, name="head", dtype="float32")(z)
        forecast = keras.layers.Reshape((horizon,), name="forecast", dtype="float32")(z)
    return keras.Model([history, future], forecast, name="forecaster")
