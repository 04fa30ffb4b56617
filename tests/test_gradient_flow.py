"""Tests for pipeline.core.gradient_flow: known answers, unrolled references, masking, wiring."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.core.gradient_flow import (
    GradientFlowProbe,
    gradient_horizon,
    log_decay_ratio,
    plot_flow,
    summarize_flow,
)
from pipeline.params import ClassificationTrain
from pipeline.tasks.classification.model import build_classifier

VOCAB = 20
RTOL = 1e-5


def bce_sum() -> keras.losses.Loss:
    """Per-example losses summed, so each example's gradient is its own."""
    return keras.losses.BinaryCrossentropy(reduction="sum")


def make_classifier(
    layer: keras.layers.Layer, mask_zero: bool = False, name: str = "clf"
) -> keras.Model:
    """Tokens -> embedding -> one recurrent layer (last step) -> sigmoid head."""
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCAB, 4, mask_zero=mask_zero, name="embedding")(tokens)
    x = layer(x)
    return keras.Model(tokens, keras.layers.Dense(1, "sigmoid", name="head")(x), name=name)


def random_batch(lengths: list[int], steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Post-padded token ids (PAD 0) and binary targets."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, VOCAB, size=(len(lengths), steps)).astype("int32")
    for row, length in enumerate(lengths):
        tokens[row, length:] = 0
    return tokens, rng.integers(0, 2, size=(len(lengths), 1)).astype("float32")


def unroll(cell: keras.layers.Layer, x: tf.Tensor, eps: list, reverse: bool = False) -> tf.Tensor:
    """Python loop over timesteps adding eps[t] to h at input position t; returns the last h."""
    states = cell.get_initial_state(batch_size=x.shape[0])
    order = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    h = None
    for t in order:
        output, new_states = cell(x[:, t], states)
        h = output + eps[t]
        states = [h, *new_states[1:]]
    return h


def reference_curves(
    model: keras.Model, cells: list, tokens: np.ndarray, targets: np.ndarray
) -> list[np.ndarray]:
    """Mean ‖∂L/∂ε_t‖ per direction from the unrolled loops; cells = [(cell, reverse), ...]."""
    x = model.get_layer("embedding")(tokens)
    batch, steps = tokens.shape
    with tf.GradientTape() as tape:
        eps = [[tf.zeros((batch, cell.units)) for _ in range(steps)] for cell, _ in cells]
        tape.watch(eps)
        finals = [
            unroll(cell, x, e, reverse) for (cell, reverse), e in zip(cells, eps, strict=True)
        ]
        loss = bce_sum()(targets, model.get_layer("head")(tf.concat(finals, axis=-1)))
    grads = tape.gradient(loss, eps)
    return [np.stack([tf.norm(g, axis=-1).numpy() for g in per], 1).mean(0) for per in grads]


@pytest.mark.parametrize(("a", "horizon"), [(0.5, 7), (2.0, 10)])
def test_linear_rnn_known_answer(a: float, horizon: int) -> None:
    """‖∂L/∂h_t‖ = a^(T-1-t)·‖w‖ for h_t = x_t K + a·h_{t-1} and L = w·h_T."""
    units, steps = 4, 10
    seq = keras.Input(shape=(None, 3), name="seq")
    rnn = keras.layers.SimpleRNN(units, activation="linear", use_bias=False, name="rnn_1")
    head = keras.layers.Dense(1, use_bias=False, name="head")
    model = keras.Model(seq, head(rnn(seq)))
    rnn.cell.recurrent_kernel.assign(a * np.eye(units, dtype="float32"))
    w = np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")
    head.kernel.assign(w)
    inputs = np.random.default_rng(1).normal(size=(3, steps, 3)).astype("float32")
    curve = GradientFlowProbe(model, inputs, None, lambda _, p: p[:, 0]).measure()["rnn_1"]
    expected = a ** np.arange(steps - 1, -1, -1) * np.linalg.norm(w)
    np.testing.assert_allclose(curve, expected, rtol=RTOL)
    assert gradient_horizon(curve, threshold=0.01) == horizon
    assert log_decay_ratio(curve) == pytest.approx((steps - 1) * math.log10(a), rel=1e-5)


@pytest.mark.parametrize("layer_cls", [keras.layers.LSTM, keras.layers.GRU])
def test_matches_unrolled_reference(layer_cls: type) -> None:
    """The one-pass ε gradients equal a Python-unrolled loop with watched ε per step."""
    model = make_classifier(layer_cls(6, name="rnn_1"))
    tokens, targets = random_batch([9, 9, 9], steps=9)
    curve = GradientFlowProbe(model, tokens, targets, bce_sum()).measure()["rnn_1"]
    (expected,) = reference_curves(model, [(model.get_layer("rnn_1").cell, False)], tokens, targets)
    np.testing.assert_allclose(curve, expected, rtol=RTOL)
    assert curve[0] < curve[-1]


def test_bidirectional_matches_reference() -> None:
    """Both directions are reported, the backward one aligned with input positions."""
    bidi = keras.layers.Bidirectional(keras.layers.LSTM(5), name="rnn_1")
    model = make_classifier(bidi)
    tokens, targets = random_batch([8, 8], steps=8, seed=3)
    curves = GradientFlowProbe(model, tokens, targets, bce_sum()).measure()
    assert set(curves) == {"rnn_1/forward", "rnn_1/backward"}
    cells = [(bidi.forward_layer.cell, False), (bidi.backward_layer.cell, True)]
    forward, backward = reference_curves(model, cells, tokens, targets)
    np.testing.assert_allclose(curves["rnn_1/forward"], forward, rtol=RTOL)
    np.testing.assert_allclose(curves["rnn_1/backward"], backward, rtol=RTOL)
    assert curves["rnn_1/backward"][0] > curves["rnn_1/backward"][-1]


def unroll_all(cell: keras.layers.Layer, x: tf.Tensor, eps: list) -> tf.Tensor:
    """Like `unroll`, but return every h_t (+ eps[t]) stacked on a time axis."""
    states, hs = cell.get_initial_state(batch_size=x.shape[0]), []
    for t in range(x.shape[1]):
        output, new_states = cell(x[:, t], states)
        hs.append(output + eps[t])
        states = [hs[-1], *new_states[1:]]
    return tf.stack(hs, axis=1)


def test_pooled_head_matches_reference_with_its_direct_paths() -> None:
    """Under max+mean pooling each h_t reaches the loss directly and through the recurrence;
    the probe's total derivative includes both (a last-state head has only the second)."""
    cfg = ClassificationTrain(cell="gru", units=5, embedding_dim=4, pooling="max_mean")
    model = build_classifier(cfg, VOCAB)
    tokens, targets = random_batch([10, 10], steps=10, seed=9)
    curve = GradientFlowProbe(model, tokens, targets, bce_sum()).measure()["rnn_1"]
    x = model.get_layer("embedding")(tokens)
    with tf.GradientTape() as tape:
        eps = [tf.zeros((2, cfg.units)) for _ in range(10)]
        tape.watch(eps)
        hs = unroll_all(model.get_layer("rnn_1").cell, x, eps)
        pooled = tf.concat([tf.reduce_max(hs, axis=1), tf.reduce_mean(hs, axis=1)], axis=-1)
        loss = bce_sum()(targets, model.get_layer("head")(pooled))
    expected = np.stack([tf.norm(g, axis=-1).numpy() for g in tape.gradient(loss, eps)], 1)
    np.testing.assert_allclose(curve, expected.mean(0), rtol=RTOL)
    assert gradient_horizon(curve) == 10  # the direct paths keep every step within 100x


def test_pad_steps_excluded() -> None:
    """A padded batch averages, at each t, only the examples whose step t is a real token."""
    bidi = keras.layers.Bidirectional(keras.layers.GRU(5), name="rnn_1")
    model = make_classifier(bidi, mask_zero=True)
    lengths, steps = [7, 4, 2], 9
    tokens, targets = random_batch(lengths, steps=steps, seed=5)
    batch = GradientFlowProbe(model, tokens, targets, bce_sum()).measure()
    alone = [
        GradientFlowProbe(model, tokens[i : i + 1, :n], targets[i : i + 1], bce_sum()).measure()
        for i, n in enumerate(lengths)
    ]
    for key in ("rnn_1/forward", "rnn_1/backward"):
        for t in range(max(lengths)):
            expected = np.mean([curves[key][t] for curves in alone if t < len(curves[key])])
            assert batch[key][t] == pytest.approx(expected, rel=RTOL)
        assert np.isnan(batch[key][max(lengths) :]).all()


def test_probe_shares_weights_and_predictions() -> None:
    """Probe predictions equal the model's; probing never changes the trained weights."""
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCAB, 4, mask_zero=True, name="embedding")(tokens)
    x = keras.layers.SimpleRNN(5, return_sequences=True, name="rnn_1")(x)
    x = keras.layers.Dropout(0.5, name="drop")(x)
    x = keras.layers.LSTM(5, return_sequences=True, name="rnn_2")(x)
    model = keras.Model(tokens, keras.layers.Dense(VOCAB, "softmax", name="head")(x))
    model.compile(optimizer="adam", loss=lambda y, p: keras.ops.sum(p, axis=-1))  # custom loss
    inputs, _ = random_batch([6, 3], steps=6)
    before = [w.copy() for w in model.get_weights()]
    probe = GradientFlowProbe(
        model, inputs, inputs, keras.losses.SparseCategoricalCrossentropy(reduction="sum")
    )
    first, second = probe.measure(), probe.measure()
    np.testing.assert_allclose(probe.probe_model(inputs), model(inputs), rtol=1e-6, atol=0)
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert set(first) == {"rnn_1", "rnn_2"}
    np.testing.assert_array_equal(first["rnn_1"], second["rnn_1"])
    assert np.all(first["rnn_1"][:3] > 0)


def make_seq2seq() -> keras.Model:
    """Encoder LSTM (return_state) -> decoder LSTM (initial_state) -> Attention -> head."""
    source = keras.Input(shape=(None,), dtype="int32", name="source")
    target_in = keras.Input(shape=(None,), dtype="int32", name="target_in")
    src = keras.layers.Embedding(VOCAB, 4, mask_zero=True, name="src_embedding")(source)
    encoder = keras.layers.LSTM(6, return_sequences=True, return_state=True, name="encoder")
    enc_out, h, c = encoder(src)
    tgt = keras.layers.Embedding(VOCAB, 4, mask_zero=True, name="tgt_embedding")(target_in)
    decoder = keras.layers.LSTM(6, return_sequences=True, name="decoder")
    dec_out = decoder(tgt, initial_state=[h, c])
    context = keras.layers.Attention(name="attention")([dec_out, enc_out])
    merged = keras.layers.Concatenate(name="concat")([dec_out, context])
    logits = keras.layers.Dense(VOCAB, "softmax", name="head")(merged)
    return keras.Model({"source": source, "target_in": target_in}, logits, name="s2s")


def test_seq2seq_two_inputs() -> None:
    """Encoder and decoder curves come out; the encoder's reaches early source positions."""
    model = make_seq2seq()
    source, _ = random_batch([7, 5], steps=7, seed=7)
    target_in, _ = random_batch([4, 3], steps=4, seed=8)
    inputs = {"source": source, "target_in": target_in}
    targets = np.roll(target_in, -1, axis=1)
    loss = keras.losses.SparseCategoricalCrossentropy(reduction="sum")
    probe = GradientFlowProbe(model, inputs, targets, loss)
    curves = probe.measure()
    assert set(curves) == {"encoder", "decoder"}
    assert curves["encoder"].shape == (7,) and curves["decoder"].shape == (4,)
    assert np.all(curves["encoder"] > 0) and np.all(curves["decoder"] > 0)
    np.testing.assert_allclose(probe.probe_model(inputs), model(inputs), rtol=1e-6, atol=0)


def test_horizon_and_log_ratio_on_hand_made_curves() -> None:
    """Horizon counts back from the last valid step; log-ratio signs vanishing vs exploding."""
    vanishing = np.array([1e-4, 1e-3, 1e-2, 1e-1, 1.0, np.nan, np.nan])
    assert gradient_horizon(vanishing, threshold=0.01) == 3
    assert gradient_horizon(vanishing, threshold=1e-3) == 4
    assert log_decay_ratio(vanishing) == pytest.approx(-4.0)
    assert log_decay_ratio(np.array([10.0, 1.0, 0.1])) == pytest.approx(2.0)
    assert gradient_horizon(np.array([10.0, 1.0, 0.1])) == 3
    assert gradient_horizon(np.array([1.0, 1e-5, 1.0])) == 1
    assert gradient_horizon(np.array([1.0, 0.0])) == 0
    assert gradient_horizon(np.full(3, np.nan)) == 0
    assert math.isnan(log_decay_ratio(np.full(3, np.nan)))


def test_summarize_reads_backward_in_processing_order() -> None:
    """A backward curve is read from its last processed step (input position 0)."""
    curve = np.array([1.0, 0.1, 0.001])
    metrics = summarize_flow({"rnn_1/forward": curve, "rnn_1/backward": curve})
    assert metrics["grad_flow/log_ratio/rnn_1/forward"] == pytest.approx(3.0)
    assert metrics["grad_flow/log_ratio/rnn_1/backward"] == pytest.approx(-3.0)
    assert metrics["grad_flow/horizon/rnn_1/forward"] == 3
    assert metrics["grad_flow/horizon/rnn_1/backward"] == 2
    assert metrics["grad_flow/last/rnn_1/backward"] == pytest.approx(1.0)


def test_plot_flow_writes_png(tmp_path: Path) -> None:
    """One PNG with a curve per epoch; NaN steps and zeros do not break the log axis."""
    import matplotlib.pyplot as plt

    history = [
        {"rnn_1": np.array([1e-6, 1e-3, 1.0, np.nan]) * (e + 1), "enc": np.array([0.0, 1.0])}
        for e in range(3)
    ]
    out = plot_flow(history, tmp_path / "plots" / "flow.png")
    assert out == tmp_path / "plots" / "flow.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 2000
    assert plt.get_fignums() == []
