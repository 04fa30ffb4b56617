"""A numpy many-to-one vanilla RNN with backpropagation through time, as a ground truth.

Follows Victor Zhou's "An Introduction to Recurrent Neural Networks for Beginners":

    h_t = tanh(Wxh · x_t + Whh · h_{t-1} + bh),   h_0 = 0
    y   = Why · h_T + by                           (output from the last step only)

Everything is explicit here so the Keras pipeline's gradient instrumentation can be checked
against it: `backward` returns the weight gradients *and* the total derivative dL/dh_t of the loss
with respect to every hidden state, i.e. the gradient that flows back through the recurrence
(for a last-step head, the direct path alone would be zero for every t < T).

Conventions:
- Weights keep the article's orientation, (fan_out, fan_in): Wxh (hidden, input),
  Whh (hidden, hidden), Why (output, hidden); biases are 1-D, bh (hidden,), by (output,).
  A Keras kernel is (fan_in, fan_out), so it is the transpose (see `NumpyRNN.from_keras`).
- Vectors are 1-D rows rather than the article's (n, 1) columns, so a batch is a leading axis:
  `xs` is (T, input) or (B, T, input); states are computed as `x_t @ Wxh.T + h @ Whh.T + bh`,
  which is the article's `Wxh @ x_t + ...` applied to each row.
- All arithmetic is float64, so differences against float32 Keras come from Keras alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
Activation = Literal["tanh", "linear"]
WEIGHT_NAMES = ("Wxh", "Whh", "Why", "bh", "by")


class Backprop(NamedTuple):
    """Result of `NumpyRNN.backward`."""

    weights: dict[str, FloatArray]
    """Gradients keyed dWxh, dWhh, dWhy, dbh, dby, summed over the batch, shaped like weights."""
    dL_dh: FloatArray
    """Total derivative dL/dh_t for t = 1..T: (T, hidden), or (B, T, hidden) for a batch."""


class NumpyRNN:
    """Many-to-one vanilla RNN: a recurrent layer whose last state feeds a linear head."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        hidden_size: int = 64,
        seed: int = 0,
        *,
        activation: Activation = "tanh",
        init_scale: float = 1e-3,
    ) -> None:
        """Initialise weights like the article: standard normal / 1000, zero biases."""
        if activation not in ("tanh", "linear"):
            raise ValueError(f"activation must be 'tanh' or 'linear', got {activation!r}")
        rng = np.random.default_rng(seed)
        self.activation: Activation = activation
        self.Wxh: FloatArray = rng.standard_normal((hidden_size, input_size)) * init_scale
        self.Whh: FloatArray = rng.standard_normal((hidden_size, hidden_size)) * init_scale
        self.Why: FloatArray = rng.standard_normal((output_size, hidden_size)) * init_scale
        self.bh: FloatArray = np.zeros(hidden_size)
        self.by: FloatArray = np.zeros(output_size)
        self._xs: FloatArray | None = None
        self._hs: FloatArray | None = None
        self._batched = False

    @property
    def hidden_size(self) -> int:
        """Number of hidden units."""
        return self.Whh.shape[0]

    @classmethod
    def from_arrays(
        cls,
        Wxh: ArrayLike,
        Whh: ArrayLike,
        Why: ArrayLike,
        bh: ArrayLike,
        by: ArrayLike,
        *,
        activation: Activation = "tanh",
    ) -> NumpyRNN:
        """Build a network from explicit weights in the article's orientation."""
        arrays = [np.array(a, dtype=np.float64) for a in (Wxh, Whh, Why, bh, by)]
        wxh, whh, why, b_h, b_y = arrays
        hidden, inputs = wxh.shape
        expected = [
            (hidden, inputs),
            (hidden, hidden),
            (why.shape[0], hidden),
            (hidden,),
            (why.shape[0],),
        ]
        for name, array, shape in zip(WEIGHT_NAMES, arrays, expected, strict=True):
            if array.shape != shape:
                raise ValueError(f"{name} has shape {array.shape}, expected {shape}")
        rnn = cls(inputs, why.shape[0], hidden, activation=activation)
        rnn.Wxh, rnn.Whh, rnn.Why, rnn.bh, rnn.by = wxh, whh, why, b_h, b_y
        return rnn

    @classmethod
    def from_keras_weights(
        cls,
        rnn_weights: Sequence[ArrayLike],
        head_weights: Sequence[ArrayLike],
        *,
        activation: Activation = "tanh",
    ) -> NumpyRNN:
        """Build from `SimpleRNN.get_weights()` and `Dense.get_weights()` (kernels transposed)."""
        kernel, recurrent_kernel, *rnn_bias = (np.asarray(w) for w in rnn_weights)
        head_kernel, *head_bias = (np.asarray(w) for w in head_weights)
        # use_bias=False leaves the bias out of get_weights(); it is then zero.
        bh = rnn_bias[0] if rnn_bias else np.zeros(kernel.shape[1])
        by = head_bias[0] if head_bias else np.zeros(head_kernel.shape[1])
        return cls.from_arrays(
            kernel.T, recurrent_kernel.T, head_kernel.T, bh, by, activation=activation
        )

    @classmethod
    def from_keras(cls, rnn: Any, head: Any) -> NumpyRNN:
        """Copy a Keras `SimpleRNN` layer and the linear `Dense` head on its last state."""
        rnn_config = rnn.get_config()
        activation, head_activation = rnn_config.get("activation"), head.get_config()["activation"]
        # Only the equations above are mirrored; anything else would silently diverge.
        if activation not in ("tanh", "linear"):
            raise ValueError(f"unsupported SimpleRNN activation {activation!r}")
        if head_activation != "linear":
            raise ValueError(f"the Dense head must be linear, got {head_activation!r}")
        if rnn_config.get("return_sequences") or rnn_config.get("go_backwards"):
            raise ValueError("the SimpleRNN must return only its last state, read forwards")
        return cls.from_keras_weights(rnn.get_weights(), head.get_weights(), activation=activation)

    def forward(self, xs: ArrayLike) -> FloatArray:
        """Run a sequence (T, input) or batch (B, T, input); return y and cache the states."""
        x = np.asarray(xs, dtype=np.float64)
        self._batched = x.ndim == 3
        if x.ndim == 2:
            x = x[np.newaxis]
        if x.ndim != 3 or x.shape[2] != self.Wxh.shape[1]:
            raise ValueError(f"xs must be (T, {self.Wxh.shape[1]}) or (B, T, ...), got {x.shape}")
        batch, steps, _ = x.shape
        # hs[:, t] is h_t with hs[:, 0] = h_0 = 0, so index t matches the article's subscript.
        hs = np.zeros((batch, steps + 1, self.hidden_size))
        for t in range(steps):
            pre = x[:, t] @ self.Wxh.T + hs[:, t] @ self.Whh.T + self.bh
            hs[:, t + 1] = np.tanh(pre) if self.activation == "tanh" else pre
        self._xs, self._hs = x, hs
        y = hs[:, -1] @ self.Why.T + self.by
        return y if self._batched else y[0]

    def backward(self, dL_dy: ArrayLike) -> Backprop:
        """Backpropagate dL/dy through time for the last `forward` call.

        Walking t = T..1 with `dh` = dL/dh_t (the total derivative: direct path for t = T plus
        everything that reaches h_t through h_{t+1}, ..., h_T):
            da_t = dh ⊙ f'(a_t),  dWxh += da_tᵀ x_t,  dWhh += da_tᵀ h_{t-1},  dbh += Σ da_t,
            dL/dh_{t-1} = da_t · Whh.
        """
        if self._xs is None or self._hs is None:
            raise RuntimeError("call forward() before backward()")
        xs, hs = self._xs, self._hs
        dy = np.asarray(dL_dy, dtype=np.float64).reshape(xs.shape[0], self.Why.shape[0])
        steps = xs.shape[1]
        grads = {
            "dWxh": np.zeros_like(self.Wxh),
            "dWhh": np.zeros_like(self.Whh),
            "dWhy": dy.T @ hs[:, -1],
            "dbh": np.zeros_like(self.bh),
            "dby": dy.sum(axis=0),
        }
        dL_dh = np.zeros((xs.shape[0], steps, self.hidden_size))
        dh = dy @ self.Why
        for t in range(steps, 0, -1):
            dL_dh[:, t - 1] = dh
            # tanh'(a_t) = 1 - h_t², from the cached output rather than the pre-activation.
            da = dh * (1.0 - hs[:, t] ** 2) if self.activation == "tanh" else dh
            grads["dWxh"] += da.T @ xs[:, t - 1]
            grads["dWhh"] += da.T @ hs[:, t - 1]
            grads["dbh"] += da.sum(axis=0)
            dh = da @ self.Whh
        return Backprop(grads, dL_dh if self._batched else dL_dh[0])

    def train_step(
        self, xs: ArrayLike, target: int | ArrayLike, learning_rate: float, clip: float | None = 1.0
    ) -> float:
        """Take one SGD step on softmax cross-entropy, as the article's `backprop`; return loss.

        Gradients are clipped elementwise to [-clip, clip] like the article, which guards the
        plain-SGD toy training against the exploding gradients the article warns about.
        """
        y = self.forward(xs)
        loss, dL_dy = softmax_cross_entropy(y, target)
        grads = self.backward(dL_dy).weights
        for name in WEIGHT_NAMES:
            grad = grads[f"d{name}"]
            if clip is not None:
                grad = np.clip(grad, -clip, clip)
            setattr(self, name, getattr(self, name) - learning_rate * grad)
        return loss


def softmax_cross_entropy(y: ArrayLike, target: int | ArrayLike) -> tuple[float, FloatArray]:
    """Return the mean cross-entropy of softmax(y) against class ids, and dL/dy."""
    logits = np.asarray(y, dtype=np.float64)
    batched = logits.ndim == 2
    logits = np.atleast_2d(logits)
    labels = np.atleast_1d(np.asarray(target, dtype=np.int64))
    # Shifting by the max keeps exp() finite without changing the softmax.
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    loss = float(-log_p[rows, labels].mean())
    dL_dy = np.exp(log_p)
    dL_dy[rows, labels] -= 1.0
    dL_dy /= len(labels)
    return loss, dL_dy if batched else dL_dy[0]


def hidden_gradient_norms(dL_dh: ArrayLike) -> FloatArray:
    """Return ‖dL/dh_t‖ per timestep (T,) from `Backprop.dL_dh`.

    For a batch (B, T, hidden) this is the norm over the whole (B, hidden) state at step t,
    i.e. the norm of the gradient with respect to the batch's hidden-state tensor, which is what
    a TensorFlow tape reports for a batched h_t.
    """
    grads = np.asarray(dL_dh, dtype=np.float64)
    if grads.ndim == 2:
        return np.linalg.norm(grads, axis=1)
    return np.sqrt((grads**2).sum(axis=(0, 2)))
