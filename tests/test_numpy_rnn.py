"""The numpy reference RNN against Keras/TensorFlow, finite differences and a closed form."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.reference.numpy_rnn import (
    NumpyRNN,
    hidden_gradient_norms,
    softmax_cross_entropy,
)

STEPS, INPUTS, UNITS, OUTPUTS, BATCH = 7, 3, 5, 4, 3
# float32 Keras against float64 numpy: observed differences are <= 1e-6 (~1e-7 relative).
ATOL = 1e-5


def build_keras(activation: str, seed: int = 0) -> tuple[keras.Model, keras.Layer, keras.Layer]:
    """Build SimpleRNN + Dense with random (nonzero, non-symmetric) weights, biases included."""
    inputs = keras.Input(shape=(STEPS, INPUTS), name="tokens")
    rnn = keras.layers.SimpleRNN(UNITS, activation=activation, name="rnn")
    head = keras.layers.Dense(OUTPUTS, name="head")
    model = keras.Model(inputs, head(rnn(inputs)), name="reference")
    rng = np.random.default_rng(seed)
    # Default biases are zero and would not catch a mis-copied bias.
    for layer in (rnn, head):
        layer.set_weights([0.6 * rng.standard_normal(w.shape) for w in layer.get_weights()])
    return model, rnn, head


def squared_loss(y: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Sum of squared outputs."""
    return tf.reduce_sum(y**2)


def cross_entropy(y: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Mean softmax cross-entropy, as `softmax_cross_entropy`."""
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, y))


def numpy_loss_grad(name: str, y: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Return dL/dy for the loss named like the TF functions above."""
    return 2.0 * y if name == "squared_loss" else softmax_cross_entropy(y, labels)[1]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((BATCH, STEPS, INPUTS)).astype(np.float32)
    return xs, rng.integers(0, OUTPUTS, BATCH)


@pytest.mark.parametrize("activation", ["tanh", "linear"])
def test_forward_matches_keras(activation, data):
    model, rnn, head = build_keras(activation)
    xs, _ = data
    net = NumpyRNN.from_keras(rnn, head)
    assert net.activation == activation
    np.testing.assert_allclose(net.forward(xs), model(xs).numpy(), rtol=0, atol=ATOL)
    # An unbatched sequence gives the same row.
    np.testing.assert_allclose(net.forward(xs[1]), model(xs).numpy()[1], rtol=0, atol=ATOL)


@pytest.mark.parametrize("loss_fn", [squared_loss, cross_entropy])
@pytest.mark.parametrize("activation", ["tanh", "linear"])
def test_weight_gradients_match_gradient_tape(activation, loss_fn, data):
    model, rnn, head = build_keras(activation)
    xs, labels = data
    cell = rnn.cell
    variables = [cell.kernel, cell.recurrent_kernel, cell.bias, head.kernel, head.bias]
    with tf.GradientTape() as tape:
        loss = loss_fn(model(xs), tf.constant(labels))
    tf_grads = [g.numpy() for g in tape.gradient(loss, variables)]

    net = NumpyRNN.from_keras(rnn, head)
    y = net.forward(xs)
    grads = net.backward(numpy_loss_grad(loss_fn.__name__, y, labels)).weights
    expected = {
        "dWxh": tf_grads[0].T,
        "dWhh": tf_grads[1].T,
        "dbh": tf_grads[2],
        "dWhy": tf_grads[3].T,
        "dby": tf_grads[4],
    }
    for name, want in expected.items():
        assert grads[name].shape == want.shape, name
        # Gradients reach ~500 for the linear net: float32 error scales with magnitude.
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(grads[name], want, rtol=0, atol=ATOL * scale, err_msg=name)


def unrolled_hidden_gradients(rnn, head, xs: np.ndarray, labels: np.ndarray, loss_fn) -> np.ndarray:
    """Return dL/dε_t (B, T, units): a zero ε_t added to h_t in a Python-unrolled cell loop."""
    x = tf.constant(xs)
    eps = [tf.zeros((xs.shape[0], UNITS)) for _ in range(STEPS)]
    with tf.GradientTape() as tape:
        for e in eps:
            tape.watch(e)
        h = tf.zeros((xs.shape[0], UNITS))
        for t in range(STEPS):
            h, _ = rnn.cell(x[:, t], [h])
            h = h + eps[t]
        loss = loss_fn(head(h), tf.constant(labels))
    return np.stack([g.numpy() for g in tape.gradient(loss, eps)], axis=1)


@pytest.mark.parametrize("loss_fn", [squared_loss, cross_entropy])
def test_hidden_gradients_match_unrolled_tensorflow(loss_fn, data):
    _, rnn, head = build_keras("tanh")
    xs, labels = data
    want = unrolled_hidden_gradients(rnn, head, xs, labels, loss_fn)

    net = NumpyRNN.from_keras(rnn, head)
    y = net.forward(xs)
    dL_dh = net.backward(numpy_loss_grad(loss_fn.__name__, y, labels)).dL_dh
    assert dL_dh.shape == (BATCH, STEPS, UNITS)
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(dL_dh, want, rtol=0, atol=ATOL * scale)
    # The earliest steps only get gradient through the recurrence: a direct-path-only
    # implementation would leave them at zero.
    assert np.all(np.abs(want[:, 0]).max(axis=1) > 1e-4)
    tf_norms = np.sqrt((want**2).sum(axis=(0, 2)))
    np.testing.assert_allclose(hidden_gradient_norms(dL_dh), tf_norms, rtol=1e-4)
    # Per sequence, the unbatched path gives that sequence's row.
    net.forward(xs[0])
    single = net.backward(numpy_loss_grad(loss_fn.__name__, y[:1], labels[:1])[0]).dL_dh
    np.testing.assert_allclose(single, dL_dh[0] * (BATCH if loss_fn is cross_entropy else 1))
    assert hidden_gradient_norms(single).shape == (STEPS,)


@pytest.mark.parametrize("activation", ["tanh", "linear"])
@pytest.mark.parametrize(("name", "index"), [("Whh", (1, 3)), ("Wxh", (4, 0)), ("bh", (2,))])
def test_weight_gradients_match_finite_differences(activation, name, index):
    rng = np.random.default_rng(2)
    net = NumpyRNN(INPUTS, OUTPUTS, UNITS, seed=3, activation=activation, init_scale=0.5)
    net.bh = 0.3 * rng.standard_normal(UNITS)
    xs = rng.standard_normal((STEPS, INPUTS))
    target = 2

    def loss() -> float:
        return softmax_cross_entropy(net.forward(xs), target)[0]

    analytic = net.backward(softmax_cross_entropy(net.forward(xs), target)[1]).weights[f"d{name}"]
    weight, h = getattr(net, name), 1e-6
    weight[index] += h
    up = loss()
    weight[index] -= 2 * h
    down = loss()
    weight[index] += h
    numeric = (up - down) / (2 * h)
    assert abs(analytic[index]) > 1e-4  # a zero gradient would make the check vacuous
    assert analytic[index] == pytest.approx(numeric, rel=1e-6, abs=1e-10)


@pytest.mark.parametrize("a", [0.5, 0.9, 1.3])
def test_linear_rnn_hidden_gradient_norms_scale_as_power_of_a(a):
    rng = np.random.default_rng(4)
    # Whh = a·I and no input contribution; the bias keeps the states away from zero so that
    # tanh (whose slope at 0 is 1) would break the law.
    weights = dict(
        Wxh=np.zeros((UNITS, INPUTS)),
        Whh=a * np.eye(UNITS),
        Why=rng.standard_normal((OUTPUTS, UNITS)),
        bh=rng.standard_normal(UNITS),
        by=rng.standard_normal(OUTPUTS),
    )
    xs = rng.standard_normal((STEPS, INPUTS))
    steps_back = STEPS - 1 - np.arange(STEPS)  # T - t for t = 1..T

    def norms(activation: str) -> np.ndarray:
        net = NumpyRNN.from_arrays(**weights, activation=activation)
        return hidden_gradient_norms(net.backward(2.0 * net.forward(xs)).dL_dh)

    linear = norms("linear")
    np.testing.assert_allclose(linear, linear[-1] * a**steps_back, rtol=1e-12)
    tanh = norms("tanh")
    assert not np.allclose(tanh, tanh[-1] * a**steps_back, rtol=1e-3)


def test_train_step_reduces_cross_entropy():
    # Toy memory task: the class is the sign of the first step's input, seen T-1 steps earlier.
    rng = np.random.default_rng(5)
    xs = rng.standard_normal((16, 4, 2))
    labels = (xs[:, 0, 0] > 0).astype(int)
    net = NumpyRNN(2, 2, hidden_size=8, seed=0, init_scale=0.3)
    losses = [net.train_step(xs, labels, learning_rate=0.2) for _ in range(150)]
    assert losses[0] == pytest.approx(np.log(2), abs=0.2)
    assert losses[-1] < 0.5 * losses[0]


def test_from_keras_rejects_what_it_cannot_mirror():
    inputs = keras.Input(shape=(STEPS, INPUTS))
    relu_rnn = keras.layers.SimpleRNN(UNITS, activation="relu")
    softmax_head = keras.layers.Dense(OUTPUTS, activation="softmax")
    softmax_head(relu_rnn(inputs))
    linear_head = keras.layers.Dense(OUTPUTS)
    linear_head(keras.layers.SimpleRNN(UNITS)(inputs))
    with pytest.raises(ValueError, match="activation"):
        NumpyRNN.from_keras(relu_rnn, linear_head)
    tanh_rnn = keras.layers.SimpleRNN(UNITS)
    tanh_rnn(inputs)
    with pytest.raises(ValueError, match="linear"):
        NumpyRNN.from_keras(tanh_rnn, softmax_head)


def test_backward_needs_forward():
    with pytest.raises(RuntimeError, match="forward"):
        NumpyRNN(INPUTS, OUTPUTS, UNITS).backward(np.zeros(OUTPUTS))
