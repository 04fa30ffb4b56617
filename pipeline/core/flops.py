"""How close training runs to the machine's limit: analytic FLOPs and model FLOP utilisation.

FLOPs per example are counted from the layers, not measured: each matrix product of an
(m x k) by (k x n) is 2·m·k·n FLOPs (a multiply and an add), per timestep for layers that run
over time. A training step costs forward + backward = 3x the forward FLOPs (the backward pass
does two products of the same size per forward one: gradients for the inputs and for the
weights). Element-wise work (gate nonlinearities, biases, the loss) and embedding lookups
are left out: next to the products they are a few percent, so the count is a slight
underestimate, and MFU a lower bound.

Per timestep of one example, with input width d and u units:
- SimpleRNN 2·(d+u)·u, GRU 3 × that, LSTM 4 × that; Bidirectional doubles its layer;
- Dense on a sequence 2·d·n per timestep, on a vector 2·d·n once;
- dot-product attention over S source steps 4·S·u per target step (scores and context).

MFU (model FLOP utilisation) = achieved training FLOP/s ÷ the matmul peak, in the dtype the model
computes in, measured on this machine at the start of the same run (`matmul_peak`: the fastest
of large square products on the threads TensorFlow uses), so it needs no vendor figure and
follows the machine it runs on.
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

GATES = {"SimpleRNN": 1, "GRU": 3, "LSTM": 4}
ATTENTION = (keras.layers.Attention, keras.layers.AdditiveAttention)
BACKWARD_FACTOR = 3  # forward + backward
PEAK_SIZE = 1024
PEAK_SECONDS = 0.15


def _width(layer: keras.layers.Layer, index: int = 0) -> int:
    """The feature width (last axis) of a layer's `index`-th input (initial states follow)."""
    return int(keras.tree.flatten(layer.input)[index].shape[-1])


def recurrent_flops(layer: keras.layers.Layer, width: int) -> int:
    """Forward FLOPs of one timestep of a recurrent layer fed `width` features (0 otherwise)."""
    if isinstance(layer, keras.layers.Bidirectional):
        return recurrent_flops(layer.forward_layer, width) * 2
    gates = GATES.get(type(layer).__name__)
    return 0 if gates is None else gates * 2 * (width + layer.units) * layer.units


def dense_flops(layer: keras.layers.Dense) -> tuple[int, bool]:
    """Forward FLOPs of a Dense layer per application, and whether it applies per timestep."""
    rank = len(keras.tree.flatten(layer.input)[0].shape)
    return 2 * _width(layer) * layer.units, rank > 2


def forward_flops(model: keras.Model, timesteps: float) -> float:
    """Forward FLOPs of one example of `timesteps` steps through `model`'s layers.

    Layers inside nested models are counted too; a recurrent or sequence-wise Dense layer
    costs its per-step FLOPs times `timesteps`. A sequence-to-sequence model is counted as if
    source and target had the same length.
    """
    total = 0.0
    for layer in _layers(model):
        if isinstance(layer, ATTENTION):  # every target step scores and mixes every source step
            total += 4 * timesteps * timesteps * _width(layer, 1)
        elif isinstance(layer, keras.layers.RNN | keras.layers.Bidirectional):
            total += recurrent_flops(layer, _width(layer)) * timesteps
        elif isinstance(layer, keras.layers.Dense):
            flops, per_step = dense_flops(layer)
            total += flops * (timesteps if per_step else 1)
    return total


def training_flops(model: keras.Model, timesteps: float) -> float:
    """FLOPs of one example's training step (forward + backward)."""
    return BACKWARD_FACTOR * forward_flops(model, timesteps)


def _layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer of a model, nested models flattened (Bidirectional kept whole)."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(_layers(layer))
        else:
            found.append(layer)
    return found


def mean_timesteps(dataset: tf.data.Dataset) -> float:
    """Mean padded length of the first input over one pass of a batched dataset.

    What the recurrent layers actually run over (bucketing pads less than `max_len`).
    """
    examples = steps = 0
    for batch in dataset:
        first = tf.nest.flatten(batch[0])[0]
        if first.shape.rank is None or first.shape.rank < 2:
            return 1.0
        examples += int(first.shape[0])
        steps += int(first.shape[0]) * int(first.shape[1])
    return steps / max(examples, 1)


def matmul_peak(
    size: int = PEAK_SIZE, seconds: float = PEAK_SECONDS, dtype: str = "float32"
) -> float:
    """Matmul FLOP/s of this machine now in `dtype`: the fastest `size`² product in ~`seconds`.

    The fastest product, not the burst's mean: other processes can only slow a product down, so
    the best one is the closest to the hardware's limit, and a short burst suffices (a short
    training pays for it once per run). MFU divides by the peak of the dtype the model computes
    in: large bfloat16 products run at about 1.9x the float32 ones on CPUs with native bfloat16,
    so a float32 peak would overstate it.
    """
    rng = np.random.default_rng(0)
    a = tf.cast(tf.constant(rng.standard_normal((size, size), dtype=np.float32)), dtype)
    b = tf.cast(tf.constant(rng.standard_normal((size, size), dtype=np.float32)), dtype)
    tf.matmul(a, b).numpy()  # warm-up: thread pools, kernels
    fastest, started = float("inf"), time.perf_counter()
    while True:
        product_started = time.perf_counter()
        tf.matmul(a, b).numpy()
        now = time.perf_counter()
        fastest = min(fastest, now - product_started)
        if now - started >= seconds:
            return 2.0 * size**3 / fastest
