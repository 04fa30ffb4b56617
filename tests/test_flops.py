"""The analytic FLOP count, checked by hand on tiny models, and the MFU inputs."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.core.flops import forward_flops, matmul_peak, mean_timesteps, training_flops


def test_gru_classifier_by_hand() -> None:
    tokens = keras.Input((None,), dtype="int32")
    hidden = keras.layers.GRU(4)(keras.layers.Embedding(10, 3)(tokens))
    model = keras.Model(tokens, keras.layers.Dense(1)(hidden))
    # GRU: 3 gates x 2 x (3 inputs + 4 units) x 4 units = 168 per step, 5 steps; head 2 x 4 x 1.
    assert forward_flops(model, 5) == 168 * 5 + 8
    assert training_flops(model, 5) == 3 * (168 * 5 + 8)


def test_bidirectional_lstm_and_a_dense_layer_per_timestep_by_hand() -> None:
    frames = keras.Input((None, 2))
    hidden = keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True))(frames)
    hidden = keras.layers.SimpleRNN(2, return_sequences=True)(hidden)
    model = keras.Model(frames, keras.layers.Dense(7)(hidden))
    lstm = 2 * 4 * 2 * (2 + 3) * 3  # both directions, 4 gates
    simple = 2 * (6 + 2) * 2  # fed the 6 concatenated features
    dense = 2 * 2 * 7  # at every step
    assert forward_flops(model, 10) == 10 * (lstm + simple + dense)


def test_dot_product_attention_by_hand() -> None:
    query, value = keras.Input((None, 4)), keras.Input((None, 4))
    model = keras.Model([query, value], keras.layers.Attention()([query, value]))
    assert forward_flops(model, 6) == 4 * 6 * 6 * 4  # scores and context, 6 x 6 steps


def test_mean_timesteps_is_the_padded_length_per_example() -> None:
    x = np.zeros((5, 8), "int32")
    batches = tf.data.Dataset.from_tensor_slices((x, np.zeros(5))).batch(2)
    assert mean_timesteps(batches) == 8
    ragged = tf.data.Dataset.from_generator(
        lambda: iter([(np.zeros((2, 3), "int32"), np.zeros(2)), (np.zeros((1, 9), "int32"), [0])]),
        output_signature=(tf.TensorSpec((None, None), tf.int32), tf.TensorSpec((None,))),
    )
    assert mean_timesteps(ragged) == pytest.approx((2 * 3 + 9) / 3)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_matmul_peak_is_a_plausible_rate(dtype: str) -> None:
    peak = matmul_peak(size=128, seconds=0.05, dtype=dtype)
    assert 1e8 < peak < 1e14  # between a slow core and a large GPU, in FLOP/s
